//! Findings: one thing a person should know about a dry-run, with a stable code, its evidence and the fix.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::verify::preflight::PreflightCode;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Info,
    Warn,
    Fail,
}

/// A finding's stable code, spelled in JSON as `docs/report.md` lists them (`preflight-orphans`,
/// `lint-adding-not-nullable-field`, `rollback-lossy`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FindingCode {
    /// The data will make a statement fail.
    Preflight(PreflightCode),
    /// A squawk rule hit (the rule's own name).
    Lint(String),
    SchemaChange,
    IndexInvalid,
    ConstraintNotValid,
    DataChanged,
    NewColumnNulls,
    CheckChanged,
    CheckError,
    RollbackUntested,
    RollbackFailed,
    RollbackSchema,
    RollbackLossy,
    RollbackProven,
    ControlReplayFailed,
    ReplayDivergence,
}

const FIXED: [(FindingCode, &str); 14] = [
    (FindingCode::SchemaChange, "schema-change"),
    (FindingCode::IndexInvalid, "index-invalid"),
    (FindingCode::ConstraintNotValid, "constraint-not-valid"),
    (FindingCode::DataChanged, "data-changed"),
    (FindingCode::NewColumnNulls, "new-column-nulls"),
    (FindingCode::CheckChanged, "check-changed"),
    (FindingCode::CheckError, "check-error"),
    (FindingCode::RollbackUntested, "rollback-untested"),
    (FindingCode::RollbackFailed, "rollback-failed"),
    (FindingCode::RollbackSchema, "rollback-schema"),
    (FindingCode::RollbackLossy, "rollback-lossy"),
    (FindingCode::RollbackProven, "rollback-proven"),
    (FindingCode::ControlReplayFailed, "control-replay-failed"),
    (FindingCode::ReplayDivergence, "replay-divergence"),
];

impl fmt::Display for FindingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FindingCode::Preflight(code) => write!(f, "preflight-{code}"),
            FindingCode::Lint(rule) => write!(f, "lint-{rule}"),
            fixed => {
                let text = FIXED
                    .iter()
                    .find(|(c, _)| c == fixed)
                    .map(|(_, t)| *t)
                    .unwrap_or("unknown");
                f.write_str(text)
            }
        }
    }
}

/// Text that is no finding code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown finding code {0:?} (see docs/report.md)")]
pub struct UnknownFindingCode(pub String);

impl FromStr for FindingCode {
    type Err = UnknownFindingCode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some((_, code)) = text.strip_prefix("preflight-").and_then(|p| {
            PreflightCode::ALL
                .iter()
                .map(|c| (c.as_str(), *c))
                .find(|(s, _)| *s == p)
        }) {
            return Ok(FindingCode::Preflight(code));
        }
        if let Some(rule) = text.strip_prefix("lint-").filter(|r| !r.is_empty()) {
            return Ok(FindingCode::Lint(rule.to_string()));
        }
        FIXED
            .iter()
            .find(|(_, t)| *t == text)
            .map(|(c, _)| c.clone())
            .ok_or_else(|| UnknownFindingCode(text.to_string()))
    }
}

impl Serialize for FindingCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FindingCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for FindingCode {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A stable finding code: preflight-<code>, lint-<squawk rule>, schema-change, index-invalid, \
                 constraint-not-valid, data-changed, new-column-nulls, check-changed, check-error, rollback-untested, \
                 rollback-failed, rollback-schema, rollback-lossy, rollback-proven, control-replay-failed, \
                 replay-divergence",
            ))
            .into()
    }
}

impl utoipa::ToSchema for FindingCode {}

/// One thing a person should know, with its evidence and what to do.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Finding {
    pub code: FindingCode,
    pub severity: Severity,
    pub title: String,
    /// The migration file and line the finding is about, when it is about a statement.
    pub file: Option<String>,
    pub line: Option<usize>,
    pub evidence: String,
    pub remedy: String,
}

impl Finding {
    pub fn new(code: FindingCode, severity: Severity, title: String, evidence: String, remedy: &str) -> Self {
        Finding {
            code,
            severity,
            title,
            file: None,
            line: None,
            evidence,
            remedy: remedy.into(),
        }
    }

    pub fn at(mut self, file: &str, line: usize) -> Self {
        self.file = Some(file.to_string());
        self.line = Some(line);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_keep_their_documented_spelling_both_ways() {
        let mut all: Vec<FindingCode> = FIXED.iter().map(|(c, _)| c.clone()).collect();
        all.extend(PreflightCode::ALL.map(FindingCode::Preflight));
        all.push(FindingCode::Lint("adding-not-nullable-field".into()));
        for code in all {
            let text = code.to_string();
            assert_eq!(text.parse::<FindingCode>(), Ok(code.clone()), "{text}");
            assert_eq!(serde_json::to_value(&code).expect("json"), serde_json::json!(text));
        }
        assert_eq!(
            FindingCode::Preflight(PreflightCode::Orphans).to_string(),
            "preflight-orphans"
        );
        assert_eq!(FindingCode::RollbackLossy.to_string(), "rollback-lossy");
        assert!("preflight-nonsense".parse::<FindingCode>().is_err());
        assert!("lint-".parse::<FindingCode>().is_err());
    }
}

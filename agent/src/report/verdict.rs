//! The verdict: measurements and findings against the team's thresholds, and what it means for an exit code.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Finding, FindingCode, Severity, StatementReport, WritesReport};
use crate::migrate::MigrationOutcome;
use crate::units;

/// pass / warn / fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl Verdict {
    /// The command line's exit code for a completed run: 0 pass, 3 warn, 1 fail.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Warn => 3,
            Verdict::Fail => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// The verdict and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VerdictReport {
    pub result: Verdict,
    pub reasons: Vec<String>,
}

/// What an untested rollback does to the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackPolicy {
    Require,
    #[default]
    Warn,
    Ignore,
}

/// Limits that turn measurements into a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Thresholds {
    /// Replayed writes that may fail on the new schema (default 0).
    pub max_failed_writes: usize,
    /// Replayed writes that may wait behind the migration before the verdict is `warn` (default 0).
    pub max_blocked_writes: usize,
    /// The longest a write may wait behind the migration before the verdict is `fail` (default 1s).
    pub max_lock_wait: units::Duration,
    /// The longest the migration may run before the verdict is `fail` (default none).
    pub max_duration: Option<units::Duration>,
    /// What an untested rollback does to the verdict (default warn).
    pub rollback: RollbackPolicy,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_failed_writes: 0,
            max_blocked_writes: 0,
            max_lock_wait: units::Duration::from_secs(1),
            max_duration: None,
            rollback: RollbackPolicy::Warn,
        }
    }
}

/// Thresholds as a layer: what `.understudy.toml`'s `[thresholds]`, the command line's flags or an API request
/// set, each field left out keeping the layer below.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdOverrides {
    pub max_failed_writes: Option<usize>,
    pub max_blocked_writes: Option<usize>,
    pub max_lock_wait: Option<units::Duration>,
    pub max_duration: Option<units::Duration>,
    pub rollback: Option<RollbackPolicy>,
}

impl Thresholds {
    /// These thresholds with `layer` on top.
    pub fn with(mut self, layer: &ThresholdOverrides) -> Self {
        if let Some(v) = layer.max_failed_writes {
            self.max_failed_writes = v;
        }
        if let Some(v) = layer.max_blocked_writes {
            self.max_blocked_writes = v;
        }
        if let Some(v) = layer.max_lock_wait {
            self.max_lock_wait = v;
        }
        if let Some(v) = layer.max_duration {
            self.max_duration = Some(v);
        }
        if let Some(v) = layer.rollback {
            self.rollback = v;
        }
        self
    }
}

/// The verdict of a dry-run from its measurements and findings.
pub fn judge(
    outcome: &MigrationOutcome,
    statements: &[StatementReport],
    writes: &WritesReport,
    t: &Thresholds,
    findings: &[Finding],
) -> VerdictReport {
    let mut result = Verdict::Pass;
    let mut reasons = Vec::new();
    if let Some(s) = outcome.statements.iter().find(|s| !s.ok) {
        result = Verdict::Fail;
        let blockers: Vec<String> = statements
            .iter()
            .filter(|r| r.outcome.index == s.index)
            .flat_map(|r| r.waits.iter().flat_map(|w| w.blockers.iter().cloned()))
            .collect();
        let behind = if s.timed_out && !blockers.is_empty() {
            format!("; it was waiting behind {}", blockers.join(", "))
        } else {
            String::new()
        };
        reasons.push(format!(
            "the migration {} at line {} ({}): {}{behind}",
            if s.timed_out { "timed out" } else { "failed" },
            s.line,
            s.sqlstate.clone().unwrap_or_default(),
            s.error.clone().unwrap_or_default()
        ));
    }
    if writes.failed > t.max_failed_writes {
        result = Verdict::Fail;
        for f in &writes.failures {
            reasons.push(format!(
                "{} {} write(s) on {} failed on the new schema with {}: {}",
                f.count, f.kind, f.table, f.sqlstate, f.message
            ));
        }
    }
    let max_lock_wait: Duration = t.max_lock_wait.into();
    if writes.blocked_max_ms > max_lock_wait.as_secs_f64() * 1000.0 {
        result = Verdict::Fail;
        reasons.push(format!(
            "writes waited up to {:.0} ms behind the migration's locks (limit {} ms); {} blocked in all",
            writes.blocked_max_ms,
            max_lock_wait.as_millis(),
            writes.blocked
        ));
    } else if writes.blocked > t.max_blocked_writes {
        result = result.max(Verdict::Warn);
        reasons.push(format!(
            "{} write(s) waited behind the migration's locks (max {:.0} ms)",
            writes.blocked, writes.blocked_max_ms
        ));
    }
    if let Some(max) = t.max_duration
        && outcome.duration_ms > max.get().as_secs_f64() * 1000.0
    {
        result = Verdict::Fail;
        reasons.push(format!(
            "the migration ran {:.1} s, over the limit of {max}",
            outcome.duration_ms / 1000.0,
        ));
    }
    for f in findings.iter().filter(|f| f.severity != Severity::Info) {
        let severity = match (&f.code, t.rollback) {
            (FindingCode::RollbackUntested, RollbackPolicy::Require) => Severity::Fail,
            (FindingCode::RollbackUntested, RollbackPolicy::Ignore) => continue,
            _ => f.severity,
        };
        result = result.max(if severity == Severity::Fail {
            Verdict::Fail
        } else {
            Verdict::Warn
        });
        reasons.push(match f.line {
            Some(l) => format!("line {l}: {}", f.title),
            None => f.title.clone(),
        });
    }
    if reasons.is_empty() {
        reasons.push(format!("{} replayed writes, none failed or blocked", writes.replayed));
    }
    VerdictReport { result, reasons }
}

//! Deterministic names: a sandbox's slot, publication and subscription are derived from its name, so that they
//! can always be found and removed, also by a later process that knows only the name.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A validated sandbox name: lowercase letters, digits and `-`, starting with a letter, at most 40 characters
/// (a Kubernetes-style name that fits PostgreSQL's 63-byte identifiers once prefixed).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxName(String);

/// A name that cannot be a sandbox's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid sandbox name {0:?}: use 1 to 40 lowercase letters, digits and '-', starting with a letter and not \
     ending with '-' (for example orders-db)"
)]
pub struct InvalidName(pub String);

/// The prefix of every object Understudy creates on a source.
pub const PREFIX: &str = "understudy_";

impl SandboxName {
    pub fn parse(text: &str) -> Result<Self, InvalidName> {
        let ok = !text.is_empty()
            && text.len() <= 40
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && !text.ends_with('-')
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(SandboxName(text.to_string()))
        } else {
            Err(InvalidName(text.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn ident(&self) -> String {
        format!("{PREFIX}{}", self.0.replace('-', "_"))
    }

    /// The logical replication slot on the source.
    pub fn slot(&self) -> String {
        self.ident()
    }

    /// The publication Understudy creates on the source when asked to.
    pub fn publication(&self) -> String {
        self.ident()
    }

    /// The subscription on the sandbox (also the walsender's `application_name` on the source).
    pub fn subscription(&self) -> String {
        self.ident()
    }
}

impl TryFrom<String> for SandboxName {
    type Error = InvalidName;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        SandboxName::parse(&value)
    }
}

impl From<SandboxName> for String {
    fn from(value: SandboxName) -> Self {
        value.0
    }
}

impl fmt::Display for SandboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl crate::error::Classify for InvalidName {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names() {
        let n = SandboxName::parse("orders-db").expect("valid");
        assert_eq!(n.slot(), "understudy_orders_db");
        assert_eq!(n.publication(), "understudy_orders_db");
    }

    #[test]
    fn invalid_names() {
        for bad in ["", "Orders", "1db", "db-", "a_b", "a b", &"x".repeat(41)] {
            assert!(SandboxName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(SandboxName::parse("a").is_ok());
    }
}

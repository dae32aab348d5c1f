//! One error kind for every error the library returns. It decides, in one place, the command line's exit code,
//! the API's HTTP status, whether the operator requeues, and the label errors are counted under.

use serde::{Deserialize, Serialize};

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Bad input: an argument, a file, a request body, a name, a source that refuses preflight. The message names
    /// what to fix; the same input fails the same way again.
    Invalid,
    /// The API call did not carry the agent's token.
    Unauthorized,
    /// The named sandbox, fork or dry-run does not exist.
    NotFound,
    /// It exists already, or collides with something running.
    Conflict,
    /// Not possible in the present state (a sandbox that is not current, still copying, or stale); the message
    /// names the fix, and trying again later may succeed.
    NotReady,
    /// Something outside us failed (the source cannot be reached, the agent is shutting down); retryable.
    Unavailable,
    /// Cancelled by the user, an API call or a shutdown.
    Cancelled,
    /// Our failure: an I/O error, a program that failed, corrupt state, a bug.
    Internal,
}

impl ErrorKind {
    /// The command line's exit code: 2 for usage errors (nothing was done), 130 when interrupted, else 1.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Invalid
            | ErrorKind::Unauthorized
            | ErrorKind::NotFound
            | ErrorKind::Conflict
            | ErrorKind::NotReady => 2,
            ErrorKind::Cancelled => 130,
            ErrorKind::Unavailable | ErrorKind::Internal => 1,
        }
    }

    /// The API's HTTP status.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::Invalid => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict | ErrorKind::NotReady | ErrorKind::Cancelled => 409,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }

    /// Whether the same request may succeed later without a change by the user (the operator requeues soon;
    /// otherwise it waits for the resource to change).
    pub fn retryable(self) -> bool {
        matches!(self, ErrorKind::NotReady | ErrorKind::Unavailable | ErrorKind::Internal)
    }

    /// Whether the user (the input) is at fault rather than Understudy or its surroundings.
    pub fn user_fault(self) -> bool {
        matches!(
            self,
            ErrorKind::Invalid | ErrorKind::Unauthorized | ErrorKind::NotFound | ErrorKind::Conflict
        )
    }

    /// The label errors are counted under in metrics.
    pub fn metric_label(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NotReady => "not_ready",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Every error type of the library says what kind it is.
pub trait Classify {
    fn kind(&self) -> ErrorKind;
}

/// The kind of the outermost error in `err`'s chain that the library knows (errors of other crates, such as a
/// context message, are skipped); `Internal` when none is.
pub fn kind_of_chain<'a>(chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>) -> ErrorKind {
    chain.into_iter().find_map(kind_of).unwrap_or(ErrorKind::Internal)
}

macro_rules! classify_any {
    ($err:expr, $($t:ty),+ $(,)?) => {
        $(if let Some(e) = $err.downcast_ref::<$t>() {
            return Some(e.kind());
        })+
    };
}

/// The kind of one error, if it is one of the library's.
pub fn kind_of(err: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    classify_any!(
        err,
        crate::pg::PgError,
        crate::pg::conninfo::ConnInfoError,
        crate::source::names::InvalidName,
        crate::source::PreflightFailed,
        crate::sandbox::SandboxError,
        crate::fork::ForkError,
        crate::dryrun::DryRunError,
        crate::dryrun::config::ConfigError,
        crate::schedule::ScheduleError,
        crate::migrate::PlanError,
        crate::units::UnitError,
        crate::dryrun::RequestError,
        crate::runs::RunError,
        crate::metrics::MetricsError,
        crate::agent::AgentError,
        UsageError,
    );
    None
}

/// Bad input found by a caller of the library (the command line, the API): an unreadable file, a bad argument.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl Classify for UsageError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }
}

impl Classify for crate::units::UnitError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }
}

impl Classify for crate::schedule::ScheduleError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }
}

impl Classify for crate::migrate::PlanError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }
}

impl Classify for crate::source::names::InvalidName {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }
}

impl Classify for crate::source::PreflightFailed {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }
}

impl Classify for crate::pg::conninfo::ConnInfoError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2_and_are_4xx() {
        for kind in [ErrorKind::Invalid, ErrorKind::NotFound, ErrorKind::Conflict] {
            assert_eq!(kind.exit_code(), 2);
            assert!((400..500).contains(&kind.http_status()));
            assert!(kind.user_fault() && !kind.retryable());
        }
        assert_eq!(ErrorKind::NotReady.exit_code(), 2);
        assert!(ErrorKind::NotReady.retryable());
        assert_eq!(ErrorKind::Internal.http_status(), 500);
        assert_eq!(ErrorKind::Cancelled.exit_code(), 130);
    }

    #[test]
    fn the_outermost_known_error_decides() {
        let err = anyhow::Error::new(UsageError("bad".into())).context("while reading the plan");
        assert_eq!(kind_of_chain(err.chain()), ErrorKind::Invalid);
        let other = anyhow::anyhow!("something else");
        assert_eq!(kind_of_chain(other.chain()), ErrorKind::Internal);
    }
}

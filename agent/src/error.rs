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

/// Bad input found by a caller of the library (the command line, the API): an unreadable file, a bad argument.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl Classify for UsageError {
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
}

//! One refused check on the source, with its fix: what preflight, subsets and masking report.

use serde::Serialize;

/// One refused check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// A stable code: `wal-level`, `replication-slots`, `wal-senders`, `replication-role`, `select-privilege`,
    /// `replica-identity`, `publication-missing`, `publication-empty`, `table-missing`, `create-publication`,
    /// `slot-exists`, `publication-exists`, `server-version`, `subset-publication`, `subset-table`,
    /// `subset-filter`, `mask-config`.
    pub code: &'static str,
    pub message: String,
    pub fix: String,
}

//! What a running dry-run tells its caller: the phase it is in and lines for people. The command line prints the
//! lines; the agent keeps both for `GET /v1/dryruns/{id}` and its event stream.

use serde::{Deserialize, Serialize};

use crate::telemetry::TraceId;

/// Where a dry-run is. The order is the order of a run; `Succeeded`, `Failed` and `Cancelled` end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RunPhase {
    /// Accepted, not started.
    Pending,
    /// Waiting for its scheduled start.
    Scheduled,
    /// Checking the sandbox is current and forking it.
    Forking,
    /// Replaying production's writes into the fork (the warm-up window).
    Replaying,
    /// The migration runs under the replay (then the after window).
    Migrating,
    /// Comparing the migrated fork with its control twin.
    Verifying,
    /// Running the down-migration and comparing again.
    RollingBack,
    /// Finished with a report (whatever its verdict).
    Succeeded,
    /// Ended without a report.
    Failed,
    /// Cancelled before it finished; its forks were removed.
    Cancelled,
}

impl RunPhase {
    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        matches!(self, RunPhase::Succeeded | RunPhase::Failed | RunPhase::Cancelled)
    }
}

/// Receives a run's progress.
pub trait Progress: Send + Sync {
    fn phase(&self, phase: RunPhase);
    fn say(&self, line: &str);
    /// The run's trace, once it starts (only in a build that traces: see [`crate::telemetry`]).
    fn traced(&self, _trace: &TraceId) {}
}

/// Progress printed to standard error (the command line).
pub struct Stderr;

impl Progress for Stderr {
    fn phase(&self, _: RunPhase) {}

    fn say(&self, line: &str) {
        eprintln!("{line}");
    }
}

/// Progress nobody reads.
pub struct Silent;

impl Progress for Silent {
    fn phase(&self, _: RunPhase) {}

    fn say(&self, _: &str) {}
}

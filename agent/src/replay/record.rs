//! What a replay records: each transaction applied (or failed) on the fork, and the errors that stop a replay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::capture::{CaptureError, Transaction};
use crate::lsn::Lsn;
use crate::pg::PgError;
use crate::pgoutput::Relation;

/// Transactions read together, the relations known when they were read (shared, so that batches read with the
/// same relations share one map), and when.
pub(super) type Batch = (Vec<Transaction>, Arc<HashMap<u32, Relation>>, Instant);

/// A write that failed on the fork.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct WriteFailure {
    pub table: String,
    pub kind: WriteKind,
    pub sqlstate: String,
    pub message: String,
    pub sample: String,
}

/// What a replayed write was: one of the transaction's changes, or its BEGIN or COMMIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WriteKind {
    Begin,
    Insert,
    Update,
    Delete,
    Truncate,
    Commit,
}

impl WriteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteKind::Begin => "begin",
            WriteKind::Insert => "insert",
            WriteKind::Update => "update",
            WriteKind::Delete => "delete",
            WriteKind::Truncate => "truncate",
            WriteKind::Commit => "commit",
        }
    }
}

impl std::fmt::Display for WriteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One replayed transaction.
#[derive(Debug, Clone)]
pub struct WriteRecord {
    pub worker_pid: i32,
    /// When the reader handed the transaction to the dispatcher (it waits from here while workers are busy).
    pub queued: Instant,
    pub start: Instant,
    pub end: Instant,
    /// How far behind production's commit the write finished on the fork.
    pub lag: Duration,
    pub changes: usize,
    pub end_lsn: Lsn,
    pub failure: Option<WriteFailure>,
}

impl WriteRecord {
    pub fn latency(&self) -> Duration {
        self.end - self.start
    }
}

/// Errors that stop the replay (not write failures, which are records).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Stream(#[from] super::stream::StreamError),
    #[error("replay task failed: {0}")]
    Task(String),
}

/// What the reader should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    Run,
    /// Finish the read in flight, then read nothing more until told to stop (so that a stop point taken now is
    /// past everything read).
    Hold,
    /// Read everything the sandbox has applied, then stop.
    Stop,
    /// Read the transactions that committed before this LSN, then stop.
    StopAt(Lsn),
}

//! Sandboxes: PostgreSQL clusters kept current with a source by native logical replication.
//!
//! - [`create`]: preflight, schema, fast snapshot copy tied to the slot, indexes after, subscription;
//! - [`follow`]: the DDL follower, sequence sync and the WAL budget breaker (`sandbox watch`);
//! - [`status`]: live state, lag, retained WAL, per-table sync state;
//! - [`resync`]: a stale sandbox rebuilt beside its old copy and swapped in when current;
//! - [`delete`]: removes everything, on the source first.

pub mod closure;
pub mod copy;
pub mod create;
pub mod delete;
pub mod follow;
pub mod lock;
pub mod masking;
pub mod resync;
pub mod schema;
pub mod sequences;
pub mod source;
pub mod space;
pub mod staging;
pub mod state;
pub mod status;

use std::path::PathBuf;

pub use create::{CreateOptions, create};
pub use delete::{DeleteReport, delete};
pub use lock::SandboxLock;
pub use source::set_source;
pub use state::{SandboxMeta, SandboxState, StateDir};
pub use status::{SandboxStatus, TableSyncState, status};

use crate::pg::cluster::Cluster;
use crate::pg::os_user::RunAs;
use crate::pg::{ClusterConfig, PgBinaries, PgError};
use crate::source::PreflightFailed;
use crate::source::names::InvalidName;

/// Advisory lock key held on a sandbox's server (in its admin database) while a fork pauses its apply: the
/// follower skips its pass meanwhile, so that it does not re-enable the subscription inside the pause.
pub const PAUSE_LOCK: i64 = 0x756e_6465_7273_7475;

/// Errors of sandbox operations.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Name(#[from] InvalidName),
    #[error(transparent)]
    Preflight(#[from] PreflightFailed),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("no sandbox named {name} in {state_dir} (see `understudy sandbox list`)")]
    NotFound { name: String, state_dir: PathBuf },
    #[error("a sandbox named {name} already exists in {dir}; delete it first (`understudy sandbox delete {name}`)")]
    Exists { name: String, dir: PathBuf },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The source named for a new sandbox does not answer: the request's to fix.
    #[error(
        "{0}; check the source connection string (host, port, database, credentials) and that this machine can reach it"
    )]
    // Not a `#[source]`: the message has it already, and a chain printed whole would say it twice.
    SourceUnreachable(PgError),
    #[error(transparent)]
    NoSpace(#[from] space::NoSpace),
    #[error("corrupt sandbox metadata: {0}")]
    Corrupt(String),
    #[error(
        "sandbox {name} is {phase:?}, not stale: only a stale sandbox is resynced (see `understudy sandbox status \
         {name}`)"
    )]
    NotStale { name: String, phase: SandboxState },
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Failed(String),
}

impl crate::error::Classify for SandboxError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            SandboxError::Name(_)
            | SandboxError::Preflight(_)
            | SandboxError::SourceUnreachable(_)
            | SandboxError::NoSpace(_) => ErrorKind::Invalid,
            SandboxError::Pg(e) => e.kind(),
            SandboxError::NotFound { .. } => ErrorKind::NotFound,
            SandboxError::Exists { .. } | SandboxError::NotStale { .. } => ErrorKind::Conflict,
            SandboxError::Interrupted => ErrorKind::Cancelled,
            SandboxError::Io { .. } | SandboxError::Corrupt(_) | SandboxError::Failed(_) => ErrorKind::Internal,
        }
    }
}

impl SandboxError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        SandboxError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The cluster of a sandbox as recorded in its metadata.
pub fn cluster_of(meta: &SandboxMeta) -> Result<Cluster, SandboxError> {
    Ok(Cluster::open(
        PgBinaries::locate()?,
        RunAs::detect()?,
        meta.cluster.clone(),
    ))
}

/// The settings a sandbox cluster runs with.
/// The database Understudy's own sessions on a sandbox's server (and on its forks') connect to: `postgres`, or
/// `template1` when the replicated database is itself called `postgres`, so that a template fork of it finds it
/// free of other sessions. The fork pause lock lives there too (advisory locks belong to a database).
pub fn admin_database(database: &str) -> &'static str {
    if database == "postgres" {
        "template1"
    } else {
        "postgres"
    }
}

pub fn sandbox_cluster_config(dir: &std::path::Path) -> ClusterConfig {
    ClusterConfig {
        data_dir: dir.join("pgdata"),
        socket_dir: dir.join("run"),
        port: 5432,
        listen_addresses: String::new(),
        settings: vec![
            ("max_sync_workers_per_subscription".into(), "2".into()),
            ("wal_retrieve_retry_interval".into(), "1s".into()),
            ("wal_receiver_status_interval".into(), "1s".into()),
            // The apply worker commits asynchronously; a short writer delay keeps capture slots close behind.
            ("wal_writer_delay".into(), "10ms".into()),
            ("max_wal_size".into(), "4GB".into()),
            // Frequent checkpoints bound the dirty pages a fork's CHECKPOINT must write to about 30 s of writes,
            // whatever the size of the data: fork time stays flat as the sandbox grows.
            ("checkpoint_timeout".into(), "30s".into()),
            ("maintenance_work_mem".into(), "256MB".into()),
        ],
    }
}

//! A fork's record (`fork.json`), its names and its errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Strategy;
use crate::lsn::Lsn;
use crate::pg::cluster::Cluster;
use crate::pg::os_user::RunAs;
use crate::pg::{ClusterConfig, PgBinaries, PgError};
use crate::sandbox::staging::{self, PlaceError};
use crate::sandbox::{SandboxError, SandboxMeta, StateDir};
use crate::source::SandboxName;

/// Errors of fork operations.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("sandbox {sandbox} is not ready to fork: {reason}")]
    NotReady { sandbox: String, reason: String },
    #[error("strategy {strategy} is not available here: {reason}")]
    Unsupported { strategy: &'static str, reason: String },
    #[error("no fork named {0} (see `understudy fork list`)")]
    NotFound(String),
    #[error("a fork named {0} already exists")]
    Exists(String),
    #[error("{what}: {detail}")]
    Command { what: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt fork metadata: {0}")]
    Corrupt(String),
}

impl crate::error::Classify for ForkError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            ForkError::Sandbox(e) => e.kind(),
            ForkError::Pg(e) => e.kind(),
            ForkError::NotReady { .. } => ErrorKind::NotReady,
            ForkError::Unsupported { .. } => ErrorKind::Invalid,
            ForkError::NotFound(_) => ErrorKind::NotFound,
            ForkError::Exists(_) => ErrorKind::Conflict,
            ForkError::Command { .. } | ForkError::Io { .. } | ForkError::Corrupt(_) => ErrorKind::Internal,
        }
    }
}

pub(super) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ForkError {
    let what = what.into();
    move |source| ForkError::Io { what, source }
}

/// Where a fork is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForkPhase {
    Creating,
    Ready,
}

impl ForkPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            ForkPhase::Creating => "creating",
            ForkPhase::Ready => "ready",
        }
    }
}

/// Timings of a fork's creation, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ForkTimings {
    /// The sandbox's apply pause (disable → enable).
    pub pause_ms: u64,
    pub capture_slot_ms: u64,
    pub copy_ms: u64,
    /// From the end of the copy to a fork that accepts writes, detached.
    pub start_ms: u64,
    /// From the request to a ready fork.
    pub total_ms: u64,
    /// From the request to the start of the pause (sweep, checks, capture publication, the checkpoint before the
    /// pause).
    #[serde(default)]
    pub prepare_ms: u64,
}

/// `fork.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForkMeta {
    pub name: SandboxName,
    pub sandbox: SandboxName,
    /// The sandbox's copy this fork was made from (one more after each resync).
    #[serde(default = "first_generation")]
    pub sandbox_generation: u32,
    pub phase: ForkPhase,
    pub strategy: Strategy,
    pub strategy_reason: String,
    /// The process creating the fork (an interrupted create is cleaned up when this process is gone).
    pub creator_pid: u32,
    /// A process the fork lives for (a dry-run): once it is gone the fork is swept, whatever its TTL.
    #[serde(default)]
    pub owner_pid: Option<u32>,
    /// The fork point: the capture slot's start.
    pub lsn: Option<Lsn>,
    pub capture_slot: String,
    /// The database to connect to (on the fork's own server, or `fork_<name>` on the sandbox's server).
    pub database: String,
    /// The fork's own server; `None` for `Template` forks, which live on the sandbox's server.
    pub cluster: Option<ClusterConfig>,
    pub created_at: jiff::Timestamp,
    pub expires_at: jiff::Timestamp,
    pub timings: ForkTimings,
}

fn first_generation() -> u32 {
    1
}

impl ForkMeta {
    pub(super) fn save(&self, dir: &Path) -> Result<(), ForkError> {
        let tmp = dir.join("fork.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| ForkError::Corrupt(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, dir.join("fork.json")).map_err(io("writing fork.json"))
    }

    pub fn load(dir: &Path) -> Result<Self, ForkError> {
        let path = dir.join("fork.json");
        let text = std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
        serde_json::from_str(&text).map_err(|e| ForkError::Corrupt(format!("{}: {e}", path.display())))
    }

    /// A superuser connection string for the fork.
    pub fn conninfo(&self, sandbox: &SandboxMeta) -> String {
        let (socket, port) = match &self.cluster {
            Some(c) => (c.socket_dir.clone(), c.port),
            None => (sandbox.cluster.socket_dir.clone(), sandbox.cluster.port),
        };
        format!(
            "host={} port={port} user=postgres dbname={}",
            socket.display(),
            self.database
        )
    }

    /// The fork's own server, if it has one.
    pub fn own_cluster(&self) -> Result<Option<Cluster>, ForkError> {
        match &self.cluster {
            Some(config) => Ok(Some(Cluster::open(
                PgBinaries::locate()?,
                RunAs::detect()?,
                config.clone(),
            ))),
            None => Ok(None),
        }
    }
}

/// What `fork create` needs.
#[derive(Debug, Clone)]
pub struct ForkOptions {
    pub sandbox: SandboxName,
    pub name: Option<SandboxName>,
    /// `None`: the fastest the state directory supports.
    pub strategy: Option<Strategy>,
    pub ttl: Duration,
    /// Tie the fork's life to this process (dry-runs); `None` for forks people create.
    pub owner_pid: Option<u32>,
}

pub(super) fn forks_dir(state: &StateDir) -> PathBuf {
    state.root().join("forks")
}

pub(super) fn fork_dir(state: &StateDir, name: &SandboxName) -> PathBuf {
    forks_dir(state).join(name.as_str())
}

/// The directories of the forks in `state` (not the staging ones).
pub(super) fn fork_dirs(state: &StateDir) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(forks_dir(state))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !staging::is_staging(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
}

/// Makes fork directory `dir` with `meta` in it (`sandbox::staging`; `Exists` if a fork of that name appeared
/// meanwhile).
pub(super) fn create_dir_with(dir: &Path, meta: &ForkMeta) -> Result<(), ForkError> {
    staging::place(dir, |staging| meta.save(staging)).map_err(|e| match e {
        PlaceError::Fill(e) => e,
        PlaceError::Exists => ForkError::Exists(meta.name.to_string()),
        PlaceError::Io { what, source } => ForkError::Io { what, source },
    })
}

/// A fresh fork name for `sandbox`: `<sandbox>-<6 hex digits>`.
pub fn default_name(sandbox: &SandboxName) -> Result<SandboxName, ForkError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let suffix = format!("{:06x}", (nanos ^ std::process::id()) & 0xff_ffff);
    let base: String = sandbox.as_str().chars().take(32).collect();
    SandboxName::parse(&format!("{base}-{suffix}")).map_err(|e| ForkError::Corrupt(e.to_string()))
}

pub(super) fn capture_slot_name(fork: &SandboxName) -> String {
    format!("understudy_capture_{}", fork.as_str().replace('-', "_"))
}

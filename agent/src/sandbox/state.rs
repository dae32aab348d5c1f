//! The state directory and a sandbox's metadata on disk.
//!
//! ```text
//! <state>/sandboxes/<name>/sandbox.json     metadata (no secrets)
//! <state>/sandboxes/<name>/source.conninfo  the source connection string, mode 0600
//! <state>/sandboxes/<name>/pgdata/          the sandbox cluster (pgdata.log beside it)
//! <state>/sandboxes/<name>/run/             its private Unix-socket directory
//! <state>/sandboxes/<name>/work/            schema archives during creation
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SandboxError;
use crate::lsn::Lsn;
use crate::pg::{ClusterConfig, ConnInfo};
use crate::source::identity::{Gap, SourceMark};
use crate::source::{Replicate, SandboxName, SubsetState};

/// The root under which Understudy keeps sandboxes (and later forks).
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// `--state-dir`, else `$UNDERSTUDY_STATE_DIR` (clap reads both), else a per-user default: root uses
    /// `/var/lib/understudy` (the unprivileged server user must reach it), others `$XDG_STATE_HOME/understudy` or
    /// `~/.local/state/understudy`.
    pub fn resolve(explicit: Option<PathBuf>) -> Self {
        if let Some(root) = explicit {
            return StateDir { root };
        }
        if crate::pg::os_user::running_as_root() {
            return StateDir {
                root: PathBuf::from("/var/lib/understudy"),
            };
        }
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        StateDir {
            root: base.join("understudy"),
        }
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Sandbox `name`'s metadata; `NotFound` (naming the state directory) when there is no such sandbox.
    pub fn sandbox(&self, name: &SandboxName) -> Result<SandboxMeta, SandboxError> {
        let dir = self.sandbox_dir(name);
        if !dir.exists() {
            return Err(SandboxError::NotFound {
                name: name.to_string(),
                state_dir: self.root().to_path_buf(),
            });
        }
        SandboxMeta::load(&dir)
    }

    pub fn sandbox_dir(&self, name: &SandboxName) -> PathBuf {
        self.root.join("sandboxes").join(name.as_str())
    }

    /// Names of the sandboxes present.
    pub fn sandbox_names(&self) -> Vec<SandboxName> {
        let mut names: Vec<SandboxName> = std::fs::read_dir(self.root.join("sandboxes"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| SandboxName::parse(e.file_name().to_str()?).ok())
            .collect();
        names.sort();
        names
    }

    /// Creates the directories leading to a sandbox, traversable by the server's OS user.
    pub fn prepare(&self) -> Result<(), SandboxError> {
        let dir = self.root.join("sandboxes");
        std::fs::create_dir_all(&dir).map_err(|e| SandboxError::io(format!("creating {}", dir.display()), e))?;
        for d in [&self.root, &dir] {
            set_mode(d, 0o755)?;
        }
        Ok(())
    }
}

/// A sandbox's state: recorded in `sandbox.json` as what the last pass established, and reported by `status`
/// after live checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxState {
    /// Created, initial copy running.
    InitialSync,
    /// Streaming.
    Ready,
    /// Streaming is blocked or the schema drifted in a way Understudy will not apply by itself.
    Degraded,
    /// The stream from the source is broken (see [`StaleReason`]): the sandbox no longer follows it, and is
    /// rebuilt (resync) unless its policy is manual.
    Stale,
}

/// Why a sandbox is stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StaleReason {
    /// The stream has a gap, or its source is not the one it was.
    Gap(Gap),
    /// The WAL budget breaker dropped our slot to protect the source's disk.
    BreakerTripped { retained_bytes: u64, budget_bytes: u64 },
}

impl std::fmt::Display for StaleReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StaleReason::Gap(gap) => gap.fmt(f),
            StaleReason::BreakerTripped {
                retained_bytes,
                budget_bytes,
            } => write!(
                f,
                "WAL budget breaker: our slot kept {retained_bytes} bytes of WAL on the source (budget \
                 {budget_bytes}); the slot was dropped to protect the source's disk"
            ),
        }
    }
}

/// What happens to a stale sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ResyncPolicy {
    /// The agent rebuilds it once the source is healthy again.
    #[default]
    Auto,
    /// It stays stale until `understudy sandbox resync` (or a delete).
    Manual,
}

impl ResyncPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ResyncPolicy::Auto => "auto",
            ResyncPolicy::Manual => "manual",
        }
    }
}

impl ResyncStatus {
    /// A line for people (`sandbox status`, the Sandbox resource's status).
    pub fn describe(&self) -> String {
        match self {
            ResyncStatus::WaitingForRequest => "waiting for `understudy sandbox resync` (policy manual)".into(),
            ResyncStatus::Requested { at } => format!("requested at {at}; the agent rebuilds it on its next pass"),
            ResyncStatus::WaitingForSource {
                reason,
                attempts,
                next_at,
            } => format!("next attempt at {next_at} ({attempts} failed so far): {reason}"),
            ResyncStatus::Building { generation, started_at } => {
                format!("building generation {generation} beside the stale copy since {started_at}")
            }
            ResyncStatus::Done {
                generation,
                stale_reason,
                finished_at,
                ..
            } => format!("generation {generation} replaced a stale copy at {finished_at} ({stale_reason})"),
        }
    }

    /// Whether a resync is under way or due (not done, not waiting for a request).
    pub fn in_progress(&self) -> bool {
        matches!(
            self,
            ResyncStatus::Requested { .. } | ResyncStatus::WaitingForSource { .. } | ResyncStatus::Building { .. }
        )
    }
}

impl std::str::FromStr for ResyncPolicy {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(ResyncPolicy::Auto),
            "manual" => Ok(ResyncPolicy::Manual),
            other => Err(format!("unknown resync policy {other:?}: use auto or manual")),
        }
    }
}

/// The directory prefix of a sandbox's later generations (`gen-2`, …) beside its first.
pub const GENERATION_PREFIX: &str = "gen-";

/// What the resync of a stale sandbox is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", tag = "phase")]
pub enum ResyncStatus {
    /// Policy manual: nothing happens until asked.
    WaitingForRequest,
    /// Asked for (`sandbox resync`, the API, the Sandbox's annotation): the agent rebuilds it on its next pass.
    Requested { at: jiff::Timestamp },
    /// Waiting for the source to be healthy (or for the backoff after a failed attempt).
    WaitingForSource {
        reason: String,
        attempts: u32,
        next_at: jiff::Timestamp,
    },
    /// The new copy (generation `generation`) is being built beside the old one.
    Building {
        generation: u32,
        started_at: jiff::Timestamp,
    },
    /// The last resync finished: generation `generation` replaced the stale one.
    Done {
        generation: u32,
        stale_reason: String,
        started_at: jiff::Timestamp,
        finished_at: jiff::Timestamp,
    },
}

/// An error recorded for `status`, with its fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LastError {
    pub message: String,
    pub fix: String,
    pub at: jiff::Timestamp,
}

/// Figures from the initial copy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InitialCopy {
    pub tables: usize,
    pub chunks: usize,
    pub bytes: u64,
    pub rows: u64,
    /// Of `rows`, the parents a subset's rows reference, copied by the closure.
    #[serde(default)]
    pub closure_rows: u64,
    pub schema_seconds: f64,
    pub copy_seconds: f64,
    pub indexes_seconds: f64,
    pub total_seconds: f64,
}

/// `sandbox.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxMeta {
    pub name: SandboxName,
    pub created_at: jiff::Timestamp,
    pub phase: SandboxState,
    /// The source, password redacted.
    pub source: String,
    pub replicate: Replicate,
    /// The database on the source, and of the same name on the sandbox.
    pub database: String,
    pub publication: String,
    /// True when Understudy created the publication (and so removes it).
    pub publication_owned: bool,
    pub slot: String,
    pub subscription: String,
    pub subscription_oid: Option<u32>,
    /// Where the slot started: the sandbox equals the source's snapshot at this point.
    pub consistent_point: Option<Lsn>,
    pub cluster: ClusterConfig,
    /// The most WAL our slot may keep on the source before the breaker drops it.
    pub wal_budget_bytes: u64,
    #[serde(default)]
    pub initial_copy: Option<InitialCopy>,
    #[serde(default)]
    pub last_error: Option<LastError>,
    /// Source schema changes not applied (shown by `status`).
    #[serde(default)]
    pub pending_drift: Vec<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Which copy of the source this is: 1 for the first, one more for each resync. Forks and reports carry it.
    #[serde(default = "first_generation")]
    pub generation: u32,
    /// What identified the source and the slot at the last pass (gap detection).
    #[serde(default)]
    pub source_mark: Option<SourceMark>,
    /// How far the follower has read the sandbox's server log for evidence of a missing slot.
    #[serde(default)]
    pub log_checked_to: u64,
    #[serde(default)]
    pub stale_reason: Option<StaleReason>,
    #[serde(default)]
    pub resync: ResyncPolicy,
    #[serde(default)]
    pub resync_status: Option<ResyncStatus>,
    /// Since when the follower has not reached the source (`None` while it does).
    #[serde(default)]
    pub source_unreachable_since: Option<jiff::Timestamp>,
    /// The last outage of the source that ended.
    #[serde(default)]
    pub last_outage: Option<Outage>,
    /// The rows it holds when not all: its publication's row filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<SubsetState>,
    /// Its masking, when its rows are masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masking: Option<crate::mask::MaskConfig>,
}

/// A time the follower could not reach the source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Outage {
    pub started_at: jiff::Timestamp,
    pub ended_at: jiff::Timestamp,
    pub seconds: f64,
}

fn first_generation() -> u32 {
    1
}

impl SandboxMeta {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("sandbox.json")
    }

    pub fn load(dir: &Path) -> Result<Self, SandboxError> {
        let path = Self::path(dir);
        let text =
            std::fs::read_to_string(&path).map_err(|e| SandboxError::io(format!("reading {}", path.display()), e))?;
        serde_json::from_str(&text).map_err(|e| SandboxError::Corrupt(format!("{}: {e}", path.display())))
    }

    /// Writes atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> Result<(), SandboxError> {
        let path = Self::path(dir);
        let tmp = dir.join("sandbox.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| SandboxError::Corrupt(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| SandboxError::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| SandboxError::io(format!("writing {}", path.display()), e))
    }

    /// Marks the sandbox stale for `reason`, with the fix its resync policy calls for.
    pub fn mark_stale(&mut self, reason: StaleReason) {
        let fix = match self.resync {
            ResyncPolicy::Auto => "the agent rebuilds the sandbox once the source is healthy (see resync_status in \
                                   `understudy sandbox status`)"
                .to_string(),
            ResyncPolicy::Manual => format!(
                "rebuild it: understudy sandbox resync {n}, or POST /v1/sandboxes/{n}/resync (its resync policy is \
                 manual)",
                n = self.name
            ),
        };
        self.record_error(reason.to_string(), fix);
        self.phase = SandboxState::Stale;
        self.stale_reason = Some(reason);
        // A new episode: the last resync's outcome no longer describes it.
        if !self.resync_status.as_ref().is_some_and(ResyncStatus::in_progress) {
            self.resync_status = None;
        }
    }

    /// The follower reached the source (`true`) or did not: opens or closes an outage.
    pub fn source_reached(&mut self, reached: bool) {
        let now = jiff::Timestamp::now();
        match (reached, self.source_unreachable_since) {
            (false, None) => self.source_unreachable_since = Some(now),
            (true, Some(since)) => {
                self.source_unreachable_since = None;
                self.last_outage = Some(Outage {
                    started_at: since,
                    ended_at: now,
                    seconds: (now - since).total(jiff::Unit::Second).unwrap_or(0.0),
                });
            }
            _ => {}
        }
    }

    pub fn record_error(&mut self, message: impl Into<String>, fix: impl Into<String>) {
        self.last_error = Some(LastError {
            message: message.into(),
            fix: fix.into(),
            at: jiff::Timestamp::now(),
        });
    }
}

/// Saves the source connection string (with its secret) readable by the owner only.
pub fn save_source(dir: &Path, source: &ConnInfo) -> Result<(), SandboxError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("source.conninfo");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| SandboxError::io(format!("writing {}", path.display()), e))?;
    file.write_all(source.to_secret_string().as_bytes())
        .map_err(|e| SandboxError::io(format!("writing {}", path.display()), e))
}

pub fn load_source(dir: &Path) -> Result<ConnInfo, SandboxError> {
    let path = dir.join("source.conninfo");
    let text =
        std::fs::read_to_string(&path).map_err(|e| SandboxError::io(format!("reading {}", path.display()), e))?;
    ConnInfo::parse(&text).map_err(|e| SandboxError::Corrupt(format!("{}: {e}", path.display())))
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| SandboxError::io(format!("setting the mode of {}", path.display()), e))
}

/// Renames `from` to `to` only if nothing is at `to` (`Ok(false)` when something is): how a directory appears
/// under its name only once its metadata is in it.
pub(crate) fn rename_new(from: &Path, to: &Path) -> std::io::Result<bool> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What the sandboxes of `state` own on their sources (for `sweep --source`): their recorded names, or the names
/// a sandbox directory implies when its metadata cannot be read (never sweep what a sandbox here may own).
pub fn owned_on_sources(state: &StateDir) -> crate::source::sweep::Owned {
    let mut owned = crate::source::sweep::Owned::default();
    for name in state.sandbox_names() {
        match SandboxMeta::load(&state.sandbox_dir(&name)) {
            Ok(meta) => {
                owned.slots.insert(meta.slot);
                owned.publications.insert(meta.publication);
            }
            Err(_) => {
                owned.slots.insert(name.slot());
                owned.publications.insert(name.publication());
            }
        }
    }
    owned
}

/// The masking key's file in a sandbox's directory (0600; a resync's copy uses it too, so that values mask the
/// same in every generation).
pub const MASK_KEY_FILE: &str = "mask.key";

/// The sandbox's key, made on first use.
pub fn mask_key(dir: &std::path::Path) -> Result<[u8; 32], SandboxError> {
    let path = dir.join(MASK_KEY_FILE);
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(key);
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| SandboxError::io("making the masking key", std::io::Error::other(e)))?;
    std::fs::write(&path, key).map_err(|e| SandboxError::io(format!("writing {}", path.display()), e))?;
    set_mode(&path, 0o600)?;
    Ok(key)
}

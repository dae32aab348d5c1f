//! Recordings: a busy window of production's write stream kept for later. At the window's start a fork of the
//! sandbox is made (the exact start point, kept stopped, copy-on-write where the filesystem allows) with its
//! capture slot; for the window the slot is drained into a compact stream file (module `stream`); at its end the
//! slot is dropped and the recording's metadata (`recording.json`: window, transactions, size, tables touched,
//! the stream's checksum, expiry) is written. A dry-run can later fork from the start point and replay the
//! stream at its original pace or faster.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::fork::{self, ForkError, ForkMeta, ForkOptions};
use crate::lsn::Lsn;
use crate::pgoutput::{self, Message};
use crate::replay::capture::{CaptureError, CaptureReader};
use crate::replay::stream;
pub use crate::replay::stream::{StreamError, StreamReader};
pub use sweep::{Abandoned, abandoned, remove, sweep};

mod sweep;
use crate::sandbox::{StateDir, cluster_of};
use crate::source::SandboxName;

/// Errors of recordings.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error(transparent)]
    Fork(#[from] ForkError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("no recording named {0} (see `understudy recording list`)")]
    NotFound(String),
    #[error("a recording named {0} already exists")]
    Exists(String),
    #[error("recording {name} expired at {at}; take a new one with `understudy record`")]
    Expired { name: String, at: jiff::Timestamp },
    #[error("recording {name} is not finished ({phase})")]
    NotReady { name: String, phase: &'static str },
    #[error("corrupt recording metadata: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Invalid(String),
}

impl crate::error::Classify for RecordingError {
    fn kind(&self) -> crate::error::ErrorKind {
        use crate::error::ErrorKind;
        match self {
            RecordingError::Fork(e) => e.kind(),
            RecordingError::Capture(_) | RecordingError::Corrupt(_) => ErrorKind::Internal,
            RecordingError::Stream(e) => e.kind(),
            RecordingError::NotFound(_) => ErrorKind::NotFound,
            RecordingError::Exists(_) => ErrorKind::Conflict,
            RecordingError::Expired { .. } | RecordingError::Invalid(_) => ErrorKind::Invalid,
            RecordingError::NotReady { .. } => ErrorKind::NotReady,
        }
    }
}

/// Where a recording is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RecordingPhase {
    /// Its window is being recorded (by `recorder_pid`).
    Recording,
    Ready,
}

impl RecordingPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingPhase::Recording => "recording",
            RecordingPhase::Ready => "ready",
        }
    }
}

/// A recording's record (`recording.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordingMeta {
    #[schema(value_type = String)]
    pub name: SandboxName,
    #[schema(value_type = String)]
    pub sandbox: SandboxName,
    /// The sandbox's copy generation the window was recorded on.
    pub sandbox_generation: u32,
    pub phase: RecordingPhase,
    /// The fork at the window's start.
    #[schema(value_type = String)]
    pub fork: SandboxName,
    pub start_lsn: Lsn,
    /// The end of the last transaction recorded (`start_lsn` when none was).
    pub end_lsn: Lsn,
    pub window_start: jiff::Timestamp,
    pub window_end: Option<jiff::Timestamp>,
    /// Commit times of the first and last transactions (microseconds since 2000-01-01, PostgreSQL's epoch).
    pub first_commit: Option<i64>,
    pub last_commit: Option<i64>,
    pub transactions: u64,
    pub changes: u64,
    /// The stream file's size and the messages' size before compression.
    pub bytes: u64,
    pub raw_bytes: u64,
    /// Tables the window wrote to, `schema.table`.
    pub tables: BTreeSet<String>,
    /// SHA-256 of the stream file.
    pub sha256: Option<String>,
    pub recorder_pid: u32,
    pub created_at: jiff::Timestamp,
    pub expires_at: jiff::Timestamp,
}

/// The longest window a recording may have.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The longest a recording may be kept.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// What to record.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub sandbox: SandboxName,
    pub name: Option<SandboxName>,
    /// How long the window is.
    pub window: Duration,
    /// How long the recording (and its fork) is kept.
    pub ttl: Duration,
}

impl RecordOptions {
    /// Refuses a window or a TTL out of range, naming the field.
    pub fn check(&self) -> Result<(), RecordingError> {
        let show = |d: Duration| humantime::format_duration(d).to_string();
        if self.window < Duration::from_secs(1) || self.window > MAX_WINDOW {
            return Err(RecordingError::Invalid(format!(
                "for: the window {} is out of range (1s to {})",
                show(self.window),
                show(MAX_WINDOW)
            )));
        }
        if self.ttl < self.window || self.ttl > MAX_TTL {
            return Err(RecordingError::Invalid(format!(
                "ttl: {} is out of range (at least the window, {}, and at most {})",
                show(self.ttl),
                show(self.window),
                show(MAX_TTL)
            )));
        }
        Ok(())
    }
}

fn recordings_dir(state: &StateDir) -> PathBuf {
    state.root().join("recordings")
}

fn recording_dir(state: &StateDir, name: &SandboxName) -> PathBuf {
    recordings_dir(state).join(name.as_str())
}

/// The stream file of recording `meta`.
pub fn stream_path(state: &StateDir, meta: &RecordingMeta) -> PathBuf {
    recording_dir(state, &meta.name).join("stream.gz")
}

impl RecordingMeta {
    fn save(&self, dir: &Path) -> Result<(), RecordingError> {
        let tmp = dir.join("recording.json.tmp");
        let text = serde_json::to_string_pretty(self).map_err(|e| RecordingError::Corrupt(e.to_string()))?;
        let io = |what: &str| {
            let what = what.to_string();
            move |source| StreamError::Io { what, source }
        };
        std::fs::write(&tmp, text).map_err(io("writing recording.json"))?;
        std::fs::rename(&tmp, dir.join("recording.json")).map_err(io("writing recording.json"))?;
        Ok(())
    }

    fn load(dir: &Path) -> Result<Self, RecordingError> {
        let path = dir.join("recording.json");
        let text = std::fs::read_to_string(&path).map_err(|_| {
            RecordingError::NotFound(
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            )
        })?;
        serde_json::from_str(&text).map_err(|e| RecordingError::Corrupt(format!("{}: {e}", path.display())))
    }

    /// The window's length by its commits (zero with fewer than two transactions).
    pub fn span(&self) -> Duration {
        match (self.first_commit, self.last_commit) {
            (Some(a), Some(b)) if b > a => Duration::from_micros((b - a) as u64),
            _ => Duration::ZERO,
        }
    }
}

/// Recording `name`.
pub fn load(state: &StateDir, name: &SandboxName) -> Result<RecordingMeta, RecordingError> {
    RecordingMeta::load(&recording_dir(state, name))
}

/// Every recording, oldest first.
pub fn list(state: &StateDir) -> Vec<RecordingMeta> {
    let mut out: Vec<RecordingMeta> = std::fs::read_dir(recordings_dir(state))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| !crate::sandbox::staging::is_staging(&e.file_name().to_string_lossy()))
        .filter_map(|e| RecordingMeta::load(&e.path()).ok())
        .collect();
    out.sort_by_key(|r| r.created_at);
    out
}

/// A ready, unexpired recording whose stream matches its checksum, opened for reading.
pub fn open(state: &StateDir, name: &SandboxName) -> Result<(RecordingMeta, StreamReader), RecordingError> {
    let meta = verified(state, name)?;
    let reader = StreamReader::open(&stream_path(state, &meta))?;
    Ok((meta, reader))
}

/// Recording `name`, if it is ready, unexpired and its stream matches its checksum.
pub fn verified(state: &StateDir, name: &SandboxName) -> Result<RecordingMeta, RecordingError> {
    let meta = load(state, name)?;
    if meta.phase != RecordingPhase::Ready {
        return Err(RecordingError::NotReady {
            name: name.to_string(),
            phase: meta.phase.as_str(),
        });
    }
    if meta.expires_at < jiff::Timestamp::now() {
        return Err(RecordingError::Expired {
            name: name.to_string(),
            at: meta.expires_at,
        });
    }
    stream::verify(&stream_path(state, &meta), meta.sha256.as_deref().unwrap_or_default())?;
    Ok(meta)
}

/// Deletes recording `name`: its fork, its capture slot if it is still there, and its files.
pub async fn delete(state: &StateDir, name: &SandboxName) -> Result<(), RecordingError> {
    let dir = recording_dir(state, name);
    let meta = RecordingMeta::load(&dir)?;
    match fork::delete(state, &meta.fork).await {
        Ok(()) | Err(ForkError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    std::fs::remove_dir_all(&dir).map_err(|source| StreamError::Io {
        what: format!("removing {}", dir.display()),
        source,
    })?;
    Ok(())
}

/// Records the sandbox's write stream for `opts.window`. What it made is removed if it fails.
pub async fn take(
    state: &StateDir,
    opts: &RecordOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Result<RecordingMeta, RecordingError> {
    opts.check()?;
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => fork::default_name(&opts.sandbox)?,
    };
    let dir = recording_dir(state, &name);
    if dir.exists() {
        return Err(RecordingError::Exists(name.to_string()));
    }
    // The recorder owns the start point until the window is recorded; a recorder killed meanwhile leaves a fork
    // the sweep removes.
    let fork = fork::create(
        state,
        &ForkOptions {
            sandbox: opts.sandbox.clone(),
            name: None,
            strategy: None,
            ttl: opts.ttl,
            owner_pid: Some(std::process::id()),
        },
        say,
    )
    .await?;
    let made = async {
        let meta = RecordingMeta::starting(opts, &name, &fork);
        sweep::create_dir_with(&dir, &meta)?;
        let meta = record_window(state, opts, meta, &fork, &dir, say).await?;
        fork::release(state, &fork.name)?;
        Ok(meta)
    }
    .await;
    if made.is_err() {
        let _ = fork::delete(state, &fork.name).await;
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    made
}

impl RecordingMeta {
    /// The record of a window that starts now at fork `fork`.
    fn starting(opts: &RecordOptions, name: &SandboxName, fork: &ForkMeta) -> Self {
        let now = jiff::Timestamp::now();
        RecordingMeta {
            name: name.clone(),
            sandbox: opts.sandbox.clone(),
            sandbox_generation: fork.sandbox_generation,
            phase: RecordingPhase::Recording,
            fork: fork.name.clone(),
            start_lsn: fork.lsn.unwrap_or_default(),
            end_lsn: fork.lsn.unwrap_or_default(),
            window_start: now,
            window_end: None,
            first_commit: None,
            last_commit: None,
            transactions: 0,
            changes: 0,
            bytes: 0,
            raw_bytes: 0,
            tables: BTreeSet::new(),
            sha256: None,
            recorder_pid: std::process::id(),
            created_at: now,
            expires_at: fork.expires_at,
        }
    }
}

/// The window itself: the fork stopped, the capture slot drained into the stream, then dropped.
async fn record_window(
    state: &StateDir,
    opts: &RecordOptions,
    mut meta: RecordingMeta,
    fork: &ForkMeta,
    dir: &Path,
    say: &(dyn Fn(&str) + Sync),
) -> Result<RecordingMeta, RecordingError> {
    if let Some(cluster) = fork.own_cluster()? {
        cluster.stop(crate::pg::StopMode::Fast).await.map_err(ForkError::from)?;
    }
    let sandbox = state.sandbox(&opts.sandbox).map_err(ForkError::from)?;
    let name = &meta.name;
    say(&format!(
        "recording {name} of sandbox {} for {}: start point {} (fork {})",
        opts.sandbox,
        humantime::format_duration(opts.window),
        meta.start_lsn,
        fork.name
    ));
    let db = cluster_of(&sandbox)
        .map_err(ForkError::from)?
        .connect(&sandbox.database)
        .await
        .map_err(ForkError::from)?;
    let mut reader = CaptureReader::new(db, &fork.capture_slot, fork::CAPTURE_PUBLICATION);
    let path = dir.join("stream.gz");
    let mut writer = stream::StreamWriter::create(&path)?;
    let ends = Instant::now() + opts.window;
    loop {
        let last = Instant::now() >= ends;
        let rows = reader.read_raw(None, Some(10_000), true, last).await?;
        let empty = rows.is_empty();
        for (lsn, data) in rows {
            count(&mut meta, &data);
            writer.push(lsn, &data)?;
        }
        if last && empty {
            break;
        }
        if empty {
            tokio::time::sleep(Duration::from_millis(100).min(ends.saturating_duration_since(Instant::now()))).await;
        }
    }
    meta.raw_bytes = writer.bytes_in;
    writer.finish()?;
    let db = cluster_of(&sandbox)
        .map_err(ForkError::from)?
        .connect(&sandbox.database)
        .await
        .map_err(ForkError::from)?;
    crate::source::objects::drop_slot(&db, &fork.capture_slot)
        .await
        .map_err(ForkError::from)?;
    meta.bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    meta.sha256 = Some(stream::checksum(&path)?);
    meta.window_end = Some(jiff::Timestamp::now());
    meta.phase = RecordingPhase::Ready;
    meta.save(dir)?;
    say(&format!(
        "recorded {} transaction(s), {} change(s), {} compressed from {}",
        meta.transactions,
        meta.changes,
        bytesize::ByteSize::b(meta.bytes),
        bytesize::ByteSize::b(meta.raw_bytes)
    ));
    Ok(meta)
}

/// Counts one message into the recording's figures.
fn count(meta: &mut RecordingMeta, data: &[u8]) {
    match pgoutput::decode(data) {
        Ok(Message::Begin(b)) => {
            meta.first_commit.get_or_insert(b.commit_time);
            meta.last_commit = Some(b.commit_time);
        }
        Ok(Message::Commit(c)) => {
            meta.transactions += 1;
            meta.end_lsn = c.end_lsn;
        }
        Ok(Message::Relation(r)) => {
            meta.tables.insert(format!("{}.{}", r.namespace, r.name));
        }
        Ok(Message::Insert(_) | Message::Update(_) | Message::Delete(_) | Message::Truncate(_)) => meta.changes += 1,
        _ => {}
    }
}

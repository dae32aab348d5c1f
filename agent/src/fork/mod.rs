//! Forks: writable copies of a sandbox at an exact point of its write stream, that can never reach the source.
//!
//! A fork is made inside a short **apply pause** of the sandbox: the subscription is disabled (its worker gone),
//! the **capture slot** is created on the sandbox (logical, pgoutput, over the `understudy_capture` publication
//! of all tables), the data is copied by the chosen [`Strategy`], and the subscription is enabled again. The fork
//! then equals the sandbox exactly at the capture slot's start (its LSN is the fork point): everything the source
//! writes afterwards is decodable from the capture slot, on the sandbox, without touching the source.
//!
//! Hygiene: a fork's server starts with `max_logical_replication_workers = 0`; its inherited subscription is
//! scrubbed of the source's connection string, detached from its slot (`slot_name = NONE`) and dropped, so the
//! source's slot is never touched; slots copied from the sandbox are dropped; sequences are moved past the
//! sandbox's values so that the fork's own inserts do not collide with replayed ones.

pub mod strategy;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

pub use strategy::Strategy;

use crate::lsn::Lsn;
use crate::pg::cluster::Cluster;
use crate::pg::os_user::RunAs;
use crate::pg::{ClusterConfig, PgBinaries, PgError, quote_ident, quote_literal};
use crate::sandbox::{PAUSE_LOCK, SandboxError, SandboxMeta, SandboxState, StateDir, cluster_of};
use crate::source::SandboxName;

/// The publication on every sandbox that capture slots decode.
pub const CAPTURE_PUBLICATION: &str = "understudy_capture";

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

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ForkError {
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

impl ForkMeta {
    fn save(&self, dir: &Path) -> Result<(), ForkError> {
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

fn forks_dir(state: &StateDir) -> PathBuf {
    state.root().join("forks")
}

fn fork_dir(state: &StateDir, name: &SandboxName) -> PathBuf {
    forks_dir(state).join(name.as_str())
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

fn capture_slot_name(fork: &SandboxName) -> String {
    format!("understudy_capture_{}", fork.as_str().replace('-', "_"))
}

/// Creates a fork of a sandbox. `say` receives progress lines.
pub async fn create(state: &StateDir, opts: &ForkOptions, say: &(dyn Fn(&str) + Sync)) -> Result<ForkMeta, ForkError> {
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => default_name(&opts.sandbox)?,
    };
    let mut forks = create_set(state, opts, vec![name], say).await?;
    forks.pop().ok_or_else(|| ForkError::Corrupt("no fork was made".into()))
}

/// Creates two forks at the same fork point (in one apply pause), each with its own capture slot: a migrated
/// fork and its control twin. Replaying both slots to the same LSN gives two databases that differ only by what
/// is done to one of them.
pub async fn create_twins(
    state: &StateDir,
    opts: &ForkOptions,
    names: (SandboxName, SandboxName),
    say: &(dyn Fn(&str) + Sync),
) -> Result<(ForkMeta, ForkMeta), ForkError> {
    let mut forks = create_set(state, opts, vec![names.0, names.1], say).await?;
    let b = forks
        .pop()
        .ok_or_else(|| ForkError::Corrupt("no control twin was made".into()))?;
    let a = forks
        .pop()
        .ok_or_else(|| ForkError::Corrupt("no fork was made".into()))?;
    Ok((a, b))
}

async fn create_set(
    state: &StateDir,
    opts: &ForkOptions,
    names: Vec<SandboxName>,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Vec<ForkMeta>, ForkError> {
    let requested = Instant::now();
    sweep(state).await?;
    let sandbox_dir = state.sandbox_dir(&opts.sandbox);
    if !sandbox_dir.exists() {
        return Err(SandboxError::NotFound {
            name: opts.sandbox.to_string(),
            state_dir: state.root().to_path_buf(),
        }
        .into());
    }
    let sandbox = SandboxMeta::load(&sandbox_dir)?;
    let not_ready = |reason: String| ForkError::NotReady {
        sandbox: opts.sandbox.to_string(),
        reason,
    };
    if sandbox.phase != SandboxState::Ready {
        return Err(not_ready(format!(
            "its phase is {:?}; see `understudy sandbox status {}`",
            sandbox.phase, opts.sandbox
        )));
    }
    let sandbox_cluster = cluster_of(&sandbox)?;
    let client = sandbox_cluster.connect(&sandbox.database).await.map_err(|e| {
        not_ready(format!(
            "its server does not accept connections ({e}); start the agent (`understudy agent start`), which restarts it"
        ))
    })?;
    let unsynced: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid \
             WHERE s.subname = $1 AND r.srsubstate <> 'r'",
            &[&sandbox.subscription],
        )
        .await
        .map_err(PgError::sql("reading pg_subscription_rel"))?
        .get(0);
    if unsynced > 0 {
        return Err(not_ready(format!(
            "{unsynced} table(s) are still in their initial copy"
        )));
    }

    for name in &names {
        if fork_dir(state, name).exists() {
            return Err(ForkError::Exists(name.to_string()));
        }
    }
    std::fs::create_dir_all(forks_dir(state)).map_err(io("creating the forks directory"))?;
    crate::sandbox::state::set_mode(&forks_dir(state), 0o755)?;
    let (strategy, reason) = match opts.strategy {
        None => strategy::choose(&sandbox.cluster.data_dir, &forks_dir(state)),
        Some(forced) => (
            forced,
            check_forced(forced, &sandbox.cluster.data_dir, &forks_dir(state))?,
        ),
    };
    let now = jiff::Timestamp::now();
    let mut set: Vec<(ForkMeta, PathBuf)> = Vec::new();
    for name in names {
        let dir = fork_dir(state, &name);
        if let Err(e) = std::fs::create_dir(&dir) {
            for (meta, dir) in &set {
                let _ = remove(state, meta, dir).await;
            }
            return Err(ForkError::Io {
                what: format!("creating {}", dir.display()),
                source: e,
            });
        }
        crate::sandbox::state::set_mode(&dir, 0o755)?;
        let meta = ForkMeta {
            name: name.clone(),
            sandbox: opts.sandbox.clone(),
            phase: ForkPhase::Creating,
            strategy,
            strategy_reason: reason.clone(),
            creator_pid: std::process::id(),
            owner_pid: opts.owner_pid,
            lsn: None,
            capture_slot: capture_slot_name(&name),
            database: if strategy.separate_server() {
                sandbox.database.clone()
            } else {
                format!("fork_{}", name.as_str().replace('-', "_"))
            },
            cluster: strategy.separate_server().then(|| fork_cluster_config(&dir)),
            created_at: now,
            expires_at: now
                .checked_add(jiff::SignedDuration::try_from(opts.ttl).unwrap_or(jiff::SignedDuration::from_hours(4)))
                .unwrap_or(now),
            timings: ForkTimings::default(),
        };
        meta.save(&dir)?;
        say(&format!(
            "fork {name} of sandbox {}: strategy {} ({reason})",
            opts.sandbox,
            strategy.as_str()
        ));
        set.push((meta, dir));
    }
    match build(&sandbox, &sandbox_cluster, client, &mut set, requested, say).await {
        Ok(()) => {
            let mut out = Vec::new();
            for (mut meta, dir) in set {
                meta.timings.total_ms = requested.elapsed().as_millis() as u64;
                meta.phase = ForkPhase::Ready;
                meta.save(&dir)?;
                out.push(meta);
            }
            Ok(out)
        }
        Err(err) => {
            say(&format!("fork create failed; removing what it created: {err}"));
            for (meta, dir) in &set {
                let _ = remove(state, meta, dir).await;
            }
            Err(err)
        }
    }
}

fn check_forced(strategy: Strategy, sandbox_data: &Path, forks: &Path) -> Result<String, ForkError> {
    let fs = strategy::filesystem(forks).unwrap_or_else(|| "unknown".into());
    match strategy {
        Strategy::BtrfsSnapshot if !strategy::is_btrfs_subvolume(sandbox_data) || fs != "btrfs" => {
            Err(ForkError::Unsupported {
                strategy: strategy.as_str(),
                reason: format!(
                    "the sandbox's data directory {} is not a btrfs subvolume (the state directory is on {fs}); \
                 create the sandbox in a state directory on btrfs",
                    sandbox_data.display()
                ),
            })
        }
        Strategy::Reflink
            if strategy::filesystem(sandbox_data).as_deref() != Some(fs.as_str())
                || !strategy::reflink_works(forks) =>
        {
            Err(ForkError::Unsupported {
                strategy: strategy.as_str(),
                reason: format!(
                    "{} is on {fs}, which has no reflink copies; use btrfs or xfs with reflink=1",
                    forks.display()
                ),
            })
        }
        _ => Ok("requested".into()),
    }
}

/// A fork's server: the sandbox's settings in its own directory, and never a logical replication worker (its
/// copied subscription points at the source). A fork lives for minutes: no timed checkpoint disturbs what a
/// dry-run measures on it.
fn fork_cluster_config(dir: &Path) -> ClusterConfig {
    let mut config = crate::sandbox::sandbox_cluster_config(dir);
    config.settings.extend([
        ("max_logical_replication_workers".into(), "0".into()),
        ("checkpoint_timeout".into(), "15min".into()),
    ]);
    config
}

async fn build(
    sandbox: &SandboxMeta,
    sandbox_cluster: &Cluster,
    client: Client,
    set: &mut [(ForkMeta, PathBuf)],
    requested_at: Instant,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(), ForkError> {
    client
        .batch_execute(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = {p}) THEN \
             CREATE PUBLICATION {i} FOR ALL TABLES; END IF; END $$",
            p = quote_literal(CAPTURE_PUBLICATION),
            i = quote_ident(CAPTURE_PUBLICATION)
        ))
        .await
        .map_err(PgError::sql("creating the capture publication on the sandbox"))?;
    // A checkpoint before the pause keeps the one inside it short.
    client
        .batch_execute("CHECKPOINT")
        .await
        .map_err(PgError::sql("checkpoint before the pause"))?;

    // The pause: held under an advisory lock so that the follower does not re-enable the subscription.
    let admin = sandbox_cluster
        .connect(crate::sandbox::admin_database(&sandbox.database))
        .await?;
    admin
        .query("SELECT pg_advisory_lock($1)", &[&PAUSE_LOCK])
        .await
        .map_err(PgError::sql("taking the pause lock"))?;
    let pause_started = Instant::now();
    let prepare_ms = requested_at.elapsed().as_millis() as u64;
    let copied = match pause(&client, &sandbox.subscription).await {
        Ok(()) => capture_and_copy(sandbox, client, &admin, set).await,
        Err(e) => Err(e),
    };
    let resumed = resume(sandbox).await;
    let pause_ms = pause_started.elapsed().as_millis() as u64;
    let _ = admin.query("SELECT pg_advisory_unlock($1)", &[&PAUSE_LOCK]).await;
    copied?;
    resumed?;
    // Twins start at once: each is its own server.
    futures_util::future::try_join_all(
        set.iter_mut()
            .map(|(meta, dir)| start_one(sandbox, meta, dir, pause_ms, prepare_ms, say)),
    )
    .await?;
    Ok(())
}

/// Starts a fork made in the pause and detaches it: a server of its own started and scrubbed, or (template) the
/// capture publication dropped from its database; sequences moved past the sandbox's.
async fn start_one(
    sandbox: &SandboxMeta,
    meta: &mut ForkMeta,
    dir: &Path,
    pause_ms: u64,
    prepare_ms: u64,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(), ForkError> {
    meta.timings.pause_ms = pause_ms;
    meta.timings.prepare_ms = prepare_ms;
    say(&format!(
        "fork point {} (capture slot {}); sandbox apply paused {pause_ms} ms",
        meta.lsn.map(|l| l.to_string()).unwrap_or_default(),
        meta.capture_slot,
    ));
    meta.save(dir)?;
    let start = Instant::now();
    let fork_client = match meta.own_cluster()? {
        Some(cluster) => {
            let cluster = Cluster::adopt(
                cluster.binaries().clone(),
                cluster.run_as().clone(),
                cluster.config().clone(),
            )?;
            cluster.start().await?;
            let c = cluster.connect(&meta.database).await?;
            detach(&c).await?;
            c
        }
        None => {
            let c = crate::pg::connect::connect_plain(&meta.conninfo(sandbox), "understudy-fork").await?;
            c.batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                quote_ident(CAPTURE_PUBLICATION)
            ))
            .await
            .map_err(PgError::sql("dropping the capture publication in the fork"))?;
            c
        }
    };
    bump_sequences(&fork_client).await?;
    meta.timings.start_ms = start.elapsed().as_millis() as u64;
    say(&format!(
        "fork {} ready (copy {} ms, start and detach {} ms)",
        meta.name, meta.timings.copy_ms, meta.timings.start_ms
    ));
    Ok(())
}

/// Disables the subscription and waits until its apply worker has exited.
async fn pause(client: &Client, subscription: &str) -> Result<(), ForkError> {
    client
        .batch_execute(&format!("ALTER SUBSCRIPTION {} DISABLE", quote_ident(subscription)))
        .await
        .map_err(PgError::sql("pausing the sandbox's apply"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL)",
                &[&subscription],
            )
            .await
            .map_err(PgError::sql("waiting for the apply worker to stop"))?
            .get(0);
        if !running {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ForkError::Command {
                what: "pausing the sandbox".into(),
                detail: "the apply worker did not stop within 30 s".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn resume(sandbox: &SandboxMeta) -> Result<(), ForkError> {
    let client = crate::pg::connect::connect_plain(
        &format!(
            "host={} port={} user=postgres dbname={}",
            sandbox.cluster.socket_dir.display(),
            sandbox.cluster.port,
            sandbox.database
        ),
        "understudy-fork",
    )
    .await?;
    client
        .batch_execute(&format!(
            "ALTER SUBSCRIPTION {} ENABLE",
            quote_ident(&sandbox.subscription)
        ))
        .await
        .map_err(PgError::sql("resuming the sandbox's apply"))?;
    Ok(())
}

async fn capture_and_copy(
    sandbox: &SandboxMeta,
    client: Client,
    admin: &Client,
    set: &mut [(ForkMeta, PathBuf)],
) -> Result<(), ForkError> {
    // Every capture slot is created while nothing changes the sandbox: they all start at the same point.
    for (meta, dir) in set.iter_mut() {
        let t = Instant::now();
        let lsn: String = client
            .query_one(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&meta.capture_slot],
            )
            .await
            .map_err(PgError::sql("creating the capture slot on the sandbox"))?
            .get(0);
        meta.timings.capture_slot_ms = t.elapsed().as_millis() as u64;
        meta.lsn = Some(
            lsn.parse()
                .map_err(|e: crate::lsn::ParseLsnError| ForkError::Corrupt(e.to_string()))?,
        );
        meta.save(dir)?;
    }
    // A template copy needs the sandbox's database to itself.
    drop(client);
    for (meta, dir) in set.iter_mut() {
        copy_one(sandbox, admin, meta, dir).await?;
    }
    Ok(())
}

async fn copy_one(sandbox: &SandboxMeta, admin: &Client, meta: &mut ForkMeta, dir: &Path) -> Result<(), ForkError> {
    let copy_started = Instant::now();
    let src = &sandbox.cluster.data_dir;
    let dst = dir.join("pgdata");
    match meta.strategy {
        Strategy::BtrfsSnapshot => {
            admin
                .batch_execute("CHECKPOINT")
                .await
                .map_err(PgError::sql("checkpoint in the pause"))?;
            let mut snapshot = tokio::process::Command::new("btrfs");
            snapshot.args(["subvolume", "snapshot"]).arg(src).arg(&dst);
            run("btrfs subvolume snapshot", &mut snapshot).await?;
        }
        Strategy::Reflink | Strategy::Copy => {
            let reflink = meta.strategy == Strategy::Reflink;
            admin
                .query("SELECT pg_backup_start('understudy-fork', true)", &[])
                .await
                .map_err(PgError::sql("starting the backup window"))?;
            // Everything but the WAL now; the WAL once the backup window has ended (it must reach the backup's
            // end), so that it is copied once.
            let owner = crate::pg::os_user::RunAs::detect()?;
            let copied = copy_dir_without_wal(src, &dst, reflink, &owner).await;
            let stopped = admin
                .query_one("SELECT labelfile, spcmapfile FROM pg_backup_stop(false)", &[])
                .await
                .map_err(PgError::sql("ending the backup window"));
            copied?;
            let row = stopped?;
            let label: String = row.get(0);
            let spcmap: String = row.get(1);
            copy_dir(&src.join("pg_wal"), &dst.join("pg_wal"), reflink).await?;
            std::fs::write(dst.join("backup_label"), label).map_err(io("writing backup_label"))?;
            if !spcmap.is_empty() {
                std::fs::write(dst.join("tablespace_map"), spcmap).map_err(io("writing tablespace_map"))?;
            }
            if let Some(cluster) = meta.own_cluster()? {
                for f in ["backup_label", "tablespace_map"] {
                    let p = dst.join(f);
                    if p.exists() {
                        cluster.run_as().own(&p)?;
                    }
                }
            }
        }
        Strategy::Template => {
            let sql = format!(
                "CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY",
                quote_ident(&meta.database),
                quote_ident(&sandbox.database)
            );
            let started = Instant::now();
            loop {
                match admin.batch_execute(&sql).await {
                    Ok(()) => break,
                    // 55006: the template is being accessed by other users. PostgreSQL itself waits up to 5 s for
                    // them to leave before it says so.
                    Err(e)
                        if e.code().is_some_and(|c| c.code() == "55006")
                            && started.elapsed() < Duration::from_secs(30) =>
                    {
                        // Then end the other sessions on the sandbox's database (readers of ours or of a person):
                        // the template copy needs it to itself, and the pause must stay short.
                        if started.elapsed() >= Duration::from_secs(2) {
                            admin
                                .query(
                                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                                    &[&sandbox.database],
                                )
                                .await
                                .map_err(PgError::sql("ending sessions on the template database"))?;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        return Err(PgError::Sql {
                            context: "CREATE DATABASE ... TEMPLATE".into(),
                            source: e,
                        }
                        .into());
                    }
                }
            }
        }
    }
    meta.timings.copy_ms = copy_started.elapsed().as_millis() as u64;
    Ok(())
}

async fn copy_dir(src: &Path, dst: &Path, reflink: bool) -> Result<(), ForkError> {
    let mut cmd = tokio::process::Command::new("cp");
    cmd.arg("-a");
    // GNU cp 9 reflinks by default where it can: say which copy is wanted.
    cmd.arg(if reflink { "--reflink=always" } else { "--reflink=never" });
    cmd.arg(src).arg(dst);
    run(if reflink { "cp --reflink=always" } else { "cp -a" }, &mut cmd).await
}

/// Copies the data directory `src` into `dst` (created here with the server's owner and mode 0700), all but
/// `pg_wal`.
async fn copy_dir_without_wal(
    src: &Path,
    dst: &Path,
    reflink: bool,
    owner: &crate::pg::os_user::RunAs,
) -> Result<(), ForkError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(dst).map_err(io(format!("creating {}", dst.display())))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("setting the mode of {}", dst.display())))?;
    owner.own(dst)?;
    let entries: Vec<PathBuf> = std::fs::read_dir(src)
        .map_err(io(format!("reading {}", src.display())))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "pg_wal")
        .map(|e| e.path())
        .collect();
    let mut cmd = tokio::process::Command::new("cp");
    cmd.arg("-a");
    cmd.arg(if reflink { "--reflink=always" } else { "--reflink=never" });
    cmd.arg("-t").arg(dst).args(&entries);
    run(if reflink { "cp --reflink=always" } else { "cp -a" }, &mut cmd).await
}

/// Runs a copy command; it is killed if the fork's creation is dropped (interrupted).
async fn run(what: &str, cmd: &mut tokio::process::Command) -> Result<(), ForkError> {
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .map_err(io(format!("running {what}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let hint = if detail.contains("No space left") {
            " (the state directory's filesystem is full)"
        } else {
            ""
        };
        Err(ForkError::Command {
            what: what.to_string(),
            detail: format!("{detail}{hint}"),
        })
    }
}

/// Detaches a fork from everything it inherited: the subscription (scrubbed, detached from its slot, dropped;
/// nothing connects to the source), the copied slots and the capture publication.
async fn detach(client: &Client) -> Result<(), ForkError> {
    let subs: Vec<String> = client
        .query("SELECT subname::text FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())", &[])
        .await
        .map_err(PgError::sql("listing the fork's subscriptions"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for sub in subs {
        let s = quote_ident(&sub);
        client
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {s} DISABLE; \
                 ALTER SUBSCRIPTION {s} CONNECTION 'host=/nonexistent/understudy-fork dbname=none'; \
                 ALTER SUBSCRIPTION {s} SET (slot_name = NONE);"
            ))
            .await
            .map_err(PgError::sql("detaching the fork's subscription"))?;
        client
            .batch_execute(&format!("DROP SUBSCRIPTION {s}"))
            .await
            .map_err(PgError::sql("dropping the fork's subscription"))?;
    }
    client
        .batch_execute(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots; DROP PUBLICATION IF EXISTS {}",
            quote_ident(CAPTURE_PUBLICATION)
        ))
        .await
        .map_err(PgError::sql("dropping slots copied into the fork"))?;
    Ok(())
}

/// Moves every sequence of the fork past its current value by a margin, so that rows the fork creates itself do
/// not collide with ids that replayed production inserts will carry.
async fn bump_sequences(client: &Client) -> Result<(), ForkError> {
    client
        .batch_execute(
            "DO $$ DECLARE s record; v bigint; BEGIN \
               FOR s IN SELECT schemaname, sequencename, last_value, max_value, increment_by FROM pg_sequences LOOP \
                 IF s.increment_by > 0 THEN \
                   v := least(s.max_value - 1, coalesce(s.last_value, 0) + greatest(1000000, coalesce(s.last_value, 0) / 2)); \
                   PERFORM setval(format('%I.%I', s.schemaname, s.sequencename), v, true); \
                 END IF; \
               END LOOP; END $$",
        )
        .await
        .map_err(PgError::sql("moving the fork's sequences"))?;
    Ok(())
}

/// Removes a fork: its server and files (or database), and its capture slot on the sandbox.
async fn remove(state: &StateDir, meta: &ForkMeta, dir: &Path) -> Result<(), ForkError> {
    if let Some(cluster) = meta.own_cluster()? {
        cluster.stop(crate::pg::StopMode::Immediate).await.ok();
        cluster.kill_strays();
    }
    for pid in crate::pg::cluster::postmasters_under(dir) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
    let sandbox_dir = state.sandbox_dir(&meta.sandbox);
    if let Ok(sandbox) = SandboxMeta::load(&sandbox_dir)
        && let Ok(cluster) = cluster_of(&sandbox)
        && let Ok(admin) = cluster.connect(crate::sandbox::admin_database(&sandbox.database)).await
    {
        if meta.strategy == Strategy::Template {
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    quote_ident(&meta.database)
                ))
                .await;
        }
        if let Ok(db) = cluster.connect(&sandbox.database).await {
            let _ = crate::source::objects::drop_slot(&db, &meta.capture_slot).await;
        }
        // An interrupted pause must not leave the sandbox's apply disabled.
        if let Ok(db) = cluster.connect(&sandbox.database).await {
            let _ = ensure_enabled(&admin, &db, &sandbox).await;
        }
    }
    let _ = crate::cow::remove_dir(&dir.join("pgdata"));
    // A copy interrupted with its process may still be writing for a moment: retry.
    let mut attempts = 0;
    while dir.exists() {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(_) if attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                return Err(ForkError::Io {
                    what: format!("removing {}", dir.display()),
                    source: e,
                });
            }
        }
    }
    Ok(())
}

/// Re-enables a ready sandbox's subscription left disabled by an interrupted fork (unless a fork holds the pause).
pub async fn ensure_enabled(admin: &Client, db: &Client, sandbox: &SandboxMeta) -> Result<bool, ForkError> {
    if sandbox.phase != SandboxState::Ready {
        return Ok(false);
    }
    let free: bool = admin
        .query_one("SELECT pg_try_advisory_lock($1)", &[&PAUSE_LOCK])
        .await
        .map_err(PgError::sql("checking the pause lock"))?
        .get(0);
    if !free {
        return Ok(false);
    }
    let disabled: bool = db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = $1 AND NOT subenabled)",
            &[&sandbox.subscription],
        )
        .await
        .map_err(PgError::sql("reading pg_subscription"))?
        .get(0);
    if disabled {
        db.batch_execute(&format!(
            "ALTER SUBSCRIPTION {} ENABLE",
            quote_ident(&sandbox.subscription)
        ))
        .await
        .map_err(PgError::sql("re-enabling the subscription"))?;
    }
    let _ = admin.query("SELECT pg_advisory_unlock($1)", &[&PAUSE_LOCK]).await;
    Ok(disabled)
}

/// Deletes fork `name`.
pub async fn delete(state: &StateDir, name: &SandboxName) -> Result<(), ForkError> {
    let dir = fork_dir(state, name);
    if !dir.exists() {
        return Err(ForkError::NotFound(name.to_string()));
    }
    match ForkMeta::load(&dir) {
        Ok(meta) => remove(state, &meta, &dir).await,
        Err(_) => std::fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display()))),
    }
}

/// Every fork's metadata.
pub fn list(state: &StateDir) -> Vec<ForkMeta> {
    let mut forks: Vec<ForkMeta> = std::fs::read_dir(forks_dir(state))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| ForkMeta::load(&e.path()).ok())
        .collect();
    forks.sort_by_key(|f| f.created_at);
    forks
}

/// Removes expired forks and forks whose creation was interrupted; returns their names.
pub async fn sweep(state: &StateDir) -> Result<Vec<String>, ForkError> {
    let now = jiff::Timestamp::now();
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(forks_dir(state)).into_iter().flatten().flatten() {
        let dir = entry.path();
        let Ok(meta) = ForkMeta::load(&dir) else { continue };
        let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
        let abandoned = (meta.phase == ForkPhase::Creating && !alive(meta.creator_pid))
            || meta.owner_pid.is_some_and(|pid| !alive(pid));
        if abandoned || meta.expires_at < now {
            remove(state, &meta, &dir).await?;
            removed.push(meta.name.to_string());
        }
    }
    Ok(removed)
}

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

mod clone;
mod copy;
mod lifecycle;
mod meta;
pub mod orphans;
pub mod strategy;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

pub use clone::clone_stopped;
pub use lifecycle::{abandoned, delete, ensure_enabled, list, release, sweep};
pub use meta::{ForkError, ForkMeta, ForkOptions, ForkPhase, ForkTimings, default_name};
pub use strategy::Strategy;

use copy::capture_and_copy;
use lifecycle::remove;
use meta::{capture_slot_name, fork_dir, forks_dir, io};

use crate::pg::cluster::Cluster;
use crate::pg::{ClusterConfig, PgError, quote_ident, quote_literal};
use crate::sandbox::{PAUSE_LOCK, SandboxMeta, SandboxState, StateDir, cluster_of};
use crate::source::SandboxName;

/// The publication on every sandbox that capture slots decode.
pub const CAPTURE_PUBLICATION: &str = "understudy_capture";

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
    let sandbox = state.sandbox(&opts.sandbox)?;
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
        let meta = ForkMeta {
            name: name.clone(),
            sandbox: opts.sandbox.clone(),
            sandbox_generation: sandbox.generation,
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
        if let Err(e) = meta::create_dir_with(&dir, &meta) {
            for (meta, dir) in &set {
                let _ = remove(state, meta, dir).await;
            }
            return Err(e);
        }
        say(&format!(
            "fork {name} of sandbox {}: strategy {} ({reason})",
            opts.sandbox,
            strategy.as_str()
        ));
        set.push((meta, dir));
    }
    let source = crate::sandbox::state::load_source(&sandbox_dir)?;
    match build(&sandbox, &sandbox_cluster, &source, client, &mut set, requested, say).await {
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

/// Inside the pause (nothing more is applied), the stream is checked once more: a fork is never made of a
/// sandbox whose stream has a gap that the follower has not seen yet. A source this process cannot reach is not
/// a gap (the sandbox's apply worker cannot reach it either); the follower keeps checking.
async fn continuous(
    sandbox: &SandboxMeta,
    cluster: &Cluster,
    client: &Client,
    source: Option<&Client>,
) -> Result<(), ForkError> {
    let Some(source) = source else {
        return Ok(());
    };
    let found = crate::sandbox::follow::continuity(source, client, cluster, sandbox).await?;
    match found.gap {
        None => Ok(()),
        Some(gap) => Err(ForkError::NotReady {
            sandbox: sandbox.name.to_string(),
            reason: format!("{gap}; the agent marks it stale and resyncs it"),
        }),
    }
}

#[allow(clippy::too_many_arguments)]
async fn build(
    sandbox: &SandboxMeta,
    sandbox_cluster: &Cluster,
    source: &crate::pg::ConnInfo,
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

    // Connected before the pause, which stays short.
    let source_client = crate::pg::connect::connect_source(source, "understudy-fork").await.ok();
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
        Ok(()) => match continuous(sandbox, sandbox_cluster, &client, source_client.as_ref()).await {
            Ok(()) => capture_and_copy(sandbox, client, &admin, set).await,
            Err(e) => Err(e),
        },
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
            crate::mask::install::remove(&c).await?;
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
    crate::mask::install::remove(client).await?;
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

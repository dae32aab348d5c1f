//! Resync: a stale sandbox (a gap in its stream, or the breaker) is rebuilt from the source.
//!
//! The next generation is built beside the old copy, in `<sandbox>/gen-<N>/`, by the same steps as a create
//! (preflight, schema, slot with its snapshot, copy, indexes, subscription) but on the sandbox's existing
//! publication. It is swapped in once it has caught up with the source: `sandbox.json` is replaced by the new
//! generation's in one rename, and only then is the old copy's server stopped and its files removed. Until the
//! swap the old copy stays as it was (stale: no fork is made of it), and an interrupted resync leaves a
//! `gen-<N>` directory that the next one removes. Forks and reports carry the generation they were made from.
//!
//! Before anything is built, the old copy's subscription is detached from its slot (so that it can never take a
//! slot of that name again), and a slot of our name on the source is dropped: it is either what a DBA or a
//! failover recreated (not ours, and keeping WAL on production), or what an interrupted resync made.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::create::{self, CreateOptions};
use super::state::{
    self, GENERATION_PREFIX, ResyncPolicy, ResyncStatus, SandboxMeta, SandboxState, StaleReason, StateDir,
};
use super::{SandboxError, cluster_of, delete, follow};
use crate::pg::connect::connect_source;
use crate::pg::{ClusterStatus, PgError};
use crate::source::{Replicate, SandboxName, objects};

/// How long a new generation may take to catch up with the source before the resync gives up (and retries).
const CATCH_UP: Duration = Duration::from_secs(600);

/// When the agent should first try to resync a sandbox that just went stale: at once after a gap, and after a
/// pause after the breaker, so that the pressure that tripped it (a stopped or slow sandbox) can pass.
pub fn first_attempt_after(reason: Option<&StaleReason>) -> Duration {
    match reason {
        Some(StaleReason::BreakerTripped { .. }) => Duration::from_secs(5),
        _ => Duration::ZERO,
    }
}

/// The wait after `attempts` failed attempts: 5 s doubling, at most 5 minutes.
pub fn retry_after(attempts: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << attempts.min(6)).min(300))
}

/// Whether the agent should resync `meta` now: when asked, or by policy auto; a failed attempt waits for its
/// backoff (an asked-for one too: it is retried until it succeeds); a build a killed agent left is taken up again.
pub fn due(meta: &SandboxMeta, now: jiff::Timestamp) -> bool {
    meta.phase == SandboxState::Stale
        && match &meta.resync_status {
            Some(ResyncStatus::Requested { .. } | ResyncStatus::Building { .. }) => true,
            Some(ResyncStatus::WaitingForSource { next_at, .. }) => now >= *next_at,
            Some(ResyncStatus::WaitingForRequest) => false,
            None | Some(ResyncStatus::Done { .. }) => meta.resync == ResyncPolicy::Auto,
        }
}

/// Asks the agent to resync stale sandbox `name` (whatever its policy) on its next pass; returns the metadata
/// with the request recorded. A resync already under way is left as it is.
pub async fn request(state_dir: &StateDir, name: &SandboxName) -> Result<SandboxMeta, SandboxError> {
    let (_lock, dir, mut meta) = locked(state_dir, name).await?;
    if meta.phase != SandboxState::Stale {
        return Err(SandboxError::NotStale {
            name: name.to_string(),
            phase: meta.phase,
        });
    }
    if !meta.resync_status.as_ref().is_some_and(ResyncStatus::in_progress) {
        meta.resync_status = Some(ResyncStatus::Requested {
            at: jiff::Timestamp::now(),
        });
        meta.save(&dir)?;
    }
    Ok(meta)
}

/// Sets the resync policy of sandbox `name`; returns the metadata as saved. A stale sandbox that waited for a
/// request under policy manual is resynced on the next pass once the policy is auto; switching to manual stops
/// no attempt already asked for or under way.
pub async fn set_policy(
    state_dir: &StateDir,
    name: &SandboxName,
    policy: ResyncPolicy,
) -> Result<SandboxMeta, SandboxError> {
    let (_lock, dir, mut meta) = locked(state_dir, name).await?;
    if meta.resync != policy {
        apply_policy(&mut meta, policy);
        meta.save(&dir)?;
    }
    Ok(meta)
}

fn apply_policy(meta: &mut SandboxMeta, policy: ResyncPolicy) {
    meta.resync = policy;
    if policy == ResyncPolicy::Auto && meta.resync_status == Some(ResyncStatus::WaitingForRequest) {
        meta.resync_status = None;
    }
    // The stale error's fix names what the new policy calls for.
    if let Some(reason) = meta.stale_reason.clone().filter(|_| meta.phase == SandboxState::Stale) {
        meta.mark_stale(reason);
    }
}

/// The metadata of sandbox `name`, read under its lock (held while the caller changes it).
pub(crate) async fn locked(
    state_dir: &StateDir,
    name: &SandboxName,
) -> Result<(super::SandboxLock, PathBuf, SandboxMeta), SandboxError> {
    let dir = state_dir.sandbox_dir(name);
    if !dir.exists() {
        return Err(SandboxError::NotFound {
            name: name.to_string(),
            state_dir: state_dir.root().to_path_buf(),
        });
    }
    let lock = super::SandboxLock::acquire(state_dir, name).await?;
    let meta = SandboxMeta::load(&dir)?;
    Ok((lock, dir, meta))
}

/// Records that a resync is waiting (for the source, or after a failed attempt).
pub fn record_wait(meta: &mut SandboxMeta, reason: String, attempts: u32, wait: Duration) {
    let now = jiff::Timestamp::now();
    let next_at = now
        .checked_add(jiff::SignedDuration::try_from(wait).unwrap_or_default())
        .unwrap_or(now);
    meta.resync_status = Some(ResyncStatus::WaitingForSource {
        reason,
        attempts,
        next_at,
    });
}

/// Rebuilds stale sandbox `name` (the caller holds its [`super::SandboxLock`]). Returns the new generation's
/// metadata, now the sandbox's.
pub async fn resync(
    state_dir: &StateDir,
    name: &SandboxName,
    say: &(dyn Fn(&str) + Sync),
) -> Result<SandboxMeta, SandboxError> {
    let dir = state_dir.sandbox_dir(name);
    if !dir.exists() {
        return Err(SandboxError::NotFound {
            name: name.to_string(),
            state_dir: state_dir.root().to_path_buf(),
        });
    }
    let mut old = SandboxMeta::load(&dir)?;
    if old.phase != SandboxState::Stale {
        return Err(SandboxError::NotStale {
            name: name.to_string(),
            phase: old.phase,
        });
    }
    let started_at = jiff::Timestamp::now();
    let generation = old.generation + 1;
    let source = state::load_source(&dir)?;
    retire_subscription(&old).await?;
    discard_leftovers(&dir, &old).await?;

    let client = connect_source(&source, "understudy-resync")
        .await
        .map_err(SandboxError::SourceUnreachable)?;
    if objects::drop_slot(&client, &old.slot).await? {
        say(&format!(
            "dropped slot {} on the source: it was not the one the stale copy was built from",
            old.slot
        ));
    }
    if let Some(oid) = old.subscription_oid {
        for sync_slot in objects::slots_like(&client, &format!("pg\\_{oid}\\_sync\\_%")).await? {
            objects::drop_slot(&client, &sync_slot).await?;
        }
    }
    drop(client);

    old.resync_status = Some(ResyncStatus::Building { generation, started_at });
    old.save(&dir)?;
    let opts = CreateOptions {
        name: name.clone(),
        source: source.clone(),
        // The publication is the sandbox's already (made by Understudy or not): the new copy uses it as it is.
        replicate: Replicate::Publication(old.publication.clone()),
        state_dir: state_dir.clone(),
        jobs: 2,
        wal_budget_bytes: old.wal_budget_bytes,
        progress: false,
        resync: old.resync,
        // Its row filters are in the publication.
        subset: None,
        mask: old.masking.clone(),
    };
    say(&format!(
        "resync of sandbox {name}: building generation {generation} beside the stale copy"
    ));
    let gen_dir = dir.join(format!("{GENERATION_PREFIX}{generation}"));
    let prepared = create::check(&opts, say).await?;
    let mut new = prepared.build_in(gen_dir.clone(), generation, say).await?;
    if let Err(e) = catch_up(&new, &source).await {
        delete::discard_generation(&new, &gen_dir, &source).await.ok();
        return Err(e);
    }

    new.replicate = old.replicate.clone();
    if let (Some(new), Some(old)) = (new.subset.as_mut(), old.subset.as_ref()) {
        new.key = old.key.clone();
    }
    new.publication_owned = old.publication_owned;
    new.resync_status = Some(ResyncStatus::Done {
        generation,
        stale_reason: old
            .stale_reason
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "stale".into()),
        started_at,
        finished_at: jiff::Timestamp::now(),
    });
    // The swap: from this rename on, the sandbox is the new generation.
    new.save(&dir)?;
    let _ = std::fs::remove_file(SandboxMeta::path(&gen_dir));
    delete::stop_generation(&old).await;
    delete::remove_generation(&old, &old_generation_dir(&dir, &old))?;
    say(&format!(
        "sandbox {name} resynced: generation {generation} is current (the stale copy was removed)"
    ));
    Ok(new)
}

/// The directory a generation lives in: the sandbox's own for the first, `gen-<N>` for later ones.
fn old_generation_dir(dir: &Path, meta: &SandboxMeta) -> PathBuf {
    match meta.cluster.data_dir.parent() {
        Some(parent) if parent != dir => parent.to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// The stale copy's subscription is disabled and detached from its slot (if its server runs).
async fn retire_subscription(old: &SandboxMeta) -> Result<(), SandboxError> {
    let cluster = cluster_of(old)?;
    if !matches!(cluster.status().await?, ClusterStatus::Running { .. }) {
        return Ok(());
    }
    let sandbox = cluster.connect(&old.database).await?;
    let exists = sandbox
        .query_opt("SELECT 1 FROM pg_subscription WHERE subname = $1", &[&old.subscription])
        .await
        .map_err(PgError::sql("reading pg_subscription"))?
        .is_some();
    if exists {
        follow::detach(&sandbox, &old.subscription).await?;
    }
    Ok(())
}

/// Removes what an interrupted resync (or a swap cut short) left in the sandbox's directory: every generation
/// directory, and the first generation's files, that the current metadata does not name.
pub async fn discard_leftovers(dir: &Path, current: &SandboxMeta) -> Result<(), SandboxError> {
    let current_dir = old_generation_dir(dir, current);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_generation = entry.file_name().to_string_lossy().starts_with(GENERATION_PREFIX) && path.is_dir();
        if is_generation && path != current_dir {
            kill_postmasters(&path);
            let _ = crate::cow::remove_dir(&path.join("pgdata"));
            std::fs::remove_dir_all(&path).map_err(|e| SandboxError::io(format!("removing {}", path.display()), e))?;
        }
    }
    if current_dir != dir {
        for leftover in ["pgdata", "run", "pgdata.log"] {
            let path = dir.join(leftover);
            kill_postmasters(&path);
            if path.is_dir() {
                let _ = crate::cow::remove_dir(&path);
                let _ = std::fs::remove_dir_all(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    Ok(())
}

fn kill_postmasters(path: &Path) {
    for pid in crate::pg::cluster::postmasters_under(path) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
}

/// Waits until the new generation has applied what the source had written when it was built.
async fn catch_up(new: &SandboxMeta, source: &crate::pg::ConnInfo) -> Result<(), SandboxError> {
    let client = connect_source(source, "understudy-resync").await?;
    let lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(PgError::sql("reading the source's WAL position"))?
        .get(0);
    let lsn = lsn
        .parse()
        .map_err(|e| SandboxError::Failed(format!("the source's WAL position: {e}")))?;
    let sandbox = cluster_of(new)?.connect(&new.database).await?;
    create::wait_caught_up(&sandbox, &new.subscription, lsn, CATCH_UP).await
}

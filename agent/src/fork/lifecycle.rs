//! A fork's end: removal (its server, files or database, its capture slot), the sweep of expired and
//! abandoned forks, and the sandbox's apply turned back on after an interrupted pause.

use std::path::Path;
use std::time::Duration;

use tokio_postgres::Client;

use super::Strategy;
use super::meta::{ForkError, ForkMeta, ForkPhase, fork_dir, fork_dirs, io};
use crate::pg::{PgError, quote_ident};
use crate::sandbox::{PAUSE_LOCK, SandboxMeta, SandboxState, StateDir, cluster_of, staging};
use crate::source::SandboxName;

/// Removes a fork: its server and files (or database), and its capture slot on the sandbox.
pub(super) async fn remove(state: &StateDir, meta: &ForkMeta, dir: &Path) -> Result<(), ForkError> {
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

/// Makes fork `name` stand on its own once the process that made it is done with it (a recording's start point):
/// no process owns it any more, and its expiry removes it.
pub fn release(state: &StateDir, name: &SandboxName) -> Result<ForkMeta, ForkError> {
    let dir = fork_dir(state, name);
    let mut meta = ForkMeta::load(&dir)?;
    meta.owner_pid = None;
    meta.save(&dir)?;
    Ok(meta)
}

/// Every fork's metadata.
pub fn list(state: &StateDir) -> Vec<ForkMeta> {
    let mut forks: Vec<ForkMeta> = fork_dirs(state).filter_map(|dir| ForkMeta::load(&dir).ok()).collect();
    forks.sort_by_key(|f| f.created_at);
    forks
}

/// Why nobody owns fork `meta` any more (`None` while somebody does): its creation was interrupted, the run that
/// owned it is gone, or it expired.
pub fn abandoned(meta: &ForkMeta, now: jiff::Timestamp) -> Option<String> {
    if meta.phase == ForkPhase::Creating && !staging::alive(meta.creator_pid) {
        Some(format!(
            "its creation was interrupted (pid {} is gone)",
            meta.creator_pid
        ))
    } else if let Some(pid) = meta.owner_pid.filter(|pid| !staging::alive(*pid)) {
        Some(format!("the run that owned it (pid {pid}) is gone"))
    } else if meta.expires_at < now {
        Some(format!("it expired at {}", meta.expires_at))
    } else {
        None
    }
}

/// Removes expired forks and forks whose creation was interrupted or whose run is gone; returns their names.
pub async fn sweep(state: &StateDir) -> Result<Vec<String>, ForkError> {
    let now = jiff::Timestamp::now();
    let mut removed = Vec::new();
    for dir in fork_dirs(state) {
        let Ok(meta) = ForkMeta::load(&dir) else { continue };
        if abandoned(&meta, now).is_some() {
            remove(state, &meta, &dir).await?;
            removed.push(meta.name.to_string());
        }
    }
    Ok(removed)
}

//! `sandbox delete`: the sandbox's server is stopped first (so that its apply worker cannot take the slot again),
//! then the slot, any tablesync slots of its subscription and the publication Understudy created are removed from
//! the source, then the local directory. It works when the sandbox cluster is broken or its data directory was
//! removed by hand: all it needs is the metadata, or the name and `--source`.

use serde::Serialize;

use super::state::{self, SandboxMeta, StateDir};
use super::{SandboxError, cluster_of};
use crate::pg::ConnInfo;
use crate::pg::connect::connect_source;
use crate::source::{SandboxName, objects};

/// What `delete` removed.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct DeleteReport {
    pub slots_dropped: Vec<String>,
    pub publication_dropped: Option<String>,
    pub cluster_removed: bool,
    pub directory_removed: bool,
}

/// Deletes sandbox `name`. `source_override` supplies the source when the local metadata is gone; `force`
/// removes the local sandbox even when the source cannot be reached (and says what stays there).
pub async fn delete(
    state_dir: &StateDir,
    name: &SandboxName,
    source_override: Option<ConnInfo>,
    force: bool,
) -> Result<DeleteReport, SandboxError> {
    let dir = state_dir.sandbox_dir(name);
    let meta = SandboxMeta::load(&dir).ok();
    let source = match source_override {
        Some(s) => Some(s),
        None => state::load_source(&dir).ok(),
    };
    if meta.is_none() && source.is_none() {
        if dir.exists() {
            return Err(SandboxError::Failed(format!(
                "{} holds no readable metadata; pass --source CONNINFO so that the slot {} can be removed from \
                 the source",
                dir.display(),
                name.slot()
            )));
        }
        return Err(SandboxError::NotFound {
            name: name.to_string(),
            state_dir: state_dir.root().to_path_buf(),
        });
    }
    let mut report = DeleteReport::default();
    // No supervisor may restart the server from here on.
    let _lock = super::SandboxLock::acquire(state_dir, name).await?;

    // 1. Stop the sandbox server so that nothing reconnects to the slot.
    if let Some(meta) = &meta
        && let Ok(cluster) = cluster_of(meta)
    {
        cluster.stop(crate::pg::StopMode::Immediate).await.ok();
        cluster.kill_strays();
    }
    for pid in crate::pg::cluster::postmasters_under(&dir) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }

    // 2. The source: our slot, our subscription's tablesync slots, our publication.
    let slot = meta.as_ref().map(|m| m.slot.clone()).unwrap_or_else(|| name.slot());
    let own_publication = match &meta {
        Some(m) if m.publication_owned => Some(m.publication.clone()),
        Some(_) => None,
        None => Some(name.publication()),
    };
    let sync_prefix = meta
        .as_ref()
        .and_then(|m| m.subscription_oid)
        .map(|oid| format!("pg\\_{oid}\\_sync\\_%"));
    let source_result = match &source {
        Some(source) => {
            clean_source(
                source,
                &slot,
                sync_prefix.as_deref(),
                own_publication.as_deref(),
                &mut report,
            )
            .await
        }
        None => Err(SandboxError::Failed("the source connection string is missing".into())),
    };
    if let Err(err) = source_result {
        if !force {
            return Err(SandboxError::Failed(format!(
                "could not clean the source, so the sandbox was kept for a retry: {err}. Run the delete again once \
                 the source is reachable, or pass --force to remove the local sandbox anyway (then drop the slot by \
                 hand: SELECT pg_drop_replication_slot('{slot}'){})",
                own_publication
                    .map(|p| format!("; DROP PUBLICATION {p}"))
                    .unwrap_or_default()
            )));
        }
        tracing::warn!(%err, "source not cleaned; removing the local sandbox anyway (--force)");
    }

    // 3. Local files.
    if let Some(meta) = &meta
        && let Ok(cluster) = cluster_of(meta)
    {
        report.cluster_removed = cluster.destroy().await.is_ok();
    }
    if dir.exists() {
        if let Some(meta) = &meta {
            let _ = crate::cow::remove_dir(&meta.cluster.data_dir);
        }
        let _ = crate::cow::remove_dir(&dir.join("pgdata"));
        std::fs::remove_dir_all(&dir).map_err(|e| SandboxError::io(format!("removing {}", dir.display()), e))?;
        report.directory_removed = true;
    }
    super::SandboxLock::remove(state_dir, name);
    Ok(report)
}

/// Removes one generation of a sandbox that is not (or no longer) the current one: its server, its directory
/// `dir` and, when `source` is given, its slot and tablesync slots on the source. Never the publication, which
/// the sandbox keeps.
pub(crate) async fn discard_generation(
    meta: &SandboxMeta,
    dir: &std::path::Path,
    source: &ConnInfo,
) -> Result<(), SandboxError> {
    stop_generation(meta).await;
    let sync_prefix = meta.subscription_oid.map(|oid| format!("pg\\_{oid}\\_sync\\_%"));
    let mut report = DeleteReport::default();
    clean_source(source, &meta.slot, sync_prefix.as_deref(), None, &mut report).await?;
    remove_generation(meta, dir)
}

/// Stops a generation's server for good (and any postmaster left on its data directory).
pub(crate) async fn stop_generation(meta: &SandboxMeta) {
    if let Ok(cluster) = cluster_of(meta) {
        cluster.stop(crate::pg::StopMode::Immediate).await.ok();
        cluster.kill_strays();
    }
    for pid in crate::pg::cluster::postmasters_under(&meta.cluster.data_dir) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
}

/// Removes a stopped generation's files: its data directory (a btrfs subvolume maybe), its socket directory
/// and log, and `dir` itself when it is not the sandbox's own directory.
pub(crate) fn remove_generation(meta: &SandboxMeta, dir: &std::path::Path) -> Result<(), SandboxError> {
    let data = &meta.cluster.data_dir;
    let _ = crate::cow::remove_dir(data);
    if data.exists() {
        std::fs::remove_dir_all(data).map_err(|e| SandboxError::io(format!("removing {}", data.display()), e))?;
    }
    let _ = std::fs::remove_dir_all(&meta.cluster.socket_dir);
    if let Ok(cluster) = cluster_of(meta) {
        let _ = std::fs::remove_file(cluster.log_path());
    }
    if dir
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(super::state::GENERATION_PREFIX))
    {
        std::fs::remove_dir_all(dir).map_err(|e| SandboxError::io(format!("removing {}", dir.display()), e))?;
    }
    Ok(())
}

async fn clean_source(
    source: &ConnInfo,
    slot: &str,
    sync_pattern: Option<&str>,
    publication: Option<&str>,
    report: &mut DeleteReport,
) -> Result<(), SandboxError> {
    let client = connect_source(source, "understudy").await?;
    if objects::drop_slot(&client, slot).await? {
        report.slots_dropped.push(slot.to_string());
    }
    if let Some(pattern) = sync_pattern {
        for sync_slot in objects::slots_like(&client, pattern).await? {
            if objects::drop_slot(&client, &sync_slot).await? {
                report.slots_dropped.push(sync_slot);
            }
        }
    }
    if let Some(publication) = publication
        && objects::drop_publication(&client, publication).await?
    {
        report.publication_dropped = Some(publication.to_string());
    }
    Ok(())
}

//! Local objects that no run owns (`understudy sweep`, and the agent at start): forks whose run is gone, whose
//! creation was interrupted or that expired (with their servers), fork directories without metadata, and capture
//! slots on a sandbox that no fork records. A capture slot keeps the sandbox's WAL, so a forgotten one fills the
//! sandbox's disk as surely as a forgotten source slot fills production's.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::Serialize;

use super::lifecycle::{abandoned, remove as remove_fork};
use super::meta::{ForkError, ForkMeta, forks_dir, io};
use crate::pg::PgError;
use crate::sandbox::staging;
use crate::sandbox::{SandboxMeta, StateDir, cluster_of};
use crate::source::SandboxName;

/// The capture slots' names on a sandbox.
const CAPTURE_LIKE: &str = "understudy\\_capture\\_%";

/// What kind of local object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocalKind {
    /// A fork (its server, files or database, and its capture slot).
    Fork,
    /// A fork directory without readable metadata (its server, if one runs there, is stopped).
    ForkFiles,
    /// A capture slot on a sandbox that no fork records.
    CaptureSlot,
}

impl LocalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LocalKind::Fork => "fork",
            LocalKind::ForkFiles => "fork-files",
            LocalKind::CaptureSlot => "capture-slot",
        }
    }
}

/// One object nobody owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Orphan {
    pub kind: LocalKind,
    pub name: String,
    /// The sandbox it belongs to (a capture slot's, a fork's).
    pub sandbox: Option<String>,
    pub why: String,
    #[serde(skip)]
    path: Option<PathBuf>,
}

/// Everything in `state` that no run owns.
pub async fn find(state: &StateDir) -> Result<Vec<Orphan>, ForkError> {
    let now = jiff::Timestamp::now();
    let mut found = Vec::new();
    let mut recorded = BTreeSet::new();
    // A fork being staged has not recorded its capture slot yet: capture slots are left alone meanwhile.
    let mut forming = false;
    for entry in std::fs::read_dir(forks_dir(state)).into_iter().flatten().flatten() {
        let dir = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if staging::is_staging(&file_name) {
            if staging::abandoned(&file_name) {
                found.push(Orphan {
                    kind: LocalKind::ForkFiles,
                    name: file_name,
                    sandbox: None,
                    why: "a fork's staging whose process is gone".into(),
                    path: Some(dir),
                });
            } else {
                forming = true;
            }
            continue;
        }
        match ForkMeta::load(&dir) {
            Ok(meta) => {
                recorded.insert(meta.capture_slot.clone());
                if let Some(why) = abandoned(&meta, now) {
                    found.push(Orphan {
                        kind: LocalKind::Fork,
                        name: meta.name.to_string(),
                        sandbox: Some(meta.sandbox.to_string()),
                        why,
                        path: Some(dir),
                    });
                }
            }
            // A fork's directory appears with its metadata (it is staged), so one without it is not a fork.
            Err(_) => found.push(Orphan {
                kind: LocalKind::ForkFiles,
                name: file_name,
                sandbox: None,
                why: "no readable fork metadata".into(),
                path: Some(dir),
            }),
        }
    }
    for name in state.sandbox_names().into_iter().filter(|_| !forming) {
        for slot in capture_slots(state, &name).await? {
            if !recorded.contains(&slot) {
                found.push(Orphan {
                    kind: LocalKind::CaptureSlot,
                    name: slot,
                    sandbox: Some(name.to_string()),
                    why: "no fork records it".into(),
                    path: None,
                });
            }
        }
    }
    Ok(found)
}

/// The idle capture slots on sandbox `name` (none when its server is not running).
async fn capture_slots(state: &StateDir, name: &SandboxName) -> Result<Vec<String>, ForkError> {
    let Ok(meta) = SandboxMeta::load(&state.sandbox_dir(name)) else {
        return Ok(Vec::new());
    };
    let Ok(cluster) = cluster_of(&meta) else {
        return Ok(Vec::new());
    };
    let Ok(db) = cluster.connect(&meta.database).await else {
        return Ok(Vec::new());
    };
    let rows = db
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE $1 AND NOT active",
            &[&CAPTURE_LIKE],
        )
        .await
        .map_err(PgError::sql("reading the sandbox's replication slots"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Removes those of `orphans` that are still orphans now; returns them.
pub async fn remove(state: &StateDir, orphans: &[Orphan]) -> Result<Vec<Orphan>, ForkError> {
    let now = find(state).await?;
    let mut removed = Vec::new();
    // The same object still orphaned (its reason may read differently now, an expiry passed meanwhile, say).
    let still = |o: &Orphan| {
        now.iter()
            .any(|n| n.kind == o.kind && n.name == o.name && n.sandbox == o.sandbox)
    };
    for orphan in orphans.iter().filter(|o| still(o)) {
        let gone = match (orphan.kind, &orphan.path) {
            (LocalKind::Fork, Some(dir)) => {
                let meta = ForkMeta::load(dir)?;
                remove_fork(state, &meta, dir).await?;
                true
            }
            (LocalKind::ForkFiles, Some(dir)) => {
                for pid in crate::pg::cluster::postmasters_under(dir) {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status();
                }
                std::fs::remove_dir_all(dir).map_err(io(format!("removing {}", dir.display())))?;
                true
            }
            (LocalKind::CaptureSlot, _) => drop_capture_slot(state, orphan).await?,
            _ => false,
        };
        if gone {
            removed.push(orphan.clone());
        }
    }
    Ok(removed)
}

async fn drop_capture_slot(state: &StateDir, orphan: &Orphan) -> Result<bool, ForkError> {
    let Some(name) = orphan.sandbox.as_deref().and_then(|s| SandboxName::parse(s).ok()) else {
        return Ok(false);
    };
    let meta = SandboxMeta::load(&state.sandbox_dir(&name))?;
    let db = cluster_of(&meta)?.connect(&meta.database).await?;
    Ok(crate::source::sweep::drop_idle_slot(&db, &orphan.name).await?)
}

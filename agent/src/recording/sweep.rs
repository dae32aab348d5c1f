//! What no recorder owns, for `understudy sweep` and the agent's sweep at start: expired recordings, recordings
//! whose recorder is gone before the window ended, and a recording's staging directory whose process is gone. A
//! recording's directory appears under its name only with its metadata (staged, then renamed into place), so a
//! directory there without readable metadata is abandoned too.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{RecordingError, RecordingMeta, RecordingPhase, StreamError, delete, recordings_dir};
use crate::sandbox::StateDir;
use crate::sandbox::staging::{self, PlaceError};

/// A recording, or a recording's files, that nobody owns.
#[derive(Debug, Clone, Serialize)]
pub struct Abandoned {
    pub name: String,
    pub sandbox: Option<String>,
    pub why: String,
    #[serde(skip)]
    path: PathBuf,
    #[serde(skip)]
    has_meta: bool,
}

/// Why nobody owns recording `meta` (`None` while somebody does or it is kept).
fn why(meta: &RecordingMeta, now: jiff::Timestamp) -> Option<String> {
    if meta.phase == RecordingPhase::Recording && !staging::alive(meta.recorder_pid) {
        Some(format!(
            "its recorder (pid {}) is gone before the window ended",
            meta.recorder_pid
        ))
    } else if meta.expires_at < now {
        Some(format!("it expired at {}", meta.expires_at))
    } else {
        None
    }
}

/// Every recording in `state` that nobody owns.
pub fn abandoned(state: &StateDir) -> Vec<Abandoned> {
    let now = jiff::Timestamp::now();
    let mut found = Vec::new();
    for entry in std::fs::read_dir(recordings_dir(state)).into_iter().flatten().flatten() {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if staging::is_staging(&file_name) {
            if staging::abandoned(&file_name) {
                found.push(Abandoned {
                    why: "a recording's staging whose process is gone".into(),
                    name: file_name,
                    sandbox: None,
                    path,
                    has_meta: false,
                });
            }
            continue;
        }
        match RecordingMeta::load(&path) {
            Ok(meta) => {
                if let Some(why) = why(&meta, now) {
                    found.push(Abandoned {
                        name: meta.name.to_string(),
                        sandbox: Some(meta.sandbox.to_string()),
                        why,
                        path,
                        has_meta: true,
                    });
                }
            }
            Err(_) => found.push(Abandoned {
                name: file_name,
                sandbox: None,
                why: "no readable recording metadata".into(),
                path,
                has_meta: false,
            }),
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// Removes `abandoned` (a recording with its start point); what was removed.
pub async fn remove(state: &StateDir, abandoned: &[Abandoned]) -> Result<Vec<Abandoned>, RecordingError> {
    let mut removed = Vec::new();
    for a in abandoned {
        if a.has_meta {
            let name =
                crate::source::SandboxName::parse(&a.name).map_err(|e| RecordingError::Corrupt(e.to_string()))?;
            match delete(state, &name).await {
                Ok(()) | Err(RecordingError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        } else if a.path.exists() {
            std::fs::remove_dir_all(&a.path).map_err(|source| StreamError::Io {
                what: format!("removing {}", a.path.display()),
                source,
            })?;
        }
        removed.push(a.clone());
    }
    Ok(removed)
}

/// Removes every recording nobody owns; their names.
pub async fn sweep(state: &StateDir) -> Result<Vec<String>, RecordingError> {
    let removed = remove(state, &abandoned(state)).await?;
    Ok(removed.into_iter().map(|a| a.name).collect())
}

/// Makes recording directory `dir` with `meta` in it (`sandbox::staging`; `Exists` if a recording of that name
/// appeared meanwhile).
pub(super) fn create_dir_with(dir: &Path, meta: &RecordingMeta) -> Result<(), RecordingError> {
    staging::place(dir, |staging| meta.save(staging)).map_err(|e| match e {
        PlaceError::Fill(e) => e,
        PlaceError::Exists => RecordingError::Exists(meta.name.to_string()),
        PlaceError::Io { what, source } => StreamError::Io { what, source }.into(),
    })
}

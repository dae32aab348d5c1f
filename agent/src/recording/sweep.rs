//! What no recorder owns, for `understudy sweep` and the agent's sweep at start: expired recordings, recordings
//! whose recorder is gone before the window ended, and a recording's staging directory whose process is gone. A
//! recording's directory appears under its name only with its metadata (staged, then renamed into place), so a
//! directory there without readable metadata is abandoned too.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{RecordingError, RecordingMeta, RecordingPhase, StreamError, delete, recordings_dir};
use crate::sandbox::StateDir;

const STAGING_PREFIX: &str = ".staging-";

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

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid of the process staging `file_name`, if it is a staging directory's name.
fn staging_pid(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix(STAGING_PREFIX)?;
    rest.rsplit_once('.')?.1.parse().ok()
}

/// Whether `file_name` names a staging directory (not a recording).
pub(super) fn is_staging(file_name: &str) -> bool {
    file_name.starts_with(STAGING_PREFIX)
}

/// Why nobody owns recording `meta` (`None` while somebody does or it is kept).
fn why(meta: &RecordingMeta, now: jiff::Timestamp) -> Option<String> {
    if meta.phase == RecordingPhase::Recording && !alive(meta.recorder_pid) {
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
        if is_staging(&file_name) {
            match staging_pid(&file_name) {
                Some(pid) if alive(pid) => {}
                _ => found.push(Abandoned {
                    why: "a recording's staging whose process is gone".into(),
                    name: file_name,
                    sandbox: None,
                    path,
                    has_meta: false,
                }),
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

/// Makes recording directory `dir` with `meta` in it: staged under a hidden name, then renamed into place without
/// replacing anything (`Exists` if a recording of that name appeared meanwhile).
pub(super) fn create_dir_with(state: &StateDir, dir: &Path, meta: &RecordingMeta) -> Result<(), RecordingError> {
    let staging = recordings_dir(state).join(format!("{STAGING_PREFIX}{}.{}", meta.name, std::process::id()));
    let io = |what: String| move |source| RecordingError::Stream(StreamError::Io { what, source });
    std::fs::create_dir_all(&staging).map_err(io(format!("creating {}", staging.display())))?;
    let placed = meta
        .save(&staging)
        .and_then(|()| match crate::sandbox::state::rename_new(&staging, dir) {
            Ok(true) => Ok(()),
            Ok(false) => Err(RecordingError::Exists(meta.name.to_string())),
            Err(source) => Err(io(format!("renaming {} to {}", staging.display(), dir.display()))(
                source,
            )),
        });
    if placed.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    placed
}

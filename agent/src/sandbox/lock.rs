//! One process at a time may change a sandbox's server: the agent's supervisor holds this lock for each pass over
//! a sandbox (restart, follower, status), and `delete` holds it while it stops the server and removes the
//! sandbox, so that a supervisor cannot restart a server that is being deleted. The lock is an OS file lock on
//! `<state>/sandboxes/<name>.lock`, released when the holder drops it or dies.

use std::fs::File;
use std::path::PathBuf;

use super::{SandboxError, StateDir};
use crate::source::SandboxName;

/// A held sandbox lock.
#[derive(Debug)]
pub struct SandboxLock {
    _file: File,
}

fn lock_path(state: &StateDir, name: &SandboxName) -> PathBuf {
    state.root().join("sandboxes").join(format!("{}.lock", name.as_str()))
}

impl SandboxLock {
    /// Waits for the lock of sandbox `name`.
    pub async fn acquire(state: &StateDir, name: &SandboxName) -> Result<Self, SandboxError> {
        let path = lock_path(state, name);
        tokio::task::spawn_blocking(move || {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| SandboxError::io(format!("creating {}", parent.display()), e))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| SandboxError::io(format!("opening {}", path.display()), e))?;
            file.lock()
                .map_err(|e| SandboxError::io(format!("locking {}", path.display()), e))?;
            Ok(SandboxLock { _file: file })
        })
        .await
        .map_err(|e| SandboxError::Failed(format!("lock task failed: {e}")))?
    }

    /// Removes the lock file of a deleted sandbox (holders of the old file are unaffected).
    pub fn remove(state: &StateDir, name: &SandboxName) {
        let _ = std::fs::remove_file(lock_path(state, name));
    }
}

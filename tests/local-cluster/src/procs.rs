//! Processes: signals (through `kill(1)`, the workspace allows no `unsafe`), `/proc` scans, and the registry of
//! every container process the node started, which stops them all even from a synchronous `Drop`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The environment variable every container process (and what it starts, unless it clears its environment) carries:
/// `DIR|POD_UID|CONTAINER`. It plays the container's cgroup: when a container ends, every process carrying its
/// marker is killed.
pub const MARKER_VAR: &str = "UNDERSTUDY_LOCAL_CLUSTER_CONTAINER";

/// Sends `signal` (`TERM`, `KILL`) to `pid`; a negative `pid` is a process group. False when nothing was signalled.
pub fn signal(pid: i64, signal: &str) -> bool {
    Command::new("kill")
        .args(["-s", signal, "--", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Every process id in `/proc` but this process's.
fn pids() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| *pid != me)
        .collect()
}

fn nul_separated(pid: u32, file: &str) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .map(|bytes| {
            bytes
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Live processes whose marker ([`MARKER_VAR`]) starts with `prefix`.
pub fn marked(prefix: &str) -> Vec<u32> {
    let wanted = format!("{MARKER_VAR}={prefix}");
    pids()
        .into_iter()
        .filter(|pid| nul_separated(*pid, "environ").iter().any(|v| v.starts_with(&wanted)))
        .filter(|pid| alive(*pid))
        .collect()
}

/// Live processes whose command line mentions `dir` (what a test checks is gone after a shutdown).
pub fn naming(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    pids()
        .into_iter()
        .filter_map(|pid| {
            let cmdline = nul_separated(pid, "cmdline").join(" ");
            (cmdline.contains(&needle) && alive(pid)).then_some((pid, cmdline))
        })
        .collect()
}

/// Live PostgreSQL postmasters whose `-D` lies under one of `dirs` (`pg_ctl` starts them in their own session, and
/// the agent may start them through `runuser`, so neither the process group nor, always, the marker reaches them).
pub fn postmasters_under(dirs: &[PathBuf]) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|pid| {
            let args = nul_separated(*pid, "cmdline");
            let is_postgres = args
                .first()
                .is_some_and(|a| a == "postgres" || a.ends_with("/postgres"));
            is_postgres
                && args
                    .windows(2)
                    .any(|w| w[0] == "-D" && dirs.iter().any(|d| Path::new(&w[1]).starts_with(d)))
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// SIGKILLs a container's leftovers: its process group, every process carrying `marker`, and the postmasters of
/// its volumes.
pub fn kill_container_leftovers(pgid: Option<u32>, marker: &str, volumes: &[PathBuf]) {
    if let Some(pgid) = pgid {
        signal(-i64::from(pgid), "KILL");
    }
    for pid in marked(marker).into_iter().chain(postmasters_under(volumes)) {
        signal(i64::from(pid), "KILL");
    }
}

/// Waits until none of `pids` is alive, at most `timeout`; true when they all ended.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if pids.iter().all(|p| !alive(*p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The container processes the node runs, by pid (each the leader of its process group), with their markers.
/// Once [`Registry::stop_all`] began, no process may be registered: the caller kills what it just started.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<RegistryInner>>);

#[derive(Default)]
struct RegistryInner {
    stopping: bool,
    processes: HashMap<u32, String>,
}

impl Registry {
    /// Runs `spawn` (which starts a process and returns its pid) unless the registry is stopping, and records the
    /// pid under `marker`. `None` when stopping.
    pub fn spawn_registered<T>(
        &self,
        marker: &str,
        spawn: impl FnOnce() -> std::io::Result<(T, u32)>,
    ) -> Option<std::io::Result<T>> {
        let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.stopping {
            return None;
        }
        Some(spawn().map(|(value, pid)| {
            inner.processes.insert(pid, marker.to_string());
            value
        }))
    }

    pub fn unregister(&self, pid: u32) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .processes
            .remove(&pid);
    }

    /// The pids registered now.
    pub fn pids(&self) -> Vec<u32> {
        let inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        inner.processes.keys().copied().collect()
    }

    /// Stops every registered process from any thread, synchronously: SIGTERM, up to `grace`, then SIGKILL of their
    /// groups, of every process marked under `marker_prefix` and of every postmaster under `dirs`. Later
    /// registrations are refused.
    pub fn stop_all(&self, grace: Duration, marker_prefix: &str, dirs: &[PathBuf]) {
        let pids: Vec<u32> = {
            let mut inner = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            inner.stopping = true;
            inner.processes.drain().map(|(pid, _)| pid).collect()
        };
        for pid in &pids {
            signal(i64::from(*pid), "TERM");
        }
        wait_gone(&pids, grace);
        for pid in &pids {
            signal(-i64::from(*pid), "KILL");
        }
        for pid in marked(marker_prefix).into_iter().chain(postmasters_under(dirs)) {
            signal(i64::from(pid), "KILL");
        }
    }
}

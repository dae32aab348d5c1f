//! The supervisor: keeps every sandbox of a state directory current without anyone watching. For each sandbox a
//! task ([`watch`]) restarts its PostgreSQL server when it stopped or crashed (with backoff, counted), runs the
//! follower pass (DDL, sequences, the WAL budget breaker) and refreshes its status for the API, `/readyz` and
//! the metrics. Sandboxes created or deleted by other processes are picked up by a rescan of the directory.

mod backoff;
mod watch;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::sandbox::{SandboxState, SandboxStatus, StateDir};
use crate::source::SandboxName;

/// How often the supervisor works.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Between two follower passes over a sandbox.
    pub follow_interval: Duration,
    /// Between two status refreshes (each reads the source's slot).
    pub status_interval: Duration,
    /// Between two scans of the state directory for sandboxes created or deleted elsewhere.
    pub rescan_interval: Duration,
    /// The longest wait between two restarts of a server that keeps failing.
    pub max_backoff: Duration,
    /// A sandbox lagging more than this is not current (`/readyz`).
    pub max_lag: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            follow_interval: Duration::from_secs(2),
            status_interval: Duration::from_secs(5),
            rescan_interval: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            max_lag: Duration::from_secs(30),
        }
    }
}

/// What the supervisor did for one sandbox.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Supervision {
    /// Restarts of the sandbox's server by this agent.
    pub restarts: u64,
    pub last_restart_at: Option<jiff::Timestamp>,
    /// Why the last restart failed, when it did.
    pub last_restart_error: Option<String>,
    pub last_pass_at: Option<jiff::Timestamp>,
    /// Why the last follower pass failed, or what it reported.
    pub last_pass_error: Option<String>,
    /// Source schema changes the follower applied (the latest 20).
    pub applied: Vec<String>,
    /// When the sandbox was last seen current (ready, within the lag threshold).
    pub last_current_at: Option<jiff::Timestamp>,
    /// Whether it is current now.
    pub current: bool,
    /// Why it is not current.
    pub not_current_reason: Option<String>,
}

/// The latest of a sandbox: its status (absent until the first refresh) and its supervision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub status: Option<SandboxStatus>,
    pub supervision: Supervision,
}

struct Watched {
    snapshot: Arc<RwLock<Snapshot>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The sandboxes of one state directory, each watched by its own task.
pub struct Supervisor {
    state: StateDir,
    settings: Settings,
    metrics: Arc<Metrics>,
    watched: Mutex<BTreeMap<SandboxName, Watched>>,
    /// Sandboxes not to watch (being deleted through the API).
    released: Mutex<Vec<SandboxName>>,
}

impl Supervisor {
    pub fn new(state: StateDir, settings: Settings, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Supervisor {
            state,
            settings,
            metrics,
            watched: Mutex::new(BTreeMap::new()),
            released: Mutex::new(Vec::new()),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Watches every sandbox until `shutdown`; then stops the watches (the sandboxes and their servers stay).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            self.rescan();
            tokio::select! {
                _ = tokio::time::sleep(self.settings.rescan_interval) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        let all: Vec<Watched> = match self.watched.lock() {
            Ok(mut w) => std::mem::take(&mut *w).into_values().collect(),
            Err(_) => Vec::new(),
        };
        for w in all {
            w.stop.cancel();
            let _ = w.task.await;
        }
    }

    /// Starts watching sandboxes that appeared, stops watching those that are gone.
    pub fn rescan(self: &Arc<Self>) {
        let present = self.state.sandbox_names();
        let released = self.released.lock().map(|r| r.clone()).unwrap_or_default();
        let Ok(mut watched) = self.watched.lock() else { return };
        let gone: Vec<SandboxName> = watched
            .keys()
            .filter(|n| !present.contains(n) || released.contains(n) || watched[*n].task.is_finished())
            .cloned()
            .collect();
        for name in gone {
            if let Some(w) = watched.remove(&name) {
                w.stop.cancel();
            }
            if !present.contains(&name) {
                self.metrics.forget_sandbox(name.as_str());
            }
        }
        for name in present.into_iter().filter(|n| !released.contains(n)) {
            if watched.contains_key(&name) {
                continue;
            }
            let snapshot = Arc::new(RwLock::new(Snapshot::default()));
            let stop = CancellationToken::new();
            let task = tokio::spawn(watch::watch(
                watch::Watch {
                    state: self.state.clone(),
                    name: name.clone(),
                    settings: self.settings.clone(),
                    metrics: Arc::clone(&self.metrics),
                    snapshot: Arc::clone(&snapshot),
                },
                stop.clone(),
            ));
            watched.insert(name, Watched { snapshot, stop, task });
        }
    }

    /// The latest snapshot of sandbox `name`, when it is watched.
    pub fn snapshot(&self, name: &SandboxName) -> Option<Snapshot> {
        let watched = self.watched.lock().ok()?;
        let w = watched.get(name)?;
        w.snapshot.read().ok().map(|s| s.clone())
    }

    /// Every watched sandbox's snapshot.
    pub fn snapshots(&self) -> Vec<(SandboxName, Snapshot)> {
        let Ok(watched) = self.watched.lock() else {
            return Vec::new();
        };
        watched
            .iter()
            .filter_map(|(n, w)| w.snapshot.read().ok().map(|s| (n.clone(), s.clone())))
            .collect()
    }

    /// Stops watching `name` (before it is deleted), waiting for a pass in flight to end.
    pub async fn release(&self, name: &SandboxName) {
        if let Ok(mut r) = self.released.lock() {
            r.push(name.clone());
        }
        let w = self.watched.lock().ok().and_then(|mut w| w.remove(name));
        if let Some(w) = w {
            w.stop.cancel();
            let _ = w.task.await;
        }
    }

    /// Watches `name` again (a delete that kept the sandbox).
    pub fn resume(self: &Arc<Self>, name: &SandboxName) {
        if let Ok(mut r) = self.released.lock() {
            r.retain(|n| n != name);
        }
        self.rescan();
    }

    /// Whether every sandbox of the state directory is current; the reasons of those that are not (one not
    /// watched or not refreshed yet is not current).
    pub fn readiness(&self) -> (bool, Vec<(String, String)>) {
        let snapshots: BTreeMap<SandboxName, Snapshot> = self.snapshots().into_iter().collect();
        let mut not = Vec::new();
        for name in self.state.sandbox_names() {
            let reason = match snapshots.get(&name) {
                Some(snap) if snap.supervision.current => continue,
                Some(snap) => snap
                    .supervision
                    .not_current_reason
                    .clone()
                    .unwrap_or_else(|| "not checked yet".into()),
                None => "not checked yet".into(),
            };
            not.push((name.to_string(), reason));
        }
        (not.is_empty(), not)
    }
}

/// The lag in seconds when the source reports none (its `replay_lag` is NULL between samples): the source was at
/// `lsn` at each `(time, lsn)` of `positions` (oldest first); once the slot confirmed `confirmed`, everything
/// written before the newest such time is on the sandbox, so the lag is at most `now` minus that time (at least
/// `now` minus the oldest time when none is confirmed yet).
pub fn estimate_lag(
    positions: &std::collections::VecDeque<(jiff::Timestamp, crate::lsn::Lsn)>,
    confirmed: crate::lsn::Lsn,
    now: jiff::Timestamp,
) -> Option<f64> {
    let since = |t: &jiff::Timestamp| (now.as_millisecond() - t.as_millisecond()).max(0) as f64 / 1000.0;
    let (_, latest) = positions.back()?;
    if confirmed >= *latest {
        return Some(0.0);
    }
    match positions.iter().rev().find(|(_, lsn)| *lsn <= confirmed) {
        Some((t, _)) => Some(since(t)),
        None => positions.front().map(|(t, _)| since(t)),
    }
}

/// Whether a status is current within `max_lag`, and why not.
pub fn current(st: &SandboxStatus, max_lag: Duration) -> Result<(), String> {
    if st.state != SandboxState::Ready {
        let state = serde_json::to_value(st.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        return Err(if st.reasons.is_empty() {
            state
        } else {
            format!("{state}: {}", st.reasons.join("; "))
        });
    }
    if !st.apply_worker_running {
        return Err("the apply worker is not running".into());
    }
    match st.lag_seconds {
        Some(s) if s > max_lag.as_secs_f64() => Err(format!("lags {s:.1} s behind the source")),
        Some(_) => Ok(()),
        None if st.lag_bytes == Some(0) => Ok(()),
        None => Err("its lag is unknown".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::lsn::Lsn;

    fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_800_000_000 + secs).expect("time")
    }

    #[test]
    fn the_lag_is_bounded_by_when_the_source_was_at_the_confirmed_position() {
        let positions: VecDeque<_> = [(at(0), Lsn(100)), (at(5), Lsn(200)), (at(10), Lsn(300))].into();
        assert_eq!(estimate_lag(&positions, Lsn(300), at(10)), Some(0.0));
        assert_eq!(estimate_lag(&positions, Lsn(250), at(10)), Some(5.0));
        assert_eq!(estimate_lag(&positions, Lsn(100), at(12)), Some(12.0));
        // Nothing confirmed yet that the source had at any sample: at least as old as the oldest sample.
        assert_eq!(estimate_lag(&positions, Lsn(50), at(12)), Some(12.0));
        assert_eq!(estimate_lag(&VecDeque::new(), Lsn(50), at(12)), None);
    }
}

//! One sandbox's watch: every pass (under the sandbox's lock) restarts a stopped or crashed server, runs the
//! follower and, every few seconds, refreshes the status. A sandbox still in its initial copy belongs to the
//! process creating it and is left alone.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::{Settings, Snapshot};
use crate::metrics::Metrics;
use crate::pg::ClusterStatus;
use crate::sandbox::{self, SandboxLock, SandboxMeta, SandboxState, StateDir, follow};
use crate::source::SandboxName;

pub(super) struct Watch {
    pub state: StateDir,
    pub name: SandboxName,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub snapshot: Arc<RwLock<Snapshot>>,
}

impl Watch {
    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        if let Ok(mut s) = self.snapshot.write() {
            f(&mut s);
        }
    }
}

/// Watches one sandbox until `stop` or until it is deleted.
pub(super) async fn watch(w: Watch, stop: CancellationToken) {
    let mut backoff = Backoff::new(w.settings.max_backoff);
    let mut positions = VecDeque::new();
    let mut next_status = Instant::now();
    loop {
        let lock = tokio::select! {
            lock = SandboxLock::acquire(&w.state, &w.name) => lock,
            _ = stop.cancelled() => return,
        };
        let dir = w.state.sandbox_dir(&w.name);
        if !dir.exists() {
            return;
        }
        match lock {
            Ok(_held) => {
                let refreshed = pass(&w, &mut backoff, &mut positions, Instant::now() >= next_status).await;
                if refreshed {
                    next_status = Instant::now() + w.settings.status_interval;
                }
            }
            Err(e) => w.update(|s| s.supervision.last_pass_error = Some(e.to_string())),
        }
        tokio::select! {
            _ = tokio::time::sleep(w.settings.follow_interval) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One pass; returns whether the status was refreshed. `positions` remembers where the source was at each
/// refresh, for the lag estimate.
async fn pass(
    w: &Watch,
    backoff: &mut Backoff,
    positions: &mut VecDeque<(jiff::Timestamp, crate::lsn::Lsn)>,
    refresh_due: bool,
) -> bool {
    let dir = w.state.sandbox_dir(&w.name);
    let meta = match SandboxMeta::load(&dir) {
        Ok(m) => m,
        Err(e) => {
            w.update(|s| s.supervision.last_pass_error = Some(e.to_string()));
            return false;
        }
    };
    if meta.phase == SandboxState::InitialSync {
        w.update(|s| {
            s.supervision.current = false;
            s.supervision.not_current_reason = Some("its initial copy is running".into());
        });
        return false;
    }
    let restarted = keep_running(w, &meta, backoff).await;
    let now = jiff::Timestamp::now();
    if meta.phase != SandboxState::Stale {
        match follow::follow_once(&w.state, &w.name).await {
            Ok(report) => {
                if !report.applied.is_empty() {
                    w.metrics.ddl_applied(w.name.as_str(), report.applied.len());
                }
                if report.breaker_tripped {
                    w.metrics.breaker_tripped(w.name.as_str());
                }
                if report.gap {
                    w.metrics.gap_found(w.name.as_str());
                }
                if report.new_drift > 0 {
                    w.metrics.drift_found(w.name.as_str(), report.new_drift);
                }
                w.update(|s| {
                    s.supervision.last_pass_at = Some(now);
                    s.supervision.last_pass_error = report.error.clone();
                    s.supervision.applied.extend(report.applied.iter().cloned());
                    let excess = s.supervision.applied.len().saturating_sub(20);
                    s.supervision.applied.drain(..excess);
                });
            }
            Err(e) => {
                w.metrics.error(crate::error::Classify::kind(&e));
                w.update(|s| {
                    s.supervision.last_pass_at = Some(now);
                    s.supervision.last_pass_error = Some(e.to_string());
                });
            }
        }
    }
    let resynced = resync_if_due(w).await;
    if !(refresh_due || restarted || resynced) {
        return false;
    }
    match sandbox::status(&w.state, &w.name).await {
        Ok(mut st) => {
            if let (Some(at), Some(confirmed)) = (st.source_lsn, st.confirmed_lsn) {
                positions.push_back((now, at));
                while positions.len() > 400 {
                    positions.pop_front();
                }
                if st.lag_seconds.is_none() {
                    st.lag_seconds = super::estimate_lag(positions, confirmed, now);
                }
            }
            w.metrics.sandbox(&st);
            let current = super::current(&st, w.settings.max_lag);
            if current.is_ok() {
                w.metrics.sandbox_current(w.name.as_str(), now);
            }
            w.update(|s| {
                s.supervision.current = current.is_ok();
                s.supervision.not_current_reason = current.err();
                if s.supervision.current {
                    s.supervision.last_current_at = Some(now);
                }
                s.status = Some(st);
            });
        }
        Err(e) => w.update(|s| {
            s.supervision.current = false;
            s.supervision.not_current_reason = Some(e.to_string());
        }),
    }
    true
}

/// Resyncs the sandbox when it is stale and its policy and backoff allow (see [`sandbox::resync`]); returns
/// whether a resync ran.
async fn resync_if_due(w: &Watch) -> bool {
    use sandbox::resync;
    let dir = w.state.sandbox_dir(&w.name);
    let Ok(mut meta) = SandboxMeta::load(&dir) else {
        return false;
    };
    if meta.phase != SandboxState::Stale {
        return false;
    }
    if meta.resync_status.is_none() {
        match meta.resync {
            sandbox::state::ResyncPolicy::Manual => {
                meta.resync_status = Some(sandbox::state::ResyncStatus::WaitingForRequest);
            }
            sandbox::state::ResyncPolicy::Auto => {
                let wait = resync::first_attempt_after(meta.stale_reason.as_ref());
                resync::record_wait(&mut meta, "the sandbox went stale".into(), 0, wait);
            }
        }
        let _ = meta.save(&dir);
    }
    if !resync::due(&meta, jiff::Timestamp::now()) {
        return false;
    }
    let attempts = match &meta.resync_status {
        Some(sandbox::state::ResyncStatus::WaitingForSource { attempts, .. }) => *attempts,
        _ => 0,
    };
    w.update(|s| {
        s.supervision.current = false;
        s.supervision.not_current_reason = Some("it is stale and being resynced".into());
    });
    let say = |line: &str| tracing::info!(sandbox = %w.name, "{line}");
    match resync::resync(&w.state, &w.name, &say).await {
        Ok(new) => {
            w.metrics.resynced(w.name.as_str(), true);
            tracing::info!(sandbox = %w.name, generation = new.generation, "resync done");
        }
        Err(e) => {
            w.metrics.resynced(w.name.as_str(), false);
            w.metrics.error(crate::error::Classify::kind(&e));
            tracing::warn!(sandbox = %w.name, error = %e, "resync failed; retrying later");
            if let Ok(mut meta) = SandboxMeta::load(&dir) {
                let attempts = attempts + 1;
                resync::record_wait(&mut meta, e.to_string(), attempts, resync::retry_after(attempts));
                let _ = meta.save(&dir);
            }
        }
    }
    true
}

/// Restarts the sandbox's server when it is not running and the backoff allows; returns whether it restarted.
async fn keep_running(w: &Watch, meta: &SandboxMeta, backoff: &mut Backoff) -> bool {
    let cluster = match sandbox::cluster_of(meta) {
        Ok(c) => c,
        Err(e) => {
            w.update(|s| s.supervision.last_restart_error = Some(e.to_string()));
            return false;
        }
    };
    let now = Instant::now();
    match cluster.status().await {
        Ok(ClusterStatus::Running { .. }) => {
            backoff.running(now);
            return false;
        }
        Ok(ClusterStatus::Missing) => {
            w.update(|s| {
                s.supervision.last_restart_error = Some(format!(
                    "the data directory {} is missing",
                    meta.cluster.data_dir.display()
                ))
            });
            return false;
        }
        Ok(ClusterStatus::Stopped) => {}
        Err(e) => {
            w.update(|s| s.supervision.last_restart_error = Some(e.to_string()));
            return false;
        }
    }
    if !backoff.ready(now) {
        return false;
    }
    backoff.attempt(now);
    tracing::warn!(sandbox = %w.name, "the sandbox's server is not running; restarting it");
    let result = cluster.start().await;
    w.metrics.server_restarted(w.name.as_str());
    let at = jiff::Timestamp::now();
    w.update(|s| {
        s.supervision.restarts += 1;
        s.supervision.last_restart_at = Some(at);
        s.supervision.last_restart_error = result.as_ref().err().map(ToString::to_string);
    });
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(sandbox = %w.name, error = %e, "restart failed; retrying after {:?}", backoff.delay());
            false
        }
    }
}

//! The agent's Prometheus metrics (`GET /metrics`), named by Prometheus conventions: `understudy_` prefix, base
//! units, `_total` for counters. Labels carry sandbox names, states, verdicts and error kinds, never secrets or
//! row data.

use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::error::ErrorKind;
use crate::report::Verdict;
use crate::sandbox::{SandboxState, SandboxStatus, TableSyncState};
use crate::source::objects::WalStatus;

/// Every metric the agent serves.
pub struct Metrics {
    registry: Registry,
    info: IntGaugeVec,
    sandbox_state: IntGaugeVec,
    lag_bytes: GaugeVec,
    lag_seconds: GaugeVec,
    wal_retained_bytes: GaugeVec,
    wal_budget_bytes: GaugeVec,
    wal_status: IntGaugeVec,
    tables: IntGaugeVec,
    drift: IntGaugeVec,
    server_restarts: IntCounterVec,
    breaker_trips: IntCounterVec,
    gaps: IntCounterVec,
    resyncs: IntCounterVec,
    generation: IntGaugeVec,
    source_outage: GaugeVec,
    drift_found: IntCounterVec,
    ddl_applied: IntCounterVec,
    last_current: GaugeVec,
    dryruns: IntCounterVec,
    dryruns_running: IntGaugeVec,
    errors: IntCounterVec,
}

const WAL_STATUSES: [WalStatus; 4] = [
    WalStatus::Reserved,
    WalStatus::Extended,
    WalStatus::Unreserved,
    WalStatus::Lost,
];

const SYNC_STATES: [TableSyncState; 6] = [
    TableSyncState::Initializing,
    TableSyncState::Copying,
    TableSyncState::FinishedCopy,
    TableSyncState::Syncing,
    TableSyncState::Ready,
    TableSyncState::Unknown,
];

const STATES: [SandboxState; 4] = [
    SandboxState::InitialSync,
    SandboxState::Ready,
    SandboxState::Degraded,
    SandboxState::Stale,
];

fn state_label(state: SandboxState) -> &'static str {
    match state {
        SandboxState::InitialSync => "initial-sync",
        SandboxState::Ready => "ready",
        SandboxState::Degraded => "degraded",
        SandboxState::Stale => "stale",
    }
}

/// A metric definition that cannot fail but for a programming error (a duplicate name); reported, not panicked.
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl crate::error::Classify for MetricsError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Internal
    }
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| -> Result<GaugeVec, MetricsError> {
            let g = GaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, MetricsError> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, MetricsError> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let info = int_gauge("understudy_agent_info", "The agent's version (always 1)", &["version"])?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Ok(Metrics {
            info,
            sandbox_state: int_gauge(
                "understudy_sandbox_state",
                "1 for the state each sandbox is in, 0 for the others",
                &["sandbox", "state"],
            )?,
            lag_bytes: gauge(
                "understudy_sandbox_apply_lag_bytes",
                "WAL the sandbox has not yet confirmed from its source",
                &["sandbox"],
            )?,
            lag_seconds: gauge(
                "understudy_sandbox_apply_lag_seconds",
                "How far the sandbox's confirmed position trails its source",
                &["sandbox"],
            )?,
            wal_retained_bytes: gauge(
                "understudy_sandbox_wal_retained_bytes",
                "WAL the sandbox's slot keeps on the source",
                &["sandbox"],
            )?,
            wal_budget_bytes: gauge(
                "understudy_sandbox_wal_budget_bytes",
                "The most WAL the slot may keep on the source before the breaker drops it",
                &["sandbox"],
            )?,
            wal_status: int_gauge(
                "understudy_sandbox_wal_status",
                "1 for the wal_status of the slot on the source (reserved, extended, unreserved, lost), 0 for the others",
                &["sandbox", "wal_status"],
            )?,
            tables: int_gauge(
                "understudy_sandbox_tables",
                "The sandbox's tables, by synchronisation state",
                &["sandbox", "state"],
            )?,
            drift: int_gauge(
                "understudy_sandbox_drift_changes",
                "Schema changes on the source that are not (yet) on the sandbox",
                &["sandbox"],
            )?,
            server_restarts: counter(
                "understudy_sandbox_server_restarts_total",
                "Restarts of a sandbox's PostgreSQL server by the agent after it stopped or crashed",
                &["sandbox"],
            )?,
            breaker_trips: counter(
                "understudy_sandbox_breaker_trips_total",
                "Times the WAL budget breaker dropped the sandbox's slot on the source to protect its disk",
                &["sandbox"],
            )?,
            gaps: counter(
                "understudy_sandbox_gaps_total",
                "Gaps found in the stream from the source (slot dropped or recreated, another server, a new \
                 timeline, a rewound source): each stops the sandbox, which goes stale",
                &["sandbox"],
            )?,
            resyncs: counter(
                "understudy_sandbox_resyncs_total",
                "Rebuilds of a stale sandbox from its source, by result (done, failed)",
                &["sandbox", "result"],
            )?,
            generation: int_gauge(
                "understudy_sandbox_generation",
                "Which copy of the source the sandbox is: 1, and one more after each resync",
                &["sandbox"],
            )?,
            source_outage: gauge(
                "understudy_sandbox_source_outage_seconds",
                "How long the agent has not reached the sandbox's source (0 while it does)",
                &["sandbox"],
            )?,
            drift_found: counter(
                "understudy_sandbox_drift_events_total",
                "Source schema changes the follower found and will not apply (drift: the sandbox turns degraded), \
                 each counted once when it appears",
                &["sandbox"],
            )?,
            ddl_applied: counter(
                "understudy_sandbox_ddl_applied_total",
                "Source schema changes the follower applied to the sandbox",
                &["sandbox"],
            )?,
            last_current: gauge(
                "understudy_sandbox_last_current_timestamp_seconds",
                "When the sandbox was last seen current (ready, within its lag threshold), as a Unix time",
                &["sandbox"],
            )?,
            dryruns: counter(
                "understudy_dryruns_total",
                "Dry-runs finished, by verdict (pass, warn, fail) or outcome (error, cancelled)",
                &["sandbox", "result"],
            )?,
            dryruns_running: int_gauge(
                "understudy_dryruns_running",
                "Dry-runs accepted and not finished",
                &["sandbox"],
            )?,
            errors: counter(
                "understudy_errors_total",
                "Errors of API calls and background passes, by kind",
                &["kind"],
            )?,
            registry,
        })
    }

    /// Records a sandbox's status.
    pub fn sandbox(&self, st: &SandboxStatus) {
        let name = st.name.as_str();
        for state in STATES {
            self.sandbox_state
                .with_label_values(&[name, state_label(state)])
                .set(i64::from(st.state == state));
        }
        let set = |g: &GaugeVec, v: Option<f64>| match v {
            Some(v) => g.with_label_values(&[name]).set(v),
            None => {
                let _ = g.remove_label_values(&[name]);
            }
        };
        set(&self.lag_bytes, st.lag_bytes.map(|b| b as f64));
        set(&self.lag_seconds, st.lag_seconds);
        set(&self.wal_retained_bytes, st.retained_wal_bytes.map(|b| b as f64));
        set(&self.wal_budget_bytes, Some(st.wal_budget_bytes as f64));
        for w in WAL_STATUSES {
            let labels = [name, w.as_str()];
            match st.wal_status {
                Some(current) => self.wal_status.with_label_values(&labels).set(i64::from(current == w)),
                None => {
                    let _ = self.wal_status.remove_label_values(&labels);
                }
            }
        }
        for state in SYNC_STATES {
            let n = st.tables.iter().filter(|t| t.state == state).count();
            self.tables
                .with_label_values(&[name, state.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.drift
            .with_label_values(&[name])
            .set(i64::try_from(st.drift.len()).unwrap_or(i64::MAX));
        // Counters start at 0 for every sandbox, so that `increase()` sees their first trip or restart.
        for c in [
            &self.server_restarts,
            &self.breaker_trips,
            &self.gaps,
            &self.drift_found,
        ] {
            let _ = c.with_label_values(&[name]);
        }
        for result in ["done", "failed"] {
            let _ = self.resyncs.with_label_values(&[name, result]);
        }
        self.generation.with_label_values(&[name]).set(i64::from(st.generation));
        self.source_outage
            .with_label_values(&[name])
            .set(st.source_outage_seconds.unwrap_or(0.0));
    }

    pub fn sandbox_current(&self, name: &str, at: jiff::Timestamp) {
        self.last_current
            .with_label_values(&[name])
            .set(at.as_millisecond() as f64 / 1000.0);
    }

    pub fn server_restarted(&self, name: &str) {
        self.server_restarts.with_label_values(&[name]).inc();
    }

    pub fn breaker_tripped(&self, name: &str) {
        self.breaker_trips.with_label_values(&[name]).inc();
    }

    pub fn gap_found(&self, name: &str) {
        self.gaps.with_label_values(&[name]).inc();
    }

    pub fn resynced(&self, name: &str, ok: bool) {
        let result = if ok { "done" } else { "failed" };
        self.resyncs.with_label_values(&[name, result]).inc();
    }

    pub fn drift_found(&self, name: &str, n: usize) {
        self.drift_found.with_label_values(&[name]).inc_by(n as u64);
    }

    pub fn ddl_applied(&self, name: &str, n: usize) {
        self.ddl_applied.with_label_values(&[name]).inc_by(n as u64);
    }

    /// Forgets a deleted sandbox.
    pub fn forget_sandbox(&self, name: &str) {
        for state in STATES {
            let _ = self.sandbox_state.remove_label_values(&[name, state_label(state)]);
        }
        for g in [
            &self.lag_bytes,
            &self.lag_seconds,
            &self.wal_retained_bytes,
            &self.wal_budget_bytes,
            &self.last_current,
            &self.source_outage,
        ] {
            let _ = g.remove_label_values(&[name]);
        }
        let _ = self.generation.remove_label_values(&[name]);
        for result in ["done", "failed"] {
            let _ = self.resyncs.remove_label_values(&[name, result]);
        }
        for c in [
            &self.server_restarts,
            &self.breaker_trips,
            &self.gaps,
            &self.drift_found,
            &self.ddl_applied,
        ] {
            let _ = c.remove_label_values(&[name]);
        }
        for w in WAL_STATUSES {
            let _ = self.wal_status.remove_label_values(&[name, w.as_str()]);
        }
        for state in SYNC_STATES {
            let _ = self.tables.remove_label_values(&[name, state.as_str()]);
        }
        let _ = self.drift.remove_label_values(&[name]);
    }

    pub fn dryrun_started(&self, sandbox: &str) {
        self.dryruns_running.with_label_values(&[sandbox]).inc();
    }

    /// A dry-run ended with `verdict`, or without a report (`None`: an error, or `cancelled`).
    pub fn dryrun_finished(&self, sandbox: &str, verdict: Option<Verdict>, cancelled: bool) {
        self.dryruns_running.with_label_values(&[sandbox]).dec();
        let result = match (verdict, cancelled) {
            (Some(v), _) => v.as_str(),
            (None, true) => "cancelled",
            (None, false) => "error",
        };
        self.dryruns.with_label_values(&[sandbox, result]).inc();
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors.with_label_values(&[kind.metric_label()]).inc();
    }

    /// The name of every metric the agent can serve, whether or not it has a series yet (alert rules and
    /// dashboards are checked against these).
    pub fn names(&self) -> Vec<String> {
        use prometheus::core::Collector;
        let collectors: [&dyn Collector; 21] = [
            &self.info,
            &self.sandbox_state,
            &self.lag_bytes,
            &self.lag_seconds,
            &self.wal_retained_bytes,
            &self.wal_budget_bytes,
            &self.wal_status,
            &self.tables,
            &self.drift,
            &self.server_restarts,
            &self.breaker_trips,
            &self.gaps,
            &self.resyncs,
            &self.generation,
            &self.source_outage,
            &self.drift_found,
            &self.ddl_applied,
            &self.last_current,
            &self.dryruns,
            &self.dryruns_running,
            &self.errors,
        ];
        names_of(&collectors)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// The names of `collectors`' metrics (shared with the operator's metrics).
pub fn names_of(collectors: &[&dyn prometheus::core::Collector]) -> Vec<String> {
    collectors
        .iter()
        .flat_map(|c| c.desc())
        .map(|d| d.fq_name.clone())
        .collect()
}

/// `registry` in the text exposition format (shared with the operator's metrics).
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    if TextEncoder::new().encode(&registry.gather(), &mut out).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_every_metric_served() {
        let m = Metrics::new().expect("metrics");
        m.server_restarted("shop");
        m.breaker_tripped("shop");
        m.drift_found("shop", 2);
        m.gap_found("shop");
        m.resynced("shop", true);
        m.dryrun_started("shop");
        m.dryrun_finished("shop", Some(Verdict::Pass), false);
        m.error(ErrorKind::Invalid);
        let names = m.names();
        assert_eq!(names.len(), 21, "{names:?}");
        assert!(names.iter().all(|n| n.starts_with("understudy_")), "{names:?}");
        let text = m.render();
        let served: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(served.len(), 9, "{served:?}");
        assert!(
            text.contains("understudy_sandbox_gaps_total{sandbox=\"shop\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("understudy_sandbox_resyncs_total{result=\"done\",sandbox=\"shop\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("understudy_sandbox_breaker_trips_total{sandbox=\"shop\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("understudy_sandbox_drift_events_total{sandbox=\"shop\"} 2"),
            "{text}"
        );
        for name in served {
            assert!(names.iter().any(|n| n == name), "{name} is served but not named");
        }
    }
}

//! Per-DryRun metrics, from its status: the latest verdict (a labelled gauge) and key figures (per lock mode,
//! per SQLSTATE class, the replay's rate and lag), the rollback result, the last and next runs, a scheduled
//! start that is due and not made, runs ended (a counter), and the latest run's ids for links (an info gauge).
//! Labelled by the DryRun's namespace and name, which stand for its migration.

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::family::Family;
use crate::crd::DryRunStatus;
use crate::crd::dryrun::KeyFigures;

const VERDICTS: [&str; 3] = ["pass", "warn", "fail"];
const ROLLBACKS: [&str; 6] = ["proven", "lossy", "failed", "schema-differs", "untested", "not-run"];

pub struct DryRunMetrics {
    verdict: IntGaugeVec,
    duration: GaugeVec,
    blocked_writes: GaugeVec,
    longest_lock_wait: GaugeVec,
    failed_writes: GaugeVec,
    blocked_write_seconds: GaugeVec,
    replay_rate: GaugeVec,
    replay_lag: GaugeVec,
    lock_held: Family,
    lock_wait: Family,
    failed_by_class: Family,
    info: Family,
    rollback: IntGaugeVec,
    last_run: GaugeVec,
    next_run: GaugeVec,
    start_due: GaugeVec,
    runs: IntCounterVec,
}

fn seconds(rfc3339: Option<&String>) -> Option<f64> {
    let t: jiff::Timestamp = rfc3339?.parse().ok()?;
    Some(t.as_millisecond() as f64 / 1000.0)
}

impl DryRunMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let key = ["namespace", "dryrun"];
        let gauge = |name: &str, help: &str| -> Result<GaugeVec, prometheus::Error> {
            let g = GaugeVec::new(Opts::new(name, help), &key)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let labelled = |name: &str, help: &str, label: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), &["namespace", "dryrun", label])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let runs = IntCounterVec::new(
            Opts::new(
                "understudy_dryrun_runs_total",
                "Runs of a DryRun ended, by verdict (or error)",
            ),
            &["namespace", "dryrun", "verdict"],
        )?;
        registry.register(Box::new(runs.clone()))?;
        Ok(DryRunMetrics {
            verdict: labelled(
                "understudy_dryrun_verdict",
                "1 for the latest run's verdict (pass, warn, fail), 0 for the others",
                "verdict",
            )?,
            duration: gauge(
                "understudy_dryrun_duration_seconds",
                "How long the latest run's migration took",
            )?,
            blocked_writes: gauge(
                "understudy_dryrun_blocked_writes",
                "Production writes the latest run's migration blocked",
            )?,
            longest_lock_wait: gauge(
                "understudy_dryrun_longest_lock_wait_seconds",
                "The longest a write waited on the latest run's migration",
            )?,
            failed_writes: gauge(
                "understudy_dryrun_failed_writes",
                "Production writes that failed on the latest run's new schema",
            )?,
            blocked_write_seconds: gauge(
                "understudy_dryrun_blocked_write_seconds",
                "The time production writes spent blocked by the latest run's migration, in all",
            )?,
            replay_rate: gauge(
                "understudy_dryrun_replay_transactions_per_second",
                "Production's transactions replayed per second in the latest run",
            )?,
            replay_lag: gauge(
                "understudy_dryrun_replay_lag_p99_seconds",
                "The 99th percentile of how far behind production's commit the latest run's replayed writes finished",
            )?,
            lock_held: Family::new(
                registry,
                "understudy_dryrun_lock_held_seconds",
                "The longest the latest run's migration held a lock, per lock mode",
                &["mode"],
            )?,
            lock_wait: Family::new(
                registry,
                "understudy_dryrun_lock_wait_seconds",
                "The longest wait for a lock in the latest run, per lock mode, by the migration or by the writes \
                 behind it (waiter)",
                &["mode", "waiter"],
            )?,
            failed_by_class: Family::new(
                registry,
                "understudy_dryrun_failed_writes_by_class",
                "Production writes that failed on the latest run's new schema, per SQLSTATE class",
                &["sqlstate_class"],
            )?,
            info: Family::new(
                registry,
                "understudy_dryrun_info",
                "1 for the latest run of a DryRun: its run id, report ConfigMap and trace id",
                &["run", "report", "trace_id"],
            )?,
            rollback: labelled(
                "understudy_dryrun_rollback",
                "1 for the latest run's rollback result, 0 for the others",
                "rollback",
            )?,
            last_run: gauge(
                "understudy_dryrun_last_run_timestamp_seconds",
                "When the latest run ended",
            )?,
            next_run: gauge(
                "understudy_dryrun_next_run_timestamp_seconds",
                "A scheduled DryRun's next start",
            )?,
            start_due: gauge(
                "understudy_dryrun_start_due_timestamp_seconds",
                "A start that is due (scheduled, or at once without a schedule) and not made yet: its Sandbox is not \
                 ready or its agent is down",
            )?,
            runs,
        })
    }

    pub fn collectors(&self) -> Vec<&dyn prometheus::core::Collector> {
        vec![
            &self.verdict,
            &self.duration,
            &self.blocked_writes,
            &self.longest_lock_wait,
            &self.failed_writes,
            &self.blocked_write_seconds,
            &self.replay_rate,
            &self.replay_lag,
            self.lock_held.collector(),
            self.lock_wait.collector(),
            self.failed_by_class.collector(),
            self.info.collector(),
            &self.rollback,
            &self.last_run,
            &self.next_run,
            &self.start_due,
            &self.runs,
        ]
    }

    /// Records what `status` says of DryRun `ns/name`.
    pub fn status(&self, ns: &str, name: &str, status: &DryRunStatus) {
        let key = [ns, name];
        let set = |g: &GaugeVec, v: Option<f64>| match v {
            Some(v) => g.with_label_values(&key).set(v),
            None => {
                let _ = g.remove_label_values(&key);
            }
        };
        if let Some(verdict) = status.verdict.as_deref() {
            for v in VERDICTS {
                self.verdict
                    .with_label_values(&[ns, name, v])
                    .set(i64::from(v == verdict));
            }
        }
        let figures = status.figures.as_ref();
        set(&self.duration, figures.map(|f| f.duration_ms / 1000.0));
        set(&self.blocked_writes, figures.map(|f| f.blocked_writes as f64));
        set(
            &self.longest_lock_wait,
            figures.map(|f| f.longest_lock_wait_ms / 1000.0),
        );
        set(&self.failed_writes, figures.map(|f| f.failed_writes as f64));
        set(
            &self.blocked_write_seconds,
            figures.map(|f| f.blocked_write_ms / 1000.0),
        );
        set(&self.replay_rate, figures.map(|f| f.replay_per_second));
        set(&self.replay_lag, figures.map(|f| f.replay_lag_p99_ms / 1000.0));
        self.figure_families(ns, name, figures);
        let latest = status.history.first().map(|h| {
            let report = status.report_ref.clone().unwrap_or_default();
            let trace = h.trace_id.clone().unwrap_or_default();
            (vec![h.run.clone(), report, trace], 1.0)
        });
        self.info.replace(ns, name, latest.into_iter().collect());
        if let Some(rollback) = figures.map(|f| f.rollback.as_str()) {
            for r in ROLLBACKS {
                self.rollback
                    .with_label_values(&[ns, name, r])
                    .set(i64::from(r == rollback));
            }
        }
        let last = status.history.first().and_then(|h| h.finished_at.as_ref());
        set(&self.last_run, seconds(last));
        set(&self.next_run, seconds(status.next_runs.first()));
    }

    /// The series per lock mode and per SQLSTATE class.
    fn figure_families(&self, ns: &str, name: &str, figures: Option<&KeyFigures>) {
        let locks = figures.map(|f| f.locks.as_slice()).unwrap_or_default();
        let held = locks
            .iter()
            .filter(|m| m.held_ms > 0.0)
            .map(|m| (vec![m.mode.clone()], m.held_ms / 1000.0));
        self.lock_held.replace(ns, name, held.collect());
        let waits = locks.iter().flat_map(|m| {
            [("migration", m.migration_waited_ms), ("writes", m.writes_waited_ms)]
                .into_iter()
                .filter(|(_, ms)| *ms > 0.0)
                .map(|(waiter, ms)| (vec![m.mode.clone(), waiter.to_string()], ms / 1000.0))
        });
        self.lock_wait.replace(ns, name, waits.collect());
        let classes = figures
            .iter()
            .flat_map(|f| &f.failed_writes_by_class)
            .map(|(class, n)| (vec![class.clone()], *n as f64));
        self.failed_by_class.replace(ns, name, classes.collect());
    }

    /// A start of `ns/name` (scheduled, or at once without a schedule) that is due and not made (`None` once it is made, or when none is due).
    pub fn start_due(&self, ns: &str, name: &str, due: Option<jiff::Timestamp>) {
        match due {
            Some(t) => self
                .start_due
                .with_label_values(&[ns, name])
                .set(t.as_millisecond() as f64 / 1000.0),
            None => {
                let _ = self.start_due.remove_label_values(&[ns, name]);
            }
        }
    }

    /// A run of `ns/name` ended with `verdict` (`None`: without one).
    pub fn run_ended(&self, ns: &str, name: &str, verdict: Option<&str>) {
        self.runs
            .with_label_values(&[ns, name, verdict.unwrap_or("error")])
            .inc();
    }

    /// Forgets a deleted DryRun.
    pub fn forget(&self, ns: &str, name: &str) {
        let key = [ns, name];
        for g in [
            &self.duration,
            &self.blocked_writes,
            &self.longest_lock_wait,
            &self.failed_writes,
            &self.blocked_write_seconds,
            &self.replay_rate,
            &self.replay_lag,
            &self.last_run,
            &self.next_run,
            &self.start_due,
        ] {
            let _ = g.remove_label_values(&key);
        }
        for family in [&self.lock_held, &self.lock_wait, &self.failed_by_class, &self.info] {
            family.forget(ns, name);
        }
        for v in VERDICTS {
            let _ = self.verdict.remove_label_values(&[ns, name, v]);
        }
        for r in ROLLBACKS {
            let _ = self.rollback.remove_label_values(&[ns, name, r]);
        }
        for v in ["pass", "warn", "fail", "error"] {
            let _ = self.runs.remove_label_values(&[ns, name, v]);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::crd::dryrun::{KeyFigures, LockModeFigures, RunResult};
    use crate::crd::{DryRunPhase, DryRunStatus};
    use crate::metrics::Metrics;

    fn failed() -> DryRunStatus {
        DryRunStatus {
            verdict: Some("fail".into()),
            figures: Some(KeyFigures {
                duration_ms: 1500.0,
                blocked_writes: 7,
                blocked_write_ms: 900.0,
                longest_lock_wait_ms: 250.0,
                failed_writes: 3,
                failed_writes_by_class: [("23".to_string(), 2), ("42".to_string(), 1)].into(),
                locks: vec![
                    LockModeFigures {
                        mode: "AccessExclusiveLock".into(),
                        held_ms: 1250.0,
                        migration_waited_ms: 500.0,
                        writes_waited_ms: 0.0,
                    },
                    LockModeFigures {
                        mode: "RowExclusiveLock".into(),
                        held_ms: 0.0,
                        migration_waited_ms: 0.0,
                        writes_waited_ms: 250.0,
                    },
                ],
                replay_per_second: 120.5,
                replay_lag_p99_ms: 1500.0,
                rollback: "lossy".into(),
            }),
            report_ref: Some("add-flag-report".into()),
            history: vec![RunResult {
                run: "r1".into(),
                started_at: Some("2026-12-02T01:59:00Z".into()),
                finished_at: Some("2026-12-02T02:00:00Z".into()),
                phase: DryRunPhase::Succeeded,
                verdict: Some("fail".into()),
                summary: None,
                trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            }],
            ..DryRunStatus::default()
        }
    }

    #[test]
    fn a_status_becomes_series_and_a_deleted_dry_run_none() {
        let m = Metrics::new().expect("metrics");
        m.dryruns.status("ns", "add-flag", &failed());
        m.dryruns.run_ended("ns", "add-flag", Some("fail"));
        m.dryruns
            .start_due("ns", "add-flag", Some("2026-12-02T03:00:00Z".parse().expect("time")));
        let text = m.render();
        let key = r#"dryrun="add-flag",namespace="ns""#;
        for series in [
            format!(r#"understudy_dryrun_verdict{{{key},verdict="fail"}} 1"#),
            format!(r#"understudy_dryrun_verdict{{{key},verdict="pass"}} 0"#),
            format!("understudy_dryrun_duration_seconds{{{key}}} 1.5"),
            format!("understudy_dryrun_blocked_writes{{{key}}} 7"),
            format!("understudy_dryrun_longest_lock_wait_seconds{{{key}}} 0.25"),
            format!("understudy_dryrun_failed_writes{{{key}}} 3"),
            format!(r#"understudy_dryrun_rollback{{{key},rollback="lossy"}} 1"#),
            format!(r#"understudy_dryrun_rollback{{{key},rollback="proven"}} 0"#),
            format!("understudy_dryrun_last_run_timestamp_seconds{{{key}}} 1796176800"),
            format!("understudy_dryrun_start_due_timestamp_seconds{{{key}}} 1796180400"),
            format!(r#"understudy_dryrun_runs_total{{{key},verdict="fail"}} 1"#),
            format!("understudy_dryrun_blocked_write_seconds{{{key}}} 0.9"),
            format!("understudy_dryrun_replay_transactions_per_second{{{key}}} 120.5"),
            format!("understudy_dryrun_replay_lag_p99_seconds{{{key}}} 1.5"),
            r#"understudy_dryrun_lock_held_seconds{dryrun="add-flag",mode="AccessExclusiveLock",namespace="ns"} 1.25"#.into(),
            r#"understudy_dryrun_lock_wait_seconds{dryrun="add-flag",mode="AccessExclusiveLock",namespace="ns",waiter="migration"} 0.5"#.into(),
            r#"understudy_dryrun_lock_wait_seconds{dryrun="add-flag",mode="RowExclusiveLock",namespace="ns",waiter="writes"} 0.25"#.into(),
            format!(r#"understudy_dryrun_failed_writes_by_class{{{key},sqlstate_class="23"}} 2"#),
            format!(r#"understudy_dryrun_failed_writes_by_class{{{key},sqlstate_class="42"}} 1"#),
            format!(
                r#"understudy_dryrun_info{{{key},report="add-flag-report",run="r1",trace_id="4bf92f3577b34da6a3ce929d0e0e4736"}} 1"#
            ),
        ] {
            assert!(text.contains(&series), "{series} in\n{text}");
        }
        assert!(
            !text.contains("understudy_dryrun_next_run_timestamp_seconds{"),
            "{text}"
        );
        assert!(
            !text.contains(r#"understudy_dryrun_lock_held_seconds{dryrun="add-flag",mode="RowExclusiveLock""#),
            "no hold of a mode only waited for: {text}"
        );

        // The next run's status replaces the per-mode, per-class and latest-run series.
        let mut next = failed();
        if let Some(f) = next.figures.as_mut() {
            f.locks.truncate(1);
            f.failed_writes_by_class = [("23".to_string(), 5)].into();
        }
        next.history[0].run = "r2".into();
        m.dryruns.status("ns", "add-flag", &next);
        let text = m.render();
        assert!(!text.contains(r#"mode="RowExclusiveLock""#), "{text}");
        assert!(!text.contains(r#"sqlstate_class="42""#), "{text}");
        assert!(!text.contains(r#"run="r1""#), "{text}");
        assert!(text.contains(r#"run="r2""#), "{text}");
        assert!(
            text.contains(&format!(
                r#"understudy_dryrun_failed_writes_by_class{{{key},sqlstate_class="23"}} 5"#
            )),
            "{text}"
        );
        m.dryruns.forget("ns", "add-flag");
        assert!(!m.render().contains("add-flag"), "{}", m.render());
    }
}

//! Per-DryRun metrics, from its status: the latest verdict (a labelled gauge) and key figures, the rollback
//! result, the last and next runs, a scheduled start that is due and not made, and runs ended (a counter).
//! Labelled by the DryRun's namespace and name, which stand for its migration.

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::crd::DryRunStatus;

const VERDICTS: [&str; 3] = ["pass", "warn", "fail"];
const ROLLBACKS: [&str; 6] = ["proven", "lossy", "failed", "schema-differs", "untested", "not-run"];

pub struct DryRunMetrics {
    verdict: IntGaugeVec,
    duration: GaugeVec,
    blocked_writes: GaugeVec,
    lock_wait: GaugeVec,
    failed_writes: GaugeVec,
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
            lock_wait: gauge(
                "understudy_dryrun_longest_lock_wait_seconds",
                "The longest a write waited on the latest run's migration",
            )?,
            failed_writes: gauge(
                "understudy_dryrun_failed_writes",
                "Production writes that failed on the latest run's new schema",
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
            &self.lock_wait,
            &self.failed_writes,
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
        set(&self.lock_wait, figures.map(|f| f.longest_lock_wait_ms / 1000.0));
        set(&self.failed_writes, figures.map(|f| f.failed_writes as f64));
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
            &self.lock_wait,
            &self.failed_writes,
            &self.last_run,
            &self.next_run,
            &self.start_due,
        ] {
            let _ = g.remove_label_values(&key);
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
    use crate::crd::dryrun::{KeyFigures, RunResult};
    use crate::crd::{DryRunPhase, DryRunStatus};
    use crate::metrics::Metrics;

    fn failed() -> DryRunStatus {
        DryRunStatus {
            verdict: Some("fail".into()),
            figures: Some(KeyFigures {
                duration_ms: 1500.0,
                blocked_writes: 7,
                longest_lock_wait_ms: 250.0,
                failed_writes: 3,
                rollback: "lossy".into(),
            }),
            history: vec![RunResult {
                run: "r1".into(),
                started_at: Some("2026-12-02T01:59:00Z".into()),
                finished_at: Some("2026-12-02T02:00:00Z".into()),
                phase: DryRunPhase::Succeeded,
                verdict: Some("fail".into()),
                summary: None,
                trace_id: None,
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
        ] {
            assert!(text.contains(&series), "{series} in\n{text}");
        }
        assert!(
            !text.contains("understudy_dryrun_next_run_timestamp_seconds{"),
            "{text}"
        );
        m.dryruns.forget("ns", "add-flag");
        assert!(!m.render().contains("add-flag"), "{}", m.render());
    }
}

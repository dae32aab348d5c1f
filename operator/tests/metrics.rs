//! The operator's `/metrics` output passes `promtool check metrics` (Prometheus' naming and format lint), with
//! series of every metric present.

use operator::crd::dryrun::{KeyFigures, LockModeFigures, RunResult};
use operator::crd::{DryRunPhase, DryRunStatus};

#[test]
fn promtool_accepts_the_operators_metrics() {
    let metrics = operator::metrics::Metrics::new().expect("metrics");
    drop(metrics.reconcile("sandbox"));
    drop(metrics.reconcile("dryrun"));
    metrics.error("dryrun", "invalid");
    let status = DryRunStatus {
        verdict: Some("pass".into()),
        figures: Some(KeyFigures {
            duration_ms: 820.0,
            blocked_writes: 0,
            longest_lock_wait_ms: 12.0,
            failed_writes: 1,
            failed_writes_by_class: [("23".to_string(), 1)].into(),
            locks: vec![LockModeFigures {
                mode: "ShareLock".into(),
                held_ms: 800.0,
                migration_waited_ms: 0.0,
                writes_waited_ms: 12.0,
            }],
            replay_per_second: 95.0,
            replay_lag_p99_ms: 40.0,
            blocked_write_ms: 12.0,
            rollback: "proven".into(),
        }),
        report_ref: Some("index-report".into()),
        history: vec![RunResult {
            run: "r1".into(),
            started_at: Some("2026-12-02T02:00:00Z".into()),
            finished_at: Some("2026-12-02T02:01:00Z".into()),
            phase: DryRunPhase::Succeeded,
            verdict: Some("pass".into()),
            summary: None,
            trace_id: None,
        }],
        next_runs: vec!["2026-12-03T02:00:00Z".into()],
        ..DryRunStatus::default()
    };
    metrics.dryruns.status("shop", "index", &status);
    metrics.dryruns.run_ended("shop", "index", Some("pass"));
    metrics
        .dryruns
        .start_due("shop", "nightly", Some("2026-12-02T02:00:00Z".parse().expect("time")));
    let text = metrics.render();
    for name in metrics.names() {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} is not served:\n{text}"
        );
    }
    fixtures::harness::promtool_check_metrics(&text);
}

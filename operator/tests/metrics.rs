//! The operator's `/metrics` output passes `promtool check metrics` (Prometheus' naming and format lint), with
//! series of every metric present.

#[test]
fn promtool_accepts_the_operators_metrics() {
    let metrics = operator::metrics::Metrics::new().expect("metrics");
    drop(metrics.reconcile("sandbox"));
    drop(metrics.reconcile("dryrun"));
    metrics.error("dryrun", "invalid");
    let text = metrics.render();
    for name in metrics.names() {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} is not served:\n{text}"
        );
    }
    fixtures::harness::promtool_check_metrics(&text);
}

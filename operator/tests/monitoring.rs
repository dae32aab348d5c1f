//! The Grafana dashboard (`charts/understudy/dashboards/understudy.json`) and the alert rules
//! (`monitoring/alerts.yaml`) against what the agent and the operator really serve: every panel expression parses
//! (extracted into recording rules that `promtool check rules` checks), and every metric either names is served.

use std::collections::BTreeSet;
use std::path::Path;

use fixtures::harness::metric_names;
use serde_json::Value;

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/understudy/dashboards/understudy.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("read the dashboard")).expect("dashboard JSON")
}

/// Every panel's expressions (rows' nested panels included), with the panel's title.
fn expressions(panels: &Value, out: &mut Vec<(String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a target without expr").to_string();
            out.push((panel["title"].as_str().unwrap_or_default().to_string(), expr));
        }
        expressions(&panel["panels"], out);
    }
}

/// Grafana's variables replaced by values Prometheus accepts.
fn substituted(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__range", "1h")
        .replace("$sandbox", ".*")
}

/// Every metric the agent or the operator serves.
fn served() -> BTreeSet<String> {
    let mut served: BTreeSet<String> = understudy::metrics::Metrics::new()
        .expect("agent metrics")
        .names()
        .into_iter()
        .collect();
    served.extend(operator::metrics::Metrics::new().expect("operator metrics").names());
    served
}

#[test]
fn the_alert_rules_and_their_tests_name_served_metrics() {
    let served = served();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring");
    for file in ["alerts.yaml", "alerts_test.yaml"] {
        let text = std::fs::read_to_string(dir.join(file)).expect("read the rules");
        let named = metric_names(&text);
        assert!(named.len() >= 7, "{file}: {named:?}");
        let unknown: Vec<&String> = named.difference(&served).collect();
        assert!(unknown.is_empty(), "{file} names metrics nobody serves: {unknown:?}");
    }
}

#[test]
fn every_panel_parses_and_names_served_metrics() {
    let dashboard = dashboard();
    let mut exprs = Vec::new();
    expressions(&dashboard["panels"], &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    for (title, _) in &exprs {
        assert!(!title.is_empty(), "a panel without a title");
    }

    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, (_, e))| serde_json::json!({"record": format!("dashboard:panel_{i}"), "expr": substituted(e)}))
        .collect();
    let file = std::env::temp_dir().join(format!("understudy-dashboard-{}.yaml", std::process::id()));
    let doc = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(&file, doc.to_string()).expect("write the rules");
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian's prometheus package; run bash .ci/setup)");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "a panel expression does not parse: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let served = served();
    let named: BTreeSet<String> = exprs.iter().flat_map(|(_, e)| metric_names(e)).collect();
    let unknown: Vec<&String> = named.difference(&served).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard names metrics nobody serves: {unknown:?}"
    );
    // The panels the dashboard is for.
    for wanted in [
        "understudy_sandbox_apply_lag_seconds",
        "understudy_sandbox_wal_retained_bytes",
        "understudy_sandbox_wal_budget_bytes",
        "understudy_dryruns_total",
        "understudy_dryrun_verdict",
        "understudy_dryrun_blocked_writes",
        "understudy_dryrun_longest_lock_wait_seconds",
        "understudy_dryrun_failed_writes",
        "understudy_dryrun_failed_writes_by_class",
        "understudy_dryrun_blocked_write_seconds",
        "understudy_dryrun_lock_held_seconds",
        "understudy_dryrun_lock_wait_seconds",
        "understudy_dryrun_replay_transactions_per_second",
        "understudy_dryrun_replay_lag_p99_seconds",
        "understudy_dryrun_info",
    ] {
        assert!(named.contains(wanted), "no panel shows {wanted}");
    }
}

#[test]
fn histogram_suffixes_and_grafana_variables_are_handled() {
    assert_eq!(
        metric_names("histogram_quantile(0.99, rate(understudy_operator_reconcile_duration_seconds_bucket[5m]))"),
        BTreeSet::from(["understudy_operator_reconcile_duration_seconds".to_string()])
    );
    assert_eq!(
        substituted("increase(x{sandbox=~\"$sandbox\"}[$__rate_interval])"),
        "increase(x{sandbox=~\".*\"}[5m])"
    );
}

/// The labels a panel's expressions keep (`by (...)`).
fn kept_labels(exprs: &[&str]) -> BTreeSet<String> {
    exprs
        .iter()
        .flat_map(|e| e.split("by (").skip(1))
        .filter_map(|rest| rest.split(')').next())
        .flat_map(|labels| labels.split(',').map(|l| l.trim().to_string()))
        .collect()
}

#[test]
fn a_run_links_to_its_dry_run_its_report_and_its_trace() {
    let dashboard = dashboard();
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut linked = BTreeSet::new();
    for panel in panels {
        let text = panel.to_string();
        let fields: BTreeSet<String> = text
            .split("${__data.fields.")
            .skip(1)
            .filter_map(|rest| rest.split('}').next())
            .map(str::to_string)
            .collect();
        let exprs: Vec<&str> = panel["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .collect();
        let kept = kept_labels(&exprs);
        let missing: Vec<&String> = fields.difference(&kept).collect();
        assert!(
            missing.is_empty(),
            "{}: links use fields its query drops: {missing:?}",
            panel["title"]
        );
        for (what, needle) in [
            ("dryrun", "customresourcedefinition/dryruns.understudy.dev/"),
            ("report", "#/configmap/"),
            ("trace", "${trace_ui}"),
        ] {
            if text.contains(needle) {
                linked.insert(what);
            }
        }
    }
    assert_eq!(linked, BTreeSet::from(["dryrun", "report", "trace"]));
    let variables = dashboard["templating"]["list"].to_string();
    for v in ["\"kube_ui\"", "\"trace_ui\""] {
        assert!(variables.contains(v), "the dashboard variable {v}");
    }
}

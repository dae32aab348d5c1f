//! The alert rules in `monitoring/`: `promtool check rules` passes, `promtool test rules` shows each alert firing
//! and not firing, and every alert has its runbook section in `docs/alerts.md`. (That they name only metrics the
//! agent and the operator serve is checked by `operator/tests/monitoring.rs`, which links both.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring())
        .output()
        .expect("promtool (Debian's prometheus package; run bash .ci/setup)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}: {text}", args.join(" "));
    text
}

fn rules() -> serde_json::Value {
    let text = std::fs::read_to_string(monitoring().join("alerts.yaml")).expect("read monitoring/alerts.yaml");
    serde_saphyr::from_str(&text).expect("alerts.yaml is YAML")
}

#[test]
fn the_rules_check_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", "alerts.yaml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_is_tested_names_real_metrics_and_has_a_runbook() {
    let rules = rules();
    let alerts: Vec<&serde_json::Value> = rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .collect();
    let names: BTreeSet<&str> = alerts.iter().filter_map(|r| r["alert"].as_str()).collect();
    for wanted in [
        "UnderstudySandboxStale",
        "UnderstudySandboxLagging",
        "UnderstudySlotRetentionNearBudget",
        "UnderstudyBreakerTripped",
        "UnderstudyDryRunFailed",
        "UnderstudyDryRunRegressed",
        "UnderstudyScheduledDryRunMissed",
        "UnderstudyAgentDown",
    ] {
        assert!(names.contains(wanted), "alerts.yaml has no {wanted}");
    }

    let tests = std::fs::read_to_string(monitoring().join("alerts_test.yaml")).expect("read alerts_test.yaml");
    let runbook = std::fs::read_to_string(monitoring().join("../docs/alerts.md")).expect("read docs/alerts.md");
    for rule in &alerts {
        let name = rule["alert"].as_str().expect("an alerting rule");
        let firing = format!("alertname: {name}\n        exp_alerts:\n          - exp_labels");
        assert!(tests.contains(&firing), "alerts_test.yaml never shows {name} firing");
        let quiet = format!("alertname: {name}\n        exp_alerts: []");
        assert!(tests.contains(&quiet), "alerts_test.yaml never shows {name} not firing");
        assert!(
            runbook.contains(&format!("\n## {name}\n")),
            "docs/alerts.md has no section ## {name}"
        );
        let url = rule["annotations"]["runbook_url"].as_str().unwrap_or_default();
        assert_eq!(
            url,
            format!("docs/alerts.md#{}", name.to_lowercase()),
            "{name}'s runbook_url"
        );
        for key in ["summary", "description"] {
            assert!(rule["annotations"][key].is_string(), "{name} has no {key}");
        }
        assert!(rule["labels"]["severity"].is_string(), "{name} has no severity");
    }
}

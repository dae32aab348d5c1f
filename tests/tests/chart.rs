//! The Helm chart `charts/understudy`, with Helm 4's engine (helm-python-sdk, in the venv `.ci/setup` makes):
//! it lints clean and renders for the default values and for each documented option; every rendered document
//! and CRD validates against Kubernetes 1.33's schemas (kubernetes-validate, strict); `values.schema.json`
//! rejects wrong values; the operator's Pod meets the `restricted` Pod Security Standard; its RBAC is the rules of
//! `charts/understudy/files/rbac/`, which the local cluster grants the operator in the e2e tests on a real API
//! server (`local_cluster::setup::rbac_manifest`); and the
//! PrometheusRule carries the rules of `monitoring/alerts.yaml`, which `promtool check rules` accepts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fixtures::harness::{TempRoot, tools_venv};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Lints, renders and validates the chart for each set of values (tests/chart/helm.py).
fn helm(out: &Path, sets: &BTreeMap<&str, Value>, parse: &[PathBuf]) -> Value {
    use std::io::Write;
    let python = tools_venv().join("bin/python");
    let request = json!({
        "chart": root().join("charts/understudy"), "out": out, "namespace": "understudy", "kube": "1.33.0",
        "sets": sets, "parse": parse,
    });
    let mut child = std::process::Command::new(&python)
        .arg(root().join("tests/chart/helm.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "run {} ({e}); install the checkers with bash .ci/setup",
                python.display()
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(request.to_string().as_bytes())
        .expect("write the request");
    let out = child.wait_with_output().expect("helm.py");
    assert!(
        out.status.success(),
        "helm.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("helm.py's JSON")
}

/// The documented options, each rendered on its own.
fn options() -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        ("default", json!({})),
        (
            "monitoring",
            json!({"metrics": {"serviceMonitor": {"enabled": true, "labels": {"release": "prom"}},
                "podMonitor": {"enabled": true, "interval": "15s"}, "prometheusRule": {"enabled": true}},
                "grafanaDashboard": {"enabled": true, "annotations": {"grafana_folder": "Databases"}}}),
        ),
        ("xfs-storage-class", json!({"xfsStorageClass": {"create": true}})),
        ("watch-namespace", json!({"operator": {"watchNamespace": "db-team"}})),
        (
            "tracing",
            json!({"tracing": {"otlpEndpoint": "http://otel-collector.observability:4318"}}),
        ),
        (
            "existing-service-account",
            json!({"serviceAccount": {"create": false, "name": "ops"}, "rbac": {"create": false}}),
        ),
        (
            "images-and-scheduling",
            json!({"operator": {"image": {"tag": "0.1.1", "pullPolicy": "Always"}, "imagePullSecrets": ["regcred"],
                "poll": "30s", "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [{"key": "db", "operator": "Exists"}], "podLabels": {"team": "platform"}},
                "agent": {"image": {"repository": "registry.example/understudy-agent", "tag": "0.1.1"}},
                "metrics": {"port": 9090}}),
        ),
    ])
}

fn kind<'a>(docs: &'a Value, kind: &str) -> Vec<&'a Value> {
    docs.as_array()
        .expect("docs")
        .iter()
        .filter(|d| d["kind"] == kind)
        .collect()
}

#[test]
fn the_chart_lints_renders_and_validates_for_every_option() {
    let tmp = TempRoot::new("chart");
    let answer = helm(&tmp.0, &options(), &[]);
    for (name, _) in options() {
        let set = &answer["sets"][name];
        assert!(set["error"].is_null(), "{name}: {}", set["error"]);
        let lint = &set["lint"];
        assert_eq!(lint["errors"], json!([]), "{name}: helm lint: {lint}");
        let warnings: Vec<&Value> = lint["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
            .collect();
        assert!(warnings.is_empty(), "{name}: helm lint: {warnings:?}");
        assert_eq!(set["invalid"], json!([]), "{name}: against Kubernetes 1.33");
        for unchecked in set["unchecked"].as_array().expect("unchecked") {
            assert!(
                ["ServiceMonitor", "PodMonitor", "PrometheusRule"].contains(&unchecked.as_str().unwrap_or_default()),
                "{name}: no schema for {unchecked}"
            );
        }
        assert_eq!(kind(&set["docs"], "Deployment").len(), 1, "{name}");
        assert_eq!(kind(&set["docs"], "CustomResourceDefinition").len(), 2, "{name}");
    }
    let count = |name: &str, k: &str| kind(&answer["sets"][name]["docs"], k).len();
    assert_eq!(count("default", "ServiceMonitor") + count("default", "StorageClass"), 0);
    for k in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert_eq!(count("monitoring", k), 1, "{k}");
    }
    assert_eq!(count("xfs-storage-class", "StorageClass"), 1);
    assert_eq!(count("default", "ConfigMap"), 0);
    let dashboard = kind(&answer["sets"]["monitoring"]["docs"], "ConfigMap")[0];
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(dashboard["data"]["understudy.json"].as_str().unwrap_or_default())
        .expect("the dashboard ConfigMap holds JSON");
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("charts/understudy/dashboards/understudy.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    assert_eq!(shipped, committed);
    assert_eq!(
        count("existing-service-account", "ServiceAccount") + count("existing-service-account", "Role"),
        0
    );
    let deployment = kind(&answer["sets"]["images-and-scheduling"]["docs"], "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "understudy");
    assert_eq!(pod["containers"][0]["image"], "ghcr.io/understudy/operator:0.1.1");
    let env = pod["containers"][0]["env"].to_string();
    assert!(env.contains("registry.example/understudy-agent:0.1.1"), "{env}");
    assert!(
        pod["containers"][0]["args"]
            .to_string()
            .contains("--listen=0.0.0.0:9090"),
        "{pod}"
    );
    let traced = kind(&answer["sets"]["tracing"]["docs"], "Deployment")[0];
    let env = traced["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env");
    assert!(
        env.contains(
            &json!({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector.observability:4318"})
        ),
        "{env:?}"
    );
    let untraced = deployment["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(!untraced.contains("OTEL_"), "no endpoint, no export: {untraced}");
    // Another namespace watched: the Role and its binding are there, the operator's Pod stays in the release's.
    let other = &answer["sets"]["watch-namespace"]["docs"];
    for k in ["Role", "RoleBinding"] {
        assert_eq!(kind(other, k)[0]["metadata"]["namespace"], "db-team", "{k}");
    }
    assert_eq!(kind(other, "RoleBinding")[0]["subjects"][0]["namespace"], "understudy");
    assert_eq!(kind(other, "Deployment")[0]["metadata"]["namespace"], "understudy");
    let env = kind(other, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains(r#"{"name":"WATCH_NAMESPACE","value":"db-team"}"#), "{env}");
    assert_eq!(count("default", "Role"), 1);
    let own = kind(&answer["sets"]["default"]["docs"], "Role")[0]["metadata"]["namespace"].clone();
    assert_eq!(own, "understudy", "by default the release's namespace");
    let existing = kind(&answer["sets"]["existing-service-account"]["docs"], "Deployment")[0];
    assert_eq!(existing["spec"]["template"]["spec"]["serviceAccountName"], "ops");
}

#[test]
fn values_schema_rejects_wrong_values() {
    let tmp = TempRoot::new("chart-bad");
    let wrong = BTreeMap::from([
        ("port-not-a-number", json!({"metrics": {"port": "http"}})),
        ("poll-without-unit", json!({"operator": {"poll": "15"}})),
        ("unknown-key", json!({"operator": {"replicas": 2}})),
        (
            "bad-reclaim-policy",
            json!({"xfsStorageClass": {"reclaimPolicy": "Recycle"}}),
        ),
        ("no-service-account-name", json!({"serviceAccount": {"create": false}})),
        (
            "endpoint-without-scheme",
            json!({"tracing": {"otlpEndpoint": "otel-collector:4318"}}),
        ),
        (
            "namespace-not-a-label",
            json!({"operator": {"watchNamespace": "DB_Team"}}),
        ),
    ]);
    let answer = helm(&tmp.0, &wrong, &[]);
    for (name, expected) in [
        ("port-not-a-number", "/metrics/port"),
        ("poll-without-unit", "/operator/poll"),
        ("unknown-key", "replicas"),
        ("bad-reclaim-policy", "/xfsStorageClass/reclaimPolicy"),
        (
            "no-service-account-name",
            "serviceAccount.name must name an existing ServiceAccount",
        ),
        ("endpoint-without-scheme", "/tracing/otlpEndpoint"),
        ("namespace-not-a-label", "/operator/watchNamespace"),
    ] {
        let error = answer["sets"][name]["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{name}: {error:?} should name {expected}");
    }
}

#[test]
fn the_operator_pod_is_restricted_and_its_rbac_is_what_the_e2e_grants() {
    let tmp = TempRoot::new("chart-rbac");
    let rules = root().join("charts/understudy/files/rbac");
    let files = [rules.join("role-rules.yaml"), rules.join("clusterrole-rules.yaml")];
    let answer = helm(&tmp.0, &BTreeMap::from([("default", json!({}))]), &files);
    let docs = &answer["sets"]["default"]["docs"];
    let pod = &kind(docs, "Deployment")[0]["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    for c in pod["containers"].as_array().expect("containers") {
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{c}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{c}");
        assert!(
            sc.get("privileged").is_none() && sc["capabilities"].get("add").is_none(),
            "{c}"
        );
    }
    assert!(
        pod.get("hostNetwork").is_none() && pod.get("hostPID").is_none(),
        "{pod}"
    );
    // The restricted standard's volume types: here only an emptyDir for /tmp (the root file system is read-only).
    for v in pod["volumes"].as_array().expect("volumes") {
        assert!(v["emptyDir"].is_object(), "{v}");
    }
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/tmp");

    for (k, file) in ["Role", "ClusterRole"].into_iter().zip(&files) {
        let chart = kind(docs, k);
        assert_eq!(chart.len(), 1, "{k}");
        let granted = &answer["parsed"][file.to_string_lossy().as_ref()][0];
        assert!(granted.as_array().is_some_and(|r| !r.is_empty()), "{}", file.display());
        assert_eq!(&chart[0]["rules"], granted, "the chart's {k} is not {}", file.display());
    }
    // No cluster-wide Secret reads.
    let cluster_rules = kind(docs, "ClusterRole")[0]["rules"].to_string();
    assert!(!cluster_rules.contains("secrets"), "{cluster_rules}");
    for binding in kind(docs, "RoleBinding")
        .into_iter()
        .chain(kind(docs, "ClusterRoleBinding"))
    {
        assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
        assert_eq!(binding["subjects"][0]["name"], pod["serviceAccountName"]);
    }
}

#[test]
fn the_prometheus_rule_is_the_rules_file_and_promtool_accepts_it() {
    let tmp = TempRoot::new("chart-rules");
    let rules = root().join("monitoring/alerts.yaml");
    let copy = root().join("charts/understudy/files/alerts.yaml");
    assert_eq!(
        std::fs::read_to_string(&copy).expect("the chart's copy"),
        std::fs::read_to_string(&rules).expect("monitoring/alerts.yaml"),
        "charts/understudy/files/alerts.yaml is stale: copy monitoring/alerts.yaml over it"
    );
    let sets = BTreeMap::from([("rules", json!({"metrics": {"prometheusRule": {"enabled": true}}}))]);
    let answer = helm(&tmp.0, &sets, std::slice::from_ref(&rules));
    let rule = kind(&answer["sets"]["rules"]["docs"], "PrometheusRule")[0];
    assert_eq!(rule["spec"], answer["parsed"][rules.to_string_lossy().as_ref()][0]);
    let spec = tmp.0.join("spec.yaml");
    std::fs::write(&spec, rule["spec"].to_string()).expect("write the rule's spec");
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&spec)
        .output()
        .expect("promtool (Debian's prometheus package; run bash .ci/setup)");
    assert!(
        out.status.success(),
        "promtool check rules on the PrometheusRule: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

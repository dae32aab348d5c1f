//! End to end against a real API server, with production-shaped data and writes flowing on the source: the
//! operator (with a non-admin token bound to its Role) runs the agents' Pods on the node the local cluster plays.
//! `kubectl apply` of a Secret and a Sandbox gives `Ready=True` and checksum parity; a DryRun of `SET NOT NULL`
//! over NULL rows fails with the exact count; `CREATE INDEX CONCURRENTLY` passes with no blocked writes; a
//! scheduled DryRun shows its next runs and runs at its time; the operator killed mid-run and restarted ends in a
//! consistent status with no fork or slot left, and serves each DryRun's verdict again on `/metrics`; deleting
//! a dropped slot makes the Sandbox Stale and, with policy manual, the annotation `understudy.dev/resync` has it
//! rebuilt, Ready again with parity; deleting everything leaves nothing on the source and nothing in the namespace but what the user made. With the `otlp`
//! feature, a run is one trace in an OTLP receiver: the reconcile that started it, the agent's run, its phases.

use std::time::{Duration, Instant};

use fixtures::harness::*;
use fixtures::source::REPLICATOR;
use fixtures::writer::Writer;
use kube::api::{Api, DeleteParams, ListParams};
use local_cluster::{LocalCluster, Options};
use operator::crd::{DryRun, Sandbox};
use understudy::sandbox::{SandboxMeta, StateDir};

async fn apply(cluster: &LocalCluster, name: &str, yaml: &str) {
    let path = cluster.dir().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write manifest");
    let out = cluster
        .kubectl(&["apply", "--validate=false", "-f", &path.display().to_string()])
        .await;
    assert!(out.is_ok(), "kubectl apply {name}: {out:?}");
}

/// Polls `what` until `ok`; on time out prints the cluster's logs.
async fn wait_for<T>(
    cluster: &LocalCluster,
    what: &str,
    timeout: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", cluster.logs());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The Secret `production` with `conninfo`.
async fn apply_secret(cluster: &LocalCluster, conninfo: &understudy::pg::ConnInfo) {
    let conninfo = conninfo.to_secret_string();
    apply(
        cluster,
        "secret",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: production\nstringData:\n  conninfo: \"{conninfo}\"\n"
        ),
    )
    .await;
}

fn ready(sbx: &Sandbox) -> bool {
    sbx.status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn finished(cluster: &LocalCluster, api: &Api<DryRun>, name: &str, runs: usize) -> DryRun {
    wait_for(
        cluster,
        &format!("DryRun {name} to finish {runs} run(s)"),
        Duration::from_secs(240),
        async || {
            let dr = api.get_opt(name).await.ok().flatten()?;
            let st = dr.status.as_ref()?;
            (st.history.len() >= runs && st.run.is_none()).then_some(dr)
        },
    )
    .await
}

/// The operator's `/metrics`, once it holds every one of `series` (within 20 s).
async fn operator_metrics(port: u16, series: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if series.iter().all(|s| text.contains(s.as_str())) {
            return text;
        }
        let missing: Vec<&String> = series.iter().filter(|s| !text.contains(s.as_str())).collect();
        assert!(
            Instant::now() < deadline,
            "the operator's /metrics lacks {missing:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn dry_run(name: &str, body: &str) -> String {
    format!(
        "apiVersion: understudy.dev/v1alpha1\nkind: DryRun\nmetadata:\n  name: {name}\nspec:\n  sandbox: shop\n{body}"
    )
}

/// The run's trace id is in the status and its history, and the trace holds the operator's reconcile that
/// started the run, the agent's run as its child, and the run's phases (with the `otlp` feature).
#[cfg(feature = "otlp")]
async fn assert_one_trace(
    cluster: &LocalCluster,
    receiver: &fixtures::otlp::Receiver,
    st: &operator::crd::DryRunStatus,
) {
    let trace = st.trace_id.clone().expect("status.traceId");
    assert_eq!(st.history.first().and_then(|h| h.trace_id.as_ref()), Some(&trace));
    let spans = wait_for(
        cluster,
        "the run's trace to be exported",
        Duration::from_secs(60),
        async || {
            let spans: Vec<_> = receiver.spans().into_iter().filter(|s| s.trace_id == trace).collect();
            let has = |service: &str, name: &str| spans.iter().any(|s| s.service == service && s.name == name);
            // A parent span ends (and is exported) after its children: wait for the run's own span too.
            (has("understudy-operator", "reconcile") && has("understudy", "rollback") && has("understudy", "agent_run"))
                .then_some(spans)
        },
    )
    .await;
    let reconcile = spans.iter().find(|s| s.name == "reconcile").expect("reconcile");
    assert_eq!(reconcile.parent_span_id, "", "the reconcile starts the trace");
    let run = spans.iter().find(|s| s.name == "agent_run").expect("the agent's run");
    assert_eq!(
        run.parent_span_id, reconcile.span_id,
        "the agent's run is the reconcile's child"
    );
    let dryrun = spans.iter().find(|s| s.name == "dryrun").expect("dryrun");
    assert_eq!(dryrun.parent_span_id, run.span_id);
    for phase in ["fork", "replay", "migrate", "verify", "rollback"] {
        assert!(
            spans
                .iter()
                .any(|s| s.name == phase && s.parent_span_id == dryrun.span_id),
            "{phase} in the run's trace: {spans:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_and_dry_runs_through_kubectl() {
    let root = TempRoot::new("e2e");
    let source = seeded_source(&root, 5_000).await;
    let writer = Writer::start(source.admin().await.expect("writer"), 50);
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut options = Options::new(root.path().join("k8s")).operator_bin(env!("CARGO_BIN_EXE_understudy-operator"));
    options.operator_args = vec!["--listen".into(), format!("127.0.0.1:{metrics_port}")];
    // Traces: the operator exports its reconciles, and passes the endpoint to the agents it creates.
    let receiver = fixtures::otlp::Receiver::start().await.expect("an OTLP receiver");
    options.operator_env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT".into(), receiver.endpoint.clone())];
    let mut cluster = LocalCluster::start(options).await.expect("local cluster");
    let ns = cluster.namespace().to_string();
    let client = cluster.client();
    let sandboxes: Api<Sandbox> = Api::namespaced(client.clone(), &ns);
    let dryruns: Api<DryRun> = Api::namespaced(client.clone(), &ns);

    // A Secret and a Sandbox: Ready, with parity.
    apply_secret(&cluster, &source.replicator_conninfo()).await;
    apply(&cluster, "sandbox", "apiVersion: understudy.dev/v1alpha1\nkind: Sandbox\nmetadata:\n  name: shop\nspec:\n  source:\n    secretRef:\n      name: production\n  publication: shop_pub\n  walBudget: 1GiB\n  resync: manual\n").await;
    let sbx = wait_for(
        &cluster,
        "Sandbox shop to be Ready",
        Duration::from_secs(240),
        async || sandboxes.get_opt("shop").await.ok().flatten().filter(ready),
    )
    .await;
    let st = sbx.status.clone().expect("status");
    assert_eq!(st.slot.as_deref(), Some("understudy_shop"));
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Replicating" && c.status == "True"),
        "{st:?}"
    );
    assert_eq!(st.tables.as_ref().map(|t| t.ready), Some(6), "{st:?}");
    let state = StateDir::at(cluster.dir().join(format!("pvc/{ns}/data-shop-agent-0")));
    let meta = SandboxMeta::load(&state.sandbox_dir(&understudy::source::SandboxName::parse("shop").expect("name")))
        .expect("the agent's sandbox on its PVC");
    writer.pause().await;
    wait_caught_up(&source, &meta).await;
    assert_parity(&source, &meta, &sample_tables()).await;
    writer.resume();

    // A rotated password: the changed Secret reaches the agent, whose subscription reconnects with it.
    let admin = source.admin().await.expect("source admin");
    admin
        .batch_execute(&format!("ALTER ROLE {REPLICATOR} PASSWORD 'rotated-7c1e'"))
        .await
        .expect("rotate the password");
    apply_secret(&cluster, &source.conninfo_as(REPLICATOR, "rotated-7c1e")).await;
    wait_for(
        &cluster,
        "the new source to reach the agent",
        Duration::from_secs(90),
        async || {
            let now = sandboxes.get_opt("shop").await.ok().flatten()?;
            let hash = now.status.as_ref()?.source_hash.clone();
            (hash.is_some() && hash != st.source_hash).then_some(())
        },
    )
    .await;
    admin
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE usename = '{REPLICATOR}'"
        ))
        .await
        .expect("drop the replication connection");
    wait_caught_up(&source, &meta).await;

    // SET NOT NULL over 123 NULL rows fails, and says how many.
    apply(
        &cluster,
        "not-null",
        &dry_run(
            "not-null",
            "  up: ALTER TABLE accounts ALTER COLUMN plan SET NOT NULL;\n  warmup: 1s\n  after: 1s\n  workers: 2\n",
        ),
    )
    .await;
    let dr = finished(&cluster, &dryruns, "not-null", 1).await;
    let st = dr.status.clone().expect("status");
    assert_eq!(st.verdict.as_deref(), Some("fail"), "{st:?}");
    assert!(
        st.findings
            .iter()
            .any(|f| f.code == "preflight-not-null-violations" && f.title.contains("123")),
        "{st:?}"
    );
    let reports: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm = reports
        .get(st.report_ref.as_deref().expect("reportRef"))
        .await
        .expect("report ConfigMap");
    let report: serde_json::Value = serde_json::from_str(
        cm.data
            .as_ref()
            .and_then(|d| d.get("report.json"))
            .expect("report.json"),
    )
    .expect("json");
    let counted = report["preflight"]
        .as_array()
        .and_then(|p| p.iter().find(|f| f["code"] == "not-null-violations"))
        .map(|f| f["count"].clone());
    assert_eq!(counted, Some(serde_json::json!(123)), "{}", report["preflight"]);
    assert!(
        cm.data
            .as_ref()
            .and_then(|d| d.get("report.md"))
            .is_some_and(|m| m.contains("Understudy dry-run"))
    );

    // CREATE INDEX CONCURRENTLY passes, with no blocked write.
    apply(&cluster, "index", &dry_run("index", "  up: CREATE INDEX CONCURRENTLY orders_total_idx ON orders (total_cents);\n  down: DROP INDEX CONCURRENTLY orders_total_idx;\n  warmup: 1s\n  after: 1s\n  workers: 2\n")).await;
    let dr = finished(&cluster, &dryruns, "index", 1).await;
    let st = dr.status.clone().expect("status");
    assert_eq!(st.verdict.as_deref(), Some("pass"), "{st:?}");
    assert_eq!(st.figures.as_ref().map(|f| f.blocked_writes), Some(0), "{st:?}");
    assert_eq!(
        st.figures.as_ref().map(|f| f.rollback.clone()),
        Some("proven".into()),
        "{st:?}"
    );

    #[cfg(feature = "otlp")]
    assert_one_trace(&cluster, &receiver, &st).await;

    // The operator's /metrics: each DryRun's latest verdict and figures, in Prometheus' format.
    let verdicts = [
        format!(r#"understudy_dryrun_verdict{{dryrun="not-null",namespace="{ns}",verdict="fail"}} 1"#),
        format!(r#"understudy_dryrun_verdict{{dryrun="index",namespace="{ns}",verdict="pass"}} 1"#),
        format!(r#"understudy_dryrun_blocked_writes{{dryrun="index",namespace="{ns}"}} 0"#),
        format!(r#"understudy_dryrun_rollback{{dryrun="index",namespace="{ns}",rollback="proven"}} 1"#),
        format!(r#"understudy_dryrun_replay_transactions_per_second{{dryrun="index",namespace="{ns}"}} "#),
        // The latest run's ids, for the dashboard's links to the DryRun, its report and its trace.
        format!(r#"understudy_dryrun_info{{dryrun="index",namespace="{ns}",report="index-report",run=""#),
    ];
    let text = operator_metrics(metrics_port, &verdicts).await;
    promtool_check_metrics(&text);

    // A scheduled DryRun shows its next runs and runs at its time.
    apply(&cluster, "nightly", &dry_run("nightly", "  up: ALTER TABLE orders ADD COLUMN IF NOT EXISTS flag boolean;\n  warmup: 1s\n  after: 1s\n  verify: false\n  schedule:\n    cron: \"* * * * *\"\n")).await;
    let scheduled = wait_for(
        &cluster,
        "the scheduled DryRun's next runs",
        Duration::from_secs(30),
        async || {
            dryruns
                .get_opt("nightly")
                .await
                .ok()
                .flatten()
                .filter(|d| d.status.as_ref().is_some_and(|s| s.next_runs.len() == 3))
        },
    )
    .await;
    let shown: Vec<jiff::Timestamp> = scheduled
        .status
        .as_ref()
        .map(|s| s.next_runs.iter().filter_map(|t| t.parse().ok()).collect())
        .unwrap_or_default();
    let dr = finished(&cluster, &dryruns, "nightly", 1).await;
    let started: jiff::Timestamp = dr
        .status
        .as_ref()
        .and_then(|s| s.last_schedule_time.clone())
        .and_then(|t| t.parse().ok())
        .expect("last schedule time");
    // At a start it showed: the first, unless its Sandbox was not ready then (a loaded machine), when the run is
    // made once, for the latest start due.
    assert!(
        shown.contains(&started),
        "it ran for {started}, not a start it showed: {shown:?}"
    );
    let began: jiff::Timestamp = dr
        .status
        .as_ref()
        .and_then(|s| s.history.first())
        .and_then(|h| h.started_at.as_deref())
        .and_then(|t| t.parse().ok())
        .expect("the run's start");
    let late = began.as_millisecond() - started.as_millisecond();
    assert!(
        (0..60_000).contains(&late),
        "the run began {late} ms after its start {started}"
    );

    // The operator killed mid-run and restarted: the run ends consistently, with no fork and no capture slot left.
    apply(&cluster, "slow", &dry_run("slow", "  up: ALTER TABLE orders ADD COLUMN IF NOT EXISTS note2 text;\n  warmup: 20s\n  after: 1s\n  verify: false\n")).await;
    wait_for(
        &cluster,
        "the slow DryRun to replay",
        Duration::from_secs(120),
        async || {
            dryruns.get_opt("slow").await.ok().flatten().filter(|d| {
                d.status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(|p| p == operator::crd::DryRunPhase::Replaying)
            })
        },
    )
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("slow"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.contains(&"RunStarted".to_string()) && reasons.contains(&"Replaying".to_string()),
        "events mark the run's steps: {reasons:?}"
    );
    cluster.kill_operator();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart_operator().expect("restart the operator");
    let dr = finished(&cluster, &dryruns, "slow", 1).await;
    assert_eq!(
        dr.status.as_ref().and_then(|s| s.phase),
        Some(operator::crd::DryRunPhase::Succeeded),
        "{:?}",
        dr.status
    );
    // The restarted operator serves the verdicts again, from the DryRuns' status.
    operator_metrics(metrics_port, &verdicts).await;
    assert!(understudy::fork::list(&state).is_empty(), "forks left in the agent");
    assert_eq!(capture_slots(&meta).await, 0, "capture slots left on the sandbox");

    // The slot dropped behind the sandbox's back: Stale with the reason; policy manual waits until the
    // annotation asks, then the agent builds the next copy and the Sandbox is Ready again, with parity.
    writer.pause().await;
    admin
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'understudy_shop' \
             AND active_pid IS NOT NULL",
            &[],
        )
        .await
        .expect("end the walsender");
    wait_for(
        &cluster,
        "the slot to be dropped",
        Duration::from_secs(30),
        async || {
            admin
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = 'understudy_shop' AND NOT active",
                    &[],
                )
                .await
                .ok()
                .filter(|n| *n == 1)
        },
    )
    .await;
    writer.resume();
    let stale = wait_for(
        &cluster,
        "the Sandbox to be Stale",
        Duration::from_secs(60),
        async || {
            sandboxes.get_opt("shop").await.ok().flatten().filter(|s| {
                s.status.as_ref().is_some_and(|st| {
                    st.stale_reason.is_some() && st.conditions.iter().any(|c| c.type_ == "Stale" && c.status == "True")
                })
            })
        },
    )
    .await;
    let st = stale.status.clone().expect("status");
    assert!(st.stale_reason.as_deref().is_some_and(|r| r.contains("slot")), "{st:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = sandboxes.get("shop").await.expect("Sandbox").status.expect("status");
    assert_eq!(
        waiting.copy_generation,
        Some(1),
        "policy manual: not rebuilt unasked: {waiting:?}"
    );
    assert_eq!(waiting.resync_policy.as_deref(), Some("manual"), "{waiting:?}");
    cluster
        .kubectl(&["annotate", "sandbox", "shop", "understudy.dev/resync=1", "--overwrite"])
        .await
        .expect("kubectl annotate");
    let healed = Instant::now();
    let resynced = wait_for(
        &cluster,
        "the resynced Sandbox to be Ready",
        Duration::from_secs(180),
        async || {
            sandboxes
                .get_opt("shop")
                .await
                .ok()
                .flatten()
                .filter(|s| ready(s) && s.status.as_ref().is_some_and(|st| st.copy_generation == Some(2)))
        },
    )
    .await;
    let st = resynced.status.clone().expect("status");
    assert_eq!(st.resync_request.as_deref(), Some("1"), "{st:?}");
    eprintln!(
        "e2e: the annotated Sandbox was Ready again {:?} after the request",
        healed.elapsed()
    );
    let meta = SandboxMeta::load(&state.sandbox_dir(&understudy::source::SandboxName::parse("shop").expect("name")))
        .expect("the new generation's metadata");
    assert_eq!(meta.generation, 2);
    writer.pause().await;
    wait_caught_up(&source, &meta).await;
    assert_parity(&source, &meta, &sample_tables()).await;
    writer.resume();
    // A changed policy in the spec reaches the agent: without the field, the default (auto).
    cluster
        .kubectl(&[
            "patch",
            "sandbox",
            "shop",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/spec/resync"}]"#,
        ])
        .await
        .expect("kubectl patch");
    wait_for(
        &cluster,
        "the agent to apply policy auto",
        Duration::from_secs(60),
        async || {
            sandboxes.get_opt("shop").await.ok().flatten().filter(|s| {
                s.status
                    .as_ref()
                    .is_some_and(|st| st.resync_policy.as_deref() == Some("auto"))
            })
        },
    )
    .await;
    let meta = SandboxMeta::load(&state.sandbox_dir(&understudy::source::SandboxName::parse("shop").expect("name")))
        .expect("metadata");
    assert_eq!(meta.resync, understudy::sandbox::state::ResyncPolicy::Auto);

    // Deleting both leaves nothing on the source and nothing in the namespace but what the user made.
    for name in ["not-null", "index", "nightly", "slow"] {
        dryruns
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete DryRun");
    }
    sandboxes
        .delete("shop", &DeleteParams::default())
        .await
        .expect("delete Sandbox");
    wait_for(
        &cluster,
        "the Sandbox and DryRuns to go",
        Duration::from_secs(120),
        async || {
            let left = sandboxes.list(&ListParams::default()).await.ok()?.items.len()
                + dryruns.list(&ListParams::default()).await.ok()?.items.len();
            (left == 0).then_some(())
        },
    )
    .await;
    wait_for(
        &cluster,
        "the owned objects to be collected",
        Duration::from_secs(120),
        async || {
            let out = cluster
                .kubectl(&[
                    "get",
                    "statefulsets,services,networkpolicies,configmaps,secrets,pods",
                    "-o",
                    "name",
                ])
                .await
                .ok()?;
            let left: Vec<&str> = out
                .lines()
                .filter(|l| !l.ends_with("/production") && !l.contains("default-token") && !l.contains("kube-root-ca"))
                .collect();
            left.is_empty().then_some(())
        },
    )
    .await;
    assert_eq!(
        our_objects(&source).await,
        (vec![], vec![]),
        "nothing of ours stays on the source"
    );
    writer.stop().await.expect("writer");
    cluster.shutdown().await.expect("shutdown");
}

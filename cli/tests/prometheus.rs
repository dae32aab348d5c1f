//! A real Prometheus server (Debian's `prometheus`) on a loopback port scrapes a running agent with a sandbox and
//! a finished dry-run, as job `understudy-agent` with the alert rules of `monitoring/alerts.yaml` loaded; the
//! sandbox's lag, state, tables by sync state and slot's wal_status and the dry-run's verdict are read back through `/api/v1/query`, and every rule
//! evaluates without error against the real series.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fixtures::harness::*;
use serde_json::{Value, json};
use understudy::sandbox;
use understudy::source::Replicate;

/// A Prometheus server, killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring/alerts.yaml");
        let config = dir.join("prometheus.yml");
        let text = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [rules],
            "scrape_configs": [{"job_name": "understudy-agent", "static_configs": [{"targets": [target]}]}],
        });
        std::fs::write(&config, text.to_string()).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's prometheus package; run bash .ci/setup)");
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    /// The value of the single series `expr` returns, once it returns one (within 60 s).
    async fn value(&self, expr: &str) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(data) = self.get("/api/v1/query", &[("query", expr)]).await {
                let result = data["result"].as_array().cloned().unwrap_or_default();
                if let [series] = result.as_slice()
                    && let Some(v) = series["value"][1].as_str().and_then(|v| v.parse().ok())
                {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never returned one series for {expr}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_agent_and_reads_back_lag_and_verdict() {
    let root = TempRoot::new("prom");
    let source = sample_source(&root, 500).await;
    let opts = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    sandbox::create(&opts, &quiet).await.expect("sandbox");
    let state = root.state();
    let agent = Agent::start(&state, &[]).await;
    let (status, run) = agent
        .post(
            "/v1/dryruns",
            &json!({"sandbox": "shop", "up": {"name": "note.sql", "sql": "ALTER TABLE events ADD COLUMN note text;"},
                    "warmup": "1s", "after": "1s"}),
        )
        .await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().expect("id").to_string();
    let done = agent.wait_run(&id, Duration::from_secs(180)).await;
    assert_eq!(done["phase"], "succeeded", "{done}");
    let verdict = done["verdict"].as_str().expect("a verdict").to_string();

    let dir = root.path().join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let target = agent.base.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&dir, &target);

    assert_eq!(prometheus.value("up{job=\"understudy-agent\"}").await, 1.0);
    let lag = prometheus
        .value("understudy_sandbox_apply_lag_seconds{job=\"understudy-agent\",sandbox=\"shop\"}")
        .await;
    assert!((0.0..30.0).contains(&lag), "the sandbox is current: lag {lag} s");
    assert_eq!(
        prometheus
            .value("understudy_sandbox_state{sandbox=\"shop\",state=\"ready\"}")
            .await,
        1.0
    );
    let ended = prometheus
        .value(&format!(
            "understudy_dryruns_total{{sandbox=\"shop\",result=\"{verdict}\"}}"
        ))
        .await;
    assert_eq!(ended, 1.0, "the {verdict} dry-run");
    let tables = prometheus
        .value("understudy_sandbox_tables{sandbox=\"shop\",state=\"ready\"}")
        .await;
    assert_eq!(tables, sample_tables().len() as f64, "every table streams");
    assert_eq!(
        prometheus
            .value("understudy_sandbox_wal_status{sandbox=\"shop\",wal_status=\"reserved\"}")
            .await,
        1.0
    );
    assert_eq!(
        prometheus
            .value("understudy_sandbox_drift_changes{sandbox=\"shop\"}")
            .await,
        0.0
    );
    let retained = prometheus
        .value("understudy_sandbox_wal_retained_bytes{sandbox=\"shop\"} / understudy_sandbox_wal_budget_bytes{sandbox=\"shop\"}")
        .await;
    assert!((0.0..0.8).contains(&retained), "retained share {retained}");

    // Every alert rule is loaded and evaluates against the real series without error; none fires.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rules = loop {
        let groups = prometheus
            .get("/api/v1/rules", &[])
            .await
            .and_then(|d| d["groups"].as_array().cloned())
            .unwrap_or_default();
        let rules: Vec<Value> = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        if !rules.is_empty() && rules.iter().all(|r| r["lastEvaluation"] != "0001-01-01T00:00:00Z") {
            break rules;
        }
        assert!(Instant::now() < deadline, "the rules were never evaluated: {groups:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let defined = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring/alerts.yaml"))
        .expect("alerts.yaml")
        .matches("- alert: ")
        .count();
    assert_eq!(rules.len(), defined, "{rules:?}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
        assert_eq!(rule["state"], "inactive", "{rule}");
    }
    drop(prometheus);
    drop(agent);
    sandbox::delete(&state, &opts.name, None, false).await.expect("delete");
    assert_eq!(our_objects(&source).await, (vec![], vec![]));
}

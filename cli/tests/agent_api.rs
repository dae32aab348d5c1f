//! The agent's API against real servers: the token, bad bodies, a sandbox created through the API, a dry-run
//! that gives what the command line gives, cancellation and SIGTERM that leave no fork or capture slot, TLS,
//! secrets kept out of responses and logs, and `promtool check metrics` on `/metrics`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use fixtures::harness::*;
use fixtures::writer::Writer;
use serde_json::json;
use understudy::fork;
use understudy::sandbox::{self, SandboxMeta};
use understudy::source::Replicate;

fn codes(findings: &serde_json::Value) -> BTreeSet<String> {
    findings
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["code"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_ready(agent: &Agent, name: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (status, view) = agent.get(&format!("/v1/sandboxes/{name}")).await;
        if status == 200 && view["state"] == "ready" && view["creating"] == false {
            return view;
        }
        assert!(view["creation_error"].is_null(), "creation failed: {view}");
        assert!(Instant::now() < deadline, "sandbox {name} not ready: {status} {view}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_creates_a_sandbox_and_runs_dry_runs_as_the_cli_does() {
    let root = TempRoot::new("api");
    let source = seeded_source(&root, 2_000).await;
    let state = root.state();
    let mut agent = Agent::start(&state, &[]).await;

    // The probes need no token; the API does.
    let health = agent.http.get(agent.url("/healthz")).send().await.expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    let bare = agent
        .http
        .get(agent.url("/v1/sandboxes"))
        .send()
        .await
        .expect("no token");
    assert_eq!(bare.status().as_u16(), 401);
    assert_eq!(
        bare.headers().get("www-authenticate").and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    let body: serde_json::Value = bare.json().await.expect("json");
    assert_eq!(body["error"]["kind"], "unauthorized", "{body}");
    let wrong = agent
        .http
        .get(agent.url("/v1/dryruns"))
        .bearer_auth("not-the-token-at-all-0000")
        .send()
        .await
        .expect("wrong token");
    assert_eq!(wrong.status().as_u16(), 401);

    // Malformed bodies are 400s that name the field.
    let (status, body) = agent
        .post("/v1/sandboxes", &json!({"name": "shop", "publication": "shop_pub"}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap_or("").contains("source"),
        "{body}"
    );
    let (status, body) = agent
        .post(
            "/v1/dryruns",
            &json!({"sandbox": "shop", "up": {"sql": "SELECT 1;"}, "workers": 0}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap_or("").starts_with("workers"),
        "{body}"
    );
    let (status, body) = agent
        .post(
            "/v1/dryruns",
            &json!({"sandbox": "shop", "up": {"sql": "SELECT 1;"}, "warmup": "5"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap_or("").contains("no unit"),
        "{body}"
    );

    // A sandbox created through the API; the source's password never comes back.
    let conninfo = source.replicator_conninfo().to_secret_string();
    let password = fixtures::source::REPLICATOR_PASSWORD;
    assert!(conninfo.contains(password));
    let (status, body) = agent
        .post(
            "/v1/sandboxes",
            &json!({"name": "shop", "source": conninfo, "publication": "shop_pub"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = agent
        .post(
            "/v1/sandboxes",
            &json!({"name": "shop", "source": conninfo, "publication": "shop_pub"}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, ready) = agent.get("/readyz").await;
    assert_eq!(status, 503, "a sandbox being created is not ready: {ready}");
    assert_eq!(ready["not_current"][0]["sandbox"], "shop", "{ready}");
    let view = wait_ready(&agent, "shop").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, ready) = agent.get("/readyz").await;
        if status == 200 {
            assert_eq!(ready["ready"], true);
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {ready}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!view.to_string().contains(password), "{view}");
    let (_, list) = agent.get("/v1/sandboxes").await;
    assert!(!list.to_string().contains(password));
    let meta = SandboxMeta::load(&state.sandbox_dir(&understudy::source::SandboxName::parse("shop").expect("name")))
        .expect("meta");

    // A new connection string for the same source (a rotated password) is taken; one that reaches no server is
    // refused naming the source, and the password never comes back in the error.
    let (status, body) = agent
        .put("/v1/sandboxes/shop/source", &json!({"source": conninfo}))
        .await;
    assert_eq!(status, 204, "{body}");
    let mut nowhere = source.replicator_conninfo();
    nowhere.set("port", "1");
    let (status, body) = agent
        .put(
            "/v1/sandboxes/shop/source",
            &json!({"source": nowhere.to_secret_string()}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(!body.to_string().contains(password), "{body}");
    let (status, _) = agent
        .put("/v1/sandboxes/nope/source", &json!({"source": conninfo}))
        .await;
    assert_eq!(status, 404);

    // A dry-run through the API and the same migration through the command line agree.
    let writer = Writer::start(source.admin().await.expect("writer"), 50);
    let (status, run) = agent
        .post(
            "/v1/dryruns",
            &json!({"sandbox": "shop", "up": {"name": "not-null.sql", "sql": SET_NOT_NULL},
                    "warmup": "1s", "after": "1s", "workers": 2}),
        )
        .await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().expect("id").to_string();
    let done = agent.wait_run(&id, Duration::from_secs(180)).await;
    assert_eq!(done["phase"], "succeeded", "{done}");
    assert_eq!(done["verdict"], "fail", "{done}");
    assert!(done["events"].as_array().is_some_and(|e| e.len() > 3), "{done}");
    // Its events, as server-sent events, end with its end.
    let events = agent
        .http
        .get(agent.url(&format!("/v1/dryruns/{id}/events")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("events");
    assert!(
        events
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    );
    let stream = events.text().await.expect("event stream");
    let data: Vec<serde_json::Value> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| serde_json::from_str(d.trim()).expect("an event is JSON"))
        .collect();
    assert!(data.iter().any(|e| e["phase"] == "migrating"), "{stream}");
    assert_eq!(
        data.last().map(|e| e["phase"].clone()),
        Some(json!("succeeded")),
        "{stream}"
    );
    let (status, report) = agent.get(&format!("/v1/dryruns/{id}/report")).await;
    assert_eq!(status, 200);
    assert!(report["fork"]["sandbox_lag_seconds"].is_number(), "{}", report["fork"]);
    let api_codes = codes(&report["findings"]);
    assert!(api_codes.contains("preflight-not-null-violations"), "{api_codes:?}");
    let markdown = agent
        .http
        .get(agent.url(&format!("/v1/dryruns/{id}/report?format=markdown")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("markdown");
    assert!(markdown.text().await.expect("text").contains("Understudy dry-run"));

    let file = root.path().join("not-null.sql");
    std::fs::write(&file, SET_NOT_NULL).expect("write");
    let out = cli(&state)
        .args([
            "dry-run",
            "--sandbox",
            "shop",
            "--warmup",
            "1s",
            "--after",
            "1s",
            "--workers",
            "2",
        ])
        .args(["--format", "json", "--up"])
        .arg(&file)
        .output()
        .expect("cli dry-run");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let cli: serde_json::Value = serde_json::from_slice(&out.stdout).expect("cli json");
    assert_eq!(cli["verdict"]["result"], report["verdict"]["result"]);
    assert_eq!(codes(&cli["findings"]), api_codes);

    // Cancelling a running dry-run leaves no fork and no capture slot.
    let (status, run) = agent
        .post(
            "/v1/dryruns",
            &json!({"sandbox": "shop", "up": {"sql": SET_NOT_NULL}, "warmup": "2m"}),
        )
        .await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().expect("id").to_string();
    agent.wait_phase(&id, "replaying", Duration::from_secs(120)).await;
    assert_eq!(fork::list(&state).len(), 2, "the twins exist while it runs");
    let (status, body) = agent.post(&format!("/v1/dryruns/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 202, "{body}");
    let done = agent.wait_run(&id, Duration::from_secs(60)).await;
    assert_eq!(done["phase"], "cancelled", "{done}");
    assert!(fork::list(&state).is_empty(), "forks left behind");
    assert_eq!(capture_slots(&meta).await, 0, "capture slots left behind");
    let (status, _) = agent.post(&format!("/v1/dryruns/{id}/cancel"), &json!({})).await;
    assert_eq!(status, 409);
    let (status, _) = agent.get(&format!("/v1/dryruns/{id}/report")).await;
    assert_eq!(status, 409);
    writer.stop().await.expect("writer");

    // Metrics pass promtool and carry no secret; the log carries neither the token nor the password.
    let metrics = agent
        .http
        .get(agent.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("understudy_sandbox_apply_lag_bytes{sandbox=\"shop\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("understudy_dryruns_total{result=\"fail\",sandbox=\"shop\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains(password) && !metrics.contains(TOKEN));
    promtool_check_metrics(&metrics);

    let (status, report) = agent.delete("/v1/sandboxes/shop").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(our_objects(&source).await, (vec![], vec![]));
    assert_eq!(agent.terminate(), Some(0));
    let log = agent.log_text();
    assert!(
        !log.contains(password) && !log.contains(TOKEN),
        "a secret in the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_running_dry_runs_and_the_sandbox_stays() {
    let root = TempRoot::new("sigterm");
    let source = sample_source(&root, 2_000).await;
    let opts = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("sandbox");
    let state = root.state();
    let mut agent = Agent::start(&state, &[]).await;
    let (status, run) = agent
        .post(
            "/v1/dryruns",
            &json!({"sandbox": "shop", "up": {"sql": "ALTER TABLE orders ADD COLUMN x int;"}, "warmup": "2m"}),
        )
        .await;
    assert_eq!(status, 202, "{run}");
    let id = run["id"].as_str().expect("id").to_string();
    agent.wait_phase(&id, "replaying", Duration::from_secs(120)).await;
    assert_eq!(fork::list(&state).len(), 2);
    assert_eq!(agent.terminate(), Some(0));
    assert!(fork::list(&state).is_empty(), "forks left behind");
    assert_eq!(capture_slots(&meta).await, 0, "capture slots left behind");
    assert!(state.sandbox_dir(&opts.name).exists(), "the sandbox stays");
    assert!(understudy::agent::running(&state).is_none());
    // The next agent knows how the run ended.
    let agent = Agent::start(&state, &[]).await;
    let (status, view) = agent.get(&format!("/v1/dryruns/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(view["phase"], "cancelled", "{view}");
    let st = sandbox::status(&state, &opts.name).await.expect("status");
    assert_eq!(st.state, sandbox::SandboxState::Ready, "{:?}", st.reasons);
    drop(agent);
    sandbox::delete(&state, &opts.name, None, false).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_the_api_and_a_second_agent_is_refused() {
    let root = TempRoot::new("agenttls");
    let certs = root.path().join("certs");
    std::fs::create_dir_all(&certs).expect("certs");
    let (ca, cert, key) = ca_and_server_cert(&certs);
    let state = root.state();
    let agent = Agent::start(&state, &["--tls-cert", &cert, "--tls-key", &key]).await;
    assert!(agent.record.tls);
    let pem = std::fs::read(&ca).expect("ca");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("pem"))
        .build()
        .expect("client");
    let url = format!("https://{}", agent.record.address);
    let r = client.get(format!("{url}/healthz")).send().await.expect("https");
    assert_eq!(r.status().as_u16(), 200);
    let r = client
        .get(format!("{url}/v1/sandboxes"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("https api");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.expect("json"), json!([]));
    let plain = reqwest::get(format!("http://{}/healthz", agent.record.address)).await;
    assert!(plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()));

    // One agent per state directory (`sandbox watch` is the agent in the foreground); a short token is refused
    // with the fix.
    let out = cli(&state)
        .args(["sandbox", "watch", "--token-file"])
        .arg(state.root().join("test.token"))
        .output()
        .expect("second agent");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already runs"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(agent);
    let short = root.path().join("short.token");
    std::fs::write(&short, "abc").expect("write");
    let out = cli(&state)
        .args(["agent", "--token-file"])
        .arg(&short)
        .output()
        .expect("short token");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at least 16") && !stderr.contains("abc\n"), "{stderr}");
}

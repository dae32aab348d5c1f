//! Recordings through the agent's API: bad bodies are 400s naming the field, an unknown sandbox is a 404, a taken
//! name a 409, and none of them creates anything; a recording taken through the API goes from starting to ready,
//! a dry-run runs on it through the API, and DELETE removes it with its start point.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fixtures::harness::*;
use fixtures::writer::Writer;
use serde_json::json;
use understudy::sandbox;
use understudy::source::Replicate;

async fn wait_recorded(agent: &Agent, name: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (status, view) = agent.get(&format!("/v1/recordings/{name}")).await;
        assert_eq!(status, 200, "{view}");
        assert!(view["error"].is_null(), "the recording failed: {view}");
        if view["recording"]["phase"] == "ready" {
            return view;
        }
        assert!(Instant::now() < deadline, "recording {name} not ready: {view}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_through_the_api() {
    let root = TempRoot::new("api-rec");
    let source = sample_source(&root, 1_000).await;
    let opts = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("sandbox");
    let state = root.state();
    let agent = Agent::start(&state, &[]).await;
    let recordings = state.root().join("recordings");

    for (body, status, names) in [
        (json!({"sandbox": "shop", "for": "0s"}), 400, "for:"),
        (json!({"sandbox": "shop", "for": "2d"}), 400, "for:"),
        (json!({"sandbox": "shop", "for": "10m", "ttl": "1m"}), 400, "ttl:"),
        (json!({"sandbox": "shop", "for": "10"}), 400, "no unit"),
        (json!({"sandbox": "shop", "for": "10s", "name": "Peak"}), 400, "name:"),
        (json!({"sandbox": "shop"}), 400, "for"),
        (json!({"sandbox": "nope", "for": "10s"}), 404, "nope"),
    ] {
        let (code, answer) = agent.post("/v1/recordings", &body).await;
        assert_eq!(code, status, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{body}: {message}");
    }
    assert_eq!(
        std::fs::read_dir(&recordings).map(|d| d.count()).unwrap_or(0),
        0,
        "a refused request creates nothing"
    );
    assert!(understudy::fork::list(&state).is_empty(), "no fork was made");
    let (code, answer) = agent.get("/v1/recordings/ghost").await;
    assert_eq!(code, 404, "{answer}");

    let writer = Writer::start(source.admin().await.expect("writer"), 100);
    let (code, view) = agent
        .post(
            "/v1/recordings",
            &json!({"sandbox": "shop", "name": "peak", "for": "3s"}),
        )
        .await;
    assert_eq!(code, 202, "{view}");
    assert_eq!(view["starting"], true, "{view}");
    let (code, answer) = agent
        .post(
            "/v1/recordings",
            &json!({"sandbox": "shop", "name": "peak", "for": "3s"}),
        )
        .await;
    assert_eq!(code, 409, "the name is taken while it is recorded: {answer}");
    let (code, answer) = agent.delete("/v1/recordings/peak").await;
    assert_eq!(code, 409, "no delete while the window is recorded: {answer}");
    let view = wait_recorded(&agent, "peak").await;
    writer.stop().await.expect("writer");
    let (code, answer) = agent
        .post(
            "/v1/recordings",
            &json!({"sandbox": "shop", "name": "peak", "for": "3s"}),
        )
        .await;
    assert_eq!(code, 409, "the name is taken by the recording on disk: {answer}");
    let transactions = view["recording"]["transactions"].as_u64().unwrap_or(0);
    assert!(transactions > 20, "{view}");
    assert_eq!(view["recording"]["sandbox"], "shop");
    let (code, list) = agent.get("/v1/recordings").await;
    assert_eq!(code, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["name"], "peak");

    // A dry-run on it through the API, and a refused speed.
    let (code, answer) = agent
        .post(
            "/v1/dryruns",
            &json!({"sandbox": "shop", "up": {"sql": "SELECT 1;"}, "recording": "peak", "speed": "0"}),
        )
        .await;
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"]["message"].as_str().unwrap_or("").starts_with("speed"),
        "{answer}"
    );
    let (code, run) = agent
        .post(
            "/v1/dryruns",
            &json!({"sandbox": "shop", "up": {"sql": "ALTER TABLE orders ADD COLUMN note text;"},
                    "recording": "peak", "speed": "max", "migrate_at": "1s", "verify": false}),
        )
        .await;
    assert_eq!(code, 202, "{run}");
    let id = run["id"].as_str().expect("id").to_string();
    let done = agent.wait_run(&id, Duration::from_secs(180)).await;
    assert_eq!(done["phase"], "succeeded", "{done}");
    let (code, report) = agent.get(&format!("/v1/dryruns/{id}/report")).await;
    assert_eq!(code, 200);
    assert_eq!(report["recording"]["name"], "peak", "{}", report["recording"]);
    assert_eq!(report["recording"]["transactions"].as_u64(), Some(transactions));

    let (code, answer) = agent.delete("/v1/recordings/peak").await;
    assert_eq!(code, 204, "{answer}");
    let (code, _) = agent.get("/v1/recordings/peak").await;
    assert_eq!(code, 404);
    assert!(understudy::fork::list(&state).is_empty(), "its start point is gone");
    assert_eq!(capture_slots(&meta).await, 0);
    drop(agent);
    sandbox::delete(&state, &meta.name, None, false).await.expect("delete");
    assert_eq!(our_objects(&source).await, (vec![], vec![]));
}

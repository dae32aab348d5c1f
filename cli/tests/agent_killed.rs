//! The agent is killed (`kill -9`) in each phase of a dry-run: forking, replaying, migrating, verifying and
//! rolling back. Its forks' servers and the capture slot on the sandbox outlive it; after its restart (which
//! sweeps at start) no fork, fork server or capture slot is left that nobody owns, the run is reported failed,
//! the sandbox's subscription is running again and it keeps parity with the source. The checks here do not use
//! the sweep's own finder: they read the forks directory, `/proc` and the sandbox's `pg_replication_slots`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use fixtures::harness::*;
use fixtures::writer::Writer;
use serde_json::json;
use understudy::pg::cluster::postmasters_under;
use understudy::sandbox::{self, SandboxMeta};
use understudy::source::Replicate;

/// Long enough phases to be caught by a 20 ms poll: a copied (not copy-on-write) fork of 20,000 orders, sleeps
/// in the migration, the checks and the down-migration.
fn request() -> serde_json::Value {
    json!({
        "sandbox": "shop",
        "up": {"name": "add.sql", "sql": "ALTER TABLE orders ADD COLUMN channel text;\nSELECT pg_sleep(3);\n"},
        "down": {"name": "add.down.sql", "sql": "SELECT pg_sleep(3);\nALTER TABLE orders DROP COLUMN channel;\n"},
        "checks": {"name": "checks.sql", "sql": "-- slow\nSELECT pg_sleep(2), 1;\n"},
        "warmup": "3s",
        "after": "1s",
        "strategy": "copy",
    })
}

/// Polls the run every 20 ms until it is in `phase`; panics if it ends or passes it first.
async fn wait_exact_phase(agent: &Agent, id: &str, phase: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, view) = agent.get(&format!("/v1/dryruns/{id}")).await;
        match view["phase"].as_str() {
            Some(p) if p == phase => return,
            Some("succeeded" | "failed" | "cancelled") => panic!("the run ended before {phase}: {view}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "never reached {phase}: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

async fn sandbox_slots(meta: &SandboxMeta) -> Vec<String> {
    let db = sandbox::cluster_of(meta)
        .expect("cluster")
        .connect(&meta.database)
        .await
        .expect("sandbox");
    db.query("SELECT slot_name::text FROM pg_replication_slots", &[])
        .await
        .expect("slots")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_leaves_nothing_nobody_owns_in_any_phase() {
    let root = TempRoot::new("killed");
    let state = root.state();
    let source = sample_source(&root, 20_000).await;
    let opts = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("sandbox");
    let writer = Writer::start(source.admin().await.expect("writer"), 100);
    let forks = state.root().join("forks");

    for phase in ["forking", "replaying", "migrating", "verifying", "rolling-back"] {
        let mut agent = Agent::start(&state, &[]).await;
        let (status, body) = agent.post("/v1/dryruns", &request()).await;
        assert_eq!(status, 202, "{body}");
        let id = body["id"].as_str().expect("run id").to_string();
        wait_exact_phase(&agent, &id, phase).await;
        if phase == "forking" {
            // In the middle of the fork: once its files appear (the copy), before the twins are ready.
            let deadline = Instant::now() + Duration::from_secs(20);
            while entries(&forks).is_empty() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        agent.child.kill().expect("kill -9 the agent");
        agent.child.wait().expect("reaped");
        let killed = Instant::now();
        drop(agent);
        let left: Vec<String> = entries(&forks);
        let servers = postmasters_under(&forks).len();
        let slots = sandbox_slots(&meta).await;
        assert!(!left.is_empty(), "killed in {phase}: the run had made its forks");

        // The restart: the sweep at start removes what the killed agent's run owned.
        let agent = Agent::start(&state, &[]).await;
        let swept = killed.elapsed();
        let (_, view) = agent.get(&format!("/v1/dryruns/{id}")).await;
        assert_eq!(view["phase"], "failed", "killed in {phase}, the run is failed: {view}");
        assert_eq!(entries(&forks), Vec::<String>::new(), "killed in {phase}: forks left");
        assert_eq!(
            postmasters_under(&forks),
            Vec::<u32>::new(),
            "killed in {phase}: fork servers left"
        );
        assert_eq!(
            sandbox_slots(&meta).await,
            Vec::<String>::new(),
            "killed in {phase}: capture slots left"
        );
        // The sandbox is still the source's copy (a pause interrupted while forking is lifted).
        wait_caught_up(&source, &meta).await;
        eprintln!(
            "killed in {phase}: {} fork entries, {servers} fork servers, {} capture slots at the kill; \
             all gone {:.1} s after it, the sandbox caught up",
            left.len(),
            slots.len(),
            swept.as_secs_f64()
        );
        // Killed again (the next round's kill finds its own run's leftovers only).
        drop(agent);
    }
    writer.stop().await.expect("writer");
    wait_caught_up(&source, &meta).await;
    assert_parity(&source, &meta, &sample_tables()).await;
    let (slots, _) = our_objects(&source).await;
    assert_eq!(
        slots,
        vec![meta.slot.clone()],
        "only the sandbox's own slot on the source"
    );
}

//! The command line without a terminal to babysit: `sandbox create` leaves an agent running for its state
//! directory, and the sandbox, left alone, follows production's DDL and comes back from `kill -9` by itself.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fixtures::harness::*;
use fixtures::writer::Writer;
use understudy::pg::ClusterStatus;
use understudy::sandbox::{self, SandboxMeta};
use understudy::source::SandboxName;

fn run(state: &understudy::sandbox::StateDir, args: &[&str]) -> std::process::Output {
    cli(state).args(args).output().expect("run understudy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_left_alone_follows_ddl_and_comes_back_from_kill_9() {
    let root = TempRoot::new("alone");
    let source = sample_source(&root, 5_000).await;
    let state = root.state();
    let out = cli(&state)
        .args([
            "sandbox",
            "create",
            "shop",
            "--publication",
            "shop_pub",
            "--no-progress",
        ])
        .env("UNDERSTUDY_SOURCE", source.replicator_conninfo().to_secret_string())
        .output()
        .expect("create");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("the agent (pid"), "{stdout}");
    let agent = understudy::agent::running(&state).expect("sandbox create leaves an agent running");
    let status = run(&state, &["sandbox", "status", "shop"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!("agent        running (pid {}", agent.pid)),
        "{text}"
    );
    let again = run(&state, &["agent", "start"]);
    assert!(
        String::from_utf8_lossy(&again.stdout).contains(&format!("pid {}", agent.pid)),
        "one agent only"
    );

    let name = SandboxName::parse("shop").expect("name");
    let meta = SandboxMeta::load(&state.sandbox_dir(&name)).expect("meta");
    // Production adds a column and keeps writing, some rows with it: nobody runs any other command.
    let admin = source.admin().await.expect("admin");
    let writer = Writer::start(source.admin().await.expect("writer"), 100);
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin
        .batch_execute(
            "ALTER TABLE orders ADD COLUMN coupon text; \
             INSERT INTO orders (customer_id, total_cents, coupon) SELECT 1, g, 'c' || g FROM generate_series(1, 50) g; \
             UPDATE orders SET coupon = 'u' || id WHERE id % 97 = 0;",
        )
        .await
        .expect("ddl and writes");
    tokio::time::sleep(Duration::from_secs(2)).await;
    writer.stop().await.expect("writer");
    wait_caught_up(&source, &meta).await;
    assert_parity(&source, &meta, &sample_tables()).await;

    // Its postmaster is killed three times under writes; each time it is back within 30 s, with parity.
    let cluster = sandbox::cluster_of(&meta).expect("cluster");
    for round in 0..3 {
        let writer = Writer::start(source.admin().await.expect("writer"), 100);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let old = cluster.postmaster_pid();
        cluster.kill9().expect("kill -9");
        let killed = Instant::now();
        let mut back = None;
        while killed.elapsed() < Duration::from_secs(30) {
            let running = matches!(cluster.status().await, Ok(ClusterStatus::Running { pid }) if Some(pid) != old);
            if running && cluster.connect(&meta.database).await.is_ok() {
                back = Some(killed.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let back = back.unwrap_or_else(|| panic!("round {round}: the sandbox's server was not back within 30 s"));
        println!(
            "round {round}: the sandbox's server was back {:.1} s after kill -9",
            back.as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        writer.stop().await.expect("writer");
        wait_caught_up(&source, &meta).await;
        assert_parity(&source, &meta, &sample_tables()).await;
    }
    let view = run(&state, &["sandbox", "status", "shop", "--format", "json"]);
    let st: serde_json::Value = serde_json::from_slice(&view.stdout).expect("status json");
    assert_eq!(st["state"], "ready", "{st}");
    assert_eq!(st["agent"]["pid"], agent.pid);

    // Deleted while the agent watches it: nothing restarts it, nothing stays on the source.
    let out = run(&state, &["sandbox", "delete", "shop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(understudy::pg::cluster::postmasters_under(&state.sandbox_dir(&name)).is_empty());
    assert_eq!(our_objects(&source).await, (vec![], vec![]));
    let out = run(&state, &["agent", "stop"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(understudy::agent::running(&state).is_none());
    let out = run(&state, &["agent", "status"]);
    assert_eq!(out.status.code(), Some(3));
}

//! `understudy sweep` finds what nobody owns and removes it only when told: a sandbox whose state directory was
//! lost leaves its slot and publication on the source; a fork whose run is gone and a capture slot no fork
//! records are left locally. The dry run (the default) lists exactly those and removes nothing; `--apply`
//! removes them; a second sweep finds nothing, and the sandbox that is still here keeps replicating.

mod common;

use std::time::Duration;

use fixtures::harness::*;
use serde_json::Value;
use understudy::fork::{self, ForkOptions};
use understudy::sandbox::{self, StateDir, cluster_of};
use understudy::source::{Replicate, SandboxName};

fn sweep(state: &StateDir, source: &str, extra: &[&str]) -> (bool, Value) {
    let out = common::cli(state)
        .args(["sweep", "--format", "json"])
        .args(extra)
        .env("UNDERSTUDY_SOURCE", source)
        .output()
        .expect("run understudy sweep");
    let text = String::from_utf8_lossy(&out.stdout);
    let value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), value)
}

fn named(value: &Value, list: &str) -> Vec<String> {
    let mut names: Vec<String> = value[list]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            format!(
                "{} {}",
                o["kind"].as_str().unwrap_or_default(),
                o["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_lists_then_removes_only_what_nobody_owns() {
    let root = TempRoot::new("sweep");
    let state = root.state();
    let source = sample_source(&root, 1_000).await;
    let admin = source.admin().await.expect("admin");
    admin
        .batch_execute("CREATE PUBLICATION understudy_lost FOR TABLE orders")
        .await
        .expect("publication");
    let kept_opts = create_options(&root, &source, "kept", Replicate::Publication("shop_pub".into()));
    let kept = sandbox::create(&kept_opts, &quiet).await.expect("kept");
    let lost_opts = create_options(&root, &source, "lost", Replicate::Publication("understudy_lost".into()));
    let lost = sandbox::create(&lost_opts, &quiet).await.expect("lost");

    // "lost" loses its state (a deleted volume): its server stops, its slot and publication stay on the source.
    cluster_of(&lost)
        .expect("cluster")
        .stop(understudy::pg::StopMode::Fast)
        .await
        .expect("stop");
    std::fs::remove_dir_all(state.sandbox_dir(&lost.name)).expect("lose it");
    // A fork whose run is gone, and a capture slot on "kept" that no fork records.
    let mut gone = std::process::Command::new("true").spawn().expect("a process");
    let dead = gone.id();
    gone.wait().expect("it ends");
    let orphan = fork::create(
        &state,
        &ForkOptions {
            sandbox: kept.name.clone(),
            name: Some(SandboxName::parse("kept-orphan").expect("name")),
            strategy: None,
            ttl: Duration::from_secs(3600),
            owner_pid: Some(dead),
        },
        &quiet,
    )
    .await
    .expect("fork");
    let kept_db = cluster_of(&kept)
        .expect("cluster")
        .connect("shop")
        .await
        .expect("sandbox");
    kept_db
        .batch_execute("SELECT pg_create_logical_replication_slot('understudy_capture_ghost', 'pgoutput')")
        .await
        .expect("a stray capture slot");
    // A fork's staging left by a process that is gone, and a fork directory without metadata (a fork's directory
    // appears under its name only with its metadata).
    let forks = state.root().join("forks");
    let half = format!(".staging-kept-half.{dead}");
    std::fs::create_dir_all(forks.join(&half).join("pgdata")).expect("a dead staging");
    std::fs::create_dir(forks.join("kept-junk")).expect("a directory without metadata");

    let conninfo = source.cluster.conninfo("shop");
    let (ok, listed) = sweep(&state, &conninfo, &[]);
    assert!(ok, "{listed}");
    assert_eq!(listed["applied"], false);
    assert_eq!(
        named(&listed, "source"),
        ["publication understudy_lost", "slot understudy_lost"],
        "the lost sandbox's objects, not the kept one's: {listed}"
    );
    assert_eq!(
        named(&listed, "local"),
        [
            "capture-slot understudy_capture_ghost".to_string(),
            "fork kept-orphan".into(),
            format!("fork-files {half}"),
            "fork-files kept-junk".into(),
        ],
        "{listed}"
    );
    // A dry run removes nothing.
    assert_eq!(our_objects(&source).await.0, ["understudy_kept", "understudy_lost"]);
    assert!(fork::list(&state).iter().any(|f| f.name == orphan.name));

    // Production keeps writing while the sweep runs: the lost slot's retained WAL grows between its listing and
    // its removal, and it is still the same abandoned slot.
    let writer = fixtures::writer::Writer::start(source.admin().await.expect("writer"), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, applied) = sweep(&state, &conninfo, &["--apply"]);
    writer.stop().await.expect("writer");
    assert!(ok, "{applied}");
    assert_eq!(named(&applied, "source"), named(&listed, "source"), "{applied}");
    assert_eq!(named(&applied, "local"), named(&listed, "local"), "{applied}");
    assert_eq!(
        our_objects(&source).await,
        (vec!["understudy_kept".to_string()], Vec::new())
    );
    assert!(fork::list(&state).is_empty(), "the orphan fork is gone");
    assert!(!forks.join(&half).exists() && !forks.join("kept-junk").exists());
    // A fork being staged by a live process (this one) is left alone.
    let staging = forks.join(format!(".staging-kept-new.{}", std::process::id()));
    std::fs::create_dir(&staging).expect("a live staging");
    let (_, again) = sweep(&state, &conninfo, &["--apply"]);
    assert_eq!(
        (named(&again, "source").len(), named(&again, "local").len()),
        (0, 0),
        "{again}"
    );
    assert!(staging.exists(), "a live process's staging is kept");
    std::fs::remove_dir(&staging).expect("remove the staging");
    let publications: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_publication WHERE pubname = 'understudy_lost'",
            &[],
        )
        .await
        .expect("publications")
        .get(0);
    assert_eq!(publications, 0);
    let captures: i64 = kept_db
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .expect("sandbox slots")
        .get(0);
    assert_eq!(captures, 0, "no capture slot left on the sandbox");

    // A publication the sweep's role may not drop (the DBA made it) is left, with the fix, and the sweep fails.
    admin
        .batch_execute("CREATE PUBLICATION understudy_dba FOR TABLE customers")
        .await
        .expect("the DBA's publication");
    let replicator = source.replicator_conninfo().to_secret_string();
    let (ok, refused) = sweep(&state, &replicator, &["--apply"]);
    assert!(!ok, "a sweep that leaves something fails: {refused}");
    let fix = refused["refused"][0][1].as_str().unwrap_or_default();
    assert!(
        fix.contains("DROP PUBLICATION \"understudy_dba\" as its owner"),
        "{refused}"
    );
    assert!(
        !refused.to_string().contains(fixtures::source::REPLICATOR_PASSWORD),
        "no secret in the output"
    );
    assert_eq!(our_objects(&source).await.1, ["understudy_dba"]);

    // The sandbox that is still here keeps replicating.
    admin
        .batch_execute("INSERT INTO orders (customer_id, total_cents) VALUES (1, 4242)")
        .await
        .expect("a write");
    wait_caught_up(&source, &kept).await;
    sandbox::delete(&state, &kept.name, None, false).await.expect("delete");
}

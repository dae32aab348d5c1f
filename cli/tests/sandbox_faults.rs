//! Faults: `kill -9` of the sandbox's postmaster during writes (parity again, no duplicate), the WAL budget
//! breaker, and `delete` of a sandbox whose data directory (or whole directory) was removed by hand.

use std::time::Duration;

use fixtures::harness::*;
use fixtures::writer::Writer;
use understudy::sandbox::{self, SandboxState, follow};
use understudy::source::Replicate;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_sandbox_during_writes_then_restart_gives_parity_without_duplicates() {
    let root = TempRoot::new("kill");
    let source = sample_source(&root, 20_000).await;
    let opts = create_options(&root, &source, "kill", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("create");
    let cluster = sandbox::cluster_of(&meta).expect("cluster");
    let writer = Writer::start(source.admin().await.expect("writer"), 0);
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.kill9().expect("kill -9");
        tokio::time::sleep(Duration::from_millis(300 + 200 * round)).await;
        // The watch loop restarts a sandbox whose server is down.
        follow::follow_once(&opts.state_dir, &opts.name)
            .await
            .expect("follow restarts the server");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = writer.stop().await.expect("writer");
    assert!(written > 200, "writes must flow through the crashes: {written}");
    wait_caught_up(&source, &meta).await;
    // `events` has no primary key (REPLICA IDENTITY FULL): a transaction applied twice would show as extra rows
    // and a different checksum, not as a conflict.
    assert_parity(&source, &meta, &sample_tables()).await;
    let st = sandbox::status(&opts.state_dir, &opts.name).await.expect("status");
    assert_eq!(st.state, SandboxState::Ready, "{:?}", st.reasons);
    sandbox::delete(&opts.state_dir, &opts.name, None, false)
        .await
        .expect("delete");
    assert_eq!(our_objects(&source).await, (vec![], vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_budget_breaker_drops_our_slot_and_marks_the_sandbox_stale() {
    let root = TempRoot::new("breaker");
    let source = sample_source(&root, 2_000).await;
    let mut opts = create_options(&root, &source, "breaker", Replicate::Publication("shop_pub".into()));
    opts.wal_budget_bytes = 64 * 1024;
    let meta = sandbox::create(&opts, &quiet).await.expect("create");
    // The sandbox stops confirming (its server is down) while production writes: retained WAL grows.
    sandbox::cluster_of(&meta)
        .expect("cluster")
        .stop(understudy::pg::StopMode::Fast)
        .await
        .expect("stop");
    let admin = source.admin().await.expect("admin");
    admin
        .batch_execute("INSERT INTO events (kind, payload) SELECT 'bulk', jsonb_build_object('g', g) FROM generate_series(1, 20000) g")
        .await
        .expect("writes");
    let report = follow::follow_once(&opts.state_dir, &opts.name).await.expect("follow");
    assert!(report.breaker_tripped, "{report:?}");
    let (slots, _) = our_objects(&source).await;
    assert!(slots.is_empty(), "the breaker must drop our slot: {slots:?}");
    let st = sandbox::status(&opts.state_dir, &opts.name).await.expect("status");
    assert_eq!(st.state, SandboxState::Stale);
    let last = st.last_error.expect("last error");
    assert!(last.message.contains("WAL budget breaker"), "{}", last.message);
    assert!(last.fix.contains("the agent rebuilds the sandbox"), "{}", last.fix);
    // The CLI reports a stale sandbox with a non-zero exit.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--state-dir")
        .arg(opts.state_dir.root())
        .args(["sandbox", "status", "breaker", "--format", "json"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json status");
    assert_eq!(json["state"], "stale");
    sandbox::delete(&opts.state_dir, &opts.name, None, false)
        .await
        .expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_the_data_directory_was_removed_by_hand() {
    let root = TempRoot::new("rmdata");
    let source = sample_source(&root, 1_000).await;
    let opts = create_options(
        &root,
        &source,
        "rmdata",
        Replicate::Tables(vec![understudy::pg::QualifiedName::parse("orders")]),
    );
    // Superuser-equivalent owner so that Understudy creates (and must remove) its own publication.
    let admin = source.admin().await.expect("admin");
    admin
        .batch_execute("ALTER ROLE understudy_replicator SUPERUSER")
        .await
        .expect("superuser");
    let meta = sandbox::create(&opts, &quiet).await.expect("create");
    admin
        .batch_execute("ALTER ROLE understudy_replicator NOSUPERUSER")
        .await
        .expect("nosuperuser");
    assert_eq!(our_objects(&source).await.1, vec!["understudy_rmdata".to_string()]);
    // Someone removes the data directory while the server runs.
    std::fs::remove_dir_all(&meta.cluster.data_dir).expect("rm -rf pgdata");
    let report = sandbox::delete(&opts.state_dir, &opts.name, None, false)
        .await
        .expect("delete");
    assert_eq!(report.slots_dropped, vec!["understudy_rmdata".to_string()]);
    assert_eq!(report.publication_dropped.as_deref(), Some("understudy_rmdata"));
    assert_eq!(our_objects(&source).await, (vec![], vec![]));
    assert!(understudy::pg::cluster::postmasters_under(&opts.state_dir.sandbox_dir(&opts.name)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_with_source_after_the_whole_sandbox_directory_is_gone() {
    let root = TempRoot::new("rmall");
    let source = sample_source(&root, 1_000).await;
    let opts = create_options(&root, &source, "rmall", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("create");
    let cluster = sandbox::cluster_of(&meta).expect("cluster");
    cluster.kill9().expect("kill");
    std::fs::remove_dir_all(opts.state_dir.sandbox_dir(&opts.name)).expect("rm -rf sandbox");
    // Without metadata, delete needs the source and says so.
    let err = sandbox::delete(&opts.state_dir, &opts.name, None, false)
        .await
        .expect_err("needs --source");
    assert!(err.to_string().contains("no sandbox named rmall"), "{err}");
    assert_eq!(our_objects(&source).await.0, vec!["understudy_rmall".to_string()]);
    // The command line with --source (via the environment, so the password is not in argv).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--state-dir")
        .arg(opts.state_dir.root())
        .args(["sandbox", "delete", "rmall"])
        .env("UNDERSTUDY_SOURCE", source.replicator_conninfo().to_secret_string())
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("dropped slot understudy_rmall"));
    assert_eq!(our_objects(&source).await, (vec![], vec![]));
}

/// A create that fails after its slot exists on the source (here: the state directory's filesystem fills up
/// once the slot is made, while the load, the server and the schema still need room; the space check before the
/// create passed) reports the failure and leaves nothing: no slot on the source, no sandbox directory, no server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_failing_after_its_slot_exists_leaves_nothing_behind() {
    let root = TempRoot::new("fullcreate");
    let Some(mount) = LoopMount::new(root.path(), "ext4", 120) else {
        return;
    };
    let source = sample_source(&root, 50_000).await;
    let mut opts = create_options(&root, &source, "full", Replicate::Publication("shop_pub".into()));
    opts.state_dir = mount.state();
    let filler = mount.dir.join("filler");
    let said = std::sync::Mutex::new(Vec::<String>::new());
    let say = |line: &str| {
        if line.contains("created slot understudy_full") {
            fill(&filler);
        }
        said.lock().expect("lines").push(line.to_string());
    };
    let err = sandbox::create(&opts, &say).await.expect_err("the build cannot fit");
    let lines = said.lock().expect("lines").join("\n");
    assert!(
        lines.contains("created slot understudy_full"),
        "the failure must come after the slot exists: {lines}"
    );
    let text = err.to_string();
    assert!(
        text.contains("ran out of space") || text.contains("No space left"),
        "{text}"
    );
    assert_eq!(our_objects(&source).await, (vec![], vec![]));
    assert!(!opts.state_dir.sandbox_dir(&opts.name).exists());
    assert!(understudy::pg::cluster::postmasters_under(mount.dir.as_path()).is_empty());
}

/// Writes `path` until its filesystem is full (root's reserved blocks too, so the sandbox's server has none).
fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0u8; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

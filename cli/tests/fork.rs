//! Forks at an exact point: content equal to the sandbox at the fork point while writes flow, the capture slot
//! holding exactly what the fork lacks (no gap, no duplicate), no connection from a fork to the source, every
//! strategy where the machine provides it, and bad input refused with nothing left behind.

use std::time::Duration;

use fixtures::harness::*;
use fixtures::source::SourceServer;
use fixtures::writer::Writer;
use understudy::fork::{self, ForkError, ForkMeta, ForkOptions, Strategy};
use understudy::pg::connect::connect_plain;
use understudy::replay::{Applier, CaptureReader, Change};
use understudy::sandbox::{self, SandboxMeta, StateDir};
use understudy::source::{Replicate, SandboxName};
use understudy::verify::checksum;

fn fork_options(sandbox: &str, name: &str, strategy: Option<Strategy>) -> ForkOptions {
    ForkOptions {
        sandbox: SandboxName::parse(sandbox).expect("name"),
        name: Some(SandboxName::parse(name).expect("name")),
        strategy,
        ttl: Duration::from_secs(3600),
        owner_pid: None,
    }
}

async fn sandbox_on(state: &StateDir, root: &TempRoot, source: &SourceServer, name: &str) -> SandboxMeta {
    let mut opts = create_options(root, source, name, Replicate::Publication("shop_pub".into()));
    opts.state_dir = state.clone();
    sandbox::create(&opts, &quiet).await.expect("create sandbox")
}

/// Connections on the source other than ours (the test's) and the sandbox's walsender.
async fn foreign_source_sessions(source: &SourceServer, sandbox: &SandboxMeta) -> Vec<String> {
    let admin = source.admin().await.expect("admin");
    admin
        .query(
            "SELECT coalesce(application_name, '') || ' ' || backend_type FROM pg_stat_activity \
             WHERE usename = 'understudy_replicator' AND NOT (backend_type = 'walsender' AND application_name = $1)",
            &[&sandbox.subscription],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The whole check for one strategy: fork under writes, exact fork point, replay of the capture slot gives the
/// sandbox's state, hygiene, and the source never sees the fork.
async fn exact_fork_point(state: StateDir, strategy: Option<Strategy>, expected: Strategy) {
    let root = TempRoot::new("fork");
    let source = sample_source(&root, 30_000).await;
    let sandbox_meta = sandbox_on(&state, &root, &source, "shop").await;
    let writer = Writer::start(source.admin().await.expect("writer"), 300);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let slot_before = understudy::source::objects::slot_info(&source.admin().await.expect("admin"), &sandbox_meta.slot)
        .await
        .expect("slot")
        .expect("exists");
    assert!(slot_before.active);

    let meta: ForkMeta = fork::create(&state, &fork_options("shop", "f1", strategy), &quiet)
        .await
        .expect("fork");
    assert_eq!(meta.strategy, expected, "{}", meta.strategy_reason);
    let fork_lsn = meta.lsn.expect("fork point");
    assert!(meta.timings.pause_ms > 0 && meta.timings.total_ms >= meta.timings.pause_ms);
    let fork_db = connect_plain(&meta.conninfo(&sandbox_meta), "test")
        .await
        .expect("fork accepts connections");
    fork_db
        .batch_execute("CREATE TABLE fork_is_writable (x int); DROP TABLE fork_is_writable")
        .await
        .expect("writable");

    // Writes keep flowing after the fork; the sandbox keeps replicating, the fork does not.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        foreign_source_sessions(&source, &sandbox_meta).await.is_empty(),
        "a fork reached the source"
    );
    let written = writer.stop().await.expect("writer");
    assert!(written > 100, "{written}");
    wait_caught_up(&source, &sandbox_meta).await;
    let slot_after = understudy::source::objects::slot_info(&source.admin().await.expect("admin"), &sandbox_meta.slot)
        .await
        .expect("slot")
        .expect("the source's slot must survive the fork");
    assert!(slot_after.active, "the sandbox must still stream");

    // Hygiene.
    if meta.strategy.separate_server() {
        let subs: i64 = fork_db
            .query_one("SELECT count(*) FROM pg_subscription", &[])
            .await
            .expect("subs")
            .get(0);
        let slots: i64 = fork_db
            .query_one("SELECT count(*) FROM pg_replication_slots", &[])
            .await
            .expect("slots")
            .get(0);
        let workers: String = fork_db
            .query_one("SHOW max_logical_replication_workers", &[])
            .await
            .expect("show")
            .get(0);
        assert_eq!((subs, slots, workers.as_str()), (0, 0, "0"));
        // A fork keeps long checkpoint intervals (nothing timed disturbs a dry-run); its sandbox checkpoints
        // every 30 s, which keeps a fork's CHECKPOINT short whatever the size.
        let fork_interval: String = fork_db
            .query_one("SHOW checkpoint_timeout", &[])
            .await
            .expect("show")
            .get(0);
        let sandbox_interval: String = sandbox::cluster_of(&sandbox_meta)
            .expect("cluster")
            .connect("shop")
            .await
            .expect("sandbox")
            .query_one("SHOW checkpoint_timeout", &[])
            .await
            .expect("show")
            .get(0);
        assert_eq!((fork_interval.as_str(), sandbox_interval.as_str()), ("15min", "30s"));
    }

    // The capture slot on the sandbox: its first insert into orders is not in the fork but is in the sandbox.
    let sandbox_db = sandbox::cluster_of(&sandbox_meta)
        .expect("cluster")
        .connect("shop")
        .await
        .expect("sandbox");
    let reader_client = sandbox::cluster_of(&sandbox_meta)
        .expect("cluster")
        .connect("shop")
        .await
        .expect("sandbox");
    let mut reader = CaptureReader::new(reader_client, &meta.capture_slot, fork::CAPTURE_PUBLICATION);
    let peeked = reader.read(None, None, false).await.expect("peek");
    assert!(
        !peeked.is_empty(),
        "the capture slot must hold the writes made after the fork point"
    );
    assert!(
        peeked[0].commit_lsn >= fork_lsn,
        "first captured commit {} before the fork point {fork_lsn}",
        peeked[0].commit_lsn
    );
    let orders_oid = reader
        .relations()
        .iter()
        .find(|(_, r)| r.name == "orders")
        .map(|(oid, _)| *oid)
        .expect("orders seen");
    let first_insert = peeked
        .iter()
        .flat_map(|t| &t.changes)
        .find_map(|c| match c {
            Change::Insert(i) if i.relation == orders_oid => Some(i.clone()),
            _ => None,
        })
        .expect("an insert into orders was captured");
    let id = match &first_insert.new.values[0] {
        understudy::pgoutput::Value::Text(t) => t.parse::<i64>().expect("id"),
        other => panic!("unexpected id {other:?}"),
    };
    let in_fork: i64 = fork_db
        .query_one("SELECT count(*) FROM orders WHERE id = $1", &[&id])
        .await
        .expect("q")
        .get(0);
    let in_sandbox: i64 = sandbox_db
        .query_one("SELECT count(*) FROM orders WHERE id = $1", &[&id])
        .await
        .expect("q")
        .get(0);
    assert_eq!(
        (in_fork, in_sandbox),
        (0, 1),
        "order {id}: the first captured change must be missing from the fork only"
    );

    // Apply everything captured up to the sandbox's current end: the fork must then equal the sandbox.
    let txs = reader.read(None, None, true).await.expect("read");
    assert_eq!(
        txs.len(),
        peeked.len(),
        "peeked {:?}..{:?}, read {:?}..{:?}",
        peeked.first().map(|t| t.commit_lsn),
        peeked.last().map(|t| t.commit_lsn),
        txs.first().map(|t| t.commit_lsn),
        txs.last().map(|t| t.commit_lsn)
    );
    let applier = Applier::new(reader.relations());
    for tx in &txs {
        applier
            .apply(&fork_db, tx)
            .await
            .expect("replayed transaction applies cleanly (no duplicate, no gap)");
    }
    let tables = sample_tables();
    let a = checksum::checksums(&sandbox_db, &tables).await.expect("sandbox sums");
    let b = checksum::checksums(&fork_db, &tables).await.expect("fork sums");
    assert_eq!(a, b, "fork + captured changes must equal the sandbox");

    // The fork's own inserts do not collide with replayed ids.
    fork_db
        .batch_execute("INSERT INTO orders (customer_id, total_cents) VALUES (1, 1)")
        .await
        .expect("fork insert");

    // Delete removes the fork and its capture slot.
    drop(fork_db);
    fork::delete(&state, &meta.name).await.expect("delete fork");
    assert_eq!(capture_slots(&sandbox_meta).await, 0);
    assert!(fork::list(&state).is_empty());
    sandbox::delete(&state, &sandbox_meta.name, None, false)
        .await
        .expect("delete sandbox");
    assert_eq!(our_objects(&source).await, (vec![], vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_strategy_on_a_plain_filesystem() {
    let root = TempRoot::new("ftpl");
    exact_fork_point(root.state(), None, Strategy::Template).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_copy_strategy() {
    let root = TempRoot::new("fcopy");
    exact_fork_point(root.state(), Some(Strategy::Copy), Strategy::Copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_snapshot_strategy() {
    let root = TempRoot::new("fbtrfs");
    let Some(mount) = LoopMount::new(root.path(), "btrfs", 1024) else {
        return;
    };
    exact_fork_point(mount.state(), None, Strategy::BtrfsSnapshot).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfs_reflink_strategy() {
    let root = TempRoot::new("fxfs");
    let Some(mount) = LoopMount::new(root.path(), "xfs", 1024) else {
        return;
    };
    exact_fork_point(mount.state(), None, Strategy::Reflink).await;
}

fn assert_refused_cleanly(err: &ForkError, state: &StateDir, fragment: &str) {
    assert!(err.to_string().contains(fragment), "expected {fragment:?} in: {err}");
    assert!(fork::list(state).is_empty(), "a fork was left behind");
    let forks = state.root().join("forks");
    let leftovers: Vec<_> = std::fs::read_dir(&forks)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "directories left behind: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_nothing_left_behind() {
    let root = TempRoot::new("fbad");
    let state = root.state();
    let source = sample_source(&root, 2_000).await;

    // Unknown sandbox.
    let err = fork::create(&state, &fork_options("ghost", "g1", None), &quiet)
        .await
        .expect_err("unknown");
    assert_refused_cleanly(&err, &state, "no sandbox named ghost");

    let meta = sandbox_on(&state, &root, &source, "shop").await;
    // A strategy the filesystem cannot provide (the temp directory is not btrfs).
    if understudy::cow::filesystem(root.path()).as_deref() != Some("btrfs") {
        let err = fork::create(
            &state,
            &fork_options("shop", "b1", Some(Strategy::BtrfsSnapshot)),
            &quiet,
        )
        .await
        .expect_err("no btrfs");
        assert_refused_cleanly(&err, &state, "strategy btrfs-snapshot is not available here");
        assert!(err.to_string().contains("not a btrfs subvolume"), "{err}");
    }
    assert_eq!(capture_slots(&meta).await, 0);

    // A sandbox that is not ready: degraded, then stopped.
    let dir = state.sandbox_dir(&meta.name);
    let mut degraded = SandboxMeta::load(&dir).expect("meta");
    degraded.phase = sandbox::SandboxState::Degraded;
    degraded.save(&dir).expect("save");
    let err = fork::create(&state, &fork_options("shop", "d1", None), &quiet)
        .await
        .expect_err("degraded");
    assert!(matches!(err, ForkError::NotReady { .. }), "{err}");
    assert_refused_cleanly(&err, &state, "sandbox shop is not ready to fork");
    meta.save(&dir).expect("restore meta");
    sandbox::cluster_of(&meta)
        .expect("cluster")
        .stop(understudy::pg::StopMode::Fast)
        .await
        .expect("stop");
    let err = fork::create(&state, &fork_options("shop", "s1", None), &quiet)
        .await
        .expect_err("stopped");
    assert_refused_cleanly(&err, &state, "does not accept connections");
    sandbox::cluster_of(&meta)
        .expect("cluster")
        .start()
        .await
        .expect("start");
    assert_eq!(capture_slots(&meta).await, 0);

    // The command line: exit 2 and the message.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--state-dir")
        .arg(state.root())
        .args(["fork", "create", "ghost"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sandbox named ghost"));
    sandbox::delete(&state, &meta.name, None, false).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_copy_cleanly_and_the_sandbox_resumes() {
    let root = TempRoot::new("ffull");
    let state = root.state();
    let source = sample_source(&root, 100_000).await;
    let meta = sandbox_on(&state, &root, &source, "shop").await;
    // The forks directory is a small filesystem of its own: the sandbox keeps running, a physical copy of it
    // does not fit.
    let forks_parent = TempRoot::new("ffull-forks");
    let Some(mount) = LoopMount::new(forks_parent.path(), "ext4", 64) else {
        return;
    };
    std::fs::create_dir(mount.dir.join("forks")).expect("forks dir");
    std::os::unix::fs::symlink(mount.dir.join("forks"), state.root().join("forks"))
        .expect("forks on the small filesystem");
    let err = fork::create(&state, &fork_options("shop", "full", Some(Strategy::Copy)), &quiet)
        .await
        .expect_err("disk full");
    assert_refused_cleanly(&err, &state, "No space left on device");
    assert!(err.to_string().contains("filesystem is full"), "{err}");
    assert_eq!(capture_slots(&meta).await, 0, "the capture slot must be dropped");
    // The sandbox was resumed: it replicates new writes.
    source
        .admin()
        .await
        .expect("admin")
        .batch_execute("INSERT INTO orders (customer_id, total_cents) VALUES (1, 424242)")
        .await
        .expect("write");
    wait_caught_up(&source, &meta).await;
    let db = sandbox::cluster_of(&meta)
        .expect("cluster")
        .connect("shop")
        .await
        .expect("sandbox");
    let n: i64 = db
        .query_one("SELECT count(*) FROM orders WHERE total_cents = 424242", &[])
        .await
        .expect("q")
        .get(0);
    assert_eq!(n, 1);
    sandbox::delete(&state, &meta.name, None, false).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_fork_create_is_cleaned_by_the_next_command_and_ttl_expires_forks() {
    let root = TempRoot::new("fint");
    let state = root.state();
    let source = sample_source(&root, 200_000).await;
    let meta = sandbox_on(&state, &root, &source, "shop").await;
    // kill -9 the command line in the middle of a (slow, physical) fork.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--state-dir")
        .arg(state.root())
        .args(["fork", "create", "shop", "--name", "killed", "--strategy", "copy"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let fork_json = state.root().join("forks/killed/fork.json");
    eventually(Duration::from_secs(60), "the fork to reach its copy", || {
        let path = fork_json.clone();
        async move {
            std::fs::read_to_string(&path)
                .map(|t| t.contains("\"lsn\": \""))
                .unwrap_or(false)
        }
    })
    .await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    assert_eq!(
        capture_slots(&meta).await,
        1,
        "the interrupted fork left its capture slot"
    );
    // The next fork command cleans up: the fork, its capture slot, and the sandbox's paused apply.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--state-dir")
        .arg(state.root())
        .args(["fork", "sweep"])
        .output()
        .expect("sweep");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed fork killed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!state.root().join("forks/killed").exists());
    assert_eq!(capture_slots(&meta).await, 0);
    let db = sandbox::cluster_of(&meta)
        .expect("cluster")
        .connect("shop")
        .await
        .expect("sandbox");
    let enabled: bool = db
        .query_one("SELECT subenabled FROM pg_subscription", &[])
        .await
        .expect("sub")
        .get(0);
    assert!(enabled, "the sandbox's apply must be resumed");
    drop(db);

    // TTL: an expired fork is removed by the sweep.
    let mut opts = fork_options("shop", "short", None);
    opts.ttl = Duration::from_secs(1);
    fork::create(&state, &opts, &quiet).await.expect("fork");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fork::sweep(&state).await.expect("sweep"), vec!["short".to_string()]);
    assert!(fork::list(&state).is_empty());
    assert_eq!(capture_slots(&meta).await, 0);
    sandbox::delete(&state, &meta.name, None, false).await.expect("delete");
}

/// Managed services name the application's database `postgres`: the sandbox loads it into its own `postgres`
/// database, follows it, forks it with the template strategy (which needs that database free of Understudy's own
/// sessions) and with a physical copy, and is deleted leaving nothing on the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_database_named_postgres() {
    let root = TempRoot::new("fpg");
    let state = root.state();
    let source = SourceServer::start(&root.path().join("source"), "postgres", &[])
        .await
        .expect("start source");
    source.load_sample(5_000, "shop_pub").await.expect("load sample");
    let mut opts = create_options(&root, &source, "prod", Replicate::Publication("shop_pub".into()));
    opts.state_dir = state.clone();
    let meta = sandbox::create(&opts, &quiet)
        .await
        .expect("create a sandbox of a database named postgres");
    assert_eq!(meta.database, "postgres");
    let writer = Writer::start(source.admin().await.expect("writer"), 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The follower takes the pause lock in the same database as a fork does.
    let report = understudy::sandbox::follow::follow_once(&state, &meta.name)
        .await
        .expect("follow");
    assert!(report.error.is_none(), "{:?}", report.error);
    for (name, strategy) in [("t1", Strategy::Template), ("c1", Strategy::Copy)] {
        let f = fork::create(&state, &fork_options("prod", name, Some(strategy)), &quiet)
            .await
            .unwrap_or_else(|e| panic!("{} fork of a database named postgres: {e}", strategy.as_str()));
        let db = connect_plain(&f.conninfo(&meta), "test").await.expect("fork");
        let orders: i64 = db
            .query_one("SELECT count(*) FROM orders", &[])
            .await
            .expect("orders")
            .get(0);
        assert!(orders >= 5_000, "{orders}");
        drop(db);
        fork::delete(&state, &f.name).await.expect("delete fork");
    }
    writer.stop().await.expect("writer");
    wait_caught_up(&source, &meta).await;
    assert_parity(&source, &meta, &sample_tables()).await;
    sandbox::delete(&state, &meta.name, None, false).await.expect("delete");
    assert_eq!(our_objects(&source).await, (vec![], vec![]));
}

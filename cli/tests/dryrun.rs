//! Dry-runs under replayed production writes (steady writes on the source during each test).

use std::time::Duration;

use fixtures::harness::*;
use fixtures::source::SourceServer;
use fixtures::writer::Writer;
use understudy::dryrun::DryRunOptions;
use understudy::fork;
use understudy::pg::connect::connect_plain;
use understudy::report::Verdict;
use understudy::sandbox::{self, SandboxMeta, StateDir};
use understudy::source::Replicate;
use understudy::verify::checksum;

struct Setup {
    root: TempRoot,
    source: SourceServer,
    meta: SandboxMeta,
}

async fn setup(label: &str, rows: i64) -> Setup {
    let root = TempRoot::new(label);
    let source = sample_source(&root, rows).await;
    let opts = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("sandbox");
    Setup { root, source, meta }
}

fn options(root: &TempRoot, text: &str, fork_name: &str) -> DryRunOptions {
    let up = root.path().join(format!("{fork_name}.sql"));
    std::fs::write(&up, text).expect("write migration");
    DryRunOptions {
        // These tests are about replay and locks; verification has its own tests.
        verify: false,
        ..dry_run_options(sql(&up.display().to_string(), text), fork_name)
    }
}

/// Waits for the dry-run's fork to be ready and returns it.
async fn ready_fork(state: &StateDir) -> fork::ForkMeta {
    loop {
        if let Some(f) = fork::list(state)
            .into_iter()
            .find(|f| f.phase == fork::ForkPhase::Ready)
        {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `understudy dry-run` of `up` and waits until its fork is ready.
async fn spawn_dry_run(state: &StateDir, up: &std::path::Path) -> std::process::Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--state-dir")
        .arg(state.root())
        .args([
            "dry-run",
            "--sandbox",
            "shop",
            "--warmup",
            "1s",
            "--after",
            "1s",
            "--up",
        ])
        .arg(up)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    eventually(Duration::from_secs(60), "the dry-run's fork", || {
        let state = state.clone();
        async move { fork::list(&state).iter().any(|f| f.phase == fork::ForkPhase::Ready) }
    })
    .await;
    child
}

fn assert_no_fork_left(state: &StateDir) {
    assert!(fork::list(state).is_empty(), "a fork was left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_is_faithful_with_an_empty_migration() {
    let s = setup("drfaith", 20_000).await;
    let state = s.root.state();
    let writer = Writer::start(s.source.admin().await.expect("writer"), 300);
    let mut opts = options(&s.root, "SELECT 1;", "faith");
    opts.keep_fork = true;
    opts.after = Duration::from_secs(4);
    let run = {
        let state = state.clone();
        let opts = opts.clone();
        tokio::spawn(async move { dry_run(&state, &opts).await })
    };
    // Writes flow through the warm-up and into the after window, then stop; the run's last read drains them.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let written = writer.stop().await.expect("writer");
    assert!(written > 100, "{written}");
    wait_caught_up(&s.source, &s.meta).await;
    let report = run.await.expect("join").expect("dry-run");
    assert_eq!(report.verdict.result, Verdict::Pass, "{:?}", report.verdict.reasons);
    assert!(report.writes.replayed > 100, "replayed {}", report.writes.replayed);
    assert_eq!(report.writes.failed, 0, "{:?}", report.writes.failures);
    assert!(report.writes.latency.before.count > 0);

    let forks = fork::list(&state);
    assert_eq!(forks.len(), 1);
    let fork_db = connect_plain(&forks[0].conninfo(&s.meta), "test").await.expect("fork");
    let sandbox_db = sandbox::cluster_of(&s.meta)
        .expect("cluster")
        .connect("shop")
        .await
        .expect("sandbox");
    let tables = sample_tables();
    assert_eq!(
        checksum::checksums(&sandbox_db, &tables).await.expect("sandbox"),
        checksum::checksums(&fork_db, &tables).await.expect("fork"),
        "after replay stops, the fork must equal the sandbox"
    );
    drop(fork_db);
    fork::delete(&state, &forks[0].name).await.expect("delete fork");
    assert_eq!(capture_slots(&s.meta).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_index_blocks_writes_and_concurrently_does_not() {
    let s = setup("drindex", 400_000).await;
    let state = s.root.state();
    let writer = Writer::start(s.source.admin().await.expect("writer"), 0);

    let opts = options(
        &s.root,
        "CREATE INDEX orders_total_idx ON orders (total_cents, note, created_at);",
        "plain",
    );
    let report = dry_run(&state, &opts).await.expect("dry-run");
    let stmt = &report.migration.statements[0];
    assert!(stmt.outcome.ok, "{:?}", stmt.outcome.error);
    let share = stmt
        .locks
        .iter()
        .find(|l| l.mode == "ShareLock" && l.relation == "public.orders");
    assert!(
        share.is_some(),
        "the SHARE lock on orders must be reported: {:?}",
        stmt.locks
    );
    assert!(share.map(|l| l.held_ms).unwrap_or(0.0) > 0.0);
    assert!(
        report.writes.blocked > 0,
        "writes must be blocked by CREATE INDEX: {:?}",
        report.writes
    );
    assert!(report.writes.latency.during.max_ms > report.writes.latency.before.p50_ms);
    assert_ne!(report.verdict.result, Verdict::Pass, "{:?}", report.verdict.reasons);
    // Every blocked write, also those that queued behind the blocked workers, belongs to the one statement.
    assert_eq!(stmt.blocked_writes, report.writes.blocked);
    // squawk's rule hit carries the measured evidence.
    let lint = report
        .findings
        .iter()
        .find(|f| f.code.to_string() == "lint-require-concurrent-index-creation")
        .unwrap_or_else(|| panic!("{:?}", report.findings));
    assert_eq!(lint.line, Some(1));
    assert!(
        lint.evidence.contains("held ShareLock on public.orders"),
        "{}",
        lint.evidence
    );
    assert!(!lint.evidence.contains(" 0 write(s) blocked"), "{}", lint.evidence);
    assert_no_fork_left(&state);

    let opts = options(
        &s.root,
        "CREATE INDEX CONCURRENTLY orders_total_idx ON orders (total_cents, note, created_at);",
        "conc",
    );
    let report = dry_run(&state, &opts).await.expect("dry-run");
    writer.stop().await.expect("writer");
    let stmt = &report.migration.statements[0];
    assert!(stmt.outcome.ok, "{:?}", stmt.outcome.error);
    assert!(
        stmt.locks.iter().any(|l| l.mode == "ShareUpdateExclusiveLock"),
        "{:?}",
        stmt.locks
    );
    assert_eq!(
        report.writes.blocked, 0,
        "CREATE INDEX CONCURRENTLY must not block writes: {:?}",
        report.locks.blocked_sessions
    );
    assert!(report.writes.replayed > 100);
    assert_eq!(report.verdict.result, Verdict::Pass, "{:?}", report.verdict.reasons);
    assert_no_fork_left(&state);
    assert_eq!(capture_slots(&s.meta).await, 0);

    // `understudy lint` runs the static pass alone.
    let file = s.root.path().join("lint.sql");
    std::fs::write(&file, "SELECT 1;\nCREATE INDEX i ON orders (note);\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("lint")
        .arg(&file)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(":2:1: require-concurrent-index-creation"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_table_behind_a_long_transaction_queues_the_writers() {
    let s = setup("drqueue", 20_000).await;
    let state = s.root.state();
    let writer = Writer::start(s.source.admin().await.expect("writer"), 200);
    let mut opts = options(
        &s.root,
        "ALTER TABLE orders ADD COLUMN flagged boolean NOT NULL DEFAULT false;",
        "queue",
    );
    opts.warmup = Duration::from_secs(3);
    let run = {
        let state = state.clone();
        let opts = opts.clone();
        tokio::spawn(async move { dry_run(&state, &opts).await })
    };
    // A session on the fork holds a lock on the hot table across the migration's start (the 2 AM incident).
    let fork_meta = ready_fork(&state).await;
    let holder = connect_plain(&fork_meta.conninfo(&s.meta), "report-job")
        .await
        .expect("fork");
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM orders;")
        .await
        .expect("hold");
    tokio::time::sleep(Duration::from_secs(6)).await;
    holder.batch_execute("COMMIT").await.expect("release");
    let report = run.await.expect("join").expect("dry-run");
    writer.stop().await.expect("writer");
    let stmt = &report.migration.statements[0];
    assert!(stmt.outcome.ok, "{:?}", stmt.outcome.error);
    let wait = stmt
        .waits
        .iter()
        .find(|w| w.relation == "public.orders")
        .expect("the migration's wait is measured");
    assert!(wait.waited_ms > 500.0, "{wait:?}");
    assert!(
        wait.blockers.iter().any(|b| b.contains("report-job")),
        "the blocker is named: {:?}",
        wait.blockers
    );
    assert!(report.writes.blocked > 0, "writers queue behind the waiting ALTER");
    assert!(report.writes.blocked_max_ms > 500.0, "{}", report.writes.blocked_max_ms);
    assert!(report.locks.longest_queue >= 2, "{}", report.locks.longest_queue);
    assert_eq!(report.verdict.result, Verdict::Fail, "{:?}", report.verdict.reasons);
    assert_no_fork_left(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_column_production_still_writes_fails_replayed_writes() {
    let s = setup("drdrop", 20_000).await;
    let state = s.root.state();
    let writer = Writer::start(s.source.admin().await.expect("writer"), 300);
    let opts = options(&s.root, "ALTER TABLE orders DROP COLUMN note;", "drop");
    let report = dry_run(&state, &opts).await.expect("dry-run");
    writer.stop().await.expect("writer");
    assert!(report.migration.ok);
    let group = report
        .writes
        .failures
        .iter()
        .find(|f| f.sqlstate == "42703" && f.table == "public.orders")
        .unwrap_or_else(|| panic!("failed writes with 42703 on orders: {:?}", report.writes.failures));
    assert!(group.count > 0);
    assert!(group.message.contains("note"), "{}", group.message);
    assert_eq!(report.verdict.result, Verdict::Fail);
    // The JSON and Markdown carry it.
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(json["verdict"]["result"], "fail");
    assert!(json["writes"]["failures"][0]["sqlstate"].as_str().is_some());
    assert!(report.markdown().contains("42703"));
    assert_no_fork_left(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupting_or_failing_a_run_leaves_no_fork_and_no_capture_slot() {
    let s = setup("drint", 20_000).await;
    let state = s.root.state();
    let writer = Writer::start(s.source.admin().await.expect("writer"), 200);

    // An error mid-migration.
    let opts = options(
        &s.root,
        "ALTER TABLE orders ADD COLUMN a int;\nALTER TABLE nope ADD COLUMN b int;\nALTER TABLE orders ADD COLUMN c int;",
        "err",
    );
    let report = dry_run(&state, &opts).await.expect("dry-run reports");
    assert!(!report.migration.ok);
    assert_eq!(report.migration.statements.len(), 2);
    assert_eq!(report.migration.statements[1].outcome.line, 2);
    assert_eq!(
        report.migration.statements[1].outcome.sqlstate.as_deref(),
        Some("42P01")
    );
    assert_eq!(report.migration.skipped, 1);
    assert_eq!(report.verdict.result, Verdict::Fail);
    assert_no_fork_left(&state);
    assert_eq!(capture_slots(&s.meta).await, 0);

    // SIGINT to the command line mid-run.
    let up = s.root.path().join("slow.sql");
    std::fs::write(&up, "SELECT pg_sleep(30);").expect("write");
    let child = spawn_dry_run(&state, &up).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let out = child.wait_with_output().expect("wait");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("interrupted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    writer.stop().await.expect("writer");
    assert_no_fork_left(&state);
    assert_eq!(capture_slots(&s.meta).await, 0);
    // kill -9 of the command line mid-run: its fork dies with it at the next fork command.
    let mut child = spawn_dry_run(&state, &up).await;
    child.kill().expect("kill -9");
    let _ = child.wait();
    // The run forks a migrated fork and its control twin; both are still there.
    assert_eq!(fork::list(&state).len(), 2, "the killed run's forks are still there");
    let removed = fork::sweep(&state).await.expect("sweep");
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert_no_fork_left(&state);
    assert_eq!(capture_slots(&s.meta).await, 0);
    // A bad migration file is refused before any fork exists (exit 2).
    let bad = s.root.path().join("bad.sql");
    std::fs::write(&bad, "ALTER TABLE orders ADD COLUMN x text DEFAULT 'open;").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--state-dir")
        .arg(state.root())
        .args(["dry-run", "--sandbox", "shop", "--up"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unterminated string"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_no_fork_left(&state);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_names_the_blocking_session_and_bad_schedules_are_refused() {
    let s = setup("drtimeout", 5_000).await;
    let state = s.root.state();
    let writer = Writer::start(s.source.admin().await.expect("writer"), 100);
    let mut opts = options(&s.root, "ALTER TABLE orders ADD COLUMN z int;", "tmo");
    opts.warmup = Duration::from_secs(2);
    opts.statement_timeout = Some(Duration::from_secs(1));
    let run = {
        let state = state.clone();
        let opts = opts.clone();
        tokio::spawn(async move { dry_run(&state, &opts).await })
    };
    let fork_meta = ready_fork(&state).await;
    let holder = connect_plain(&fork_meta.conninfo(&s.meta), "nightly-report")
        .await
        .expect("fork");
    holder
        .batch_execute("BEGIN; SELECT count(*) FROM orders;")
        .await
        .expect("hold");
    let report = run.await.expect("join").expect("dry-run");
    writer.stop().await.expect("writer");
    let stmt = &report.migration.statements[0];
    assert!(stmt.outcome.timed_out, "{:?}", stmt.outcome);
    assert_eq!(stmt.outcome.sqlstate.as_deref(), Some("57014"));
    assert_eq!(report.verdict.result, Verdict::Fail);
    let reason = report.verdict.reasons.join(" ");
    assert!(
        reason.contains("timed out") && reason.contains("nightly-report"),
        "{reason}"
    );
    drop(holder);
    assert_no_fork_left(&state);

    for args in [["--cron", "0 2 * *"], ["--at", "25:99"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
            .arg("--state-dir")
            .arg(state.root())
            .args(["dry-run", "--sandbox", "shop", "--up"])
            .arg(&opts.up.name)
            .args(args)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
        assert_no_fork_left(&state);
    }
}

//! Faults of the stream from the source, against real servers and the agent's own supervisor, while the
//! application writes: a slot dropped behind the sandbox's back, a slot recreated under the same name, the WAL
//! budget breaker, a 20 s network cut, a restart of the source. Each test ends with a parity check (every table's
//! checksum on the source and the sandbox) and an orphan check (nothing of ours left on the source after the
//! delete). The timings each test prints are in the closing note of issue 14.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fixtures::harness::*;
use fixtures::proxy::Proxy;
use fixtures::source::{REPLICATOR, SourceServer};
use fixtures::writer::Writer;
use tokio_util::sync::CancellationToken;
use understudy::metrics::Metrics;
use understudy::sandbox::state::{ResyncPolicy, ResyncStatus, StaleReason};
use understudy::sandbox::{self, SandboxMeta, SandboxState, StateDir};
use understudy::source::identity::Gap;
use understudy::source::sweep;
use understudy::source::{Replicate, SandboxName};
use understudy::supervisor::{Settings, Supervisor};

/// The agent's supervisor over `state`, passing every 300 ms; stopped by cancelling the token.
fn supervise(state: &StateDir) -> (CancellationToken, Arc<Metrics>, tokio::task::JoinHandle<()>) {
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let settings = Settings {
        follow_interval: Duration::from_millis(300),
        status_interval: Duration::from_millis(500),
        rescan_interval: Duration::from_millis(500),
        ..Settings::default()
    };
    let supervisor = Supervisor::new(state.clone(), settings, Arc::clone(&metrics));
    let stop = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&supervisor).run(stop.clone()));
    (stop, metrics, task)
}

fn meta_of(state: &StateDir, name: &SandboxName) -> SandboxMeta {
    SandboxMeta::load(&state.sandbox_dir(name)).expect("metadata")
}

/// Waits until the sandbox's metadata satisfies `check`; returns how long it took.
async fn until_meta(
    state: &StateDir,
    name: &SandboxName,
    timeout: Duration,
    what: &str,
    check: impl Fn(&SandboxMeta) -> bool,
) -> Duration {
    let started = Instant::now();
    eventually(timeout, what, || {
        let ok = SandboxMeta::load(&state.sandbox_dir(name)).is_ok_and(|m| check(&m));
        async move { ok }
    })
    .await;
    started.elapsed()
}

/// Ends the walsender holding `slot` and drops it, as a DBA would.
async fn drop_slot_as_dba(admin: &tokio_postgres::Client, slot: &str) {
    for _ in 0..100 {
        admin
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&slot],
            )
            .await
            .expect("terminate the walsender");
        if admin
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("could not drop slot {slot}");
}

/// Parity with the source (after the writer stopped), then the delete leaves nothing on the source.
async fn parity_then_nothing_left(source: &SourceServer, state: &StateDir, name: &SandboxName) {
    let meta = meta_of(state, name);
    wait_caught_up(source, &meta).await;
    assert_parity(source, &meta, &sample_tables()).await;
    let admin = source.admin().await.expect("admin");
    let owned = understudy::sandbox::state::owned_on_sources(state);
    let found = sweep::find(&admin, &owned).await.expect("sweep");
    assert!(found.is_empty(), "sweep --source finds {found:?}");
    sandbox::delete(state, name, None, false).await.expect("delete");
    wait_nothing_left(source, REPLICATOR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_marks_the_sandbox_stale_and_the_resync_restores_parity() {
    let root = TempRoot::new("gapdrop");
    let source = sample_source(&root, 5_000).await;
    let opts = create_options(&root, &source, "gapdrop", Replicate::Publication("shop_pub".into()));
    let first = sandbox::create(&opts, &quiet).await.expect("create");
    let (stop, metrics, task) = supervise(&opts.state_dir);
    let writer = Writer::start(source.admin().await.expect("writer"), 150);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let admin = source.admin().await.expect("admin");
    drop_slot_as_dba(&admin, &first.slot).await;
    let detected = until_meta(
        &opts.state_dir,
        &opts.name,
        Duration::from_secs(10),
        "the sandbox stale",
        |m| m.stale_reason.is_some() || m.generation > 1,
    )
    .await;
    eprintln!("dropped slot: stale after {detected:?}");
    // A fork of the stale copy is refused while it is rebuilt.
    let stale = meta_of(&opts.state_dir, &opts.name);
    if stale.generation == 1 {
        assert!(
            matches!(stale.stale_reason, Some(StaleReason::Gap(Gap::SlotMissing { .. }))),
            "{:?}",
            stale.stale_reason
        );
        assert!(
            stale
                .last_error
                .as_ref()
                .is_some_and(|e| e.message.contains("no longer exists"))
        );
    }

    let healed = until_meta(
        &opts.state_dir,
        &opts.name,
        Duration::from_secs(180),
        "generation 2",
        |m| m.generation == 2 && m.phase == SandboxState::Ready,
    )
    .await;
    eprintln!("dropped slot: resynced {healed:?} after it went stale");
    let written = writer.stop().await.expect("writer");
    assert!(written > 100, "{written}");
    stop.cancel();
    task.await.expect("supervisor");
    let now = meta_of(&opts.state_dir, &opts.name);
    assert!(
        matches!(now.resync_status, Some(ResyncStatus::Done { generation: 2, .. })),
        "{:?}",
        now.resync_status
    );
    assert!(
        !first.cluster.data_dir.exists(),
        "the stale copy's data directory is removed after the swap"
    );
    let text = metrics.render();
    assert!(
        text.contains("understudy_sandbox_gaps_total{sandbox=\"gapdrop\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("understudy_sandbox_resyncs_total{result=\"done\",sandbox=\"gapdrop\"} 1"),
        "{text}"
    );
    parity_then_nothing_left(&source, &opts.state_dir, &opts.name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_recreated_under_our_name_is_a_gap_and_a_manual_resync_heals_it() {
    let root = TempRoot::new("gapnew");
    let source = sample_source(&root, 5_000).await;
    let mut opts = create_options(&root, &source, "gapnew", Replicate::Publication("shop_pub".into()));
    opts.resync = ResyncPolicy::Manual;
    let first = sandbox::create(&opts, &quiet).await.expect("create");
    let (stop, _metrics, task) = supervise(&opts.state_dir);
    let writer = Writer::start(source.admin().await.expect("writer"), 150);
    tokio::time::sleep(Duration::from_secs(4)).await;

    // Dropped and at once recreated under the same name, as a failover tool or a hurried DBA would: the
    // sandbox's apply worker never sees the slot missing, and the new slot starts at the present.
    let admin = source.admin().await.expect("admin");
    drop_slot_as_dba(&admin, &first.slot).await;
    admin
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&first.slot],
        )
        .await
        .expect("recreate the slot");
    let detected = until_meta(
        &opts.state_dir,
        &opts.name,
        Duration::from_secs(10),
        "the sandbox stale",
        |m| m.phase == SandboxState::Stale,
    )
    .await;
    eprintln!("recreated slot: stale after {detected:?}");
    let stale = meta_of(&opts.state_dir, &opts.name);
    eprintln!("recreated slot: {:?}", stale.stale_reason);
    assert!(
        matches!(stale.stale_reason, Some(StaleReason::Gap(Gap::SlotRecreated { .. }))),
        "{:?}",
        stale.stale_reason
    );
    // The stale copy no longer follows any slot: its subscription is disabled and names none.
    let old = sandbox::cluster_of(&stale)
        .expect("cluster")
        .connect(&stale.database)
        .await
        .expect("sandbox");
    let row = old
        .query_one(
            "SELECT subenabled, subslotname IS NULL FROM pg_subscription WHERE subname = $1",
            &[&stale.subscription],
        )
        .await
        .expect("subscription");
    assert_eq!((row.get::<_, bool>(0), row.get::<_, bool>(1)), (false, true));
    // Nothing is made of the stale copy.
    let fork = understudy::fork::create(
        &opts.state_dir,
        &understudy::fork::ForkOptions {
            sandbox: opts.name.clone(),
            name: None,
            strategy: None,
            ttl: Duration::from_secs(600),
            owner_pid: None,
        },
        &quiet,
    )
    .await;
    assert!(fork.is_err(), "a fork of a stale sandbox must be refused");
    // Policy manual: it stays stale, saying so, until asked.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let waiting = meta_of(&opts.state_dir, &opts.name);
    assert_eq!(waiting.generation, 1);
    assert_eq!(waiting.resync_status, Some(ResyncStatus::WaitingForRequest));

    // Asked for (as `POST /v1/sandboxes/NAME/resync` does): the running agent rebuilds it.
    let started = Instant::now();
    let asked = sandbox::resync::request(&opts.state_dir, &opts.name)
        .await
        .expect("request a resync");
    assert!(matches!(asked.resync_status, Some(ResyncStatus::Requested { .. })));
    until_meta(
        &opts.state_dir,
        &opts.name,
        Duration::from_secs(60),
        "generation 2 swapped in",
        |m| m.generation == 2 && m.phase != SandboxState::Stale,
    )
    .await;
    eprintln!("recreated slot: requested resync took {:?}", started.elapsed());
    let new = meta_of(&opts.state_dir, &opts.name);
    assert!(matches!(
        new.resync_status,
        Some(ResyncStatus::Done { generation: 2, .. })
    ));
    let again = sandbox::resync::request(&opts.state_dir, &opts.name).await;
    assert!(
        matches!(again, Err(sandbox::SandboxError::NotStale { .. })),
        "a current sandbox is not resynced: {again:?}"
    );
    stop.cancel();
    task.await.expect("supervisor");
    let written = writer.stop().await.expect("writer");
    assert!(written > 100, "{written}");
    parity_then_nothing_left(&source, &opts.state_dir, &opts.name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_source_without_our_slot_is_a_gap_and_the_resync_follows_it() {
    let root = TempRoot::new("moved");
    let old = sample_source(&root, 2_000).await;
    let mut opts = create_options(&root, &old, "moved", Replicate::Publication("shop_pub".into()));
    opts.resync = ResyncPolicy::Manual;
    let first = sandbox::create(&opts, &quiet).await.expect("create");
    let (stop, _metrics, task) = supervise(&opts.state_dir);
    // The source moves (a failover to a server that does not have our slot, as PostgreSQL 15's standbys do not):
    // another server, with other data, and its connection string given to the sandbox.
    let new = SourceServer::start(&root.path().join("new-source"), "shop", &[])
        .await
        .expect("new source");
    new.load_sample(3_000, "shop_pub").await.expect("sample");
    let writer = Writer::start(new.admin().await.expect("writer"), 100);
    let started = Instant::now();
    sandbox::set_source(&opts.state_dir, &opts.name, &new.replicator_conninfo())
        .await
        .expect("a new source is taken");
    let stale = meta_of(&opts.state_dir, &opts.name);
    assert_eq!(
        stale.phase,
        SandboxState::Stale,
        "at once: nothing is applied from a source without our slot"
    );
    assert!(
        matches!(stale.stale_reason, Some(StaleReason::Gap(Gap::SlotMissing { .. }))),
        "{:?}",
        stale.stale_reason
    );
    // Our slot on the old server, which still answers, is dropped: nobody would read it again.
    assert_eq!(
        our_objects(&old).await.0,
        Vec::<String>::new(),
        "the old source keeps no slot of ours"
    );
    // Policy manual: it waits. Then the policy turns auto (as a Sandbox's spec does), and the resync follows.
    until_meta(
        &opts.state_dir,
        &opts.name,
        Duration::from_secs(30),
        "waiting for a request",
        |m| m.resync_status == Some(ResyncStatus::WaitingForRequest),
    )
    .await;
    let waiting = meta_of(&opts.state_dir, &opts.name);
    assert!(
        waiting
            .last_error
            .as_ref()
            .is_some_and(|e| e.fix.contains("sandbox resync moved")),
        "{:?}",
        waiting.last_error
    );
    let auto = sandbox::resync::set_policy(&opts.state_dir, &opts.name, ResyncPolicy::Auto)
        .await
        .expect("policy auto");
    assert_eq!(auto.resync, ResyncPolicy::Auto);
    assert!(
        auto.last_error
            .as_ref()
            .is_some_and(|e| e.fix.contains("the agent rebuilds")),
        "the fix follows the policy: {:?}",
        auto.last_error
    );
    let healed = until_meta(
        &opts.state_dir,
        &opts.name,
        Duration::from_secs(90),
        "generation 2, from the new source",
        |m| m.generation == 2 && m.phase == SandboxState::Ready,
    )
    .await;
    eprintln!(
        "moved source: resynced from the new source {:?} after the switch",
        started.elapsed()
    );
    let _ = healed;
    assert_eq!(first.generation, 1);
    stop.cancel();
    task.await.expect("supervisor");
    let written = writer.stop().await.expect("writer");
    assert!(written > 100, "{written}");
    parity_then_nothing_left(&new, &opts.state_dir, &opts.name).await;
}

/// The value of the metric line that starts with `series` (name and labels), if any.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_drops_the_slot_before_its_wal_is_at_risk_and_the_resync_restores_parity() {
    let root = TempRoot::new("gapbrk");
    let source = sample_source(&root, 2_000).await;
    let admin = source.admin().await.expect("admin");
    // The source's own limit, far above our budget: our breaker must act long before PostgreSQL would.
    for sql in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '256MB'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.expect("max_slot_wal_keep_size");
    }
    let mut opts = create_options(&root, &source, "gapbrk", Replicate::Publication("shop_pub".into()));
    opts.wal_budget_bytes = 4 << 20;
    let first = sandbox::create(&opts, &quiet).await.expect("create");
    let (stop, metrics, task) = supervise(&opts.state_dir);
    let writer = Writer::start(source.admin().await.expect("writer"), 50);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The pressure: an open transaction holds the slot's restart point while the application writes on.
    let holder = source.admin().await.expect("holder");
    holder
        .batch_execute("BEGIN; INSERT INTO events (kind, payload) VALUES ('held', '{}')")
        .await
        .expect("open transaction");
    let mut statuses = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = admin
            .query_opt(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
                &[&first.slot],
            )
            .await
            .expect("slot");
        let Some(row) = row else { break };
        if let Some(status) = row.get::<_, Option<String>>(0) {
            statuses.insert(status);
        }
        assert!(
            Instant::now() < deadline,
            "the breaker did not trip; wal_status seen: {statuses:?}"
        );
        admin
            .batch_execute(
                "INSERT INTO events (kind, payload) SELECT 'bulk', jsonb_build_object('g', g, 'pad', repeat('x', 100)) \
                 FROM generate_series(1, 2000) g",
            )
            .await
            .expect("bulk writes");
    }
    assert!(
        statuses.iter().all(|s| s == "reserved" || s == "extended"),
        "the slot must be dropped while its WAL is still reserved: {statuses:?}"
    );
    until_meta(
        &opts.state_dir,
        &opts.name,
        Duration::from_secs(10),
        "stale by the breaker",
        |m| matches!(m.stale_reason, Some(StaleReason::BreakerTripped { .. })) || m.generation > 1,
    )
    .await;
    // The pressure ends; the agent rebuilds the sandbox by itself.
    holder.batch_execute("COMMIT").await.expect("commit");
    let healed = until_meta(
        &opts.state_dir,
        &opts.name,
        Duration::from_secs(180),
        "generation 2",
        |m| m.generation == 2 && m.phase == SandboxState::Ready,
    )
    .await;
    eprintln!("breaker: resynced {healed:?} after the pressure ended (wal_status seen: {statuses:?})");
    let written = writer.stop().await.expect("writer");
    assert!(written > 20, "{written}");
    stop.cancel();
    task.await.expect("supervisor");
    let text = metrics.render();
    assert_eq!(
        metric(&text, "understudy_sandbox_breaker_trips_total{sandbox=\"gapbrk\"}"),
        Some(1.0),
        "{text}"
    );
    parity_then_nothing_left(&source, &opts.state_dir, &opts.name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_second_network_cut_resumes_where_it_stopped_without_a_resync() {
    let root = TempRoot::new("netcut");
    let source = sample_source(&root, 5_000).await;
    let proxy = Proxy::start(source.cluster.port()).await.expect("proxy");
    let mut opts = create_options(&root, &source, "netcut", Replicate::Publication("shop_pub".into()));
    // The sandbox and the agent reach the source through the proxy only.
    opts.source.set("port", &proxy.port.to_string());
    sandbox::create(&opts, &quiet).await.expect("create");
    let (stop, metrics, task) = supervise(&opts.state_dir);
    let writer = Writer::start(source.admin().await.expect("writer"), 150);
    tokio::time::sleep(Duration::from_secs(2)).await;

    proxy.cut();
    let cut_at = Instant::now();
    let series = "understudy_sandbox_source_outage_seconds{sandbox=\"netcut\"}";
    eventually(Duration::from_secs(15), "the outage in the metrics", || {
        let seen = metric(&metrics.render(), series).unwrap_or(0.0);
        async move { seen > 0.0 }
    })
    .await;
    let during = sandbox::status(&opts.state_dir, &opts.name).await.expect("status");
    assert!(during.source_outage_seconds.is_some_and(|s| s > 0.0), "{during:?}");
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(cut_at.elapsed())).await;
    proxy.restore();
    let restored_at = Instant::now();
    let meta = meta_of(&opts.state_dir, &opts.name);
    wait_caught_up(&source, &meta).await;
    eprintln!(
        "network cut of {:?}: caught up {:?} after the network came back ({} connections refused meanwhile)",
        restored_at - cut_at,
        restored_at.elapsed(),
        proxy.refused()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = writer.stop().await.expect("writer");
    assert!(written > 1000, "writes flowed through the cut: {written}");
    // Let a pass see the source again, so that the outage closes.
    until_meta(
        &opts.state_dir,
        &opts.name,
        Duration::from_secs(10),
        "the outage closed",
        |m| m.source_unreachable_since.is_none() && m.last_outage.is_some(),
    )
    .await;
    stop.cancel();
    task.await.expect("supervisor");
    let after = meta_of(&opts.state_dir, &opts.name);
    assert_eq!(
        (after.generation, after.phase, &after.stale_reason),
        (1, SandboxState::Ready, &None)
    );
    let outage = after.last_outage.expect("outage");
    assert!(outage.seconds >= 15.0, "{outage:?}");
    let text = metrics.render();
    assert_eq!(
        metric(&text, "understudy_sandbox_gaps_total{sandbox=\"netcut\"}"),
        Some(0.0),
        "{text}"
    );
    parity_then_nothing_left(&source, &opts.state_dir, &opts.name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_a_crash_of_the_source_resume_without_a_resync_or_a_duplicate() {
    let root = TempRoot::new("srcrestart");
    let source = sample_source(&root, 5_000).await;
    let opts = create_options(&root, &source, "srcrestart", Replicate::Publication("shop_pub".into()));
    sandbox::create(&opts, &quiet).await.expect("create");
    let (stop, metrics, task) = supervise(&opts.state_dir);
    let mut written = 0;
    for mode in [understudy::pg::StopMode::Fast, understudy::pg::StopMode::Immediate] {
        let writer = Writer::start(source.admin().await.expect("writer"), 150);
        tokio::time::sleep(Duration::from_secs(2)).await;
        written += writer.stop().await.expect("writer");
        source.cluster.stop(mode).await.expect("stop the source");
        tokio::time::sleep(Duration::from_secs(3)).await;
        source.cluster.start().await.expect("start the source");
        let started = Instant::now();
        let meta = meta_of(&opts.state_dir, &opts.name);
        wait_caught_up(&source, &meta).await;
        eprintln!(
            "source restart ({mode:?}): caught up {:?} after it came back",
            started.elapsed()
        );
    }
    let writer = Writer::start(source.admin().await.expect("writer"), 150);
    tokio::time::sleep(Duration::from_secs(2)).await;
    written += writer.stop().await.expect("writer");
    assert!(written > 300, "{written}");
    // Two passes after the last restart: neither finds a gap.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    task.await.expect("supervisor");
    let after = meta_of(&opts.state_dir, &opts.name);
    assert_eq!(
        (after.generation, after.phase, &after.stale_reason),
        (1, SandboxState::Ready, &None)
    );
    let text = metrics.render();
    assert_eq!(
        metric(&text, "understudy_sandbox_gaps_total{sandbox=\"srcrestart\"}"),
        Some(0.0),
        "{text}"
    );
    // `events` has no primary key: a transaction applied twice would show in its checksum.
    parity_then_nothing_left(&source, &opts.state_dir, &opts.name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_is_refused_across_a_gap_the_follower_has_not_seen_yet() {
    let root = TempRoot::new("gapfork");
    let source = sample_source(&root, 2_000).await;
    let opts = create_options(&root, &source, "gapfork", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("create");
    let writer = Writer::start(source.admin().await.expect("writer"), 150);
    // No agent runs: one follower pass records the mark once the slot has decoded something.
    eventually(Duration::from_secs(20), "a mark with decoded bytes", || {
        let opts = &opts;
        async move {
            sandbox::follow::follow_once(&opts.state_dir, &opts.name)
                .await
                .expect("follow");
            meta_of(&opts.state_dir, &opts.name)
                .source_mark
                .is_some_and(|m| m.slot_decoded_bytes > 0)
        }
    })
    .await;
    let admin = source.admin().await.expect("admin");
    drop_slot_as_dba(&admin, &meta.slot).await;
    admin
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&meta.slot],
        )
        .await
        .expect("recreate the slot");
    let fork = understudy::fork::create(
        &opts.state_dir,
        &understudy::fork::ForkOptions {
            sandbox: opts.name.clone(),
            name: None,
            strategy: None,
            ttl: Duration::from_secs(600),
            owner_pid: None,
        },
        &quiet,
    )
    .await;
    let err = fork.expect_err("a fork across a gap must be refused").to_string();
    assert!(err.contains("is not the one this sandbox was built from"), "{err}");
    assert!(understudy::fork::list(&opts.state_dir).is_empty(), "no fork is left");
    assert_eq!(capture_slots(&meta).await, 0, "no capture slot is left");
    // The next pass marks it stale.
    let report = sandbox::follow::follow_once(&opts.state_dir, &opts.name)
        .await
        .expect("follow");
    assert!(report.gap, "{report:?}");
    writer.stop().await.expect("writer");
    sandbox::delete(&opts.state_dir, &opts.name, None, false)
        .await
        .expect("delete");
    wait_nothing_left(&source, REPLICATOR).await;
}

//! The replay's apply path against real servers: transactions pipelined per worker with prepared statements and
//! dispatched in parallel keep commit order on hot rows (the fork equals the sandbox by checksums), a failing
//! statement in the middle of a transaction is attributed to its table, kind and SQLSTATE and nothing of its
//! transaction is applied, and statements prepared before the fork's schema changed are prepared anew.

use std::time::{Duration, Instant};

use fixtures::harness::*;
use understudy::fork::{self, ForkMeta, ForkOptions};
use understudy::pg::connect::connect_plain;
use understudy::replay::live::{LiveConfig, LiveReplay, WriteKind};
use understudy::sandbox::{self, SandboxMeta};
use understudy::source::{Replicate, SandboxName};
use understudy::verify::checksum::checksums;

fn config(meta: &SandboxMeta, fork: &ForkMeta, workers: usize) -> LiveConfig {
    LiveConfig {
        sandbox_conninfo: sandbox_conninfo(meta),
        capture_slot: fork.capture_slot.clone(),
        publication: fork::CAPTURE_PUBLICATION.into(),
        fork_conninfo: fork.conninfo(meta),
        workers,
        poll_interval: Duration::from_millis(20),
    }
}

async fn wait_records(replay: &LiveReplay, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while replay.records().len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} replayed, {} read and not applied, read up to {:?}",
            replay.records().len(),
            replay.backlog(),
            replay.last_read.lock().map(|l| *l).ok()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_parallel_replay_keeps_row_order_and_attributes_failures() {
    let root = TempRoot::new("replayapply");
    let state = root.state();
    let source = sample_source(&root, 2_000).await;
    let opts = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("sandbox");
    let fork = fork::create(
        &state,
        &ForkOptions {
            sandbox: meta.name.clone(),
            name: Some(SandboxName::parse("shop-replay").expect("name")),
            strategy: None,
            ttl: Duration::from_secs(3600),
            owner_pid: None,
        },
        &quiet,
    )
    .await
    .expect("fork");

    // Hot rows: three sessions update seven orders and twenty customers with arithmetic that does not commute,
    // with inserts, deletes and (now and then) a keyless table in between. Any reordering of two transactions on
    // one row changes the sums.
    let mut sessions = Vec::new();
    for s in 0..3i64 {
        let client = source.admin().await.expect("session");
        sessions.push(tokio::spawn(async move {
            for i in 0..150i64 {
                let event = if i % 10 == 0 {
                    format!("INSERT INTO events (kind, payload) VALUES ('k{s}', '{{\"i\": {i}}}');")
                } else {
                    String::new()
                };
                let sql = format!(
                    "BEGIN;
                     UPDATE orders SET total_cents = (total_cents * 3 + {s}) % 1000000007, note = 'n{s}-{i}' WHERE id = {};
                     INSERT INTO orders (customer_id, total_cents) VALUES ({s} + 1, {i});
                     DELETE FROM orders WHERE id = (SELECT min(id) FROM orders WHERE id > 100);
                     {event}
                     UPDATE customers SET name = left(name, 40) || '{s}' WHERE id = {};
                     COMMIT;",
                    1 + (i * 5 + s) % 7,
                    1 + (s * 7 + i) % 20
                );
                client.batch_execute(&sql).await.expect("a hot transaction");
            }
        }));
    }
    let mut replay = LiveReplay::start(&config(&meta, &fork, 4)).await.expect("replay");
    for s in sessions {
        s.await.expect("session");
    }
    wait_caught_up(&source, &meta).await;
    let stopped = replay.stop(Duration::from_secs(120)).await.expect("stop");
    assert_eq!(stopped.unapplied, 0);
    assert_eq!(stopped.records.len(), 450, "every transaction replayed");
    let failures: Vec<_> = stopped.records.iter().filter_map(|r| r.failure.as_ref()).collect();
    assert!(failures.is_empty(), "{failures:?}");
    let workers: std::collections::BTreeSet<i32> = stopped.records.iter().map(|r| r.worker_pid).collect();
    assert!(
        workers.len() > 1,
        "the stream was applied by several workers: {workers:?}"
    );
    let sandbox_db = connect_plain(&sandbox_conninfo(&meta), "test").await.expect("sandbox");
    let fork_db = connect_plain(&fork.conninfo(&meta), "test").await.expect("fork");
    let tables = sample_tables();
    assert_eq!(
        checksums(&fork_db, &tables).await.expect("fork sums"),
        checksums(&sandbox_db, &tables).await.expect("sandbox sums"),
        "the fork equals the sandbox"
    );

    // The fork's schema changes under prepared statements: orders.note becomes an integer.
    replay = LiveReplay::start(&config(&meta, &fork, 2)).await.expect("replay");
    let admin = source.admin().await.expect("admin");
    admin
        .batch_execute("UPDATE orders SET note = 'before' WHERE id = 5")
        .await
        .expect("a write");
    wait_records(&replay, 1).await;
    fork_db
        .batch_execute("UPDATE orders SET note = NULL; ALTER TABLE orders ALTER COLUMN note TYPE int USING NULL")
        .await
        .expect("the fork's migration");
    // A value the new type accepts goes through (a statement prepared for text is prepared anew) ...
    admin
        .batch_execute("UPDATE orders SET note = '42' WHERE id = 5")
        .await
        .expect("a write");
    // ... one it refuses fails in the middle of its transaction, which leaves nothing on the fork.
    admin
        .batch_execute(
            "BEGIN;
             INSERT INTO customers (email, name) VALUES ('first@example.com', 'kept out');
             INSERT INTO orders (customer_id, total_cents, note) VALUES (1, 1, 'not a number');
             UPDATE customers SET name = 'never' WHERE id = 3;
             COMMIT;",
        )
        .await
        .expect("a write");
    wait_caught_up(&source, &meta).await;
    let stopped = replay.stop(Duration::from_secs(60)).await.expect("stop");
    // Records come in the order transactions finished (independent ones run at once): put them in commit order.
    let mut records = stopped.records;
    records.sort_by_key(|r| r.end_lsn);
    assert_eq!(records.len(), 3);
    assert!(records[..2].iter().all(|r| r.failure.is_none()), "{records:?}");
    let failure = records[2].failure.as_ref().expect("the bad value fails");
    assert_eq!(
        (failure.table.as_str(), failure.kind, failure.sqlstate.as_str()),
        ("public.orders", WriteKind::Insert, "22P02"),
        "{failure:?}"
    );
    assert!(failure.message.contains("integer"), "{failure:?}");
    assert!(failure.sample.contains("'not a number'"), "{failure:?}");
    let note: Option<i32> = fork_db
        .query_one("SELECT note FROM orders WHERE id = 5", &[])
        .await
        .expect("note")
        .get(0);
    assert_eq!(note, Some(42));
    let kept_out: i64 = fork_db
        .query_one(
            "SELECT count(*) FROM customers WHERE name IN ('kept out', 'never')",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(kept_out, 0, "the failed transaction applied nothing");
    fork::delete(&state, &fork.name).await.expect("delete the fork");
    sandbox::delete(&state, &meta.name, None, false).await.expect("delete");
}

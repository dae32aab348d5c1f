//! The sandbox follows the source's schema changes while writes continue: a new column the application writes at
//! once, a new table added to the publication, a new index; a change it will not apply by itself is shown as
//! drift and the sandbox reports degraded.

use std::sync::atomic::Ordering;
use std::time::Duration;

use fixtures::harness::*;
use fixtures::writer::Writer;
use understudy::pg::QualifiedName;
use understudy::sandbox::{self, SandboxState, follow};
use understudy::source::Replicate;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn additive_ddl_under_writes_is_followed_with_no_lost_rows() {
    let root = TempRoot::new("ddl");
    let source = sample_source(&root, 20_000).await;
    let opts = create_options(&root, &source, "ddl", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("create");
    let admin = source.admin().await.expect("admin");
    let writer = Writer::start(source.admin().await.expect("writer"), 300);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The application's migration: a column it writes immediately, then a new table it writes, in the
    // publication, with an index.
    admin
        .batch_execute("ALTER TABLE orders ADD COLUMN coupon text DEFAULT 'none'")
        .await
        .expect("add column");
    writer.state.write_coupon.store(true, Ordering::Relaxed);
    admin
        .batch_execute(
            "CREATE TABLE refunds (id bigserial PRIMARY KEY, order_id bigint NOT NULL, cents int NOT NULL); \
             INSERT INTO refunds (order_id, cents) SELECT g, g % 100 FROM generate_series(1, 500) g; \
             GRANT SELECT ON refunds TO understudy_replicator; \
             GRANT SELECT ON SEQUENCE refunds_id_seq TO understudy_replicator; \
             ALTER PUBLICATION shop_pub ADD TABLE refunds; \
             CREATE INDEX orders_coupon_idx ON orders (coupon);",
        )
        .await
        .expect("new table");
    // Rows written into the new table after it joined the publication.
    admin
        .batch_execute("INSERT INTO refunds (order_id, cents) SELECT g, 1 FROM generate_series(501, 600) g")
        .await
        .expect("more refunds");

    let mut applied = Vec::new();
    for _ in 0..10 {
        let report = follow::follow_once(&opts.state_dir, &opts.name).await.expect("follow");
        applied.extend(report.applied);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let written = writer.stop().await.expect("writer");
    assert!(written > 200, "writes must flow during the test: {written}");
    for expected in [
        "new column public.orders.coupon text",
        "new table public.refunds in the publication",
        "new index orders_coupon_idx on public.orders",
    ] {
        assert!(applied.iter().any(|a| a == expected), "{expected:?} not in {applied:?}");
    }
    let sandbox_db = sandbox::cluster_of(&meta)
        .expect("cluster")
        .connect("shop")
        .await
        .expect("sandbox");
    eventually(Duration::from_secs(60), "the new table's initial copy", || async {
        let st = sandbox::status(&opts.state_dir, &opts.name).await.expect("status");
        st.tables.len() == 4
            && st
                .tables
                .iter()
                .all(|t| t.state == understudy::sandbox::TableSyncState::Ready)
    })
    .await;
    wait_caught_up(&source, &meta).await;
    let mut tables = sample_tables();
    tables.push(QualifiedName::new("public", "refunds"));
    assert_parity(&source, &meta, &tables).await;
    let coupons: i64 = sandbox_db
        .query_one("SELECT count(*) FROM orders WHERE coupon LIKE 'C%'", &[])
        .await
        .expect("coupons")
        .get(0);
    assert!(coupons > 0, "rows written with the new column must have arrived");

    let st = sandbox::status(&opts.state_dir, &opts.name).await.expect("status");
    assert_eq!(st.state, SandboxState::Ready, "{:?}", st.reasons);
    assert!(st.drift.is_empty(), "{:?}", st.drift);
    sandbox::delete(&opts.state_dir, &opts.name, None, false)
        .await
        .expect("delete");
    assert_eq!(
        our_objects(&source).await,
        (vec![], vec![]),
        "tablesync slots must be gone too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_column_is_drift_not_a_silent_change() {
    let root = TempRoot::new("drift");
    let source = sample_source(&root, 1_000).await;
    let opts = create_options(&root, &source, "drift", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("create");
    let admin = source.admin().await.expect("admin");
    admin
        .batch_execute("ALTER TABLE orders DROP COLUMN note")
        .await
        .expect("drop column");
    admin
        .batch_execute("INSERT INTO orders (customer_id, total_cents) VALUES (1, 5)")
        .await
        .expect("insert");

    // status sees the drift before the follower has run.
    let st = sandbox::status(&opts.state_dir, &opts.name).await.expect("status");
    assert!(
        st.drift.iter().any(|d| d.contains("public.orders.note was dropped")),
        "{:?}",
        st.drift
    );

    let report = follow::follow_once(&opts.state_dir, &opts.name).await.expect("follow");
    assert!(report.applied.is_empty(), "{:?}", report.applied);
    assert_eq!(report.pending.len(), 1, "{:?}", report.pending);
    assert_eq!(report.new_drift, 1, "a drift event when the change appears");
    let again = follow::follow_once(&opts.state_dir, &opts.name).await.expect("follow");
    assert_eq!(
        (again.pending.len(), again.new_drift),
        (1, 0),
        "and not again while it stays"
    );
    assert!(
        report.pending[0].contains("ALTER TABLE \"public\".\"orders\" DROP COLUMN \"note\""),
        "{:?}",
        report.pending
    );
    let st = sandbox::status(&opts.state_dir, &opts.name).await.expect("status");
    assert_eq!(st.state, SandboxState::Degraded);
    assert!(
        st.reasons.iter().any(|r| r.contains("schema change")),
        "{:?}",
        st.reasons
    );
    // Replication itself continues: the sandbox keeps the column, the new row arrives with NULL there.
    wait_caught_up(&source, &meta).await;
    let sandbox_db = sandbox::cluster_of(&meta)
        .expect("cluster")
        .connect("shop")
        .await
        .expect("sandbox");
    let n: i64 = sandbox_db
        .query_one(
            "SELECT count(*) FROM orders WHERE total_cents = 5 AND customer_id = 1 AND note IS NULL",
            &[],
        )
        .await
        .expect("row")
        .get(0);
    assert!(n >= 1);
    sandbox::delete(&opts.state_dir, &opts.name, None, false)
        .await
        .expect("delete");
}

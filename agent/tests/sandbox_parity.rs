//! A sandbox created while the source is being written equals the source, table by table, after the initial
//! copy and after a period of concurrent writes; status reports it ready; delete leaves nothing on the source.

use std::time::Duration;

use fixtures::harness::*;
use fixtures::writer::Writer;
use understudy::pg::QualifiedName;
use understudy::sandbox::{self, SandboxState};
use understudy::source::Replicate;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_under_writes_then_streaming_keeps_parity() {
    let root = TempRoot::new("parity");
    let source = sample_source(&root, 60_000).await;
    // Writes flow during the whole initial copy and afterwards.
    let writer = Writer::start(source.admin().await.expect("writer connection"), 0);
    let opts = create_options(&root, &source, "parity", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("create sandbox");
    let copy = meta.initial_copy.clone().expect("copy figures");
    assert_eq!(copy.tables, 3);
    assert!(copy.rows >= 60_000 + 6_000 + 6_000, "copied {} rows", copy.rows);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let written = writer.stop().await.expect("writer");
    assert!(
        written > 100,
        "the writer must have written during the test, wrote {written}"
    );
    wait_caught_up(&source, &meta).await;
    assert_parity(&source, &meta, &sample_tables()).await;

    let st = sandbox::status(&opts.state_dir, &opts.name).await.expect("status");
    assert_eq!(st.state, SandboxState::Ready, "reasons: {:?}", st.reasons);
    assert!(st.apply_worker_running);
    assert_eq!(st.tables.len(), 3);
    assert!(
        st.tables
            .iter()
            .all(|t| t.state == understudy::sandbox::TableSyncState::Ready),
        "{:?}",
        st.tables
    );
    assert_eq!(st.wal_status, Some(understudy::source::objects::WalStatus::Reserved));
    assert!(st.retained_wal_bytes.is_some());
    assert!(st.drift.is_empty(), "{:?}", st.drift);
    let json = serde_json::to_value(&st).expect("json");
    assert_eq!(json["state"], "ready");

    // The sandbox's sequences follow the source's.
    let admin = source.admin().await.expect("admin");
    let sandbox_db = sandbox::cluster_of(&meta)
        .expect("cluster")
        .connect("shop")
        .await
        .expect("sandbox");
    understudy::sandbox::follow::follow_once(&opts.state_dir, &opts.name)
        .await
        .expect("follow");
    let src_seq: i64 = admin
        .query_one("SELECT last_value FROM orders_id_seq", &[])
        .await
        .expect("seq")
        .get(0);
    let dst_seq: i64 = sandbox_db
        .query_one("SELECT last_value FROM orders_id_seq", &[])
        .await
        .expect("seq")
        .get(0);
    assert_eq!(src_seq, dst_seq);

    let (slots, pubs) = our_objects(&source).await;
    assert_eq!(slots, vec!["understudy_parity".to_string()]);
    assert!(pubs.is_empty(), "an existing publication was used: {pubs:?}");
    sandbox::delete(&opts.state_dir, &opts.name, None, false)
        .await
        .expect("delete");
    assert_eq!(our_objects(&source).await, (vec![], vec![]));
    assert!(!opts.state_dir.sandbox_dir(&opts.name).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_mode_creates_and_removes_its_own_publication() {
    let root = TempRoot::new("tables");
    let source = sample_source(&root, 400_000).await;
    // A role that owns the tables may create the publication itself.
    let admin = source.admin().await.expect("admin");
    admin
        .batch_execute(
            "CREATE ROLE owner_role LOGIN REPLICATION PASSWORD 'owner-pw'; \
             GRANT CREATE ON DATABASE shop TO owner_role; \
             ALTER TABLE customers OWNER TO owner_role; ALTER TABLE orders OWNER TO owner_role;",
        )
        .await
        .expect("owner role");
    let mut opts = create_options(
        &root,
        &source,
        "tables",
        Replicate::Tables(vec![
            QualifiedName::parse("public.orders"),
            QualifiedName::parse("customers"),
        ]),
    );
    opts.source = source.conninfo_as("owner_role", "owner-pw");
    let writer = Writer::start(source.admin().await.expect("writer"), 0);
    let meta = sandbox::create(&opts, &quiet).await.expect("create");
    writer.stop().await.expect("writer");
    assert!(meta.publication_owned);
    assert_eq!(meta.publication, "understudy_tables");
    let copy = meta.initial_copy.clone().expect("copy");
    assert_eq!(copy.tables, 2);
    assert_eq!(copy.chunks, 2, "one chunk per table, each loaded without WAL");
    let (_, pubs) = our_objects(&source).await;
    assert_eq!(pubs, vec!["understudy_tables".to_string()]);
    wait_caught_up(&source, &meta).await;
    assert_parity(
        &source,
        &meta,
        &[QualifiedName::parse("orders"), QualifiedName::parse("customers")],
    )
    .await;
    sandbox::delete(&opts.state_dir, &opts.name, None, false)
        .await
        .expect("delete");
    assert_eq!(our_objects(&source).await, (vec![], vec![]));
}

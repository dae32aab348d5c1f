//! A recording taken while an application writes: a fork at the window's start, the window's transactions in a
//! checksummed stream file that reads back whole (commit times, relations), the capture slot dropped at the end.
//! A corrupt stream and an expired recording are refused; the sweep removes expired recordings with their forks.

use std::time::Duration;

use fixtures::harness::*;
use fixtures::writer::Writer;
use understudy::fork;
use understudy::recording::{self, RecordOptions, RecordingError, RecordingPhase, StreamError};
use understudy::sandbox;
use understudy::source::{Replicate, SandboxName};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_keeps_the_window_and_refuses_corruption_and_expiry() {
    let root = TempRoot::new("recording");
    let state = root.state();
    let source = sample_source(&root, 2_000).await;
    let opts = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("sandbox");
    let writer = Writer::start(source.admin().await.expect("writer"), 100);
    let name = SandboxName::parse("peak").expect("name");
    let rec = recording::take(
        &state,
        &RecordOptions {
            sandbox: meta.name.clone(),
            name: Some(name.clone()),
            window: Duration::from_secs(3),
            ttl: Duration::from_secs(3600),
        },
        &quiet,
    )
    .await
    .expect("record");
    writer.stop().await.expect("writer");
    assert_eq!(rec.phase, RecordingPhase::Ready);
    assert!(rec.transactions > 50, "{rec:?}");
    assert!(rec.changes >= rec.transactions, "{rec:?}");
    assert!(rec.tables.contains("public.orders"), "{:?}", rec.tables);
    assert!(rec.bytes > 0 && rec.bytes < rec.raw_bytes, "compressed: {rec:?}");
    assert!(rec.end_lsn > rec.start_lsn);
    assert!(rec.span() > Duration::from_secs(2), "{:?}", rec.span());
    assert_eq!(recording::list(&state), vec![rec.clone()]);
    assert!(
        fork::list(&state).iter().any(|f| f.name == rec.fork),
        "the start point is kept"
    );
    assert_eq!(capture_slots(&meta).await, 0, "the capture slot is dropped at the end");

    // The stream reads back whole: every transaction, in commit order, with its relations.
    let (_, mut reader) = recording::open(&state, &name).expect("open");
    let mut transactions = 0;
    let mut last = None;
    while let Some(tx) = reader.next_transaction().expect("read") {
        transactions += 1;
        assert!(tx.commit_time >= rec.first_commit.unwrap_or_default());
        assert!(tx.commit_time <= rec.last_commit.unwrap_or_default());
        assert!(last.is_none_or(|l| l < tx.end_lsn), "in commit order");
        last = Some(tx.end_lsn);
    }
    assert_eq!(transactions, rec.transactions);
    assert_eq!(last, Some(rec.end_lsn));
    assert!(reader.relations().values().any(|r| r.name == "orders"));

    // One flipped byte is caught before anything is read.
    let path = recording::stream_path(&state, &rec);
    let mut bytes = std::fs::read(&path).expect("stream");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, &bytes).expect("corrupt it");
    let err = recording::open(&state, &name).err().expect("corrupt");
    assert!(
        matches!(err, RecordingError::Stream(StreamError::Checksum { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("does not match its checksum"), "{err}");

    // Expired: refused, then swept with its fork.
    let dir = state.root().join("recordings").join("peak");
    let mut expired = rec.clone();
    expired.expires_at = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    std::fs::write(
        dir.join("recording.json"),
        serde_json::to_string(&expired).expect("json"),
    )
    .expect("expire it");
    let err = recording::open(&state, &name).err().expect("expired");
    assert!(matches!(err, RecordingError::Expired { .. }), "{err}");
    assert_eq!(recording::sweep(&state).await.expect("sweep"), vec!["peak".to_string()]);
    assert!(recording::list(&state).is_empty());
    assert!(!dir.exists());
    assert!(
        fork::list(&state).iter().all(|f| f.name != rec.fork),
        "its fork is gone"
    );
    sandbox::delete(&state, &meta.name, None, false).await.expect("delete");
}

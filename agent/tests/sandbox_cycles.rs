//! Create and delete, over and over, while the source is written: each cycle's sandbox is current before it is
//! deleted, and after every cycle the source holds nothing of Understudy's: no slot, no walsender or session of
//! the replication role, nothing `sweep --source` would find. `UNDERSTUDY_CYCLES` sets the number (50).

use std::time::{Duration, Instant};

use fixtures::harness::*;
use fixtures::source::REPLICATOR;
use fixtures::writer::Writer;
use understudy::sandbox::{self, SandboxState};
use understudy::source::Replicate;
use understudy::source::sweep::{self, Owned};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_delete_cycles_leave_nothing_on_the_source() {
    let cycles: usize = std::env::var("UNDERSTUDY_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    let root = TempRoot::new("cycles");
    let source = sample_source(&root, 500).await;
    let admin = source.admin().await.expect("admin");
    let writer = Writer::start(source.admin().await.expect("writer"), 50);
    let started = Instant::now();
    for i in 0..cycles {
        let opts = create_options(
            &root,
            &source,
            &format!("cycle-{}", i % 3),
            Replicate::Publication("shop_pub".into()),
        );
        let meta = sandbox::create(&opts, &quiet)
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: create: {e}"));
        // Ready once its apply worker runs (it starts within moments of the subscription).
        eventually(
            Duration::from_secs(20),
            &format!("cycle {i}: the sandbox ready"),
            || {
                let opts = &opts;
                async move {
                    sandbox::status(&opts.state_dir, &opts.name)
                        .await
                        .is_ok_and(|st| st.state == SandboxState::Ready)
                }
            },
        )
        .await;
        wait_caught_up(&source, &meta).await;
        sandbox::delete(&opts.state_dir, &opts.name, None, false)
            .await
            .unwrap_or_else(|e| panic!("cycle {i}: delete: {e}"));
        wait_nothing_left(&source, REPLICATOR).await;
        let found = sweep::find(&admin, &Owned::default()).await.expect("sweep");
        assert!(found.is_empty(), "cycle {i}: sweep --source finds {found:?}");
    }
    let written = writer.stop().await.expect("writer");
    assert!(written > 0, "writes flowed through the cycles");
    assert!(root.state().sandbox_names().is_empty(), "no sandbox left locally");
    eprintln!(
        "{cycles} create/delete cycles in {:.1} s ({:.2} s each), {written} writes meanwhile",
        started.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64() / cycles as f64
    );
}

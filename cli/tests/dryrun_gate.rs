//! Dry-runs only on a current sandbox: one whose apply worker is stopped is refused (exit 2) with the cause and
//! the fix, nothing forked; on a current one the report records the sandbox's lag at the fork point.

mod common;

use common::*;
use fixtures::harness::*;
use understudy::fork;
use understudy::pg::quote_ident;
use understudy::sandbox;
use understudy::source::Replicate;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_whose_apply_worker_is_stopped_is_refused_and_a_current_one_reports_its_lag() {
    let root = TempRoot::new("gate");
    let source = sample_source(&root, 2_000).await;
    let opts = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("sandbox");
    let state = root.state();
    let db = sandbox::cluster_of(&meta)
        .expect("cluster")
        .connect(&meta.database)
        .await
        .expect("sandbox");
    // No agent runs here, so nothing turns the worker back on.
    db.batch_execute(&format!(
        "ALTER SUBSCRIPTION {} DISABLE",
        quote_ident(&meta.subscription)
    ))
    .await
    .expect("disable");
    eventually(std::time::Duration::from_secs(30), "the apply worker to stop", || {
        let db = &db;
        let sub = meta.subscription.clone();
        async move {
            db.query_one(
                "SELECT count(*) FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL",
                &[&sub],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 0)
            .unwrap_or(false)
        }
    })
    .await;
    let file = root.path().join("flag.sql");
    std::fs::write(&file, "ALTER TABLE orders ADD COLUMN flag boolean;\n").expect("write");
    let run = |extra: &[&str]| {
        cli(&state)
            .args([
                "dry-run",
                "--sandbox",
                "shop",
                "--warmup",
                "1s",
                "--after",
                "1s",
                "--no-verify",
            ])
            .args(extra)
            .arg("--up")
            .arg(&file)
            .output()
            .expect("dry-run")
    };
    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not current enough")
            && stderr.contains("apply worker is not running")
            && stderr.contains("fix:"),
        "{stderr}"
    );
    assert!(fork::list(&state).is_empty(), "nothing is forked");

    db.batch_execute(&format!(
        "ALTER SUBSCRIPTION {} ENABLE",
        quote_ident(&meta.subscription)
    ))
    .await
    .expect("enable");
    wait_caught_up(&source, &meta).await;
    // A session of someone else on the sandbox's database stays open: forks end it if they must.
    let out = run(&["--format", "json"]);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let lag = report["fork"]["sandbox_lag_seconds"]
        .as_f64()
        .expect("the lag at the fork point");
    assert!((0.0..=30.0).contains(&lag), "{lag}");
    assert!(report["fork"]["sandbox_lag_bytes"].is_number(), "{}", report["fork"]);
    drop(db);
    sandbox::delete(&state, &opts.name, None, false).await.expect("delete");
}

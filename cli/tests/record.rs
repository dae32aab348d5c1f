//! `understudy record` and `understudy recording list|show|delete` on a sandbox an application writes to; bad
//! input (an unknown sandbox, a window that is not a duration, an unknown recording) exits 2 with a message
//! naming what to fix and creates nothing.

mod common;

use fixtures::harness::*;
use fixtures::writer::Writer;
use understudy::sandbox;
use understudy::source::Replicate;

fn run(state: &understudy::sandbox::StateDir, args: &[&str]) -> (Option<i32>, String, String) {
    let out = common::cli(state).args(args).output().expect("run understudy");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_list_show_delete_and_refusals() {
    let root = TempRoot::new("record");
    let state = root.state();
    let source = sample_source(&root, 1_000).await;
    let opts = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("sandbox");
    let recordings = state.root().join("recordings");

    let (code, _, err) = run(&state, &["record", "--sandbox", "nope", "--for", "2s"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nope"), "the message names the sandbox: {err}");
    let (code, _, err) = run(&state, &["record", "--sandbox", "shop", "--for", "soon"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--for"), "the message names the flag: {err}");
    let (code, _, err) = run(&state, &["record", "--sandbox", "shop", "--for", "2s", "--at", "25:00"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("schedule.at"), "the message names the schedule: {err}");
    let (code, _, err) = run(&state, &["recording", "show", "ghost"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no recording named ghost"), "{err}");
    assert_eq!(
        std::fs::read_dir(&recordings).map(|d| d.count()).unwrap_or(0),
        0,
        "nothing was created"
    );
    assert!(understudy::fork::list(&state).is_empty(), "no fork was made");

    let writer = Writer::start(source.admin().await.expect("writer"), 100);
    let (code, out, err) = run(
        &state,
        &[
            "record",
            "--sandbox",
            "shop",
            "--for",
            "2s",
            "--name",
            "peak",
            "--format",
            "json",
        ],
    );
    writer.stop().await.expect("writer");
    assert_eq!(code, Some(0), "{err}");
    let rec: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(rec["phase"], "ready");
    assert!(rec["transactions"].as_u64().unwrap_or(0) > 20, "{rec}");

    let (code, out, _) = run(&state, &["recording", "list"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("peak") && out.contains("shop") && out.contains("ready"),
        "{out}"
    );
    let (code, out, _) = run(&state, &["recording", "show", "peak"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("tables: ") && out.contains("public.orders"), "{out}");
    assert!(out.contains(&format!("transactions: {}", rec["transactions"])), "{out}");

    let (code, out, err) = run(&state, &["recording", "delete", "peak"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("deleted"), "{out}");
    let (_, out, _) = run(&state, &["recording", "list"]);
    assert!(out.contains("no recordings"), "{out}");
    assert!(understudy::fork::list(&state).is_empty(), "its start point is gone");
    assert_eq!(capture_slots(&meta).await, 0);
    sandbox::delete(&state, &meta.name, None, false).await.expect("delete");
}

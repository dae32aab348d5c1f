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

/// `understudy sweep` lists the recordings nobody owns (expired, a recorder killed mid-window, a staging or
/// metadata-less directory) beside the forks they leave, keeps a recording that is kept, and `--apply` removes
/// them with their start points and capture slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_lists_and_removes_the_recordings_nobody_owns() {
    let root = TempRoot::new("record-sweep");
    let state = root.state();
    let source = sample_source(&root, 500).await;
    let opts = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("sandbox");
    let recordings = state.root().join("recordings");
    for name in ["old", "kept"] {
        let (code, _, err) = run(&state, &["record", "--sandbox", "shop", "--for", "1s", "--name", name]);
        assert_eq!(code, Some(0), "{err}");
    }
    let old = recordings.join("old/recording.json");
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&old).expect("read")).expect("json");
    record["expires_at"] = serde_json::json!("2020-01-01T00:00:00Z");
    std::fs::write(&old, record.to_string()).expect("write");
    std::fs::create_dir_all(recordings.join(".staging-ghost.999999999")).expect("staging");
    std::fs::create_dir_all(recordings.join("junk")).expect("junk");

    // A recorder killed mid-window: its recording and its start point (owned by the dead recorder).
    let mut child = common::cli(&state)
        .args(["record", "--sandbox", "shop", "--for", "60s", "--name", "cut"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("record");
    eventually(std::time::Duration::from_secs(60), "the recording started", || {
        let started = recordings.join("cut/recording.json").exists();
        async move { started }
    })
    .await;
    child.kill().expect("kill -9");
    child.wait().expect("reap");
    let cut: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(recordings.join("cut/recording.json")).expect("read"))
            .expect("json");
    let cut_fork = cut["fork"].as_str().expect("fork").to_string();
    let kept_fork = understudy::recording::list(&state)
        .into_iter()
        .find(|r| r.name.as_str() == "kept")
        .expect("kept")
        .fork
        .to_string();

    let (code, out, err) = run(&state, &["sweep"]);
    assert_eq!(code, Some(0), "{err}");
    for listed in [
        "would remove recording old (sandbox shop): it expired",
        "would remove recording cut (sandbox shop): its recorder",
        "would remove recording .staging-ghost.999999999",
        "would remove recording junk: no readable recording metadata",
    ] {
        assert!(out.contains(listed), "{listed:?} in:\n{out}");
    }
    assert!(
        out.contains(&format!("fork {cut_fork}")),
        "the killed recorder's fork is listed:\n{out}"
    );
    assert!(!out.contains("recording kept") && !out.contains(&kept_fork), "{out}");
    assert_eq!(
        understudy::recording::list(&state).len(),
        3,
        "a dry run removes nothing"
    );

    let (code, out, err) = run(&state, &["sweep", "--apply"]);
    assert_eq!(code, Some(0), "{err}\n{out}");
    let left: Vec<String> = understudy::recording::list(&state)
        .into_iter()
        .map(|r| r.name.to_string())
        .collect();
    assert_eq!(left, ["kept"]);
    let mut dirs: Vec<String> = std::fs::read_dir(&recordings)
        .expect("recordings")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs, ["kept"]);
    let forks: Vec<String> = understudy::fork::list(&state)
        .into_iter()
        .map(|f| f.name.to_string())
        .collect();
    assert_eq!(forks, [kept_fork], "only the kept recording's start point is left");
    assert_eq!(capture_slots(&meta).await, 0, "no capture slot is left");
    let (_, out, _) = run(&state, &["sweep"]);
    assert!(out.contains("nothing abandoned here"), "{out}");

    let (code, _, err) = run(&state, &["recording", "delete", "kept"]);
    assert_eq!(code, Some(0), "{err}");
    sandbox::delete(&state, &meta.name, None, false).await.expect("delete");
}

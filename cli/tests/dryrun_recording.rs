//! Dry-runs on a recording, with production quiet: the recording's start point is forked and its stream replayed.
//! At `max` the fork ends equal to the sandbox at the recording's end (checksums of every table). A CREATE INDEX
//! held open at a chosen offset blocks about twice the writes per second at 2× as at 1×. Bad input (a recording of
//! another sandbox, a speed of 0, a corrupt or an expired recording) exits 2 with a clear message, and nothing is
//! created.

mod common;

use std::time::Duration;

use fixtures::harness::*;
use fixtures::writer::Writer;
use understudy::dryrun::{DryRunOptions, Recorded};
use understudy::fork;
use understudy::pg::connect::connect_plain;
use understudy::recording::{self, RecordOptions};
use understudy::replay::Speed;
use understudy::report::Verdict;
use understudy::sandbox::{self, StateDir};
use understudy::source::{Replicate, SandboxName};
use understudy::verify::checksum::checksums;

fn options(up: &str, fork_name: &str, recorded: Recorded, verify: bool) -> DryRunOptions {
    DryRunOptions {
        verify,
        single_transaction: true,
        recorded: Some(recorded),
        ..dry_run_options(sql("up.sql", up), fork_name)
    }
}

fn peak(speed: Speed, migrate_at: Duration) -> Recorded {
    Recorded {
        name: SandboxName::parse("peak").expect("name"),
        speed,
        migrate_at,
    }
}

/// The forks in `state` other than the recording's start point.
fn run_forks(state: &StateDir, start: &SandboxName) -> Vec<String> {
    fork::list(state)
        .into_iter()
        .filter(|f| &f.name != start)
        .map(|f| f.name.to_string())
        .collect()
}

fn cli_dry_run(state: &StateDir, dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let up = dir.join("noop.sql");
    std::fs::write(&up, "SELECT 1;\n").expect("write");
    let out = common::cli(state)
        .args(["dry-run", "--up"])
        .arg(&up)
        .args(args)
        .output()
        .expect("run understudy dry-run");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_on_a_recording_replay_it_faithfully_and_faster() {
    let root = TempRoot::new("dryrec");
    let state = root.state();
    let source = sample_source(&root, 5_000).await;
    let opts = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("sandbox");
    let other_opts = create_options(&root, &source, "other", Replicate::Publication("shop_pub".into()));
    let other = sandbox::create(&other_opts, &quiet).await.expect("other sandbox");

    // The window: six seconds of writes inside an eight-second recording, so that the sandbox ends where the
    // recording does.
    let take = {
        let state = state.clone();
        tokio::spawn(async move {
            let opts = RecordOptions {
                sandbox: SandboxName::parse("shop").expect("name"),
                name: Some(SandboxName::parse("peak").expect("name")),
                window: Duration::from_secs(8),
                ttl: Duration::from_secs(3600),
            };
            recording::take(&state, &opts, &quiet).await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writer = Writer::start(source.admin().await.expect("writer"), 150);
    tokio::time::sleep(Duration::from_secs(6)).await;
    writer.stop().await.expect("writer");
    let rec = take.await.expect("join").expect("record");
    wait_caught_up(&source, &meta).await;
    assert!(rec.transactions > 300, "{rec:?}");

    // At max: the fork ends equal to the sandbox, which is at the recording's end; the control twin agrees.
    let mut fidelity = options("SELECT 1;", "rec-max", peak(Speed::Max, Duration::from_secs(1)), true);
    fidelity.keep_fork = true;
    fidelity.down = Some(sql("down.sql", "SELECT 1;"));
    let report = dry_run(&state, &fidelity).await.expect("dry-run at max");
    assert_eq!(report.writes.replayed as u64, rec.transactions, "{:?}", report.writes);
    assert_eq!(report.writes.failed, 0);
    assert_eq!(report.verdict.result, Verdict::Pass, "{:?}", report.verdict.reasons);
    let summary = report.recording.as_ref().expect("the report names the recording");
    assert_eq!((summary.name.as_str(), summary.speed.as_str()), ("peak", "max"));
    let kept = fork::list(&state)
        .into_iter()
        .find(|f| f.name.as_str() == "rec-max")
        .expect("kept fork");
    let fork_db = connect_plain(&kept.conninfo(&meta), "test").await.expect("fork");
    let sandbox_db = connect_plain(&sandbox_conninfo(&meta), "test").await.expect("sandbox");
    assert_eq!(
        checksums(&fork_db, &sample_tables()).await.expect("fork sums"),
        checksums(&sandbox_db, &sample_tables()).await.expect("sandbox sums"),
        "after the replay the fork equals the sandbox at the recording's end"
    );
    drop(fork_db);
    for f in run_forks(&state, &rec.fork) {
        fork::delete(&state, &SandboxName::parse(&f).expect("name"))
            .await
            .expect("delete");
    }

    // A non-concurrent CREATE INDEX held for two seconds, two seconds into the window: at 2× the same two
    // seconds of lock meet twice the recorded writes.
    let index = "CREATE INDEX orders_total_idx ON orders (total_cents);\nSELECT pg_sleep(2);\n";
    let mut per_second = Vec::new();
    for (speed, name) in [(Speed::Times(1.0), "rec-1x"), (Speed::Times(2.0), "rec-2x")] {
        let report = dry_run(
            &state,
            &options(index, name, peak(speed, Duration::from_secs(2)), false),
        )
        .await
        .expect("dry-run");
        let held = report.migration.duration_ms / 1000.0;
        assert!(report.writes.blocked > 20, "{speed}: {:?}", report.writes);
        per_second.push(report.writes.blocked as f64 / held);
        eprintln!(
            "speed {speed}: {} blocked writes in {held:.2} s of lock ({:.0}/s), {} replayed",
            report.writes.blocked,
            per_second[per_second.len() - 1],
            report.writes.replayed
        );
    }
    let ratio = per_second[1] / per_second[0];
    assert!(
        (1.4..=2.8).contains(&ratio),
        "blocked writes per second 2× / 1×: {ratio:.2}"
    );
    assert!(run_forks(&state, &rec.fork).is_empty(), "the runs' forks are removed");

    // Bad input: refused before anything is made.
    let dir = root.path().to_path_buf();
    let refusals: [(&[&str], &str); 3] = [
        (
            &["--sandbox", "other", "--recording", "peak"],
            "peak is a recording of sandbox shop, not of other",
        ),
        (&["--sandbox", "shop", "--recording", "peak", "--speed", "0"], "speed"),
        (&["--sandbox", "shop", "--speed", "2"], "required"),
    ];
    for (args, expected) in refusals {
        let (code, err) = cli_dry_run(&state, &dir, args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    let path = recording::stream_path(&state, &rec);
    let good = std::fs::read(&path).expect("stream");
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x01;
    std::fs::write(&path, &bad).expect("corrupt");
    let (code, err) = cli_dry_run(&state, &dir, &["--sandbox", "shop", "--recording", "peak"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("does not match its checksum"), "{err}");
    std::fs::write(&path, &good).expect("restore");
    let dir_of = state.root().join("recordings").join("peak").join("recording.json");
    let mut expired = rec.clone();
    expired.expires_at = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
    std::fs::write(&dir_of, serde_json::to_string(&expired).expect("json")).expect("expire");
    let (code, err) = cli_dry_run(&state, &dir, &["--sandbox", "shop", "--recording", "peak"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("expired"), "{err}");
    assert!(
        run_forks(&state, &rec.fork).is_empty(),
        "no fork was made by a refused run"
    );

    recording::delete(&state, &rec.name)
        .await
        .expect("delete the recording");
    sandbox::delete(&state, &other.name, None, false).await.expect("delete");
    sandbox::delete(&state, &meta.name, None, false).await.expect("delete");
}

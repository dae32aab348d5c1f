//! `understudy-bench replay` on this machine at a small scale: it records a backlog, drains it into forks of the
//! recording's start point with 1, 2 and 4 workers, follows a live run, prints every table with a figure in each
//! drain row, finds every fork equal to the sandbox, exits 0 and leaves no directory behind. The reference figures
//! are in docs/benchmarks.md; this test asserts no speed.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn replay_drains_a_recording_into_equal_forks_and_exits_zero() {
    let dir = PathBuf::from(format!("/tmp/understudy-bench-replay-test-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_understudy-bench"))
        .args([
            "replay",
            "--scale",
            "1",
            "--seconds",
            "3",
            "--sustain-seconds",
            "2",
            "--lag-seconds",
            "2",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .expect("running understudy-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{stderr}", out.status);
    for section in [
        "## 1. The source's maximum sustained write rate",
        "## 2. Backlog: recording bench-replay-backlog",
        "## 3. Draining the backlog",
        "## 4. Live replay lag",
        "## Summary",
    ] {
        assert!(stdout.contains(section), "no {section:?} in:\n{stdout}");
    }
    let drains = stdout
        .split("## 3. Draining the backlog")
        .nth(1)
        .and_then(|s| s.split("## 4.").next())
        .unwrap_or_default();
    for workers in ["1", "2", "4"] {
        let row = drains
            .lines()
            .find(|l| l.split('|').nth(1).map(str::trim) == Some(workers))
            .unwrap_or_else(|| panic!("no drain row for {workers} worker(s) in:\n{drains}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert!(cells[5].ends_with(" tps") && cells[5] != "0.0 tps", "drain rate: {row}");
        assert_eq!(cells[7], "0 / 0", "nothing failed or unapplied: {row}");
        assert!(cells[8].starts_with("yes ("), "the fork equals the sandbox: {row}");
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("forks equal to the sandbox") && l.contains("4 of 4")),
        "{stdout}"
    );
    assert!(
        stderr.contains("0 Understudy slot(s) were left on the source"),
        "{stderr}"
    );
    assert!(!dir.exists(), "the working directory is removed");
}

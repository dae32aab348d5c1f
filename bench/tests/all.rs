//! `understudy-bench all` on this machine: it runs end to end at a small scale, prints its summary table with a
//! figure in every cell, exits 0 and leaves nothing behind (no mount, no directory). The figures at scale 50 and
//! 200 are in docs/benchmarks.md.

use std::path::PathBuf;
use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_understudy-bench"))
}

#[test]
fn all_prints_its_summary_table_and_exits_zero() {
    let dir = PathBuf::from(format!("/tmp/understudy-bench-test-{}", std::process::id()));
    let mut cmd = bench();
    cmd.args([
        "all",
        "--scale",
        "1",
        "--scale-factor",
        "2",
        "--repeat",
        "1",
        "--window-seconds",
        "1",
        "--dir",
    ])
    .arg(&dir);
    let out = cmd.output().expect("running understudy-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !understudy::pg::os_user::running_as_root() {
        // It loop-mounts btrfs and xfs: without root it must refuse, clearly, before doing anything.
        assert!(!out.status.success());
        assert!(stderr.contains("run it as root"), "{stderr}");
        assert!(!dir.exists());
        return;
    }
    assert!(out.status.success(), "exit {:?}\n{stderr}", out.status);
    let summary = stdout
        .split("## Summary: Understudy against the manual way")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary table in:\n{stdout}"));
    for row in [
        "initial sync: sandbox create / (pg_dump -Fd -j2 + pg_restore -j2)",
        "fork ready, btrfs-snapshot:",
        "fork ready, reflink:",
        "fork ready, template:",
        "fork ready, copy:",
        "replay throughput / source write rate",
        "lock-wait detection resolution",
        "time to a verdict: manual",
    ] {
        let line = summary
            .lines()
            .find(|l| l.contains(row))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{summary}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
        // name, scale 1, scale 2, target: each measured cell starts with a number.
        assert_eq!(cells.len(), 4, "{line}");
        for cell in &cells[1..3] {
            let number: String = cell.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            assert!(number.parse::<f64>().is_ok(), "not a figure: {cell:?} in {line}");
        }
    }
    assert!(stdout.contains("# Data size: scale 1:") && stdout.contains("# Data size: scale 2:"));
    assert!(!dir.exists(), "the working directory must be removed");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    assert!(
        !mounts.contains(&dir.display().to_string()),
        "a loop mount was left behind: {mounts}"
    );
}

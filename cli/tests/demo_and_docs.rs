//! `understudy demo` runs end to end on embedded PostgreSQL; README and CI stay in step.

use fixtures::harness::TempRoot;

#[test]
fn demo_runs_end_to_end_and_cleans_up() {
    let root = TempRoot::new("demo");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--state-dir")
        .arg(root.path())
        .args(["demo", "--rows", "100000", "--seconds", "6", "--reports"])
        .arg(root.path().join("reports"))
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("summary: 3/3 tables equal"), "{stdout}");
    assert!(
        stdout.contains("follower applied to the sandbox: new column public.orders.coupon text"),
        "{stdout}"
    );
    assert!(stdout.contains("0 Understudy slot(s) left on production"), "{stdout}");
    // Each curated migration's verdict and the number that matters, in the summary.
    let summary = stdout
        .split("== Summary")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary: {stdout}"));
    let line = |name: &str| {
        summary
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name} missing: {summary}"))
            .to_string()
    };
    let contention = line("lock-contention");
    assert!(contention.starts_with("  FAIL"), "{contention}");
    let blocked: usize = contention
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .expect("blocked writes");
    assert!(
        blocked > 10,
        "writers queue behind the ALTER waiting on the 4 s reader: {contention}"
    );
    assert!(line("not-null").contains("FAIL  not-null          123 row(s) of public.accounts have \"plan\" NULL"));
    let index = line("blocking-index");
    assert!(index.starts_with("  WARN") || index.starts_with("  FAIL"), "{index}");
    assert!(
        index.contains("writes blocked") && index.contains("ShareLock on public.orders"),
        "{index}"
    );
    assert!(
        line("fk-orphans")
            .contains("FAIL  fk-orphans        37 row(s) of public.accounts reference no row of public.orgs")
    );
    let lower = line("lowercase-emails");
    assert!(
        lower.starts_with("  FAIL") && lower.contains("15 group(s) of duplicate email") && lower.contains("9 row(s)"),
        "{lower}"
    );
    let safe = line("safe");
    assert!(
        safe.starts_with("  PASS") && safe.contains("0 blocked, 0 failed, rollback proven"),
        "{safe}"
    );
    assert!(
        line("lossy-rollback").contains("FAIL  lossy-rollback    500 values of public.accounts.plan_note not restored")
    );
    // The full reports are kept.
    let report = std::fs::read_to_string(root.path().join("reports/02-not-null.json")).expect("report kept");
    let json: serde_json::Value = serde_json::from_str(&report).expect("json");
    assert_eq!(json["verdict"]["result"], "fail");
    assert!(root.path().join("reports/06-safe.md").is_file());
    assert!(
        !root.path().join("demo").exists(),
        "the demo must clean up after itself"
    );
    assert!(
        understudy::pg::cluster::postmasters_under(root.path()).is_empty(),
        "servers left running"
    );
}

#[test]
fn ci_runs_exactly_the_test_command_printed_in_the_readme() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(repo.join("README.md")).expect("README.md");
    let ci = std::fs::read_to_string(repo.join(".ci/run")).expect(".ci/run");
    let block: Vec<&str> = readme
        .split("```sh")
        .nth(1)
        .expect("a sh block")
        .split("```")
        .next()
        .expect("end")
        .lines()
        .collect();
    let commands: Vec<&str> = block
        .iter()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(commands.len(), 2, "README opens with two commands: {commands:?}");
    assert!(
        commands[0].contains("demo"),
        "the first command runs the demo: {}",
        commands[0]
    );
    let test_command = commands[1];
    assert!(
        ci.lines().any(|l| l.trim() == test_command),
        ".ci/run must run the README's test command {test_command:?} exactly"
    );
}

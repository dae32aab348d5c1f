//! `understudy demo` runs end to end on embedded PostgreSQL; README and CI stay in step.

mod support;

use support::TempRoot;

#[test]
fn demo_runs_end_to_end_and_cleans_up() {
    let root = TempRoot::new("demo");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--state-dir")
        .arg(root.path())
        .args(["demo", "--rows", "20000", "--seconds", "6"])
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

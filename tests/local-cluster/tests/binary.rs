//! `understudy-local-cluster up` with a stand-in operator (a shell script): the operator gets `--namespace NS
//! --agent-image understudy:local --listen 127.0.0.1:0` and `KUBECONFIG=DIR/operator.kubeconfig`, which reaches the API as the operator
//! user; its output goes to `DIR/logs/operator.log`; `DIR/kubeconfig` serves people's kubectl; SIGTERM stops
//! everything (the operator's whole process group too). Needs `bash .ci/kube-build` once and a built `understudy`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use common::{group_members, stand_in_pgid, understudy_bin, wait_for_file, write_stand_in};
use fixtures::harness::TempRoot;
use local_cluster::procs;

#[test]
fn up_runs_the_operator_and_stops_on_sigterm() {
    let tmp = TempRoot::new("local-cluster-bin");
    let dir = tmp.path().join("cluster");
    std::fs::create_dir_all(&dir).expect("create the cluster directory");
    let script = write_stand_in(&dir);

    let mut up = Command::new(env!("CARGO_BIN_EXE_understudy-local-cluster"))
        .arg("up")
        .arg("--dir")
        .arg(&dir)
        .args(["--namespace", "lc-test", "--operator-bin"])
        .arg(&script)
        .arg("--understudy-bin")
        .arg(understudy_bin())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start understudy-local-cluster up");
    let checked = checks(&dir);
    if let Err(e) = &checked {
        eprintln!(
            "{e:#}\n--- operator.log ---\n{}",
            std::fs::read_to_string(dir.join("logs/operator.log")).unwrap_or_default()
        );
    }
    let pgid = stand_in_pgid(&dir);

    let began = Instant::now();
    procs::signal(i64::from(up.id()), "TERM");
    let status = up.wait().expect("wait for understudy-local-cluster");
    let mut printed = String::new();
    if let Some(mut stdout) = up.stdout.take() {
        use std::io::Read as _;
        let _ = stdout.read_to_string(&mut printed);
    }
    assert!(printed.contains("local cluster ready"), "it printed: {printed}");
    eprintln!("SIGTERM -> exited ({status}) in {:.1?}", began.elapsed());
    let left = procs::naming(&dir);
    assert!(left.is_empty(), "still running after SIGTERM: {left:?}");
    if let Some(pgid) = pgid {
        let members = group_members(pgid);
        assert!(members.is_empty(), "the stand-in's process group survived: {members:?}");
    }
    let log = std::fs::read_to_string(dir.join("logs/operator.log")).unwrap_or_default();
    checked.expect("understudy-local-cluster up");
    assert!(status.success(), "understudy-local-cluster exited with {status}");
    assert!(
        log.contains("stand-in operator running") && log.contains("SIGTERM"),
        "operator.log: {log}"
    );
}

fn checks(dir: &Path) -> Result<()> {
    let report = wait_for_file(&dir.join("stand-in.out"), Duration::from_secs(90))?;
    let line = |key: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
            .unwrap_or_default()
            .to_string()
    };
    ensure!(
        line("args:") == "--namespace lc-test --agent-image understudy:local --listen 127.0.0.1:0",
        "args: {report}"
    );
    let canonical = dir.canonicalize()?;
    ensure!(
        line("kubeconfig:") == canonical.join("operator.kubeconfig").display().to_string(),
        "{report}"
    );
    ensure!(
        line("sandboxes:") == "ok",
        "the operator user cannot list sandboxes: {report}"
    );
    let secrets = line("secrets:");
    ensure!(
        secrets.contains("Forbidden") && secrets.contains("understudy-operator"),
        "the operator user may list secrets: {report}"
    );

    // People's kubeconfig: the admin, in the namespace.
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .args(["get", "sbx,dr", "-o", "name"])
        .output()
        .context("run kubectl")?;
    ensure!(
        out.status.success(),
        "kubectl get sbx,dr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(dir.join("kubeconfig"))
        .args([
            "config",
            "view",
            "--minify",
            "-o",
            "jsonpath={.contexts[0].context.namespace}",
        ])
        .output()?;
    ensure!(
        String::from_utf8_lossy(&ns.stdout) == "lc-test",
        "kubeconfig namespace: {ns:?}"
    );
    Ok(())
}

//! The Kubernetes control plane of `fixtures::kube` is real: kubectl reaches it, RBAC forbids the operator user
//! what it was not granted, the garbage collector deletes owned objects, and nothing is left running after drop.
//! Needs `bash .ci/kube-build` once (about 8 minutes, cached).

use std::io::Write as _;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fixtures::harness::TempRoot;
use fixtures::kube::{ControlPlane, OPERATOR_USER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_serves_rbac_and_collects_garbage() {
    let began = Instant::now();
    let tmp = TempRoot::new("kube");
    let cp = ControlPlane::start(&tmp.path().join("cp"))
        .await
        .expect("start the control plane");
    eprintln!(
        "control plane ready in {:.1?} at {}",
        cp.startup_time(),
        cp.server_url()
    );

    let checked = checks(&cp);
    if let Err(e) = &checked {
        eprintln!("{e:#}\n{}", cp.logs());
    }
    let root = cp.root().to_path_buf();
    drop(cp);
    let left = processes_under(&root);
    assert!(left.is_empty(), "still running after drop: {left:?}");
    checked.expect("control plane checks");
    eprintln!("whole test: {:.1?}", began.elapsed());
}

fn checks(cp: &ControlPlane) -> Result<()> {
    // kubectl as the admin.
    let namespaces = cp.kubectl_admin(&["get", "namespaces", "-o", "name"])?;
    ensure!(
        namespaces.lines().any(|l| l == "namespace/default"),
        "no default namespace in {namespaces:?}"
    );

    // RBAC is on: the operator user (no groups) may not list secrets cluster-wide; the admin may.
    let can = output(
        cp.kubectl(&cp.operator_kubeconfig())
            .args(["auth", "can-i", "list", "secrets", "-A"]),
    )?;
    ensure!(
        stdout(&can) == "no" && !can.status.success(),
        "operator can-i list secrets: {can:?}"
    );
    let get = output(cp.kubectl(&cp.operator_kubeconfig()).args(["get", "secrets", "-A"]))?;
    let err = String::from_utf8_lossy(&get.stderr);
    ensure!(
        !get.status.success() && err.contains("Forbidden"),
        "operator get secrets -A: {get:?}"
    );
    ensure!(
        err.contains(OPERATOR_USER),
        "the Forbidden message names another user: {err}"
    );
    let admin_can = output(
        cp.kubectl(&cp.admin_kubeconfig())
            .args(["auth", "can-i", "list", "secrets", "-A"]),
    )?;
    ensure!(stdout(&admin_can) == "yes", "admin can-i list secrets: {admin_can:?}");

    // The garbage collector (kube-controller-manager) deletes what the deleted owner owned.
    cp.kubectl_admin(&["create", "configmap", "owner", "--from-literal=a=b"])?;
    let uid = cp.kubectl_admin(&["get", "configmap", "owner", "-o", "jsonpath={.metadata.uid}"])?;
    ensure!(!uid.trim().is_empty(), "owner has no uid");
    let owned = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "namespace": "default",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid.trim()}],
        },
        "data": {"c": "d"},
    });
    apply(cp, &owned.to_string())?;
    let listed = cp.kubectl_admin(&[
        "get",
        "configmap",
        "owned",
        "-o",
        "jsonpath={.metadata.ownerReferences[0].uid}",
    ])?;
    ensure!(
        listed.trim() == uid.trim(),
        "owned's owner uid is {listed:?}, not {uid:?}"
    );
    cp.kubectl_admin(&["delete", "configmap", "owner", "--wait=true"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let gc_began = Instant::now();
    loop {
        let left = cp.kubectl_admin(&["get", "configmap", "owned", "--ignore-not-found", "-o", "name"])?;
        if left.trim().is_empty() {
            eprintln!("garbage collected in {:.1?}", gc_began.elapsed());
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("configmap/owned still there 30 s after its owner was deleted");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn apply(cp: &ControlPlane, manifest: &str) -> Result<()> {
    let mut child = cp
        .kubectl(&cp.admin_kubeconfig())
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run kubectl apply")?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(manifest.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn output(cmd: &mut std::process::Command) -> Result<Output> {
    cmd.output().context("run kubectl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Pids and command lines of the processes (other than this one) whose command line names `root`.
fn processes_under(root: &Path) -> Vec<(u32, String)> {
    let needle = root.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if pid != std::process::id() && cmdline.contains(&needle) {
            found.push((pid, cmdline));
        }
    }
    found
}

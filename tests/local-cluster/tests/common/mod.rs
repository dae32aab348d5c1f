//! What the local cluster's tests share: the `understudy` binary, the agent's Pod template, and small waits.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, PodSpec, Secret};
use kube::api::PostParams;
use kube::{Api, Client};
use local_cluster::setup;

pub const BUILD: &str = "cargo build -p understudy-cli --bin understudy";
/// A token the agent accepts (at least 32 printable characters).
pub const TOKEN: &str = "local-cluster-test-token-0123456789abcdef";

/// The built `understudy` binary (next to the test executable, or in the workspace's `target/`). When there is
/// none, it is built once with [`BUILD`], which the output says.
pub fn understudy_bin() -> PathBuf {
    if let Ok(path) = setup::find_binary("understudy", None, BUILD) {
        return path;
    }
    eprintln!("no built `understudy` binary found: running `{BUILD}` (build it before the tests to skip this)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "understudy-cli", "--bin", "understudy"])
        .current_dir(setup::workspace_root().unwrap_or_else(|| PathBuf::from(".")))
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "`{BUILD}` failed: build the `understudy` binary before these tests"
    );
    setup::find_binary("understudy", None, BUILD).expect("the understudy binary after building it")
}

/// Secret `name` holding `token`.
pub async fn create_token_secret(client: &Client, namespace: &str, name: &str) -> Result<()> {
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some([("token".to_string(), ByteString(TOKEN.as_bytes().to_vec()))].into()),
        ..Secret::default()
    };
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &secret)
        .await
        .context("create the token secret")?;
    Ok(())
}

/// The agent's Pod spec: `understudy agent --listen 0.0.0.0:8080 --token-file /var/run/t/token`, the Secret
/// `secret` at /var/run/t, `UNDERSTUDY_STATE_DIR` at `state_dir` in the volume `state_volume` mounted at
/// `state_mount` (an emptyDir named `scratch` unless the caller adds a claim of that name), probes on /readyz and
/// /healthz.
pub fn agent_spec(secret: &str, state_volume: &str, state_mount: &str, state_dir: &str, empty_dir: bool) -> PodSpec {
    let mut volumes =
        vec![serde_json::json!({"name": "token", "secret": {"secretName": secret, "defaultMode": 0o400}})];
    if empty_dir {
        volumes.push(serde_json::json!({"name": state_volume, "emptyDir": {}}));
    }
    serde_json::from_value(serde_json::json!({
        "terminationGracePeriodSeconds": 20,
        "containers": [{
            "name": "agent",
            "image": "understudy:local",
            "args": ["agent", "--listen", "0.0.0.0:8080", "--token-file", "/var/run/t/token"],
            "env": [{"name": "UNDERSTUDY_STATE_DIR", "value": state_dir}],
            "ports": [{"name": "api", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 5},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "api"}, "periodSeconds": 10},
            "volumeMounts": [
                {"name": "token", "mountPath": "/var/run/t", "readOnly": true},
                {"name": state_volume, "mountPath": state_mount},
            ],
        }],
        "volumes": volumes,
    }))
    .expect("a valid pod spec")
}

/// The pid of the Pod's first container (`containerID: local://PID`).
pub fn pid_of(pod: &Pod) -> Option<u32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .container_id
        .as_deref()?
        .strip_prefix("local://")?
        .parse()
        .ok()
}

pub fn restart_count(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

pub fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.pod_ip.clone()
}

/// Waits until `pid` has exited (or is a zombie), at most `timeout`.
pub async fn wait_exited(pid: u32, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while local_cluster::procs::alive(pid) {
        if Instant::now() > deadline {
            bail!("process {pid} still runs after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().collect())
                .unwrap_or_default();
            // After `(comm)`: state, ppid, pgrp.
            fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) && fields.first() != Some(&"Z")
        })
        .collect()
}

/// A stand-in for `understudy-operator`: writes what it was given and what the API let its user do to
/// `stand-in.out` next to itself, then waits for SIGTERM.
pub const STAND_IN: &str = r#"#!/bin/sh
# A stand-in for understudy-operator: says what it was given, asks the API as its user, then waits for SIGTERM.
out="$(dirname "$0")/stand-in.out"
{
  echo "args: $*"
  echo "kubeconfig: $KUBECONFIG"
  echo "pgid: $$"
  echo "sandboxes: $(kubectl get sandboxes.understudy.dev -o name 2>&1 && echo ok)"
  echo "secrets: $(kubectl get secrets 2>&1 | head -c 300)"
  echo "done"
} > "$out.tmp" && mv "$out.tmp" "$out"
echo "stand-in operator running"
trap 'echo "stand-in operator: SIGTERM"; exit 0' TERM
while :; do sleep 1; done
"#;

/// Writes [`STAND_IN`] as `DIR/stand-in-operator.sh` (mode 0755).
pub fn write_stand_in(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let script = dir.join("stand-in-operator.sh");
    std::fs::write(&script, STAND_IN).expect("write the stand-in");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod the stand-in");
    script
}

/// The stand-in's process group (its `$$`: it leads its own group), from its `stand-in.out`.
pub fn stand_in_pgid(dir: &Path) -> Option<u32> {
    let report = std::fs::read_to_string(dir.join("stand-in.out")).ok()?;
    report
        .lines()
        .find_map(|l| l.strip_prefix("pgid: "))
        .and_then(|p| p.trim().parse().ok())
}

/// Waits for file `path` to exist and returns its text.
pub fn wait_for_file(path: &Path, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            return Ok(text);
        }
        if Instant::now() > deadline {
            bail!("{} did not appear within {timeout:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

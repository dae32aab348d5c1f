//! The node runs Pods for real: a Pod made by hand is bound, runs the `understudy` agent at its own address, becomes
//! Ready, is restarted after kill -9 and stopped when deleted; a StatefulSet's Pod (made by the statefulset
//! controller) uses its PVC directory and goes with the StatefulSet; a shutdown leaves nothing running.
//! Needs `bash .ci/kube-build` once and a built `understudy` binary (`cargo build -p understudy-cli --bin understudy`).

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use common::{agent_spec, create_token_secret, pid_of, pod_ip, restart_count, understudy_bin, wait_exited};
use fixtures::harness::TempRoot;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, EnvVar, PersistentVolumeClaim, Pod};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use local_cluster::probe::http_get;
use local_cluster::{LocalCluster, Options, procs};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_restart_and_stop() {
    let tmp = TempRoot::new("local-cluster-pods");
    let options = Options::new(tmp.path().join("cluster"))
        .understudy_bin(understudy_bin())
        .no_operator();
    let cluster = LocalCluster::start(options).await.expect("start the local cluster");
    eprintln!("local cluster started in {:.1?}", cluster.startup_time());
    let dir = cluster.dir().to_path_buf();

    let checked = checks(&cluster).await;
    if let Err(e) = &checked {
        eprintln!("{e:#}\n{}", cluster.logs());
    }
    // (d) A shutdown with a Pod running leaves nothing running.
    let running = cluster.container_pids();
    let began = Instant::now();
    cluster.shutdown().await.expect("shut the cluster down");
    eprintln!(
        "shutdown with {} container process(es) running took {:.1?}",
        running.len(),
        began.elapsed()
    );
    let left = procs::naming(&dir);
    assert!(left.is_empty(), "still running after shutdown: {left:?}");
    for pid in running {
        assert!(!procs::alive(pid), "container process {pid} survived the shutdown");
    }
    checked.expect("local cluster checks");
}

async fn checks(cluster: &LocalCluster) -> Result<()> {
    create_token_secret(&cluster.client(), cluster.namespace(), "agent-token").await?;
    hand_made_pod(cluster).await?;
    stateful_set(cluster).await?;
    environment_volumes_and_liveness(cluster).await?;
    // Left running for the shutdown.
    let pods: Api<Pod> = Api::namespaced(cluster.client(), cluster.namespace());
    pods.create(&PostParams::default(), &pod("last")).await?;
    cluster.wait_pod_ready("last", WAIT).await?;
    Ok(())
}

fn pod(name: &str) -> Pod {
    Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(agent_spec("agent-token", "scratch", "/scratch", "/scratch/state", true)),
        ..Pod::default()
    }
}

/// (a) A Pod made by hand.
async fn hand_made_pod(cluster: &LocalCluster) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), cluster.namespace());
    let created = Instant::now();
    pods.create(&PostParams::default(), &pod("hand")).await?;
    let ready = cluster.wait_pod_ready("hand", WAIT).await?;
    eprintln!("MEASURE hand-made Pod: created -> Ready in {:.2?}", created.elapsed());

    let spec = ready.spec.clone().unwrap_or_default();
    let status = ready.status.clone().unwrap_or_default();
    ensure!(
        spec.node_name.as_deref() == Some("local"),
        "not bound to node local: {:?}",
        spec.node_name
    );
    ensure!(status.phase.as_deref() == Some("Running"), "phase {:?}", status.phase);
    ensure!(
        status.host_ip.as_deref() == Some("127.0.0.1"),
        "hostIP {:?}",
        status.host_ip
    );
    ensure!(status.start_time.is_some(), "no startTime");
    let ip = pod_ip(&ready).context("no podIP")?;
    ensure!(ip.starts_with("127.") && ip != "127.0.0.1", "podIP {ip}");
    ensure!(
        cluster.pod_ip("hand").map(|a| a.to_string()) == Some(ip.clone()),
        "pod_ip() disagrees with {ip}"
    );
    let addr: SocketAddr = format!("{ip}:8080").parse()?;
    let (code, body) = http_get(addr, "/healthz", Duration::from_secs(5)).await?;
    ensure!(code == 200, "GET /healthz: {code} {body}");

    // The volumes are host directories: the token as a 0400 file, the state in the emptyDir.
    let pod_dir = cluster.dir().join("pods").join(cluster.namespace()).join("hand");
    let token = pod_dir.join("token/token");
    let mode = std::fs::metadata(&token)
        .with_context(|| format!("stat {}", token.display()))?
        .permissions()
        .mode();
    ensure!(mode & 0o777 == 0o400, "token file mode {mode:o}");
    ensure!(
        pod_dir.join("scratch/state/agent.json").is_file(),
        "the agent's state is not in the emptyDir"
    );
    let log = cluster
        .dir()
        .join("logs")
        .join(format!("{}_hand_agent.log", cluster.namespace()));
    ensure!(
        std::fs::read_to_string(&log).unwrap_or_default().contains("listening"),
        "{} says nothing",
        log.display()
    );

    // kill -9: restarted, counted, Ready again.
    let pid = pid_of(&ready).context("no containerID")?;
    ensure!(
        cluster
            .pod_info(cluster.namespace(), "hand")
            .and_then(|i| i.pids.get("agent").copied())
            == Some(pid)
    );
    let killed = Instant::now();
    ensure!(procs::signal(i64::from(pid), "KILL"), "kill -9 {pid}");
    cluster
        .wait_pod("hand", WAIT, |p| {
            restart_count(p) == 1 && pid_of(p).is_some_and(|p| p != pid)
        })
        .await?;
    let back = killed.elapsed();
    let again = cluster.wait_pod_ready("hand", WAIT).await?;
    eprintln!(
        "MEASURE kill -9: process restarted after {back:.2?}, Pod Ready again after {:.2?}",
        killed.elapsed()
    );
    ensure!(restart_count(&again) == 1, "restartCount {}", restart_count(&again));
    let last = again
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first());
    let last = last
        .and_then(|c| c.last_state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    ensure!(last.is_some_and(|t| t.exit_code == 137), "lastState: {last:?}");
    ensure!(pod_ip(&again) == Some(ip), "the Pod's address changed at the restart");

    // Deleted: the process stops (SIGTERM), the Pod goes away, its directory too.
    let new_pid = pid_of(&again).context("no containerID")?;
    let deleting = Instant::now();
    pods.delete("hand", &DeleteParams::default()).await?;
    cluster.wait_pod_gone("hand", WAIT).await?;
    wait_exited(new_pid, Duration::from_secs(5)).await?;
    eprintln!("MEASURE delete: Pod gone in {:.2?}", deleting.elapsed());
    ensure!(!pod_dir.exists(), "{} is still there", pod_dir.display());
    ensure!(cluster.pod_ip("hand").is_none(), "the node still knows the Pod");
    Ok(())
}

/// The Pod template of the operator's agent StatefulSet (`operator/src/resources.rs`): its arguments, paths,
/// probes, security context (ignored by the node) and grace period.
fn operator_shaped_spec(secret: &str) -> serde_json::Value {
    let probe =
        |path: &str, period: i32| serde_json::json!({"httpGet": {"path": path, "port": 8080}, "periodSeconds": period});
    serde_json::json!({
        "containers": [{
            "name": "agent",
            "image": "understudy:local",
            "args": ["agent", "--listen", "0.0.0.0:8080", "--token-file", "/var/run/understudy/token/token",
                     "--stop-servers"],
            "env": [{"name": "UNDERSTUDY_STATE_DIR", "value": "/var/lib/understudy"}],
            "ports": [{"name": "api", "containerPort": 8080}],
            "livenessProbe": probe("/healthz", 10),
            "readinessProbe": probe("/readyz", 5),
            "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true,
                                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
            "volumeMounts": [
                {"name": "data", "mountPath": "/var/lib/understudy"},
                {"name": "token", "mountPath": "/var/run/understudy/token", "readOnly": true},
            ],
        }],
        "securityContext": {"runAsNonRoot": true, "runAsUser": 999, "fsGroup": 999},
        "terminationGracePeriodSeconds": 90,
        "volumes": [{"name": "token", "secret": {"secretName": secret, "defaultMode": 0o400}}],
    })
}

/// (b) A StatefulSet with a claim template: the controller makes the Pod and its PVC.
async fn stateful_set(cluster: &LocalCluster) -> Result<()> {
    let spec = operator_shaped_spec("agent-token");
    let sts: StatefulSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "demo-agent"},
        "spec": {
            "replicas": 1,
            "serviceName": "demo-agent",
            "selector": {"matchLabels": {"app": "demo"}},
            "template": {"metadata": {"labels": {"app": "demo"}}, "spec": spec},
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
            }],
        },
    }))?;
    let api: Api<StatefulSet> = Api::namespaced(cluster.client(), cluster.namespace());
    let created = Instant::now();
    api.create(&PostParams::default(), &sts).await?;
    let ready = cluster.wait_pod_ready("demo-agent-0", WAIT).await?;
    eprintln!("MEASURE StatefulSet: created -> Pod Ready in {:.2?}", created.elapsed());

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client(), cluster.namespace());
    let claim = claims.get("data-demo-agent-0").await?;
    let phase = claim.status.as_ref().and_then(|s| s.phase.clone());
    ensure!(phase.as_deref() == Some("Bound"), "claim phase {phase:?}");
    let pvc_dir = cluster
        .dir()
        .join("pvc")
        .join(cluster.namespace())
        .join("data-demo-agent-0");
    ensure!(
        pvc_dir.join("agent.json").is_file(),
        "the agent's state is not in {}",
        pvc_dir.display()
    );
    let mode = std::fs::metadata(&pvc_dir)?.permissions().mode();
    ensure!(mode & 0o777 == 0o755, "claim directory mode {mode:o}");
    ensure_traversable(&pvc_dir)?;
    let pid = pid_of(&ready).context("no containerID")?;

    // Deleting the StatefulSet: the garbage collector deletes the Pod, the node stops its process; the claim's
    // directory stays.
    let deleting = Instant::now();
    api.delete("demo-agent", &DeleteParams::default()).await?;
    cluster.wait_pod_gone("demo-agent-0", WAIT).await?;
    wait_exited(pid, Duration::from_secs(5)).await?;
    eprintln!("MEASURE StatefulSet deleted -> Pod gone in {:.2?}", deleting.elapsed());
    // (The agent removes its agent.json when it stops; its pid file and sandboxes directory stay.)
    ensure!(
        pvc_dir.join("sandboxes").is_dir(),
        "the claim's directory went with the Pod"
    );
    Ok(())
}

/// The environment and a ConfigMap volume are resolved (the Pod waits for a missing ConfigMap), `0.0.0.0:` and
/// mount paths are rewritten; a failing liveness probe restarts the container.
async fn environment_volumes_and_liveness(cluster: &LocalCluster) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(cluster.client(), cluster.namespace());
    let mut envs = pod("envs");
    let spec = envs.spec.get_or_insert_default();
    spec.volumes
        .get_or_insert_default()
        .push(serde_json::from_value(serde_json::json!(
            {"name": "settings", "configMap": {"name": "settings", "defaultMode": 0o640}}
        ))?);
    let container = &mut spec.containers[0];
    container
        .volume_mounts
        .get_or_insert_default()
        .push(serde_json::from_value(serde_json::json!(
            {"name": "settings", "mountPath": "/etc/settings"}
        ))?);
    container
        .env
        .get_or_insert_default()
        .extend(serde_json::from_value::<Vec<EnvVar>>(serde_json::json!([
            {"name": "A", "valueFrom": {"secretKeyRef": {"name": "agent-token", "key": "token"}}},
            {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
            {"name": "C", "value": "$(B)-suffix"},
            {"name": "D", "value": "/etc/settings/mode"},
            {"name": "E", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "LISTEN", "value": "0.0.0.0:9"},
        ]))?);
    pods.create(&PostParams::default(), &envs).await?;
    let waiting = |p: &Pod| {
        let statuses = p.status.as_ref().and_then(|s| s.container_statuses.as_ref());
        let state = statuses.and_then(|c| c.first()).and_then(|c| c.state.as_ref());
        let reason = state.and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.as_deref());
        reason == Some("CreateContainerConfigError")
    };
    cluster
        .wait_pod("envs", WAIT, waiting)
        .await
        .context("the Pod does not wait for its ConfigMap")?;
    let settings: ConfigMap = serde_json::from_value(serde_json::json!(
        {"metadata": {"name": "settings"}, "data": {"mode": "strict"}}
    ))?;
    Api::<ConfigMap>::namespaced(cluster.client(), cluster.namespace())
        .create(&PostParams::default(), &settings)
        .await?;
    let ready = cluster.wait_pod_ready("envs", WAIT).await?;
    let ip = pod_ip(&ready).context("no podIP")?;
    let pid = pid_of(&ready).context("no containerID")?;
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    let environ: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let var = |k: &str| {
        environ
            .iter()
            .find_map(|v| v.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    let settings_dir = cluster
        .dir()
        .join("pods")
        .join(cluster.namespace())
        .join("envs/settings");
    let expected = [
        ("A", common::TOKEN.to_string()),
        ("B", "strict".into()),
        ("C", "strict-suffix".into()),
        ("D", settings_dir.join("mode").display().to_string()),
        ("E", ip.clone()),
        ("LISTEN", format!("{ip}:9")),
        ("HOSTNAME", "envs".into()),
    ];
    for (k, v) in expected {
        ensure!(var(k).as_deref() == Some(v.as_str()), "{k}={:?}, not {v:?}", var(k));
    }
    ensure!(
        var(procs::MARKER_VAR).is_some(),
        "no {} in the environment",
        procs::MARKER_VAR
    );
    let mode_file = settings_dir.join("mode");
    ensure!(
        std::fs::read_to_string(&mode_file)? == "strict",
        "{} content",
        mode_file.display()
    );
    let mode = std::fs::metadata(&mode_file)?.permissions().mode();
    ensure!(mode & 0o777 == 0o640, "configmap file mode {mode:o}");
    pods.delete("envs", &DeleteParams::default()).await?;

    // Liveness: a path the agent does not serve, probed every second, two failures restart the container.
    let mut unlive = pod("unlive");
    let container = &mut unlive.spec.get_or_insert_default().containers[0];
    container.liveness_probe = Some(serde_json::from_value(serde_json::json!(
        {"httpGet": {"path": "/nope", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2}
    ))?);
    pods.create(&PostParams::default(), &unlive).await?;
    let began = Instant::now();
    cluster.wait_pod("unlive", WAIT, |p| restart_count(p) >= 1).await?;
    eprintln!(
        "MEASURE failing liveness probe (1 s period, threshold 2): restarted after {:.2?}",
        began.elapsed()
    );
    pods.delete("unlive", &DeleteParams::default()).await?;
    cluster.wait_pod_gone("envs", WAIT).await?;
    cluster.wait_pod_gone("unlive", WAIT).await?;
    Ok(())
}

/// Every directory from the root to `dir` can be traversed by others (the agent runs PostgreSQL as `postgres`).
fn ensure_traversable(dir: &Path) -> Result<()> {
    for d in dir.ancestors() {
        let mode = std::fs::metadata(d)?.permissions().mode();
        ensure!(
            mode & 0o001 != 0,
            "{} (mode {mode:o}) cannot be traversed by others",
            d.display()
        );
    }
    Ok(())
}

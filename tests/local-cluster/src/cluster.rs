//! [`LocalCluster`]: start, use and stop the whole local cluster.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use fixtures::kube::{ControlPlane, ControlPlaneOptions};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::node::{self, NodeCtx, PodInfo};
use crate::operator::{OperatorCommand, OperatorProcess};
use crate::{procs, setup};

/// How long the operator has to stop after SIGTERM.
const OPERATOR_GRACE: Duration = Duration::from_secs(10);
/// Lines of each log [`LocalCluster::logs`] shows.
const LOG_TAIL: usize = 40;

/// How to start a [`LocalCluster`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Everything of the cluster lives here (created if missing; a directory used before keeps etcd's data).
    pub dir: PathBuf,
    /// The operator's namespace (created): `understudy` by default.
    pub namespace: String,
    /// The binary every container runs; found next to the current executable or in the workspace's `target/`.
    pub understudy_bin: Option<PathBuf>,
    /// Whether to start the operator.
    pub run_operator: bool,
    /// The operator's binary; found like `understudy_bin` (`understudy-operator`).
    pub operator_bin: Option<PathBuf>,
    /// Arguments after `--namespace NS --agent-image understudy:local`.
    pub operator_args: Vec<String>,
    /// Environment variables of the operator besides `KUBECONFIG`.
    pub operator_env: Vec<(String, String)>,
    /// The CRDs to apply; the workspace's `crds/` by default.
    pub crds_dir: Option<PathBuf>,
    /// The API server's port; a free one by default.
    pub api_port: Option<u16>,
}

impl Options {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Options {
            dir: dir.into(),
            namespace: "understudy".into(),
            understudy_bin: None,
            run_operator: true,
            operator_bin: None,
            operator_args: Vec::new(),
            operator_env: Vec::new(),
            crds_dir: None,
            api_port: None,
        }
    }

    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.into();
        self
    }

    pub fn understudy_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.understudy_bin = Some(path.into());
        self
    }

    pub fn operator_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.operator_bin = Some(path.into());
        self.run_operator = true;
        self
    }

    pub fn no_operator(mut self) -> Self {
        self.run_operator = false;
        self
    }
}

/// A running local cluster. [`LocalCluster::shutdown`] (or dropping it) stops every Pod process, the operator and
/// the control plane.
pub struct LocalCluster {
    cp: Option<ControlPlane>,
    dir: PathBuf,
    namespace: String,
    kubeconfig: PathBuf,
    operator_kubeconfig: PathBuf,
    client: Client,
    node: Arc<NodeCtx>,
    node_task: Option<JoinHandle<()>>,
    stop_node: CancellationToken,
    operator: Option<OperatorProcess>,
    /// How the operator was started, to restart it.
    operator_cmd: Option<OperatorCommand>,
    startup: Duration,
}

impl LocalCluster {
    /// Starts the control plane under `options.dir`, creates the namespace, installs the CRDs and the RBAC, starts
    /// the node and (unless told not to) the operator.
    pub async fn start(options: Options) -> Result<LocalCluster> {
        let began = Instant::now();
        setup::install_crypto_provider();
        let understudy_bin = setup::find_binary(
            "understudy",
            options.understudy_bin.as_deref(),
            "cargo build -p understudy-cli --bin understudy",
        )?;
        let operator_bin = match options.run_operator {
            true => Some(setup::find_binary(
                "understudy-operator",
                options.operator_bin.as_deref(),
                "cargo build -p understudy-operator --bin understudy-operator",
            )?),
            false => None,
        };
        let crds = setup::find_crds_dir(options.crds_dir.as_deref())?;
        std::fs::create_dir_all(options.dir.join("logs"))
            .with_context(|| format!("create {}", options.dir.display()))?;
        let cp_options = ControlPlaneOptions {
            api_port: options.api_port,
            ..ControlPlaneOptions::default()
        };
        let cp = ControlPlane::start_with(&options.dir, &cp_options).await?;
        let dir = cp.root().to_path_buf();
        let (kubeconfig, operator_kubeconfig) = (dir.join("kubeconfig"), cp.operator_kubeconfig());
        let ns = options.namespace.as_str();
        cp.write_kubeconfig(&kubeconfig, "admin", cp.admin_token(), ns)?;
        cp.write_kubeconfig(&operator_kubeconfig, "operator", cp.operator_token(), ns)?;
        let client = setup::client_for(&kubeconfig).await?;
        let node = Arc::new(NodeCtx::new(client.clone(), dir.clone(), understudy_bin)?);
        let mut cluster = LocalCluster {
            cp: Some(cp),
            dir,
            namespace: options.namespace.clone(),
            kubeconfig,
            operator_kubeconfig,
            client,
            node,
            node_task: None,
            stop_node: CancellationToken::new(),
            operator: None,
            operator_cmd: None,
            startup: Duration::ZERO,
        };
        node::register_node(&cluster.client).await?;
        setup::ensure_namespace(&cluster.client, ns).await?;
        let (crd_names, dropped) =
            setup::install_crds(&cluster.client, &cluster.kubeconfig, &crds, &cluster.dir).await?;
        cluster.node.log(&format!(
            "installed CRDs {} from {} (as {}/crds: {dropped} null enum value(s) dropped for the 1.20 server)",
            crd_names.join(", "),
            crds.display(),
            cluster.dir.display()
        ));
        setup::apply_rbac(&cluster.kubeconfig, &cluster.dir, ns).await?;
        let (ctx, stop) = (Arc::clone(&cluster.node), cluster.stop_node.clone());
        cluster.node_task = Some(tokio::spawn(node::run(ctx, stop)));
        if let Some(program) = operator_bin {
            let cmd = OperatorCommand {
                program,
                kubeconfig: cluster.operator_kubeconfig.clone(),
                namespace: options.namespace.clone(),
                extra_args: options.operator_args.clone(),
                env: options.operator_env.clone(),
                log: cluster.dir.join("logs").join("operator.log"),
            };
            cluster.operator = Some(OperatorProcess::start(&cmd)?);
            cluster.operator_cmd = Some(cmd);
        }
        cluster.startup = began.elapsed();
        Ok(cluster)
    }

    /// The cluster's directory (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `DIR/kubeconfig`: the admin (`system:masters`), context namespace [`LocalCluster::namespace`].
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `DIR/operator.kubeconfig`: the operator user, bound by `rbac.yaml` only.
    pub fn operator_kubeconfig(&self) -> &Path {
        &self.operator_kubeconfig
    }

    /// A kube client as the admin.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A kube client as the operator user (what the operator can do, and no more).
    pub async fn operator_client(&self) -> Result<Client> {
        setup::client_for(&self.operator_kubeconfig).await
    }

    /// The harness's control plane (server URL, tokens, CA, its process logs).
    pub fn control_plane(&self) -> &ControlPlane {
        self.cp
            .as_ref()
            .unwrap_or_else(|| unreachable!("the control plane lives as long as the cluster"))
    }

    /// How long [`LocalCluster::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// The address of Pod `name` of the namespace while the node runs it.
    pub fn pod_ip(&self, name: &str) -> Option<Ipv4Addr> {
        self.pod_info(&self.namespace, name).map(|i| i.ip)
    }

    /// What the node knows of Pod `namespace/name` (its uid, address, and the pid of each running container).
    pub fn pod_info(&self, namespace: &str, name: &str) -> Option<PodInfo> {
        self.node
            .with_pods(|pods| pods.get(&(namespace.to_string(), name.to_string())).cloned())
    }

    /// The pids of every container process the node runs now.
    pub fn container_pids(&self) -> Vec<u32> {
        self.node.registry.pids()
    }

    /// The operator's pid while it runs, and how it ended otherwise.
    pub fn operator_state(&mut self) -> Option<std::result::Result<u32, std::process::ExitStatus>> {
        let op = self.operator.as_mut()?;
        Some(match op.exit_status() {
            None => Ok(op.pid()),
            Some(status) => Err(status),
        })
    }

    /// Kills the operator at once (SIGKILL to its process group: a crash). Nothing happens without an operator.
    pub fn kill_operator(&mut self) {
        if let Some(op) = self.operator.as_mut() {
            op.kill();
        }
    }

    /// Stops the operator gracefully (SIGTERM, up to 10 s, then SIGKILL).
    pub async fn stop_operator(&mut self) {
        if let Some(op) = self.operator.as_mut() {
            op.stop(OPERATOR_GRACE).await;
        }
    }

    /// Starts the operator again with the same command, environment and log (appended), killing it first if it
    /// still runs. An error when the cluster was started without an operator.
    pub fn restart_operator(&mut self) -> Result<()> {
        let Some(cmd) = self.operator_cmd.clone() else {
            bail!("this cluster was started without an operator");
        };
        self.kill_operator();
        self.operator = Some(OperatorProcess::start(&cmd)?);
        Ok(())
    }

    /// `kubectl --kubeconfig DIR/kubeconfig ARGS...` (admin, in the namespace unless `-n`/`-A`): its stdout.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String> {
        setup::kubectl(&self.kubeconfig, args).await
    }

    /// The same as the operator user.
    pub async fn kubectl_as_operator(&self, args: &[&str]) -> Result<String> {
        setup::kubectl(&self.operator_kubeconfig, args).await
    }

    /// Waits until Pod `name` of the namespace satisfies `ok`, at most `timeout`; the error has the logs.
    pub async fn wait_pod(&self, name: &str, timeout: Duration, ok: impl Fn(&Pod) -> bool) -> Result<Pod> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let deadline = Instant::now() + timeout;
        loop {
            let pod = api.get_opt(name).await?;
            if let Some(pod) = pod.filter(|p| ok(p)) {
                return Ok(pod);
            }
            if Instant::now() > deadline {
                bail!("pod {name} not as expected within {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until Pod `name` is `Ready`.
    pub async fn wait_pod_ready(&self, name: &str, timeout: Duration) -> Result<Pod> {
        self.wait_pod(name, timeout, pod_ready).await
    }

    /// Waits until Pod `name` no longer exists.
    pub async fn wait_pod_gone(&self, name: &str, timeout: Duration) -> Result<()> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let deadline = Instant::now() + timeout;
        while api.get_opt(name).await?.is_some() {
            if Instant::now() > deadline {
                bail!("pod {name} still exists after {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The last lines of the node's, the operator's and every container's log, then the control plane's.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let logs = self.dir.join("logs");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&logs)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                name == "node.log" || name == "operator.log" || name.contains('_')
            })
            .collect();
        files.sort();
        for path in files {
            let _ = writeln!(out, "{}", tail(&path, LOG_TAIL));
        }
        if let Some(cp) = &self.cp {
            out.push_str(&cp.logs());
        }
        out
    }

    /// Stops every Pod process, the operator and the control plane.
    pub async fn shutdown(mut self) -> Result<()> {
        // The operator first, while the agents still answer; then the Pods; then the control plane.
        if let Some(mut op) = self.operator.take() {
            op.stop(OPERATOR_GRACE).await;
        }
        self.stop_node.cancel();
        if let Some(task) = self.node_task.take() {
            let limit = node::SHUTDOWN_GRACE + Duration::from_secs(5);
            if tokio::time::timeout(limit, task).await.is_err() {
                self.node.log("the node did not stop in time: killing what is left");
            }
        }
        let (node, dir) = (Arc::clone(&self.node), self.dir.clone());
        tokio::task::spawn_blocking(move || stop_leftovers(&node, &dir, Duration::from_secs(2))).await?;
        if let Some(cp) = self.cp.take() {
            tokio::task::spawn_blocking(move || drop(cp)).await?;
        }
        Ok(())
    }
}

/// Whether the Pod's `Ready` condition is `True`.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Stops the registered container processes and kills anything else the node's containers left under `dir`.
fn stop_leftovers(node: &NodeCtx, dir: &Path, grace: Duration) {
    node.registry
        .stop_all(grace, &format!("{}|", dir.display()), &[dir.to_path_buf()]);
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    format!(
        "==> {} (last {} lines) <==\n{}",
        path.display(),
        tail.len(),
        tail.join("\n")
    )
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Not shut down: stop everything from here, synchronously (the runtime may be gone or busy), in the order
        // of `shutdown`.
        if self.cp.is_none() {
            return;
        }
        if let Some(mut op) = self.operator.take() {
            op.stop_blocking(OPERATOR_GRACE);
        }
        self.stop_node.cancel();
        stop_leftovers(&self.node, &self.dir, Duration::from_secs(5));
        if let Some(task) = self.node_task.take() {
            task.abort();
        }
        drop(self.cp.take());
        let left = procs::naming(&self.dir);
        if !left.is_empty() {
            eprintln!("local-cluster: still running after drop: {left:?}");
        }
    }
}

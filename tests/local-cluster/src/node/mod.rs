//! The node: watches the Pods of every namespace, binds the unbound ones to node [`NODE_NAME`] (there is no
//! scheduler), and runs each bound Pod in a [`pod`] worker. A Pod deleted from the API has its processes killed; at
//! shutdown every Pod's processes are stopped and the Pods are left as they are.

pub mod container;
pub mod pod;
pub mod spec;
pub mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{PostParams, ResourceExt as _};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::procs::Registry;

/// The name of the node every Pod is bound to.
pub const NODE_NAME: &str = "local";
/// The Pod's `terminationGracePeriodSeconds` when it sets none (Kubernetes' default).
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// At most this long for a Pod's processes to stop when the node shuts down.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What the node knows of a Pod it runs, by namespace and name.
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub uid: String,
    pub ip: Ipv4Addr,
    /// The running process of each container, by container name.
    pub pids: BTreeMap<String, u32>,
}

/// What the node's tasks share.
pub struct NodeCtx {
    pub client: Client,
    pub dir: PathBuf,
    pub understudy_bin: PathBuf,
    pub registry: Registry,
    pub pods: Mutex<BTreeMap<(String, String), PodInfo>>,
    log: Mutex<Option<File>>,
}

/// The next Pod address of this process, as an offset in 127.0.0.0/8.
static NEXT_IP: AtomicU32 = AtomicU32::new(2);

/// The IPv4 addresses with a listening TCP socket (`/proc/net/tcp`).
fn listening_addresses() -> HashSet<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // `sl local_address rem_address st`: st 0A is LISTEN; the address is the kernel's in-memory order.
            let (addr, _port) = fields.get(1)?.split_once(':')?;
            (fields.get(3) == Some(&"0A")).then_some(())?;
            let raw = u32::from_str_radix(addr, 16).ok()?;
            Some(Ipv4Addr::from(raw.to_ne_bytes()))
        })
        .collect()
}

impl NodeCtx {
    pub fn new(client: Client, dir: PathBuf, understudy_bin: PathBuf) -> Result<Self> {
        let log_path = dir.join("logs").join("node.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        Ok(NodeCtx {
            client,
            dir,
            understudy_bin,
            registry: Registry::default(),
            pods: Mutex::new(BTreeMap::new()),
            log: Mutex::new(Some(log)),
        })
    }

    /// A line in `DIR/logs/node.log` (and a tracing event).
    pub fn log(&self, line: &str) {
        tracing::info!(target: "local_cluster::node", "{line}");
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = log.as_mut() {
            let _ = writeln!(file, "{} {line}", Timestamp::now());
        }
    }

    /// The next Pod address: 127.0.0.2, 127.0.0.3, ... shared by every node of this process and never reused by
    /// it; an address something already listens on (another process's Pod, say) is skipped.
    pub fn allocate_ip(&self) -> Ipv4Addr {
        let busy = listening_addresses();
        loop {
            let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
            let ip = Ipv4Addr::from(0x7f00_0000 | (n & 0x00ff_ffff));
            if n & 0xff != 0 && n & 0xff != 0xff && !busy.contains(&ip) {
                return ip;
            }
        }
    }

    pub fn with_pods<T>(&self, f: impl FnOnce(&mut BTreeMap<(String, String), PodInfo>) -> T) -> T {
        f(&mut self.pods.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The grace period of a Pod being deleted: the delete's, else `terminationGracePeriodSeconds`, else 30 s.
pub fn grace_period(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds));
    seconds.map_or(DEFAULT_GRACE, |s| Duration::from_secs(s.max(0) as u64))
}

/// Creates the Node object [`NODE_NAME`] (Ready, address 127.0.0.1) unless it exists. Binding does not need it in
/// 1.20, but `kubectl get nodes` and `kubectl describe pod` look for it.
pub async fn register_node(client: &Client) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    if api.get_opt(NODE_NAME).await?.is_some() {
        return Ok(());
    }
    let now = Timestamp::now().to_string();
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"}},
        "status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": NODE_NAME}],
            "capacity": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "2", "memory": "8Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "LocalClusterReady",
                            "message": "played by understudy-local-cluster", "lastHeartbeatTime": now,
                            "lastTransitionTime": now}],
            "nodeInfo": {"architecture": std::env::consts::ARCH, "operatingSystem": "linux",
                         "kubeletVersion": "local-cluster", "kubeProxyVersion": "", "bootID": "", "machineID": "",
                         "systemUUID": "", "kernelVersion": "", "osImage": "", "containerRuntimeVersion": "local://"},
        },
    }))?;
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).context("create node local"),
    }
}

/// Binds `pod` to [`NODE_NAME`] through its `binding` subresource, as a scheduler does.
async fn bind(client: &Client, pod: &Pod) -> Result<()> {
    let namespace = pod.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(pod.name_any()),
            namespace: Some(namespace),
            uid: pod.metadata.uid.clone(),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(NODE_NAME.into()),
            ..ObjectReference::default()
        },
    };
    api.create_subresource::<_, serde_json::Value>("binding", &pod.name_any(), &PostParams::default(), &binding)
        .await
        .with_context(|| format!("bind pod {}", pod.name_any()))?;
    Ok(())
}

/// A running pod worker.
struct Worker {
    pod: watch::Sender<Pod>,
    /// Cancelled when the Pod is gone from the API.
    gone: CancellationToken,
    task: JoinHandle<()>,
}

/// The dispatcher's state.
struct Dispatcher {
    ctx: Arc<NodeCtx>,
    shutdown: CancellationToken,
    workers: HashMap<String, Worker>,
    /// The last worker of each Pod name, cancelled when it ended: a new Pod of that name waits for it.
    last_by_name: HashMap<(String, String), CancellationToken>,
    /// Uids listed since the last `Init` of the watch.
    listed: HashSet<String>,
}

/// Runs the node until `shutdown`, then stops every Pod's processes.
pub async fn run(ctx: Arc<NodeCtx>, shutdown: CancellationToken) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut d = Dispatcher {
        ctx,
        shutdown: shutdown.clone(),
        workers: HashMap::new(),
        last_by_name: HashMap::new(),
        listed: HashSet::new(),
    };
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            event = stream.next() => event,
        };
        match event {
            Some(Ok(Event::Init)) => d.listed.clear(),
            Some(Ok(Event::InitApply(pod))) => {
                d.listed.insert(pod.uid().unwrap_or_default());
                d.apply(pod).await;
            }
            Some(Ok(Event::InitDone)) => d.forget_unlisted(),
            Some(Ok(Event::Apply(pod))) => d.apply(pod).await,
            Some(Ok(Event::Delete(pod))) => d.gone(&pod.uid().unwrap_or_default()),
            Some(Err(e)) => d.ctx.log(&format!("pod watch: {e}")),
            None => break,
        }
        d.workers.retain(|_, w| !w.task.is_finished());
        d.last_by_name.retain(|_, done| !done.is_cancelled());
    }
    for (_, w) in d.workers.drain() {
        let _ = w.task.await;
    }
}

impl Dispatcher {
    async fn apply(&mut self, pod: Pod) {
        let uid = pod.uid().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        match spec.node_name.as_deref() {
            None | Some("") => {
                if pod.metadata.deletion_timestamp.is_none()
                    && let Err(e) = bind(&self.ctx.client, &pod).await
                {
                    self.ctx.log(&format!("{e:#}"));
                }
            }
            Some(NODE_NAME) => {
                if let Some(w) = self.workers.get(&uid) {
                    w.pod.send_replace(pod);
                } else {
                    self.start_worker(uid, pod);
                }
            }
            Some(_) => {}
        }
    }

    fn start_worker(&mut self, uid: String, pod: Pod) {
        let key = (pod.namespace().unwrap_or_default(), pod.name_any());
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let previous = self.last_by_name.get(&key).cloned();
        let done = CancellationToken::new();
        self.last_by_name.insert(key, done.clone());
        let (tx, rx) = watch::channel(pod);
        let gone = CancellationToken::new();
        let worker = pod::PodWorker::new(Arc::clone(&self.ctx), rx, gone.clone(), self.shutdown.clone());
        let task = tokio::spawn(async move {
            let _done = done.drop_guard();
            if let Some(previous) = previous {
                previous.cancelled().await;
            }
            worker.run(finished).await;
        });
        self.workers.insert(uid, Worker { pod: tx, gone, task });
    }

    fn gone(&mut self, uid: &str) {
        if let Some(w) = self.workers.get(uid) {
            w.gone.cancel();
        }
    }

    /// After a re-list: the Pods that vanished while the watch was down are gone.
    fn forget_unlisted(&mut self) {
        for (uid, w) in &self.workers {
            if !self.listed.contains(uid) {
                w.gone.cancel();
            }
        }
    }
}

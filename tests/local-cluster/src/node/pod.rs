//! One bound Pod: an address, one [`Runner`] per container, its status written back through the status
//! subresource, and its end: a Pod being deleted is stopped within its grace period and then deleted for good (grace
//! 0), a Pod gone from the API has its processes killed, and at shutdown its processes are stopped.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod,
    PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions, ResourceExt as _};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::container::{Event, Runner, Stop};
use super::volumes::Layout;
use super::{NodeCtx, PodInfo, SHUTDOWN_GRACE, grace_period};

/// Why a Pod's worker ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ending {
    /// `deletionTimestamp` is set: stop within the grace period, then delete the Pod (grace 0).
    Deleted,
    /// The Pod is no longer in the API.
    Gone,
    /// The node shuts down; the Pod stays as it is.
    Shutdown,
}

/// What the node knows of one container.
struct View {
    name: String,
    image: String,
    state: ContainerState,
    last: Option<ContainerState>,
    restarts: i32,
    ready: bool,
    pid: Option<u32>,
    done: bool,
}

pub struct PodWorker {
    ctx: Arc<NodeCtx>,
    rx: watch::Receiver<Pod>,
    gone: CancellationToken,
    shutdown: CancellationToken,
    ip: Ipv4Addr,
    start_time: Time,
    views: Vec<View>,
    /// Each condition's value and when it last changed.
    conditions: BTreeMap<&'static str, (bool, Time)>,
    last_written: Option<serde_json::Value>,
}

fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message: (!message.is_empty()).then(|| message.into()),
        }),
        ..ContainerState::default()
    }
}

impl PodWorker {
    pub fn new(
        ctx: Arc<NodeCtx>,
        rx: watch::Receiver<Pod>,
        gone: CancellationToken,
        shutdown: CancellationToken,
    ) -> Self {
        let ip = ctx.allocate_ip();
        let now = Time(Timestamp::now());
        let conditions = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
            .into_iter()
            .map(|c| (c, (matches!(c, "PodScheduled" | "Initialized"), now.clone())))
            .collect();
        PodWorker {
            ctx,
            rx,
            gone,
            shutdown,
            ip,
            start_time: now,
            views: Vec::new(),
            conditions,
            last_written: None,
        }
    }

    fn pod(&self) -> Pod {
        self.rx.borrow().clone()
    }

    fn key(&self) -> (String, String) {
        let pod = self.rx.borrow();
        (pod.namespace().unwrap_or_default(), pod.name_any())
    }

    /// Runs the Pod (unless it `finished` before: a Pod that ended is not run again) until it ends.
    pub async fn run(mut self, finished: bool) {
        let ending = if finished || self.rx.borrow().metadata.deletion_timestamp.is_some() {
            self.wait_for_end().await
        } else {
            self.run_containers().await
        };
        self.finish(ending).await;
    }

    /// Waits for the Pod to be deleted or gone, or the node to shut down.
    async fn wait_for_end(&mut self) -> Ending {
        if self.rx.borrow().metadata.deletion_timestamp.is_some() {
            return Ending::Deleted;
        }
        let deleted = self.rx.wait_for(|p| p.metadata.deletion_timestamp.is_some());
        tokio::select! {
            Ok(_) = deleted => Ending::Deleted,
            () = self.gone.cancelled() => Ending::Gone,
            () = self.shutdown.cancelled() => Ending::Shutdown,
        }
    }

    async fn run_containers(&mut self) -> Ending {
        let pod = self.pod();
        let (namespace, name) = self.key();
        let containers = pod.spec.clone().unwrap_or_default().containers;
        self.ctx.with_pods(|pods| {
            let info = PodInfo {
                uid: pod.uid().unwrap_or_default(),
                ip: self.ip,
                pids: BTreeMap::new(),
            };
            pods.insert((namespace.clone(), name.clone()), info);
        });
        self.ctx.log(&format!(
            "{namespace}/{name}: running {} container(s) at {}",
            containers.len(),
            self.ip
        ));
        self.views = containers
            .iter()
            .map(|c| View {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                state: waiting("ContainerCreating", ""),
                last: None,
                restarts: 0,
                ready: false,
                pid: None,
                done: false,
            })
            .collect();
        self.write_status().await;

        let (events, mut events_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(Stop::Run);
        let mut runners = JoinSet::new();
        for (index, container) in containers.into_iter().enumerate() {
            let runner = Runner {
                ctx: Arc::clone(&self.ctx),
                pod: pod.clone(),
                index,
                container,
                ip: self.ip,
                events: events.clone(),
                stop: stop_rx.clone(),
            };
            runners.spawn(runner.run());
        }
        drop(events);
        let ending = self.supervise(&mut events_rx, &stop_tx).await;
        while runners.join_next().await.is_some() {}
        match ending {
            Some(ending) => ending,
            // Every container ended by itself (restartPolicy Never or OnFailure).
            None => self.wait_for_end().await,
        }
    }

    /// Follows the containers' events and the Pod's fate until every container is done.
    async fn supervise(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        stop: &watch::Sender<Stop>,
    ) -> Option<Ending> {
        let mut ending = None;
        let grace = grace_period(&self.pod());
        let mut rx = self.rx.clone();
        let (gone, shutdown) = (self.gone.clone(), self.shutdown.clone());
        while self.views.iter().any(|v| !v.done) {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => {
                        self.apply(event);
                        if matches!(ending, None | Some(Ending::Deleted)) {
                            self.write_status().await;
                        }
                    }
                    None => break,
                },
                Ok(()) = rx.changed(), if ending.is_none() => {
                    let pod = rx.borrow_and_update().clone();
                    if pod.metadata.deletion_timestamp.is_some() {
                        let grace = grace_period(&pod);
                        self.ctx.log(&format!("{}/{}: deleted: stopping (grace {grace:?})", pod.namespace().unwrap_or_default(), pod.name_any()));
                        ending = Some(Ending::Deleted);
                        stop.send_replace(Stop::Graceful(grace));
                    }
                }
                () = gone.cancelled(), if ending.is_none() => {
                    ending = Some(Ending::Gone);
                    stop.send_replace(Stop::Graceful(Duration::ZERO));
                }
                () = shutdown.cancelled(), if ending.is_none() => {
                    ending = Some(Ending::Shutdown);
                    stop.send_replace(Stop::Graceful(grace.min(SHUTDOWN_GRACE)));
                }
            }
        }
        ending
    }

    fn apply(&mut self, event: Event) {
        let key = self.key();
        match event {
            Event::Waiting { index, reason, message } => self.views[index].set_state(waiting(&reason, &message)),
            Event::Started {
                index,
                pid,
                restarts,
                at,
            } => {
                let v = &mut self.views[index];
                v.set_state(ContainerState {
                    running: Some(ContainerStateRunning { started_at: Some(at) }),
                    ..ContainerState::default()
                });
                (v.pid, v.restarts, v.ready) = (Some(pid), restarts, false);
                let name = v.name.clone();
                self.ctx
                    .with_pods(|pods| pods.get_mut(&key).map(|info| info.pids.insert(name, pid)));
            }
            Event::Ready { index, ready } => self.views[index].ready = ready,
            Event::Exited {
                index,
                code,
                signal,
                started,
                finished,
            } => {
                let v = &mut self.views[index];
                let terminated = ContainerStateTerminated {
                    exit_code: code,
                    signal,
                    reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
                    started_at: Some(started),
                    finished_at: Some(finished),
                    container_id: v.pid.map(|p| format!("local://{p}")),
                    ..ContainerStateTerminated::default()
                };
                v.set_state(ContainerState {
                    terminated: Some(terminated),
                    ..ContainerState::default()
                });
                v.ready = false;
                let name = v.name.clone();
                self.ctx
                    .with_pods(|pods| pods.get_mut(&key).map(|info| info.pids.remove(&name)));
            }
            Event::Done { index } => self.views[index].done = true,
        }
        let ready = !self.views.is_empty() && self.views.iter().all(|v| v.ready);
        for condition in ["ContainersReady", "Ready"] {
            if let Some(entry) = self.conditions.get_mut(condition)
                && entry.0 != ready
            {
                *entry = (ready, Time(Timestamp::now()));
            }
        }
    }

    /// `Pending` until a container started; then `Running`, or `Succeeded`/`Failed` once every container ended for
    /// good.
    fn phase(&self) -> &'static str {
        let terminated = |v: &View| v.state.terminated.as_ref().map(|t| t.exit_code);
        let ever_started = self
            .views
            .iter()
            .any(|v| v.state.running.is_some() || v.state.terminated.is_some() || v.last.is_some());
        if !ever_started {
            "Pending"
        } else if self.views.iter().all(|v| v.done && terminated(v).is_some()) {
            if self.views.iter().all(|v| terminated(v) == Some(0)) {
                "Succeeded"
            } else {
                "Failed"
            }
        } else {
            "Running"
        }
    }

    fn status(&self) -> PodStatus {
        let statuses = self
            .views
            .iter()
            .map(|v| ContainerStatus {
                name: v.name.clone(),
                image: v.image.clone(),
                image_id: String::new(),
                container_id: v.pid.map(|p| format!("local://{p}")),
                ready: v.ready,
                started: Some(v.state.running.is_some()),
                restart_count: v.restarts,
                state: Some(v.state.clone()),
                last_state: v.last.clone(),
                ..ContainerStatus::default()
            })
            .collect();
        let conditions = self
            .conditions
            .iter()
            .map(|(kind, (value, at))| PodCondition {
                type_: (*kind).to_string(),
                status: if *value { "True" } else { "False" }.into(),
                last_transition_time: Some(at.clone()),
                ..PodCondition::default()
            })
            .collect();
        PodStatus {
            phase: Some(self.phase().into()),
            host_ip: Some("127.0.0.1".into()),
            pod_ip: Some(self.ip.to_string()),
            pod_ips: Some(vec![PodIP {
                ip: self.ip.to_string(),
            }]),
            start_time: Some(self.start_time.clone()),
            qos_class: Some("BestEffort".into()),
            conditions: Some(conditions),
            container_statuses: Some(statuses),
            ..PodStatus::default()
        }
    }

    /// Patches the Pod's status (a JSON merge patch of the whole status) when it changed.
    async fn write_status(&mut self) {
        let status = match serde_json::to_value(self.status()) {
            Ok(v) => v,
            Err(e) => return self.ctx.log(&format!("serialize a pod status: {e}")),
        };
        if self.last_written.as_ref() == Some(&status) {
            return;
        }
        let (namespace, name) = self.key();
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &namespace);
        let patch = serde_json::json!({ "status": status });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.last_written = Some(status),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => self.ctx.log(&format!("{namespace}/{name}: write status: {e}")),
        }
    }

    /// Forgets the Pod; a deleted Pod's directory goes, and the Pod is deleted for good.
    async fn finish(&mut self, ending: Ending) {
        let (namespace, name) = self.key();
        let uid = self.rx.borrow().uid();
        self.ctx.with_pods(|pods| {
            if pods.get(&(namespace.clone(), name.clone())).map(|i| Some(&i.uid)) == Some(uid.as_ref()) {
                pods.remove(&(namespace.clone(), name.clone()));
            }
        });
        if ending == Ending::Shutdown {
            return;
        }
        let layout = Layout::new(&self.ctx.dir, &namespace, &name);
        if let Err(e) = std::fs::remove_dir_all(&layout.pod_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            self.ctx
                .log(&format!("{namespace}/{name}: remove {}: {e}", layout.pod_dir.display()));
        }
        if ending == Ending::Deleted {
            let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &namespace);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => self.ctx.log(&format!("{namespace}/{name}: stopped and deleted")),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => self.ctx.log(&format!("{namespace}/{name}: delete: {e}")),
            }
        } else {
            self.ctx
                .log(&format!("{namespace}/{name}: gone from the API: processes killed"));
        }
    }
}

impl View {
    /// Moves to `state`; a terminated state left behind becomes `lastState` (the previous run's end).
    fn set_state(&mut self, state: ContainerState) {
        let old = std::mem::replace(&mut self.state, state);
        if old.terminated.is_some() && self.state.terminated.is_none() {
            self.last = Some(old);
        }
    }
}

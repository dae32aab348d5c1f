//! One container of a Pod as a local process of the `understudy` binary: started, probed, restarted after it exits
//! (1 s, doubling, up to 30 s) as `restartPolicy` says, and stopped like a container runtime does (SIGTERM to the
//! process, SIGKILL after the grace period, then everything the container started).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use super::NodeCtx;
use super::spec::{self, Sources};
use super::volumes::{self, Layout};
use crate::probe;
use crate::procs::{self, MARKER_VAR};

/// How often the readiness probe runs.
const READINESS_PERIOD: Duration = Duration::from_secs(2);
/// The first restart delay; it doubles up to [`MAX_BACKOFF`], and is reset after [`BACKOFF_RESET`] of running.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const BACKOFF_RESET: Duration = Duration::from_secs(600);
/// Variables of this process's environment a container does not inherit (they would configure it as this process).
const NOT_INHERITED: &[&str] = &[
    "KUBECONFIG",
    "UNDERSTUDY_STATE_DIR",
    "UNDERSTUDY_TOKEN_FILE",
    "UNDERSTUDY_SOURCE",
    MARKER_VAR,
];

/// What the Pod wants of its containers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    Run,
    /// SIGTERM, then SIGKILL after the duration.
    Graceful(Duration),
}

/// What a container reports to its Pod.
#[derive(Debug)]
pub enum Event {
    Waiting {
        index: usize,
        reason: String,
        message: String,
    },
    Started {
        index: usize,
        pid: u32,
        restarts: i32,
        at: Time,
    },
    Ready {
        index: usize,
        ready: bool,
    },
    Exited {
        index: usize,
        code: i32,
        signal: Option<i32>,
        started: Time,
        finished: Time,
    },
    /// The container will not run again (its Pod is stopping, or `restartPolicy` says so).
    Done {
        index: usize,
    },
}

/// One container of a Pod.
pub struct Runner {
    pub ctx: Arc<NodeCtx>,
    pub pod: Pod,
    pub index: usize,
    pub container: Container,
    pub ip: Ipv4Addr,
    pub events: mpsc::UnboundedSender<Event>,
    pub stop: watch::Receiver<Stop>,
}

/// What a started process is.
struct Process {
    child: Child,
    pid: u32,
    marker: String,
    volumes: Vec<PathBuf>,
}

impl Runner {
    fn namespace(&self) -> String {
        self.pod.metadata.namespace.clone().unwrap_or_default()
    }

    fn pod_name(&self) -> String {
        self.pod.metadata.name.clone().unwrap_or_default()
    }

    fn send(&self, event: Event) {
        let _ = self.events.send(event);
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow() != Stop::Run
    }

    /// Waits `delay` unless the Pod stops first; true when it stopped.
    async fn sleep_or_stop(&mut self, delay: Duration) -> bool {
        let mut rx = self.stop.clone();
        tokio::select! {
            _ = rx.wait_for(|s| *s != Stop::Run) => true,
            () = tokio::time::sleep(delay) => self.stopping(),
        }
    }

    /// Runs the container until its Pod stops it or it must not restart.
    pub async fn run(mut self) {
        let mut restarts = 0;
        let mut backoff = FIRST_BACKOFF;
        let policy = self.pod.spec.as_ref().and_then(|s| s.restart_policy.clone());
        let policy = policy.unwrap_or_else(|| "Always".into());
        while !self.stopping() {
            let process = match self.start().await {
                Ok(p) => p,
                Err(e) => {
                    let message = format!("{e:#}");
                    self.ctx.log(&format!(
                        "{}/{} {}: cannot start: {message}",
                        self.namespace(),
                        self.pod_name(),
                        self.container.name
                    ));
                    self.send(Event::Waiting {
                        index: self.index,
                        reason: "CreateContainerConfigError".into(),
                        message,
                    });
                    if self.sleep_or_stop(Duration::from_secs(2)).await {
                        break;
                    }
                    continue;
                }
            };
            let started = Time(Timestamp::now());
            let began = Instant::now();
            self.send(Event::Started {
                index: self.index,
                pid: process.pid,
                restarts,
                at: started.clone(),
            });
            let status = self.supervise(process).await;
            let (code, signal) = exit_code(status);
            self.ctx.log(&format!(
                "{}/{} {}: exited (code {code}{})",
                self.namespace(),
                self.pod_name(),
                self.container.name,
                signal.map(|s| format!(", signal {s}")).unwrap_or_default()
            ));
            self.send(Event::Exited {
                index: self.index,
                code,
                signal,
                started,
                finished: Time(Timestamp::now()),
            });
            let restart = match policy.as_str() {
                "Never" => false,
                "OnFailure" => code != 0,
                _ => true,
            };
            if self.stopping() || !restart {
                break;
            }
            if began.elapsed() > BACKOFF_RESET {
                backoff = FIRST_BACKOFF;
            }
            self.send(Event::Waiting {
                index: self.index,
                reason: "CrashLoopBackOff".into(),
                message: format!("back-off {backoff:?} restarting the failed container"),
            });
            if self.sleep_or_stop(backoff).await {
                break;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            restarts += 1;
        }
        self.send(Event::Done { index: self.index });
    }

    /// Resolves the container's volumes, environment and arguments, and starts its process.
    async fn start(&self) -> Result<Process> {
        let (namespace, pod_name, name) = (self.namespace(), self.pod_name(), self.container.name.clone());
        let layout = Layout::new(&self.ctx.dir, &namespace, &pod_name);
        let mut sources = Sources::new(self.ctx.client.clone(), &namespace);
        let dirs = volumes::prepare(&self.ctx.client, &self.pod, &layout, &mut sources).await?;
        let mounts = volumes::mounts(&self.container, &dirs)?;
        let env = spec::environment(&self.pod, &self.container, self.ip, &mounts, &mut sources).await?;
        let args = spec::arguments(&self.container, &env, self.ip, &mounts);
        let cwd = match &self.container.working_dir {
            Some(w) => PathBuf::from(spec::rewrite(w, self.ip, &mounts)),
            None => layout.pod_dir.clone(),
        };
        let log_path = self
            .ctx
            .dir
            .join("logs")
            .join(format!("{namespace}_{pod_name}_{name}.log"));
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        {
            use std::io::Write as _;
            let _ = writeln!(
                log,
                "# local-cluster {}: {} {}",
                Timestamp::now(),
                self.ctx.understudy_bin.display(),
                args.join(" ")
            );
        }
        let marker = format!(
            "{}|{}|{name}",
            self.ctx.dir.display(),
            self.pod.metadata.uid.as_deref().unwrap_or_default()
        );
        let mut cmd = Command::new(&self.ctx.understudy_bin);
        cmd.args(&args).current_dir(&cwd).stdin(Stdio::null());
        cmd.stdout(log.try_clone()?).stderr(log);
        for var in NOT_INHERITED {
            cmd.env_remove(var);
        }
        cmd.env("HOSTNAME", &pod_name).envs(env).env(MARKER_VAR, &marker);
        cmd.process_group(0).kill_on_drop(true);
        let spawned = self.ctx.registry.spawn_registered(&marker, || {
            let child = cmd.spawn()?;
            let pid = child.id().unwrap_or_default();
            Ok((child, pid))
        });
        let child = match spawned {
            Some(child) => child.with_context(|| format!("start {}", self.ctx.understudy_bin.display()))?,
            None => anyhow::bail!("the node is stopping"),
        };
        let pid = child.id().unwrap_or_default();
        self.ctx.log(&format!(
            "{namespace}/{pod_name} {name}: started pid {pid} at {}: {}",
            self.ip,
            args.join(" ")
        ));
        Ok(Process {
            child,
            pid,
            marker,
            volumes: dirs.into_values().collect(),
        })
    }

    /// Probes the running process until it exits, its liveness probe fails, or the Pod stops it; then kills what
    /// is left of the container and returns how its process ended.
    async fn supervise(&mut self, mut process: Process) -> ExitStatus {
        let readiness = self.container.readiness_probe.clone();
        let liveness = self.container.liveness_probe.clone();
        let delay = |p: &Option<Probe>| {
            Duration::from_secs(p.as_ref().and_then(|p| p.initial_delay_seconds).unwrap_or(0).max(0) as u64)
        };
        let now = tokio::time::Instant::now();
        let mut ready_tick = tokio::time::interval_at(now + delay(&readiness), READINESS_PERIOD);
        let live_period =
            Duration::from_secs(liveness.as_ref().and_then(|p| p.period_seconds).unwrap_or(10).max(1) as u64);
        let mut live_tick = tokio::time::interval_at(now + delay(&liveness) + live_period, live_period);
        let (mut ready, mut ready_failures, mut live_failures) = (false, 0, 0);
        if readiness.is_none() {
            self.send(Event::Ready {
                index: self.index,
                ready: true,
            });
        }
        let mut stop = self.stop.clone();
        let status = loop {
            tokio::select! {
                status = process.child.wait() => break status,
                Ok(()) = stop.changed() => {
                    let wanted = *stop.borrow_and_update();
                    if let Stop::Graceful(grace) = wanted {
                        break self.terminate(&mut process, grace).await;
                    }
                }
                _ = ready_tick.tick(), if readiness.is_some() => {
                    let ok = self.probe(readiness.as_ref()).await;
                    ready_failures = if ok { 0 } else { ready_failures + 1 };
                    let threshold = readiness.as_ref().and_then(|p| p.failure_threshold).unwrap_or(3);
                    if ok != ready && (ok || ready_failures >= threshold) {
                        ready = ok;
                        self.send(Event::Ready { index: self.index, ready });
                    }
                }
                _ = live_tick.tick(), if liveness.is_some() => {
                    live_failures = if self.probe(liveness.as_ref()).await { 0 } else { live_failures + 1 };
                    if live_failures >= liveness.as_ref().and_then(|p| p.failure_threshold).unwrap_or(3) {
                        self.ctx.log(&format!("{}/{} {}: liveness probe failed {live_failures} times: restarting", self.namespace(), self.pod_name(), self.container.name));
                        let grace = super::grace_period(&self.pod);
                        break self.terminate(&mut process, grace).await;
                    }
                }
            }
        };
        self.send(Event::Ready {
            index: self.index,
            ready: false,
        });
        procs::kill_container_leftovers(Some(process.pid), &process.marker, &process.volumes);
        self.ctx.registry.unregister(process.pid);
        status.unwrap_or_else(|_| ExitStatus::from_raw(137 << 8))
    }

    /// SIGTERM to the process, up to `grace` for it to exit, then SIGKILL to its group.
    async fn terminate(&self, process: &mut Process, grace: Duration) -> std::io::Result<ExitStatus> {
        procs::signal(i64::from(process.pid), "TERM");
        match tokio::time::timeout(grace, process.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                procs::signal(-i64::from(process.pid), "KILL");
                process.child.wait().await
            }
        }
    }

    /// One probe: `httpGet` (2xx), `tcpSocket` (connects); any other kind counts as a success.
    async fn probe(&self, probe: Option<&Probe>) -> bool {
        let Some(probe) = probe else { return true };
        let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
        if let Some(get) = &probe.http_get {
            let Some(port) = self.port(&get.port) else { return false };
            let host = get.host.as_deref().and_then(|h| h.parse().ok()).unwrap_or(self.ip);
            let path = get.path.clone().unwrap_or_else(|| "/".into());
            return matches!(
                probe::http_get(SocketAddr::from((host, port)), &path, timeout).await,
                Ok((200..=299, _))
            );
        }
        if let Some(tcp) = &probe.tcp_socket {
            let Some(port) = self.port(&tcp.port) else { return false };
            return probe::tcp_open(SocketAddr::from((self.ip, port)), timeout).await;
        }
        true
    }

    /// A probe's port: a number, or the name of one of the container's ports.
    fn port(&self, port: &IntOrString) -> Option<u16> {
        match port {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => self
                .container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        }
    }
}

/// Kubernetes' exit code (128 + the signal for a killed process) and the signal.
fn exit_code(status: ExitStatus) -> (i32, Option<i32>) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code, None),
        (None, Some(signal)) => (128 + signal, Some(signal)),
        (None, None) => (255, None),
    }
}

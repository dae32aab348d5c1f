//! `understudy agent`: the long-running process that owns the sandboxes of one state directory. It supervises
//! them ([`crate::supervisor`]), runs dry-runs for its API ([`crate::runs`]) and serves HTTP
//! ([`crate::server`]). One agent per state directory: it holds an OS lock on `<state>/agent.pid` and records
//! where it listens in `<state>/agent.json`. SIGTERM (or SIGINT) ends it cleanly: running dry-runs are
//! cancelled and their forks and capture slots removed; sandboxes stay.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::error::{Classify, ErrorKind};
use crate::metrics::Metrics;
use crate::runs::Runs;
use crate::sandbox::{self, StateDir};
use crate::server::{self, App, Token};
use crate::supervisor::{self, Supervisor};

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub state: StateDir,
    pub listen: SocketAddr,
    pub token_file: PathBuf,
    /// A PEM certificate chain and key, for TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub supervise: supervisor::Settings,
    /// Dry-runs run at once (more wait, pending).
    pub concurrent_runs: usize,
    /// Stop the sandboxes' servers when the agent ends (in a Pod, so that PostgreSQL shuts down cleanly).
    pub stop_servers: bool,
    /// How long running dry-runs get to clean up at shutdown.
    pub shutdown_grace: Duration,
}

/// Why an agent cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("an agent (pid {pid}) already runs for {state}; stop it first (`understudy agent stop`) or use it")]
    AlreadyRunning { pid: String, state: String },
    #[error("cannot listen on {addr}: {source}; choose another --listen address")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Usage(#[from] crate::error::UsageError),
    #[error(transparent)]
    Tls(#[from] server::TlsError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Classify for AgentError {
    fn kind(&self) -> ErrorKind {
        match self {
            AgentError::AlreadyRunning { .. } => ErrorKind::Conflict,
            AgentError::Listen { .. } | AgentError::Usage(_) | AgentError::Tls(_) => ErrorKind::Invalid,
            AgentError::Sandbox(e) => e.kind(),
            AgentError::Metrics(_) | AgentError::Io { .. } => ErrorKind::Internal,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

/// Where a running agent listens (`<state>/agent.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentRecord {
    pub pid: u32,
    pub address: SocketAddr,
    pub tls: bool,
    pub started_at: jiff::Timestamp,
    pub version: String,
}

impl AgentRecord {
    /// `http://ADDRESS` or `https://ADDRESS`.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.address)
    }
}

fn pid_path(state: &StateDir) -> PathBuf {
    state.root().join("agent.pid")
}

fn record_path(state: &StateDir) -> PathBuf {
    state.root().join("agent.json")
}

/// The agent running for `state`, if one is: its lock is held (a record alone may be left by a killed agent).
pub fn running(state: &StateDir) -> Option<AgentRecord> {
    let file = File::open(pid_path(state)).ok()?;
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            None
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let text = std::fs::read_to_string(record_path(state)).ok()?;
            serde_json::from_str(&text).ok()
        }
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// The held lock of a running agent.
struct PidLock {
    _file: File,
}

impl PidLock {
    fn acquire(state: &StateDir) -> Result<Self, AgentError> {
        std::fs::create_dir_all(state.root()).map_err(io(format!("creating {}", state.root().display())))?;
        let path = pid_path(state);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(AgentError::AlreadyRunning {
                    pid: std::fs::read_to_string(&path)
                        .map(|p| p.trim().to_string())
                        .unwrap_or_else(|_| "?".into()),
                    state: state.root().display().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(format!("locking {}", path.display()))(e)),
        }
        file.set_len(0).map_err(io(format!("writing {}", path.display())))?;
        writeln!(file, "{}", std::process::id()).map_err(io(format!("writing {}", path.display())))?;
        Ok(PidLock { _file: file })
    }
}

/// Runs an agent until SIGTERM or SIGINT. `started` is called once it listens.
/// The local sweep at start (`understudy sweep --apply` without `--source`).
async fn sweep_local(state: &StateDir) {
    match crate::recording::sweep(state).await {
        Ok(removed) if !removed.is_empty() => tracing::info!(?removed, "removed expired recordings"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "the recording sweep failed"),
    }
    let found = match crate::fork::orphans::find(state).await {
        Ok(found) => found,
        Err(e) => return tracing::warn!(error = %e, "the sweep failed"),
    };
    match crate::fork::orphans::remove(state, &found).await {
        Ok(removed) if !removed.is_empty() => {
            let names: Vec<String> = removed
                .iter()
                .map(|o| format!("{} {}", o.kind.as_str(), o.name))
                .collect();
            tracing::info!(removed = ?names, "swept what no run owns");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "the sweep failed"),
    }
}

pub async fn run(opts: AgentOptions, started: impl FnOnce(&AgentRecord)) -> Result<(), AgentError> {
    let _lock = PidLock::acquire(&opts.state)?;
    let token = Arc::new(Token::read(&opts.token_file)?);
    let tls = match &opts.tls {
        Some((cert, key)) => Some(server::load_tls(cert, key)?),
        None => None,
    };
    opts.state.prepare()?;
    // What no run owns (forks of dry-runs whose process is gone, a previous agent killed say, stray capture slots)
    // is removed.
    sweep_local(&opts.state).await;
    let metrics = Arc::new(Metrics::new()?);
    let supervisor = Supervisor::new(opts.state.clone(), opts.supervise.clone(), Arc::clone(&metrics));
    let runs = Runs::open(opts.state.clone(), Arc::clone(&metrics), opts.concurrent_runs);
    let app = App {
        state: opts.state.clone(),
        supervisor: Arc::clone(&supervisor),
        runs: Arc::clone(&runs),
        metrics,
        creations: Arc::default(),
        recordings: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| AgentError::Listen {
            addr: opts.listen,
            source,
        })?;
    let address = listener.local_addr().map_err(io("reading the listening address"))?;
    let record = AgentRecord {
        pid: std::process::id(),
        address,
        tls: tls.is_some(),
        started_at: jiff::Timestamp::now(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let text = serde_json::to_string_pretty(&record).map_err(|e| io("writing agent.json")(std::io::Error::other(e)))?;
    std::fs::write(record_path(&opts.state), text).map_err(io("writing agent.json"))?;
    tracing::info!(url = %record.url(), state = %opts.state.root().display(), "agent listening");
    started(&record);

    let stop_serving = CancellationToken::new();
    let stop_supervising = CancellationToken::new();
    let server = tokio::spawn(server::serve(
        listener,
        server::router(app, token),
        tls,
        stop_serving.clone(),
    ));
    let supervising = tokio::spawn(Arc::clone(&supervisor).run(stop_supervising.clone()));
    terminated().await;
    tracing::info!("stopping: cancelling running dry-runs");
    runs.shutdown(opts.shutdown_grace).await;
    stop_supervising.cancel();
    let _ = supervising.await;
    stop_serving.cancel();
    let _ = server.await;
    if opts.stop_servers {
        stop_servers(&opts.state).await;
    }
    let _ = std::fs::remove_file(record_path(&opts.state));
    tracing::info!("agent stopped; sandboxes stay");
    Ok(())
}

/// Resolves at SIGTERM or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn stop_servers(state: &StateDir) {
    for name in state.sandbox_names() {
        if let Ok(meta) = sandbox::SandboxMeta::load(&state.sandbox_dir(&name))
            && let Ok(cluster) = sandbox::cluster_of(&meta)
            && let Err(e) = cluster.stop(crate::pg::StopMode::Fast).await
        {
            tracing::warn!(sandbox = %name, error = %e, "could not stop the sandbox's server");
        }
    }
}

//! The dry-runs the agent runs for its API: accepted, scheduled, running, finished. Each has a phase, its
//! progress events, and when it finished its verdict, key figures and reports. A finished run is kept on disk
//! (`<state>/runs/<id>/`: `run.json`, `report.json`, `report.md`, `report.txt`) so that it survives a restart of
//! the agent; a run the agent was running when it stopped is marked failed when it starts again.

mod figures;
mod store;
mod view;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{Semaphore, broadcast};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use figures::{KeyFigures, ModeFigures};
pub use view::{RunEvent, RunFailure, RunView, TopFinding};

use crate::dryrun::{self, DryRunError, DryRunRequest, Progress, RunPhase};
use crate::error::{Classify, ErrorKind};
use crate::metrics::Metrics;
use crate::report::{DryRunReport, Thresholds};
use crate::sandbox::StateDir;

/// The most events a run keeps.
const EVENTS_KEPT: usize = 500;

/// Why a run request or a run operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Request(#[from] dryrun::RequestError),
    #[error("no dry-run {0} (see GET /v1/dryruns)")]
    NotFound(String),
    #[error("no sandbox named {0} (see GET /v1/sandboxes)")]
    NoSandbox(String),
    #[error("dry-run {id} is {phase:?}: {what}")]
    Conflict { id: String, phase: RunPhase, what: String },
    #[error("the agent is shutting down; retry against the next one")]
    ShuttingDown,
    #[error("{0}")]
    Io(String),
}

impl Classify for RunError {
    fn kind(&self) -> ErrorKind {
        match self {
            RunError::Request(_) => ErrorKind::Invalid,
            RunError::NotFound(_) | RunError::NoSandbox(_) => ErrorKind::NotFound,
            RunError::Conflict { .. } => ErrorKind::Conflict,
            RunError::ShuttingDown => ErrorKind::Unavailable,
            RunError::Io(_) => ErrorKind::Internal,
        }
    }
}

/// One run.
pub struct Run {
    view: RwLock<RunView>,
    cancel: CancellationToken,
    events: broadcast::Sender<RunEvent>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Run {
    /// The run as the API shows it (with its events when `events`).
    pub fn view(&self, events: bool) -> RunView {
        let mut v = self
            .view
            .read()
            .map(|v| v.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        if !events {
            v.events.clear();
        }
        v
    }

    /// New events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RunEvent> {
        self.events.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut RunView)) {
        if let Ok(mut v) = self.view.write() {
            f(&mut v);
        }
    }

    fn event(&self, phase: RunPhase, message: Option<String>) {
        let event = RunEvent {
            at: jiff::Timestamp::now(),
            phase,
            message,
        };
        self.update(|v| {
            v.phase = phase;
            v.events.push(event.clone());
            let excess = v.events.len().saturating_sub(EVENTS_KEPT);
            v.events.drain(..excess);
        });
        let _ = self.events.send(event);
    }
}

impl Progress for Run {
    fn phase(&self, phase: RunPhase) {
        if phase == RunPhase::Forking {
            self.update(|v| v.started_at = Some(jiff::Timestamp::now()));
        }
        self.event(phase, None);
    }

    fn say(&self, line: &str) {
        let phase = self.view.read().map(|v| v.phase).unwrap_or(RunPhase::Pending);
        self.event(phase, Some(line.to_string()));
    }

    fn traced(&self, trace: &crate::telemetry::TraceId) {
        self.update(|v| v.trace_id = Some(trace.clone()));
    }
}

/// Every run of the agent.
pub struct Runs {
    state: StateDir,
    metrics: Arc<Metrics>,
    runs: Mutex<BTreeMap<String, Arc<Run>>>,
    slots: Arc<Semaphore>,
    closed: CancellationToken,
}

fn new_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// Whether `id` has the shape of a run id (12 hex digits): anything else is no run, without touching the disk.
pub fn valid_id(id: &str) -> bool {
    id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Runs {
    /// The runs of `state`, with those kept on disk; at most `concurrent` run at once (others wait, pending).
    pub fn open(state: StateDir, metrics: Arc<Metrics>, concurrent: usize) -> Arc<Self> {
        let runs = Arc::new(Runs {
            state: state.clone(),
            metrics,
            runs: Mutex::new(BTreeMap::new()),
            slots: Arc::new(Semaphore::new(concurrent.max(1))),
            closed: CancellationToken::new(),
        });
        for view in store::load_all(&state) {
            let (events, _) = broadcast::channel(16);
            let run = Arc::new(Run {
                view: RwLock::new(view.clone()),
                cancel: CancellationToken::new(),
                events,
                task: Mutex::new(None),
            });
            if let Ok(mut r) = runs.runs.lock() {
                r.insert(view.id.clone(), run);
            }
        }
        runs
    }

    /// Every run, newest first, without events.
    pub fn list(&self) -> Vec<RunView> {
        let mut out: Vec<RunView> = self
            .runs
            .lock()
            .map(|r| r.values().map(|run| run.view(false)).collect())
            .unwrap_or_default();
        out.sort_by_key(|v| std::cmp::Reverse(v.created_at));
        out
    }

    pub fn get(&self, id: &str) -> Result<Arc<Run>, RunError> {
        if !valid_id(id) {
            return Err(RunError::NotFound(id.to_string()));
        }
        self.runs
            .lock()
            .ok()
            .and_then(|r| r.get(id).cloned())
            .ok_or_else(|| RunError::NotFound(id.to_string()))
    }

    /// Whether a run on `sandbox` has not finished.
    pub fn active_on(&self, sandbox: &str) -> Option<String> {
        self.runs.lock().ok().and_then(|r| {
            r.values()
                .map(|run| run.view(false))
                .find(|v| v.sandbox == sandbox && !v.phase.is_final())
                .map(|v| v.id)
        })
    }

    /// Accepts a run: validated now (a bad field is refused here), run in the background; `parent` is the
    /// caller's `traceparent`, whose trace the run joins.
    pub fn start(self: &Arc<Self>, request: DryRunRequest, parent: Option<String>) -> Result<RunView, RunError> {
        if self.closed.is_cancelled() {
            return Err(RunError::ShuttingDown);
        }
        let (opts, schedule) = request.validate(&Thresholds::default())?;
        if !self.state.sandbox_dir(&opts.sandbox).is_dir() {
            return Err(RunError::NoSandbox(opts.sandbox.to_string()));
        }
        let id = new_id();
        let now = jiff::Timestamp::now();
        let scheduled_for = match schedule {
            crate::schedule::Schedule::Now => None,
            ref s => s.next_after(&jiff::Zoned::now()).ok().map(|z| z.timestamp()),
        };
        let view = RunView::accepted(&id, &opts, now, scheduled_for);
        let (events, _) = broadcast::channel(256);
        let run = Arc::new(Run {
            view: RwLock::new(view.clone()),
            cancel: CancellationToken::new(),
            events,
            task: Mutex::new(None),
        });
        if let Ok(mut r) = self.runs.lock() {
            r.insert(id.clone(), Arc::clone(&run));
        }
        if let Err(e) = store::save_view(&self.state, &view) {
            return Err(RunError::Io(format!("keeping the run: {e}")));
        }
        self.metrics.dryrun_started(opts.sandbox.as_str());
        let runs = Arc::clone(self);
        let task_run = Arc::clone(&run);
        let span = tracing::info_span!("agent_run", run = %id, sandbox = %opts.sandbox);
        if let Some(parent) = &parent {
            crate::telemetry::set_remote_parent(&span, parent);
        }
        let task = tokio::spawn(
            async move {
                let outcome = {
                    let _slot = tokio::select! {
                        permit = Arc::clone(&runs.slots).acquire_owned() => permit.ok(),
                        _ = task_run.cancel.cancelled() => None,
                    };
                    if task_run.cancel.is_cancelled() {
                        Err(DryRunError::Cancelled)
                    } else {
                        dryrun::execute(&runs.state, &opts, &schedule, task_run.as_ref(), &task_run.cancel).await
                    }
                };
                runs.finish(&task_run, opts.sandbox.as_str(), outcome);
            }
            .instrument(span),
        );
        if let Ok(mut t) = run.task.lock() {
            *t = Some(task);
        }
        Ok(view)
    }

    fn finish(&self, run: &Run, sandbox: &str, outcome: Result<DryRunReport, DryRunError>) {
        let now = jiff::Timestamp::now();
        let (verdict, cancelled) = match &outcome {
            Ok(report) => (Some(report.verdict.result), false),
            Err(DryRunError::Cancelled) => (None, true),
            Err(_) => (None, false),
        };
        let phase = match (&outcome, cancelled) {
            (Ok(_), _) => RunPhase::Succeeded,
            (Err(_), true) => RunPhase::Cancelled,
            (Err(_), false) => RunPhase::Failed,
        };
        let id = run.view(false).id;
        match &outcome {
            Ok(report) => {
                if let Err(e) = store::save_report(&self.state, &id, report) {
                    tracing::warn!(run = %id, error = %e, "could not keep the report");
                }
                run.update(|v| v.succeeded(report));
            }
            Err(e) => {
                if !cancelled {
                    self.metrics.error(e.kind());
                }
                run.update(|v| v.failed(e));
            }
        }
        run.update(|v| v.finished_at = Some(now));
        run.event(phase, None);
        self.metrics.dryrun_finished(sandbox, verdict, cancelled);
        if let Err(e) = store::save_view(&self.state, &run.view(true)) {
            tracing::warn!(run = %id, error = %e, "could not keep the run");
        }
    }

    /// Cancels a run that has not finished; its forks and capture slots are removed before it ends.
    pub fn cancel(&self, id: &str) -> Result<RunView, RunError> {
        let run = self.get(id)?;
        let view = run.view(false);
        if view.phase.is_final() {
            return Err(RunError::Conflict {
                id: view.id,
                phase: view.phase,
                what: "it has already ended".into(),
            });
        }
        run.cancel.cancel();
        Ok(run.view(false))
    }

    /// Forgets a finished run and its reports.
    pub fn remove(&self, id: &str) -> Result<(), RunError> {
        let run = self.get(id)?;
        let view = run.view(false);
        if !view.phase.is_final() {
            return Err(RunError::Conflict {
                id: view.id,
                phase: view.phase,
                what: "cancel it first".into(),
            });
        }
        if let Ok(mut r) = self.runs.lock() {
            r.remove(id);
        }
        store::remove(&self.state, id).map_err(|e| RunError::Io(e.to_string()))
    }

    /// A finished run's report: JSON, Markdown or text.
    pub fn report(&self, id: &str, format: store::ReportFormat) -> Result<String, RunError> {
        let view = self.get(id)?.view(false);
        if view.phase != RunPhase::Succeeded {
            return Err(RunError::Conflict {
                id: view.id,
                phase: view.phase,
                what: if view.phase.is_final() {
                    "it ended without a report (see its error)".into()
                } else {
                    "it has no report yet".into()
                },
            });
        }
        store::read_report(&self.state, id, format).map_err(|e| RunError::Io(e.to_string()))
    }

    /// Refuses new runs, cancels the running ones and waits (up to `grace`) for their forks to be removed.
    pub async fn shutdown(&self, grace: Duration) {
        self.closed.cancel();
        let runs: Vec<Arc<Run>> = self
            .runs
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        let mut tasks = Vec::new();
        for run in runs {
            run.cancel.cancel();
            if let Some(t) = run.task.lock().ok().and_then(|mut t| t.take()) {
                tasks.push(t);
            }
        }
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("runs still cleaning up after {grace:?}; leaving them to the next start's sweep");
        }
    }
}

pub use store::ReportFormat;

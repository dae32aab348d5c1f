//! The dry-run: check the sandbox is current, fork it, replay production's write stream into the fork, run the
//! migration statement by statement while a lock sampler and read probes watch, keep replaying for a window after
//! it, then measure what production would have felt and give a verdict.
//!
//! ```text
//! request ─ validate ─ [wait for the schedule] ─ gate ─ fork ─ warm-up ─ migration ─ after window ─ stop
//!         ─ verification ─ rollback proof ─ findings ─ verdict ─ forks removed
//! ```
//!
//! The command line and the agent's API both build a [`DryRunRequest`] and call [`execute`]; cancellation (Ctrl-C,
//! `POST /v1/dryruns/{id}/cancel`, SIGTERM) removes the run's forks and capture slots.

mod blocked;
pub mod config;
mod findings;
pub mod gate;
pub(crate) mod inputs;
mod measure;
pub mod progress;
mod recorded;
pub mod request;

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use progress::{Progress, RunPhase};
pub use request::{DryRunRequest, RequestError, ScheduleSpec, SimulatedReader, SqlText};

use crate::error::{Classify, ErrorKind};
use crate::fork::{self, ForkError, ForkOptions, Strategy};
use crate::migrate::PlanError;
use crate::pg::PgError;
use crate::replay::live::ReplayError;
use crate::report::{DryRunReport, Thresholds};
use crate::sandbox::{SandboxState, StateDir};
use crate::schedule::Schedule;
use crate::source::SandboxName;

/// Errors that stop a dry-run before it can report.
#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    #[error("{file}: {source}")]
    Plan {
        file: String,
        #[source]
        source: PlanError,
    },
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(
        "sandbox {sandbox} is not current enough to rehearse on: {reason} (state {state:?}, lag {lag}); fix: {fix}"
    )]
    NotCurrent {
        sandbox: String,
        state: SandboxState,
        lag: String,
        reason: String,
        fix: String,
    },
    #[error(transparent)]
    Schedule(#[from] crate::schedule::ScheduleError),
    #[error("cancelled; the run's forks and capture slots were removed")]
    Cancelled,
    #[error(transparent)]
    Fork(#[from] ForkError),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(transparent)]
    Recording(#[from] crate::recording::RecordingError),
}

impl Classify for DryRunError {
    fn kind(&self) -> ErrorKind {
        match self {
            DryRunError::Plan { .. } | DryRunError::Request(_) | DryRunError::Schedule(_) => ErrorKind::Invalid,
            DryRunError::NotCurrent { .. } => ErrorKind::NotReady,
            DryRunError::Cancelled => ErrorKind::Cancelled,
            DryRunError::Fork(e) => e.kind(),
            DryRunError::Pg(e) => e.kind(),
            DryRunError::Replay(_) => ErrorKind::Internal,
            DryRunError::Recording(e) => e.kind(),
        }
    }
}

/// SQL and the name reports use for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationText {
    pub name: String,
    pub sql: String,
}

/// A validated dry-run (from [`DryRunRequest::validate`]).
#[derive(Debug, Clone)]
pub struct DryRunOptions {
    pub sandbox: SandboxName,
    pub up: MigrationText,
    /// The down-migration, for the rollback proof.
    pub down: Option<MigrationText>,
    /// User checks run on the migrated fork and the control twin.
    pub checks: Option<MigrationText>,
    /// Fork a control twin and compare (default); off for a faster run without verification.
    pub verify: bool,
    pub single_transaction: bool,
    pub warmup: Duration,
    pub after: Duration,
    pub workers: usize,
    pub strategy: Option<Strategy>,
    /// The fork's name (the control twin's is derived from it): known before the run, so that a cancelled run
    /// can be cleaned up.
    pub fork_name: SandboxName,
    pub keep_fork: bool,
    pub statement_timeout: Option<Duration>,
    /// The whole run's deadline (fork to report).
    pub deadline: Duration,
    pub sample_interval: Duration,
    pub thresholds: Thresholds,
    /// Simulated long readers: production's reads are not in the WAL, so a report query or an idle-in-transaction
    /// session that production has at the migration's hour is stood in for by a session on the migrated fork that
    /// holds ACCESS SHARE on `table` from just before the migration for the given time.
    pub long_readers: Vec<(String, Duration)>,
    /// A sandbox lagging more than this behind its source is refused.
    pub max_sandbox_lag: Duration,
    /// Run on a recording instead of the live stream.
    pub recorded: Option<Recorded>,
}

/// A dry-run on a recording: its start point forked, its stream replayed at `speed`, the migration `migrate_at`
/// into its window (recorded time).
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub name: SandboxName,
    pub speed: crate::replay::Speed,
    pub migrate_at: Duration,
}

/// Runs a dry-run: waits for `schedule`, checks the sandbox is current, forks, measures, reports. The forks are
/// removed afterwards unless `keep_fork`, also on errors; on `cancel` (at any point) the run stops and its forks
/// and capture slots are removed.
pub async fn execute(
    state: &StateDir,
    opts: &DryRunOptions,
    schedule: &Schedule,
    progress: &dyn Progress,
    cancel: &CancellationToken,
) -> Result<DryRunReport, DryRunError> {
    let inputs = inputs::Inputs::parse(opts)?;
    if !matches!(schedule, Schedule::Now) {
        progress.phase(RunPhase::Scheduled);
        let now = jiff::Zoned::now();
        let upcoming = schedule.upcoming(&now, 3)?;
        let list: Vec<String> = upcoming.iter().map(ToString::to_string).collect();
        progress.say(&format!("scheduled; next starts: {}", list.join(", ")));
        if let Some(first) = upcoming.first() {
            tokio::select! {
                _ = crate::schedule::wait_until(first) => {}
                _ = cancel.cancelled() => return Err(DryRunError::Cancelled),
            }
        }
    }
    // One trace per run, from the fork to the report (a span per phase below it).
    let span = tracing::info_span!(
        "dryrun",
        sandbox = %opts.sandbox,
        migration = %opts.up.name,
        fork = %opts.fork_name,
        verdict = tracing::field::Empty,
    );
    let trace = crate::telemetry::trace_id(&span);
    if let Some(t) = &trace {
        progress.traced(t);
    }
    let result = tokio::select! {
        result = run(state, opts, &inputs, progress).instrument(span.clone()) => result,
        _ = cancel.cancelled() => Err(DryRunError::Cancelled),
    };
    let result = result.map(|mut report| {
        report.trace_id = trace;
        span.record("verdict", report.verdict.result.as_str());
        report
    });
    if matches!(result, Err(DryRunError::Cancelled)) {
        progress.say("cancelled; removing the forks and their capture slots");
        remove_forks(state, opts, progress).await;
    }
    result
}

async fn run(
    state: &StateDir,
    opts: &DryRunOptions,
    inputs: &inputs::Inputs,
    progress: &dyn Progress,
) -> Result<DryRunReport, DryRunError> {
    progress.phase(RunPhase::Forking);
    let deadline = Instant::now() + opts.deadline;
    let fork_opts = ForkOptions {
        sandbox: opts.sandbox.clone(),
        name: Some(opts.fork_name.clone()),
        strategy: opts.strategy,
        ttl: opts.deadline + Duration::from_secs(3600),
        // A dry-run's forks die with the dry-run (kept forks live to their TTL).
        owner_pid: (!opts.keep_fork).then(std::process::id),
    };
    let say = |line: &str| progress.say(line);
    let recording = match &opts.recorded {
        Some(r) => Some(recorded::check(state, opts, r)?),
        None => None,
    };
    let (lag, (fork_meta, control)) = match &recording {
        Some(rec) => (
            gate::SandboxLag::none(),
            recorded::fork(state, opts, &fork_opts, rec, &say)
                .instrument(tracing::info_span!("fork", twins = opts.verify, recording = %rec.name))
                .await?,
        ),
        None => {
            let lag = gate::check(state, &opts.sandbox, opts.max_sandbox_lag).await?;
            let forks = async {
                if opts.verify {
                    let names = (opts.fork_name.clone(), control_name(&opts.fork_name));
                    let (a, b) = fork::create_twins(state, &fork_opts, names, &say).await?;
                    Ok::<_, DryRunError>((a, Some(b)))
                } else {
                    Ok((fork::create(state, &fork_opts, &say).await?, None))
                }
            }
            .instrument(tracing::info_span!("fork", twins = opts.verify))
            .await?;
            (lag, forks)
        }
    };
    let measured = measure::Run {
        state,
        opts,
        inputs,
        fork: &fork_meta,
        control: control.as_ref(),
        deadline,
        progress,
        lag,
        recording: recording.as_ref(),
    };
    let result = measured.measure().await;
    if opts.keep_fork {
        for f in std::iter::once(&fork_meta).chain(control.iter()) {
            progress.say(&format!(
                "fork {0} kept for inspection; remove it with: understudy fork delete {0}",
                f.name
            ));
        }
    } else {
        remove_forks(state, opts, progress).await;
    }
    result
}

/// Removes a run's fork and control twin (and their capture slots), whatever state they are in.
async fn remove_forks(state: &StateDir, opts: &DryRunOptions, progress: &dyn Progress) {
    for name in [opts.fork_name.clone(), control_name(&opts.fork_name)] {
        match fork::delete(state, &name).await {
            Ok(()) | Err(ForkError::NotFound(_)) => {}
            Err(e) => progress.say(&format!("warning: could not remove fork {name}: {e}")),
        }
    }
}

/// The name of a new dry-run's fork: `dryrun-<sandbox>-<6 hex digits>` (or `<sandbox>-<6 hex digits>` when that
/// is too long); its control twin's is [`control_name`].
pub fn fork_name(sandbox: &SandboxName) -> SandboxName {
    let base = fork::default_name(sandbox).unwrap_or_else(|_| sandbox.clone());
    SandboxName::parse(&format!("dryrun-{}", base.as_str())).unwrap_or(base)
}

/// The control twin's name for a fork.
pub fn control_name(fork: &SandboxName) -> SandboxName {
    let base: String = fork.as_str().chars().take(35).collect();
    SandboxName::parse(&format!("{}-ctl", base.trim_end_matches('-'))).unwrap_or_else(|_| fork.clone())
}

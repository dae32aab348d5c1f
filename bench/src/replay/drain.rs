//! Steps 2 to 4 of `understudy-bench replay`: the backlog recorded while pgbench runs unthrottled, then drained
//! into a fork of the recording's start point per worker count at `--speed max`, each fork compared with the
//! sandbox (method: the doc comment of `replay/mod.rs`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use understudy::fork::{self, ForkMeta, ForkOptions};
use understudy::recording::{self, RecordOptions, RecordingMeta};
use understudy::replay::Speed;
use understudy::replay::live::{LiveReplay, Stopped};
use understudy::sandbox::{SandboxMeta, StateDir};
use understudy::source::SandboxName;

use super::{
    CATCH_UP_TIMEOUT, DRAIN_LIMIT, FORK_TTL, Fidelity, RECORD_MARGIN, RECORDING, SourceRun, WORKERS, compare,
    complaints, cpu, failures, source_run,
};
use crate::lab::Lab;
use crate::table::{Table, secs};
use crate::yes_no;

/// Replays the recording into a fresh fork of its start point per worker count, compares it with the sandbox and
/// deletes it; stops (after printing) at the first failed check.
pub(super) async fn drains(
    lab: &Lab,
    state: &StateDir,
    meta: &SandboxMeta,
    rec: &RecordingMeta,
    backlog: i64,
    max_tps: f64,
) -> Result<Vec<Drain>> {
    let start = fork::list(state)
        .into_iter()
        .find(|f| f.name == rec.fork)
        .with_context(|| format!("recording {}'s start point (fork {}) is gone", rec.name, rec.fork))?;
    let mut drains = Vec::new();
    for workers in WORKERS {
        let name = SandboxName::parse(&format!("bench-replay-w{workers}"))?;
        let opts = ForkOptions {
            sandbox: meta.name.clone(),
            name: Some(name.clone()),
            strategy: None,
            ttl: FORK_TTL,
            owner_pid: None,
        };
        eprintln!("3. fork {name} of the start point ...");
        let say = |line: &str| eprintln!("    {line}");
        let made = fork::clone_stopped(state, &start, &opts, std::slice::from_ref(&name), &say)
            .await
            .with_context(|| format!("cloning the start point into {name}"))?;
        let f = made.first().context("no fork was made of the start point")?;
        let d = drain(lab, state, meta, rec, f, workers).await;
        fork::delete(state, &f.name)
            .await
            .with_context(|| format!("deleting fork {}", f.name))?;
        let d = d?;
        let problem = d.problem(backlog);
        drains.push(d);
        if let Some(problem) = problem {
            print!("{}", drain_table(&drains, backlog, max_tps).render());
            bail!(problem);
        }
    }
    Ok(drains)
}

/// Records the sandbox's stream while an unthrottled pgbench runs on the source: the recording starts (its fork
/// made), then pgbench runs `seconds`, and the window ends [`RECORD_MARGIN`] after it, by which time the sandbox
/// has applied the run (checked by the caller against the recording's transactions).
pub(super) async fn record_backlog(
    lab: &Lab,
    state: &StateDir,
    meta: &SandboxMeta,
    seconds: u32,
) -> Result<(SourceRun, RecordingMeta)> {
    let name = SandboxName::parse(RECORDING)?;
    let opts = RecordOptions {
        sandbox: meta.name.clone(),
        name: Some(name.clone()),
        window: Duration::from_secs(u64::from(seconds)) + RECORD_MARGIN,
        ttl: FORK_TTL,
    };
    let task_state = state.clone();
    let taking = tokio::spawn(async move {
        let say = |line: &str| eprintln!("    {line}");
        recording::take(&task_state, &opts, &say).await
    });
    let started = Instant::now();
    while !recording::list(state).iter().any(|r| r.name == name) {
        if taking.is_finished() || started.elapsed() > CATCH_UP_TIMEOUT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = if taking.is_finished() {
        None
    } else {
        Some(source_run(lab, meta, seconds, &[]).await)
    };
    let rec = taking
        .await
        .context("the recording task")?
        .context("recording the backlog")?;
    let run = run.context("the recording ended before its window started")??;
    Ok((run, rec))
}

pub(super) struct Drain {
    pub(super) workers: usize,
    pub(super) stopped: Stopped,
    pub(super) seconds: f64,
    /// From the start to the first record's start (connecting, the first decoded batch).
    pub(super) first_write: Option<f64>,
    pub(super) fidelity: Fidelity,
    pub(super) other: f64,
}

async fn drain(
    lab: &Lab,
    state: &StateDir,
    meta: &SandboxMeta,
    rec: &RecordingMeta,
    fork: &ForkMeta,
    workers: usize,
) -> Result<Drain> {
    let (_, stream) = recording::open(state, &rec.name).context("opening the recording")?;
    eprintln!(
        "   replaying {} into {} at --speed max ({workers} worker(s)) ...",
        rec.name, fork.name
    );
    let other = lab.noise.foreign_seconds();
    let started = Instant::now();
    let mut replay = LiveReplay::start_recorded(stream, &fork.conninfo(meta), workers, Speed::Max)
        .await
        .context("starting the replay")?;
    replay.wait_ended().await;
    let stopped = replay
        .stop_at(rec.end_lsn, DRAIN_LIMIT)
        .await
        .context("draining the replay")?;
    let seconds = started.elapsed().as_secs_f64();
    let other = lab.noise.foreign_seconds() - other;
    let first = stopped.records.iter().map(|r| r.start).min();
    let first_write = first.map(|s| (s - started).as_secs_f64());
    let (records, took) = (stopped.records.len(), secs(seconds));
    eprintln!("   {records} transactions in {took}; comparing with the sandbox ...");
    let fidelity = compare(meta, fork).await?;
    Ok(Drain {
        workers,
        stopped,
        seconds,
        first_write,
        fidelity,
        other,
    })
}

impl Drain {
    pub(super) fn tps(&self) -> f64 {
        self.stopped.records.len() as f64 / self.seconds.max(1e-9)
    }

    pub(super) fn problem(&self, backlog: i64) -> Option<String> {
        let c = complaints(&self.stopped, backlog, &self.fidelity);
        (!c.is_empty()).then(|| format!("the fork drained with {} worker(s): {}", self.workers, c.join("; ")))
    }
}

pub(super) fn drain_table(drains: &[Drain], backlog: i64, max_tps: f64) -> Table {
    let mut t = Table::new(
        &format!("3. Draining the backlog ({backlog} transactions) into a fork, per replay worker count; fidelity"),
        &[
            "workers",
            "transactions",
            "drain time",
            "first write after",
            "drain rate",
            "× source max (target ≥ 3)",
            "failed / unapplied",
            "fork = sandbox (checksums, rows)",
            "other CPU",
        ],
    );
    for d in drains {
        t.row([
            d.workers.to_string(),
            d.stopped.records.len().to_string(),
            secs(d.seconds),
            d.first_write.map(secs).unwrap_or_else(|| "-".into()),
            format!("{:.1} tps", d.tps()),
            format!("{:.2}", d.tps() / max_tps.max(1e-9)),
            format!("{} / {}", failures(&d.stopped).0, d.stopped.unapplied),
            format!("{} ({})", yes_no(d.fidelity.equal), d.fidelity.rows),
            cpu(d.other),
        ]);
    }
    t
}

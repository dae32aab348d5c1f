//! The dry-run: fork the sandbox, replay production's write stream into the fork, run the migration statement by
//! statement while a lock sampler and read probes watch, keep replaying for a window after it, then measure what
//! production would have felt and give a verdict.
//!
//! ```text
//! fork ─ replay starts ─ warm-up window (baseline latency) ─ migration (timed, sampled) ─ after window ─ stop
//! ```

pub mod config;
pub mod report;
pub mod verification;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::fork::{self, ForkError, ForkOptions, Strategy};
use crate::locks::{self, Sampler};
use crate::migrate::{self, Plan, PlanError};
use crate::pg::connect::connect_plain;
use crate::pg::{PgError, quote_ident};
use crate::replay::live::{LiveConfig, LiveReplay, ReplayError, WriteRecord};
use crate::sandbox::{SandboxMeta, StateDir};
use crate::source::SandboxName;
use report::{
    DryRunReport, FailureGroup, Finding, ForkSummary, Latency, LocksSummary, MigrationReport, Percentiles, ReadProbe,
    Severity, StatementReport, Verdict, VerdictReport, Windows, WritesReport,
};

/// Errors that stop a dry-run before it can report.
#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    #[error("{file}: {source}")]
    Plan {
        file: String,
        #[source]
        source: PlanError,
    },
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fork(#[from] ForkError),
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

/// Limits that turn measurements into a verdict.
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// Replayed writes that may fail on the new schema (default 0).
    pub max_failed_writes: usize,
    /// Replayed writes that may wait behind the migration before the verdict is `warn` (default 0).
    pub max_blocked_writes: usize,
    /// The longest a write may wait behind the migration before the verdict is `fail` (default 1 s).
    pub max_lock_wait: Duration,
    /// The longest the migration may run before the verdict is `fail` (default none).
    pub max_duration: Option<Duration>,
    /// What an untested rollback does to the verdict (default warn).
    pub rollback: config::RollbackPolicy,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_failed_writes: 0,
            max_blocked_writes: 0,
            max_lock_wait: Duration::from_secs(1),
            max_duration: None,
            rollback: config::RollbackPolicy::Warn,
        }
    }
}

/// What `dry-run` needs.
#[derive(Debug, Clone)]
pub struct DryRunOptions {
    pub sandbox: SandboxName,
    pub up: PathBuf,
    /// The down-migration, for the rollback proof.
    pub down: Option<PathBuf>,
    /// User checks run on the migrated fork and the control twin.
    pub checks: Option<PathBuf>,
    /// Fork a control twin and compare (default); off for a faster run without verification.
    pub verify: bool,
    pub single_transaction: bool,
    pub warmup: Duration,
    pub after: Duration,
    pub workers: usize,
    pub strategy: Option<Strategy>,
    /// The fork's name (chosen by the caller so that an interrupted run can be cleaned up).
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
}

/// Runs a dry-run and returns its report. The forks are removed afterwards unless `keep_fork`, also on errors.
pub async fn run(
    state: &StateDir,
    opts: &DryRunOptions,
    say: &(dyn Fn(&str) + Sync),
) -> Result<DryRunReport, DryRunError> {
    let inputs = Inputs::read(opts)?;
    let run_started = Instant::now();
    let deadline = run_started + opts.deadline;
    let fork_opts = ForkOptions {
        sandbox: opts.sandbox.clone(),
        name: Some(opts.fork_name.clone()),
        strategy: opts.strategy,
        ttl: opts.deadline + Duration::from_secs(3600),
        // A dry-run's forks die with the dry-run (kept forks live to their TTL).
        owner_pid: (!opts.keep_fork).then(std::process::id),
    };
    let (fork_meta, control) = if opts.verify {
        let names = (opts.fork_name.clone(), control_name(&opts.fork_name));
        let (a, b) = fork::create_twins(state, &fork_opts, names, say).await?;
        (a, Some(b))
    } else {
        (fork::create(state, &fork_opts, say).await?, None)
    };
    let result = measure(state, opts, &inputs, &fork_meta, control.as_ref(), deadline, say).await;
    for f in std::iter::once(&fork_meta).chain(control.iter()) {
        if !opts.keep_fork {
            if let Err(e) = fork::delete(state, &f.name).await {
                say(&format!("warning: could not remove fork {}: {e}", f.name));
            }
        } else {
            say(&format!(
                "fork {0} kept for inspection; remove it with: understudy fork delete {0}",
                f.name
            ));
        }
    }
    result
}

/// The control twin's name for a fork.
pub fn control_name(fork: &SandboxName) -> SandboxName {
    let base: String = fork.as_str().chars().take(35).collect();
    SandboxName::parse(&format!("{}-ctl", base.trim_end_matches('-'))).unwrap_or_else(|_| fork.clone())
}

/// The files of a dry-run, read and checked before anything is forked.
struct Inputs {
    file: String,
    text: String,
    plan: Plan,
    down: Option<(String, Plan)>,
    checks: Vec<(String, migrate::Statement)>,
}

impl Inputs {
    fn read(opts: &DryRunOptions) -> Result<Self, DryRunError> {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| DryRunError::Read {
                file: path.display().to_string(),
                source,
            })
        };
        let file = opts.up.display().to_string();
        let text = read(&opts.up)?;
        let plan = Plan::parse(&text, opts.single_transaction).map_err(|source| DryRunError::Plan {
            file: file.clone(),
            source,
        })?;
        let down = match &opts.down {
            Some(path) => {
                let name = path.display().to_string();
                let plan = Plan::parse(&read(path)?, opts.single_transaction).map_err(|source| DryRunError::Plan {
                    file: name.clone(),
                    source,
                })?;
                Some((name, plan))
            }
            None => None,
        };
        let checks = match &opts.checks {
            Some(path) => crate::verify::checks::parse(&read(path)?).map_err(|e| DryRunError::Plan {
                file: path.display().to_string(),
                source: PlanError::Split(e),
            })?,
            None => Vec::new(),
        };
        Ok(Inputs {
            file,
            text,
            plan,
            down,
            checks,
        })
    }
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    state: &StateDir,
    opts: &DryRunOptions,
    inputs: &Inputs,
    fork_meta: &fork::ForkMeta,
    control: Option<&fork::ForkMeta>,
    deadline: Instant,
    say: &(dyn Fn(&str) + Sync),
) -> Result<DryRunReport, DryRunError> {
    let plan = &inputs.plan;
    let file = inputs.file.as_str();
    let started_at = jiff::Timestamp::now().to_string();
    let sandbox = SandboxMeta::load(&state.sandbox_dir(&opts.sandbox)).map_err(ForkError::from)?;
    let fork_conninfo = fork_meta.conninfo(&sandbox);
    let sandbox_conninfo = format!(
        "host={} port={} user=postgres dbname={}",
        sandbox.cluster.socket_dir.display(),
        sandbox.cluster.port,
        sandbox.database
    );
    // Where each twin's own changes begin, read before anything writes on them: verification hashes only what
    // changed since.
    let control_conninfo = control.map(|c| c.conninfo(&sandbox));
    // The sessions stay open (idle) for the comparison.
    let verifiers = match &control_conninfo {
        Some(conninfo) => {
            let a = connect_plain(&fork_conninfo, "understudy-verify").await?;
            let b = connect_plain(conninfo, "understudy-verify").await?;
            let since = crate::verify::data::Since {
                a: crate::verify::data::next_xid(&a).await?,
                b: crate::verify::data::next_xid(&b).await?,
            };
            Some((a, b, since))
        }
        None => None,
    };
    let replay = LiveReplay::start(&LiveConfig {
        sandbox_conninfo: sandbox_conninfo.clone(),
        capture_slot: fork_meta.capture_slot.clone(),
        publication: fork::CAPTURE_PUBLICATION.into(),
        fork_conninfo: fork_conninfo.clone(),
        workers: opts.workers,
        poll_interval: Duration::from_millis(20),
    })
    .await?;
    let control_replay = match (control, &control_conninfo) {
        (Some(c), Some(conninfo)) => Some(
            LiveReplay::start(&LiveConfig {
                sandbox_conninfo: sandbox_conninfo.clone(),
                capture_slot: c.capture_slot.clone(),
                publication: fork::CAPTURE_PUBLICATION.into(),
                fork_conninfo: conninfo.clone(),
                workers: opts.workers,
                poll_interval: Duration::from_millis(20),
            })
            .await?,
        ),
        _ => None,
    };
    let sampler = Sampler::start(
        connect_plain(&fork_conninfo, "understudy-locks").await?,
        opts.sample_interval,
    );

    say(&format!(
        "replaying production's writes into fork {}; warm-up {:?}",
        fork_meta.name, opts.warmup
    ));
    let warmup_started = Instant::now();
    // The data pre-flight runs on the control twin (the same data) during the warm-up.
    let preflight_conninfo = control_conninfo.clone().unwrap_or_else(|| fork_conninfo.clone());
    let preflight = {
        let statements = plan.statements.clone();
        tokio::spawn(async move {
            match connect_plain(&preflight_conninfo, "understudy-preflight").await {
                Ok(c) => crate::verify::preflight::run(&c, &statements).await,
                Err(_) => Vec::new(),
            }
        })
    };
    tokio::time::sleep(opts.warmup).await;
    let preflight = preflight.await.unwrap_or_default();
    for p in &preflight {
        say(&format!("pre-flight: line {}: {}", p.line, p.message));
    }

    // Read probes on the tables the migration names.
    let targets: Vec<String> = {
        let mut t: Vec<String> = plan
            .statements
            .iter()
            .flat_map(|s| migrate::target_tables(&s.sql))
            .collect();
        t.dedup();
        t
    };
    let probes_stop = Arc::new(AtomicBool::new(false));
    let mut probes: Vec<(String, JoinHandle<Vec<f64>>)> = Vec::new();
    for table in &targets {
        let client = connect_plain(&fork_conninfo, "understudy-probe").await?;
        let stop = Arc::clone(&probes_stop);
        let sql = format!(
            "SELECT 1 FROM {} LIMIT 1",
            table.split('.').map(quote_ident).collect::<Vec<_>>().join(".")
        );
        probes.push((table.clone(), tokio::spawn(probe(client, sql, stop))));
    }

    let mut readers = Vec::new();
    for (table, hold) in &opts.long_readers {
        let reader = connect_plain(&fork_conninfo, "simulated-long-reader").await?;
        let sql = format!(
            "BEGIN; SELECT 1 FROM {} LIMIT 1",
            table.split('.').map(quote_ident).collect::<Vec<_>>().join(".")
        );
        reader
            .batch_execute(&sql)
            .await
            .map_err(PgError::sql(format!("starting the simulated reader on {table}")))?;
        let hold = *hold;
        readers.push(tokio::spawn(async move {
            tokio::time::sleep(hold).await;
            let _ = reader.batch_execute("COMMIT").await;
        }));
    }
    let migration_client = connect_plain(&fork_conninfo, "understudy-migration").await?;
    let pid: i32 = migration_client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(PgError::sql("migration session"))?
        .get(0);
    say(&format!("running {file} ({} statement(s))", plan.statements.len()));
    let migration_started = Instant::now();
    let outcome = migrate::run(&migration_client, pid, plan, opts.statement_timeout, Some(deadline)).await;
    let migration_ended = Instant::now();
    say(&format!(
        "migration {} in {:.0} ms; replaying the after window {:?}",
        if outcome.ok { "finished" } else { "FAILED" },
        outcome.duration_ms,
        opts.after
    ));
    let after_sleep = opts.after.min(deadline.saturating_duration_since(Instant::now()));
    tokio::time::sleep(after_sleep).await;
    let after_ended = Instant::now();
    for r in readers {
        let _ = r.await;
    }

    probes_stop.store(true, Ordering::Relaxed);
    let mut reads = Vec::new();
    for (table, handle) in probes {
        let durations = handle.await.unwrap_or_default();
        reads.push(ReadProbe {
            table,
            probes: durations.len(),
            max_ms: durations.iter().copied().fold(0.0, f64::max),
            blocked_ms: durations.iter().filter(|d| **d > 100.0).sum(),
        });
    }
    let unapplied_before_stop = replay.backlog();
    let worker_pids = replay.worker_pids.clone();
    // Both twins stop at the same point of the stream: everything the sandbox committed before `upto`. The readers
    // are held first, so that no read in flight can return a transaction from after `upto`.
    let mut replay = replay;
    let mut control_replay = control_replay;
    match control_replay.as_mut() {
        Some(c) => {
            tokio::join!(replay.hold(), c.hold());
        }
        None => replay.hold().await,
    }
    let sandbox_db = connect_plain(&sandbox_conninfo, "understudy-dryrun").await?;
    sandbox_db
        .batch_execute("SET synchronous_commit = on; SELECT pg_current_xact_id();")
        .await
        .map_err(PgError::sql("flushing the sandbox's WAL"))?;
    let upto: String = sandbox_db
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await
        .map_err(PgError::sql("reading the sandbox's WAL position"))?
        .get(0);
    let upto: crate::lsn::Lsn = upto
        .parse()
        .map_err(|e: crate::lsn::ParseLsnError| PgError::Config(e.to_string()))?;
    let (records, control_records) = tokio::join!(replay.stop_at(upto, Duration::from_secs(60)), async {
        match control_replay {
            Some(r) => r.stop_at(upto, Duration::from_secs(60)).await.map(Some),
            None => Ok(None),
        }
    });
    let records = records?;
    let control_records = control_records?;

    let (samples, rounds) = sampler.stop().await?;
    let statement_spans: Vec<(usize, Instant, Instant)> = outcome
        .statements
        .iter()
        .filter_map(|s| Some((s.index, s.started_at?, s.ended_at?)))
        .collect();
    let lock_report = locks::analyse(
        &samples,
        rounds,
        opts.sample_interval,
        pid,
        migration_started,
        &statement_spans,
    );

    // Join writes with the episodes in which their worker waited behind the migration.
    let replay_episodes: Vec<&locks::BlockEpisode> = lock_report
        .blocked
        .iter()
        .filter(|e| worker_pids.contains(&e.pid))
        .collect();
    // A write is blocked when its worker waited behind the migration, or when it queued for a worker while the
    // workers were waiting behind the migration (production's connections would each have waited on the lock).
    let blocked_wait = |r: &WriteRecord| -> Option<Duration> {
        // Nothing waits behind the migration before it starts (a sampling round that began just before it
        // carries an earlier timestamp).
        let own = replay_episodes
            .iter()
            .filter(|e| e.pid == r.worker_pid && e.start <= r.end && e.end >= r.start)
            .map(|e| {
                r.end
                    .min(e.end + opts.sample_interval)
                    .saturating_duration_since(r.start.max(e.start).max(migration_started))
            })
            .filter(|w| !w.is_zero())
            .max();
        let queued = replay_episodes
            .iter()
            .filter(|e| {
                e.start <= r.start
                    && r.queued <= e.end
                    && r.start.saturating_duration_since(r.queued) > opts.sample_interval
            })
            .map(|e| {
                r.start
                    .min(e.end + opts.sample_interval)
                    .saturating_duration_since(r.queued.max(e.start).max(migration_started))
            })
            .filter(|w| !w.is_zero())
            .max();
        match (own, queued) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        }
    };
    let mut blocked = 0usize;
    let mut blocked_total = Duration::ZERO;
    let mut blocked_max = Duration::ZERO;
    let mut statements: Vec<StatementReport> = outcome
        .statements
        .iter()
        .map(|s| StatementReport {
            outcome: s.clone(),
            locks: lock_report
                .held
                .iter()
                .filter(|l| l.statement == Some(s.index))
                .cloned()
                .collect(),
            waits: lock_report
                .migration_waits
                .iter()
                .filter(|w| w.statement == Some(s.index))
                .cloned()
                .collect(),
            blocked_writes: 0,
        })
        .collect();
    for r in &records {
        if let Some(w) = blocked_wait(r) {
            blocked += 1;
            blocked_total += w;
            blocked_max = blocked_max.max(w);
            // The statement running while the write waited; the sampler sees a wait up to one interval after the
            // statement ended, so a write that queued in that tail belongs to it too (else: the last statement
            // that had started).
            let span = |s: &StatementReport| s.outcome.started_at.zip(s.outcome.ended_at);
            let during = statements
                .iter()
                .position(|s| span(s).is_some_and(|(a, b)| r.queued <= b + opts.sample_interval && r.end >= a));
            let before = || {
                statements
                    .iter()
                    .rposition(|s| s.outcome.started_at.is_some_and(|a| a <= r.end))
            };
            if let Some(i) = during.or_else(before) {
                statements[i].blocked_writes += 1;
            }
        }
    }
    let window = |from: Instant, to: Instant| {
        Percentiles::of(
            records
                .iter()
                .filter(|r| r.start >= from && r.start < to)
                .map(|r| r.latency().as_secs_f64() * 1000.0)
                .collect(),
        )
    };
    let failures: Vec<_> = records.iter().filter_map(|r| r.failure.clone()).collect();
    let total_secs = after_ended
        .saturating_duration_since(warmup_started)
        .as_secs_f64()
        .max(0.001);
    let writes = WritesReport {
        replayed: records.len(),
        per_second: records.len() as f64 / total_secs,
        failed: failures.len(),
        blocked,
        blocked_total_ms: blocked_total.as_secs_f64() * 1000.0,
        blocked_max_ms: blocked_max.as_secs_f64() * 1000.0,
        latency: Latency {
            before: window(warmup_started, migration_started),
            during: window(migration_started, migration_ended),
            after: window(migration_ended, after_ended + Duration::from_secs(3600)),
        },
        lag: Percentiles::of(records.iter().map(|r| r.lag.as_secs_f64() * 1000.0).collect()),
        failures: FailureGroup::group(&failures),
        unapplied: unapplied_before_stop.saturating_sub(records.len().min(unapplied_before_stop)),
    };
    let mut findings: Vec<Finding> = preflight
        .iter()
        .map(|p| {
            Finding::new(
                &format!("preflight-{}", p.code),
                Severity::Fail,
                p.message.clone(),
                if p.samples.is_empty() {
                    String::new()
                } else {
                    format!("samples: {}", p.samples.join(", "))
                },
                &p.remedy,
            )
            .at(file, p.line)
        })
        .collect();
    let mut verification_report = None;
    let mut rollback = verification::Rollback::default();
    if let (Some((a, b, since)), Some(control_records)) = (&verifiers, &control_records) {
        let since = Some(*since);
        say("comparing the migrated fork with its control twin");
        let control_failed = control_records.iter().filter(|r| r.failure.is_some()).count();
        if control_failed > 0 {
            findings.push(Finding::new(
                "control-replay-failed",
                Severity::Warn,
                format!(
                    "{control_failed} replayed write(s) failed on the control twin too (not caused by the migration)"
                ),
                String::new(),
                "check the sandbox's health (`understudy sandbox status`)",
            ));
        }
        // Both twins must have applied the same transactions; if not, differences between them are not the
        // migration's doing, and the report says so.
        let lsns = |rs: &[WriteRecord]| rs.iter().map(|r| r.end_lsn).collect::<std::collections::BTreeSet<_>>();
        let (la, lb) = (lsns(&records), lsns(control_records));
        let only_a: Vec<String> = la.difference(&lb).take(5).map(ToString::to_string).collect();
        let only_b: Vec<String> = lb.difference(&la).take(5).map(ToString::to_string).collect();
        if !only_a.is_empty() || !only_b.is_empty() {
            findings.push(Finding::new(
                "replay-divergence",
                Severity::Warn,
                format!(
                    "the twins applied different transactions ({} only on the migrated fork, {} only on the control \
                     twin): data differences below may not be the migration's",
                    la.difference(&lb).count(),
                    lb.difference(&la).count()
                ),
                format!("only on the migrated fork: {only_a:?}; only on the control twin: {only_b:?}"),
                "run the dry-run again; report this with the JSON report",
            ));
        }
        let a_nulls = connect_plain(&fork_conninfo, "understudy-verify").await?;
        let mut cache = crate::verify::data::ReferenceCache::default();
        let v = verification::compare(a, &a_nulls, b, &inputs.checks, upto.to_string(), since, &mut cache).await?;
        if let Some((down_file, down_plan)) = &inputs.down
            && outcome.ok
        {
            say(&format!("running {down_file} on the migrated fork (rollback proof)"));
            rollback =
                verification::rollback(a, b, down_file, down_plan, opts.statement_timeout, since, &mut cache).await?;
        }
        findings.extend(verification::findings(&v, &rollback, inputs.down.is_some(), outcome.ok));
        verification_report = Some(v);
    }
    findings.extend(lint_findings(&inputs.text, file, &statements));
    let verdict = judge(&outcome, &statements, &writes, &opts.thresholds, &findings);

    Ok(DryRunReport {
        schema_version: report::SCHEMA_VERSION,
        understudy_version: env!("CARGO_PKG_VERSION").into(),
        sandbox: opts.sandbox.to_string(),
        started_at,
        fork: ForkSummary {
            name: fork_meta.name.to_string(),
            strategy: fork_meta.strategy.as_str().into(),
            fork_point: fork_meta.lsn.map(|l| l.to_string()).unwrap_or_default(),
            pause_ms: fork_meta.timings.pause_ms,
            ready_ms: fork_meta.timings.total_ms,
            kept: opts.keep_fork,
        },
        windows: Windows {
            warmup_ms: (migration_started - warmup_started).as_secs_f64() * 1000.0,
            migration_ms: (migration_ended - migration_started).as_secs_f64() * 1000.0,
            after_ms: (after_ended - migration_ended).as_secs_f64() * 1000.0,
        },
        migration: MigrationReport {
            file: file.to_string(),
            ok: outcome.ok,
            duration_ms: outcome.duration_ms,
            skipped: outcome.skipped,
            statements,
        },
        writes,
        locks: LocksSummary {
            sample_interval_ms: lock_report.interval_ms,
            samples: lock_report.samples,
            longest_queue: lock_report.longest_queue,
            longest_queue_relation: lock_report.longest_queue_relation.clone(),
            blocked_sessions: lock_report.blocked.clone(),
        },
        reads,
        preflight,
        verification: verification_report,
        rollback,
        findings,
        verdict,
    })
}

fn judge(
    outcome: &migrate::MigrationOutcome,
    statements: &[StatementReport],
    writes: &WritesReport,
    t: &Thresholds,
    findings: &[Finding],
) -> VerdictReport {
    let mut result = Verdict::Pass;
    let mut reasons = Vec::new();
    if let Some(s) = outcome.statements.iter().find(|s| !s.ok) {
        result = Verdict::Fail;
        let blockers: Vec<String> = statements
            .iter()
            .filter(|r| r.outcome.index == s.index)
            .flat_map(|r| r.waits.iter().flat_map(|w| w.blockers.iter().cloned()))
            .collect();
        let behind = if s.timed_out && !blockers.is_empty() {
            format!("; it was waiting behind {}", blockers.join(", "))
        } else {
            String::new()
        };
        reasons.push(format!(
            "the migration {} at line {} ({}): {}{behind}",
            if s.timed_out { "timed out" } else { "failed" },
            s.line,
            s.sqlstate.clone().unwrap_or_default(),
            s.error.clone().unwrap_or_default()
        ));
    }
    if writes.failed > t.max_failed_writes {
        result = Verdict::Fail;
        for f in &writes.failures {
            reasons.push(format!(
                "{} {} write(s) on {} failed on the new schema with {}: {}",
                f.count, f.kind, f.table, f.sqlstate, f.message
            ));
        }
    }
    if writes.blocked_max_ms > t.max_lock_wait.as_secs_f64() * 1000.0 {
        result = Verdict::Fail;
        reasons.push(format!(
            "writes waited up to {:.0} ms behind the migration's locks (limit {} ms); {} blocked in all",
            writes.blocked_max_ms,
            t.max_lock_wait.as_millis(),
            writes.blocked
        ));
    } else if writes.blocked > t.max_blocked_writes {
        result = result.max(Verdict::Warn);
        reasons.push(format!(
            "{} write(s) waited behind the migration's locks (max {:.0} ms)",
            writes.blocked, writes.blocked_max_ms
        ));
    }
    if let Some(max) = t.max_duration
        && outcome.duration_ms > max.as_secs_f64() * 1000.0
    {
        result = Verdict::Fail;
        reasons.push(format!(
            "the migration ran {:.1} s, over the limit of {} s",
            outcome.duration_ms / 1000.0,
            max.as_secs()
        ));
    }
    for f in findings.iter().filter(|f| f.severity != Severity::Info) {
        let severity = match (f.code.as_str(), t.rollback) {
            ("rollback-untested", config::RollbackPolicy::Require) => Severity::Fail,
            ("rollback-untested", config::RollbackPolicy::Ignore) => continue,
            _ => f.severity,
        };
        result = result.max(if severity == Severity::Fail {
            Verdict::Fail
        } else {
            Verdict::Warn
        });
        reasons.push(match f.line {
            Some(l) => format!("line {l}: {}", f.title),
            None => f.title.clone(),
        });
    }
    if reasons.is_empty() {
        reasons.push(format!("{} replayed writes, none failed or blocked", writes.replayed));
    }
    VerdictReport { result, reasons }
}

/// squawk's rule hits on the up-migration, each joined to what its statement was measured to do.
fn lint_findings(text: &str, file: &str, statements: &[StatementReport]) -> Vec<Finding> {
    let ms = |v: f64| {
        if v >= 1000.0 {
            format!("{:.1} s", v / 1000.0)
        } else {
            format!("{v:.0} ms")
        }
    };
    crate::lint::lint(text, 15)
        .into_iter()
        .map(|hit| {
            // The statement the hit is in: the last one starting at or before its line.
            let stmt = statements
                .iter()
                .filter(|s| s.outcome.line <= hit.line && s.outcome.line > 0)
                .max_by_key(|s| s.outcome.line);
            let (severity, evidence) = match stmt {
                Some(s) => {
                    let locks: Vec<String> = s
                        .locks
                        .iter()
                        .map(|l| format!("held {} on {} {}", l.mode, l.relation, ms(l.held_ms)))
                        .collect();
                    let mut evidence = format!("measured: ran {}", ms(s.outcome.duration_ms));
                    if !locks.is_empty() {
                        evidence.push_str(&format!(", {}", locks.join(", ")));
                    }
                    evidence.push_str(&format!(", {} write(s) blocked", s.blocked_writes));
                    if !s.outcome.ok {
                        evidence.push_str(&format!(
                            ", failed with {}",
                            s.outcome.sqlstate.clone().unwrap_or_default()
                        ));
                    }
                    let harmful = s.blocked_writes > 0 || !s.outcome.ok;
                    (if harmful { Severity::Warn } else { Severity::Info }, evidence)
                }
                None => (Severity::Warn, "not run (an earlier statement failed)".to_string()),
            };
            Finding::new(
                &format!("lint-{}", hit.rule),
                severity,
                hit.message,
                evidence,
                hit.help.as_deref().unwrap_or(""),
            )
            .at(file, hit.line)
        })
        .collect()
}

/// A read probe: `SELECT 1 FROM t LIMIT 1` in a loop; returns each read's duration in ms.
async fn probe(client: tokio_postgres::Client, sql: String, stop: Arc<AtomicBool>) -> Vec<f64> {
    let mut out = Vec::new();
    let _ = client.batch_execute("SET statement_timeout = '60s'").await;
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        if client.batch_execute(&sql).await.is_err() && client.is_closed() {
            break;
        }
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    out
}

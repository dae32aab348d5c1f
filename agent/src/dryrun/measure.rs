//! The measured part of a dry-run, on forks that exist: replay starts, warm-up window (baseline latency, data
//! pre-flight on the control twin), migration under the lock sampler and read probes, after window, both twins
//! stopped at one LSN, then verification, rollback proof, findings and the verdict.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tracing::Instrument as _;

use super::blocked::{self, Timeline};
use super::gate::SandboxLag;
use super::inputs::Inputs;
use super::{DryRunError, DryRunOptions, Progress, RunPhase, findings};
use crate::fork::{self, ForkError, ForkMeta};
use crate::locks::{self, Sampler};
use crate::lsn::Lsn;
use crate::migrate::{self, MigrationOutcome};
use crate::pg::connect::connect_plain;
use crate::pg::{PgError, quote_ident};
use crate::replay::live::{LiveConfig, LiveReplay};
use crate::report::{self, DryRunReport, ForkSummary, LocksSummary, MigrationReport, ReadProbe, Windows};
use crate::sandbox::{SandboxMeta, StateDir};
use crate::verify::data::{self, Since};
use crate::verify::twins;

/// What a measured run works on.
pub(crate) struct Run<'a> {
    pub state: &'a StateDir,
    pub opts: &'a DryRunOptions,
    pub inputs: &'a Inputs,
    pub fork: &'a ForkMeta,
    pub control: Option<&'a ForkMeta>,
    pub deadline: Instant,
    pub progress: &'a dyn Progress,
    pub lag: SandboxLag,
    /// A run on a recording: its stream is replayed instead of the live capture slots.
    pub recording: Option<&'a crate::recording::RecordingMeta>,
}

/// Sessions kept open (idle) on both twins for the comparison, and where each twin's own changes begin (read
/// before anything writes on them: verification hashes only what changed since).
struct Verifiers {
    a: Client,
    b: Client,
    since: Since,
}

impl Verifiers {
    async fn open(migrated: &str, control: &str) -> Result<Self, DryRunError> {
        let a = connect_plain(migrated, "understudy-verify").await?;
        let b = connect_plain(control, "understudy-verify").await?;
        let since = Since {
            a: data::next_xid(&a).await?,
            b: data::next_xid(&b).await?,
        };
        Ok(Verifiers { a, b, since })
    }
}

/// What the windows measured.
struct Measured {
    preflight: Vec<crate::verify::preflight::PreflightFinding>,
    reads: Vec<ReadProbe>,
    outcome: MigrationOutcome,
    pid: i32,
    timeline: Timeline,
    records: Vec<crate::replay::live::WriteRecord>,
    control_records: Option<Vec<crate::replay::live::WriteRecord>>,
    /// Where both twins stopped (a position of the sandbox's WAL).
    upto: Lsn,
    samples: Vec<locks::LockSample>,
    rounds: usize,
    /// Transactions read but not applied when the replay stopped.
    unapplied: usize,
    worker_pids: Vec<i32>,
}

fn quoted(table: &str) -> String {
    table.split('.').map(quote_ident).collect::<Vec<_>>().join(".")
}

impl Run<'_> {
    fn say(&self, line: &str) {
        self.progress.say(line);
    }

    pub async fn measure(&self) -> Result<DryRunReport, DryRunError> {
        let started_at = jiff::Timestamp::now().to_string();
        let sandbox = SandboxMeta::load(&self.state.sandbox_dir(&self.opts.sandbox)).map_err(ForkError::from)?;
        let fork_conninfo = self.fork.conninfo(&sandbox);
        let control_conninfo = self.control.map(|c| c.conninfo(&sandbox));
        let sandbox_conninfo = format!(
            "host={} port={} user=postgres dbname={}",
            sandbox.cluster.socket_dir.display(),
            sandbox.cluster.port,
            sandbox.database
        );
        let verifiers = match &control_conninfo {
            Some(conninfo) => Some(Verifiers::open(&fork_conninfo, conninfo).await?),
            None => None,
        };
        let m = self
            .windows(&fork_conninfo, control_conninfo.as_deref(), &sandbox_conninfo)
            .await?;

        let lock_report = locks::analyse(
            &m.samples,
            m.rounds,
            self.opts.sample_interval,
            m.pid,
            m.timeline.migration_started,
            &blocked::statement_spans(&m.outcome),
        );
        let mut statements = blocked::statements(&m.outcome, &lock_report);
        let episodes: Vec<&locks::BlockEpisode> = lock_report
            .blocked
            .iter()
            .filter(|e| m.worker_pids.contains(&e.pid))
            .collect();
        let writes = blocked::writes(&m.records, &episodes, &mut statements, &m.timeline, m.unapplied);

        let mut all_findings = findings::preflight(&m.preflight, &self.inputs.file);
        let (verification, rollback) = match (&verifiers, &m.control_records) {
            (Some(v), Some(control_records)) => {
                all_findings.extend(findings::replay_health(&m.records, control_records));
                self.verify(v, &fork_conninfo, m.upto, m.outcome.ok).await?
            }
            _ => (None, twins::Rollback::default()),
        };
        if let Some(v) = &verification {
            all_findings.extend(findings::verification(
                v,
                &rollback,
                self.inputs.down.is_some(),
                m.outcome.ok,
            ));
        }
        all_findings.extend(crate::lint::evidence::findings(
            &self.inputs.text,
            &self.inputs.file,
            &statements,
        ));
        let verdict = report::judge(&m.outcome, &statements, &writes, &self.opts.thresholds, &all_findings);
        let t = &m.timeline;
        Ok(DryRunReport {
            schema_version: report::SCHEMA_VERSION,
            understudy_version: env!("CARGO_PKG_VERSION").into(),
            sandbox: self.opts.sandbox.to_string(),
            started_at,
            trace_id: None,
            fork: self.fork_summary(),
            recording: self
                .recording
                .zip(self.opts.recorded.as_ref())
                .map(|(rec, r)| report::RecordedReplay {
                    name: rec.name.to_string(),
                    speed: r.speed.to_string(),
                    migrate_at_ms: r.migrate_at.as_secs_f64() * 1000.0,
                    window_ms: rec.span().as_secs_f64() * 1000.0,
                    transactions: rec.transactions,
                }),
            subset: sandbox.subset.clone(),
            windows: Windows {
                warmup_ms: (t.migration_started - t.warmup_started).as_secs_f64() * 1000.0,
                migration_ms: (t.migration_ended - t.migration_started).as_secs_f64() * 1000.0,
                after_ms: (t.after_ended - t.migration_ended).as_secs_f64() * 1000.0,
            },
            migration: MigrationReport {
                file: self.inputs.file.clone(),
                ok: m.outcome.ok,
                duration_ms: m.outcome.duration_ms,
                skipped: m.outcome.skipped,
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
            reads: m.reads,
            preflight: m.preflight,
            verification,
            rollback,
            findings: all_findings,
            verdict,
        })
    }

    fn fork_summary(&self) -> ForkSummary {
        ForkSummary {
            name: self.fork.name.to_string(),
            strategy: self.fork.strategy.as_str().into(),
            fork_point: self.fork.lsn.map(|l| l.to_string()).unwrap_or_default(),
            pause_ms: self.fork.timings.pause_ms,
            ready_ms: self.fork.timings.total_ms,
            kept: self.opts.keep_fork,
            sandbox_generation: self.fork.sandbox_generation,
            sandbox_lag_bytes: self.lag.bytes,
            sandbox_lag_seconds: self.lag.seconds,
        }
    }

    /// The replays, the lock sampler, the warm-up, the migration, the after window; then both twins stopped at
    /// one point of the stream.
    async fn windows(
        &self,
        fork_conninfo: &str,
        control_conninfo: Option<&str>,
        sandbox_conninfo: &str,
    ) -> Result<Measured, DryRunError> {
        let replay_of = |slot: &str, target: &str| LiveConfig {
            sandbox_conninfo: sandbox_conninfo.to_string(),
            capture_slot: slot.to_string(),
            publication: fork::CAPTURE_PUBLICATION.into(),
            fork_conninfo: target.to_string(),
            workers: self.opts.workers,
            poll_interval: Duration::from_millis(20),
        };
        let (mut replay, mut control_replay) = match self.recording {
            None => (
                LiveReplay::start(&replay_of(&self.fork.capture_slot, fork_conninfo)).await?,
                match (self.control, control_conninfo) {
                    (Some(c), Some(conninfo)) => Some(LiveReplay::start(&replay_of(&c.capture_slot, conninfo)).await?),
                    _ => None,
                },
            ),
            Some(rec) => (
                self.recorded_replay(rec, fork_conninfo).await?,
                match control_conninfo {
                    Some(conninfo) => Some(self.recorded_replay(rec, conninfo).await?),
                    None => None,
                },
            ),
        };
        let sampler = Sampler::start(
            connect_plain(fork_conninfo, "understudy-locks").await?,
            self.opts.sample_interval,
        );

        self.progress.phase(RunPhase::Replaying);
        let warmup_started = Instant::now();
        let (preflight, watchers) = async {
            let preflight = self
                .warmup(control_conninfo.unwrap_or(fork_conninfo).to_string(), &mut replay)
                .await;
            let watchers = Watchers::start(fork_conninfo, &self.inputs.plan, &self.opts.long_readers).await?;
            Ok::<_, DryRunError>((preflight, watchers))
        }
        .instrument(tracing::info_span!(
            "replay",
            window = "warm-up",
            workers = self.opts.workers
        ))
        .await?;

        self.progress.phase(RunPhase::Migrating);
        let migrate_span = tracing::info_span!(
            "migrate",
            statements = self.inputs.plan.statements.len(),
            ok = tracing::field::Empty
        );
        let (outcome, pid, migration_started, migration_ended, after_ended, reads) = async {
            let (outcome, pid, started, ended) = self.migrate(fork_conninfo).await?;
            let left = self.deadline.saturating_duration_since(Instant::now());
            match self.recording {
                // On a recording the after window is the rest of its stream.
                Some(_) => {
                    let _ = tokio::time::timeout(left, async {
                        replay.wait_ended().await;
                        if let Some(c) = control_replay.as_mut() {
                            c.wait_ended().await;
                        }
                    })
                    .await;
                }
                None => tokio::time::sleep(self.opts.after.min(left)).await,
            }
            let after_ended = Instant::now();
            Ok::<_, DryRunError>((outcome, pid, started, ended, after_ended, watchers.stop().await))
        }
        .instrument(migrate_span.clone())
        .await?;
        migrate_span.record("ok", outcome.ok);
        drop(migrate_span);

        let worker_pids = replay.worker_pids.clone();
        let upto = match self.recording {
            Some(rec) => rec.end_lsn,
            None => hold_twins(&mut replay, control_replay.as_mut(), sandbox_conninfo).await?,
        };
        let (records, control_records) = tokio::join!(replay.stop_at(upto, Duration::from_secs(60)), async {
            match control_replay {
                Some(r) => r.stop_at(upto, Duration::from_secs(60)).await.map(Some),
                None => Ok(None),
            }
        });
        let (samples, rounds) = sampler.stop().await?;
        Ok(Measured {
            preflight,
            reads,
            outcome,
            pid,
            timeline: Timeline {
                warmup_started,
                migration_started,
                migration_ended,
                after_ended,
                sample_interval: self.opts.sample_interval,
            },
            unapplied: records.as_ref().map(|r| r.unapplied).unwrap_or(0),
            records: records?.records,
            control_records: control_records?.map(|r| r.records),
            upto,
            samples,
            rounds,
            worker_pids,
        })
    }

    /// A recording's stream replayed into the fork at `conninfo`.
    async fn recorded_replay(
        &self,
        rec: &crate::recording::RecordingMeta,
        conninfo: &str,
    ) -> Result<LiveReplay, DryRunError> {
        let stream = crate::replay::stream::StreamReader::open(&crate::recording::stream_path(self.state, rec))
            .map_err(crate::replay::live::ReplayError::from)?;
        let speed = self
            .opts
            .recorded
            .as_ref()
            .map(|r| r.speed)
            .unwrap_or(crate::replay::Speed::Times(1.0));
        Ok(LiveReplay::start_recorded(stream, conninfo, self.opts.workers, speed).await?)
    }

    /// The warm-up window (on a recording: until the replay reaches the migration's offset into the window); the
    /// data pre-flight runs meanwhile on `preflight_on` (the control twin: the same data).
    async fn warmup(
        &self,
        preflight_on: String,
        replay: &mut LiveReplay,
    ) -> Vec<crate::verify::preflight::PreflightFinding> {
        match &self.opts.recorded {
            Some(r) => self.say(&format!(
                "replaying recording {} into fork {} at speed {}; the migration starts {} into its window",
                r.name,
                self.fork.name,
                r.speed,
                humantime::format_duration(r.migrate_at)
            )),
            None => self.say(&format!(
                "replaying production's writes into fork {}; warm-up {:?}",
                self.fork.name, self.opts.warmup
            )),
        }
        let statements = self.inputs.plan.statements.clone();
        let subset_source = self.subset_source();
        let preflight = tokio::spawn(async move {
            // On a subset, parents the subset left out are looked up on the source (keys only).
            let source = match subset_source {
                Some(info) => crate::pg::connect::connect_source(&info, "understudy-preflight")
                    .await
                    .ok(),
                None => None,
            };
            match connect_plain(&preflight_on, "understudy-preflight").await {
                Ok(c) => crate::verify::preflight::run(&c, &statements, source.as_ref()).await,
                Err(_) => Vec::new(),
            }
        });
        match &self.opts.recorded {
            Some(r) => replay.wait_offset(r.migrate_at).await,
            None => tokio::time::sleep(self.opts.warmup).await,
        }
        let preflight = preflight.await.unwrap_or_default();
        for p in &preflight {
            self.say(&format!("pre-flight: line {}: {}", p.line, p.message));
        }
        preflight
    }

    /// The source's connection when the sandbox is a subset.
    fn subset_source(&self) -> Option<crate::pg::ConnInfo> {
        let dir = self.state.sandbox_dir(&self.opts.sandbox);
        let meta = SandboxMeta::load(&dir).ok()?;
        meta.subset.as_ref()?;
        crate::sandbox::state::load_source(&dir).ok()
    }

    /// Runs the up-migration on its own session; returns its outcome, the session's pid and when it ran.
    async fn migrate(&self, fork_conninfo: &str) -> Result<(MigrationOutcome, i32, Instant, Instant), DryRunError> {
        let plan = &self.inputs.plan;
        let client = connect_plain(fork_conninfo, "understudy-migration").await?;
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(PgError::sql("migration session"))?
            .get(0);
        self.say(&format!(
            "running {} ({} statement(s))",
            self.inputs.file,
            plan.statements.len()
        ));
        let started = Instant::now();
        let outcome = migrate::run(&client, pid, plan, self.opts.statement_timeout, Some(self.deadline)).await;
        let ended = Instant::now();
        self.say(&format!(
            "migration {} in {:.0} ms; replaying the after window {:?}",
            if outcome.ok { "finished" } else { "FAILED" },
            outcome.duration_ms,
            self.opts.after
        ));
        Ok((outcome, pid, started, ended))
    }

    /// The twins compared, then the rollback proof on the migrated fork.
    async fn verify(
        &self,
        v: &Verifiers,
        fork_conninfo: &str,
        upto: Lsn,
        up_ok: bool,
    ) -> Result<(Option<twins::Verification>, twins::Rollback), DryRunError> {
        self.progress.phase(RunPhase::Verifying);
        self.say("comparing the migrated fork with its control twin");
        let since = Some(v.since);
        let a_nulls = connect_plain(fork_conninfo, "understudy-verify").await?;
        let mut cache = data::ReferenceCache::default();
        let verification = twins::compare(
            &v.a,
            &a_nulls,
            &v.b,
            &self.inputs.checks,
            upto.to_string(),
            since,
            &mut cache,
        )
        .instrument(tracing::info_span!("verify", upto = %upto))
        .await?;
        let mut rollback = twins::Rollback::default();
        if let Some((down_file, down_plan)) = &self.inputs.down
            && up_ok
        {
            self.progress.phase(RunPhase::RollingBack);
            self.say(&format!("running {down_file} on the migrated fork (rollback proof)"));
            rollback = twins::rollback(
                &v.a,
                &v.b,
                down_file,
                down_plan,
                self.opts.statement_timeout,
                since,
                &mut cache,
            )
            .instrument(tracing::info_span!("rollback", file = %down_file))
            .await?;
        }
        Ok((Some(verification), rollback))
    }
}

/// Holds both replays' readers, then takes the sandbox's flushed WAL position: every transaction read so far
/// committed before it, so that both twins stop at the same point of the stream.
async fn hold_twins(
    replay: &mut LiveReplay,
    control: Option<&mut LiveReplay>,
    sandbox_conninfo: &str,
) -> Result<Lsn, DryRunError> {
    match control {
        Some(c) => {
            tokio::join!(replay.hold(), c.hold());
        }
        None => replay.hold().await,
    }
    let sandbox_db = connect_plain(sandbox_conninfo, "understudy-dryrun").await?;
    sandbox_db
        .batch_execute("SET synchronous_commit = on; SELECT pg_current_xact_id();")
        .await
        .map_err(PgError::sql("flushing the sandbox's WAL"))?;
    let upto: String = sandbox_db
        .query_one("SELECT pg_current_wal_flush_lsn()::text", &[])
        .await
        .map_err(PgError::sql("reading the sandbox's WAL position"))?
        .get(0);
    upto.parse()
        .map_err(|e: crate::lsn::ParseLsnError| DryRunError::Pg(PgError::Config(e.to_string())))
}

/// Read probes on the tables the migration names (production's reads are not in the WAL) and the simulated long
/// readers.
struct Watchers {
    stop: Arc<AtomicBool>,
    probes: Vec<(String, JoinHandle<Vec<f64>>)>,
    readers: Vec<JoinHandle<()>>,
}

impl Watchers {
    async fn start(
        fork_conninfo: &str,
        plan: &migrate::Plan,
        long_readers: &[(String, Duration)],
    ) -> Result<Self, DryRunError> {
        let mut targets: Vec<String> = plan
            .statements
            .iter()
            .flat_map(|s| migrate::target_tables(&s.sql))
            .collect();
        targets.dedup();
        let stop = Arc::new(AtomicBool::new(false));
        let mut probes = Vec::new();
        for table in &targets {
            let client = connect_plain(fork_conninfo, "understudy-probe").await?;
            let sql = format!("SELECT 1 FROM {} LIMIT 1", quoted(table));
            probes.push((table.clone(), tokio::spawn(probe(client, sql, Arc::clone(&stop)))));
        }
        let mut readers = Vec::new();
        for (table, hold) in long_readers {
            let reader = connect_plain(fork_conninfo, "simulated-long-reader").await?;
            reader
                .batch_execute(&format!("BEGIN; SELECT 1 FROM {} LIMIT 1", quoted(table)))
                .await
                .map_err(PgError::sql(format!("starting the simulated reader on {table}")))?;
            let hold = *hold;
            readers.push(tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                let _ = reader.batch_execute("COMMIT").await;
            }));
        }
        Ok(Watchers { stop, probes, readers })
    }

    async fn stop(self) -> Vec<ReadProbe> {
        for r in self.readers {
            let _ = r.await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let mut reads = Vec::new();
        for (table, handle) in self.probes {
            let durations = handle.await.unwrap_or_default();
            reads.push(ReadProbe {
                table,
                probes: durations.len(),
                max_ms: durations.iter().copied().fold(0.0, f64::max),
                blocked_ms: durations.iter().filter(|d| **d > 100.0).sum(),
            });
        }
        reads
    }
}

/// A read probe: `SELECT 1 FROM t LIMIT 1` in a loop; returns each read's duration in ms.
async fn probe(client: Client, sql: String, stop: Arc<AtomicBool>) -> Vec<f64> {
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

//! `understudy-bench dryrun`: what one dry-run measures and costs, on a pgbench source with a sandbox following
//! it, under steady `pgbench -c 2 -j 2 -R <rate>` load on the source.
//!
//! ```sh
//! cargo run --release -p understudy-bench -- dryrun --scale 10
//! ```
//!
//! 1. **Replay throughput**: [`understudy::dryrun::execute`] of a no-op migration (`SELECT 1;`) without verification,
//!    warm-up 5 s, after 5 s. The report's `writes.replayed` and `writes.per_second` are set beside the source's
//!    own rate in the same window: every pgbench transaction inserts exactly one `pgbench_history` row, and a task
//!    counts that table on the source every 100 ms; the window starts when the library says it starts replaying
//!    (its progress line) and lasts `windows.warmup_ms + migration_ms + after_ms`. Replay lag p50/p99 is
//!    `writes.lag`.
//! 2. **Lock resolution**: a dry-run of a non-concurrent `CREATE INDEX ... ON pgbench_accounts (abalance)` without
//!    verification; the ShareLock hold time Understudy measured (`migration.statements[0].locks`), the lock
//!    sampler's samples and interval, the blocked replayed writes, and what a poller every 10 s (the DBLab
//!    checker's default) would have seen: probability min(1, hold / 10 s) of sampling the hold at least once, and
//!    its resolution (10 s) against the sampler's interval.
//! 3. **Migration file to verdict**: the wall time of a full dry-run with verification (control twin, rollback
//!    proof with the down-migration), warm-up 2 s, after 2 s; against the manual workflow scripted: `CREATE
//!    DATABASE` on an already running cluster configured like a sandbox cluster, `pg_dump -Fd -j<jobs>` of the
//!    source, `pg_restore -j<jobs>`, `psql -f up.sql`, a check query, `psql -f down.sql`, timed end to end.
//!
//! Everything is removed at the end, also after an error or Ctrl-C: forks, the sandbox (and its slot), the
//! clusters, the working directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use understudy::dryrun::{self, DryRunOptions, MigrationText, Progress, RunPhase};
use understudy::pg::quote_ident;
use understudy::report::{DryRunReport, Thresholds};
use understudy::sandbox::{self, SandboxMeta, StateDir};
use understudy::source::SandboxName;

use crate::DryRunArgs;
use crate::lab::{self, Lab, Machine};
use crate::load::Load;
use crate::pgtool::{self, sql};
use crate::run;
use crate::table::{self, Table, secs};

const POLLER_SECONDS: f64 = 10.0;
pub const FORKS: [&str; 3] = ["bench-noop", "bench-index", "bench-verify"];
const NOOP_SQL: &str = "SELECT 1;\n";
const INDEX_SQL: &str = "CREATE INDEX bench_accounts_abalance ON pgbench_accounts (abalance);\n";
const UP_SQL: &str = "ALTER TABLE pgbench_accounts ADD COLUMN note text;\n";
const DOWN_SQL: &str = "ALTER TABLE pgbench_accounts DROP COLUMN note;\n";
const CHECK_SQL: &str = "SELECT count(*) FROM pgbench_accounts WHERE note IS NULL;\n";

pub async fn command(args: DryRunArgs) -> Result<()> {
    let root = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("understudy-bench-dryrun-{}", std::process::id())));
    let mut lab = Lab::new(root)?;
    let state = lab.sandbox_state();
    let outcome = run::interruptible(run(&args, &mut lab)).await;
    // Forks left by an interrupted dry-run (the library removes them itself when it gets to finish).
    for name in FORKS
        .iter()
        .filter_map(|n| SandboxName::parse(n).ok())
        .flat_map(|n| [dryrun::control_name(&n), n])
    {
        let _ = understudy::fork::delete(&state, &name).await;
    }
    let cleanup = lab.finish(false).await;
    run::conclude(outcome, cleanup)
}

async fn run(args: &DryRunArgs, lab: &mut Lab) -> Result<()> {
    println!("# understudy-bench dryrun");
    let mut setup = Machine::setup_table(
        &lab.bins,
        &format!(
            "understudy-bench dryrun --scale {} --rate {} --jobs {}",
            args.scale, args.rate, args.jobs
        ),
    )
    .await;
    let facts = lab.prepare_source(args.scale).await?;
    setup.row([
        "source",
        &format!(
            "pgbench scale {}: {} (pgbench_accounts {} rows, {})",
            args.scale,
            table::bytes(facts.database_bytes),
            facts.accounts_rows(),
            table::bytes(facts.accounts_bytes),
        ),
    ]);
    lab.start_baseline_cluster().await?;

    let state = lab.sandbox_state();
    let opts = lab.create_options(SandboxName::parse(lab::SANDBOX)?, state.clone(), args.jobs)?;
    eprintln!("creating the sandbox ...");
    let say = |line: &str| eprintln!("    {line}");
    let started = Instant::now();
    let meta = sandbox::create(&opts, &say).await.context("sandbox create")?;
    setup.row(["sandbox create", &secs(started.elapsed().as_secs_f64())]);
    setup.row(["fork strategy", "the library's default (fastest available)"]);
    print!("{}", setup.render());
    let figures = measure(lab, &state, &meta, &Settings::from(args), facts.accounts_rows()).await?;
    for t in &figures.tables {
        print!("{}", t.render());
    }
    Ok(())
}

/// What [`measure`] needs besides the lab and the sandbox.
pub struct Settings {
    /// pgbench -R of the load on the source.
    pub rate: u32,
    /// pg_dump -j / pg_restore -j of the manual workflow.
    pub jobs: u32,
    /// Warm-up and after windows of the throughput and lock dry-runs (the verdict dry-run uses 2 s, or this when
    /// shorter).
    pub window: Duration,
}

impl From<&DryRunArgs> for Settings {
    fn from(args: &DryRunArgs) -> Self {
        Settings {
            rate: args.rate,
            jobs: args.jobs,
            window: Duration::from_secs(5),
        }
    }
}

/// The key figures of [`measure`], with its printed tables.
pub struct Figures {
    pub tables: Vec<Table>,
    /// Replayed transactions per second on the fork / the source's rate in the same window.
    pub replay_ratio: Option<f64>,
    pub replay_per_second: f64,
    pub source_tps: Option<f64>,
    /// The index build's ShareLock hold as Understudy measured it, and the lock sampler's interval.
    pub lock_hold_ms: Option<f64>,
    pub sample_interval_ms: f64,
    /// Wall time of the full dry-run with verification, and of the scripted manual workflow.
    pub verdict_seconds: f64,
    pub manual_seconds: f64,
}

/// The three dry-run measurements on `meta` (a sandbox in `state` following the lab's source), under a load it
/// starts and stops itself. Forks it makes are removed by the library; after an error the caller removes what
/// is left ([`FORKS`]).
pub async fn measure(
    lab: &Lab,
    state: &StateDir,
    meta: &SandboxMeta,
    settings: &Settings,
    accounts: i64,
) -> Result<Figures> {
    let mut tables = Vec::new();
    let files = lab.root.join("migrations");
    std::fs::create_dir_all(&files).with_context(|| format!("creating {}", files.display()))?;
    let write = |name: &str, text: &str| -> Result<PathBuf> {
        let path = files.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let noop = write("noop.sql", NOOP_SQL)?;
    let index = write("index.sql", INDEX_SQL)?;
    let up = write("up.sql", UP_SQL)?;
    let down = write("down.sql", DOWN_SQL)?;
    let check = write("check.sql", CHECK_SQL)?;

    eprintln!(
        "starting the load on the source: pgbench -n -c 2 -j 2 -R {} ...",
        settings.rate
    );
    let mut load = Load::start(lab, settings.rate)?;
    let counter = Counter::start(lab).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.check()?;

    // 1. Replay throughput.
    let window = settings.window;
    eprintln!("1. dry-run of a no-op migration (no verification, warm-up and after {window:?}) ...");
    let other = lab.noise.foreign_seconds();
    let (noop_report, noop_wall, replay_started) =
        dry_run(state, options(meta, noop, None, false, FORKS[0], window)?).await?;
    let noop_other = lab.noise.foreign_seconds() - other;
    load.check()?;
    let w = &noop_report.windows;
    let replay_window = Duration::from_secs_f64((w.warmup_ms + w.migration_ms + w.after_ms) / 1000.0);
    let source_tps = replay_started.and_then(|from| counter.rate(from, from + replay_window));
    let writes = &noop_report.writes;
    let mut t1 = Table::new(
        &format!(
            "1. Replay throughput vs the source's write rate (no-op migration, pgbench -c 2 -j 2 -R {})",
            settings.rate
        ),
        &["measure", "value"],
    );
    t1.row([
        "replay window (warm-up + migration + after)",
        &secs(replay_window.as_secs_f64()),
    ]);
    t1.row(["writes.replayed (transactions)", &writes.replayed.to_string()]);
    t1.row(["writes.per_second", &format!("{:.1}", writes.per_second)]);
    t1.row([
        "source TPS in the same window (pgbench_history rows / s)".to_string(),
        source_tps.map_or("not measured".to_string(), |t| format!("{t:.1}")),
    ]);
    let ratio = source_tps.filter(|t| *t > 0.0).map(|t| writes.per_second / t);
    t1.row([
        "ratio replay / source (target ≥ 1.00)".to_string(),
        ratio.map_or("n/a".to_string(), |r| format!("{r:.2}")),
    ]);
    t1.row([
        "replay lag p50 / p99 / max (writes.lag)".to_string(),
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            writes.lag.p50_ms, writes.lag.p99_ms, writes.lag.max_ms
        ),
    ]);
    t1.row([
        "failed / unapplied at the end".to_string(),
        format!("{} / {}", writes.failed, writes.unapplied),
    ]);
    t1.row([
        "verdict, dry-run wall time".to_string(),
        format!("{:?}, {}", noop_report.verdict.result, secs(noop_wall)),
    ]);
    t1.row(["CPU used by other processes meanwhile", &format!("{noop_other:.1} s")]);
    tables.push(t1);

    // 2. Lock-wait detection resolution.
    eprintln!("2. dry-run of CREATE INDEX (non-concurrent) on pgbench_accounts (no verification) ...");
    let other = lab.noise.foreign_seconds();
    let (index_report, index_wall, _) = dry_run(state, options(meta, index, None, false, FORKS[1], window)?).await?;
    let index_other = lab.noise.foreign_seconds() - other;
    load.check()?;
    tables.push(lock_table(&index_report, index_wall, index_other));

    // 3. Migration file to verdict.
    let short = window.min(Duration::from_secs(2));
    eprintln!("3a. full dry-run with verification (warm-up and after {short:?}) ...");
    let other = lab.noise.foreign_seconds();
    let (verify_report, verify_wall, _) = dry_run(
        state,
        options(meta, up.clone(), Some(down.clone()), true, FORKS[2], short)?,
    )
    .await?;
    let verify_other = lab.noise.foreign_seconds() - other;
    load.check()?;
    eprintln!("3b. manual workflow: pg_dump + pg_restore + psql up / check / down ...");
    let other = lab.noise.foreign_seconds();
    let manual = manual_workflow(lab, settings.jobs, &up, &check, &down, accounts).await?;
    let manual_other = lab.noise.foreign_seconds() - other;
    load.check()?;
    let mut t3 = Table::new(
        &format!(
            "3. Migration file to verdict: dry-run with verification vs manual pg_dump -j{j} + pg_restore -j{j} + psql",
            j = settings.jobs
        ),
        &["step", "wall time", "other CPU"],
    );
    t3.row([
        format!(
            "(a) understudy dry-run, verify on, --down, warm-up and after {short:?} (verdict {:?}; fork ready {} \
             ms, migration {:.0} ms)",
            verify_report.verdict.result, verify_report.fork.ready_ms, verify_report.migration.duration_ms
        ),
        secs(verify_wall),
        format!("{verify_other:.1} s"),
    ]);
    t3.row([
        "(b) manual: CREATE DATABASE".to_string(),
        secs(manual.createdb),
        String::new(),
    ]);
    t3.row([
        format!("(b) manual: pg_dump -Fd -j{}", settings.jobs),
        secs(manual.dump),
        String::new(),
    ]);
    t3.row([
        format!("(b) manual: pg_restore -j{}", settings.jobs),
        secs(manual.restore),
        String::new(),
    ]);
    t3.row(["(b) manual: psql -f up.sql".to_string(), secs(manual.up), String::new()]);
    t3.row(["(b) manual: check query".to_string(), secs(manual.check), String::new()]);
    t3.row([
        "(b) manual: psql -f down.sql".to_string(),
        secs(manual.down),
        String::new(),
    ]);
    t3.row([
        "(b) manual, end to end".to_string(),
        secs(manual.total()),
        format!("{manual_other:.1} s"),
    ]);
    t3.row([
        "ratio manual / understudy".to_string(),
        format!("{:.2}", manual.total() / verify_wall.max(0.001)),
        String::new(),
    ]);
    tables.push(t3);

    let load_tps = counter.rate(counter.first_at(), Instant::now());
    drop(counter);
    load.stop().await;
    let mut t4 = Table::new("Load and noise", &["measure", "value"]);
    t4.row([
        "source TPS over the whole measured part (pgbench_history rows / s)".to_string(),
        load_tps.map_or("not measured".to_string(), |t| format!("{t:.1}")),
    ]);
    t4.row([
        "CPU used by other processes on this machine during the whole run".to_string(),
        if lab.noise.available() {
            format!("{:.1} s", lab.noise.foreign_seconds())
        } else {
            "not measured (no /proc)".to_string()
        },
    ]);
    tables.push(t4);
    let share = share_lock(&index_report);
    Ok(Figures {
        tables,
        replay_ratio: ratio,
        replay_per_second: writes.per_second,
        source_tps,
        lock_hold_ms: share.map(|l| l.held_ms),
        sample_interval_ms: index_report.locks.sample_interval_ms,
        verdict_seconds: verify_wall,
        manual_seconds: manual.total(),
    })
}

fn options(
    meta: &SandboxMeta,
    up: PathBuf,
    down: Option<PathBuf>,
    verify: bool,
    fork: &str,
    window: Duration,
) -> Result<DryRunOptions> {
    let text = |path: PathBuf| -> Result<MigrationText> {
        Ok(MigrationText {
            sql: std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
            name: path.display().to_string(),
        })
    };
    Ok(DryRunOptions {
        sandbox: meta.name.clone(),
        up: text(up)?,
        down: down.map(text).transpose()?,
        checks: None,
        verify,
        single_transaction: false,
        warmup: window,
        after: window,
        workers: 4,
        strategy: None,
        fork_name: SandboxName::parse(fork)?,
        keep_fork: false,
        statement_timeout: None,
        deadline: Duration::from_secs(600),
        sample_interval: Duration::from_millis(20),
        thresholds: Thresholds::default(),
        long_readers: Vec::new(),
        max_sandbox_lag: Duration::from_secs(60),
        recorded: None,
    })
}

/// Progress lines with the time since the run began (where a dry-run's time goes), and when replay started.
struct Timed {
    started: Instant,
    replay_started: Mutex<Option<Instant>>,
}

impl Progress for Timed {
    fn phase(&self, phase: RunPhase) {
        if phase == RunPhase::Replaying
            && let Ok(mut at) = self.replay_started.lock()
        {
            *at = Some(Instant::now());
        }
    }

    fn say(&self, line: &str) {
        eprintln!("    [{:6.2} s] {line}", self.started.elapsed().as_secs_f64());
    }
}

/// Runs a dry-run; returns its report, its wall time and when the library said it started replaying.
async fn dry_run(state: &StateDir, opts: DryRunOptions) -> Result<(DryRunReport, f64, Option<Instant>)> {
    let progress = Timed {
        started: Instant::now(),
        replay_started: Mutex::new(None),
    };
    let schedule = understudy::schedule::Schedule::Now;
    let cancel = tokio_util::sync::CancellationToken::new();
    let report = dryrun::execute(state, &opts, &schedule, &progress, &cancel)
        .await
        .with_context(|| format!("dry-run of {}", opts.up.name))?;
    let started = progress.started;
    let replay_started = progress.replay_started;
    let wall = started.elapsed().as_secs_f64();
    let at = replay_started.lock().ok().and_then(|a| *a);
    eprintln!(
        "    verdict {:?} in {}: {}",
        report.verdict.result,
        secs(wall),
        report.verdict.reasons.join("; ")
    );
    Ok((report, wall, at))
}

/// The index build's ShareLock on `pgbench_accounts` (or any ShareLock) held by the first statement.
fn share_lock(report: &DryRunReport) -> Option<&understudy::locks::HeldLock> {
    let locks = report
        .migration
        .statements
        .first()
        .map(|s| s.locks.as_slice())
        .unwrap_or_default();
    locks
        .iter()
        .find(|l| l.mode == "ShareLock" && l.relation.contains("pgbench_accounts"))
        .or_else(|| locks.iter().find(|l| l.mode == "ShareLock"))
}

fn lock_table(report: &DryRunReport, wall: f64, other: f64) -> Table {
    let statement = report.migration.statements.first();
    let locks = statement.map(|s| s.locks.as_slice()).unwrap_or_default();
    let share = share_lock(report);
    let interval_ms = report.locks.sample_interval_ms;
    let mut t = Table::new(
        "2. Lock-wait detection: CREATE INDEX (non-concurrent) on pgbench_accounts vs a 10 s poller",
        &["measure", "value"],
    );
    t.row([
        "statement ok, duration".to_string(),
        format!("{}, {:.0} ms", report.migration.ok, report.migration.duration_ms),
    ]);
    match share {
        Some(l) => {
            t.row([
                "ShareLock hold measured (migration.statements[0].locks)".to_string(),
                format!(
                    "{:.0} ms on {} (first seen at {:.0} ms)",
                    l.held_ms, l.relation, l.granted_ms
                ),
            ]);
            let p = (l.held_ms / 1000.0 / POLLER_SECONDS).min(1.0);
            t.row([
                "P(a 10 s poller samples the hold at least once) = min(1, hold / 10 s)".to_string(),
                format!("{:.3} ({:.1} %)", p, p * 100.0),
            ]);
        }
        None => t.row([
            "ShareLock hold measured".to_string(),
            format!("no ShareLock in statements[0].locks ({} lock(s) seen)", locks.len()),
        ]),
    }
    t.row([
        "lock samples (locks.samples)".to_string(),
        report.locks.samples.to_string(),
    ]);
    t.row([
        "sample interval (locks.sample_interval_ms)".to_string(),
        format!("{interval_ms:.0} ms"),
    ]);
    t.row([
        "resolution: 10 s poller / ours".to_string(),
        format!(
            "{:.0}× (10 000 ms / {interval_ms:.0} ms)",
            POLLER_SECONDS * 1000.0 / interval_ms.max(0.001)
        ),
    ]);
    t.row([
        "blocked replayed writes (statement / whole run)".to_string(),
        format!(
            "{} / {}",
            statement.map_or(0, |s| s.blocked_writes),
            report.writes.blocked
        ),
    ]);
    t.row([
        "blocked time total / longest".to_string(),
        format!(
            "{:.0} ms / {:.0} ms",
            report.writes.blocked_total_ms, report.writes.blocked_max_ms
        ),
    ]);
    t.row([
        "replayed write latency p99 before / during / after".to_string(),
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            report.writes.latency.before.p99_ms,
            report.writes.latency.during.p99_ms,
            report.writes.latency.after.p99_ms
        ),
    ]);
    t.row([
        "verdict, dry-run wall time".to_string(),
        format!("{:?}, {}", report.verdict.result, secs(wall)),
    ]);
    t.row([
        "CPU used by other processes meanwhile".to_string(),
        format!("{other:.1} s"),
    ]);
    t
}

struct Manual {
    createdb: f64,
    dump: f64,
    restore: f64,
    up: f64,
    check: f64,
    down: f64,
}

impl Manual {
    fn total(&self) -> f64 {
        self.createdb + self.dump + self.restore + self.up + self.check + self.down
    }
}

/// The manual workflow, timed step by step; the database and the dump are removed afterwards (not timed).
async fn manual_workflow(lab: &Lab, jobs: u32, up: &Path, check: &Path, down: &Path, accounts: i64) -> Result<Manual> {
    let cluster = lab.baseline()?;
    let database = "manual";
    let admin = cluster.connect("postgres").await?;
    let dump_dir = lab.root.join("dump-manual");
    let source = lab.source()?.replicator_conninfo();

    let started = Instant::now();
    admin
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(database)))
        .await
        .map_err(sql("creating the manual workflow's database"))?;
    let createdb = started.elapsed().as_secs_f64();

    let started = Instant::now();
    pgtool::dump_directory(&lab.bins, &source, jobs, &dump_dir).await?;
    let dumped = started.elapsed().as_secs_f64();

    let started = Instant::now();
    pgtool::restore_directory(&lab.bins, &cluster.conninfo(database), jobs, &dump_dir).await?;
    let restored = started.elapsed().as_secs_f64();

    let psql = |file: &Path| {
        let mut cmd = pgtool::command(&lab.bins, "psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("--dbname")
            .arg(cluster.conninfo(database))
            .arg("-f")
            .arg(file);
        cmd
    };
    let started = Instant::now();
    pgtool::run(psql(up), "psql -f up.sql").await?;
    let upped = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let counted = pgtool::run(psql(check), "psql -f check.sql").await?;
    let checked = started.elapsed().as_secs_f64();
    let started = Instant::now();
    pgtool::run(psql(down), "psql -f down.sql").await?;
    let downed = started.elapsed().as_secs_f64();

    if counted.trim() != accounts.to_string() {
        bail!(
            "the manual workflow's check query returned {:?}, expected {accounts}",
            counted.trim()
        );
    }
    admin
        .batch_execute(&format!("DROP DATABASE {}", quote_ident(database)))
        .await
        .map_err(sql("dropping the manual workflow's database"))?;
    std::fs::remove_dir_all(&dump_dir).with_context(|| format!("removing {}", dump_dir.display()))?;
    Ok(Manual {
        createdb,
        dump: dumped,
        restore: restored,
        up: upped,
        check: checked,
        down: downed,
    })
}

/// Counts `pgbench_history` on the source every 100 ms (one row per pgbench transaction).
struct Counter {
    samples: Arc<Mutex<Vec<(Instant, i64)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

impl Counter {
    async fn start(lab: &Lab) -> Result<Self> {
        let client = lab.source()?.admin().await?;
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let samples = Arc::clone(&samples);
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let Ok(row) = client.query_one("SELECT count(*) FROM pgbench_history", &[]).await else {
                        continue;
                    };
                    let n: i64 = row.get(0);
                    if let Ok(mut s) = samples.lock() {
                        s.push((Instant::now(), n));
                    }
                }
            })
        };
        Ok(Counter { samples, stop, task })
    }

    fn first_at(&self) -> Instant {
        self.samples
            .lock()
            .ok()
            .and_then(|s| s.first().map(|(at, _)| *at))
            .unwrap_or_else(Instant::now)
    }

    /// Transactions per second between the last sample at or before `from` and the first at or after `to`.
    fn rate(&self, from: Instant, to: Instant) -> Option<f64> {
        let s = self.samples.lock().ok()?;
        let a = s.iter().rev().find(|(at, _)| *at <= from).or_else(|| s.first())?;
        let b = s.iter().find(|(at, _)| *at >= to).or_else(|| s.last())?;
        let dt = b.0.saturating_duration_since(a.0).as_secs_f64();
        (dt > 0.0).then(|| (b.1 - a.1) as f64 / dt)
    }
}

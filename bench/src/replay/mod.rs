//! `understudy-bench replay`: replay headroom. How fast a fork drains a backlog of production's writes recorded at
//! the source's maximum rate, with 1, 2 and 4 replay workers; whether the fork then equals the sandbox; and how far
//! behind the source a live replay runs at 80 % of that rate. One run, on this machine.
//!
//! ```sh
//! cargo run --release -p understudy-bench -- replay --scale 10
//! ```
//!
//! The source of `sync` ([`Lab::prepare_source`]: `pgbench -i -s <scale>`, five tables published) is followed by a
//! sandbox ([`understudy::sandbox::create`], two copy workers). Every pgbench run below is preceded by `VACUUM
//! pgbench_branches, pgbench_tellers` (what pgbench does before a run; not replicated) and runs with `-n`, so that
//! no `TRUNCATE pgbench_history` enters the stream; after it the bench waits until the sandbox has applied it:
//! until `pgbench_history` holds as many rows on the sandbox as on the source (every pgbench transaction inserts
//! exactly one, and the sandbox applies whole transactions in commit order). A run's transactions are the rows it
//! added to `pgbench_history` on the source, checked against pgbench's own count.
//!
//! 1. **Maximum rate**: an unthrottled `pgbench -n -c 2 -j 2 -T <sustain-seconds>` (built-in TPC-B-like script) on
//!    the source with the sandbox attached. The source's maximum sustained rate is the higher `tps` of this run
//!    and of the backlog's (also unthrottled), so that noise does not flatter the ratios.
//! 2. **Backlog**: a recording ([`understudy::recording::take`], `bench-replay-backlog`) starts with the source
//!    idle and the sandbox caught up: its fork at the start point is made and stopped, and the sandbox's stream
//!    is read from its capture slot into the recording file. Then an unthrottled `pgbench -n -c 2 -j 2 -T
//!    <seconds>`; the window ends 10 s after pgbench, and the recording must hold exactly pgbench's transactions
//!    (nothing else writes). This is the backlog, recorded at the source's maximum rate.
//! 3. **Drain**: for 1, 2 and 4 workers in turn, a fork of the recording's start point
//!    ([`understudy::fork::clone_stopped`], `bench-replay-w<N>`) and the recording replayed into it at `--speed
//!    max` ([`LiveReplay::start_recorded`] with [`Speed::Max`], then `stop_at` the recording's end LSN, limit
//!    600 s). The drain time runs from the start (connecting the workers) until every transaction is applied;
//!    drain rate = records / drain time; the ratio is drain rate / maximum rate (target ≥ 3). Every record must
//!    be applied (`unapplied` 0) without a failure, and there must be one per backlog transaction.
//! 4. **Fidelity**: after each drain, [`understudy::verify::checksum::checksums`] (row count and md5 of the sorted
//!    rows) of the five tables must be equal on the fork and on the sandbox, which has not moved since the
//!    recording's end LSN (the source is idle). The fork is then deleted.
//! 5. **Live lag**: a fresh fork (`bench-replay-live`), a replay with 4 workers started on it, then `pgbench -n -c 2
//!    -j 2 -T <lag-seconds> -R <80 % of the maximum rate>`; once the sandbox has applied the run, the replay is
//!    stopped as above. Reported: p50 / p99 / max of the records' `lag` (from the commit on the source, whose
//!    timestamp the sandbox's apply worker carries into its WAL, to the end of the write on the fork: both hops),
//!    the replay rate (records / first record's start to last record's end) against pgbench's, and fidelity.
//!
//! The bench stops at the first failed check, after printing what it measured. The CPU other processes used during
//! each measurement is printed beside it (module `noise`). Forks are deleted after their measurement; at the end,
//! also after an error or Ctrl-C, any fork left (the recording's start point too), the sandbox (and its slot), the source and the working directory
//! are removed (`--keep` keeps all but the forks).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio_postgres::Client;
use understudy::fork::{self, ForkMeta};
use understudy::pg::QualifiedName;
use understudy::pg::connect::connect_plain;
use understudy::recording::RecordingMeta;
use understudy::replay::live::Stopped;
use understudy::sandbox::{self, SandboxMeta, StateDir};
use understudy::source::SandboxName;
use understudy::verify::checksum;

mod drain;
mod live;

use drain::{Drain, drain_table, drains, record_backlog};
use live::{Live, live_lag};

use crate::ReplayArgs;
use crate::lab::{self, DATABASE, Lab, Machine};
use crate::pgtool::{self, sql};
use crate::table::{self, Table, secs};
use crate::{run, yes_no};

/// The worker counts measured, one fork each.
const WORKERS: [usize; 3] = [1, 2, 4];
const RECORDING: &str = "bench-replay-backlog";
/// How long the recording's window runs past pgbench's end, for the sandbox to apply the run.
const RECORD_MARGIN: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
const DRAIN_LIMIT: Duration = Duration::from_secs(600);
const FORK_TTL: Duration = Duration::from_secs(3600);
/// The longest the sandbox may take to apply a backlog before the bench gives up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(900);
const TARGET_RATIO: f64 = 3.0;

pub async fn command(args: ReplayArgs) -> Result<()> {
    let root = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("understudy-bench-replay-{}", std::process::id())));
    let mut lab = Lab::new(root)?;
    let state = lab.sandbox_state();
    let outcome = run::interruptible(run(&args, &mut lab, &state)).await;
    let forks = remove_forks(&state).await;
    let cleanup = match (forks, lab.finish(args.keep).await) {
        (Ok(()), lab) => lab,
        (Err(e), Ok(())) => Err(e),
        (Err(forks), Err(lab)) => Err(lab.context(format!("{forks:#}"))),
    };
    run::conclude(outcome, cleanup)
}

fn cpu(seconds: f64) -> String {
    format!("{seconds:.1} s")
}

/// Deletes every fork of the state directory (all of them this run's).
async fn remove_forks(state: &StateDir) -> Result<()> {
    let mut problems = Vec::new();
    for f in fork::list(state) {
        if let Err(e) = fork::delete(state, &f.name).await {
            problems.push(format!("deleting fork {}: {e}", f.name));
        }
    }
    anyhow::ensure!(problems.is_empty(), problems.join("; "));
    Ok(())
}

async fn run(args: &ReplayArgs, lab: &mut Lab, state: &StateDir) -> Result<()> {
    println!("# understudy-bench replay");
    let mut setup = Machine::setup_table(
        &lab.bins,
        &format!(
            "understudy-bench replay --scale {} --seconds {} --sustain-seconds {} --lag-seconds {}",
            args.scale, args.seconds, args.sustain_seconds, args.lag_seconds
        ),
    )
    .await;
    setup.row(["working directory", &lab.root.display().to_string()]);
    let facts = lab.prepare_source(args.scale).await?;
    let (size, accounts) = (table::bytes(facts.database_bytes), table::bytes(facts.accounts_bytes));
    let rows = facts.accounts_rows();
    let source = format!(
        "pgbench scale {}: {size} (pgbench_accounts {rows} rows, {accounts})",
        args.scale
    );
    setup.row(["source", &source]);
    let opts = lab.create_options(SandboxName::parse(lab::SANDBOX)?, state.clone(), 2)?;
    eprintln!("creating the sandbox ...");
    let started = Instant::now();
    let meta = sandbox::create(&opts, &|line: &str| eprintln!("    {line}"))
        .await
        .context("sandbox create")?;
    let created = secs(started.elapsed().as_secs_f64());
    setup.row(["sandbox create (2 copy workers)", &created]);

    eprintln!("1. the source's maximum rate (sandbox attached) ...");
    let max = source_run(lab, &meta, args.sustain_seconds, &[]).await?;
    let (poll, limit) = (POLL.as_millis(), DRAIN_LIMIT.as_secs());
    let replay = format!("recordings: --speed max, drain limit {limit} s; live: LiveReplay, poll interval {poll} ms");
    setup.row(["replay", &replay]);
    print!("{}", setup.render());
    let title = format!(
        "1. The source's maximum sustained write rate (unthrottled pgbench -n -c 2 -j 2 -T {}, sandbox attached)",
        max.seconds
    );
    print!("{}", max.table(&title, None).render());

    eprintln!("2. the backlog: a recording of unthrottled pgbench ...");
    let (backlog, rec) = record_backlog(lab, state, &meta, args.seconds).await?;
    let title = format!(
        "2. Backlog: recording {} of unthrottled pgbench -n -c 2 -j 2 -T {} on the source",
        rec.name, backlog.seconds
    );
    let start = fork::list(state)
        .into_iter()
        .find(|f| f.name == rec.fork)
        .map(|f| format!("fork {} ({} strategy)", f.name, f.strategy.as_str()))
        .unwrap_or_default();
    print!("{}", backlog.recording_table(&title, max.tps, &rec, &start).render());
    if u64::try_from(backlog.transactions).ok() != Some(rec.transactions) {
        bail!(
            "the recording holds {} transactions but pgbench ran {}: the sandbox did not apply the run within the \
             recording's window ({RECORD_MARGIN:?} past pgbench's end)",
            rec.transactions,
            backlog.transactions
        );
    }

    // Both runs are unthrottled: the higher rate is the source's maximum, and the ratios do not flatter.
    let max_tps = max.tps.max(backlog.tps);
    let drains = drains(lab, state, &meta, &rec, backlog.transactions, max_tps).await?;
    print!("{}", drain_table(&drains, backlog.transactions, max_tps).render());

    let live = live_lag(lab, state, &meta, max_tps, args.lag_seconds).await?;
    print!("{}", live.table().render());
    if let Some(problem) = live.problem() {
        bail!(problem);
    }
    print!("{}", summary(lab, max_tps, &drains, &live).render());
    Ok(())
}

async fn sandbox_client(meta: &SandboxMeta) -> Result<Client> {
    Ok(sandbox::cluster_of(meta)?.connect(&meta.database).await?)
}

async fn history(client: &Client) -> Result<i64> {
    Ok(client
        .query_one("SELECT count(*) FROM pgbench_history", &[])
        .await
        .map_err(sql("counting pgbench_history"))?
        .try_get(0)?)
}

/// Waits until the sandbox holds as many `pgbench_history` rows as the source: every pgbench transaction inserts
/// one, and the sandbox applies whole transactions in commit order, so it has then applied all of them.
async fn wait_for_history(source: &Client, sandbox: &Client) -> Result<()> {
    let target = history(source).await?;
    let started = Instant::now();
    loop {
        let seen = history(sandbox).await?;
        if seen >= target {
            return Ok(());
        }
        if started.elapsed() > CATCH_UP_TIMEOUT {
            bail!("the sandbox did not catch up within {CATCH_UP_TIMEOUT:?} ({seen} of {target} history rows)");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One pgbench run on the source, applied by the sandbox.
struct SourceRun {
    seconds: u32,
    tps: f64,
    /// `pgbench_history` rows the run added on the source (pgbench's own count, checked).
    transactions: i64,
    ended: Instant,
    /// From pgbench's end until the sandbox had applied the run.
    catch_up: f64,
    other: f64,
}

/// `VACUUM pgbench_branches, pgbench_tellers` (what pgbench does before a run besides truncating
/// `pgbench_history`; not replicated), then `pgbench -n -c 2 -j 2 -T <seconds> <extra>` on the source, then waits
/// until the sandbox has applied it.
async fn source_run(lab: &Lab, meta: &SandboxMeta, seconds: u32, extra: &[&str]) -> Result<SourceRun> {
    let admin = lab.source()?.admin().await?;
    let sandbox = sandbox_client(meta).await?;
    admin
        .batch_execute("VACUUM pgbench_branches, pgbench_tellers")
        .await
        .map_err(sql("vacuuming pgbench_branches and pgbench_tellers"))?;
    let before = history(&admin).await?;
    let seconds_arg = seconds.to_string();
    let mut args = vec!["-n", "-c", "2", "-j", "2", "-T", seconds_arg.as_str()];
    args.extend_from_slice(extra);
    eprintln!("   pgbench {} ...", args.join(" "));
    let other = lab.noise.foreign_seconds();
    let out = pgtool::pgbench(&lab.bins, &lab.source()?.cluster, DATABASE, &args).await?;
    let ended = Instant::now();
    let other = lab.noise.foreign_seconds() - other;
    let transactions = history(&admin).await? - before;
    wait_for_history(&admin, &sandbox).await?;
    let catch_up = ended.elapsed().as_secs_f64();
    if let Some(n) = pgtool::parse_processed(&out)
        && i64::try_from(n).ok() != Some(transactions)
    {
        bail!("pgbench reports {n} transactions but pgbench_history grew by {transactions} rows");
    }
    let tps = pgtool::parse_tps(&out)?;
    eprintln!(
        "   {transactions} transactions, {tps:.1} tps; applied by the sandbox {} later",
        secs(catch_up)
    );
    Ok(SourceRun {
        seconds,
        tps,
        transactions,
        ended,
        catch_up,
        other,
    })
}

impl SourceRun {
    fn table(&self, title: &str, max_tps: Option<f64>) -> Table {
        let mut t = Table::new(title, &["measure", "value"]);
        let transactions = self.transactions.to_string();
        t.row([
            "transactions (pgbench's count = pgbench_history rows added)",
            &transactions,
        ]);
        let ratio = max_tps.map(|m| format!(" ({:.2} × the maximum rate)", self.tps / m.max(1e-9)));
        let rate = format!("{:.1} tps{}", self.tps, ratio.unwrap_or_default());
        t.row(["pgbench rate".to_string(), rate]);
        t.row(["the sandbox had applied the run after".to_string(), secs(self.catch_up)]);
        t.row(["CPU used by other processes meanwhile".to_string(), cpu(self.other)]);
        t
    }
    fn recording_table(&self, title: &str, max_tps: f64, rec: &RecordingMeta, start: &str) -> Table {
        let mut t = self.table(title, Some(max_tps));
        let span = rec.span().as_secs_f64();
        t.row([
            "recording: transactions, changes".to_string(),
            format!("{}, {}", rec.transactions, rec.changes),
        ]);
        t.row(["recording: first to last commit".to_string(), secs(span)]);
        let sizes = format!(
            "{} ({} before gzip)",
            table::bytes(rec.bytes as i64),
            table::bytes(rec.raw_bytes as i64)
        );
        t.row(["recording: stream file".to_string(), sizes]);
        t.row(["recording: start point".to_string(), start.to_string()]);
        t
    }
}

/// Whether a fork equals the sandbox, by checksums of every bench table.
struct Fidelity {
    equal: bool,
    rows: i64,
    differing: Vec<String>,
}

async fn compare(meta: &SandboxMeta, fork: &ForkMeta) -> Result<Fidelity> {
    let tables: Vec<QualifiedName> = lab::TABLES.iter().map(|t| QualifiedName::new("public", *t)).collect();
    let on_sandbox = sandbox_client(meta).await?;
    let on_fork = connect_plain(&fork.conninfo(meta), "understudy-bench").await?;
    let (a, b) = tokio::try_join!(
        checksum::checksums(&on_sandbox, &tables),
        checksum::checksums(&on_fork, &tables)
    )?;
    let differing: Vec<String> = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x != y)
        .map(|(x, y)| {
            format!(
                "{}: {} rows {} on the sandbox, {} rows {} on the fork",
                x.table, x.rows, x.md5, y.rows, y.md5
            )
        })
        .collect();
    Ok(Fidelity {
        equal: differing.is_empty() && a.len() == b.len(),
        rows: a.iter().map(|c| c.rows).sum(),
        differing,
    })
}

/// Failed records, and the first failure described.
fn failures(stopped: &Stopped) -> (usize, Option<String>) {
    let failed: Vec<_> = stopped.records.iter().filter_map(|r| r.failure.as_ref()).collect();
    let first = failed
        .first()
        .map(|f| format!("{} on {}: {} {}", f.kind, f.table, f.sqlstate, f.message));
    (failed.len(), first)
}

/// Complaints about a replay that must have applied `expected` transactions and equal the sandbox.
fn complaints(stopped: &Stopped, expected: i64, fidelity: &Fidelity) -> Vec<String> {
    let mut out = Vec::new();
    if let (failed @ 1.., Some(first)) = failures(stopped) {
        out.push(format!("{failed} write(s) failed (first: {first})"));
    }
    if stopped.unapplied > 0 {
        out.push(format!("{} transaction(s) were left unapplied", stopped.unapplied));
    }
    if i64::try_from(stopped.records.len()).ok() != Some(expected) {
        out.push(format!("{} records for {expected} transactions", stopped.records.len()));
    }
    if !fidelity.equal {
        let differing = fidelity.differing.join("; ");
        out.push(format!("the fork differs from the sandbox: {differing}"));
    }
    out
}

fn summary(lab: &Lab, max_tps: f64, drains: &[Drain], live: &Live) -> Table {
    let mut t = Table::new("Summary", &["measure", "this run", "target", "met"]);
    for d in drains {
        let ratio = d.tps() / max_tps.max(1e-9);
        let value = format!("{ratio:.2} ({:.0} / {:.0} tps)", d.tps(), max_tps);
        let measure = format!("drain rate / source maximum rate, {} worker(s)", d.workers);
        let (target, met) = (format!("≥ {TARGET_RATIO:.2}"), yes_no(ratio >= TARGET_RATIO));
        t.row([measure, value, target, met]);
    }
    let (forks, tables) = (drains.len() + 1, lab::TABLES.len());
    let equal = drains.iter().filter(|d| d.fidelity.equal).count() + usize::from(live.fidelity.equal);
    let measure = format!("forks equal to the sandbox after replay (checksums of {tables} tables)");
    let (value, met) = (format!("{equal} of {forks}"), yes_no(equal == forks));
    t.row([measure, value, "all".into(), met]);
    let measure = format!("live replay lag p50 / p99 / max at pgbench -R {}", live.rate);
    t.row([measure, live.lags()]);
    let ratio = live.replay_tps / live.run.tps.max(1e-9);
    t.row(["live replay rate / pgbench rate".to_string(), format!("{ratio:.2}")]);
    let noise = if lab.noise.available() {
        format!("{:.1} s", lab.noise.foreign_seconds())
    } else {
        "not measured (no /proc)".to_string()
    };
    let measure = "CPU used by other processes on this machine during the whole run";
    t.row([measure.to_string(), noise]);
    t
}

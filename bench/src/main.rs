//! `understudy-bench sync`: what a sandbox costs and how current it stays, measured in one run on embedded
//! PostgreSQL servers on this machine.
//!
//! ```sh
//! cargo run --release -p understudy-bench -- sync --scale 50
//! ```
//!
//! (`understudy-bench fork` measures fork-ready time per strategy against dump + restore; its method is in the
//! doc comment of `fork.rs`; `understudy-bench replay` measures how fast a fork drains a backlog recorded at the
//! source's maximum rate, its method is in the doc comment of `replay/mod.rs`.)
//!
//! # Setup
//!
//! A source cluster ([`fixtures::source::SourceServer`]: loopback TCP, scram passwords, the least-privilege
//! role `understudy_replicator`) is loaded with `pgbench -i -s <scale>`. `pgbench_history` (no primary key) gets
//! `REPLICA IDENTITY FULL`; a heartbeat table `bench_heartbeat(id int primary key, at timestamptz)` is added; all
//! five tables are published as `bench_pub` and made readable by the replication role. Every table is read once
//! (`SELECT count(*)`) so that both initial-sync methods start from the same, cached data.
//!
//! # 1. Initial sync
//!
//! Two ways of getting a copy of the source, each measured `--repeat` times, alternating, with the order swapped
//! every round (S B, B S, S B, ...) so that neither method always runs first:
//!
//! - **S**: the wall-clock time of one call of [`understudy::sandbox::create`] (what `understudy sandbox create`
//!   runs): preflight, creation and start of the sandbox cluster, schema, slot with exported snapshot, parallel
//!   `COPY` with `--jobs` workers, indexes and constraints, sequences, subscription. The phase timings the
//!   library records are printed beside it. All sandboxes use one state directory, as a user's do.
//! - **B**, the manual baseline: `pg_dump -Fd -j<jobs>` of the same database (same role, same TCP connection as
//!   the sandbox uses) into a directory, then `pg_restore -j<jobs> --exit-on-error --no-owner --no-privileges`
//!   into a fresh database on another embedded cluster that is already running, configured like a sandbox
//!   cluster ([`understudy::sandbox::sandbox_cluster_config`]). Its time is dump + restore; the cluster's
//!   `initdb`/start and the `CREATE DATABASE` are not counted (the sandbox's are).
//!
//! A warm-up round (one S, one B) comes first and is printed apart, not in the means: it is the first create in
//! the state directory, which fills what the library caches there (the `initdb` template), so the measured
//! creates are those of a user's second and later sandboxes; the warm-up row shows what the first one costs.
//!
//! After every run the row counts of all five tables on the copy are checked against the source (not timed).
//! The ratio reported is S / B per round and mean(S) / mean(B) over the measured rounds; the target is ≤ 0.8.
//!
//! # 2. Apply lag
//!
//! The sandbox of the last S run stays and follows the source. First an unthrottled `pgbench -c 2 -j 2 -T
//! <sustain-seconds>` (built-in tpcb-like script) measures the rate the source sustains with the sandbox
//! attached ("source sustained rate"). Once the sandbox has caught up, the bench updates the heartbeat row on the
//! source every 100 ms (`UPDATE bench_heartbeat SET at = clock_timestamp()`, one transaction each) and runs
//! `pgbench -c 2 -j 2 -T <lag-seconds> -R <rate>` (default rate: 80 % of the sustained rate). During that run it
//! samples `clock_timestamp() - at` on the sandbox every 100 ms, 50 ms after each heartbeat: both servers are on
//! this machine and share its clock, so a sample is the delay from a heartbeat's write on the source to its
//! visibility on the sandbox, rounded up to the sampling grid (0.05 s means "within 50 ms", 0.15 s "within
//! 150 ms", ...): never below the true lag, at most 0.1 s above it. The p50, p99 and max of the samples are
//! reported (target p99 ≤ 1 s), with pgbench's TPS and the time the sandbox needs to apply everything once the
//! load stops (a last heartbeat, written after pgbench ended, becoming visible on the sandbox).
//!
//! # Noise
//!
//! Everything runs on one machine, so other work on it skews the figures. A thread samples `/proc` and reports
//! the CPU time other processes used during each measurement (module `noise`); a run with more than a few seconds
//! of it should be repeated.
//!
//! # Clean-up
//!
//! Unless `--keep` is given, everything is removed at the end, also after an error or Ctrl-C: the sandboxes with
//! [`understudy::sandbox::delete`] (which also drops their slots on the source), the baseline and source clusters
//! destroyed, the working directory removed.

mod all;
mod dryrun;
mod fork;
mod lab;
mod lag;
mod load;
mod noise;
mod pgtool;
mod replay;
mod rig;
mod run;
mod sync;
mod table;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::lab::Lab;
use crate::table::{Table, secs};

#[derive(Debug, Parser)]
#[command(
    name = "understudy-bench",
    version,
    about = "Understudy benchmarks on embedded PostgreSQL servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Initial sync (sandbox create vs pg_dump + pg_restore) and apply lag under pgbench load, on a pgbench source.
    Sync(SyncArgs),
    /// Fork-ready time per strategy (btrfs snapshot, reflink, template, copy) under pgbench load, against
    /// pg_dump + pg_restore, at 1× and 4× the data (needs root: loop-mounts btrfs and xfs).
    Fork(ForkArgs),
    /// One dry-run's replay throughput, lock-wait resolution and time to a verdict (against dump + restore +
    /// psql), under pgbench load on a pgbench source followed by a sandbox.
    Dryrun(DryRunArgs),
    /// Everything above in one run on the same data, at --scale and at 4× (needs root), ending with one table
    /// of ratios against the manual way.
    All(AllArgs),
    /// Replay headroom: how fast forks drain a backlog recorded at the source's maximum rate (1, 2 and 4
    /// workers), whether they then equal the sandbox, and live replay lag at 80 % of that rate.
    Replay(ReplayArgs),
}

/// The data sizes of the multi-size commands (`fork`, `all`) and the rounds measured at each.
#[derive(Debug, Clone, Args)]
pub struct Sizes {
    /// pgbench scale factor of the source at 1× (100,000 pgbench_accounts rows each).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub scale: u32,
    /// The larger data size, as a multiple of --scale.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=100))]
    pub scale_factor: u32,
    /// Also measure at --scale × --scale-factor (`--also-4x false` for a run at 1× only).
    #[arg(long = "also-4x", default_value_t = true, action = clap::ArgAction::Set)]
    pub also_4x: bool,
    /// Measured rounds of each method (sync method, fork strategy, dump + restore) per data size.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
}

impl Sizes {
    /// `--scale`, and `--scale` × `--scale-factor` unless `--also-4x false`.
    pub fn scales(&self) -> anyhow::Result<Vec<u32>> {
        let mut scales = vec![self.scale];
        if self.also_4x {
            scales.push(
                self.scale
                    .checked_mul(self.scale_factor)
                    .ok_or_else(|| anyhow::anyhow!("--scale times --scale-factor is too large"))?,
            );
        }
        Ok(scales)
    }
}

/// Options of `understudy-bench all` (method: the doc comment of `bench/src/all.rs`).
#[derive(Debug, Clone, Args)]
pub struct AllArgs {
    #[command(flatten)]
    pub sizes: Sizes,
    /// pgbench -R of the load on the source while forks are measured.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub fork_rate: u32,
    /// pgbench -R of the load on the source during the dry-runs.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    pub dryrun_rate: u32,
    /// Warm-up and after windows of the throughput and lock dry-runs, in seconds (the verdict dry-run uses 2 s,
    /// or this when shorter).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub window_seconds: u32,
    /// Parallel jobs of the sandboxes' initial copy and of pg_dump -j / pg_restore -j.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
    /// Working directory (must not exist); default /tmp/understudy-bench-all-<pid>.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Options of `understudy-bench dryrun` (method: the doc comment of `bench/src/dryrun.rs`).
#[derive(Debug, Clone, Args)]
pub struct DryRunArgs {
    /// pgbench scale factor of the source (100,000 pgbench_accounts rows each).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub scale: u32,
    /// pgbench -R (transactions per second) of the load on the source during every measurement.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Parallel jobs of the sandbox's initial copy and of pg_dump -j / pg_restore -j.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
    /// Working directory (must not exist); default /tmp/understudy-bench-dryrun-<pid>.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Options of `understudy-bench replay` (method: the doc comment of `bench/src/replay/mod.rs`).
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// pgbench scale factor of the source (100,000 pgbench_accounts rows each).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub scale: u32,
    /// Seconds of the backlog window: unthrottled pgbench on the source while the forks wait.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub seconds: u32,
    /// Seconds of the unthrottled pgbench run that measures the source's maximum sustained rate.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub sustain_seconds: u32,
    /// Seconds of the throttled pgbench run (80 % of the maximum rate) during which a live replay follows.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub lag_seconds: u32,
    /// Keep the clusters, the sandbox and the working directory (not the forks), and print how to reach them.
    #[arg(long)]
    pub keep: bool,
    /// Working directory (must not exist); default /tmp/understudy-bench-replay-<pid>.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Options of `understudy-bench fork` (method: the doc comment of `bench/src/fork.rs`).
#[derive(Debug, Clone, Args)]
pub struct ForkArgs {
    #[command(flatten)]
    pub sizes: Sizes,
    /// pgbench -R (transactions per second) of the load on the source during every measurement.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: u32,
    /// Parallel jobs of the sandboxes' initial copy and of pg_dump -j / pg_restore -j.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
    /// Working directory (must not exist); default /tmp/understudy-bench-fork-<pid>.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Options of `understudy-bench sync`.
#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    /// pgbench scale factor of the source (100,000 pgbench_accounts rows each).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub scale: u32,
    /// How many times each initial-sync method is measured (alternating).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeat: u32,
    /// Parallel jobs of both initial-sync methods (sandbox copy workers, pg_dump -j, pg_restore -j).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
    /// Seconds of the unthrottled pgbench run that measures the source's sustained rate.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub sustain_seconds: u32,
    /// Seconds of the throttled pgbench run during which apply lag is sampled.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    pub lag_seconds: u32,
    /// pgbench -R (transactions per second) during the lag run; default 80 % of the sustained rate.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,
    /// Keep the clusters, the sandbox and the working directory, and print how to reach them.
    #[arg(long)]
    pub keep: bool,
    /// Working directory (must not exist; the server user `postgres` must be able to reach it); default
    /// /tmp/understudy-bench-<pid>.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Sync(args) => sync_command(args).await,
            Command::Fork(args) => fork::command(args).await,
            Command::Dryrun(args) => dryrun::command(args).await,
            Command::Replay(args) => replay::command(args).await,
            Command::All(args) => all::command(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn sync_command(args: SyncArgs) -> Result<()> {
    let root = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("understudy-bench-{}", std::process::id())));
    let mut lab = Lab::new(root)?;
    let outcome = run::interruptible(run_sync(&args, &mut lab)).await;
    let cleanup = lab.finish(args.keep).await;
    run::conclude(outcome, cleanup)
}

async fn run_sync(args: &SyncArgs, lab: &mut Lab) -> Result<()> {
    println!("# understudy-bench sync");
    let mut setup = lab::Machine::setup_table(
        &lab.bins,
        &format!(
            "understudy-bench sync --scale {} --repeat {} --jobs {} --sustain-seconds {} --lag-seconds {}{}",
            args.scale,
            args.repeat,
            args.jobs,
            args.sustain_seconds,
            args.lag_seconds,
            args.rate.map(|r| format!(" --rate {r}")).unwrap_or_default()
        ),
    )
    .await;
    setup.row(["working directory", &lab.root.display().to_string()]);

    let source = lab.prepare_source(args.scale).await?;
    setup.row([
        "source",
        &format!(
            "pgbench scale {}: {} (pgbench_accounts {} rows, {}), loaded in {}",
            args.scale,
            table::bytes(source.database_bytes),
            source.accounts_rows(),
            table::bytes(source.accounts_bytes),
            secs(source.load_seconds)
        ),
    ]);
    print!("{}", setup.render());

    lab.start_baseline_cluster().await?;
    let sync = sync::measure(lab, args, &source.counts).await?;
    print!("{}", sync.table(args.jobs).render());

    let lag = lag::measure(lab, &sync.kept, args).await?;
    print!("{}", lag.table().render());

    let mut summary = Table::new("Summary", &["measure", "this run", "target", "met"]);
    let ratio = sync.mean_ratio();
    summary.row([
        format!(
            "initial sync: sandbox create / (pg_dump -Fd -j{j} + pg_restore -j{j}), mean of {n}",
            j = args.jobs,
            n = sync.rounds.len()
        ),
        format!(
            "{ratio:.2} ({} / {})",
            secs(sync.mean_sandbox()),
            secs(sync.mean_baseline())
        ),
        "≤ 0.80".to_string(),
        yes_no(ratio <= 0.8),
    ]);
    summary.row([
        format!(
            "apply lag p99 under pgbench -c 2 -j 2 -R {} ({} s, heartbeat)",
            lag.rate, args.lag_seconds
        ),
        secs(lag.p99),
        "≤ 1.0 s".to_string(),
        yes_no(lag.p99 <= 1.0),
    ]);
    summary.row([
        "apply lag p50 / max".to_string(),
        format!("{} / {}", secs(lag.p50), secs(lag.max)),
        String::new(),
        String::new(),
    ]);
    summary.row([
        "source TPS during the lag run (sustained unthrottled rate)".to_string(),
        format!("{:.0} ({:.0})", lag.lag_tps, lag.sustained_tps),
        String::new(),
        String::new(),
    ]);
    summary.row([
        "CPU used by other processes on this machine during the whole run".to_string(),
        if lab.noise.available() {
            format!("{:.1} s", lab.noise.foreign_seconds())
        } else {
            "not measured (no /proc)".to_string()
        },
        String::new(),
        String::new(),
    ]);
    print!("{}", summary.render());
    Ok(())
}

fn yes_no(met: bool) -> String {
    if met { "yes" } else { "**no**" }.to_string()
}

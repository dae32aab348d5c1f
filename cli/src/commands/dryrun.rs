//! `understudy dry-run`: flags and files become a [`DryRunRequest`]; the library validates, waits for the
//! schedule, runs, cancels on Ctrl-C; the verdict decides the exit code.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;
use understudy::dryrun::{self, DryRunRequest, SimulatedReader, SqlText};
use understudy::error::UsageError;
use understudy::fork::Strategy;
use understudy::report::verdict::ThresholdOverrides;
use understudy::report::{RollbackPolicy, Thresholds};
use understudy::sandbox::StateDir;
use understudy::units::Duration;

use crate::output;

#[derive(Args)]
pub struct DryRunArgs {
    /// The sandbox to fork
    #[arg(long)]
    sandbox: String,
    /// The up-migration (SQL; run with psql -f semantics)
    #[arg(long)]
    up: PathBuf,
    /// The down-migration: run after the up-migration on the migrated fork to prove the way back
    #[arg(long)]
    down: Option<PathBuf>,
    /// Checks (SQL queries, one per statement; name one with a `-- check: NAME` line) compared between the
    /// migrated fork and its control twin
    #[arg(long)]
    checks: Option<PathBuf>,
    /// Skip the control twin (no verification, no rollback proof): faster, fewer findings
    #[arg(long)]
    no_verify: bool,
    /// Run the whole file in one transaction (psql --single-transaction)
    #[arg(long)]
    single_transaction: bool,
    /// Replay before the migration, for the baseline latency (e.g. 5s)
    #[arg(long, default_value = "5s")]
    warmup: Duration,
    /// Replay after the migration (e.g. 5s)
    #[arg(long, default_value = "5s")]
    after: Duration,
    /// Replay worker sessions (1 to 64)
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Fork strategy: btrfs-snapshot, reflink, template or copy [default: the fastest available]
    #[arg(long)]
    strategy: Option<Strategy>,
    /// Keep the fork afterwards for inspection
    #[arg(long)]
    keep_fork: bool,
    /// Cancel a statement running longer than this (e.g. 5m)
    #[arg(long)]
    statement_timeout: Option<Duration>,
    /// Stop the whole run after this long
    #[arg(long, default_value = "30m")]
    deadline: Duration,
    /// Lock sampling interval (1ms to 50ms)
    #[arg(long, default_value = "20ms")]
    sample_interval: Duration,
    /// Stand in for a long transaction production has at that hour: hold ACCESS SHARE on TABLE for DURATION from
    /// just before the migration (repeatable), e.g. orders:5s
    #[arg(long = "simulate-reader", value_parser = parse_reader)]
    long_readers: Vec<SimulatedReader>,
    /// Refuse to fork a sandbox that lags its source by more than this
    #[arg(long, default_value = "30s")]
    max_sandbox_lag: Duration,
    /// Thresholds file (TOML, `[thresholds]`) [default: .understudy.toml in the working directory, if present]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Writes that may wait behind the migration before the verdict is warn [default: 0]
    #[arg(long)]
    max_blocked_writes: Option<usize>,
    /// The longest a write may wait behind the migration before the verdict is fail [default: 1s]
    #[arg(long)]
    max_lock_wait: Option<Duration>,
    /// Replayed writes that may fail on the new schema [default: 0]
    #[arg(long)]
    max_failed_writes: Option<usize>,
    /// The longest the migration may run before the verdict is fail [default: no limit]
    #[arg(long)]
    max_duration: Option<Duration>,
    /// What an untested rollback (no --down) does to the verdict [default: warn]
    #[arg(long, value_enum)]
    rollback: Option<RollbackArg>,
    #[command(flatten)]
    schedule: crate::commands::schedule::ScheduleArgs,
    /// Run on this recording of the sandbox (`understudy record`): fork its start point and replay its stream
    #[arg(long)]
    recording: Option<String>,
    /// How fast the recording is replayed: 1 (its pace), 2, 4, ... or max [default: 1]
    #[arg(long, requires = "recording")]
    speed: Option<String>,
    /// Where in the recording's window the migration starts, in recorded time [default: --warmup]
    #[arg(long, requires = "recording")]
    migrate_at: Option<Duration>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    /// Write the report here instead of stdout
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum RollbackArg {
    Require,
    Warn,
    Ignore,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ReportFormat {
    Text,
    Json,
    Markdown,
}

/// `TABLE:DURATION`, e.g. `orders:30s`.
fn parse_reader(text: &str) -> Result<SimulatedReader, String> {
    let (table, hold) = text
        .rsplit_once(':')
        .filter(|(t, _)| !t.is_empty())
        .ok_or_else(|| format!("{text:?}: use TABLE:DURATION, e.g. orders:5s"))?;
    let hold: Duration = hold.parse().map_err(|e| format!("{text:?}: {e}"))?;
    Ok(SimulatedReader {
        table: table.to_string(),
        hold,
    })
}

fn read(what: &str, path: &Path) -> Result<SqlText, UsageError> {
    let sql = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read the {what} {}: {e}", path.display())))?;
    Ok(SqlText {
        name: Some(path.display().to_string()),
        sql,
    })
}

impl DryRunArgs {
    fn request(&self) -> anyhow::Result<DryRunRequest> {
        let mut r = DryRunRequest::new(&self.sandbox, read("migration", &self.up)?);
        r.down = self.down.as_deref().map(|p| read("down-migration", p)).transpose()?;
        r.checks = self.checks.as_deref().map(|p| read("checks", p)).transpose()?;
        r.verify = !self.no_verify;
        r.single_transaction = self.single_transaction;
        r.warmup = Some(self.warmup);
        r.after = Some(self.after);
        r.workers = Some(self.workers);
        r.strategy = self.strategy;
        r.keep_fork = self.keep_fork;
        r.statement_timeout = self.statement_timeout;
        r.deadline = Some(self.deadline);
        r.sample_interval = Some(self.sample_interval);
        r.simulate_readers = self.long_readers.clone();
        r.max_sandbox_lag = Some(self.max_sandbox_lag);
        r.recording = self.recording.clone();
        r.speed = self.speed.clone();
        r.migrate_at = self.migrate_at;
        r.thresholds = ThresholdOverrides {
            max_failed_writes: self.max_failed_writes,
            max_blocked_writes: self.max_blocked_writes,
            max_lock_wait: self.max_lock_wait,
            max_duration: self.max_duration,
            rollback: self.rollback.map(|r| match r {
                RollbackArg::Require => RollbackPolicy::Require,
                RollbackArg::Warn => RollbackPolicy::Warn,
                RollbackArg::Ignore => RollbackPolicy::Ignore,
            }),
        };
        r.schedule = self.schedule.spec();
        Ok(r)
    }

    /// The thresholds under the command line's: the config file's on top of the defaults.
    fn base_thresholds(&self) -> anyhow::Result<Thresholds> {
        let config = self
            .config
            .clone()
            .or_else(|| Some(PathBuf::from(".understudy.toml")).filter(|p| p.is_file()));
        Ok(match &config {
            Some(path) => Thresholds::default().with(&dryrun::config::load(path)?),
            None => Thresholds::default(),
        })
    }
}

pub async fn run(args: DryRunArgs, state_dir: StateDir) -> anyhow::Result<ExitCode> {
    let (opts, schedule) = args.request()?.validate(&args.base_thresholds()?)?;
    let cancel = CancellationToken::new();
    let run = dryrun::execute(&state_dir, &opts, &schedule, &dryrun::progress::Stderr, &cancel);
    tokio::pin!(run);
    let report = tokio::select! {
        result = &mut run => result?,
        _ = output::interrupted() => {
            eprintln!("interrupted; removing the forks and their capture slots");
            cancel.cancel();
            return Err(run.await.err().unwrap_or(dryrun::DryRunError::Cancelled).into());
        }
    };
    let rendered = match args.format {
        ReportFormat::Text => report.text(),
        ReportFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
        ReportFormat::Markdown => report.markdown(),
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, &rendered).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("report written to {}", path.display());
            if args.format != ReportFormat::Text {
                eprint!("{}", report.text());
            }
        }
        None => print!("{rendered}"),
    }
    Ok(ExitCode::from(report.verdict.result.exit_code()))
}

//! The `understudy` command line: a thin layer over the agent library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use understudy::pg::{ConnInfo, QualifiedName};
use understudy::progress::human_bytes;
use understudy::sandbox::{self, SandboxError, SandboxState, StateDir, follow};
use understudy::source::{Replicate, SandboxName};

#[derive(Parser)]
#[command(
    name = "understudy",
    version,
    about = "Rehearse PostgreSQL migrations on a live copy of production"
)]
struct Cli {
    /// Where sandboxes live [default: /var/lib/understudy as root, else ~/.local/state/understudy]
    #[arg(long, global = true, env = "UNDERSTUDY_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// More logging (also RUST_LOG)
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sandboxes: databases kept current with a source by logical replication
    #[command(subcommand)]
    Sandbox(SandboxCommand),
    /// Forks: writable copies of a sandbox at an exact point, that never reach the source
    #[command(subcommand)]
    Fork(ForkCommand),
    /// Rehearse a migration on a fork of a sandbox while production's writes are replayed into it
    DryRun(Box<DryRunArgs>),
    /// Lint migration files with squawk's rules (the static pass of a dry-run, without evidence)
    Lint {
        /// SQL files
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The PostgreSQL major version the migration targets
        #[arg(long, default_value_t = 15)]
        pg_version: u32,
    },
    /// Start an embedded "production" with a steady writer, follow it with a sandbox, and show it staying current
    Demo(DemoArgs),
}

#[derive(Subcommand)]
enum SandboxCommand {
    /// Create a sandbox following a source
    Create(CreateArgs),
    /// Show a sandbox's state, lag, retained WAL and tables
    Status {
        name: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// List sandboxes
    List {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Keep a sandbox current: apply the source's additive DDL, sync sequences, guard the source's WAL
    Watch {
        name: String,
        /// Seconds between passes
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// One pass, then exit
        #[arg(long)]
        once: bool,
    },
    /// Delete a sandbox and everything it holds on the source
    Delete {
        name: String,
        /// The source, when the sandbox's own record of it is lost
        #[arg(long, env = "UNDERSTUDY_SOURCE", hide_env_values = true)]
        source: Option<String>,
        /// Remove the local sandbox even if the source cannot be reached (prints what stays there)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum ForkCommand {
    /// Fork a sandbox now
    Create {
        /// The sandbox to fork
        sandbox: String,
        /// The fork's name [default: SANDBOX-<random>]
        #[arg(long)]
        name: Option<String>,
        /// Copy strategy [default: the fastest the state directory supports]
        #[arg(long, value_enum)]
        strategy: Option<understudy::fork::Strategy>,
        /// Remove the fork after this long (e.g. 30m, 4h, 2d)
        #[arg(long, default_value = "4h", value_parser = parse_duration)]
        ttl: Duration,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// List forks
    List {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Delete a fork and its capture slot
    Delete { name: String },
    /// Remove expired forks and forks whose creation was interrupted
    Sweep,
}

#[derive(Args)]
struct DryRunArgs {
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
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,
    /// Replay after the migration (e.g. 5s)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    after: Duration,
    /// Replay worker sessions
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Fork strategy [default: the fastest available]
    #[arg(long, value_enum)]
    strategy: Option<understudy::fork::Strategy>,
    /// Keep the fork afterwards for inspection
    #[arg(long)]
    keep_fork: bool,
    /// Cancel a statement running longer than this (e.g. 5m)
    #[arg(long, value_parser = parse_duration)]
    statement_timeout: Option<Duration>,
    /// Stop the whole run after this long
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    deadline: Duration,
    /// Lock sampling interval in milliseconds (at most 50)
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=50))]
    sample_interval_ms: u64,
    /// Stand in for a long transaction production has at that hour: hold ACCESS SHARE on TABLE for SECONDS from
    /// just before the migration (repeatable), e.g. orders:5
    #[arg(long = "simulate-reader", value_parser = parse_reader)]
    long_readers: Vec<(String, Duration)>,
    /// Thresholds file (TOML, `[thresholds]`) [default: .understudy.toml in the working directory, if present]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Writes that may wait behind the migration before the verdict is warn [default: 0]
    #[arg(long)]
    max_blocked_writes: Option<usize>,
    /// The longest a write may wait behind the migration before the verdict is fail [default: 1s]
    #[arg(long, value_parser = parse_duration)]
    max_lock_wait: Option<Duration>,
    /// Replayed writes that may fail on the new schema [default: 0]
    #[arg(long)]
    max_failed_writes: Option<usize>,
    /// The longest the migration may run before the verdict is fail [default: no limit]
    #[arg(long, value_parser = parse_duration)]
    max_duration: Option<Duration>,
    /// What an untested rollback (no --down) does to the verdict [default: warn]
    #[arg(long, value_enum)]
    rollback: Option<RollbackArg>,
    /// Start at this time of day (HH:MM, 24-hour), so the rehearsal meets the same traffic as the real run
    #[arg(long, conflicts_with = "cron")]
    at: Option<String>,
    /// Start at the next match of this cron expression (minute hour day-of-month month day-of-week)
    #[arg(long)]
    cron: Option<String>,
    /// Timezone for --at and --cron (IANA name) [default: the system's]
    #[arg(long)]
    tz: Option<String>,
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

#[derive(Args)]
struct CreateArgs {
    /// Sandbox name: lowercase letters, digits and '-'
    name: String,
    /// The source's libpq connection string or URI (prefer the env var: arguments are visible to other users;
    /// a missing password is taken from PGPASSWORD)
    #[arg(long, env = "UNDERSTUDY_SOURCE", hide_env_values = true)]
    source: String,
    /// Replicate an existing publication
    #[arg(long, conflicts_with_all = ["tables", "schema"])]
    publication: Option<String>,
    /// Replicate these tables (schema.table, comma-separated) in a publication Understudy creates
    #[arg(long, value_delimiter = ',', conflicts_with = "schema")]
    tables: Vec<String>,
    /// Replicate every table of this schema in a publication Understudy creates
    #[arg(long)]
    schema: Option<String>,
    /// Parallel copy workers
    #[arg(long, default_value_t = default_jobs())]
    jobs: usize,
    /// Most WAL the slot may keep on the source before the breaker drops it (e.g. 512MiB, 8GiB)
    #[arg(long, default_value = "4GiB", value_parser = parse_bytes)]
    wal_budget: u64,
    /// Do not draw progress
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Keep the clusters afterwards (prints how to connect)
    #[arg(long)]
    keep: bool,
    /// Seconds to watch the sandbox follow the writer
    #[arg(long, default_value_t = 6)]
    seconds: u64,
    /// Rows in the demo's largest table
    #[arg(long, default_value_t = 200_000)]
    rows: i64,
    /// Where to write the dry-run reports [default: a new directory under the temp directory]
    #[arg(long)]
    reports: Option<PathBuf>,
    /// Only the sandbox part (no dry-runs)
    #[arg(long)]
    sandbox_only: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
}

fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 512MiB or 8GiB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!("unknown size unit {other:?} (use B, KiB, MiB, GiB, TiB)"));
        }
    };
    Ok((value * mult) as u64)
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30m, 4h or 2d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" | "" => n * 3600,
        "d" => n * 86400,
        other => return Err(format!("unknown duration unit {other:?} (use s, m, h, d)")),
    };
    Ok(Duration::from_secs(secs))
}

fn parse_reader(text: &str) -> Result<(String, Duration), String> {
    let (table, secs) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?}: use TABLE:SECONDS, e.g. orders:5"))?;
    let secs: f64 = secs
        .parse()
        .map_err(|_| format!("{text:?}: SECONDS must be a number"))?;
    if table.is_empty() || !(0.0..=3600.0).contains(&secs) {
        return Err(format!("{text:?}: use TABLE:SECONDS with 0 to 3600 seconds"));
    }
    Ok((table.to_string(), Duration::from_secs_f64(secs)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = if cli.verbose { "understudy=debug,info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state_dir = StateDir::resolve(cli.state_dir.clone());
    match runtime.block_on(run(cli, state_dir)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            let bad_input = err.chain().any(|e| {
                matches!(
                    e.downcast_ref::<SandboxError>(),
                    Some(
                        SandboxError::Preflight(_)
                            | SandboxError::Name(_)
                            | SandboxError::NotFound { .. }
                            | SandboxError::Exists { .. }
                    )
                ) || matches!(
                    e.downcast_ref::<understudy::fork::ForkError>(),
                    Some(
                        understudy::fork::ForkError::NotFound(_)
                            | understudy::fork::ForkError::NotReady { .. }
                            | understudy::fork::ForkError::Unsupported { .. }
                            | understudy::fork::ForkError::Exists(_)
                            | understudy::fork::ForkError::Sandbox(SandboxError::NotFound { .. })
                    )
                ) || e.downcast_ref::<understudy::pg::conninfo::ConnInfoError>().is_some()
                    || e.downcast_ref::<UsageError>().is_some()
                    || matches!(
                        e.downcast_ref::<understudy::dryrun::DryRunError>(),
                        Some(understudy::dryrun::DryRunError::Fork(
                            understudy::fork::ForkError::NotReady { .. }
                                | understudy::fork::ForkError::Sandbox(SandboxError::NotFound { .. })
                                | understudy::fork::ForkError::Unsupported { .. }
                        ))
                    )
            });
            if bad_input {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli, state_dir: StateDir) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Sandbox(cmd) => sandbox_command(cmd, state_dir).await,
        Command::Fork(cmd) => fork_command(cmd, state_dir).await,
        Command::DryRun(args) => dry_run(*args, state_dir).await,
        Command::Lint { files, pg_version } => {
            let mut total = 0;
            for file in &files {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| UsageError(format!("cannot read {}: {e}", file.display())))?;
                for hit in understudy::lint::lint(&text, pg_version) {
                    total += 1;
                    println!(
                        "{}:{}:{}: {}: {}",
                        file.display(),
                        hit.line,
                        hit.column,
                        hit.rule,
                        hit.message
                    );
                    if let Some(help) = hit.help {
                        println!("  help: {help}");
                    }
                }
            }
            if total == 0 {
                println!("no lint findings in {} file(s)", files.len());
                Ok(ExitCode::SUCCESS)
            } else {
                println!(
                    "{total} finding(s); run `understudy dry-run` to measure what they would do on production's data"
                );
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Demo(args) => {
            let outcome = understudy::demo::run(understudy::demo::DemoOptions {
                keep: args.keep,
                watch_seconds: args.seconds,
                rows: args.rows,
                reports: args.reports,
                sandbox_only: args.sandbox_only,
                state_dir: cli.state_dir,
            })
            .await?;
            if outcome.tables_equal != outcome.tables_total {
                anyhow::bail!(
                    "the sandbox did not end equal to production: {}/{} tables equal",
                    outcome.tables_equal,
                    outcome.tables_total
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn source_from(text: &str) -> anyhow::Result<ConnInfo> {
    let mut info = ConnInfo::parse(text)?;
    if info.password().is_none()
        && let Ok(password) = std::env::var("PGPASSWORD")
    {
        info.set("password", &password);
    }
    Ok(info)
}

async fn sandbox_command(cmd: SandboxCommand, state_dir: StateDir) -> anyhow::Result<ExitCode> {
    match cmd {
        SandboxCommand::Create(args) => {
            let name = SandboxName::parse(&args.name).map_err(SandboxError::from)?;
            let replicate = match (args.publication, args.tables.is_empty(), args.schema) {
                (Some(p), true, None) => Replicate::Publication(p),
                (None, false, None) => Replicate::Tables(args.tables.iter().map(|t| QualifiedName::parse(t)).collect()),
                (None, true, Some(s)) => Replicate::Schema(s),
                _ => anyhow::bail!(
                    "say what to replicate: --publication NAME (an existing publication), --tables a,b or --schema NAME"
                ),
            };
            let opts = sandbox::CreateOptions {
                name: name.clone(),
                source: source_from(&args.source)?,
                replicate,
                state_dir: state_dir.clone(),
                jobs: args.jobs.max(1),
                wal_budget_bytes: args.wal_budget,
                progress: !args.no_progress,
            };
            let say = |line: &str| eprintln!("{line}");
            let created = tokio::select! {
                result = sandbox::create(&opts, &say) => result,
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("interrupted; removing what was created");
                    sandbox::delete(&state_dir, &name, None, false).await.ok();
                    return Err(SandboxError::Interrupted.into());
                }
            };
            let meta = created?;
            let copy = meta.initial_copy.clone().unwrap_or_default();
            println!(
                "sandbox {} is ready: {} table(s), {} rows copied in {:.1}s (total {:.1}s); streaming from slot {}",
                meta.name, copy.tables, copy.rows, copy.copy_seconds, copy.total_seconds, meta.slot
            );
            println!("keep it current with: understudy sandbox watch {}", meta.name);
            Ok(ExitCode::SUCCESS)
        }
        SandboxCommand::Status { name, format } => {
            let name = SandboxName::parse(&name).map_err(SandboxError::from)?;
            let st = sandbox::status(&state_dir, &name).await?;
            if format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
            Ok(match st.state {
                SandboxState::Ready | SandboxState::InitialSync => ExitCode::SUCCESS,
                _ => ExitCode::from(3),
            })
        }
        SandboxCommand::List { format } => {
            let mut rows = Vec::new();
            for name in state_dir.sandbox_names() {
                let dir = state_dir.sandbox_dir(&name);
                match sandbox::SandboxMeta::load(&dir) {
                    Ok(meta) => rows.push(serde_json::json!({
                        "name": name.as_str(), "phase": meta.phase, "source": meta.source,
                        "publication": meta.publication, "created_at": meta.created_at.to_string(),
                    })),
                    Err(e) => rows.push(serde_json::json!({"name": name.as_str(), "error": e.to_string()})),
                }
            }
            if format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                println!("no sandboxes in {}", state_dir.root().display());
            } else {
                println!("{:<24} {:<13} {:<20} SOURCE", "NAME", "PHASE", "CREATED");
                for r in rows {
                    let field = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("-").to_string();
                    let phase = r
                        .get("phase")
                        .and_then(|v| v.as_str())
                        .map(str::to_string)
                        .unwrap_or_else(|| field("error"));
                    println!(
                        "{:<24} {:<13} {:<20} {}",
                        field("name"),
                        phase,
                        field("created_at").chars().take(19).collect::<String>(),
                        field("source")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SandboxCommand::Watch { name, interval, once } => {
            let name = SandboxName::parse(&name).map_err(SandboxError::from)?;
            let interval = Duration::from_secs_f64(interval.max(0.2));
            loop {
                let report = follow::follow_once(&state_dir, &name).await?;
                for line in &report.applied {
                    println!("applied: {line}");
                }
                for line in &report.pending {
                    println!("drift (not applied): {line}");
                }
                if let Some(err) = &report.error {
                    println!("error: {err}");
                }
                if once || report.breaker_tripped {
                    return Ok(if report.error.is_some() || !report.pending.is_empty() {
                        ExitCode::from(3)
                    } else {
                        ExitCode::SUCCESS
                    });
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
                }
            }
        }
        SandboxCommand::Delete { name, source, force } => {
            let name = SandboxName::parse(&name).map_err(SandboxError::from)?;
            let source = source.map(|s| source_from(&s)).transpose()?;
            let report = sandbox::delete(&state_dir, &name, source, force)
                .await
                .context(format!("deleting sandbox {name}"))?;
            for slot in &report.slots_dropped {
                println!("dropped slot {slot} on the source");
            }
            if let Some(p) = &report.publication_dropped {
                println!("dropped publication {p} on the source");
            }
            println!("sandbox {name} deleted");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn dry_run(args: DryRunArgs, state_dir: StateDir) -> anyhow::Result<ExitCode> {
    use understudy::dryrun::{self, report::Verdict};
    use understudy::schedule::{self, Schedule};
    let sandbox = SandboxName::parse(&args.sandbox).map_err(SandboxError::from)?;
    let config = args
        .config
        .clone()
        .or_else(|| Some(PathBuf::from(".understudy.toml")).filter(|p| p.is_file()));
    let mut thresholds = match &config {
        Some(path) => dryrun::config::load(path).map_err(|e| UsageError(e.to_string()))?,
        None => dryrun::Thresholds::default(),
    };
    if let Some(v) = args.max_failed_writes {
        thresholds.max_failed_writes = v;
    }
    if let Some(v) = args.max_blocked_writes {
        thresholds.max_blocked_writes = v;
    }
    if let Some(v) = args.max_lock_wait {
        thresholds.max_lock_wait = v;
    }
    if let Some(v) = args.max_duration {
        thresholds.max_duration = Some(v);
    }
    if let Some(v) = args.rollback {
        thresholds.rollback = match v {
            RollbackArg::Require => dryrun::config::RollbackPolicy::Require,
            RollbackArg::Warn => dryrun::config::RollbackPolicy::Warn,
            RollbackArg::Ignore => dryrun::config::RollbackPolicy::Ignore,
        };
    }
    let when = match (&args.at, &args.cron) {
        (Some(at), _) => Schedule::at(at, args.tz.as_deref()),
        (None, Some(cron)) => Schedule::cron(cron, args.tz.as_deref()),
        (None, None) => Ok(Schedule::Now),
    }
    .map_err(|e| UsageError(e.to_string()))?;
    // Check the migration file before waiting for the schedule.
    let text =
        std::fs::read_to_string(&args.up).map_err(|e| UsageError(format!("cannot read {}: {e}", args.up.display())))?;
    understudy::migrate::Plan::parse(&text, args.single_transaction)
        .map_err(|e| UsageError(format!("{}: {e}", args.up.display())))?;
    if !matches!(when, Schedule::Now) {
        let now = jiff::Zoned::now();
        let upcoming = when.upcoming(&now, 3).map_err(|e| UsageError(e.to_string()))?;
        let list: Vec<String> = upcoming.iter().map(ToString::to_string).collect();
        eprintln!("scheduled; next starts: {}", list.join(", "));
        if let Some(first) = upcoming.first() {
            tokio::select! {
                _ = schedule::wait_until(first) => {}
                _ = tokio::signal::ctrl_c() => return Err(SandboxError::Interrupted.into()),
            }
        }
    }
    let fork_name = SandboxName::parse(&format!(
        "dryrun-{}",
        understudy::fork::default_name(&sandbox)?.as_str()
    ))
    .or_else(|_| understudy::fork::default_name(&sandbox))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let opts = dryrun::DryRunOptions {
        sandbox,
        up: args.up,
        down: args.down,
        checks: args.checks,
        verify: !args.no_verify,
        single_transaction: args.single_transaction,
        warmup: args.warmup,
        after: args.after,
        workers: args.workers.max(1),
        strategy: args.strategy,
        fork_name: fork_name.clone(),
        keep_fork: args.keep_fork,
        statement_timeout: args.statement_timeout,
        deadline: args.deadline,
        sample_interval: Duration::from_millis(args.sample_interval_ms),
        thresholds,
        long_readers: args.long_readers,
    };
    let say = |line: &str| eprintln!("{line}");
    let report = tokio::select! {
        result = dryrun::run(&state_dir, &opts, &say) => result.map_err(|e| match e {
            dryrun::DryRunError::Plan { .. } | dryrun::DryRunError::Read { .. } => anyhow::Error::new(UsageError(e.to_string())),
            other => anyhow::Error::new(other),
        })?,
        _ = tokio::signal::ctrl_c() => {
                        eprintln!("interrupted; removing the forks and their capture slots");
            for name in [fork_name.clone(), dryrun::control_name(&fork_name)] {
                match understudy::fork::delete(&state_dir, &name).await {
                    Ok(()) | Err(understudy::fork::ForkError::NotFound(_)) => {}
                    Err(e) => eprintln!("cleanup: {e}"),
                }
            }
            return Err(SandboxError::Interrupted.into());
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
    Ok(match report.verdict.result {
        Verdict::Pass => ExitCode::SUCCESS,
        Verdict::Warn => ExitCode::from(3),
        Verdict::Fail => ExitCode::FAILURE,
    })
}

/// Bad input detected by the command line (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

async fn fork_command(cmd: ForkCommand, state_dir: StateDir) -> anyhow::Result<ExitCode> {
    use understudy::fork;
    match cmd {
        ForkCommand::Create {
            sandbox,
            name,
            strategy,
            ttl,
            format,
        } => {
            let sandbox = SandboxName::parse(&sandbox).map_err(SandboxError::from)?;
            let name = match name {
                Some(n) => SandboxName::parse(&n).map_err(SandboxError::from)?,
                None => fork::default_name(&sandbox)?,
            };
            let opts = fork::ForkOptions {
                sandbox,
                name: Some(name.clone()),
                strategy,
                ttl,
                owner_pid: None,
            };
            let say = |line: &str| eprintln!("{line}");
            let meta = tokio::select! {
                result = fork::create(&state_dir, &opts, &say) => result?,
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("interrupted; removing the fork");
                    // The interrupted create was dropped (its copy killed); remove what it left.
                    if let Err(e) = fork::delete(&state_dir, &name).await {
                        eprintln!("cleanup: {e}");
                    }
                    return Err(SandboxError::Interrupted.into());
                }
            };
            let sandbox_meta = sandbox::SandboxMeta::load(&state_dir.sandbox_dir(&meta.sandbox))?;
            if format == Format::Json {
                let mut value = serde_json::to_value(&meta)?;
                value["conninfo"] = serde_json::Value::String(meta.conninfo(&sandbox_meta));
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!(
                    "fork {} of {} at {} ({}; {}), ready in {} ms, sandbox apply paused {} ms",
                    meta.name,
                    meta.sandbox,
                    meta.lsn.map(|l| l.to_string()).unwrap_or_default(),
                    meta.strategy.as_str(),
                    meta.strategy_reason,
                    meta.timings.total_ms,
                    meta.timings.pause_ms
                );
                println!("connect: psql \"{}\"", meta.conninfo(&sandbox_meta));
                println!(
                    "expires {}; remove with: understudy fork delete {}",
                    meta.expires_at, meta.name
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ForkCommand::List { format } => {
            let forks = fork::list(&state_dir);
            if format == Format::Json {
                println!("{}", serde_json::to_string_pretty(&forks)?);
            } else if forks.is_empty() {
                println!("no forks in {}", state_dir.root().display());
            } else {
                println!(
                    "{:<28} {:<20} {:<15} {:<14} {:<10} EXPIRES",
                    "NAME", "SANDBOX", "STRATEGY", "LSN", "PHASE"
                );
                for f in forks {
                    println!(
                        "{:<28} {:<20} {:<15} {:<14} {:<10} {}",
                        f.name.as_str(),
                        f.sandbox.as_str(),
                        f.strategy.as_str(),
                        f.lsn.map(|l| l.to_string()).unwrap_or_default(),
                        format!("{:?}", f.phase).to_lowercase(),
                        f.expires_at
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ForkCommand::Delete { name } => {
            let name = SandboxName::parse(&name).map_err(SandboxError::from)?;
            fork::delete(&state_dir, &name).await?;
            println!("fork {name} deleted (and its capture slot on the sandbox)");
            Ok(ExitCode::SUCCESS)
        }
        ForkCommand::Sweep => {
            for name in fork::sweep(&state_dir).await? {
                println!("removed fork {name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_status(st: &sandbox::SandboxStatus) {
    let state = serde_json::to_value(st.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    println!("sandbox {}: {state}", st.name);
    for reason in &st.reasons {
        println!("  ! {reason}");
    }
    println!("  source       {}", st.source);
    println!("  publication  {}   slot {}", st.publication, st.slot);
    println!(
        "  sandbox      {} (server {})",
        st.cluster,
        if st.cluster_running { "running" } else { "stopped" }
    );
    println!(
        "  apply        worker {}, {} error(s); received {}, confirmed {}",
        if st.apply_worker_running {
            "running"
        } else {
            "not running"
        },
        st.apply_error_count,
        st.received_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
        st.applied_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
    );
    println!(
        "  lag          {} bytes, {} s",
        st.lag_bytes.map(|b| b.to_string()).unwrap_or_else(|| "?".into()),
        st.lag_seconds.map(|s| format!("{s:.2}")).unwrap_or_else(|| "?".into())
    );
    println!(
        "  source WAL   our slot keeps {} (wal_status {}), budget {}",
        st.retained_wal_bytes.map(human_bytes).unwrap_or_else(|| "?".into()),
        st.wal_status.clone().unwrap_or_else(|| "?".into()),
        human_bytes(st.wal_budget_bytes)
    );
    println!("  tables       {}", st.tables.len());
    for t in &st.tables {
        println!("    {:<40} {}", t.table, t.state);
    }
    for d in &st.drift {
        println!("  drift        {d}");
    }
    for w in &st.warnings {
        println!("  warning      {w}");
    }
    if let Some(e) = &st.last_error {
        println!("  last error   {} ({})", e.message, e.at);
        println!("  fix          {}", e.fix);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512MiB"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_bytes("8GiB"), Ok(8 * 1024 * 1024 * 1024));
        assert_eq!(parse_bytes("100"), Ok(100));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
    }
}

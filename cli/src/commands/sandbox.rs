//! `understudy sandbox create|status|list|watch|delete`.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use understudy::error::UsageError;
use understudy::pg::{ConnInfo, QualifiedName};
use understudy::progress::human_bytes;
use understudy::sandbox::{self, SandboxState, StateDir, follow};
use understudy::source::{Replicate, SandboxName};
use understudy::units::ByteSize;

use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum SandboxCommand {
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
    /// Keep the sandboxes current in the foreground: the agent (restarts, DDL, sequences, the WAL budget
    /// breaker, the API); with --once, one follower pass over NAME
    Watch {
        /// With --once, the sandbox to pass over
        name: Option<String>,
        /// One follower pass over NAME, then exit
        #[arg(long, requires = "name")]
        once: bool,
        #[command(flatten)]
        serve: crate::commands::agent::ServeArgs,
    },
    /// Rebuild a stale sandbox from its source now (the agent does it by itself unless the policy is manual)
    Resync { name: String },
    /// Give a masked sandbox a new mask config, to classify columns the source added since (policies already
    /// given stay as they are)
    Mask {
        name: String,
        /// The TOML file: a policy per column of each masked table
        #[arg(long, value_name = "FILE")]
        mask_config: std::path::PathBuf,
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

#[derive(Args)]
pub struct CreateArgs {
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
    #[arg(long, default_value = "4GiB")]
    wal_budget: ByteSize,
    /// Do not draw progress
    #[arg(long)]
    no_progress: bool,
    /// When the sandbox goes stale (a gap in the stream, the breaker): auto rebuilds it once the source is
    /// healthy, manual waits for `understudy sandbox resync`
    #[arg(long, default_value = "auto")]
    resync: sandbox::state::ResyncPolicy,
    /// Hold only these rows (repeatable): `TABLE: FILTER` filters one table, a bare FILTER is a partitioning key
    /// for every table with its columns (`tenant_id IN (3, 17)`); parents of the rows held are copied too
    #[arg(long, value_name = "FILTER")]
    subset: Vec<String>,
    /// Mask personal data as it arrives: a TOML file with a policy per column of each masked table (keep,
    /// fake-email, fake-name, hash, null, exclude)
    #[arg(long, value_name = "FILE")]
    mask_config: Option<std::path::PathBuf>,
}

/// The `--subset` flags as one subset, `None` without any.
fn subset_from(flags: &[String]) -> anyhow::Result<Option<understudy::source::Subset>> {
    if flags.is_empty() {
        return Ok(None);
    }
    let mut subset = understudy::source::Subset::default();
    for flag in flags {
        subset.add_flag(flag).map_err(UsageError)?;
    }
    subset.check().map_err(UsageError)?;
    Ok(Some(subset))
}

/// A mask config file, read and parsed.
pub fn mask_from(path: &std::path::Path) -> anyhow::Result<understudy::mask::MaskConfig> {
    let text =
        std::fs::read_to_string(path).map_err(|e| UsageError(format!("--mask-config {}: {e}", path.display())))?;
    understudy::mask::MaskConfig::parse(&text)
        .map_err(|e| UsageError(format!("--mask-config {}: {e}", path.display())).into())
}

fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
}

/// A source connection string, with the password from `PGPASSWORD` when the string has none.
pub fn source_from(text: &str) -> anyhow::Result<ConnInfo> {
    let mut info = ConnInfo::parse(text)?;
    if info.password().is_none()
        && let Ok(password) = std::env::var("PGPASSWORD")
    {
        info.set("password", &password);
    }
    Ok(info)
}

fn name(text: &str) -> anyhow::Result<SandboxName> {
    Ok(SandboxName::parse(text)?)
}

pub async fn run(cmd: SandboxCommand, state_dir: StateDir) -> anyhow::Result<ExitCode> {
    match cmd {
        SandboxCommand::Create(args) => create(args, state_dir).await,
        SandboxCommand::Status { name: n, format } => {
            let st = sandbox::status(&state_dir, &name(&n)?).await?;
            let agent = understudy::agent::running(&state_dir);
            if format == Format::Json {
                let mut value = serde_json::to_value(&st)?;
                value["agent"] = serde_json::to_value(&agent)?;
                output::json(&value)?;
            } else {
                print_status(&st);
                match agent {
                    Some(a) => println!("  agent        running (pid {}, {}), keeps it current", a.pid, a.url()),
                    None => println!(
                        "  agent        not running: nothing keeps the sandbox current (`understudy agent start`)"
                    ),
                }
            }
            Ok(match st.state {
                SandboxState::Ready | SandboxState::InitialSync => ExitCode::SUCCESS,
                _ => ExitCode::from(3),
            })
        }
        SandboxCommand::List { format } => list(&state_dir, format),
        SandboxCommand::Watch { name: n, once, serve } => match (n, once) {
            (Some(n), true) => watch_once(&state_dir, &name(&n)?).await,
            _ => crate::commands::agent::foreground(&serve, &state_dir).await,
        },
        SandboxCommand::Mask { name: n, mask_config } => {
            let n = name(&n)?;
            let config = mask_from(&mask_config)?;
            let done = sandbox::masking::reclassify(&state_dir, &n, &config).await?;
            println!("sandbox {n}: mask config saved and applied");
            for column in &done.classified {
                println!(
                    "  classified   {column} (rows that arrived before hold its filler until the sandbox is \
                     created anew)"
                );
            }
            for column in &done.unclassified {
                println!("  unclassified {column} (still held back)");
            }
            Ok(ExitCode::SUCCESS)
        }
        SandboxCommand::Resync { name: n } => {
            let n = name(&n)?;
            let _lock = sandbox::SandboxLock::acquire(&state_dir, &n).await?;
            let say = |line: &str| eprintln!("{line}");
            let new = sandbox::resync::resync(&state_dir, &n, &say)
                .await
                .context(format!("resyncing sandbox {n}"))?;
            println!("sandbox {n} resynced: generation {} is current", new.generation);
            Ok(ExitCode::SUCCESS)
        }
        SandboxCommand::Delete { name: n, source, force } => {
            let n = name(&n)?;
            let source = source.map(|s| source_from(&s)).transpose()?;
            let report = sandbox::delete(&state_dir, &n, source, force)
                .await
                .context(format!("deleting sandbox {n}"))?;
            for slot in &report.slots_dropped {
                println!("dropped slot {slot} on the source");
            }
            if let Some(p) = &report.publication_dropped {
                println!("dropped publication {p} on the source");
            }
            println!("sandbox {n} deleted");
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn create(args: CreateArgs, state_dir: StateDir) -> anyhow::Result<ExitCode> {
    let n = name(&args.name)?;
    let replicate = match (args.publication, args.tables.is_empty(), args.schema) {
        (Some(p), true, None) => Replicate::Publication(p),
        (None, false, None) => Replicate::Tables(args.tables.iter().map(|t| QualifiedName::parse(t)).collect()),
        (None, true, Some(s)) => Replicate::Schema(s),
        _ => {
            return Err(UsageError(
                "say what to replicate: --publication NAME (an existing publication), --tables a,b or --schema NAME"
                    .into(),
            )
            .into());
        }
    };
    let opts = sandbox::CreateOptions {
        name: n.clone(),
        source: source_from(&args.source)?,
        replicate,
        state_dir: state_dir.clone(),
        jobs: args.jobs.max(1),
        wal_budget_bytes: args.wal_budget.bytes(),
        progress: !args.no_progress,
        resync: args.resync,
        subset: subset_from(&args.subset)?,
        mask: match &args.mask_config {
            Some(path) => Some(mask_from(path)?),
            None => None,
        },
    };
    let say = |line: &str| eprintln!("{line}");
    let created = tokio::select! {
        result = sandbox::create(&opts, &say) => result,
        _ = output::interrupted() => {
            eprintln!("interrupted; removing what was created");
            sandbox::delete(&state_dir, &n, None, false).await.ok();
            return Err(sandbox::SandboxError::Interrupted.into());
        }
    };
    let meta = created?;
    let copy = meta.initial_copy.clone().unwrap_or_default();
    println!(
        "sandbox {} is ready: {} table(s), {} rows copied in {:.1}s (total {:.1}s); streaming from slot {}",
        meta.name, copy.tables, copy.rows, copy.copy_seconds, copy.total_seconds, meta.slot
    );
    let agent = crate::commands::agent::ensure_running(&state_dir).await?;
    println!(
        "the agent (pid {}, {}) keeps it current; stop it with `understudy agent stop`",
        agent.pid,
        agent.url()
    );
    Ok(ExitCode::SUCCESS)
}

fn list(state_dir: &StateDir, format: Format) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    for n in state_dir.sandbox_names() {
        let dir = state_dir.sandbox_dir(&n);
        match sandbox::SandboxMeta::load(&dir) {
            Ok(meta) => rows.push(serde_json::json!({
                "name": n.as_str(), "phase": meta.phase, "source": meta.source,
                "publication": meta.publication, "created_at": meta.created_at.to_string(),
            })),
            Err(e) => rows.push(serde_json::json!({"name": n.as_str(), "error": e.to_string()})),
        }
    }
    if format == Format::Json {
        output::json(&rows)?;
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

/// One follower pass (DDL, sequences, the breaker); exit 3 when something is left to do.
async fn watch_once(state_dir: &StateDir, n: &SandboxName) -> anyhow::Result<ExitCode> {
    let report = follow::follow_once(state_dir, n).await?;
    for line in &report.applied {
        println!("applied: {line}");
    }
    for line in &report.pending {
        println!("drift (not applied): {line}");
    }
    if let Some(err) = &report.error {
        println!("error: {err}");
    }
    Ok(if report.error.is_some() || !report.pending.is_empty() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
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
        st.wal_status.map(|w| w.as_str()).unwrap_or("?"),
        human_bytes(st.wal_budget_bytes)
    );
    if let Some(seconds) = st.source_outage_seconds {
        println!("  outage       the source has not been reached for {seconds:.0} s");
    } else if let Some(o) = &st.last_outage {
        println!("  last outage  {:.1} s, ended {}", o.seconds, o.ended_at);
    }
    println!(
        "  generation   {} (resync policy {})",
        st.generation,
        st.resync.as_str()
    );
    if let Some(reason) = &st.stale_reason {
        println!("  stale        {reason}");
    }
    if let Some(resync) = &st.resync_status {
        println!("  resync       {}", resync.describe());
    }
    println!("  tables       {}", st.tables.len());
    for t in &st.tables {
        println!("    {:<40} {}", t.table, t.state);
    }
    if let Some(subset) = &st.subset {
        println!(
            "  subset       {} table(s) filtered{}; rows present (estimates, from both servers' statistics):",
            subset.filters.len(),
            subset
                .key
                .as_deref()
                .map(|k| format!(" by key {k}"))
                .unwrap_or_default()
        );
        for s in &st.shares {
            println!(
                "    {:<40} {:>10} of {:>10}  {:>6}  {}",
                s.table,
                s.rows,
                s.source_rows,
                s.share
                    .map(|x| format!("{:.1}%", x * 100.0))
                    .unwrap_or_else(|| "-".into()),
                s.filter
                    .as_deref()
                    .map(|f| format!("WHERE {f}"))
                    .unwrap_or_else(|| "whole".into())
            );
        }
    }
    if let Some(masking) = &st.masking {
        let columns: usize = masking.tables.values().map(|c| c.len()).sum();
        println!(
            "  masking      {} table(s), {columns} column(s) classified (values masked as they arrive)",
            masking.tables.len()
        );
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

//! `understudy record` and `understudy recording list|show|delete`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use understudy::recording::{self, RecordOptions, RecordingMeta};
use understudy::sandbox::{SandboxError, StateDir};
use understudy::schedule::Schedule;
use understudy::source::SandboxName;
use understudy::units;

use crate::output::{self, Format};

#[derive(Args)]
pub struct RecordArgs {
    /// The sandbox whose write stream to record
    #[arg(long)]
    sandbox: String,
    /// How long the window is (e.g. 10m)
    #[arg(long = "for")]
    window: units::Duration,
    /// The recording's name [default: SANDBOX-<random>]
    #[arg(long)]
    name: Option<String>,
    /// Keep the recording (and its start point) this long (e.g. 7d)
    #[arg(long, default_value = "7d")]
    ttl: units::Duration,
    #[command(flatten)]
    schedule: crate::commands::schedule::ScheduleArgs,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Subcommand)]
pub enum RecordingCommand {
    /// List recordings
    List {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Show one recording: its window, transactions, size and the tables it touched
    Show {
        name: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Delete a recording and its start point
    Delete { name: String },
}

pub async fn record(args: RecordArgs, state: StateDir) -> anyhow::Result<ExitCode> {
    let schedule = args.schedule.spec().parse()?;
    let opts = RecordOptions {
        sandbox: SandboxName::parse(&args.sandbox)?,
        name: args.name.as_deref().map(SandboxName::parse).transpose()?,
        window: args.window.get(),
        ttl: args.ttl.get(),
    };
    // The window and the sandbox are checked before anything waits.
    opts.check()?;
    state.sandbox(&opts.sandbox)?;
    if !matches!(schedule, Schedule::Now)
        && let Some(first) = schedule.upcoming(&jiff::Zoned::now(), 1)?.first()
    {
        eprintln!("recording starts at {first}");
        tokio::select! {
            _ = understudy::schedule::wait_until(first) => {}
            _ = output::interrupted() => return Err(SandboxError::Interrupted.into()),
        }
    }
    let say = |line: &str| eprintln!("{line}");
    let meta = tokio::select! {
        result = recording::take(&state, &opts, &say) => result?,
        _ = output::interrupted() => {
            eprintln!("interrupted; removing the recording");
            recording::sweep(&state).await.ok();
            return Err(SandboxError::Interrupted.into());
        }
    };
    print(&meta, args.format)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn run(cmd: RecordingCommand, state: StateDir) -> anyhow::Result<ExitCode> {
    match cmd {
        RecordingCommand::List { format } => {
            let all = recording::list(&state);
            if format == Format::Json {
                output::json(&all)?;
            } else if all.is_empty() {
                println!("no recordings in {}", state.root().display());
            } else {
                println!(
                    "{:<28} {:<20} {:<10} {:>8} {:>10} {:>10} EXPIRES",
                    "NAME", "SANDBOX", "PHASE", "WINDOW", "TXNS", "SIZE"
                );
                for r in all {
                    println!(
                        "{:<28} {:<20} {:<10} {:>8} {:>10} {:>10} {}",
                        r.name.as_str(),
                        r.sandbox.as_str(),
                        r.phase.as_str(),
                        humantime::format_duration(whole_seconds(&r)).to_string(),
                        r.transactions,
                        bytesize::ByteSize::b(r.bytes).to_string(),
                        r.expires_at
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RecordingCommand::Show { name, format } => {
            let meta = recording::load(&state, &SandboxName::parse(&name)?)?;
            print(&meta, format)?;
            Ok(ExitCode::SUCCESS)
        }
        RecordingCommand::Delete { name } => {
            let name = SandboxName::parse(&name)?;
            recording::delete(&state, &name).await?;
            println!("recording {name} deleted (and its start point)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn whole_seconds(r: &RecordingMeta) -> std::time::Duration {
    std::time::Duration::from_secs(r.span().as_secs())
}

fn print(meta: &RecordingMeta, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return output::json(meta);
    }
    println!(
        "recording {} of sandbox {} ({})",
        meta.name,
        meta.sandbox,
        meta.phase.as_str()
    );
    println!(
        "window: {} to {} ({} of commits), from {} to {}",
        meta.window_start,
        meta.window_end.map(|t| t.to_string()).unwrap_or_else(|| "now".into()),
        humantime::format_duration(whole_seconds(meta)),
        meta.start_lsn,
        meta.end_lsn
    );
    println!(
        "transactions: {}, changes: {}, size: {} ({} before compression)",
        meta.transactions,
        meta.changes,
        bytesize::ByteSize::b(meta.bytes),
        bytesize::ByteSize::b(meta.raw_bytes)
    );
    let tables: Vec<&str> = meta.tables.iter().map(String::as_str).collect();
    println!(
        "tables: {}",
        if tables.is_empty() {
            "none".into()
        } else {
            tables.join(", ")
        }
    );
    println!("start point: fork {}; expires {}", meta.fork, meta.expires_at);
    Ok(())
}

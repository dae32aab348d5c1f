//! `understudy fork create|list|delete|sweep`.

use std::process::ExitCode;

use clap::Subcommand;
use understudy::fork::{self, Strategy};
use understudy::sandbox::{self, StateDir};
use understudy::source::SandboxName;
use understudy::units;

use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum ForkCommand {
    /// Fork a sandbox now
    Create {
        /// The sandbox to fork
        sandbox: String,
        /// The fork's name [default: SANDBOX-<random>]
        #[arg(long)]
        name: Option<String>,
        /// Copy strategy: btrfs-snapshot, reflink, template or copy [default: the fastest the state directory
        /// supports]
        #[arg(long)]
        strategy: Option<Strategy>,
        /// Remove the fork after this long (e.g. 30m, 4h, 2d)
        #[arg(long, default_value = "4h")]
        ttl: units::Duration,
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

pub async fn run(cmd: ForkCommand, state_dir: StateDir) -> anyhow::Result<ExitCode> {
    match cmd {
        ForkCommand::Create {
            sandbox,
            name,
            strategy,
            ttl,
            format,
        } => create(&state_dir, &sandbox, name, strategy, ttl, format).await,
        ForkCommand::List { format } => {
            let forks = fork::list(&state_dir);
            if format == Format::Json {
                output::json(&forks)?;
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
                        f.phase.as_str(),
                        f.expires_at
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ForkCommand::Delete { name } => {
            let name = SandboxName::parse(&name)?;
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

async fn create(
    state_dir: &StateDir,
    sandbox: &str,
    name: Option<String>,
    strategy: Option<Strategy>,
    ttl: units::Duration,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let sandbox = SandboxName::parse(sandbox)?;
    let name = match name {
        Some(n) => SandboxName::parse(&n)?,
        None => fork::default_name(&sandbox)?,
    };
    let opts = fork::ForkOptions {
        sandbox,
        name: Some(name.clone()),
        strategy,
        ttl: ttl.get(),
        owner_pid: None,
    };
    let say = |line: &str| eprintln!("{line}");
    let meta = tokio::select! {
        result = fork::create(state_dir, &opts, &say) => result?,
        _ = output::interrupted() => {
            eprintln!("interrupted; removing the fork");
            // The interrupted create was dropped (its copy killed); remove what it left.
            if let Err(e) = fork::delete(state_dir, &name).await {
                eprintln!("cleanup: {e}");
            }
            return Err(sandbox::SandboxError::Interrupted.into());
        }
    };
    let sandbox_meta = sandbox::SandboxMeta::load(&state_dir.sandbox_dir(&meta.sandbox))?;
    if format == Format::Json {
        let mut value = serde_json::to_value(&meta)?;
        value["conninfo"] = serde_json::Value::String(meta.conninfo(&sandbox_meta));
        output::json(&value)?;
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

//! The `understudy` command line: a thin clap layer over the agent library. Each command's flags and output live
//! in `commands/`; what a command does lives in the library.

mod commands;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use understudy::ErrorKind;
use understudy::sandbox::StateDir;

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
    Sandbox(commands::sandbox::SandboxCommand),
    /// The source's side: what its DBA runs for a sandbox
    #[command(subcommand)]
    Source(commands::source::SourceCommand),
    /// Find what nobody owns (forks, capture slots; with --source the source's slots and publications), and
    /// remove it with --apply
    Sweep(commands::sweep::SweepArgs),
    /// Forks: writable copies of a sandbox at an exact point, that never reach the source
    #[command(subcommand)]
    Fork(commands::fork::ForkCommand),
    /// Record a window of a sandbox's write stream, with a fork at its start, to replay later (`dry-run
    /// --recording`)
    Record(commands::recording::RecordArgs),
    /// Recordings: list, show and delete them
    #[command(subcommand)]
    Recording(commands::recording::RecordingCommand),
    /// Rehearse a migration on a fork of a sandbox while production's writes are replayed into it
    DryRun(Box<commands::dryrun::DryRunArgs>),
    /// Lint migration files with squawk's rules (the static pass of a dry-run, without evidence)
    Lint(commands::lint::LintArgs),
    /// The agent: keeps this state directory's sandboxes current and serves the API (in the foreground; `agent
    /// start` runs it as a daemon)
    Agent(commands::agent::AgentArgs),
    /// Start an embedded "production" with a steady writer, follow it with a sandbox, and rehearse migrations
    Demo(commands::demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = if cli.verbose { "understudy=debug,info" } else { "warn" };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Logs on stderr; traces over OTLP too when so built and configured (the exporter runs on the runtime).
    let _telemetry = match runtime.block_on(async { understudy::telemetry::init(filter, "understudy") }) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(ErrorKind::Invalid.exit_code());
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            let kind: ErrorKind = understudy::classify::kind_of_chain(err.chain());
            ExitCode::from(kind.exit_code())
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let state_dir = StateDir::resolve(cli.state_dir.clone());
    match cli.command {
        Command::Sandbox(cmd) => commands::sandbox::run(cmd, state_dir).await,
        Command::Fork(cmd) => commands::fork::run(cmd, state_dir).await,
        Command::Source(cmd) => commands::source::run(cmd),
        Command::Record(args) => commands::recording::record(args, state_dir).await,
        Command::Recording(cmd) => commands::recording::run(cmd, state_dir).await,
        Command::Sweep(args) => commands::sweep::run(args, state_dir).await,
        Command::DryRun(args) => commands::dryrun::run(*args, state_dir).await,
        Command::Lint(args) => commands::lint::run(args),
        Command::Agent(args) => commands::agent::run(args, state_dir).await,
        Command::Demo(args) => commands::demo::run(args, cli.state_dir).await,
    }
}

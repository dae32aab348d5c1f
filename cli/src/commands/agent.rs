//! `understudy agent`: the agent in the foreground (`sandbox watch` is the same), and `agent start|stop|status`
//! for the daemon the command line leaves running for its state directory (a pid file, a log, a token file).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use understudy::agent::{self, AgentOptions, AgentRecord};
use understudy::error::UsageError;
use understudy::sandbox::StateDir;
use understudy::server::Token;
use understudy::supervisor;
use understudy::units;

#[derive(Args)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Start the agent for this state directory as a daemon (nothing happens when one runs already)
    Start,
    /// Stop the agent of this state directory (its running dry-runs are cancelled and cleaned up)
    Stop,
    /// Whether an agent runs for this state directory, and where it listens
    Status,
    /// Print the API's OpenAPI document
    Openapi,
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Where to serve the API, /metrics and the probes [default: 127.0.0.1:0, any free port, written to
    /// STATE/agent.json]
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The file holding the API's bearer token [default: STATE/agent.token, made when missing]
    #[arg(long, env = "UNDERSTUDY_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// A PEM certificate chain for TLS (with --tls-key)
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Time between two follower passes over a sandbox
    #[arg(long, default_value = "2s")]
    follow_interval: units::Duration,
    /// A sandbox lagging more than this is not ready (/readyz)
    #[arg(long, default_value = "30s")]
    max_lag: units::Duration,
    /// Dry-runs run at once (more wait)
    #[arg(long, default_value_t = 2)]
    concurrent_runs: usize,
    /// Stop the sandboxes' servers when the agent stops (set in a Pod)
    #[arg(long)]
    stop_servers: bool,
}

fn token_file(state: &StateDir, given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path);
    }
    let path = state.root().join("agent.token");
    if !path.exists() {
        make_token(&path)?;
    }
    Ok(path)
}

/// Writes a fresh random token, readable by the owner only.
fn make_token(path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token = Token::random()?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    writeln!(file, "{}", token.expose())?;
    Ok(())
}

impl ServeArgs {
    fn options(&self, state: &StateDir) -> anyhow::Result<AgentOptions> {
        Ok(AgentOptions {
            state: state.clone(),
            listen: self.listen,
            token_file: token_file(state, self.token_file.clone())?,
            tls: self.tls_cert.clone().zip(self.tls_key.clone()),
            supervise: supervisor::Settings {
                follow_interval: self.follow_interval.get().max(Duration::from_millis(200)),
                max_lag: self.max_lag.get(),
                ..supervisor::Settings::default()
            },
            concurrent_runs: self.concurrent_runs.max(1),
            stop_servers: self.stop_servers,
            shutdown_grace: Duration::from_secs(60),
        })
    }
}

pub async fn run(args: AgentArgs, state: StateDir) -> anyhow::Result<ExitCode> {
    match args.command {
        None => foreground(&args.serve, &state).await,
        Some(AgentCommand::Start) => {
            let record = ensure_running(&state).await?;
            println!(
                "agent running for {} (pid {}, {})",
                state.root().display(),
                record.pid,
                record.url()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(AgentCommand::Stop) => stop(&state).await,
        Some(AgentCommand::Status) => match agent::running(&state) {
            Some(r) => {
                println!("agent running (pid {}, {}, since {})", r.pid, r.url(), r.started_at);
                println!("log: {}", log_path(&state).display());
                Ok(ExitCode::SUCCESS)
            }
            None => {
                println!(
                    "no agent runs for {}; start one with `understudy agent start`",
                    state.root().display()
                );
                Ok(ExitCode::from(3))
            }
        },
        Some(AgentCommand::Openapi) => {
            print!("{}", understudy::server::openapi::document());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The agent in the foreground until SIGTERM or Ctrl-C.
pub async fn foreground(args: &ServeArgs, state: &StateDir) -> anyhow::Result<ExitCode> {
    let opts = args.options(state)?;
    agent::run(opts, |r: &AgentRecord| {
        eprintln!(
            "agent for {} listening on {} (pid {}); Ctrl-C stops it, sandboxes stay",
            state.root().display(),
            r.url(),
            r.pid
        );
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

fn log_path(state: &StateDir) -> PathBuf {
    state.root().join("agent.log")
}

/// The agent of `state`: the running one, or a daemon started now (its output in `STATE/agent.log`).
pub async fn ensure_running(state: &StateDir) -> anyhow::Result<AgentRecord> {
    if let Some(r) = agent::running(state) {
        return Ok(r);
    }
    std::fs::create_dir_all(state.root())?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(state))?;
    let exe = std::env::current_exe()?;
    let mut child = std::process::Command::new(exe)
        .arg("--state-dir")
        .arg(state.root())
        .arg("agent")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in this terminal does not reach it.
        .process_group(0)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = agent::running(state).filter(|r| r.pid == child.id()) {
            return Ok(r);
        }
        if let Some(status) = child.try_wait()? {
            return Err(UsageError(format!(
                "the agent exited ({status}) before it listened; see {}",
                log_path(state).display()
            ))
            .into());
        }
        if Instant::now() >= deadline {
            return Err(UsageError(format!(
                "the agent did not start within 30 s; see {}",
                log_path(state).display()
            ))
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop(state: &StateDir) -> anyhow::Result<ExitCode> {
    let Some(r) = agent::running(state) else {
        println!("no agent runs for {}", state.root().display());
        return Ok(ExitCode::SUCCESS);
    };
    let status = std::process::Command::new("kill")
        .args(["-TERM", &r.pid.to_string()])
        .status()?;
    if !status.success() {
        anyhow::bail!("could not signal the agent (pid {})", r.pid);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while agent::running(state).is_some() {
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the agent (pid {}) did not stop within 90 s; see {}",
                r.pid,
                log_path(state).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("agent (pid {}) stopped; sandboxes stay", r.pid);
    Ok(ExitCode::SUCCESS)
}

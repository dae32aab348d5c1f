//! `understudy-local-cluster up --dir DIR`: a local Kubernetes with Understudy's CRDs, its operator and a node that
//! runs the operator's Pods as local processes, until SIGTERM or SIGINT. See the library's documentation.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use local_cluster::{LocalCluster, Options};

#[derive(Parser)]
#[command(
    version,
    about = "A local Kubernetes for Understudy: a real control plane, the CRDs, the operator, and a node played by this process"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the cluster and run it until SIGTERM or SIGINT
    Up(Up),
}

#[derive(clap::Args)]
struct Up {
    /// Where the cluster lives: etcd, certificates, kubeconfigs, logs, Pod volumes (created; reused when it exists)
    #[arg(long)]
    dir: PathBuf,
    /// The operator's namespace
    #[arg(long, default_value = "understudy")]
    namespace: String,
    /// The binary every container runs [default: `understudy` next to this binary or in the workspace's target/]
    #[arg(long)]
    understudy_bin: Option<PathBuf>,
    /// The operator's binary [default: `understudy-operator`, found like --understudy-bin]
    #[arg(long, conflicts_with = "no_operator")]
    operator_bin: Option<PathBuf>,
    /// Do not start the operator (run it yourself with KUBECONFIG=DIR/operator.kubeconfig)
    #[arg(long)]
    no_operator: bool,
    /// The CRDs to apply [default: the workspace's crds/]
    #[arg(long)]
    crds: Option<PathBuf>,
    /// The API server's port on 127.0.0.1 [default: a free one]
    #[arg(long)]
    api_port: Option<u16>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Up(up) = Cli::parse().command;
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("understudy-local-cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(up)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("understudy-local-cluster: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(up: Up) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Listen before starting, so that a signal during the start-up is not lost.
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    let mut options = Options::new(&up.dir).namespace(&up.namespace);
    options.understudy_bin = up.understudy_bin;
    options.operator_bin = up.operator_bin;
    options.run_operator = !up.no_operator;
    options.crds_dir = up.crds;
    options.api_port = up.api_port;
    let mut cluster = tokio::select! {
        started = LocalCluster::start(options) => started?,
        _ = term.recv() => anyhow::bail!("terminated during start-up"),
        _ = int.recv() => anyhow::bail!("interrupted during start-up"),
    };
    let kubeconfig = cluster.kubeconfig().display().to_string();
    println!(
        "local cluster ready in {:.1?}: {}\n  kubectl --kubeconfig {kubeconfig} get sbx,dr,pods   (admin, namespace {})\n  \
         operator kubeconfig: {}\n  logs: {}/logs/\nstop it with Ctrl-C or SIGTERM",
        cluster.startup_time(),
        cluster.control_plane().server_url(),
        cluster.namespace(),
        cluster.operator_kubeconfig().display(),
        cluster.dir().display(),
    );
    if let Some(Ok(pid)) = cluster.operator_state() {
        println!(
            "operator running (pid {pid}), its output in {}/logs/operator.log",
            cluster.dir().display()
        );
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut reported = false;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                if let Some(Err(status)) = cluster.operator_state()
                    && !reported
                {
                    eprintln!("the operator exited ({status}): see {}/logs/operator.log", cluster.dir().display());
                    reported = true;
                }
            }
        }
    }
    println!("stopping");
    cluster.shutdown().await
}

//! `understudy-operator`: the Sandbox and DryRun controllers, and `/metrics` and `/healthz` on `--listen`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use clap::Parser;
use operator::controller::{self, Context, Settings};
use operator::metrics::Metrics;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
// A later `--listen` (or any flag) given again overrides the earlier: wrappers add their own after the defaults.
#[command(
    name = "understudy-operator",
    version,
    about = "Understudy's Kubernetes operator",
    args_override_self = true
)]
struct Args {
    /// Watch this namespace only (its Role is enough) [default: all namespaces]
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// The agent image of Sandboxes that name none
    #[arg(
        long,
        env = "UNDERSTUDY_AGENT_IMAGE",
        default_value = "ghcr.io/understudy/agent:0.1.0"
    )]
    agent_image: String,
    /// Where to serve /metrics and /healthz
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// How often a Sandbox's agent is asked for its status
    #[arg(long, default_value = "15s")]
    poll: understudy::units::Duration,
    /// Export traces over OTLP/HTTP to this endpoint (builds with the `otlp` feature), and have agents do the same
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs on stderr; traces over OTLP too when so built and configured.
    let _telemetry = understudy::telemetry::init("info,kube=warn", "understudy-operator")?;
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::new()?);
    let ctx = Context::new(
        client,
        Arc::clone(&metrics),
        Settings {
            agent_image: args.agent_image,
            namespace: args.namespace,
            poll: args.poll.get().max(Duration::from_secs(1)),
            otlp_endpoint: args.otlp_endpoint,
        },
    );
    let shutdown = CancellationToken::new();
    let server = {
        let metrics = Arc::clone(&metrics);
        let app = axum::Router::new().route("/healthz", get(|| async { "ok\n" })).route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move { metrics.render() }
            }),
        );
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };
    let signals = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signals.cancel();
    });
    let term = shutdown.clone();
    tokio::spawn(async move {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
            term.cancel();
        }
    });
    tracing::info!("operator started");
    controller::run(ctx, shutdown.clone()).await?;
    shutdown.cancel();
    let _ = server.await;
    Ok(())
}

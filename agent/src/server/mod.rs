//! The agent's HTTP server (axum): the JSON API under `/v1` (bearer token), the probes and `/metrics` (no
//! token), over plain HTTP or TLS (rustls). Handlers only translate: the work is the library's.

pub mod auth;
pub mod dryruns;
pub mod error;
pub mod health;
pub mod openapi;
pub mod recordings;
pub mod sandboxes;
mod tls;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::Token;
pub use tls::{TlsError, load as load_tls};

use crate::metrics::Metrics;
use crate::runs::Runs;
use crate::sandbox::StateDir;
use crate::supervisor::Supervisor;

/// What the handlers share.
#[derive(Clone)]
pub struct App {
    pub state: StateDir,
    pub supervisor: Arc<Supervisor>,
    pub runs: Arc<Runs>,
    pub metrics: Arc<Metrics>,
    pub creations: Arc<sandboxes::Creations>,
    /// Recordings this agent takes, and those that failed.
    pub recordings: Arc<sandboxes::Creations>,
}

/// The routes: `/v1/...` behind the token, the probes and metrics open.
pub fn router(app: App, token: Arc<Token>) -> Router {
    let api = Router::new()
        .route("/v1/sandboxes", get(sandboxes::list).post(sandboxes::create))
        .route(
            "/v1/sandboxes/{name}",
            get(sandboxes::show).delete(sandboxes::delete).patch(sandboxes::update),
        )
        .route("/v1/sandboxes/{name}/source", axum::routing::put(sandboxes::set_source))
        .route("/v1/sandboxes/{name}/resync", post(sandboxes::resync))
        .route("/v1/recordings", get(recordings::list).post(recordings::take))
        .route(
            "/v1/recordings/{name}",
            get(recordings::show).delete(recordings::delete),
        )
        .route("/v1/dryruns", get(dryruns::list).post(dryruns::start))
        .route("/v1/dryruns/{id}", get(dryruns::show).delete(dryruns::remove))
        .route("/v1/dryruns/{id}/events", get(dryruns::events))
        .route("/v1/dryruns/{id}/cancel", post(dryruns::cancel))
        .route("/v1/dryruns/{id}/report", get(dryruns::report))
        .route_layer(axum::middleware::from_fn_with_state(token, auth::require));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(api)
        .layer(axum::extract::DefaultBodyLimit::max(8 * 1024 * 1024))
        .with_state(app)
}

/// Serves `router` on `listener` until `shutdown`, over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    match tls {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        }
        Some(config) => tls::serve(listener, router, config, shutdown).await,
    }
}

//! Probes and metrics, without a token: `/healthz` (the process answers), `/readyz` (every sandbox is current
//! within its lag threshold), `/metrics` (Prometheus text format).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde::Serialize;

use super::App;

/// The agent answers.
#[utoipa::path(get, path = "/healthz", tag = "probes",
    responses((status = 200, description = "The agent is up", content_type = "text/plain", body = String)))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// A sandbox that is not current, and why.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NotCurrent {
    pub sandbox: String,
    pub reason: String,
}

/// `/readyz`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub ready: bool,
    /// Sandboxes watched.
    pub sandboxes: usize,
    pub not_current: Vec<NotCurrent>,
}

/// Ready once every sandbox is current (ready, its apply worker running, within the lag threshold).
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses(
        (status = 200, description = "Every sandbox is current", body = Readiness),
        (status = 503, description = "Some sandbox is not", body = Readiness),
    ))]
pub async fn readyz(State(app): State<App>) -> (StatusCode, Json<Readiness>) {
    let (_, mut not) = app.supervisor.readiness();
    for name in app.creations.in_progress() {
        if not.iter().all(|(n, _)| *n != name) {
            not.push((name, "being created".into()));
        }
    }
    let body = Readiness {
        ready: not.is_empty(),
        sandboxes: app.state.sandbox_names().len(),
        not_current: not
            .into_iter()
            .map(|(sandbox, reason)| NotCurrent { sandbox, reason })
            .collect(),
    };
    let ready = body.ready;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "The text exposition format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(app): State<App>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics.render(),
    )
}

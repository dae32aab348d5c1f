//! `/v1/dryruns`: start (validated at once, run in the background), list, show, watch (server-sent events),
//! cancel, fetch the report, forget.

use std::convert::Infallible;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Deserialize;

use super::App;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorResponse};
use crate::dryrun::DryRunRequest;
use crate::runs::{ReportFormat, RunEvent, RunView};

/// Start a dry-run: every field is checked now; it runs (or waits for its schedule) in the background.
#[utoipa::path(post, path = "/v1/dryruns", tag = "dryruns", request_body = DryRunRequest,
    responses(
        (status = 202, description = "Accepted; follow it with GET /v1/dryruns/{id}", body = RunView),
        (status = 400, description = "A bad field (named in the message)", body = ErrorResponse),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 500, description = "The run could not be kept on disk", body = ErrorResponse),
        (status = 503, description = "The agent is shutting down", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn start(
    State(app): State<App>,
    headers: axum::http::HeaderMap,
    ApiJson(request): ApiJson<DryRunRequest>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    // A caller's W3C trace context (the operator's reconcile) becomes the run's parent span.
    let parent = headers
        .get(crate::telemetry::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let view = app.runs.start(request, parent)?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// List dry-runs, newest first.
#[utoipa::path(get, path = "/v1/dryruns", tag = "dryruns",
    responses(
        (status = 200, description = "Every dry-run the agent keeps", body = [RunView]),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn list(State(app): State<App>) -> Json<Vec<RunView>> {
    Json(app.runs.list())
}

/// Show a dry-run, with its events.
#[utoipa::path(get, path = "/v1/dryruns/{id}", tag = "dryruns",
    params(("id" = String, Path, description = "The run's id (12 hexadecimal digits)")),
    responses(
        (status = 200, description = "The run", body = RunView),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
        (status = 404, description = "No such run", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn show(State(app): State<App>, ApiPath(id): ApiPath<String>) -> Result<Json<RunView>, ApiError> {
    Ok(Json(app.runs.get(&id)?.view(true)))
}

/// Watch a dry-run: its events so far, then each new one as it happens, as server-sent events (each `data:`
/// is a RunEvent); the stream ends when the run does.
#[utoipa::path(get, path = "/v1/dryruns/{id}/events", tag = "dryruns",
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 200, description = "Server-sent events, one RunEvent (JSON) each", content_type = "text/event-stream", body = String),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
        (status = 404, description = "No such run", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn events(
    State(app): State<App>,
    ApiPath(id): ApiPath<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let run = app.runs.get(&id)?;
    // Subscribe before reading the past, so that nothing falls between them.
    let live = run.subscribe();
    let past = run.view(true).events;
    let seen = past.last().map(|e| e.at);
    let ended = past.last().is_some_and(|e| e.phase.is_final());
    let to_event = |e: &RunEvent| Event::default().json_data(e).unwrap_or_else(|_| Event::default());
    let past_stream = stream::iter(past.iter().map(to_event).map(Ok).collect::<Vec<_>>());
    let live_stream = stream::unfold((live, ended), move |(mut rx, done)| async move {
        if done {
            return None;
        }
        loop {
            match rx.recv().await {
                Ok(e) if seen.is_some_and(|s| e.at <= s) => continue,
                Ok(e) => {
                    let last = e.phase.is_final();
                    return Some((Ok(to_event(&e)), (rx, last)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(past_stream.chain(live_stream)).keep_alive(KeepAlive::default()))
}

/// Cancel a dry-run that has not ended: it stops, and its forks and capture slots are removed.
#[utoipa::path(post, path = "/v1/dryruns/{id}/cancel", tag = "dryruns",
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 202, description = "Cancelling; the run ends as cancelled once its forks are removed", body = RunView),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
        (status = 404, description = "No such run", body = ErrorResponse),
        (status = 409, description = "The run has already ended", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn cancel(
    State(app): State<App>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<RunView>), ApiError> {
    Ok((StatusCode::ACCEPTED, Json(app.runs.cancel(&id)?)))
}

/// Forget a dry-run that has ended, and its reports.
#[utoipa::path(delete, path = "/v1/dryruns/{id}", tag = "dryruns",
    params(("id" = String, Path, description = "The run's id")),
    responses(
        (status = 204, description = "Forgotten"),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
        (status = 404, description = "No such run", body = ErrorResponse),
        (status = 409, description = "The run has not ended", body = ErrorResponse),
        (status = 500, description = "Its files could not be removed", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn remove(State(app): State<App>, ApiPath(id): ApiPath<String>) -> Result<StatusCode, ApiError> {
    app.runs.remove(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?format=json|markdown|text`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// The rendering [default: json]
    #[serde(default)]
    #[param(value_type = Option<ReportFormat>)]
    pub format: Option<ReportFormat>,
}

/// A finished dry-run's report: JSON (`docs/report.md`), Markdown for a pull request, or the terminal text.
#[utoipa::path(get, path = "/v1/dryruns/{id}/report", tag = "dryruns",
    params(("id" = String, Path, description = "The run's id"), ReportParams),
    responses(
        (status = 200, description = "The report", content(
            (crate::report::DryRunReport = "application/json"),
            (String = "text/markdown"),
            (String = "text/plain"),
        )),
        (status = 400, description = "An unknown format", body = ErrorResponse),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
        (status = 404, description = "No such run", body = ErrorResponse),
        (status = 409, description = "The run has no report (not ended, failed or cancelled)", body = ErrorResponse),
        (status = 500, description = "The report could not be read", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn report(
    State(app): State<App>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<ReportParams>,
) -> Result<Response, ApiError> {
    let format = params.format.unwrap_or(ReportFormat::Json);
    let text = app.runs.report(&id, format)?;
    let content_type = match format {
        ReportFormat::Json => "application/json",
        ReportFormat::Markdown => "text/markdown; charset=utf-8",
        ReportFormat::Text => "text/plain; charset=utf-8",
    };
    Ok(([(CONTENT_TYPE, content_type)], text).into_response())
}

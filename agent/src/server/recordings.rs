//! `/v1/recordings`: take one (checked at once, recorded in the background), list, show, delete.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::App;
use super::error::{ApiError, ApiJson, ApiPath, ErrorBody, ErrorResponse};
use crate::error::{Classify, ErrorKind};
use crate::recording::{self, RecordOptions, RecordingError, RecordingMeta};
use crate::source::SandboxName;
use crate::units::Duration;

/// The body of `POST /v1/recordings`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TakeRecording {
    /// The sandbox whose write stream to record.
    pub sandbox: String,
    /// The recording's name [default: SANDBOX-<6 hex digits>].
    #[serde(default)]
    pub name: Option<String>,
    /// How long the window is, from now (1s to 24h), e.g. `10m`.
    #[serde(rename = "for")]
    #[schema(value_type = String, example = "10m")]
    pub window: Duration,
    /// How long the recording and its start point are kept [default: 7d].
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "7d")]
    pub ttl: Option<Duration>,
}

/// A recording as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecordingView {
    pub name: String,
    /// True while its start point is made (before `recording` appears).
    pub starting: bool,
    /// Why it failed (what it made was removed).
    pub error: Option<ErrorBody>,
    /// Its record: the phase (recording, ready), the window, transactions, sizes, tables and expiry.
    pub recording: Option<RecordingMeta>,
}

fn parse_name(field: &str, text: &str) -> Result<SandboxName, ApiError> {
    SandboxName::parse(text).map_err(|e| ApiError::new(ErrorKind::Invalid, format!("{field}: {e}")))
}

impl RecordingView {
    fn of(app: &App, name: &str, recording: Option<RecordingMeta>) -> Self {
        let job = app.recordings.get(name);
        RecordingView {
            name: name.to_string(),
            starting: recording.is_none() && job == Some(None),
            error: if recording.is_none() { job.flatten() } else { None },
            recording,
        }
    }
}

/// Take a recording: the sandbox, the name and the window are checked now; the window is recorded in the
/// background.
#[utoipa::path(post, path = "/v1/recordings", tag = "recordings", request_body = TakeRecording,
    responses(
        (status = 202, description = "Checked; the window is being recorded", body = RecordingView),
        (status = 400, description = "A bad field (named in the message)", body = ErrorResponse),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 409, description = "The name is taken", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn take(
    State(app): State<App>,
    ApiJson(body): ApiJson<TakeRecording>,
) -> Result<(StatusCode, Json<RecordingView>), ApiError> {
    let sandbox = parse_name("sandbox", &body.sandbox)?;
    let name = match &body.name {
        Some(n) => parse_name("name", n)?,
        None => crate::fork::default_name(&sandbox)?,
    };
    let opts = RecordOptions {
        sandbox,
        name: Some(name.clone()),
        window: body.window.get(),
        ttl: body.ttl.unwrap_or(Duration::from_secs(7 * 24 * 3600)).get(),
    };
    opts.check()?;
    app.state.sandbox(&opts.sandbox)?;
    let key = name.to_string();
    // Taken while it is recorded, and by any recording on disk (even one whose metadata cannot be read).
    let on_disk = !matches!(recording::load(&app.state, &name), Err(RecordingError::NotFound(_)));
    if app.recordings.get(&key) == Some(None) || on_disk {
        return Err(RecordingError::Exists(key).into());
    }
    app.recordings.set(&key, Some(None));
    let (state, jobs, metrics) = (
        app.state.clone(),
        std::sync::Arc::clone(&app.recordings),
        std::sync::Arc::clone(&app.metrics),
    );
    let task_key = key.clone();
    tokio::spawn(async move {
        let say = |line: &str| tracing::info!(recording = %task_key, "{line}");
        match recording::take(&state, &opts, &say).await {
            Ok(_) => jobs.set(&task_key, None),
            Err(e) => {
                metrics.error(e.kind());
                tracing::warn!(recording = %task_key, error = %e, "the recording failed");
                jobs.set(&task_key, Some(Some(ErrorBody::of(&e))));
            }
        }
    });
    Ok((StatusCode::ACCEPTED, Json(RecordingView::of(&app, &key, None))))
}

/// List recordings, oldest first (with those that failed).
#[utoipa::path(get, path = "/v1/recordings", tag = "recordings",
    responses(
        (status = 200, description = "Every recording of the agent's state directory", body = [RecordingView]),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn list(State(app): State<App>) -> Json<Vec<RecordingView>> {
    let mut out: Vec<RecordingView> = recording::list(&app.state)
        .into_iter()
        .map(|r| RecordingView::of(&app, &r.name.to_string(), Some(r)))
        .collect();
    for name in app.recordings.names() {
        if out.iter().all(|v| v.name != name) {
            out.push(RecordingView::of(&app, &name, None));
        }
    }
    Json(out)
}

/// Show a recording.
#[utoipa::path(get, path = "/v1/recordings/{name}", tag = "recordings",
    params(("name" = String, Path, description = "The recording's name")),
    responses(
        (status = 200, description = "The recording", body = RecordingView),
        (status = 400, description = "Not a recording name", body = ErrorResponse),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
        (status = 404, description = "No such recording", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn show(State(app): State<App>, ApiPath(name): ApiPath<String>) -> Result<Json<RecordingView>, ApiError> {
    let name = parse_name("name", &name)?;
    match recording::load(&app.state, &name) {
        Ok(meta) => Ok(Json(RecordingView::of(&app, name.as_str(), Some(meta)))),
        Err(RecordingError::NotFound(_)) if app.recordings.get(name.as_str()).is_some() => {
            Ok(Json(RecordingView::of(&app, name.as_str(), None)))
        }
        Err(e) => Err(e.into()),
    }
}

/// Delete a recording and its start point (not while its window is recorded).
#[utoipa::path(delete, path = "/v1/recordings/{name}", tag = "recordings",
    params(("name" = String, Path, description = "The recording's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Not a recording name", body = ErrorResponse),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
        (status = 404, description = "No such recording", body = ErrorResponse),
        (status = 409, description = "Its window is being recorded", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn delete(State(app): State<App>, ApiPath(name): ApiPath<String>) -> Result<StatusCode, ApiError> {
    let name = parse_name("name", &name)?;
    if app.recordings.get(name.as_str()) == Some(None) {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("recording {name} is being recorded; delete it once its window has ended"),
        ));
    }
    let found = recording::delete(&app.state, &name).await;
    let forgotten = app.recordings.get(name.as_str()).is_some();
    app.recordings.set(name.as_str(), None);
    match found {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(RecordingError::NotFound(_)) if forgotten => Ok(StatusCode::NO_CONTENT),
        Err(e) => Err(e.into()),
    }
}

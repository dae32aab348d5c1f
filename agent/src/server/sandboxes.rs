//! `/v1/sandboxes`: create (checked at once, built in the background), list, show, delete.

use std::collections::BTreeMap;
use std::sync::Mutex;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::App;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, ErrorBody, ErrorResponse};
use crate::error::{Classify, ErrorKind};
use crate::mask::MaskConfig;
use crate::pg::{ConnInfo, QualifiedName};
use crate::sandbox::state::ResyncPolicy;
use crate::sandbox::{self, CreateOptions, DeleteReport, SandboxMeta, SandboxState, SandboxStatus};
use crate::source::{Replicate, SandboxName, Subset};
use crate::supervisor::Supervision;
use crate::units::ByteSize;

/// A libpq connection string that holds a password: never printed, logged or echoed.
#[derive(Clone, Deserialize, utoipa::ToSchema)]
#[schema(value_type = String)]
pub struct SecretConnInfo(String);

impl std::fmt::Debug for SecretConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretConnInfo(<redacted>)")
    }
}

/// The body of `POST /v1/sandboxes`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    /// Lowercase letters, digits and '-', starting with a letter, at most 40 characters.
    pub name: String,
    /// The source's libpq connection string or URI, with its password (sent only here; never shown again).
    pub source: SecretConnInfo,
    /// Replicate this existing publication.
    #[serde(default)]
    pub publication: Option<String>,
    /// Or these tables (`schema.table`), in a publication Understudy creates.
    #[serde(default)]
    pub tables: Option<Vec<String>>,
    /// Or every table of this schema, in a publication Understudy creates.
    #[serde(default)]
    pub schema: Option<String>,
    /// The most WAL our slot may keep on the source before the breaker drops it [default: 4GiB].
    #[serde(default)]
    pub wal_budget: Option<ByteSize>,
    /// Parallel copy workers, 1 to 16 [default: 2].
    #[serde(default)]
    pub jobs: Option<usize>,
    /// What happens when the sandbox goes stale [default: auto, rebuilt once the source is healthy].
    #[serde(default)]
    pub resync: Option<ResyncPolicy>,
    /// Hold only these rows (with `tables` or `schema`): publication row filters, parents of the rows held
    /// copied too.
    #[serde(default)]
    pub subset: Option<Subset>,
    /// Masking per column (`tables: {"schema.table": {"column": "fake-email"}}`): keep, fake-email, fake-name,
    /// hash, null or exclude; every column of a masked table needs one (its keys are kept).
    #[serde(default)]
    pub mask: Option<MaskConfig>,
}

/// A sandbox as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SandboxView {
    pub name: String,
    /// Its state; absent when its creation failed.
    pub state: Option<SandboxState>,
    /// True while this agent is creating it.
    pub creating: bool,
    /// Why its creation failed (nothing was left on the source).
    pub creation_error: Option<ErrorBody>,
    /// The live status; absent while it is created.
    pub status: Option<SandboxStatus>,
    /// What the agent's supervisor did for it.
    pub supervision: Option<Supervision>,
}

/// What this agent builds in the background by name (sandboxes, recordings), and what failed.
#[derive(Default)]
pub struct Creations(Mutex<BTreeMap<String, Option<ErrorBody>>>);

impl Creations {
    /// `Some(None)` while in progress, `Some(Some(error))` once failed, `None` when unknown or done.
    pub(super) fn get(&self, name: &str) -> Option<Option<ErrorBody>> {
        self.0.lock().ok().and_then(|c| c.get(name).cloned())
    }

    /// Sandboxes being created.
    pub fn in_progress(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|c| c.iter().filter(|(_, e)| e.is_none()).map(|(n, _)| n.clone()).collect())
            .unwrap_or_default()
    }

    /// Creations that failed, by name.
    fn failed(&self) -> Vec<(String, ErrorBody)> {
        self.0
            .lock()
            .map(|c| {
                c.iter()
                    .filter_map(|(n, e)| e.clone().map(|e| (n.clone(), e)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every name in progress or failed.
    pub(super) fn names(&self) -> Vec<String> {
        self.0.lock().map(|c| c.keys().cloned().collect()).unwrap_or_default()
    }

    pub(super) fn set(&self, name: &str, state: Option<Option<ErrorBody>>) {
        if let Ok(mut c) = self.0.lock() {
            match state {
                Some(s) => {
                    c.insert(name.to_string(), s);
                }
                None => {
                    c.remove(name);
                }
            }
        }
    }
}

fn parse_name(text: &str) -> Result<SandboxName, ApiError> {
    SandboxName::parse(text).map_err(|e| ApiError::new(ErrorKind::Invalid, format!("name: {e}")))
}

impl CreateSandbox {
    fn options(&self, app: &App) -> Result<CreateOptions, ApiError> {
        let name = parse_name(&self.name)?;
        let replicate = match (&self.publication, &self.tables, &self.schema) {
            (Some(p), None, None) => Replicate::Publication(p.clone()),
            (None, Some(t), None) if !t.is_empty() => {
                Replicate::Tables(t.iter().map(|x| QualifiedName::parse(x)).collect())
            }
            (None, None, Some(s)) => Replicate::Schema(s.clone()),
            _ => {
                return Err(ApiError::new(
                    ErrorKind::Invalid,
                    "give exactly one of publication (an existing publication), tables (a non-empty list) or schema",
                ));
            }
        };
        let source =
            ConnInfo::parse(&self.source.0).map_err(|e| ApiError::new(ErrorKind::Invalid, format!("source: {e}")))?;
        let wal_budget = self.wal_budget.unwrap_or(ByteSize::gib(4));
        if wal_budget < ByteSize::mib(1) {
            return Err(ApiError::new(ErrorKind::Invalid, "wal_budget: at least 1MiB"));
        }
        let jobs = self.jobs.unwrap_or(2);
        if !(1..=16).contains(&jobs) {
            return Err(ApiError::new(
                ErrorKind::Invalid,
                format!("jobs: {jobs} is out of range (1 to 16)"),
            ));
        }
        Ok(CreateOptions {
            name,
            source,
            replicate,
            state_dir: app.state.clone(),
            jobs,
            wal_budget_bytes: wal_budget.bytes(),
            progress: false,
            resync: self.resync.unwrap_or_default(),
            subset: match &self.subset {
                Some(subset) => {
                    subset
                        .check()
                        .map_err(|e| ApiError::new(ErrorKind::Invalid, format!("subset: {e}")))?;
                    Some(subset.clone())
                }
                None => None,
            },
            mask: match &self.mask {
                Some(mask) if mask.tables.is_empty() => {
                    return Err(ApiError::new(
                        ErrorKind::Invalid,
                        "mask: it names no table; give tables with a policy per column",
                    ));
                }
                other => other.clone(),
            },
        })
    }
}

/// Create a sandbox: its name, source and preflight are checked now; the copy runs in the background.
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body = CreateSandbox,
    responses(
        (status = 202, description = "Checked and being created", body = SandboxView),
        (status = 400, description = "A bad field, or a source that refuses preflight", body = ErrorResponse),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
        (status = 409, description = "The name is taken", body = ErrorResponse),
        (status = 503, description = "The agent is shutting down", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<App>,
    ApiJson(body): ApiJson<CreateSandbox>,
) -> Result<(StatusCode, Json<SandboxView>), ApiError> {
    let opts = body.options(&app)?;
    let name = opts.name.to_string();
    if app.creations.get(&name) == Some(None) {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("sandbox {name} is being created"),
        ));
    }
    let prepared = sandbox::create::prepare(&opts, &|_| {}).await?;
    app.creations.set(&name, Some(None));
    let creations = std::sync::Arc::clone(&app.creations);
    let metrics = std::sync::Arc::clone(&app.metrics);
    let task_name = name.clone();
    tokio::spawn(async move {
        let say = |line: &str| tracing::info!(sandbox = %task_name, "{line}");
        match prepared.build(&say).await {
            Ok(_) => creations.set(&task_name, None),
            Err(e) => {
                metrics.error(e.kind());
                tracing::warn!(sandbox = %task_name, error = %e, "sandbox creation failed");
                creations.set(&task_name, Some(Some(ErrorBody::of(&e))));
            }
        }
    });
    app.supervisor.rescan();
    Ok((
        StatusCode::ACCEPTED,
        Json(SandboxView {
            name,
            state: Some(SandboxState::InitialSync),
            creating: true,
            creation_error: None,
            status: None,
            supervision: None,
        }),
    ))
}

/// List sandboxes (their last refreshed status).
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes",
    responses(
        (status = 200, description = "Every sandbox of the agent's state directory", body = [SandboxView]),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn list(State(app): State<App>) -> Json<Vec<SandboxView>> {
    let mut out = Vec::new();
    for name in app.state.sandbox_names() {
        let snap = app.supervisor.snapshot(&name);
        let meta = SandboxMeta::load(&app.state.sandbox_dir(&name)).ok();
        out.push(SandboxView {
            name: name.to_string(),
            state: snap
                .as_ref()
                .and_then(|s| s.status.as_ref().map(|st| st.state))
                .or(meta.map(|m| m.phase)),
            creating: app.creations.get(name.as_str()) == Some(None),
            creation_error: None,
            status: snap.as_ref().and_then(|s| s.status.clone()),
            supervision: snap.map(|s| s.supervision),
        });
    }
    for (name, error) in app.creations.failed() {
        if out.iter().all(|v| v.name != name) {
            out.push(SandboxView {
                name,
                state: None,
                creating: false,
                creation_error: Some(error),
                status: None,
                supervision: None,
            });
        }
    }
    Json(out)
}

/// Show a sandbox: its live status and what the supervisor did.
#[utoipa::path(get, path = "/v1/sandboxes/{name}", tag = "sandboxes",
    params(("name" = String, Path, description = "The sandbox's name")),
    responses(
        (status = 200, description = "The sandbox", body = SandboxView),
        (status = 400, description = "Not a sandbox name", body = ErrorResponse),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn show(State(app): State<App>, ApiPath(name): ApiPath<String>) -> Result<Json<SandboxView>, ApiError> {
    let name = parse_name(&name)?;
    let creation = app.creations.get(name.as_str());
    let dir = app.state.sandbox_dir(&name);
    if !dir.exists() {
        if let Some(Some(error)) = creation {
            return Ok(Json(SandboxView {
                name: name.to_string(),
                state: None,
                creating: false,
                creation_error: Some(error),
                status: None,
                supervision: None,
            }));
        }
        return Err(sandbox::SandboxError::NotFound {
            name: name.to_string(),
            state_dir: app.state.root().to_path_buf(),
        }
        .into());
    }
    let meta = SandboxMeta::load(&dir)?;
    let creating = creation == Some(None) || meta.phase == SandboxState::InitialSync;
    let snapshot = app.supervisor.snapshot(&name);
    let status = if creating {
        None
    } else {
        match sandbox::status(&app.state, &name).await {
            Ok(st) => Some(st),
            // A server restarting between two queries: the last refreshed status says more than an error.
            Err(e) => match snapshot.as_ref().and_then(|s| s.status.clone()) {
                Some(st) => Some(st),
                None => return Err(e.into()),
            },
        }
    };
    Ok(Json(SandboxView {
        name: name.to_string(),
        state: Some(status.as_ref().map(|s| s.state).unwrap_or(meta.phase)),
        creating,
        creation_error: None,
        status,
        supervision: snapshot.map(|s| s.supervision),
    }))
}

/// `?force=true`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    /// Remove the local sandbox even when the source cannot be reached (its slot then stays there).
    #[serde(default)]
    pub force: bool,
}

/// Delete a sandbox and everything it holds on the source.
#[utoipa::path(delete, path = "/v1/sandboxes/{name}", tag = "sandboxes",
    params(("name" = String, Path, description = "The sandbox's name"), DeleteParams),
    responses(
        (status = 200, description = "Deleted; what was removed", body = DeleteReport),
        (status = 400, description = "Not a sandbox name", body = ErrorResponse),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 409, description = "Being created, or a dry-run is running on it", body = ErrorResponse),
        (status = 500, description = "The source could not be cleaned; the sandbox was kept for a retry", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn delete(
    State(app): State<App>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(params): ApiQuery<DeleteParams>,
) -> Result<Json<DeleteReport>, ApiError> {
    let name = parse_name(&name)?;
    if app.creations.get(name.as_str()) == Some(None) {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("sandbox {name} is being created; delete it once its creation ended"),
        ));
    }
    if let Some(run) = app.runs.active_on(name.as_str()) {
        return Err(ApiError::new(
            ErrorKind::Conflict,
            format!("dry-run {run} is running on sandbox {name}; cancel it first (POST /v1/dryruns/{run}/cancel)"),
        ));
    }
    if !app.state.sandbox_dir(&name).exists() {
        app.creations.set(name.as_str(), None);
        return Err(sandbox::SandboxError::NotFound {
            name: name.to_string(),
            state_dir: app.state.root().to_path_buf(),
        }
        .into());
    }
    app.supervisor.release(&name).await;
    match sandbox::delete(&app.state, &name, None, params.force).await {
        Ok(report) => {
            app.supervisor.resume(&name);
            Ok(Json(report))
        }
        Err(e) => {
            app.supervisor.resume(&name);
            Err(e.into())
        }
    }
}

/// The body of `PUT /v1/sandboxes/{name}/source`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSource {
    /// The source's new libpq connection string, with its password (never shown again).
    pub source: SecretConnInfo,
}

/// Give a sandbox a new source connection string (a rotated password): it must reach the same source, holding
/// the sandbox's slot; the subscription reconnects with it.
#[utoipa::path(put, path = "/v1/sandboxes/{name}/source", tag = "sandboxes", request_body = SetSource,
    params(("name" = String, Path, description = "The sandbox's name")),
    responses(
        (status = 204, description = "Kept and given to the subscription"),
        (status = 400, description = "Not a connection string, or a source that does not answer", body = ErrorResponse),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 500, description = "The source does not hold the sandbox's slot, or the sandbox could not take it", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn set_source(
    State(app): State<App>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<SetSource>,
) -> Result<StatusCode, ApiError> {
    let name = parse_name(&name)?;
    let source =
        ConnInfo::parse(&body.source.0).map_err(|e| ApiError::new(ErrorKind::Invalid, format!("source: {e}")))?;
    sandbox::set_source(&app.state, &name, &source).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ask for a stale sandbox to be rebuilt (whatever its resync policy): the agent builds the next copy beside the
/// stale one on its next pass and swaps it in when it is current; the sandbox's `resync` status follows it.
#[utoipa::path(post, path = "/v1/sandboxes/{name}/resync", tag = "sandboxes",
    params(("name" = String, Path, description = "The sandbox's name")),
    responses(
        (status = 202, description = "Requested (or already under way)", body = SandboxView),
        (status = 400, description = "Not a sandbox name", body = ErrorResponse),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
        (status = 409, description = "The sandbox is not stale", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn resync(
    State(app): State<App>,
    ApiPath(name): ApiPath<String>,
) -> Result<(StatusCode, Json<SandboxView>), ApiError> {
    let parsed = parse_name(&name)?;
    sandbox::resync::request(&app.state, &parsed).await?;
    app.supervisor.rescan();
    let Json(view) = show(State(app), ApiPath(name)).await?;
    Ok((StatusCode::ACCEPTED, Json(view)))
}

/// The body of `PATCH /v1/sandboxes/{name}`: the settings a sandbox may change after its creation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSandbox {
    /// What happens when the sandbox goes stale: auto (rebuilt once the source is healthy) or manual.
    #[serde(default)]
    pub resync: Option<ResyncPolicy>,
    /// A masked sandbox's new mask config: it may classify columns the source added since; a policy already given
    /// cannot change.
    #[serde(default)]
    pub mask: Option<MaskConfig>,
}

/// Change a sandbox's settings. A stale sandbox that waited for a request under policy manual is rebuilt on the
/// agent's next pass once its policy is auto.
#[utoipa::path(patch, path = "/v1/sandboxes/{name}", tag = "sandboxes", request_body = UpdateSandbox,
    params(("name" = String, Path, description = "The sandbox's name")),
    responses(
        (status = 200, description = "Changed", body = SandboxView),
        (status = 400, description = "Not a sandbox name, or an unknown setting or value", body = ErrorResponse),
        (status = 401, description = "No or a wrong token", body = ErrorResponse),
        (status = 404, description = "No such sandbox", body = ErrorResponse),
    ),
    security(("bearer" = [])))]
pub async fn update(
    State(app): State<App>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<UpdateSandbox>,
) -> Result<Json<SandboxView>, ApiError> {
    let parsed = parse_name(&name)?;
    if body.resync.is_none() && body.mask.is_none() {
        return Err(ApiError::new(
            ErrorKind::Invalid,
            "give resync or mask, the settings a sandbox may change",
        ));
    }
    if let Some(mask) = &body.mask {
        if mask.tables.is_empty() {
            return Err(ApiError::new(ErrorKind::Invalid, "mask: it names no table"));
        }
        sandbox::masking::reclassify(&app.state, &parsed, mask).await?;
    }
    if let Some(policy) = body.resync {
        sandbox::resync::set_policy(&app.state, &parsed, policy).await?;
    }
    app.supervisor.rescan();
    show(State(app), ApiPath(name)).await
}

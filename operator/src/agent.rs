//! The operator's client of an agent's API (`docs/agent.md`): the types are the agent library's own, so that the
//! two cannot drift apart.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use understudy::ErrorKind;
use understudy::dryrun::DryRunRequest;
use understudy::runs::RunView;
use understudy::server::error::ErrorResponse;
use understudy::server::sandboxes::SandboxView;

/// An agent's answer that is not a success.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with an error of this kind.
    #[error("the agent refused ({kind:?}): {message}")]
    Refused { kind: ErrorKind, message: String },
    /// The agent does not answer.
    #[error("the agent at {url} does not answer: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("the agent's answer is not what its API says: {0}")]
    Protocol(String),
}

impl AgentError {
    /// The kind the agent gave, or `unavailable` when it could not be asked.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AgentError::Refused { kind, .. } => *kind,
            AgentError::Unreachable { .. } => ErrorKind::Unavailable,
            AgentError::Protocol(_) => ErrorKind::Internal,
        }
    }
}

/// One agent, reached at `base` (`http://POD_IP:8080`) with its token.
#[derive(Clone)]
pub struct AgentClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct CreateBody<'a> {
    name: &'a str,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    publication: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tables: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    schema: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wal_budget: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resync: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subset: Option<&'a understudy::source::Subset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mask: Option<&'a understudy::mask::MaskConfig>,
}

/// What a sandbox replicates, for its creation.
pub struct Replication<'a> {
    pub publication: Option<&'a str>,
    pub tables: Option<&'a [String]>,
    pub schema: Option<&'a str>,
    pub wal_budget: Option<&'a str>,
    /// `auto` or `manual`.
    pub resync: Option<&'a str>,
    pub subset: Option<&'a understudy::source::Subset>,
    pub mask: Option<&'a understudy::mask::MaskConfig>,
}

impl AgentClient {
    /// The agent's token, to key digests of secrets with (never sent anywhere but to the agent).
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    pub fn new(base: impl Into<String>, token: impl Into<String>) -> Result<Self, AgentError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| AgentError::Protocol(e.to_string()))?;
        Ok(AgentClient {
            base: base.into(),
            token: token.into(),
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, AgentError> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| AgentError::Unreachable {
                url: self.base.clone(),
                detail: e.without_url().to_string(),
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        match response.json::<ErrorResponse>().await {
            Ok(body) => Err(AgentError::Refused {
                kind: body.error.kind,
                message: body.error.message,
            }),
            Err(_) => Err(AgentError::Protocol(format!("HTTP {status} without an error body"))),
        }
    }

    async fn json<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T, AgentError> {
        self.send(request)
            .await?
            .json()
            .await
            .map_err(|e| AgentError::Protocol(e.to_string()))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The sandbox `name`; `None` when the agent has none of that name.
    pub async fn sandbox(&self, name: &str) -> Result<Option<SandboxView>, AgentError> {
        match self
            .json(self.http.get(self.url(&format!("/v1/sandboxes/{name}"))))
            .await
        {
            Ok(v) => Ok(Some(v)),
            Err(AgentError::Refused {
                kind: ErrorKind::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Starts creating sandbox `name` from `source` (a connection string with its password).
    pub async fn create_sandbox(
        &self,
        name: &str,
        source: &str,
        what: &Replication<'_>,
    ) -> Result<SandboxView, AgentError> {
        let body = CreateBody {
            name,
            source,
            publication: what.publication,
            tables: what.tables,
            schema: what.schema,
            wal_budget: what.wal_budget,
            resync: what.resync,
            subset: what.subset,
            mask: what.mask,
        };
        self.json(self.http.post(self.url("/v1/sandboxes")).json(&body)).await
    }

    /// Gives sandbox `name` a new source connection string.
    pub async fn set_source(&self, name: &str, source: &str) -> Result<(), AgentError> {
        let body = serde_json::json!({ "source": source });
        self.send(
            self.http
                .put(self.url(&format!("/v1/sandboxes/{name}/source")))
                .json(&body),
        )
        .await
        .map(|_| ())
    }

    /// Sets the resync policy (`auto`, `manual`) of sandbox `name`.
    pub async fn set_resync_policy(&self, name: &str, policy: &str) -> Result<SandboxView, AgentError> {
        let body = serde_json::json!({ "resync": policy });
        self.json(self.http.patch(self.url(&format!("/v1/sandboxes/{name}"))).json(&body))
            .await
    }

    /// Gives masked sandbox `name` a new mask config.
    pub async fn set_mask(&self, name: &str, mask: &understudy::mask::MaskConfig) -> Result<SandboxView, AgentError> {
        let body = serde_json::json!({ "mask": mask });
        self.json(self.http.patch(self.url(&format!("/v1/sandboxes/{name}"))).json(&body))
            .await
    }

    /// Asks the agent to resync stale sandbox `name`.
    pub async fn resync(&self, name: &str) -> Result<(), AgentError> {
        self.send(self.http.post(self.url(&format!("/v1/sandboxes/{name}/resync"))))
            .await
            .map(|_| ())
    }

    /// Deletes sandbox `name` and what it holds on the source.
    pub async fn delete_sandbox(&self, name: &str) -> Result<(), AgentError> {
        match self
            .send(self.http.delete(self.url(&format!("/v1/sandboxes/{name}"))))
            .await
        {
            Ok(_)
            | Err(AgentError::Refused {
                kind: ErrorKind::NotFound,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn start_run(&self, request: &DryRunRequest) -> Result<RunView, AgentError> {
        let mut post = self.http.post(self.url("/v1/dryruns")).json(request);
        // The run joins the reconcile's trace (with the `otlp` feature).
        if let Some(parent) = understudy::telemetry::traceparent(&tracing::Span::current()) {
            post = post.header(understudy::telemetry::TRACEPARENT, parent);
        }
        self.json(post).await
    }

    /// Run `id`; `None` when the agent does not know it.
    pub async fn run(&self, id: &str) -> Result<Option<RunView>, AgentError> {
        match self.json(self.http.get(self.url(&format!("/v1/dryruns/{id}")))).await {
            Ok(v) => Ok(Some(v)),
            Err(AgentError::Refused {
                kind: ErrorKind::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Cancels run `id` (an ended or unknown run is fine).
    pub async fn cancel_run(&self, id: &str) -> Result<(), AgentError> {
        match self
            .send(self.http.post(self.url(&format!("/v1/dryruns/{id}/cancel"))))
            .await
        {
            Ok(_)
            | Err(AgentError::Refused {
                kind: ErrorKind::NotFound | ErrorKind::Conflict,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A finished run's report: `json`, `markdown` or `text`.
    pub async fn report(&self, id: &str, format: &str) -> Result<String, AgentError> {
        self.send(
            self.http
                .get(self.url(&format!("/v1/dryruns/{id}/report?format={format}"))),
        )
        .await?
        .text()
        .await
        .map_err(|e| AgentError::Protocol(e.to_string()))
    }
}

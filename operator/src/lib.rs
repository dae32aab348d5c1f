//! Understudy's operator: the `Sandbox` and `DryRun` controllers (kube-rs, in the style of kube-rs/controller-rs).
//! It orchestrates Kubernetes objects and drives the agents through their API; it connects to PostgreSQL only to
//! remove a deleted Sandbox's slot and publication when its agent is gone.

pub mod agent;
pub mod controller;
pub mod crd;
pub mod metrics;
pub mod resources;

use understudy::ErrorKind;

/// Errors of a reconcile. Each has a kind (the agent library's) that decides the requeue, and a metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
    /// A spec that cannot be run as it is; the message names what to fix.
    #[error("{0}")]
    InvalidSpec(String),
    /// Something the spec names does not exist (yet): a Secret, a ConfigMap, a Sandbox.
    #[error("{0}")]
    Missing(String),
    /// The agent of a Sandbox is not up yet.
    #[error("{0}")]
    AgentNotReady(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("{0}")]
    Serialization(#[from] serde_json::Error),
    #[error("cleaning the source: {0}")]
    Source(#[source] understudy::sandbox::SandboxError),
    #[error("the operating system's random source: {0}")]
    Random(#[source] std::io::Error),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

impl Error {
    /// The kind of failure, as the agent library defines them.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.code == 404 => ErrorKind::NotFound,
            Error::Kube(kube::Error::Api(status)) if status.code == 409 => ErrorKind::Conflict,
            Error::Kube(kube::Error::Api(status)) if (400..500).contains(&status.code) => ErrorKind::Invalid,
            Error::Kube(_) => ErrorKind::Unavailable,
            Error::Agent(e) => e.kind(),
            Error::InvalidSpec(_) => ErrorKind::Invalid,
            Error::Missing(_) => ErrorKind::NotFound,
            Error::AgentNotReady(_) => ErrorKind::NotReady,
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.kind(),
                _ => ErrorKind::Unavailable,
            },
            Error::Serialization(_) | Error::Random(_) => ErrorKind::Internal,
            Error::Source(e) => understudy::Classify::kind(e),
        }
    }

    /// The label reconcile errors are counted under.
    pub fn metric_label(&self) -> &'static str {
        self.kind().metric_label()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

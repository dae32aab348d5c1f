//! The controllers and what they share: the [`Context`], per-object exponential backoff, conditions, status by
//! server-side apply, the agent of a Sandbox, and the run loop (`run`).

pub mod dryrun;
#[cfg(test)]
pub mod mock;
pub mod request;
pub mod sandbox;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::agent::AgentClient;
use crate::crd::{DryRun, Sandbox};
use crate::metrics::Metrics;
use crate::resources;
use crate::{Error, Result};

/// The field manager of everything the operator applies.
pub const MANAGER: &str = "understudy-operator";
/// The finalizer of both resources.
pub const FINALIZER: &str = "understudy.dev/cleanup";

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The agent image of Sandboxes that name none.
    pub agent_image: String,
    /// Watch this namespace only (the operator's Role is namespaced), or all.
    pub namespace: Option<String>,
    /// How often a Sandbox's agent is asked for its status.
    pub poll: Duration,
    /// Where agents export their traces (OTLP/HTTP), as the operator's own: agents' runs join the reconciles'
    /// traces in the same backend.
    pub otlp_endpoint: Option<String>,
}

/// What every reconcile gets.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// Consecutive failures per object, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, settings: Settings) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        Arc::new(Context {
            client,
            recorder,
            metrics,
            settings,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Publishes an Event on `obj` (a failure to publish is logged, not fatal).
    pub async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::debug!(error = %e, reason, "could not publish an event");
        }
    }

    fn succeeded(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }

    /// The next wait for `key` after a failure: 5 s, doubling up to 5 min.
    fn backoff(&self, key: &str) -> Duration {
        let n = self
            .failures
            .lock()
            .map(|mut f| {
                let n = f.entry(key.to_string()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            })
            .unwrap_or(1);
        backoff_after(n)
    }
}

/// The wait after `n` consecutive failures.
pub fn backoff_after(n: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1u64 << n.saturating_sub(1).min(6))).min(Duration::from_secs(300))
}

fn key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// A condition with its time set now (or kept from `old` when its status did not change).
///
/// The message is never empty: an empty one is replaced by the condition's type, status and
/// reason, because a reader of `kubectl describe` wants a sentence, and because kube-apiserver
/// 1.20 reads an empty string inside a list item as `null` and refuses the whole status.
pub fn condition(
    old: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(jiff::Timestamp::now()));
    let message = if message.trim().is_empty() {
        format!("{type_} is {status} ({reason})")
    } else {
        message
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: last,
        observed_generation: generation,
    }
}

/// Writes `status` of `obj` by server-side apply.
pub async fn patch_status<K>(ctx: &Context, obj: &K, status: &impl Serialize) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), obj.meta().namespace.as_deref().unwrap_or("default"));
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The value of `key` in Secret `name` (`None` when the Secret or the key is missing).
pub async fn secret_value(ctx: &Context, namespace: &str, name: &str, key: &str) -> Result<Option<String>> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(secret) = secrets.get_opt(name).await? else {
        return Ok(None);
    };
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).trim().to_string());
    let from_string = secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.trim().to_string());
    Ok(from_data.or(from_string))
}

/// The agent of Sandbox `sandbox`: its Pod's address and its token; `AgentNotReady` while it has none.
pub async fn agent_for(ctx: &Context, namespace: &str, sandbox: &str) -> Result<AgentClient> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let pod = pods.get_opt(&resources::pod_name(sandbox)).await?;
    let ip = pod
        .as_ref()
        .and_then(|p| p.status.as_ref())
        .filter(|s| s.phase.as_deref() == Some("Running"))
        .and_then(|s| s.pod_ip.clone())
        .ok_or_else(|| {
            Error::AgentNotReady(format!(
                "the agent Pod {} is not running yet",
                resources::pod_name(sandbox)
            ))
        })?;
    let token = secret_value(ctx, namespace, &resources::token_secret_name(sandbox), "token")
        .await?
        .ok_or_else(|| {
            Error::AgentNotReady(format!(
                "the agent's token Secret {} is missing",
                resources::token_secret_name(sandbox)
            ))
        })?;
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
    Ok(AgentClient::new(
        format!("http://{host}:{}", resources::AGENT_PORT),
        token,
    )?)
}

/// Runs both controllers until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) -> Result<()> {
    let client = ctx.client.clone();
    let (sandboxes, dryruns, statefulsets, configmaps) = match &ctx.settings.namespace {
        Some(ns) => (
            Api::<Sandbox>::namespaced(client.clone(), ns),
            Api::<DryRun>::namespaced(client.clone(), ns),
            Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(client.clone(), ns),
            Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    // The CRDs must be installed: say so instead of crash-looping on watch errors.
    sandboxes
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .map_err(|e| {
            Error::Missing(format!(
                "the Sandbox CRD is not installed or not readable ({e}); apply crds/"
            ))
        })?;
    let stop = shutdown.clone();
    let sandbox_controller = Controller::new(sandboxes, watcher::Config::default().any_semantic())
        .owns(statefulsets, watcher::Config::default())
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(sandbox::reconcile, error_policy::<Sandbox>, Arc::clone(&ctx))
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "sandbox reconcile");
            }
        });
    let stop = shutdown.clone();
    let dryrun_controller = Controller::new(dryruns, watcher::Config::default().any_semantic())
        .owns(configmaps, watcher::Config::default())
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(dryrun::reconcile, error_policy::<DryRun>, Arc::clone(&ctx))
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "dry-run reconcile");
            }
        });
    tokio::join!(sandbox_controller, dryrun_controller);
    Ok(())
}

/// After a failed reconcile: count it, and requeue with the object's backoff.
pub fn error_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let controller = K::kind(&()).to_lowercase();
    ctx.metrics.error(&controller, error.metric_label());
    let wait = ctx.backoff(&key(obj.as_ref()));
    tracing::warn!(object = %key(obj.as_ref()), error = %error, kind = error.metric_label(), "reconcile failed; retrying in {wait:?}");
    Action::requeue(wait)
}

/// Marks `obj`'s reconcile as succeeded (the backoff starts afresh).
pub fn reconciled<K: Resource<DynamicType = ()>>(ctx: &Context, obj: &K) {
    ctx.succeeded(&key(obj));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_five_seconds_up_to_five_minutes() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff_after(n).as_secs()).collect();
        assert_eq!(waits, vec![5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn a_condition_keeps_its_time_while_its_status_stays() {
        let first = condition(&[], "Ready", false, "Starting", "starting".into(), Some(1));
        let again = condition(
            std::slice::from_ref(&first),
            "Ready",
            false,
            "Starting",
            "still".into(),
            Some(2),
        );
        assert_eq!(again.last_transition_time, first.last_transition_time);
        assert_eq!(again.message, "still");
        let flipped = condition(
            std::slice::from_ref(&first),
            "Ready",
            true,
            "Current",
            "ok".into(),
            Some(2),
        );
        assert_eq!(flipped.status, "True");
    }

    #[test]
    fn a_condition_never_has_an_empty_message() {
        let c = condition(&[], "Stale", false, "Fresh", " ".into(), None);
        assert_eq!(c.message, "Stale is False (Fresh)");
    }
}

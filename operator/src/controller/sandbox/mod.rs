//! The Sandbox controller: the agent's token Secret, StatefulSet, Service and NetworkPolicy; the sandbox created in
//! the agent from the source Secret (and a changed Secret handed to it); the agent's view copied into the status
//! as conditions. Deleting a Sandbox deletes the sandbox through its agent (slot and publication removed from the
//! source), or, with the agent gone, directly on the source with the Secret.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use understudy::pg::ConnInfo;
use understudy::source::SandboxName;

use super::{Context, FINALIZER, MANAGER, agent_for, condition, patch_status, reconciled, secret_value};
use crate::agent::{AgentError, Replication};
use crate::crd::Sandbox;
use crate::{Error, Result, resources};
use understudy::server::sandboxes::SandboxView;

mod status;

pub use status::{is_ready, source_hash, status_from};

const CONTROLLER: &str = "sandbox";

/// The annotation whose new value asks for a resync of a stale sandbox.
pub const RESYNC_ANNOTATION: &str = "understudy.dev/resync";

/// One span per reconcile (exported with the `otlp` feature); a run it starts on the agent is its child.
#[tracing::instrument(name = "reconcile", skip_all, fields(controller = CONTROLLER, namespace = sbx.namespace().unwrap_or_default(), name = %sbx.name_any()))]
pub async fn reconcile(sbx: Arc<Sandbox>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = sbx.namespace().unwrap_or_else(|| "default".into());
    let api: Api<Sandbox> = Api::namespaced(ctx.client.clone(), &ns);
    let action = finalizer(&api, FINALIZER, Arc::clone(&sbx), |event| async {
        match event {
            Finalizer::Apply(s) => apply(&s, &ctx).await,
            Finalizer::Cleanup(s) => cleanup(&s, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    reconciled(&ctx, sbx.as_ref());
    Ok(action)
}

/// The connection string of the source, from its Secret; `None` (with the reason in the status) when missing.
async fn source(sbx: &Sandbox, ctx: &Context) -> Result<std::result::Result<String, (String, String)>> {
    let ns = sbx.namespace().unwrap_or_default();
    let r = &sbx.spec.source.secret_ref;
    let key = r.key.clone().unwrap_or_else(|| "conninfo".into());
    Ok(match secret_value(ctx, &ns, &r.name, &key).await? {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err((
            "SecretNotFound".into(),
            format!(
                "Secret {} with key {key} not found in namespace {ns}: create it with the source's connection \
                 string (kubectl create secret generic {} --from-literal={key}='host=... user=... password=...')",
                r.name, r.name
            ),
        )),
    })
}

/// Writes a status that says only why the Sandbox is not ready, keeping what was known.
async fn not_ready(sbx: &Sandbox, ctx: &Context, reason: &str, message: String, requeue: Duration) -> Result<Action> {
    let old = sbx.status.clone().unwrap_or_default();
    let generation = sbx.metadata.generation;
    let mut status = old.clone();
    status.conditions = vec![
        condition(&old.conditions, "Ready", false, reason, message.clone(), generation),
        condition(&old.conditions, "Replicating", false, reason, message, generation),
    ];
    status.observed_generation = generation;
    if status != old {
        patch_status(ctx, sbx, &status).await?;
    }
    Ok(Action::requeue(requeue))
}

async fn apply(sbx: &Sandbox, ctx: &Context) -> Result<Action> {
    let name = sbx.name_any();
    if let Err(e) = SandboxName::parse(&name) {
        return not_ready(
            sbx,
            ctx,
            "InvalidName",
            format!("{e} (the Sandbox's name is the sandbox's)"),
            Duration::from_secs(300),
        )
        .await;
    }
    let conninfo = match source(sbx, ctx).await? {
        Ok(c) => c,
        Err((reason, message)) => return not_ready(sbx, ctx, &reason, message, Duration::from_secs(30)).await,
    };
    let parsed = match ConnInfo::parse(&conninfo) {
        Ok(p) => p,
        Err(e) => {
            return not_ready(
                sbx,
                ctx,
                "InvalidConnInfo",
                format!("the source Secret's connection string: {e}"),
                Duration::from_secs(60),
            )
            .await;
        }
    };
    ensure_objects(sbx, ctx, &parsed).await?;
    let agent = match agent_for(ctx, &sbx.namespace().unwrap_or_default(), &name).await {
        Ok(a) => a,
        Err(Error::AgentNotReady(why)) => {
            return not_ready(sbx, ctx, "AgentStarting", why, Duration::from_secs(3)).await;
        }
        Err(e) => return Err(e),
    };
    let view = match agent.sandbox(&name).await {
        Ok(v) => v,
        Err(AgentError::Unreachable { url, detail }) => {
            return not_ready(
                sbx,
                ctx,
                "AgentUnreachable",
                format!("the agent at {url} does not answer: {detail}"),
                Duration::from_secs(5),
            )
            .await;
        }
        Err(e) => return Err(e.into()),
    };
    let view = match view {
        Some(v) if v.creation_error.is_none() => v,
        failed_or_missing => {
            if let Some(failed) = failed_or_missing.and_then(|v| v.creation_error) {
                ctx.event(sbx, EventType::Warning, "CreationFailed", failed.message.clone())
                    .await;
            }
            return create(sbx, ctx, &agent, &conninfo).await;
        }
    };
    let hash = source_hash(agent.token(), &conninfo);
    let mut applied_hash = sbx.status.as_ref().and_then(|s| s.source_hash.clone());
    if applied_hash.is_none() {
        applied_hash = Some(hash.clone());
    } else if applied_hash.as_deref() != Some(hash.as_str()) && view.status.is_some() {
        match agent.set_source(&name, &conninfo).await {
            Ok(()) => {
                ctx.event(
                    sbx,
                    EventType::Normal,
                    "SourceUpdated",
                    "the source Secret changed: the agent took the new connection string".into(),
                )
                .await;
                applied_hash = Some(hash.clone());
            }
            Err(e) => {
                ctx.event(sbx, EventType::Warning, "SourceUpdateFailed", e.to_string())
                    .await
            }
        }
    }
    let view = update_policy(sbx, ctx, &agent, view).await;
    let view = update_mask(sbx, ctx, &agent, view).await;
    let mut status = status_from(sbx, &view, applied_hash);
    resync_if_asked(sbx, ctx, &agent, &view, &mut status).await;
    if sbx.status.as_ref() != Some(&status) {
        let was_ready = sbx.status.as_ref().is_some_and(is_ready);
        patch_status(ctx, sbx, &status).await?;
        if is_ready(&status) && !was_ready {
            ctx.event(
                sbx,
                EventType::Normal,
                "Ready",
                "the sandbox is current with its source".into(),
            )
            .await;
        }
    }
    Ok(Action::requeue(if is_ready(&status) {
        ctx.settings.poll
    } else {
        Duration::from_secs(3)
    }))
}

/// A `resync` policy in the spec (absent means the default, auto) that the agent does not apply yet is given to
/// it; returns the agent's view after the change, or the old view with a warning event when it failed.
async fn update_policy(
    sbx: &Sandbox,
    ctx: &Context,
    agent: &crate::agent::AgentClient,
    view: SandboxView,
) -> SandboxView {
    let wanted = sbx.spec.resync.unwrap_or(crate::crd::sandbox::Resync::Auto);
    let Some(applied) = view.status.as_ref().map(|s| s.resync) else {
        return view;
    };
    if wanted.as_str() == applied.as_str() {
        return view;
    }
    match agent.set_resync_policy(&view.name, wanted.as_str()).await {
        Ok(updated) => {
            let message = format!("the resync policy is now {}", wanted.as_str());
            ctx.event(sbx, EventType::Normal, "ResyncPolicyUpdated", message).await;
            updated
        }
        Err(e) => {
            ctx.event(sbx, EventType::Warning, "ResyncPolicyUpdateFailed", e.to_string())
                .await;
            view
        }
    }
}

/// A mask config in the spec that a masked sandbox does not apply yet is given to the agent (which refuses to
/// change a policy already given: a warning event says why, and the sandbox keeps its config).
async fn update_mask(
    sbx: &Sandbox,
    ctx: &Context,
    agent: &crate::agent::AgentClient,
    view: SandboxView,
) -> SandboxView {
    let (Some(wanted), Some(applied)) = (
        sbx.spec.mask.as_ref().map(|m| m.to_agent()),
        view.status.as_ref().and_then(|s| s.masking.clone()),
    ) else {
        return view;
    };
    if wanted == applied {
        return view;
    }
    match agent.set_mask(&view.name, &wanted).await {
        Ok(updated) => {
            ctx.event(
                sbx,
                EventType::Normal,
                "MaskUpdated",
                "the agent applies the new mask config".into(),
            )
            .await;
            updated
        }
        Err(e) => {
            ctx.event(sbx, EventType::Warning, "MaskUpdateFailed", e.to_string())
                .await;
            view
        }
    }
}

/// A new value of the [`RESYNC_ANNOTATION`] asks the agent to resync the sandbox (what policy `manual` waits
/// for); the value acted on is kept in the status, so that each value asks once.
async fn resync_if_asked(
    sbx: &Sandbox,
    ctx: &Context,
    agent: &crate::agent::AgentClient,
    view: &understudy::server::sandboxes::SandboxView,
    status: &mut crate::crd::SandboxStatus,
) {
    let Some(asked) = sbx.annotations().get(RESYNC_ANNOTATION) else {
        return;
    };
    if status.resync_request.as_ref() == Some(asked) {
        return;
    }
    let name = sbx.name_any();
    if view.state != Some(understudy::sandbox::SandboxState::Stale) {
        let message = format!("{RESYNC_ANNOTATION}={asked}: the sandbox is not stale, so it was not resynced");
        ctx.event(sbx, EventType::Normal, "ResyncNotNeeded", message).await;
        status.resync_request = Some(asked.clone());
        return;
    }
    match agent.resync(&name).await {
        Ok(()) => {
            let message = format!("{RESYNC_ANNOTATION}={asked}: the agent rebuilds the sandbox");
            ctx.event(sbx, EventType::Normal, "ResyncRequested", message).await;
            status.resync_request = Some(asked.clone());
        }
        // Asked again on the next reconcile.
        Err(e) => {
            ctx.event(sbx, EventType::Warning, "ResyncRequestFailed", e.to_string())
                .await
        }
    }
}

async fn create(sbx: &Sandbox, ctx: &Context, agent: &crate::agent::AgentClient, conninfo: &str) -> Result<Action> {
    let name = sbx.name_any();
    let subset = sbx.spec.subset.as_ref().map(|s| s.to_agent());
    let mask = sbx.spec.mask.as_ref().map(|m| m.to_agent());
    let what = Replication {
        publication: sbx.spec.publication.as_deref(),
        tables: sbx.spec.tables.as_deref(),
        schema: sbx.spec.schema.as_deref(),
        wal_budget: sbx.spec.wal_budget.as_deref(),
        resync: sbx.spec.resync.map(|r| r.as_str()),
        subset: subset.as_ref(),
        mask: mask.as_ref(),
    };
    match agent.create_sandbox(&name, conninfo, &what).await {
        Ok(_) => {
            ctx.event(
                sbx,
                EventType::Normal,
                "Creating",
                "the agent checked the source and is copying it".into(),
            )
            .await;
            not_ready(
                sbx,
                ctx,
                "InitialSync",
                "the agent is making the initial copy".into(),
                Duration::from_secs(3),
            )
            .await
        }
        Err(AgentError::Refused { message, .. }) => {
            ctx.event(sbx, EventType::Warning, "CreationRefused", message.clone())
                .await;
            not_ready(sbx, ctx, "CreationRefused", message, Duration::from_secs(60)).await
        }
        Err(e) => Err(e.into()),
    }
}

/// The agent's token Secret, StatefulSet, Service and NetworkPolicy, applied (server-side) with the Sandbox as
/// their owner.
async fn ensure_objects(sbx: &Sandbox, ctx: &Context, source: &ConnInfo) -> Result<()> {
    let ns = sbx.namespace().unwrap_or_default();
    let name = sbx.name_any();
    let owner = sbx
        .controller_owner_ref(&())
        .ok_or_else(|| Error::InvalidSpec("the Sandbox has no uid yet".into()))?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let token_name = resources::token_secret_name(&name);
    if secrets.get_opt(&token_name).await?.is_none() {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(token_name.clone()),
                namespace: Some(ns.clone()),
                labels: Some(resources::labels(&name)),
                owner_references: Some(vec![owner.clone()]),
                ..ObjectMeta::default()
            },
            string_data: Some(std::collections::BTreeMap::from([(
                "token".to_string(),
                understudy::server::Token::random()
                    .map_err(Error::Random)?
                    .expose()
                    .to_string(),
            )])),
            ..Secret::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let pp = PatchParams::apply(MANAGER).force();
    let apply = |obj: serde_json::Value| Patch::Apply(obj);
    let sts = resources::stateful_set(sbx, &owner, &ctx.settings);
    Api::<StatefulSet>::namespaced(ctx.client.clone(), &ns)
        .patch(
            &resources::agent_name(&name),
            &pp,
            &apply(typed(&sts, "apps/v1", "StatefulSet")?),
        )
        .await?;
    let svc = resources::service(sbx, &owner);
    Api::<Service>::namespaced(ctx.client.clone(), &ns)
        .patch(
            &resources::agent_name(&name),
            &pp,
            &apply(typed(&svc, "v1", "Service")?),
        )
        .await?;
    let np = resources::network_policy(sbx, &owner, source);
    Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &ns)
        .patch(
            &resources::agent_name(&name),
            &pp,
            &apply(typed(&np, "networking.k8s.io/v1", "NetworkPolicy")?),
        )
        .await?;
    Ok(())
}

/// `obj` as JSON with its `apiVersion` and `kind` (server-side apply needs both).
fn typed(obj: &impl serde::Serialize, api_version: &str, kind: &str) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(obj)?;
    value["apiVersion"] = api_version.into();
    value["kind"] = kind.into();
    Ok(value)
}

/// The Sandbox is deleted: its slot and publication leave the source, through the agent, or with the Secret when
/// the agent is gone. Its Kubernetes objects go with it (owner references).
async fn cleanup(sbx: &Sandbox, ctx: &Context) -> Result<Action> {
    let name = sbx.name_any();
    let ns = sbx.namespace().unwrap_or_default();
    match agent_for(ctx, &ns, &name).await {
        Ok(agent) => match agent.delete_sandbox(&name).await {
            Ok(()) => {
                ctx.event(
                    sbx,
                    EventType::Normal,
                    "Deleted",
                    "the agent removed the sandbox and its slot on the source".into(),
                )
                .await;
                return Ok(Action::await_change());
            }
            Err(AgentError::Unreachable { .. }) => {}
            Err(e) => return Err(e.into()),
        },
        Err(Error::AgentNotReady(_)) => {}
        Err(e) => return Err(e),
    }
    // No agent: the operator removes what the sandbox holds on the source itself.
    match source(sbx, ctx).await? {
        Ok(conninfo) => {
            let parsed = ConnInfo::parse(&conninfo).map_err(|e| Error::InvalidSpec(e.to_string()))?;
            let sandbox_name = SandboxName::parse(&name).map_err(|e| Error::InvalidSpec(e.to_string()))?;
            let scratch = std::env::temp_dir().join(format!("understudy-operator-cleanup-{}", std::process::id()));
            let state = understudy::sandbox::StateDir::at(&scratch);
            let report = understudy::sandbox::delete(&state, &sandbox_name, Some(parsed), false)
                .await
                .map_err(Error::Source)?;
            let _ = std::fs::remove_dir_all(&scratch);
            ctx.event(
                sbx,
                EventType::Normal,
                "Deleted",
                format!(
                    "the agent is gone; the operator removed {:?} from the source",
                    report.slots_dropped
                ),
            )
            .await;
        }
        Err((_, message)) => {
            ctx.event(
                sbx,
                EventType::Warning,
                "SourceNotCleaned",
                format!("{message}; drop the slot understudy_{name} on the source by hand"),
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod reconcile_tests {
    use super::*;
    use crate::controller::mock::{self, expect, silence};
    use crate::crd::SandboxSpec;

    fn sandbox(name: &str) -> Sandbox {
        let mut s = Sandbox::new(
            name,
            serde_json::from_value::<SandboxSpec>(serde_json::json!({
                "source": {"secretRef": {"name": "prod"}}, "publication": "shop_pub"}))
            .expect("spec"),
        );
        s.metadata.namespace = Some("ns".into());
        s.metadata.uid = Some("uid-1".into());
        s.metadata.generation = Some(3);
        s
    }

    /// The status patch that ends a reconcile, answered with a Sandbox; nothing may follow it.
    async fn last_status_patch(handle: &mut mock::Handle, path: &str) -> serde_json::Value {
        let patch = expect(
            handle,
            "PATCH",
            path,
            200,
            serde_json::to_value(sandbox("shop")).expect("json"),
        )
        .await;
        silence(handle).await;
        patch
    }

    #[tokio::test]
    async fn a_missing_source_secret_is_a_condition_and_a_retry() {
        let (ctx, mut handle) = Context::test();
        let sbx = sandbox("shop");
        let server = tokio::spawn(async move {
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/ns/secrets/prod",
                404,
                mock::status(404, "NotFound"),
            )
            .await;
            last_status_patch(
                &mut handle,
                "/apis/understudy.dev/v1alpha1/namespaces/ns/sandboxes/shop/status",
            )
            .await
        });
        let action = apply(&sbx, &ctx).await.expect("a missing Secret is not an error");
        assert_eq!(action, Action::requeue(Duration::from_secs(30)));
        let patch = server.await.expect("server");
        assert_eq!(patch["kind"], "Sandbox");
        let ready = &patch["status"]["conditions"][0];
        assert_eq!(
            (
                ready["type"].as_str(),
                ready["status"].as_str(),
                ready["reason"].as_str()
            ),
            (Some("Ready"), Some("False"), Some("SecretNotFound"))
        );
        assert!(
            ready["message"]
                .as_str()
                .unwrap_or_default()
                .contains("kubectl create secret generic prod")
        );
        assert_eq!(patch["status"]["observedGeneration"], 3);
    }

    #[tokio::test]
    async fn a_name_that_is_no_sandbox_name_is_a_condition_without_calls() {
        let (ctx, mut handle) = Context::test();
        let sbx = sandbox("a-name-that-is-far-too-long-for-a-sandbox-name-here");
        let server = tokio::spawn(async move {
            last_status_patch(&mut handle, "/apis/understudy.dev/v1alpha1/namespaces/ns/sandboxes/").await
        });
        apply(&sbx, &ctx).await.expect("apply");
        let patch = server.await.expect("server");
        assert_eq!(patch["status"]["conditions"][0]["reason"], "InvalidName");
    }

    #[tokio::test]
    async fn a_deleted_sandbox_without_agent_or_secret_says_what_stays_on_the_source() {
        let (ctx, mut handle) = Context::test();
        let sbx = sandbox("shop");
        let server = tokio::spawn(async move {
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/ns/pods/shop-agent-0",
                404,
                mock::status(404, "NotFound"),
            )
            .await;
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/ns/secrets/prod",
                404,
                mock::status(404, "NotFound"),
            )
            .await;
            let note = mock::event(&mut handle).await;
            silence(&mut handle).await;
            note
        });
        let action = cleanup(&sbx, &ctx).await.expect("cleanup ends");
        assert_eq!(action, Action::await_change());
        let note = server.await.expect("server");
        assert!(note.contains("drop the slot understudy_shop"), "{note}");
    }
}

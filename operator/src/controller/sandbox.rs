//! The Sandbox controller: the agent's token Secret, StatefulSet, Service and NetworkPolicy; the sandbox created in
//! the agent from the source Secret (and a changed Secret handed to it); the agent's view copied into the status
//! as conditions. Deleting a Sandbox deletes the sandbox through its agent (slot and publication removed from the
//! source), or, with the agent gone, directly on the source with the Secret.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use understudy::pg::ConnInfo;
use understudy::sandbox::SandboxState;
use understudy::server::sandboxes::SandboxView;
use understudy::source::SandboxName;

use super::{Context, FINALIZER, MANAGER, agent_for, condition, patch_status, reconciled, secret_value};
use crate::agent::{AgentError, Replication};
use crate::crd::sandbox::TableCounts;
use crate::crd::{Sandbox, SandboxStatus};
use crate::{Error, Result, resources};

const CONTROLLER: &str = "sandbox";

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

fn source_hash(conninfo: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    conninfo.hash(&mut h);
    format!("{:016x}", h.finish())
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
    let hash = source_hash(&conninfo);
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
    let status = status_from(sbx, &view, applied_hash);
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

async fn create(sbx: &Sandbox, ctx: &Context, agent: &crate::agent::AgentClient, conninfo: &str) -> Result<Action> {
    let name = sbx.name_any();
    let what = Replication {
        publication: sbx.spec.publication.as_deref(),
        tables: sbx.spec.tables.as_deref(),
        schema: sbx.spec.schema.as_deref(),
        wal_budget: sbx.spec.wal_budget.as_deref(),
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

fn is_ready(status: &SandboxStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The status from the agent's view: the four conditions and the figures.
pub fn status_from(sbx: &Sandbox, view: &SandboxView, source_hash: Option<String>) -> SandboxStatus {
    let old = sbx.status.clone().unwrap_or_default().conditions;
    let generation = sbx.metadata.generation;
    let st = view.status.as_ref();
    let sup = view.supervision.as_ref();
    let state = view.state;
    let reasons = st.map(|s| s.reasons.join("; ")).unwrap_or_default();
    let current = sup.is_some_and(|s| s.current);
    let replicating = st.is_some_and(|s| s.apply_worker_running);
    let cond = |t: &str, on: bool, yes: (&str, String), no: (&str, String)| -> Condition {
        let (reason, message) = if on { yes } else { no };
        condition(&old, t, on, reason, message, generation)
    };
    let not_current = sup.and_then(|s| s.not_current_reason.clone()).unwrap_or_else(|| {
        if view.creating {
            "the agent is making the initial copy".into()
        } else {
            reasons.clone()
        }
    });
    let conditions = vec![
        cond(
            "Ready",
            state == Some(SandboxState::Ready) && current,
            ("Current", "the sandbox is current with its source".into()),
            (if view.creating { "InitialSync" } else { "NotCurrent" }, not_current),
        ),
        cond(
            "Replicating",
            replicating,
            ("Streaming", "the apply worker streams from the source's slot".into()),
            ("NotStreaming", "the apply worker is not running".into()),
        ),
        cond(
            "Degraded",
            state == Some(SandboxState::Degraded),
            ("Degraded", reasons.clone()),
            ("AsExpected", String::new()),
        ),
        cond(
            "Stale",
            state == Some(SandboxState::Stale),
            ("Stale", reasons.clone()),
            ("AsExpected", String::new()),
        ),
    ];
    let mut tables = TableCounts::default();
    for t in st.map(|s| s.tables.as_slice()).unwrap_or_default() {
        match t.state {
            understudy::sandbox::TableSyncState::Ready => tables.ready += 1,
            understudy::sandbox::TableSyncState::Syncing => tables.syncing += 1,
            understudy::sandbox::TableSyncState::Copying => tables.copying += 1,
            _ => tables.other += 1,
        }
    }
    SandboxStatus {
        state: state
            .and_then(|s| serde_json::to_value(s).ok())
            .and_then(|v| v.as_str().map(str::to_string)),
        conditions,
        lag_bytes: st.and_then(|s| s.lag_bytes),
        lag_seconds: st.and_then(|s| s.lag_seconds).map(|s| (s * 1000.0).round() / 1000.0),
        wal_retained_bytes: st.and_then(|s| s.retained_wal_bytes),
        wal_status: st.and_then(|s| s.wal_status).map(|w| w.as_str().to_string()),
        slot: st.map(|s| s.slot.clone()),
        tables: st.map(|_| tables),
        server_restarts: sup.map(|s| s.restarts),
        source_hash,
        observed_generation: generation,
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
            string_data: Some(std::collections::BTreeMap::from([("token".to_string(), new_token())])),
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
    let sts = resources::stateful_set(sbx, &owner, &ctx.settings.agent_image);
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

/// A fresh API token for an agent (64 hex digits).
fn new_token() -> String {
    use std::hash::BuildHasher;
    (0..4)
        .map(|i: u64| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(i);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            format!("{:016x}", h.finish())
        })
        .collect()
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
mod tests {
    use understudy::sandbox::status::TableSync;
    use understudy::sandbox::{SandboxStatus as AgentStatus, TableSyncState};
    use understudy::supervisor::Supervision;

    use super::*;
    use crate::crd::SandboxSpec;

    fn sandbox() -> Sandbox {
        Sandbox::new(
            "shop",
            serde_json::from_value::<SandboxSpec>(serde_json::json!({
                "source": {"secretRef": {"name": "prod"}}, "publication": "shop_pub"}))
            .expect("spec"),
        )
    }

    fn agent_status(state: SandboxState, worker: bool, reasons: &[&str]) -> AgentStatus {
        serde_json::from_value(serde_json::json!({
            "name": "shop", "state": state, "reasons": reasons, "source": "host=db password=********",
            "publication": "shop_pub", "slot": "understudy_shop", "cluster": "host=/x port=5432",
            "cluster_running": true, "apply_worker_running": worker, "apply_error_count": 0,
            "received_lsn": null, "applied_lsn": null, "source_lsn": "0/10", "confirmed_lsn": "0/10",
            "lag_bytes": 120, "lag_seconds": 0.123456, "retained_wal_bytes": 4096, "wal_status": "reserved",
            "wal_budget_bytes": 1073741824, "tables": [], "drift": [], "last_error": null, "warnings": []
        }))
        .expect("agent status")
    }

    fn view(state: SandboxState, worker: bool, current: bool, reasons: &[&str]) -> SandboxView {
        let mut st = agent_status(state, worker, reasons);
        st.tables = vec![
            TableSync {
                table: "public.orders".into(),
                state: TableSyncState::Ready,
            },
            TableSync {
                table: "public.events".into(),
                state: TableSyncState::Copying,
            },
        ];
        SandboxView {
            name: "shop".into(),
            state: Some(state),
            creating: false,
            creation_error: None,
            status: Some(st),
            supervision: Some(Supervision {
                restarts: 2,
                current,
                not_current_reason: (!current).then(|| "lags 45.0 s behind the source".to_string()),
                ..Supervision::default()
            }),
        }
    }

    fn cond<'a>(s: &'a SandboxStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).expect("condition")
    }

    #[test]
    fn a_current_sandbox_is_ready_and_replicating() {
        let s = status_from(
            &sandbox(),
            &view(SandboxState::Ready, true, true, &[]),
            Some("h".into()),
        );
        assert_eq!(
            (cond(&s, "Ready").status.as_str(), cond(&s, "Ready").reason.as_str()),
            ("True", "Current")
        );
        assert_eq!(cond(&s, "Replicating").status, "True");
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(cond(&s, "Stale").status, "False");
        assert_eq!(s.state.as_deref(), Some("ready"));
        assert_eq!(s.lag_seconds, Some(0.123));
        assert_eq!((s.lag_bytes, s.wal_retained_bytes), (Some(120), Some(4096)));
        assert_eq!(s.wal_status.as_deref(), Some("reserved"));
        assert_eq!(s.slot.as_deref(), Some("understudy_shop"));
        assert_eq!(s.server_restarts, Some(2));
        assert_eq!(s.tables.as_ref().map(|t| (t.ready, t.copying)), Some((1, 1)));
        assert_eq!(s.source_hash.as_deref(), Some("h"));
    }

    #[test]
    fn a_lagging_sandbox_is_not_ready_and_says_why() {
        let s = status_from(&sandbox(), &view(SandboxState::Ready, true, false, &[]), None);
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Ready").reason, "NotCurrent");
        assert!(cond(&s, "Ready").message.contains("45.0 s"));
    }

    #[test]
    fn degraded_and_stale_sandboxes_carry_their_reasons() {
        let s = status_from(
            &sandbox(),
            &view(SandboxState::Degraded, true, false, &["1 schema change(s)"]),
            None,
        );
        assert_eq!(cond(&s, "Degraded").status, "True");
        assert!(cond(&s, "Degraded").message.contains("schema change"));
        let s = status_from(
            &sandbox(),
            &view(SandboxState::Stale, false, false, &["slot gone"]),
            None,
        );
        assert_eq!(cond(&s, "Stale").status, "True");
        assert_eq!(cond(&s, "Replicating").status, "False");
        assert_eq!(cond(&s, "Ready").status, "False");
    }

    #[test]
    fn a_sandbox_in_its_initial_copy_says_so() {
        let v = SandboxView {
            name: "shop".into(),
            state: Some(SandboxState::InitialSync),
            creating: true,
            creation_error: None,
            status: None,
            supervision: None,
        };
        let s = status_from(&sandbox(), &v, None);
        assert_eq!(cond(&s, "Ready").reason, "InitialSync");
        assert_eq!(s.state.as_deref(), Some("initial-sync"));
        assert_eq!(s.tables, None);
    }

    #[test]
    fn the_source_hash_changes_with_the_secret() {
        assert_eq!(source_hash("host=a password=x"), source_hash("host=a password=x"));
        assert_ne!(source_hash("host=a password=x"), source_hash("host=a password=y"));
        assert_eq!(new_token().len(), 64);
        assert_ne!(new_token(), new_token());
    }
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
            let patch = expect(
                &mut handle,
                "PATCH",
                "/apis/understudy.dev/v1alpha1/namespaces/ns/sandboxes/shop/status",
                200,
                serde_json::to_value(sandbox("shop")).expect("json"),
            )
            .await;
            silence(&mut handle).await;
            patch
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
            let patch = expect(
                &mut handle,
                "PATCH",
                "/apis/understudy.dev/v1alpha1/namespaces/ns/sandboxes/",
                200,
                serde_json::to_value(sandbox("x")).expect("json"),
            )
            .await;
            silence(&mut handle).await;
            patch
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

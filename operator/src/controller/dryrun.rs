//! The DryRun controller: the spec checked and turned into the agent's `DryRunRequest` (SQL inline or from
//! ConfigMaps); the schedule timed here (requeue until the next start; the next starts in the status); a due run
//! started on the Sandbox's agent and followed; its verdict, key figures and findings copied into the status and
//! its reports into a ConfigMap the DryRun owns; the last `historyLimit` results kept. Deleting a DryRun cancels
//! its run, whose forks and capture slots the agent removes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use understudy::dryrun::RunPhase;
use understudy::runs::RunView;

use super::{Context, FINALIZER, MANAGER, agent_for, condition, patch_status, reconciled};
use crate::agent::AgentError;
use crate::controller::request::{self, Invalid};
use crate::crd::dryrun::{KeyFigures, RunResult, StatusFinding};
use crate::crd::{DryRun, DryRunPhase, DryRunStatus, Sandbox};
use crate::{Error, Result};

const CONTROLLER: &str = "dryrun";

/// One span per reconcile (exported with the `otlp` feature); a run it starts on the agent is its child.
#[tracing::instrument(name = "reconcile", skip_all, fields(controller = CONTROLLER, namespace = dr.namespace().unwrap_or_default(), name = %dr.name_any()))]
pub async fn reconcile(dr: Arc<DryRun>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = dr.namespace().unwrap_or_else(|| "default".into());
    let api: Api<DryRun> = Api::namespaced(ctx.client.clone(), &ns);
    // Metrics from the status as it stands, so that a restarted operator serves them before anything changes.
    if dr.metadata.deletion_timestamp.is_some() {
        ctx.metrics.dryruns.forget(&ns, &dr.name_any());
    } else if let Some(status) = &dr.status {
        ctx.metrics.dryruns.status(&ns, &dr.name_any(), status);
    }
    let action = finalizer(&api, FINALIZER, Arc::clone(&dr), |event| async {
        match event {
            Finalizer::Apply(d) => apply(&d, &ctx).await,
            Finalizer::Cleanup(d) => cleanup(&d, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    reconciled(&ctx, dr.as_ref());
    Ok(action)
}

/// The agent's phase as the DryRun's.
pub fn phase_of(phase: RunPhase) -> DryRunPhase {
    match phase {
        RunPhase::Pending => DryRunPhase::Pending,
        RunPhase::Scheduled => DryRunPhase::Scheduled,
        RunPhase::Forking => DryRunPhase::Forking,
        RunPhase::Replaying => DryRunPhase::Replaying,
        RunPhase::Migrating => DryRunPhase::Migrating,
        RunPhase::Verifying => DryRunPhase::Verifying,
        RunPhase::RollingBack => DryRunPhase::RollingBack,
        RunPhase::Succeeded => DryRunPhase::Succeeded,
        RunPhase::Failed | RunPhase::Cancelled => DryRunPhase::Failed,
    }
}

fn status_of(dr: &DryRun) -> DryRunStatus {
    dr.status.clone().unwrap_or_default()
}

async fn write(dr: &DryRun, ctx: &Context, mut status: DryRunStatus) -> Result<()> {
    status.observed_generation = dr.metadata.generation;
    if dr.status.as_ref() != Some(&status) {
        patch_status(ctx, dr, &status).await?;
    }
    let ns = dr.namespace().unwrap_or_default();
    ctx.metrics.dryruns.status(&ns, &dr.name_any(), &status);
    Ok(())
}

/// A spec that cannot run as it is: `Failed` when only a change of the spec can fix it, else `Pending`.
async fn invalid(dr: &DryRun, ctx: &Context, bad: Invalid) -> Result<Action> {
    let mut status = status_of(dr);
    let generation = dr.metadata.generation;
    status.conditions = vec![condition(
        &status.conditions,
        "Valid",
        false,
        &bad.reason,
        bad.message.clone(),
        generation,
    )];
    status.phase = Some(if bad.permanent {
        DryRunPhase::Failed
    } else {
        DryRunPhase::Pending
    });
    status.summary = Some(bad.message.clone());
    status.next_runs = Vec::new();
    if dr.status.as_ref().and_then(|s| s.summary.as_ref()) != Some(&bad.message) {
        ctx.event(dr, EventType::Warning, &bad.reason, bad.message.clone())
            .await;
    }
    write(dr, ctx, status).await?;
    Ok(if bad.permanent {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(15))
    })
}

async fn apply(dr: &DryRun, ctx: &Context) -> Result<Action> {
    let status = status_of(dr);
    if let Some(run) = status.run.clone() {
        return follow(dr, ctx, &run).await;
    }
    let ns = dr.namespace().unwrap_or_default();
    let (request, schedule) = match request::build(dr, ctx).await? {
        Ok(r) => r,
        Err(bad) => return invalid(dr, ctx, bad).await,
    };
    let now = jiff::Zoned::now();
    let created = dr
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(jiff::Timestamp::now);
    let due = request::due(&schedule, &status, created, &now);
    ctx.metrics.dryruns.start_due(&ns, &dr.name_any(), due);
    let mut status = status;
    status.conditions = vec![condition(
        &status.conditions,
        "Valid",
        true,
        "Valid",
        "the spec is valid: its SQL is found and its schedule, windows and thresholds parse".into(),
        dr.metadata.generation,
    )];
    status.next_runs = request::next_runs(&schedule, &status, created, &now);
    let Some(slot) = due else {
        // Nothing due: wait for the next start, or rest when there is none.
        status.phase = Some(match status.history.first() {
            _ if !status.next_runs.is_empty() => DryRunPhase::Scheduled,
            Some(last) => last.phase,
            None => DryRunPhase::Pending,
        });
        let wait = request::until_next(&status, &now);
        write(dr, ctx, status).await?;
        return Ok(match wait {
            Some(wait) => Action::requeue(wait.min(Duration::from_secs(3600))),
            None => Action::await_change(),
        });
    };
    // Due: on a Sandbox that is ready.
    let sandboxes: Api<Sandbox> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(sandbox) = sandboxes.get_opt(&dr.spec.sandbox).await? else {
        return invalid(
            dr,
            ctx,
            Invalid::waiting(
                "SandboxNotFound",
                format!("no Sandbox {} in namespace {ns}", dr.spec.sandbox),
            ),
        )
        .await;
    };
    let ready = sandbox
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == "True");
    if ready.is_none() {
        let why = sandbox
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.message.clone())
            .unwrap_or_else(|| "it has no status yet".into());
        status.phase = Some(DryRunPhase::Pending);
        status.summary = Some(format!("waiting for Sandbox {} to be ready: {why}", dr.spec.sandbox));
        write(dr, ctx, status).await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let agent = match agent_for(ctx, &ns, &dr.spec.sandbox).await {
        Ok(a) => a,
        Err(Error::AgentNotReady(_)) => return Ok(Action::requeue(Duration::from_secs(5))),
        Err(e) => return Err(e),
    };
    let view = agent.start_run(&request).await?;
    ctx.metrics.dryruns.start_due(&ns, &dr.name_any(), None);
    ctx.event(
        dr,
        EventType::Normal,
        "RunStarted",
        format!("run {} on Sandbox {} (scheduled for {slot})", view.id, dr.spec.sandbox),
    )
    .await;
    status.run = Some(view.id.clone());
    status.phase = Some(phase_of(view.phase));
    status.summary = None;
    status.trace_id = None;
    status.last_schedule_time = Some(slot.to_string());
    write(dr, ctx, status).await?;
    Ok(Action::requeue(Duration::from_secs(2)))
}

/// Follows the run in progress; once it ended, its results go into the status and the report ConfigMap.
async fn follow(dr: &DryRun, ctx: &Context, run: &str) -> Result<Action> {
    let ns = dr.namespace().unwrap_or_default();
    let agent = match agent_for(ctx, &ns, &dr.spec.sandbox).await {
        Ok(a) => a,
        Err(Error::AgentNotReady(_)) => return Ok(Action::requeue(Duration::from_secs(5))),
        Err(e) => return Err(e),
    };
    let view = match agent.run(run).await {
        Ok(v) => v,
        Err(AgentError::Unreachable { .. }) => return Ok(Action::requeue(Duration::from_secs(5))),
        Err(e) => return Err(e.into()),
    };
    let mut status = status_of(dr);
    let Some(view) = view else {
        let message = format!("the agent has no record of run {run} (its state was lost); the next start runs anew");
        finish(dr, ctx, &mut status, run, None, Some(message)).await?;
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    if !view.phase.is_final() {
        let phase = phase_of(view.phase);
        if status.phase != Some(phase) {
            ctx.event(
                dr,
                EventType::Normal,
                &format!("{phase:?}"),
                format!("run {run}: {}", phase_step(phase)),
            )
            .await;
        }
        status.phase = Some(phase);
        status.trace_id = view.trace_id.as_ref().map(ToString::to_string);
        write(dr, ctx, status).await?;
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let error = view.error.as_ref().map(|e| e.message.clone());
    if view.phase == RunPhase::Succeeded {
        store_report(dr, ctx, &agent, run).await?;
    }
    finish(dr, ctx, &mut status, run, Some(&view), error).await?;
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// What a run does in `phase`, for its event.
fn phase_step(phase: DryRunPhase) -> &'static str {
    match phase {
        DryRunPhase::Pending => "waiting to start",
        DryRunPhase::Scheduled => "waiting for its scheduled start",
        DryRunPhase::Forking => "forking the sandbox (the fork and its control twin)",
        DryRunPhase::Replaying => "replaying the source's writes into the fork",
        DryRunPhase::Migrating => "running the migration under the replayed writes",
        DryRunPhase::Verifying => "comparing the fork with its control twin",
        DryRunPhase::RollingBack => "running the down-migration and checking the schema returns",
        DryRunPhase::Succeeded => "ended",
        DryRunPhase::Failed => "failed",
    }
}

/// Writes an ended run's results into the status (and its history) and clears the run in progress.
async fn finish(
    dr: &DryRun,
    ctx: &Context,
    status: &mut DryRunStatus,
    run: &str,
    view: Option<&RunView>,
    error: Option<String>,
) -> Result<()> {
    let phase = view.map(|v| phase_of(v.phase)).unwrap_or(DryRunPhase::Failed);
    status.phase = Some(phase);
    status.run = None;
    status.verdict = view.and_then(|v| v.verdict).map(|v| v.as_str().to_string());
    status.summary = view.and_then(|v| v.summary.clone()).or(error);
    status.trace_id = view.and_then(|v| v.trace_id.as_ref()).map(ToString::to_string);
    status.figures = view.and_then(|v| v.figures.as_ref()).map(KeyFigures::from);
    status.findings = view
        .map(|v| {
            v.findings
                .iter()
                .map(|f| StatusFinding {
                    code: f.code.to_string(),
                    severity: serde_json::to_value(f.severity)
                        .ok()
                        .and_then(|s| s.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    title: f.title.clone(),
                    line: f.line.and_then(|l| u32::try_from(l).ok()),
                })
                .collect()
        })
        .unwrap_or_default();
    if phase == DryRunPhase::Succeeded {
        status.report_ref = Some(report_name(dr));
    }
    let limit = dr.spec.history_limit.unwrap_or(5) as usize;
    status.history.insert(
        0,
        RunResult {
            run: run.to_string(),
            started_at: view.and_then(|v| v.started_at).map(|t| t.to_string()),
            finished_at: view.and_then(|v| v.finished_at).map(|t| t.to_string()),
            phase,
            verdict: status.verdict.clone(),
            summary: status.summary.clone(),
            trace_id: status.trace_id.clone(),
        },
    );
    status.history.truncate(limit.max(1));
    // The summary starts with the verdict ("pass: ..."); without one, the verdict alone.
    let outcome = status
        .summary
        .clone()
        .or_else(|| status.verdict.as_ref().map(|v| format!("verdict {v}")))
        .unwrap_or_else(|| "no verdict".into());
    let note = format!("run {run} ended {phase:?}: {outcome}");
    let kind = if phase == DryRunPhase::Succeeded {
        EventType::Normal
    } else {
        EventType::Warning
    };
    ctx.event(dr, kind, "RunFinished", note).await;
    let ns = dr.namespace().unwrap_or_default();
    ctx.metrics
        .dryruns
        .run_ended(&ns, &dr.name_any(), status.verdict.as_deref());
    write(dr, ctx, status.clone()).await
}

fn report_name(dr: &DryRun) -> String {
    format!("{}-report", dr.name_any())
}

/// The run's JSON and Markdown reports into the ConfigMap `<name>-report`, owned by the DryRun.
async fn store_report(dr: &DryRun, ctx: &Context, agent: &crate::agent::AgentClient, run: &str) -> Result<()> {
    let json = agent.report(run, "json").await?;
    let markdown = agent.report(run, "markdown").await?;
    let owner = dr
        .controller_owner_ref(&())
        .ok_or_else(|| Error::InvalidSpec("the DryRun has no uid yet".into()))?;
    // A ConfigMap holds at most 1 MiB.
    let mut data = std::collections::BTreeMap::from([
        ("report.md".to_string(), markdown),
        ("run".to_string(), run.to_string()),
    ]);
    if json.len() < 900_000 {
        data.insert("report.json".into(), json);
    } else {
        data.insert(
            "report.json.omitted".into(),
            format!("{} bytes; GET /v1/dryruns/{run}/report on the agent", json.len()),
        );
    }
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(report_name(dr)),
            namespace: dr.namespace(),
            owner_references: Some(vec![owner]),
            labels: Some(std::collections::BTreeMap::from([
                ("app.kubernetes.io/managed-by".to_string(), MANAGER.to_string()),
                ("understudy.dev/dryrun".to_string(), dr.name_any()),
            ])),
            ..Default::default()
        },
        data: Some(data),
        ..ConfigMap::default()
    };
    let mut value = serde_json::to_value(&cm)?;
    value["apiVersion"] = "v1".into();
    value["kind"] = "ConfigMap".into();
    Api::<ConfigMap>::namespaced(ctx.client.clone(), &dr.namespace().unwrap_or_default())
        .patch(
            &report_name(dr),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await?;
    Ok(())
}

/// The DryRun is deleted: its run is cancelled and the finalizer stays until the agent says it ended (its forks
/// and capture slots removed). With the agent gone, its forks went with it.
async fn cleanup(dr: &DryRun, ctx: &Context) -> Result<Action> {
    let Some(run) = status_of(dr).run else {
        return Ok(Action::await_change());
    };
    let ns = dr.namespace().unwrap_or_default();
    let agent = match agent_for(ctx, &ns, &dr.spec.sandbox).await {
        Ok(a) => a,
        Err(Error::AgentNotReady(_)) => return Ok(Action::await_change()),
        Err(e) => return Err(e),
    };
    match agent.run(&run).await {
        Ok(Some(view)) if !view.phase.is_final() => {
            agent.cancel_run(&run).await?;
            ctx.event(
                dr,
                EventType::Normal,
                "Cancelling",
                format!("run {run} is cancelled; its forks are removed"),
            )
            .await;
            Err(Error::AgentNotReady(format!("run {run} is being cancelled")))
        }
        Ok(_) | Err(AgentError::Unreachable { .. }) => Ok(Action::await_change()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_agent_phase_has_a_dry_run_phase() {
        assert_eq!(phase_of(RunPhase::RollingBack), DryRunPhase::RollingBack);
        assert_eq!(phase_of(RunPhase::Succeeded), DryRunPhase::Succeeded);
        assert_eq!(phase_of(RunPhase::Cancelled), DryRunPhase::Failed);
        assert_eq!(phase_of(RunPhase::Failed), DryRunPhase::Failed);
        assert_eq!(phase_of(RunPhase::Pending), DryRunPhase::Pending);
    }
}

#[cfg(test)]
mod reconcile_tests {
    use super::*;
    use crate::controller::mock::{self, expect, silence};
    use crate::crd::DryRunSpec;

    fn dry_run(spec: serde_json::Value) -> DryRun {
        let mut d = DryRun::new("add-flag", serde_json::from_value::<DryRunSpec>(spec).expect("spec"));
        d.metadata.namespace = Some("ns".into());
        d.metadata.uid = Some("uid-2".into());
        d.metadata.generation = Some(1);
        d.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::now(),
        ));
        d
    }

    fn echo(d: &DryRun) -> serde_json::Value {
        serde_json::to_value(d).expect("json")
    }

    #[tokio::test]
    async fn empty_sql_fails_the_dry_run_with_a_condition_and_an_event() {
        let (ctx, mut handle) = Context::test();
        let dr = dry_run(serde_json::json!({"sandbox": "shop", "up": "   "}));
        let body = echo(&dr);
        let server = tokio::spawn(async move {
            let note = mock::event(&mut handle).await;
            let patch = expect(
                &mut handle,
                "PATCH",
                "/apis/understudy.dev/v1alpha1/namespaces/ns/dryruns/add-flag/status",
                200,
                body,
            )
            .await;
            silence(&mut handle).await;
            (note, patch)
        });
        let action = apply(&dr, &ctx).await.expect("a bad spec is not an error");
        assert_eq!(action, Action::await_change(), "only a change of the spec helps");
        let (note, patch) = server.await.expect("server");
        assert!(note.contains("up: the SQL is empty"), "{note}");
        assert_eq!(patch["status"]["phase"], "Failed");
        let valid = &patch["status"]["conditions"][0];
        assert_eq!(
            (
                valid["type"].as_str(),
                valid["status"].as_str(),
                valid["reason"].as_str()
            ),
            (Some("Valid"), Some("False"), Some("InvalidSpec"))
        );
    }

    #[tokio::test]
    async fn an_invalid_cron_fails_the_dry_run() {
        let (ctx, mut handle) = Context::test();
        let dr = dry_run(serde_json::json!({"sandbox": "shop", "up": "SELECT 1;", "schedule": {"cron": "0 25 * * *"}}));
        let body = echo(&dr);
        let server = tokio::spawn(async move {
            let note = mock::event(&mut handle).await;
            let patch = expect(
                &mut handle,
                "PATCH",
                "/apis/understudy.dev/v1alpha1/namespaces/ns/dryruns/add-flag/status",
                200,
                body,
            )
            .await;
            (note, patch)
        });
        apply(&dr, &ctx).await.expect("apply");
        let (note, patch) = server.await.expect("server");
        assert!(note.contains("schedule:"), "{note}");
        assert_eq!(patch["status"]["conditions"][0]["reason"], "InvalidSchedule");
    }

    #[tokio::test]
    async fn a_missing_sandbox_or_configmap_waits_pending() {
        let (ctx, mut handle) = Context::test();
        let dr = dry_run(serde_json::json!({"sandbox": "shop", "up": "SELECT 1;"}));
        let body = echo(&dr);
        let server = tokio::spawn(async move {
            expect(
                &mut handle,
                "GET",
                "/apis/understudy.dev/v1alpha1/namespaces/ns/sandboxes/shop",
                404,
                mock::status(404, "NotFound"),
            )
            .await;
            let note = mock::event(&mut handle).await;
            let patch = expect(
                &mut handle,
                "PATCH",
                "/apis/understudy.dev/v1alpha1/namespaces/ns/dryruns/add-flag/status",
                200,
                body,
            )
            .await;
            (note, patch)
        });
        let action = apply(&dr, &ctx).await.expect("apply");
        assert_eq!(action, Action::requeue(Duration::from_secs(15)));
        let (note, patch) = server.await.expect("server");
        assert!(note.contains("no Sandbox shop"), "{note}");
        assert_eq!(patch["status"]["phase"], "Pending");

        let (ctx, mut handle) = Context::test();
        let dr = dry_run(serde_json::json!({"sandbox": "shop", "upConfigMapRef": {"name": "m", "key": "up.sql"}}));
        let body = echo(&dr);
        let server = tokio::spawn(async move {
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/ns/configmaps/m",
                404,
                mock::status(404, "NotFound"),
            )
            .await;
            mock::event(&mut handle).await;
            expect(
                &mut handle,
                "PATCH",
                "/apis/understudy.dev/v1alpha1/namespaces/ns/dryruns/add-flag/status",
                200,
                body,
            )
            .await
        });
        apply(&dr, &ctx).await.expect("apply");
        let patch = server.await.expect("server");
        assert_eq!(patch["status"]["conditions"][0]["reason"], "ConfigMapNotFound");
    }

    #[tokio::test]
    async fn a_scheduled_dry_run_shows_its_next_runs_and_waits() {
        let (ctx, mut handle) = Context::test();
        let dr = dry_run(serde_json::json!({"sandbox": "shop", "up": "SELECT 1;", "schedule": {"cron": "0 2 * * *"}}));
        let body = echo(&dr);
        let server = tokio::spawn(async move {
            let patch = expect(
                &mut handle,
                "PATCH",
                "/apis/understudy.dev/v1alpha1/namespaces/ns/dryruns/add-flag/status",
                200,
                body,
            )
            .await;
            silence(&mut handle).await;
            patch
        });
        let action = apply(&dr, &ctx).await.expect("apply");
        let patch = server.await.expect("server");
        assert_eq!(patch["status"]["phase"], "Scheduled");
        assert_eq!(patch["status"]["nextRuns"].as_array().map(Vec::len), Some(3));
        assert_ne!(action, Action::await_change(), "it requeues for its next start");
        let next: jiff::Timestamp = patch["status"]["nextRuns"][0]
            .as_str()
            .expect("next")
            .parse()
            .expect("time");
        let metrics = ctx.metrics.render();
        let series = format!(
            "understudy_dryrun_next_run_timestamp_seconds{{dryrun=\"add-flag\",namespace=\"ns\"}} {}",
            next.as_second()
        );
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
        assert!(
            !metrics.contains("understudy_dryrun_start_due_timestamp_seconds{"),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn deleting_a_dry_run_without_a_run_asks_nothing() {
        let (ctx, mut handle) = Context::test();
        let dr = dry_run(serde_json::json!({"sandbox": "shop", "up": "SELECT 1;"}));
        let server = tokio::spawn(async move { silence(&mut handle).await });
        assert_eq!(cleanup(&dr, &ctx).await.expect("cleanup"), Action::await_change());
        server.await.expect("server");
    }
}

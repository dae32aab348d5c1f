//! The `DryRun` resource: a migration rehearsed on a fork of a Sandbox under production's replayed writes, now or
//! on a schedule, with its verdict, key figures and findings in its status and its reports in a ConfigMap.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

/// A duration in the agent's grammar, compact form: `500ms`, `30s`, `10m`, `2h`, `1d`, `1h30m`.
const DURATION_RULE: &str = "self.matches('^([0-9]+(ms|s|m|h|d))+$')";
const DURATION_MESSAGE: &str = "a duration with a unit, e.g. 500ms, 30s, 10m, 2h or 1h30m";
const SPEED_RULE: &str = "self == 'max' || (self.matches('^[0-9]+([.][0-9]+)?x?$') && !self.matches('^0+([.]0+)?x?$'))";
const SPEED_MESSAGE: &str = "a number above 0 (1 is the recorded pace, 2 twice as fast) or max";

/// A key of a ConfigMap in the DryRun's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    pub name: String,
    pub key: String,
}

/// When it runs: at a time of day, or at each match of a cron expression, in a time zone. Absent: now.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.at) && has(self.cron))").message("give at or cron, not both"))]
pub struct ScheduleSpec {
    /// Five fields: minute hour day-of-month month day-of-week, e.g. `0 2 * * 1-5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^\\\\S+( +\\\\S+){4}$')").message("cron has five fields: minute hour day-of-month month day-of-week"))]
    pub cron: Option<String>,
    /// `HH:MM`, 24-hour: once, at the next such time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([01][0-9]|2[0-3]):[0-5][0-9]$')").message("at is HH:MM, 24-hour"))]
    pub at: Option<String>,
    /// An IANA time zone such as `Europe/Berlin` [default: UTC].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// Limits that decide the verdict.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdsSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failed_writes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_blocked_writes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub max_lock_wait: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub max_duration: Option<String>,
    /// `require`, `warn` or `ignore`: what an untested rollback does to the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['require', 'warn', 'ignore']").message("rollback is require, warn or ignore"))]
    pub rollback: Option<String>,
}

/// A stand-in for a long transaction production has at the migration's hour.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SimulatedReaderSpec {
    pub table: String,
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub hold: String,
}

/// What a DryRun rehearses, and how.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, kube::KubeSchema)]
#[kube(
    group = "understudy.dev",
    version = "v1alpha1",
    kind = "DryRun",
    namespaced,
    status = "DryRunStatus",
    shortname = "dr",
    category = "understudy",
    printcolumn(name = "Sandbox", type_ = "string", json_path = ".spec.sandbox"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Verdict", type_ = "string", json_path = ".status.verdict"),
    printcolumn(name = "Summary", type_ = "string", json_path = ".status.summary", priority = 1),
    printcolumn(name = "Next", type_ = "string", json_path = ".status.nextRuns[0]"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("has(self.spec.up) != has(self.spec.upConfigMapRef)").message("give up or upConfigMapRef"),
    validation = Rule::new("!(has(self.spec.down) && has(self.spec.downConfigMapRef))").message("give down or downConfigMapRef, not both"),
    validation = Rule::new("!(has(self.spec.checks) && has(self.spec.checksConfigMapRef))").message("give checks or checksConfigMapRef, not both"),
    validation = Rule::new("has(self.spec.recording) || !(has(self.spec.speed) || has(self.spec.migrateAt))").message("speed and migrateAt need a recording: a live dry-run replays production's writes as they come"),
)]
#[serde(rename_all = "camelCase")]
pub struct DryRunSpec {
    /// The Sandbox to fork (in this namespace).
    #[x_kube(validation = Rule::new("self == oldSelf").message("sandbox is immutable"))]
    pub sandbox: String,
    /// The up-migration, inline SQL (run with psql -f semantics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_config_map_ref: Option<ConfigMapKeyRef>,
    /// The down-migration, for the rollback proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_config_map_ref: Option<ConfigMapKeyRef>,
    /// Checks compared between the migrated fork and its control twin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks_config_map_ref: Option<ConfigMapKeyRef>,
    /// When it runs [default: now].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// Replay before the migration [default: 5s].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub warmup: Option<String>,
    /// Replay after the migration [default: 5s].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub after: Option<String>,
    /// Run on this recording of the sandbox (`understudy record`, `POST /v1/recordings`) instead of the live
    /// stream: fork its start point and replay its window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<String>,
    /// How fast the recording is replayed: 1 (its pace), 2 ("what if traffic doubles"), 4, ... or max
    /// [default: 1]. Needs recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(SPEED_RULE).message(SPEED_MESSAGE))]
    pub speed: Option<String>,
    /// Where in the recording's window the migration starts, in recorded time [default: the warm-up]. Needs
    /// recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub migrate_at: Option<String>,
    /// The whole run's limit [default: 30m].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub deadline: Option<String>,
    /// Cancel a statement running longer than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub statement_timeout: Option<String>,
    /// Refuse a sandbox lagging more than this behind its source [default: 30s].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message(DURATION_MESSAGE))]
    pub max_sandbox_lag: Option<String>,
    /// Replay sessions, 1 to 64 [default: 4].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 64").message("workers is 1 to 64"))]
    pub workers: Option<u32>,
    /// Fork a control twin, verify and prove the rollback [default: true].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_transaction: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<ThresholdsSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulate_readers: Option<Vec<SimulatedReaderSpec>>,
    /// How many past results a scheduled DryRun keeps in its status [default: 5].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("historyLimit is 1 to 100"))]
    pub history_limit: Option<u32>,
}

/// Where a DryRun is.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum DryRunPhase {
    Pending,
    Scheduled,
    Forking,
    Replaying,
    Migrating,
    Verifying,
    RollingBack,
    Succeeded,
    Failed,
}

/// The numbers that matter.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyFigures {
    pub duration_ms: f64,
    pub blocked_writes: u64,
    /// The time the blocked writes spent waiting, in all.
    #[serde(default)]
    pub blocked_write_ms: f64,
    pub longest_lock_wait_ms: f64,
    pub failed_writes: u64,
    /// Failed writes by SQLSTATE class (`23`: integrity constraint violation, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed_writes_by_class: BTreeMap<String, u64>,
    /// The longest hold and waits per lock mode.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locks: Vec<LockModeFigures>,
    /// Replayed transactions per second.
    #[serde(default)]
    pub replay_per_second: f64,
    /// The 99th percentile of how far behind production's commit replayed writes finished.
    #[serde(default)]
    pub replay_lag_p99_ms: f64,
    /// `proven`, `lossy`, `failed`, `schema-differs`, `untested` or `not-run`.
    pub rollback: String,
}

impl From<&understudy::runs::KeyFigures> for KeyFigures {
    fn from(f: &understudy::runs::KeyFigures) -> Self {
        KeyFigures {
            duration_ms: f.duration_ms,
            blocked_writes: f.blocked_writes as u64,
            blocked_write_ms: f.blocked_write_ms,
            longest_lock_wait_ms: f.longest_lock_wait_ms,
            failed_writes: f.failed_writes as u64,
            failed_writes_by_class: f
                .failed_writes_by_class
                .iter()
                .map(|(class, n)| (class.clone(), *n as u64))
                .collect(),
            locks: f
                .locks
                .iter()
                .map(|m| LockModeFigures {
                    mode: m.mode.clone(),
                    held_ms: m.held_ms,
                    migration_waited_ms: m.migration_waited_ms,
                    writes_waited_ms: m.writes_waited_ms,
                })
                .collect(),
            replay_per_second: f.replay_per_second,
            replay_lag_p99_ms: f.replay_lag_p99_ms,
            rollback: f.rollback.clone(),
        }
    }
}

/// One lock mode's longest times (`pg_locks.mode`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LockModeFigures {
    pub mode: String,
    /// The longest the migration held a lock of this mode.
    pub held_ms: f64,
    /// The longest the migration waited for one.
    pub migration_waited_ms: f64,
    /// The longest a write behind the migration waited for one.
    pub writes_waited_ms: f64,
}

/// A finding, short.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusFinding {
    pub code: String,
    pub severity: String,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

/// One finished run of a (scheduled) DryRun.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    /// The agent's run id.
    pub run: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// `Succeeded` or `Failed`.
    pub phase: DryRunPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The run's OpenTelemetry trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// What the DryRun did.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DryRunStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DryRunPhase>,
    /// `pass`, `warn` or `fail`, of the latest run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// One line: the verdict and its first reasons (or why the run failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figures: Option<KeyFigures>,
    /// The findings that are not informational, worst first.
    #[serde(default)]
    pub findings: Vec<StatusFinding>,
    /// The ConfigMap (owned by this DryRun) holding `report.json` and `report.md` of the latest run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_ref: Option<String>,
    /// The agent's id of the run in progress (the latest ended one is `history[0].run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The OpenTelemetry trace of the run in progress or the latest one: find it in the tracing backend (an
    /// operator and agent built with the `otlp` feature, exporting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The next starts of a scheduled DryRun (RFC 3339).
    #[serde(default)]
    pub next_runs: Vec<String>,
    /// The scheduled start the latest run was made for (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    /// The latest runs, newest first, at most historyLimit.
    #[serde(default)]
    pub history: Vec<RunResult>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

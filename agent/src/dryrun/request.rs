//! A dry-run as asked for: the body of `POST /v1/dryruns`, and what the command line builds from its flags and
//! files. [`DryRunRequest::validate`] checks every field before anything is forked, naming the field at fault,
//! and gives the options [`super::execute`] runs with and its schedule.

use serde::{Deserialize, Serialize};

use super::{DryRunOptions, MigrationText};
use crate::fork::Strategy;
use crate::report::Thresholds;
use crate::report::verdict::ThresholdOverrides;
use crate::schedule::Schedule;
use crate::source::SandboxName;
use crate::units::Duration;

/// SQL given inline, with the name reports use for it (a file name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SqlText {
    /// What reports call it, e.g. `migrations/042_orders_flag.up.sql`.
    #[serde(default)]
    pub name: Option<String>,
    pub sql: String,
}

/// A stand-in for a long transaction production has at the migration's hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimulatedReader {
    /// The table it holds ACCESS SHARE on (`schema.table` or `table`).
    pub table: String,
    /// How long it holds it from just before the migration (at most 1h).
    pub hold: Duration,
}

/// When to start: `at` a time of day or at the next match of `cron`, in `time_zone`; neither means now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// `HH:MM`, 24-hour.
    #[serde(default)]
    pub at: Option<String>,
    /// Five fields: minute hour day-of-month month day-of-week.
    #[serde(default)]
    pub cron: Option<String>,
    /// An IANA name such as `Europe/Berlin` [default: the agent's zone].
    #[serde(default)]
    pub time_zone: Option<String>,
}

impl ScheduleSpec {
    pub fn parse(&self) -> Result<Schedule, RequestError> {
        let tz = self.time_zone.as_deref();
        let bad = |field: &str| {
            let field = field.to_string();
            move |e: crate::schedule::ScheduleError| RequestError::field(&field, e)
        };
        match (&self.at, &self.cron) {
            (Some(_), Some(_)) => Err(RequestError::new("schedule: give at or cron, not both")),
            (Some(at), None) => Schedule::at(at, tz).map_err(bad("schedule.at")),
            (None, Some(cron)) => Schedule::cron(cron, tz).map_err(bad("schedule.cron")),
            (None, None) => match tz {
                Some(zone) => Schedule::at("00:00", Some(zone))
                    .map(|_| Schedule::Now)
                    .map_err(bad("schedule.time_zone")),
                None => Ok(Schedule::Now),
            },
        }
    }
}

/// A dry-run to run. Only `sandbox` and `up` are required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunRequest {
    /// The sandbox to fork.
    pub sandbox: String,
    /// The up-migration (run with `psql -f` semantics).
    pub up: SqlText,
    /// The down-migration, for the rollback proof.
    #[serde(default)]
    pub down: Option<SqlText>,
    /// Checks compared between the migrated fork and its control twin (one query per statement; name one with a
    /// `-- check: NAME` line).
    #[serde(default)]
    pub checks: Option<SqlText>,
    /// Fork a control twin, verify and prove the rollback [default: true].
    #[serde(default = "yes")]
    pub verify: bool,
    /// Run the whole file in one transaction.
    #[serde(default)]
    pub single_transaction: bool,
    /// Replay before the migration, for the baseline latency [default: 5s].
    #[serde(default)]
    pub warmup: Option<Duration>,
    /// Replay after the migration [default: 5s].
    #[serde(default)]
    pub after: Option<Duration>,
    /// Replay worker sessions, 1 to 64 [default: 4].
    #[serde(default)]
    pub workers: Option<usize>,
    /// Fork strategy [default: the fastest available].
    #[serde(default)]
    pub strategy: Option<Strategy>,
    /// Keep the forks afterwards for inspection.
    #[serde(default)]
    pub keep_fork: bool,
    /// Cancel a statement running longer than this.
    #[serde(default)]
    pub statement_timeout: Option<Duration>,
    /// Stop the whole run after this long [default: 30m].
    #[serde(default)]
    pub deadline: Option<Duration>,
    /// Lock sampling interval, 1ms to 50ms [default: 20ms].
    #[serde(default)]
    pub sample_interval: Option<Duration>,
    /// Limits that decide the verdict.
    #[serde(default)]
    pub thresholds: ThresholdOverrides,
    /// Long transactions production has at that hour.
    #[serde(default)]
    pub simulate_readers: Vec<SimulatedReader>,
    /// Refuse to fork a sandbox lagging behind its source by more than this [default: 30s].
    #[serde(default)]
    pub max_sandbox_lag: Option<Duration>,
    /// When to start [default: now].
    #[serde(default)]
    pub schedule: ScheduleSpec,
    /// Run on this recording of the sandbox (`understudy record`): fork its start point and replay its stream.
    #[serde(default)]
    pub recording: Option<String>,
    /// How fast the recording is replayed: a number above 0 (1 is the recorded pace) or `max` [default: 1].
    #[serde(default)]
    pub speed: Option<String>,
    /// Where in the recording's window the migration starts, in recorded time [default: the warm-up].
    #[serde(default)]
    pub migrate_at: Option<Duration>,
}

fn yes() -> bool {
    true
}

impl DryRunRequest {
    /// A request for `up` on `sandbox` with every default.
    pub fn new(sandbox: impl Into<String>, up: SqlText) -> Self {
        DryRunRequest {
            sandbox: sandbox.into(),
            up,
            down: None,
            checks: None,
            verify: true,
            single_transaction: false,
            warmup: None,
            after: None,
            workers: None,
            strategy: None,
            keep_fork: false,
            statement_timeout: None,
            deadline: None,
            sample_interval: None,
            thresholds: ThresholdOverrides::default(),
            simulate_readers: Vec::new(),
            max_sandbox_lag: None,
            schedule: ScheduleSpec::default(),
            recording: None,
            speed: None,
            migrate_at: None,
        }
    }
}

/// A request that cannot run, naming the field to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RequestError(pub String);

impl RequestError {
    fn new(message: impl Into<String>) -> Self {
        RequestError(message.into())
    }

    fn field(field: &str, detail: impl std::fmt::Display) -> Self {
        RequestError(format!("{field}: {detail}"))
    }
}

impl crate::error::Classify for RequestError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Invalid
    }
}

fn text(field: &str, given: &SqlText) -> Result<MigrationText, RequestError> {
    if given.sql.trim().is_empty() {
        return Err(RequestError::field(field, "the SQL is empty"));
    }
    Ok(MigrationText {
        name: given.name.clone().unwrap_or_else(|| field.to_string()),
        sql: given.sql.clone(),
    })
}

fn within(
    field: &str,
    value: Duration,
    min: std::time::Duration,
    max: std::time::Duration,
) -> Result<(), RequestError> {
    if value.get() < min || value.get() > max {
        return Err(RequestError::field(
            field,
            format!(
                "{value} is out of range ({} to {})",
                Duration::from(min),
                Duration::from(max)
            ),
        ));
    }
    Ok(())
}

impl DryRunRequest {
    /// Checks every field; `base` is the thresholds below the request's (the defaults, or a config file's).
    pub fn validate(&self, base: &Thresholds) -> Result<(DryRunOptions, Schedule), RequestError> {
        use std::time::Duration as Std;
        let sandbox = SandboxName::parse(&self.sandbox).map_err(|e| RequestError::field("sandbox", e))?;
        let up = text("up", &self.up)?;
        let down = self.down.as_ref().map(|d| text("down", d)).transpose()?;
        let checks = self.checks.as_ref().map(|c| text("checks", c)).transpose()?;
        let workers = self.workers.unwrap_or(4);
        if !(1..=64).contains(&workers) {
            return Err(RequestError::field(
                "workers",
                format!("{workers} is out of range (1 to 64)"),
            ));
        }
        let warmup = self.warmup.unwrap_or(Duration::from_secs(5));
        within("warmup", warmup, Std::ZERO, Std::from_secs(3600))?;
        let after = self.after.unwrap_or(Duration::from_secs(5));
        within("after", after, Std::ZERO, Std::from_secs(3600))?;
        let deadline = self.deadline.unwrap_or(Duration::from_secs(1800));
        within("deadline", deadline, Std::from_secs(1), Std::from_secs(7 * 86400))?;
        let sample_interval = self.sample_interval.unwrap_or(Duration::from_millis(20));
        within(
            "sample_interval",
            sample_interval,
            Std::from_millis(1),
            Std::from_millis(50),
        )?;
        if let Some(t) = self.statement_timeout {
            within("statement_timeout", t, Std::from_millis(1), Std::from_secs(7 * 86400))?;
        }
        let max_sandbox_lag = self.max_sandbox_lag.unwrap_or(Duration::from_secs(30));
        within("max_sandbox_lag", max_sandbox_lag, Std::ZERO, Std::from_secs(7 * 86400))?;
        let mut long_readers = Vec::new();
        for (i, r) in self.simulate_readers.iter().enumerate() {
            if r.table.trim().is_empty() {
                return Err(RequestError::field(&format!("simulate_readers[{i}].table"), "empty"));
            }
            within(
                &format!("simulate_readers[{i}].hold"),
                r.hold,
                Std::ZERO,
                Std::from_secs(3600),
            )?;
            long_readers.push((r.table.clone(), r.hold.get()));
        }
        let schedule = self.schedule.parse()?;
        let recorded = self.recorded(warmup)?;
        let fork_name = super::fork_name(&sandbox);
        let options = DryRunOptions {
            sandbox,
            up,
            down,
            checks,
            verify: self.verify,
            single_transaction: self.single_transaction,
            warmup: warmup.get(),
            after: after.get(),
            workers,
            strategy: self.strategy,
            fork_name,
            keep_fork: self.keep_fork,
            statement_timeout: self.statement_timeout.map(Duration::get),
            deadline: deadline.get(),
            sample_interval: sample_interval.get(),
            thresholds: base.clone().with(&self.thresholds),
            long_readers,
            max_sandbox_lag: max_sandbox_lag.get(),
            recorded,
        };
        // The files must parse before anything waits or forks.
        super::inputs::Inputs::parse(&options).map_err(|e| RequestError(e.to_string()))?;
        Ok((options, schedule))
    }
}

impl DryRunRequest {
    /// The recording to run on, its speed and the migration's offset (`speed` and `migrate_at` need a recording:
    /// a live replay follows production's own pace).
    fn recorded(&self, warmup: Duration) -> Result<Option<super::Recorded>, RequestError> {
        let Some(name) = &self.recording else {
            if self.speed.is_some() {
                return Err(RequestError::field(
                    "speed",
                    "a live dry-run replays production's writes as they come; speed needs a recording",
                ));
            }
            if self.migrate_at.is_some() {
                return Err(RequestError::field("migrate_at", "needs a recording"));
            }
            return Ok(None);
        };
        let name = SandboxName::parse(name).map_err(|e| RequestError::field("recording", e))?;
        let speed = match &self.speed {
            Some(s) => s.parse().map_err(|e| RequestError::field("speed", e))?,
            None => crate::replay::Speed::Times(1.0),
        };
        let migrate_at = self.migrate_at.unwrap_or(warmup);
        within(
            "migrate_at",
            migrate_at,
            std::time::Duration::ZERO,
            std::time::Duration::from_secs(7 * 86400),
        )?;
        Ok(Some(super::Recorded {
            name,
            speed,
            migrate_at: migrate_at.get(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: serde_json::Value) -> Result<DryRunRequest, String> {
        serde_json::from_value(body).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_layers() {
        let r = request(serde_json::json!({"sandbox": "shop", "up": {"sql": "SELECT 1;"},
            "thresholds": {"max_lock_wait": "250ms"}}))
        .expect("valid");
        let (o, schedule) = r.validate(&Thresholds::default()).expect("valid");
        assert_eq!(o.workers, 4);
        assert!(o.verify);
        assert_eq!(o.warmup, std::time::Duration::from_secs(5));
        assert_eq!(o.max_sandbox_lag, std::time::Duration::from_secs(30));
        assert_eq!(o.thresholds.max_lock_wait, Duration::from_millis(250));
        assert_eq!(o.up.name, "up");
        assert!(matches!(schedule, Schedule::Now));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (
                serde_json::json!({"sandbox": "Shop!", "up": {"sql": "SELECT 1;"}}),
                "sandbox",
            ),
            (serde_json::json!({"sandbox": "shop", "up": {"sql": "  "}}), "up"),
            (
                serde_json::json!({"sandbox": "shop", "up": {"sql": "SELECT 1;"}, "workers": 0}),
                "workers",
            ),
            (
                serde_json::json!({"sandbox": "shop", "up": {"sql": "SELECT 1;"}, "sample_interval": "1s"}),
                "sample_interval",
            ),
            (
                serde_json::json!({"sandbox": "shop", "up": {"sql": "SELECT 1;"}, "schedule": {"at": "25:00"}}),
                "schedule.at",
            ),
            (
                serde_json::json!({"sandbox": "shop", "up": {"sql": "SELECT 1;"}, "schedule": {"cron": "0 2 * *"}}),
                "schedule.cron",
            ),
            (
                serde_json::json!({"sandbox": "shop", "up": {"sql": "SELECT 1;"}, "schedule": {"time_zone": "Mars/X"}}),
                "schedule.time_zone",
            ),
            (
                serde_json::json!({"sandbox": "shop", "up": {"sql": "SELECT 1;"},
                "simulate_readers": [{"table": "orders", "hold": "2h"}]}),
                "simulate_readers[0].hold",
            ),
            (
                serde_json::json!({"sandbox": "shop", "up": {"name": "x.sql", "sql": "SELECT 'unterminated"}}),
                "x.sql",
            ),
        ];
        for (body, field) in cases {
            let err = request(body.clone())
                .expect("parses")
                .validate(&Thresholds::default())
                .expect_err("invalid");
            assert!(err.0.starts_with(field), "{body}: {err}");
        }
    }

    #[test]
    fn unknown_fields_and_unitless_durations_are_refused_by_the_parser() {
        let unknown = request(serde_json::json!({"sandbox": "shop", "up": {"sql": "SELECT 1;"}, "wokers": 2}))
            .expect_err("unknown");
        assert!(unknown.contains("wokers"), "{unknown}");
        let bare = request(serde_json::json!({"sandbox": "shop", "up": {"sql": "SELECT 1;"}, "warmup": "5"}))
            .expect_err("no unit");
        assert!(bare.contains("no unit"), "{bare}");
    }
}

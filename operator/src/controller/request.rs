//! A DryRun's spec as the agent's [`DryRunRequest`], checked with the agent library's own validation (so that
//! what the agent would refuse is refused here, naming the field), and its schedule: when a run is due, the next
//! starts, how long to wait. The schedule's logic is pure, and tested without a cluster.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::Api;
use understudy::dryrun::{DryRunRequest, ScheduleSpec, SimulatedReader, SqlText};
use understudy::report::verdict::ThresholdOverrides;
use understudy::report::{RollbackPolicy, Thresholds};
use understudy::schedule::Schedule;

use super::Context;
use crate::Result;
use crate::crd::dryrun::ConfigMapKeyRef;
use crate::crd::{DryRun, DryRunStatus};

/// Why a spec cannot run: a condition's reason and message, and whether only a change of the spec fixes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub reason: String,
    pub message: String,
    pub permanent: bool,
}

impl Invalid {
    fn spec(reason: &str, message: impl Into<String>) -> Self {
        Invalid {
            reason: reason.into(),
            message: message.into(),
            permanent: true,
        }
    }

    /// Something the spec names is missing for now (it may be created).
    pub fn waiting(reason: &str, message: impl Into<String>) -> Self {
        Invalid {
            reason: reason.into(),
            message: message.into(),
            permanent: false,
        }
    }
}

async fn sql(
    ctx: &Context,
    ns: &str,
    field: &str,
    inline: Option<&String>,
    from: Option<&ConfigMapKeyRef>,
) -> Result<Result<Option<SqlText>, Invalid>> {
    if let Some(text) = inline {
        return Ok(Ok(Some(SqlText {
            name: Some(format!("{field}.sql")),
            sql: text.clone(),
        })));
    }
    let Some(r) = from else { return Ok(Ok(None)) };
    let maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let Some(cm) = maps.get_opt(&r.name).await? else {
        return Ok(Err(Invalid::waiting(
            "ConfigMapNotFound",
            format!("{field}ConfigMapRef: no ConfigMap {} in namespace {ns}", r.name),
        )));
    };
    match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
        Some(text) => Ok(Ok(Some(SqlText {
            name: Some(format!("{}/{}", r.name, r.key)),
            sql: text.clone(),
        }))),
        None => Ok(Err(Invalid::waiting(
            "ConfigMapKeyNotFound",
            format!("{field}ConfigMapRef: ConfigMap {} has no key {}", r.name, r.key),
        ))),
    }
}

/// The spec's schedule as the agent library's (UTC when no time zone is given).
pub fn schedule(spec: Option<&crate::crd::dryrun::ScheduleSpec>) -> Result<Schedule, Invalid> {
    let Some(s) = spec else { return Ok(Schedule::Now) };
    let tz = Some(s.time_zone.as_deref().unwrap_or("UTC"));
    let parsed = match (&s.at, &s.cron) {
        (Some(at), None) => Schedule::at(at, tz),
        (None, Some(cron)) => Schedule::cron(cron, tz),
        (None, None) => Ok(Schedule::Now),
        (Some(_), Some(_)) => return Err(Invalid::spec("InvalidSchedule", "schedule: give at or cron, not both")),
    };
    parsed.map_err(|e| Invalid::spec("InvalidSchedule", format!("schedule: {e}")))
}

/// The request a DryRun's spec makes, checked; or why it cannot run.
pub async fn build(dr: &DryRun, ctx: &Context) -> Result<Result<(DryRunRequest, Schedule), Invalid>> {
    let ns = dr.namespace().unwrap_or_default();
    let s = &dr.spec;
    let up = match sql(ctx, &ns, "up", s.up.as_ref(), s.up_config_map_ref.as_ref()).await? {
        Ok(Some(up)) => up,
        Ok(None) => return Ok(Err(Invalid::spec("InvalidSpec", "give up or upConfigMapRef"))),
        Err(bad) => return Ok(Err(bad)),
    };
    let down = match sql(ctx, &ns, "down", s.down.as_ref(), s.down_config_map_ref.as_ref()).await? {
        Ok(d) => d,
        Err(bad) => return Ok(Err(bad)),
    };
    let checks = match sql(ctx, &ns, "checks", s.checks.as_ref(), s.checks_config_map_ref.as_ref()).await? {
        Ok(c) => c,
        Err(bad) => return Ok(Err(bad)),
    };
    Ok(request(dr, up, down, checks))
}

/// The request from a spec whose SQL is resolved (pure).
pub fn request(
    dr: &DryRun,
    up: SqlText,
    down: Option<SqlText>,
    checks: Option<SqlText>,
) -> Result<(DryRunRequest, Schedule), Invalid> {
    let s = &dr.spec;
    let schedule = schedule(s.schedule.as_ref())?;
    let duration = |field: &str, v: &Option<String>| -> Result<Option<understudy::units::Duration>, Invalid> {
        v.as_ref()
            .map(|t| {
                t.parse()
                    .map_err(|e| Invalid::spec("InvalidSpec", format!("{field}: {e}")))
            })
            .transpose()
    };
    let mut r = DryRunRequest::new(s.sandbox.clone(), up);
    r.down = down;
    r.checks = checks;
    r.verify = s.verify.unwrap_or(true);
    r.single_transaction = s.single_transaction.unwrap_or(false);
    r.warmup = duration("warmup", &s.warmup)?;
    r.after = duration("after", &s.after)?;
    r.deadline = duration("deadline", &s.deadline)?;
    r.statement_timeout = duration("statementTimeout", &s.statement_timeout)?;
    r.max_sandbox_lag = duration("maxSandboxLag", &s.max_sandbox_lag)?;
    r.workers = s.workers.map(|w| w as usize);
    r.recording = s.recording.clone();
    r.speed = s.speed.clone();
    r.migrate_at = duration("migrateAt", &s.migrate_at)?;
    if let Some(t) = &s.thresholds {
        r.thresholds = ThresholdOverrides {
            max_failed_writes: t.max_failed_writes.map(|v| v as usize),
            max_blocked_writes: t.max_blocked_writes.map(|v| v as usize),
            max_lock_wait: duration("thresholds.maxLockWait", &t.max_lock_wait)?,
            max_duration: duration("thresholds.maxDuration", &t.max_duration)?,
            rollback: match t.rollback.as_deref() {
                None => None,
                Some("require") => Some(RollbackPolicy::Require),
                Some("warn") => Some(RollbackPolicy::Warn),
                Some("ignore") => Some(RollbackPolicy::Ignore),
                Some(other) => {
                    return Err(Invalid::spec(
                        "InvalidSpec",
                        format!("thresholds.rollback: {other:?} is not require, warn or ignore"),
                    ));
                }
            },
        };
    }
    for (i, reader) in s.simulate_readers.iter().flatten().enumerate() {
        let hold = duration(&format!("simulateReaders[{i}].hold"), &Some(reader.hold.clone()))?.unwrap_or_default();
        r.simulate_readers.push(SimulatedReader {
            table: reader.table.clone(),
            hold,
        });
    }
    // The controller times the schedule: the agent is asked to run now.
    r.schedule = ScheduleSpec::default();
    // The agent's own checks (empty SQL, ranges, the files' syntax), refused here with the same message.
    r.validate(&Thresholds::default())
        .map_err(|e| Invalid::spec("InvalidSpec", e.to_string()))?;
    Ok((r, schedule))
}

fn at_or_after(schedule: &Schedule, t: jiff::Timestamp, now: &jiff::Zoned) -> Option<jiff::Zoned> {
    let from = t.to_zoned(now.time_zone().clone());
    schedule.next_after(&from).ok()
}

/// The start a run is due for now, if any: a DryRun without a schedule once; `at` once, at its first time after
/// the DryRun was made; `cron` at its latest match since the last run made (or since the DryRun was made), so that
/// starts missed while the operator was down run once, not many times.
pub fn due(
    schedule: &Schedule,
    status: &DryRunStatus,
    created: jiff::Timestamp,
    now: &jiff::Zoned,
) -> Option<jiff::Timestamp> {
    let ran = !status.history.is_empty() || status.last_schedule_time.is_some();
    match schedule {
        Schedule::Now => (!ran).then(|| now.timestamp()),
        Schedule::At { .. } => {
            if ran {
                return None;
            }
            let first = at_or_after(schedule, created, now)?;
            (first.timestamp() <= now.timestamp()).then(|| first.timestamp())
        }
        Schedule::Cron { .. } => {
            let since = status
                .last_schedule_time
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .unwrap_or(created);
            let mut next = at_or_after(schedule, since, now)?;
            if next.timestamp() > now.timestamp() {
                return None;
            }
            // The latest start that is due.
            while let Some(after) = schedule
                .next_after(&next)
                .ok()
                .filter(|n| n.timestamp() <= now.timestamp())
            {
                next = after;
            }
            Some(next.timestamp())
        }
    }
}

/// The next (at most three) starts after now, RFC 3339.
pub fn next_runs(
    schedule: &Schedule,
    status: &DryRunStatus,
    created: jiff::Timestamp,
    now: &jiff::Zoned,
) -> Vec<String> {
    let ran = !status.history.is_empty() || status.last_schedule_time.is_some() || status.run.is_some();
    let upcoming = match schedule {
        Schedule::Now => Vec::new(),
        Schedule::At { .. } if ran => Vec::new(),
        Schedule::At { .. } => at_or_after(schedule, created, now)
            .filter(|t| t.timestamp() > now.timestamp())
            .into_iter()
            .collect(),
        Schedule::Cron { .. } => schedule.upcoming(now, 3).unwrap_or_default(),
    };
    upcoming.iter().map(|z| z.timestamp().to_string()).collect()
}

/// How long until the first of `status.next_runs`.
pub fn until_next(status: &DryRunStatus, now: &jiff::Zoned) -> Option<Duration> {
    let next: jiff::Timestamp = status.next_runs.first()?.parse().ok()?;
    let ms = next.as_millisecond() - now.timestamp().as_millisecond();
    Some(Duration::from_millis(u64::try_from(ms.max(0)).unwrap_or(0)) + Duration::from_millis(200))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DryRunSpec;

    fn zoned(text: &str) -> jiff::Zoned {
        text.parse().expect("zoned")
    }

    fn ts(text: &str) -> jiff::Timestamp {
        text.parse().expect("timestamp")
    }

    fn dry_run(spec: serde_json::Value) -> DryRun {
        DryRun::new("add-flag", serde_json::from_value::<DryRunSpec>(spec).expect("spec"))
    }

    fn up(sql: &str) -> SqlText {
        SqlText {
            name: Some("up.sql".into()),
            sql: sql.into(),
        }
    }

    #[test]
    fn a_spec_becomes_the_agents_request() {
        let dr = dry_run(
            serde_json::json!({"sandbox": "shop", "up": "ALTER TABLE t ADD COLUMN x int;",
            "warmup": "2s", "workers": 2, "thresholds": {"maxLockWait": "250ms", "rollback": "require"},
            "simulateReaders": [{"table": "orders", "hold": "3s"}]}),
        );
        let (r, schedule) = request(&dr, up("ALTER TABLE t ADD COLUMN x int;"), None, None).expect("valid");
        assert!(matches!(schedule, Schedule::Now));
        assert_eq!(r.sandbox, "shop");
        assert_eq!(r.warmup, Some("2s".parse().expect("d")));
        assert_eq!(r.workers, Some(2));
        assert_eq!(r.thresholds.max_lock_wait, Some("250ms".parse().expect("d")));
        assert_eq!(r.thresholds.rollback, Some(RollbackPolicy::Require));
        assert_eq!(r.simulate_readers[0].table, "orders");
        assert_eq!(r.schedule, ScheduleSpec::default(), "the controller times the schedule");
        assert_eq!((r.recording, r.speed, r.migrate_at), (None, None, None));
    }

    #[test]
    fn a_dry_run_on_a_recording_passes_its_speed_and_offset() {
        let dr = dry_run(serde_json::json!({"sandbox": "shop", "up": "CREATE INDEX i ON t (x);",
            "recording": "peak", "speed": "2", "migrateAt": "4m"}));
        let (r, _) = request(&dr, up("CREATE INDEX i ON t (x);"), None, None).expect("valid");
        assert_eq!(r.recording.as_deref(), Some("peak"));
        assert_eq!(r.speed.as_deref(), Some("2"));
        assert_eq!(r.migrate_at, Some("4m".parse().expect("d")));
    }

    #[test]
    fn bad_specs_name_their_field_and_are_permanent() {
        let cases = [
            (
                serde_json::json!({"sandbox": "shop", "up": " "}),
                "up: the SQL is empty",
            ),
            (
                serde_json::json!({"sandbox": "shop", "up": "SELECT 1;", "warmup": "5"}),
                "warmup:",
            ),
            (
                serde_json::json!({"sandbox": "shop", "up": "SELECT 1;", "workers": 0}),
                "workers:",
            ),
            (
                serde_json::json!({"sandbox": "shop", "up": "SELECT 1;", "schedule": {"cron": "61 * * * *"}}),
                "schedule:",
            ),
            (
                serde_json::json!({"sandbox": "shop", "up": "SELECT 1;", "schedule": {"at": "02:00", "timeZone": "Mars/X"}}),
                "schedule:",
            ),
            (serde_json::json!({"sandbox": "Shop", "up": "SELECT 1;"}), "sandbox:"),
            (
                serde_json::json!({"sandbox": "shop", "up": "SELECT 1;", "speed": "2"}),
                "speed needs a recording",
            ),
            (
                serde_json::json!({"sandbox": "shop", "up": "SELECT 1;", "recording": "peak", "speed": "0"}),
                "speed",
            ),
            (
                serde_json::json!({"sandbox": "shop", "up": "SELECT 1;", "recording": "peak", "migrateAt": "4"}),
                "migrateAt:",
            ),
        ];
        for (spec, expected) in cases {
            let dr = dry_run(spec.clone());
            let sql = dr.spec.up.clone().unwrap_or_default();
            let bad = request(&dr, up(&sql), None, None).expect_err("invalid");
            assert!(bad.message.contains(expected), "{spec}: {}", bad.message);
            assert!(bad.permanent);
        }
    }

    #[test]
    fn without_a_schedule_it_runs_once() {
        let now = zoned("2026-12-01T10:00:00+00:00[UTC]");
        let created = ts("2026-12-01T09:59:00Z");
        let mut status = DryRunStatus::default();
        assert_eq!(due(&Schedule::Now, &status, created, &now), Some(now.timestamp()));
        status.last_schedule_time = Some(now.timestamp().to_string());
        assert_eq!(due(&Schedule::Now, &status, created, &now), None);
        assert!(next_runs(&Schedule::Now, &status, created, &now).is_empty());
    }

    #[test]
    fn at_runs_once_at_its_first_time_after_creation() {
        let s = Schedule::at("02:00", Some("Europe/Berlin")).expect("at");
        let created = ts("2026-12-01T10:00:00Z");
        let before = zoned("2026-12-01T23:00:00+00:00[UTC]");
        let status = DryRunStatus::default();
        assert_eq!(due(&s, &status, created, &before), None);
        assert_eq!(next_runs(&s, &status, created, &before), vec!["2026-12-02T01:00:00Z"]);
        let wait = until_next(
            &DryRunStatus {
                next_runs: next_runs(&s, &status, created, &before),
                ..DryRunStatus::default()
            },
            &before,
        )
        .expect("wait");
        assert_eq!(wait.as_secs(), 2 * 3600);
        let after = zoned("2026-12-02T01:00:05+00:00[UTC]");
        assert_eq!(due(&s, &status, created, &after), Some(ts("2026-12-02T01:00:00Z")));
        let ran = DryRunStatus {
            last_schedule_time: Some("2026-12-02T01:00:00Z".into()),
            ..DryRunStatus::default()
        };
        assert_eq!(due(&s, &ran, created, &zoned("2026-12-03T02:00:00+00:00[UTC]")), None);
    }

    #[test]
    fn cron_runs_each_match_and_missed_starts_once() {
        let s = Schedule::cron("*/10 * * * *", Some("UTC")).expect("cron");
        let created = ts("2026-12-01T10:01:00Z");
        let mut status = DryRunStatus::default();
        let at = |t: &str| zoned(&format!("{t}+00:00[UTC]"));
        assert_eq!(due(&s, &status, created, &at("2026-12-01T10:05:00")), None);
        assert_eq!(
            next_runs(&s, &status, created, &at("2026-12-01T10:05:00")),
            vec!["2026-12-01T10:10:00Z", "2026-12-01T10:20:00Z", "2026-12-01T10:30:00Z"]
        );
        assert_eq!(
            due(&s, &status, created, &at("2026-12-01T10:10:01")),
            Some(ts("2026-12-01T10:10:00Z"))
        );
        status.last_schedule_time = Some("2026-12-01T10:10:00Z".into());
        assert_eq!(due(&s, &status, created, &at("2026-12-01T10:15:00")), None);
        // Down from 10:15 to 10:47: the 10:20, 10:30 and 10:40 starts were missed; 10:40 runs, once.
        assert_eq!(
            due(&s, &status, created, &at("2026-12-01T10:47:00")),
            Some(ts("2026-12-01T10:40:00Z"))
        );
    }
}

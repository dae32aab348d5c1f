//! The verdict: measurements and findings against the team's thresholds, and what it means for an exit code.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Finding, FindingCode, Severity, StatementReport, WritesReport};
use crate::migrate::MigrationOutcome;
use crate::units;

/// pass / warn / fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl Verdict {
    /// The command line's exit code for a completed run: 0 pass, 3 warn, 1 fail.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Warn => 3,
            Verdict::Fail => 1,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// The verdict and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VerdictReport {
    pub result: Verdict,
    pub reasons: Vec<String>,
}

/// What an untested rollback does to the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackPolicy {
    Require,
    #[default]
    Warn,
    Ignore,
}

/// Limits that turn measurements into a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Thresholds {
    /// Replayed writes that may fail on the new schema (default 0).
    pub max_failed_writes: usize,
    /// Replayed writes that may wait behind the migration before the verdict is `warn` (default 0).
    pub max_blocked_writes: usize,
    /// The longest a write may wait behind the migration before the verdict is `fail` (default 1s).
    pub max_lock_wait: units::Duration,
    /// The longest the migration may run before the verdict is `fail` (default none).
    pub max_duration: Option<units::Duration>,
    /// What an untested rollback does to the verdict (default warn).
    pub rollback: RollbackPolicy,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            max_failed_writes: 0,
            max_blocked_writes: 0,
            max_lock_wait: units::Duration::from_secs(1),
            max_duration: None,
            rollback: RollbackPolicy::Warn,
        }
    }
}

/// Thresholds as a layer: what `.understudy.toml`'s `[thresholds]`, the command line's flags or an API request
/// set, each field left out keeping the layer below.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThresholdOverrides {
    pub max_failed_writes: Option<usize>,
    pub max_blocked_writes: Option<usize>,
    pub max_lock_wait: Option<units::Duration>,
    pub max_duration: Option<units::Duration>,
    pub rollback: Option<RollbackPolicy>,
}

impl Thresholds {
    /// These thresholds with `layer` on top.
    pub fn with(mut self, layer: &ThresholdOverrides) -> Self {
        if let Some(v) = layer.max_failed_writes {
            self.max_failed_writes = v;
        }
        if let Some(v) = layer.max_blocked_writes {
            self.max_blocked_writes = v;
        }
        if let Some(v) = layer.max_lock_wait {
            self.max_lock_wait = v;
        }
        if let Some(v) = layer.max_duration {
            self.max_duration = Some(v);
        }
        if let Some(v) = layer.rollback {
            self.rollback = v;
        }
        self
    }
}

/// The verdict of a dry-run from its measurements and findings.
pub fn judge(
    outcome: &MigrationOutcome,
    statements: &[StatementReport],
    writes: &WritesReport,
    t: &Thresholds,
    findings: &[Finding],
) -> VerdictReport {
    let mut result = Verdict::Pass;
    let mut reasons = Vec::new();
    if let Some(s) = outcome.statements.iter().find(|s| !s.ok) {
        result = Verdict::Fail;
        let blockers: Vec<String> = statements
            .iter()
            .filter(|r| r.outcome.index == s.index)
            .flat_map(|r| r.waits.iter().flat_map(|w| w.blockers.iter().cloned()))
            .collect();
        let behind = if s.timed_out && !blockers.is_empty() {
            format!("; it was waiting behind {}", blockers.join(", "))
        } else {
            String::new()
        };
        reasons.push(format!(
            "the migration {} at line {} ({}): {}{behind}",
            if s.timed_out { "timed out" } else { "failed" },
            s.line,
            s.sqlstate.clone().unwrap_or_default(),
            s.error.clone().unwrap_or_default()
        ));
    }
    if writes.failed > t.max_failed_writes {
        result = Verdict::Fail;
        for f in &writes.failures {
            reasons.push(format!(
                "{} {} write(s) on {} failed on the new schema with {}: {}",
                f.count, f.kind, f.table, f.sqlstate, f.message
            ));
        }
    }
    let max_lock_wait: Duration = t.max_lock_wait.into();
    if writes.blocked_max_ms > max_lock_wait.as_secs_f64() * 1000.0 {
        result = Verdict::Fail;
        reasons.push(format!(
            "writes waited up to {:.0} ms behind the migration's locks (limit {} ms); {} blocked in all",
            writes.blocked_max_ms,
            max_lock_wait.as_millis(),
            writes.blocked
        ));
    } else if writes.blocked > t.max_blocked_writes {
        result = result.max(Verdict::Warn);
        reasons.push(format!(
            "{} write(s) waited behind the migration's locks (max {:.0} ms)",
            writes.blocked, writes.blocked_max_ms
        ));
    }
    if let Some(max) = t.max_duration
        && outcome.duration_ms > max.get().as_secs_f64() * 1000.0
    {
        result = Verdict::Fail;
        reasons.push(format!(
            "the migration ran {:.1} s, over the limit of {max}",
            outcome.duration_ms / 1000.0,
        ));
    }
    for f in findings.iter().filter(|f| f.severity != Severity::Info) {
        let severity = match (&f.code, t.rollback) {
            (FindingCode::RollbackUntested, RollbackPolicy::Require) => Severity::Fail,
            (FindingCode::RollbackUntested, RollbackPolicy::Ignore) => continue,
            _ => f.severity,
        };
        result = result.max(if severity == Severity::Fail {
            Verdict::Fail
        } else {
            Verdict::Warn
        });
        reasons.push(match f.line {
            Some(l) => format!("line {l}: {}", f.title),
            None => f.title.clone(),
        });
    }
    if reasons.is_empty() {
        reasons.push(if writes.failed == 0 && writes.blocked == 0 {
            format!("{} replayed writes, none failed or blocked", writes.replayed)
        } else {
            format!(
                "{} replayed writes; {} failed and {} waited behind the migration, within the thresholds",
                writes.replayed, writes.failed, writes.blocked
            )
        });
    }
    VerdictReport { result, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::live::WriteKind;
    use crate::report::FailureGroup;
    use crate::report::sample::{
        failed, finding, ok_statement, outcome_of, quiet_writes, statement, waited, write_failure,
    };

    const BLOCKER: &str = "pid 4242 (report): SELECT pg_sleep(60)";

    fn verdict(
        statements: &[StatementReport],
        writes: &WritesReport,
        t: &Thresholds,
        findings: &[Finding],
    ) -> VerdictReport {
        judge(&outcome_of(statements, 0), statements, writes, t, findings)
    }

    fn two_statements_second_failing(timed_out: bool, blockers: &[&str]) -> Vec<StatementReport> {
        let first = statement(ok_statement(0, 1, "ALTER TABLE orders ADD COLUMN note text;", 0.0, 3.0));
        let (sqlstate, error) = if timed_out {
            ("57014", "canceling statement due to statement timeout")
        } else {
            ("23505", "could not create unique index \"orders_email_key\"")
        };
        let mut second = statement(failed(
            ok_statement(1, 3, "ALTER TABLE orders ADD UNIQUE (email);", 3.0, 2000.0),
            sqlstate,
            error,
            timed_out,
        ));
        if !blockers.is_empty() {
            second.waits = vec![waited("public.orders", "AccessExclusiveLock", 1990.0, blockers, 1)];
        }
        vec![first, second]
    }

    #[test]
    fn nothing_failed_or_blocked_passes_with_the_count() {
        let statements = vec![statement(ok_statement(0, 1, "SELECT 1;", 0.0, 1.0))];
        let v = verdict(&statements, &quiet_writes(120), &Thresholds::default(), &[]);
        assert_eq!(v.result, Verdict::Pass);
        assert_eq!(v.reasons, vec!["120 replayed writes, none failed or blocked"]);
    }

    #[test]
    fn a_failed_statement_fails_with_its_line_sqlstate_and_error() {
        // Not timed out: its waits are not named even when it had some.
        let statements = two_statements_second_failing(false, &[BLOCKER]);
        let v = verdict(&statements, &quiet_writes(10), &Thresholds::default(), &[]);
        assert_eq!(v.result, Verdict::Fail);
        assert_eq!(
            v.reasons,
            vec!["the migration failed at line 3 (23505): could not create unique index \"orders_email_key\""]
        );
    }

    #[test]
    fn a_timed_out_statement_names_what_it_waited_behind() {
        let mut statements = two_statements_second_failing(true, &[BLOCKER, "pid 4243"]);
        // Another statement's blockers are not this one's.
        statements[0].waits = vec![waited("public.orders", "AccessExclusiveLock", 5.0, &["pid 1"], 0)];
        let v = verdict(&statements, &quiet_writes(10), &Thresholds::default(), &[]);
        assert_eq!(v.result, Verdict::Fail);
        assert_eq!(
            v.reasons,
            vec![format!(
                "the migration timed out at line 3 (57014): canceling statement due to statement timeout; it was \
                 waiting behind {BLOCKER}, pid 4243"
            )]
        );
    }

    #[test]
    fn a_timed_out_statement_without_blockers_says_only_that() {
        let statements = two_statements_second_failing(true, &[]);
        let v = verdict(&statements, &quiet_writes(10), &Thresholds::default(), &[]);
        assert_eq!(
            v.reasons,
            vec!["the migration timed out at line 3 (57014): canceling statement due to statement timeout"]
        );
    }

    fn failing_writes(failed: usize) -> WritesReport {
        let mut w = quiet_writes(500);
        let failures: Vec<_> = (0..failed)
            .map(|i| {
                let kind = if i % 3 == 2 {
                    WriteKind::Update
                } else {
                    WriteKind::Insert
                };
                write_failure(
                    "public.orders",
                    kind,
                    "23502",
                    "null value in column \"note\"",
                    "INSERT ...",
                )
            })
            .collect();
        w.failed = failed;
        w.failures = FailureGroup::group(&failures);
        w
    }

    #[test]
    fn failed_writes_over_the_threshold_fail_with_one_reason_per_group() {
        let statements = vec![statement(ok_statement(
            0,
            1,
            "ALTER TABLE orders ADD COLUMN note text;",
            0.0,
            1.0,
        ))];
        let v = verdict(&statements, &failing_writes(3), &Thresholds::default(), &[]);
        assert_eq!(v.result, Verdict::Fail);
        assert_eq!(
            v.reasons,
            vec![
                "2 insert write(s) on public.orders failed on the new schema with 23502: null value in column \"note\"",
                "1 update write(s) on public.orders failed on the new schema with 23502: null value in column \"note\"",
            ]
        );
        let tolerant = Thresholds {
            max_failed_writes: 3,
            ..Thresholds::default()
        };
        assert_eq!(
            verdict(&statements, &failing_writes(3), &tolerant, &[]).result,
            Verdict::Pass
        );
        assert_eq!(
            verdict(&statements, &failing_writes(4), &tolerant, &[]).result,
            Verdict::Fail
        );
    }

    fn blocked_writes(blocked: usize, max_ms: f64) -> WritesReport {
        let mut w = quiet_writes(500);
        w.blocked = blocked;
        w.blocked_max_ms = max_ms;
        w.blocked_total_ms = max_ms * blocked as f64;
        w
    }

    #[test]
    fn a_write_waiting_longer_than_max_lock_wait_fails() {
        let statements = vec![statement(ok_statement(
            0,
            1,
            "CREATE INDEX i ON orders (note);",
            0.0,
            1600.0,
        ))];
        let v = verdict(&statements, &blocked_writes(4, 1500.4), &Thresholds::default(), &[]);
        assert_eq!(v.result, Verdict::Fail);
        assert_eq!(
            v.reasons,
            vec!["writes waited up to 1500 ms behind the migration's locks (limit 1000 ms); 4 blocked in all"]
        );
    }

    #[test]
    fn blocked_writes_within_max_lock_wait_warn_over_max_blocked_writes() {
        let statements = vec![statement(ok_statement(
            0,
            1,
            "CREATE INDEX i ON orders (note);",
            0.0,
            1000.0,
        ))];
        // Exactly the limit is not over it.
        let v = verdict(&statements, &blocked_writes(4, 1000.0), &Thresholds::default(), &[]);
        assert_eq!(v.result, Verdict::Warn);
        assert_eq!(
            v.reasons,
            vec!["4 write(s) waited behind the migration's locks (max 1000 ms)"]
        );
        let tolerant = Thresholds {
            max_blocked_writes: 4,
            ..Thresholds::default()
        };
        assert_eq!(
            verdict(&statements, &blocked_writes(4, 1000.0), &tolerant, &[]).result,
            Verdict::Pass
        );
        // The wait limit applies whatever the count limit.
        assert_eq!(
            verdict(&statements, &blocked_writes(1, 1000.5), &tolerant, &[]).result,
            Verdict::Fail
        );
    }

    #[test]
    fn a_migration_over_max_duration_fails() {
        let statements = vec![
            statement(ok_statement(0, 1, "UPDATE orders SET note = '';", 0.0, 12000.0)),
            statement(ok_statement(1, 2, "VACUUM orders;", 12000.0, 345.0)),
        ];
        let limited = Thresholds {
            max_duration: Some(units::Duration::from_secs(10)),
            ..Thresholds::default()
        };
        let v = verdict(&statements, &quiet_writes(7), &limited, &[]);
        assert_eq!(v.result, Verdict::Fail);
        assert_eq!(v.reasons, vec!["the migration ran 12.3 s, over the limit of 10s"]);
        let roomy = Thresholds {
            max_duration: Some(units::Duration::from_secs(13)),
            ..Thresholds::default()
        };
        assert_eq!(
            verdict(&statements, &quiet_writes(7), &roomy, &[]).result,
            Verdict::Pass
        );
        // No limit by default.
        assert_eq!(
            verdict(&statements, &quiet_writes(7), &Thresholds::default(), &[]).result,
            Verdict::Pass
        );
    }

    #[test]
    fn findings_count_by_severity_and_say_their_line() {
        let statements = vec![statement(ok_statement(
            0,
            1,
            "ALTER TABLE orders ADD COLUMN note text;",
            0.0,
            1.0,
        ))];
        let info = finding(
            FindingCode::SchemaChange,
            Severity::Info,
            "column public.orders.note added: text",
        );
        let warn = finding(
            FindingCode::ConstraintNotValid,
            Severity::Warn,
            "constraint c is left NOT VALID",
        )
        .at("m.sql", 4);
        let fail = finding(FindingCode::IndexInvalid, Severity::Fail, "index i is left INVALID");
        let t = Thresholds::default();
        let w = quiet_writes(9);

        let v = verdict(&statements, &w, &t, std::slice::from_ref(&info));
        assert_eq!(v.result, Verdict::Pass);
        assert_eq!(v.reasons, vec!["9 replayed writes, none failed or blocked"]);

        let v = verdict(&statements, &w, &t, &[info.clone(), warn.clone()]);
        assert_eq!(v.result, Verdict::Warn);
        assert_eq!(v.reasons, vec!["line 4: constraint c is left NOT VALID"]);

        let v = verdict(&statements, &w, &t, &[fail.clone(), warn.clone()]);
        assert_eq!(v.result, Verdict::Fail);
        assert_eq!(
            v.reasons,
            vec!["index i is left INVALID", "line 4: constraint c is left NOT VALID"]
        );
    }

    #[test]
    fn a_warning_never_lowers_a_failure() {
        let statements = two_statements_second_failing(false, &[]);
        let warn = finding(
            FindingCode::CheckChanged,
            Severity::Warn,
            "check \"n\" (line 1) changed",
        );
        let v = verdict(&statements, &blocked_writes(2, 10.0), &Thresholds::default(), &[warn]);
        assert_eq!(v.result, Verdict::Fail);
        assert_eq!(v.reasons.len(), 3, "{:?}", v.reasons);
        assert_eq!(
            v.reasons[1],
            "2 write(s) waited behind the migration's locks (max 10 ms)"
        );
        assert_eq!(v.reasons[2], "check \"n\" (line 1) changed");
    }

    #[test]
    fn an_untested_rollback_follows_the_policy() {
        let statements = vec![statement(ok_statement(
            0,
            1,
            "ALTER TABLE orders ADD COLUMN note text;",
            0.0,
            1.0,
        ))];
        let untested = finding(
            FindingCode::RollbackUntested,
            Severity::Warn,
            "rollback untested: no down-migration given",
        );
        let with = |policy| {
            let t = Thresholds {
                rollback: policy,
                ..Thresholds::default()
            };
            verdict(&statements, &quiet_writes(5), &t, std::slice::from_ref(&untested))
        };
        let require = with(RollbackPolicy::Require);
        assert_eq!(require.result, Verdict::Fail);
        assert_eq!(require.reasons, vec!["rollback untested: no down-migration given"]);
        let warn = with(RollbackPolicy::Warn);
        assert_eq!(warn.result, Verdict::Warn);
        assert_eq!(warn.reasons, vec!["rollback untested: no down-migration given"]);
        let ignore = with(RollbackPolicy::Ignore);
        assert_eq!(ignore.result, Verdict::Pass);
        assert_eq!(ignore.reasons, vec!["5 replayed writes, none failed or blocked"]);
        // The policy is about the untested rollback only: a failed rollback fails whatever it says.
        let rollback_failed = finding(FindingCode::RollbackFailed, Severity::Fail, "the down-migration failed");
        let t = Thresholds {
            rollback: RollbackPolicy::Ignore,
            ..Thresholds::default()
        };
        assert_eq!(
            verdict(&statements, &quiet_writes(5), &t, &[rollback_failed]).result,
            Verdict::Fail
        );
    }

    #[test]
    fn verdicts_order_and_map_to_exit_codes() {
        assert!(Verdict::Pass < Verdict::Warn && Verdict::Warn < Verdict::Fail);
        assert_eq!(
            [Verdict::Pass, Verdict::Warn, Verdict::Fail].map(Verdict::exit_code),
            [0, 3, 1]
        );
        assert_eq!(
            [Verdict::Pass, Verdict::Warn, Verdict::Fail].map(Verdict::as_str),
            ["pass", "warn", "fail"]
        );
    }

    #[test]
    fn an_empty_layer_keeps_every_threshold() {
        let base = Thresholds {
            max_failed_writes: 2,
            max_blocked_writes: 5,
            max_lock_wait: units::Duration::from_millis(250),
            max_duration: Some(units::Duration::from_secs(60)),
            rollback: RollbackPolicy::Require,
        };
        assert_eq!(base.clone().with(&ThresholdOverrides::default()), base);
        let all = ThresholdOverrides {
            max_failed_writes: Some(0),
            max_blocked_writes: Some(0),
            max_lock_wait: Some(units::Duration::from_secs(2)),
            max_duration: Some(units::Duration::from_secs(5)),
            rollback: Some(RollbackPolicy::Ignore),
        };
        assert_eq!(
            base.with(&all),
            Thresholds {
                max_failed_writes: 0,
                max_blocked_writes: 0,
                max_lock_wait: units::Duration::from_secs(2),
                max_duration: Some(units::Duration::from_secs(5)),
                rollback: RollbackPolicy::Ignore,
            }
        );
    }
}

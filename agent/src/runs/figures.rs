//! A run's key figures, from its report: what the API shows of a finished run, what the operator copies into a
//! DryRun's status and exports as metrics. Figures of a version before a field existed read as zero or empty.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::report::{DryRunReport, FindingCode};

/// The numbers that matter, from the report.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyFigures {
    /// How long the migration ran.
    pub duration_ms: f64,
    /// Replayed writes that waited behind the migration.
    pub blocked_writes: usize,
    /// The time those writes spent waiting, in all.
    #[serde(default)]
    pub blocked_write_ms: f64,
    /// The longest a replayed write waited behind it.
    pub longest_lock_wait_ms: f64,
    /// Replayed writes that failed on the new schema.
    pub failed_writes: usize,
    /// Those failures by SQLSTATE class (its first two characters: `23` integrity constraint violation, `42`
    /// syntax error or access rule violation, ...).
    #[serde(default)]
    pub failed_writes_by_class: BTreeMap<String, usize>,
    /// Per lock mode the migration took or waited for, or the writes behind it waited for.
    #[serde(default)]
    pub locks: Vec<ModeFigures>,
    /// Replayed transactions per second over the run's windows.
    #[serde(default)]
    pub replay_per_second: f64,
    /// How far behind production's commit replayed writes finished: the 99th percentile and the maximum.
    #[serde(default)]
    pub replay_lag_p99_ms: f64,
    #[serde(default)]
    pub replay_lag_max_ms: f64,
    /// `proven`, `lossy`, `failed`, `schema-differs`, `untested` or `not-run`.
    pub rollback: String,
    /// The sandbox's lag behind its source when it was forked.
    pub sandbox_lag_seconds: Option<f64>,
}

/// The longest times of one lock mode (`pg_locks.mode`, e.g. `AccessExclusiveLock`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModeFigures {
    pub mode: String,
    /// The longest the migration held a lock of this mode.
    pub held_ms: f64,
    /// The longest the migration waited for one.
    pub migration_waited_ms: f64,
    /// The longest a session behind the migration (a replayed write, a read probe) waited for one.
    pub writes_waited_ms: f64,
}

/// The run's figures.
pub fn figures(r: &DryRunReport) -> KeyFigures {
    let mut by_class = BTreeMap::new();
    for group in &r.writes.failures {
        let class: String = group.sqlstate.chars().take(2).collect();
        *by_class.entry(class).or_insert(0) += group.count;
    }
    KeyFigures {
        duration_ms: r.migration.duration_ms,
        blocked_writes: r.writes.blocked,
        blocked_write_ms: r.writes.blocked_total_ms,
        longest_lock_wait_ms: r.writes.blocked_max_ms,
        failed_writes: r.writes.failed,
        failed_writes_by_class: by_class,
        locks: lock_modes(r),
        replay_per_second: r.writes.per_second,
        replay_lag_p99_ms: r.writes.lag.p99_ms,
        replay_lag_max_ms: r.writes.lag.max_ms,
        rollback: rollback(r).into(),
        sandbox_lag_seconds: r.fork.sandbox_lag_seconds,
    }
}

fn rollback(r: &DryRunReport) -> &'static str {
    let has = |code: FindingCode| r.findings.iter().any(|f| f.code == code);
    if has(FindingCode::RollbackProven) {
        "proven"
    } else if has(FindingCode::RollbackLossy) {
        "lossy"
    } else if has(FindingCode::RollbackFailed) {
        "failed"
    } else if has(FindingCode::RollbackSchema) {
        "schema-differs"
    } else if has(FindingCode::RollbackUntested) {
        "untested"
    } else {
        "not-run"
    }
}

/// The longest hold and waits per lock mode, in mode order.
fn lock_modes(r: &DryRunReport) -> Vec<ModeFigures> {
    let mut modes: BTreeMap<String, ModeFigures> = BTreeMap::new();
    for statement in &r.migration.statements {
        for lock in &statement.locks {
            let m = mode(&mut modes, &lock.mode);
            m.held_ms = m.held_ms.max(lock.held_ms);
        }
        for wait in &statement.waits {
            let m = mode(&mut modes, &wait.mode);
            m.migration_waited_ms = m.migration_waited_ms.max(wait.waited_ms);
        }
    }
    for episode in &r.locks.blocked_sessions {
        let m = mode(&mut modes, &episode.mode);
        m.writes_waited_ms = m.writes_waited_ms.max(episode.waited_ms);
    }
    modes.into_values().collect()
}

fn mode<'a>(modes: &'a mut BTreeMap<String, ModeFigures>, mode: &str) -> &'a mut ModeFigures {
    modes.entry(mode.to_string()).or_insert_with(|| ModeFigures {
        mode: mode.to_string(),
        held_ms: 0.0,
        migration_waited_ms: 0.0,
        writes_waited_ms: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample;

    #[test]
    fn figures_of_a_failing_run_per_mode_and_sqlstate_class() {
        let f = figures(&sample::failing_report());
        insta::assert_json_snapshot!(f);
    }
}

//! Findings of a dry-run that come from its measurements: the data pre-flight, the twins' comparison and the
//! rollback proof, and the health of the control twin's replay.

use crate::replay::live::WriteRecord;
use crate::report::{Finding, FindingCode, Severity};
use crate::verify::preflight::PreflightFinding;
use crate::verify::twins::{Rollback, Verification};

/// Rows of a check's output as people read them: `(7, NULL); (8, x)`, at most five rows.
fn rows(rows: &[Vec<Option<String>>]) -> String {
    if rows.is_empty() {
        return "no rows".into();
    }
    let mut shown: Vec<String> = rows
        .iter()
        .take(5)
        .map(|r| {
            let cells: Vec<&str> = r.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
            format!("({})", cells.join(", "))
        })
        .collect();
    if rows.len() > 5 {
        shown.push(format!("… {} rows in all", rows.len()));
    }
    shown.join("; ")
}

/// One failing finding per pre-flight count, at its statement's line in `file`.
pub fn preflight(found: &[PreflightFinding], file: &str) -> Vec<Finding> {
    found
        .iter()
        .map(|p| {
            Finding::new(
                FindingCode::Preflight(p.code),
                Severity::Fail,
                p.message.clone(),
                if p.samples.is_empty() {
                    String::new()
                } else {
                    format!("samples: {}", p.samples.join(", "))
                },
                &p.remedy,
            )
            .at(file, p.line)
        })
        .collect()
}

/// Whether the control twin's replay was healthy: writes failing there too are the sandbox's problem, not the
/// migration's; twins that applied different transactions cannot be compared as they are.
pub fn replay_health(records: &[WriteRecord], control_records: &[WriteRecord]) -> Vec<Finding> {
    let mut out = Vec::new();
    let control_failed = control_records.iter().filter(|r| r.failure.is_some()).count();
    if control_failed > 0 {
        out.push(Finding::new(
            FindingCode::ControlReplayFailed,
            Severity::Warn,
            format!("{control_failed} replayed write(s) failed on the control twin too (not caused by the migration)"),
            String::new(),
            "check the sandbox's health (`understudy sandbox status`)",
        ));
    }
    let lsns = |rs: &[WriteRecord]| rs.iter().map(|r| r.end_lsn).collect::<std::collections::BTreeSet<_>>();
    let (la, lb) = (lsns(records), lsns(control_records));
    let only_a: Vec<String> = la.difference(&lb).take(5).map(ToString::to_string).collect();
    let only_b: Vec<String> = lb.difference(&la).take(5).map(ToString::to_string).collect();
    if !only_a.is_empty() || !only_b.is_empty() {
        out.push(Finding::new(
            FindingCode::ReplayDivergence,
            Severity::Warn,
            format!(
                "the twins applied different transactions ({} only on the migrated fork, {} only on the control twin): \
                 data differences below may not be the migration's",
                la.difference(&lb).count(),
                lb.difference(&la).count()
            ),
            format!("only on the migrated fork: {only_a:?}; only on the control twin: {only_b:?}"),
            "run the dry-run again; report this with the JSON report",
        ));
    }
    out
}

/// Findings from the verification and the rollback proof (`up_ok`: the up-migration succeeded, so a rollback was
/// attempted when `down_given`).
pub fn verification(v: &Verification, rollback: &Rollback, down_given: bool, up_ok: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in &v.schema_changes {
        let after = c.after.clone().unwrap_or_default();
        if c.kind == "index" && after.ends_with(" INVALID") {
            out.push(Finding::new(
                FindingCode::IndexInvalid,
                Severity::Fail,
                format!("index {} is left INVALID", c.name),
                after.clone(),
                "a failed CREATE INDEX CONCURRENTLY leaves an invalid index: drop it and build it again",
            ));
        } else if c.kind == "constraint" && after.ends_with(" NOT VALID") {
            out.push(Finding::new(
                FindingCode::ConstraintNotValid,
                Severity::Warn,
                format!("constraint {} is left NOT VALID", c.name),
                after.clone(),
                "run ALTER TABLE ... VALIDATE CONSTRAINT in a later migration (it takes only SHARE UPDATE EXCLUSIVE)",
            ));
        } else {
            out.push(Finding::new(
                FindingCode::SchemaChange,
                Severity::Info,
                c.describe(),
                String::new(),
                "",
            ));
        }
    }
    for t in v.tables.iter().filter(|t| t.differing_rows > 0 || t.rows_a != t.rows_b) {
        out.push(Finding::new(
            FindingCode::DataChanged,
            Severity::Info,
            format!(
                "{}: {} row(s) differ from the control twin{} (rows {} vs {})",
                t.table,
                t.differing_rows,
                if t.exact { "" } else { " (at least)" },
                t.rows_a,
                t.rows_b
            ),
            format!("sample keys: {}", t.sample_keys.join(", ")),
            "expected for a data migration; check the samples",
        ));
    }
    for n in &v.new_columns {
        out.push(Finding::new(
            FindingCode::NewColumnNulls,
            Severity::Info,
            format!(
                "{}.{} ({}): {} NULL of {} rows",
                n.table, n.column, n.definition, n.nulls, n.rows
            ),
            String::new(),
            "",
        ));
    }
    for c in &v.checks {
        if let Some(e) = &c.error {
            out.push(Finding::new(
                FindingCode::CheckError,
                Severity::Warn,
                format!("check {:?} failed to run", c.name),
                e.clone(),
                "fix the check's SQL",
            ));
        } else if c.changed {
            out.push(Finding::new(
                FindingCode::CheckChanged,
                Severity::Warn,
                format!("check {:?} (line {}) changed", c.name, c.line),
                format!("migrated: {}; control: {}", rows(&c.migrated), rows(&c.control)),
                "confirm the new output is what the migration intends",
            ));
        }
    }
    if !up_ok {
        // Nothing to roll back: the up-migration itself failed (reported with the statement).
    } else if !down_given {
        out.push(Finding::new(
            FindingCode::RollbackUntested,
            Severity::Warn,
            "rollback untested: no down-migration given".to_string(),
            String::new(),
            "pass --down DOWN.sql; if the migration cannot be reversed, say so in the pull request",
        ));
    } else if !rollback.ok {
        let failed = rollback.statements.iter().find(|s| !s.ok);
        out.push(Finding::new(
            FindingCode::RollbackFailed,
            Severity::Fail,
            "the down-migration failed: this migration cannot be reversed as written".to_string(),
            failed
                .map(|s| format!("line {}: {}", s.line, s.error.clone().unwrap_or_default()))
                .unwrap_or_default(),
            "fix the down-migration, or document that the change is irreversible",
        ));
    } else {
        for d in &rollback.schema_differences {
            out.push(Finding::new(
                FindingCode::RollbackSchema,
                Severity::Fail,
                format!("after the down-migration, {}", d.describe()),
                String::new(),
                "make the down-migration restore the previous schema exactly",
            ));
        }
        for l in &rollback.lossy_columns {
            out.push(Finding::new(
                FindingCode::RollbackLossy,
                Severity::Fail,
                format!(
                    "column {}.{}: {} values not restored by the down-migration",
                    l.table, l.column, l.values_not_restored
                ),
                format!("sample keys: {}", l.sample_keys.join(", ")),
                "the up-migration destroys data the down-migration cannot bring back: keep a copy (rename instead of \
                 drop, or back up the column) or mark the migration irreversible",
            ));
        }
        if rollback.schema_differences.is_empty() && rollback.lossy_columns.is_empty() {
            out.push(Finding::new(
                FindingCode::RollbackProven,
                Severity::Info,
                format!(
                    "the down-migration restores the control twin's schema and data ({} tables compared)",
                    rollback.tables_compared
                ),
                String::new(),
                "",
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests;

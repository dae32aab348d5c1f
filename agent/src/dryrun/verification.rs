//! After the migration: the migrated fork against its control twin (both replayed to the same LSN): schema
//! changes, data differences on the columns both have, NULLs in new columns, user checks; then the rollback
//! proof (the down-migration on the migrated fork, compared with the control twin again).

use serde::Serialize;
use tokio_postgres::Client;

use super::report::{Finding, Severity};
use crate::migrate::{self, Plan, Statement};
use crate::pg::PgError;
use crate::verify::checks::{self, CheckResult};
use crate::verify::data::{self, TableComparison};
use crate::verify::schema::{SchemaChange, SchemaSnapshot};

/// New column NULLs.
#[derive(Debug, Clone, Serialize)]
pub struct NewColumn {
    pub table: String,
    pub column: String,
    pub definition: String,
    pub nulls: i64,
    pub rows: i64,
}

/// The migrated fork against the control twin.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Verification {
    /// The LSN both twins were replayed to.
    pub compared_at: String,
    pub schema_changes: Vec<SchemaChange>,
    pub tables: Vec<TableComparison>,
    pub new_columns: Vec<NewColumn>,
    pub checks: Vec<CheckResult>,
}

/// A column the down-migration did not restore.
#[derive(Debug, Clone, Serialize)]
pub struct LossyColumn {
    pub table: String,
    pub column: String,
    pub values_not_restored: i64,
    pub sample_keys: Vec<String>,
}

/// The rollback proof.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Rollback {
    pub tested: bool,
    pub file: Option<String>,
    pub ok: bool,
    pub statements: Vec<migrate::StatementOutcome>,
    /// Schema differences left between the rolled-back fork and the control twin.
    pub schema_differences: Vec<SchemaChange>,
    pub lossy_columns: Vec<LossyColumn>,
    pub tables_compared: usize,
}

/// Columns of a table with the same definition on both sides.
fn common_columns(a: &SchemaSnapshot, b: &SchemaSnapshot, table: &str) -> Vec<String> {
    let ca = a.columns(table);
    b.columns(table)
        .into_iter()
        .filter(|(n, d)| ca.get(n).is_some_and(|x| base_type(x) == base_type(d)))
        .map(|(n, _)| n)
        .collect()
}

/// A column's type without NOT NULL / DEFAULT (they do not change stored values).
fn base_type(definition: &str) -> &str {
    definition
        .split(" NOT NULL")
        .next()
        .unwrap_or(definition)
        .split(" DEFAULT ")
        .next()
        .unwrap_or(definition)
}

/// Compares the migrated fork (`a`) with the control twin (`b`). `a_nulls`, a second session on the migrated
/// fork, counts the NULLs of a table's new columns while `a` compares it: PostgreSQL's synchronized scans let the
/// two scans of the same table share its reads.
pub async fn compare(
    a: &Client,
    a_nulls: &Client,
    b: &Client,
    checks_file: &[(String, Statement)],
    at: String,
    since: Option<data::Since>,
    cache: &mut data::ReferenceCache,
) -> Result<Verification, PgError> {
    let (sa, sb) = tokio::try_join!(SchemaSnapshot::read(a), SchemaSnapshot::read(b))?;
    let mut v = Verification {
        compared_at: at,
        schema_changes: SchemaSnapshot::diff(&sb, &sa),
        ..Verification::default()
    };
    // New (or changed) columns by table, with their definitions.
    let mut new_columns: Vec<(String, String, String)> = v
        .schema_changes
        .iter()
        .filter(|c| c.kind == "column" && c.change != "dropped")
        .filter_map(|c| {
            c.name
                .rsplit_once('.')
                .map(|(t, col)| (t.to_string(), col.to_string(), c.after.clone().unwrap_or_default()))
        })
        .collect();
    let record = |v: &mut Verification, table: &str, of: &[(String, String, String)], counted: (Vec<i64>, i64)| {
        for ((_, column, definition), nulls) in of.iter().zip(counted.0) {
            v.new_columns.push(NewColumn {
                table: table.to_string(),
                column: column.clone(),
                definition: definition.clone(),
                nulls,
                rows: counted.1,
            });
        }
    };
    for table in sb.tables().iter().filter(|t| sa.tables().contains(t)) {
        let columns = common_columns(&sa, &sb, table);
        if columns.is_empty() {
            continue;
        }
        let (of, rest): (Vec<_>, Vec<_>) = new_columns.into_iter().partition(|(t, _, _)| t == table);
        new_columns = rest;
        let names: Vec<String> = of.iter().map(|(_, c, _)| c.clone()).collect();
        let nulls = async {
            if names.is_empty() {
                Ok((Vec::new(), 0))
            } else {
                data::null_counts(a_nulls, table, &names).await
            }
        };
        let (compared, counted) = tokio::try_join!(data::compare_cached(a, b, table, &columns, since, cache), nulls)?;
        v.tables.push(compared);
        record(&mut v, table, &of, counted);
    }
    // Columns of tables that were not compared (new tables).
    let mut by_table: std::collections::BTreeMap<String, Vec<(String, String, String)>> = Default::default();
    for c in new_columns {
        by_table.entry(c.0.clone()).or_default().push(c);
    }
    for (table, of) in by_table {
        let names: Vec<String> = of.iter().map(|(_, c, _)| c.clone()).collect();
        let counted = data::null_counts(a, &table, &names).await?;
        record(&mut v, &table, &of, counted);
    }
    v.checks = checks::run(a, b, checks_file).await;
    Ok(v)
}

/// Runs the down-migration on `a` and proves (or disproves) that it restores the control twin's state.
pub async fn rollback(
    a: &Client,
    b: &Client,
    file: &str,
    plan: &Plan,
    statement_timeout: Option<std::time::Duration>,
    since: Option<data::Since>,
    cache: &mut data::ReferenceCache,
) -> Result<Rollback, PgError> {
    let pid: i32 = a
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .map_err(PgError::sql("down-migration session"))?
        .get(0);
    let outcome = migrate::run(a, pid, plan, statement_timeout, None).await;
    let mut r = Rollback {
        tested: true,
        file: Some(file.to_string()),
        ok: outcome.ok,
        statements: outcome.statements,
        ..Rollback::default()
    };
    if !outcome.ok {
        return Ok(r);
    }
    let sa = SchemaSnapshot::read(a).await?;
    let sb = SchemaSnapshot::read(b).await?;
    r.schema_differences = SchemaSnapshot::diff(&sb, &sa);
    for table in sb.tables().iter().filter(|t| sa.tables().contains(t)) {
        let columns = common_columns(&sa, &sb, table);
        if columns.is_empty() {
            continue;
        }
        r.tables_compared += 1;
        let whole = data::compare_cached(a, b, table, &columns, since, cache).await?;
        if whole.differing_rows == 0 && whole.rows_a == whole.rows_b {
            continue;
        }
        // Name the columns that were not restored (counted in the same scan that found the rows).
        let key = data::primary_key(b, table).await?;
        for c in whole.columns.iter().filter(|c| !key.contains(&c.column)) {
            r.lossy_columns.push(LossyColumn {
                table: table.clone(),
                column: c.column.clone(),
                values_not_restored: c.rows,
                sample_keys: c.sample_keys.clone(),
            });
        }
    }
    Ok(r)
}

/// Findings from the verification and the rollback proof.
/// Findings from the verification and the rollback proof (`up_ok`: the up-migration succeeded, so a rollback was
/// attempted when `down_given`).
pub fn findings(v: &Verification, rollback: &Rollback, down_given: bool, up_ok: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    for c in &v.schema_changes {
        let after = c.after.clone().unwrap_or_default();
        if c.kind == "index" && after.ends_with(" INVALID") {
            out.push(Finding::new(
                "index-invalid",
                Severity::Fail,
                format!("index {} is left INVALID", c.name),
                after.clone(),
                "a failed CREATE INDEX CONCURRENTLY leaves an invalid index: drop it and build it again",
            ));
        } else if c.kind == "constraint" && after.ends_with(" NOT VALID") {
            out.push(Finding::new(
                "constraint-not-valid",
                Severity::Warn,
                format!("constraint {} is left NOT VALID", c.name),
                after.clone(),
                "run ALTER TABLE ... VALIDATE CONSTRAINT in a later migration (it takes only SHARE UPDATE EXCLUSIVE)",
            ));
        } else {
            out.push(Finding::new(
                "schema-change",
                Severity::Info,
                c.describe(),
                String::new(),
                "",
            ));
        }
    }
    for t in v.tables.iter().filter(|t| t.differing_rows > 0 || t.rows_a != t.rows_b) {
        out.push(Finding::new(
            "data-changed",
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
            "new-column-nulls",
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
                "check-error",
                Severity::Warn,
                format!("check {:?} failed to run", c.name),
                e.clone(),
                "fix the check's SQL",
            ));
        } else if c.changed {
            out.push(Finding::new(
                "check-changed",
                Severity::Warn,
                format!("check {:?} (line {}) changed", c.name, c.line),
                format!("migrated: {:?}; control: {:?}", c.migrated, c.control),
                "confirm the new output is what the migration intends",
            ));
        }
    }
    if !up_ok {
        // Nothing to roll back: the up-migration itself failed (reported with the statement).
    } else if !down_given {
        out.push(Finding::new(
            "rollback-untested",
            Severity::Warn,
            "rollback untested: no down-migration given".to_string(),
            String::new(),
            "pass --down DOWN.sql; if the migration cannot be reversed, say so in the pull request",
        ));
    } else if !rollback.ok {
        let failed = rollback.statements.iter().find(|s| !s.ok);
        out.push(Finding::new(
            "rollback-failed",
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
                "rollback-schema",
                Severity::Fail,
                format!("after the down-migration, {}", d.describe()),
                String::new(),
                "make the down-migration restore the previous schema exactly",
            ));
        }
        for l in &rollback.lossy_columns {
            out.push(Finding::new(
                "rollback-lossy",
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
                "rollback-proven",
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

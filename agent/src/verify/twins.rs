//! Twins: the migrated fork against its control twin (both replayed to the same LSN): schema changes, data
//! differences on the columns both have, NULLs in new columns, user checks; then the rollback proof (the
//! down-migration on the migrated fork, compared with the control twin again).

use serde::Serialize;
use tokio_postgres::Client;

use super::checks::{self, CheckResult};
use super::data::{self, TableComparison};
use super::schema::{SchemaChange, SchemaSnapshot};
use crate::migrate::{self, Plan, Statement};
use crate::pg::PgError;

/// New column NULLs.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewColumn {
    pub table: String,
    pub column: String,
    pub definition: String,
    pub nulls: i64,
    pub rows: i64,
}

/// The migrated fork against the control twin.
#[derive(Debug, Clone, Serialize, Default, utoipa::ToSchema)]
pub struct Verification {
    /// The LSN both twins were replayed to.
    pub compared_at: String,
    pub schema_changes: Vec<SchemaChange>,
    pub tables: Vec<TableComparison>,
    pub new_columns: Vec<NewColumn>,
    pub checks: Vec<CheckResult>,
}

/// A column the down-migration did not restore.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LossyColumn {
    pub table: String,
    pub column: String,
    pub values_not_restored: i64,
    pub sample_keys: Vec<String>,
}

/// The rollback proof.
#[derive(Debug, Clone, Serialize, Default, utoipa::ToSchema)]
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

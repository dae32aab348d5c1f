//! Comparing a table's data on two servers over the columns both have: row counts, bucketed checksums by primary
//! key (so that differences are found without moving whole tables), exact differing keys in differing buckets,
//! and per-column differences for the rollback proof.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::Client;

use crate::pg::{PgError, quote_ident};

const BUCKETS: i32 = 256;
/// Differing buckets fetched row by row to name keys and count rows exactly.
const MAX_BUCKETS_FETCHED: usize = 256;

/// How one table compares.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TableComparison {
    pub table: String,
    pub rows_a: i64,
    pub rows_b: i64,
    /// Rows present on both sides whose compared columns differ, plus rows on one side only.
    pub differing_rows: i64,
    pub sample_keys: Vec<String>,
    /// True when every differing bucket was fetched, so `differing_rows` is exact.
    pub exact: bool,
}

/// The primary key columns of `table` (`schema.name`), or none.
pub async fn primary_key(client: &Client, table: &str) -> Result<Vec<String>, PgError> {
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY(x.indkey) \
             WHERE x.indrelid = $1::text::regclass AND x.indisprimary ORDER BY array_position(x.indkey::int2[], a.attnum)",
            &[&qualified(table)],
        )
        .await
        .map_err(PgError::sql(format!("reading the primary key of {table}")))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// `schema.name` → `"schema"."name"`.
pub fn qualified(table: &str) -> String {
    match table.split_once('.') {
        Some((s, n)) => format!("{}.{}", quote_ident(s), quote_ident(n)),
        None => quote_ident(table),
    }
}

fn key_expr(key: &[String]) -> String {
    if key.is_empty() {
        "t::text".into()
    } else {
        format!(
            "row({})::text",
            key.iter()
                .map(|k| format!("t.{}", quote_ident(k)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

fn row_text(columns: &[String]) -> String {
    format!(
        "row({})::text",
        columns
            .iter()
            .map(|c| format!("t.{}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn row_expr(columns: &[String]) -> String {
    format!("md5({})", row_text(columns))
}

/// Per bucket: the row count and the sum of the rows' 64-bit hashes. A sum does not depend on the order of the
/// rows, so nothing is sorted (a sorted aggregate cost more than the scan on large tables), and unlike XOR it does
/// not cancel out pairs of equal rows in tables without a key.
async fn buckets(
    client: &Client,
    table: &str,
    key: &[String],
    columns: &[String],
) -> Result<BTreeMap<i32, (i64, String)>, PgError> {
    let sql = format!(
        "SELECT abs(hashtext({k})) % {BUCKETS}, count(*), sum(hashtextextended({r}, 0))::text \
         FROM {t} t GROUP BY 1",
        k = key_expr(key),
        r = row_text(columns),
        t = qualified(table)
    );
    let rows = client
        .query(&sql, &[])
        .await
        .map_err(PgError::sql(format!("checksumming {table}")))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i32>(0), (r.get::<_, i64>(1), r.get::<_, String>(2))))
        .collect())
}

async fn bucket_rows(
    client: &Client,
    table: &str,
    key: &[String],
    columns: &[String],
    bucket: i32,
) -> Result<BTreeMap<String, Vec<String>>, PgError> {
    let sql = format!(
        "SELECT {k}, {r} FROM {t} t WHERE abs(hashtext({k})) % {BUCKETS} = $1",
        k = key_expr(key),
        r = row_expr(columns),
        t = qualified(table)
    );
    let rows = client
        .query(&sql, &[&bucket])
        .await
        .map_err(PgError::sql(format!("reading {table}")))?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in rows {
        out.entry(r.get(0)).or_default().push(r.get(1));
    }
    Ok(out)
}

/// Compares `table` on `a` and `b` over `columns`.
pub async fn compare(a: &Client, b: &Client, table: &str, columns: &[String]) -> Result<TableComparison, PgError> {
    let key = primary_key(b, table).await?;
    // The two sides are separate servers: each scans its copy at the same time.
    let (ba, bb) = tokio::try_join!(buckets(a, table, &key, columns), buckets(b, table, &key, columns))?;
    let rows_a = ba.values().map(|v| v.0).sum();
    let rows_b = bb.values().map(|v| v.0).sum();
    let differing: Vec<i32> = (0..BUCKETS).filter(|i| ba.get(i) != bb.get(i)).collect();
    let mut out = TableComparison {
        table: table.to_string(),
        rows_a,
        rows_b,
        differing_rows: 0,
        sample_keys: Vec::new(),
        exact: true,
    };
    if differing.len() > MAX_BUCKETS_FETCHED {
        out.exact = false;
    }
    for bucket in differing.iter().take(MAX_BUCKETS_FETCHED) {
        let (ra, rb) = tokio::try_join!(
            bucket_rows(a, table, &key, columns, *bucket),
            bucket_rows(b, table, &key, columns, *bucket)
        )?;
        for (k, va) in &ra {
            if rb.get(k) != Some(va) {
                out.differing_rows += 1;
                if out.sample_keys.len() < 5 {
                    out.sample_keys.push(k.clone());
                }
            }
        }
        for k in rb.keys().filter(|k| !ra.contains_key(*k)) {
            out.differing_rows += 1;
            if out.sample_keys.len() < 5 {
                out.sample_keys.push(k.clone());
            }
        }
    }
    Ok(out)
}

/// `NULL`s in a column: (nulls, rows).
pub async fn null_count(client: &Client, table: &str, column: &str) -> Result<(i64, i64), PgError> {
    let row = client
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE {} IS NULL), count(*) FROM {}",
                quote_ident(column),
                qualified(table)
            ),
            &[],
        )
        .await
        .map_err(PgError::sql(format!("counting NULLs in {table}.{column}")))?;
    Ok((row.get(0), row.get(1)))
}

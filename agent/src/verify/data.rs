//! Comparing a table's data on two servers over the columns both have: row counts, bucketed checksums by primary
//! key (so that differences are found without moving whole tables), exact differing keys in differing buckets,
//! and per-column differences for the rollback proof.

use std::collections::{BTreeMap, HashMap};

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

/// A row's identity as text: its key, or (no key) the compared columns.
fn key_expr(shape: &Shape) -> String {
    if shape.key.is_empty() {
        row_text(&shape.columns)
    } else {
        row_text(&shape.key)
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

/// Types whose default hash is exact: equal hashes input means identical values (no case folding, no numeric
/// scale, no float signed zeros). Other types are hashed through their text form.
const EXACT_HASH_TYPES: [&str; 16] = [
    "smallint",
    "integer",
    "bigint",
    "oid",
    "boolean",
    "\"char\"",
    "name",
    "text",
    "character varying",
    "character",
    "bytea",
    "date",
    "time without time zone",
    "timestamp without time zone",
    "timestamp with time zone",
    "uuid",
];

/// The column types of `table` (by `regtype` name).
async fn column_types(client: &Client, table: &str) -> Result<HashMap<String, String>, PgError> {
    let rows = client
        .query(
            "SELECT attname::text, atttypid::regtype::text FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped",
            &[&qualified(table)],
        )
        .await
        .map_err(PgError::sql(format!("reading the columns of {table}")))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A row of `columns`, each typed where its hash is exact (text-like ones under the deterministic collation "C")
/// or as text: hashing it with `hash_record_extended` costs about half of rendering the row as text.
fn hashable_row(columns: &[String], types: &HashMap<String, String>) -> String {
    let fields: Vec<String> = columns
        .iter()
        .map(|c| {
            let col = format!("t.{}", quote_ident(c));
            match types.get(c).map(String::as_str) {
                Some("text" | "character varying" | "character" | "name") => format!("{col} COLLATE \"C\""),
                Some(t) if EXACT_HASH_TYPES.contains(&t) => col,
                _ => format!("{col}::text"),
            }
        })
        .collect();
    format!("row({})", fields.join(", "))
}

/// The bucket of a row: from its key, or (no key) from the compared columns.
fn bucket_expr(shape: &Shape) -> String {
    let by = if shape.key.is_empty() {
        &shape.columns
    } else {
        &shape.key
    };
    format!(
        "(hash_record_extended({}, 1) & {})::int",
        hashable_row(by, &shape.types),
        BUCKETS - 1
    )
}

/// Per bucket: the row count and the sum of the rows' 64-bit hashes. A sum does not depend on the order of the
/// rows, so nothing is sorted, and unlike XOR it does not cancel out pairs of equal rows in tables without a key.
/// The planner cannot know there are only 256 buckets and would sort the whole table to group it: sorting is
/// switched off for this one query.
async fn buckets(client: &Client, table: &str, shape: &Shape) -> Result<Buckets, PgError> {
    let sql = format!(
        "SELECT {b}, count(*), sum(hash_record_extended({r}, 0))::text FROM {t} t GROUP BY 1",
        b = bucket_expr(shape),
        r = hashable_row(&shape.columns, &shape.types),
        t = qualified(table)
    );
    client
        .batch_execute("BEGIN READ ONLY; SET LOCAL enable_sort = off")
        .await
        .map_err(PgError::sql(format!("checksumming {table}")))?;
    let rows = client.query(&sql, &[]).await;
    let end = client
        .batch_execute(if rows.is_ok() { "COMMIT" } else { "ROLLBACK" })
        .await;
    let rows = rows.map_err(PgError::sql(format!("checksumming {table}")))?;
    end.map_err(PgError::sql(format!("checksumming {table}")))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i32>(0), (r.get::<_, i64>(1), r.get::<_, String>(2))))
        .collect())
}

/// What a comparison hashes: the key (empty: the compared columns identify a row), the compared columns, and the
/// table's column types.
struct Shape {
    key: Vec<String>,
    columns: Vec<String>,
    types: HashMap<String, String>,
}

async fn bucket_rows(
    client: &Client,
    table: &str,
    shape: &Shape,
    bucket: i32,
) -> Result<BTreeMap<String, Vec<String>>, PgError> {
    let sql = format!(
        "SELECT {k}, {r} FROM {t} t WHERE {b} = $1",
        k = key_expr(shape),
        b = bucket_expr(shape),
        r = row_expr(&shape.columns),
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

type Buckets = BTreeMap<i32, (i64, String)>;

/// The reference side's bucket checksums by table and columns: the control twin does not change between the
/// comparison after the migration and the one after the rollback, so it is scanned once.
#[derive(Debug, Default)]
pub struct ReferenceCache(std::collections::HashMap<(String, Vec<String>), Buckets>);

/// Compares `table` on `a` and `b` over `columns`.
pub async fn compare(a: &Client, b: &Client, table: &str, columns: &[String]) -> Result<TableComparison, PgError> {
    compare_cached(a, b, table, columns, &mut ReferenceCache::default()).await
}

/// Compares `table` on `a` and `b` over `columns`; `b` must not have changed since `cache` was filled.
pub async fn compare_cached(
    a: &Client,
    b: &Client,
    table: &str,
    columns: &[String],
    cache: &mut ReferenceCache,
) -> Result<TableComparison, PgError> {
    let key = primary_key(b, table).await?;
    let types = column_types(b, table).await?;
    let shape = Shape {
        key,
        columns: columns.to_vec(),
        types,
    };
    let cache_key = (table.to_string(), columns.to_vec());
    // The two sides are separate servers: each scans its copy at the same time.
    let (ba, bb) = match cache.0.get(&cache_key) {
        Some(bb) => (buckets(a, table, &shape).await?, bb.clone()),
        None => {
            let (ba, bb) = tokio::try_join!(buckets(a, table, &shape), buckets(b, table, &shape))?;
            cache.0.insert(cache_key, bb.clone());
            (ba, bb)
        }
    };
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
            bucket_rows(a, table, &shape, *bucket),
            bucket_rows(b, table, &shape, *bucket)
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

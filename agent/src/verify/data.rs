//! Comparing a table's data on two servers over the columns both have: row counts, bucketed checksums by primary
//! key (so that differences are found without moving whole tables), exact differing keys in differing buckets,
//! and per-column differences for the rollback proof.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tokio_postgres::Client;

use crate::pg::{PgError, quote_ident};

const BUCKETS: i32 = 256;
/// Rows of differing buckets fetched at most per side (in one scan) to name keys and count differing rows; beyond
/// it the count covers the buckets fetched and is a lower bound (`exact: false`).
const ROW_BUDGET: i64 = 200_000;

/// How one table compares.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct TableComparison {
    pub table: String,
    pub rows_a: i64,
    pub rows_b: i64,
    /// Rows present on both sides whose compared columns differ, plus rows on one side only.
    pub differing_rows: i64,
    pub sample_keys: Vec<String>,
    /// True when every differing bucket was fetched, so `differing_rows` is exact.
    pub exact: bool,
    /// Per compared column: the rows whose value in it differs, counting rows on one side only (within what was
    /// fetched; a lower bound unless `exact`). Only columns with differences.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<ColumnDifference>,
}

/// The rows of a table that differ in one column.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ColumnDifference {
    pub column: String,
    pub rows: i64,
    pub sample_keys: Vec<String>,
}

/// A fetched row: the hash of the whole row and of each compared column (in order).
type FetchedRow = (String, Vec<String>);

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

/// A 64-bit hash of one column, cheap for the usual key types (no text rendering), never NULL.
fn column_hash(column: &str, ty: Option<&str>, seed: usize) -> String {
    let col = format!("t.{}", quote_ident(column));
    let hash = match ty {
        Some("smallint") => format!("hashint2extended({col}, {seed})"),
        Some("integer") => format!("hashint4extended({col}, {seed})"),
        Some("bigint") => format!("hashint8extended({col}, {seed})"),
        Some("uuid") => format!("uuid_hash_extended({col}, {seed})"),
        Some("text" | "character varying") => format!("hashtextextended({col} COLLATE \"C\", {seed})"),
        _ => format!("hashtextextended({col}::text COLLATE \"C\", {seed})"),
    };
    format!("coalesce({hash}, {seed})")
}

/// What a comparison hashes: the key (empty: the compared columns identify a row), the compared columns, and the
/// table's column types.
struct Shape {
    key: Vec<String>,
    columns: Vec<String>,
    types: HashMap<String, String>,
}

impl Shape {
    /// The row's identity hash: its key columns' hashes combined (each with its own seed), or the compared
    /// columns' when the table has no key.
    fn key_hash(&self) -> String {
        let by = if self.key.is_empty() { &self.columns } else { &self.key };
        let parts: Vec<String> = by
            .iter()
            .enumerate()
            .map(|(i, c)| column_hash(c, self.types.get(c).map(String::as_str), i + 1))
            .collect();
        format!("({})", parts.join(" # "))
    }

    fn bucket(&self) -> String {
        format!("({} & {})::int", self.key_hash(), BUCKETS - 1)
    }

    /// Keys are unique, so XOR of their hashes is safe and cheap; rows of a table without a key may repeat, and
    /// pairs of equal hashes must not cancel out.
    fn key_aggregate(&self) -> &'static str {
        if self.key.is_empty() { "sum" } else { "bit_xor" }
    }
}

/// Runs `sql` (with `buckets` as `$1` when given) with sorting switched off: the planner cannot know there are
/// only 256 buckets and would sort the whole table to group it.
async fn grouped(client: &Client, table: &str, sql: &str, buckets: Option<&[i32]>) -> Result<Buckets, PgError> {
    client
        .batch_execute("BEGIN READ ONLY; SET LOCAL enable_sort = off")
        .await
        .map_err(PgError::sql(format!("checksumming {table}")))?;
    let rows = match buckets {
        Some(b) => client.query(sql, &[&b.to_vec()]).await,
        None => client.query(sql, &[]).await,
    };
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

/// Per bucket: the row count and the sum of the rows' content hashes (the sum does not depend on the order of the
/// rows and, unlike XOR, does not cancel out equal rows), over the buckets `only` (all when `None`).
async fn content(client: &Client, table: &str, shape: &Shape, only: Option<&[i32]>) -> Result<Buckets, PgError> {
    let sql = format!(
        "SELECT {b}, count(*), sum(hash_record_extended({r}, 0))::text FROM {t} t {w} GROUP BY 1",
        b = shape.bucket(),
        r = hashable_row(&shape.columns, &shape.types),
        t = qualified(table),
        w = if only.is_some() {
            format!("WHERE {} = ANY($1)", shape.bucket())
        } else {
            String::new()
        }
    );
    grouped(client, table, &sql, only).await
}

/// Per bucket, in one cheap scan: the row count and key-hash aggregate of all rows, and the same plus the content
/// hashes of the rows changed since `since` (a row version whose `xmin` is at least the side's next transaction
/// id at the fork point). Rows older than that are the fork point's own versions, identical on both twins, so
/// only the changed ones need their content hashed. Equal summaries mean equal buckets; a bucket whose summaries
/// differ may still be equal (a row rewritten to the same values on one side only) and is compared by content.
async fn summary(client: &Client, table: &str, shape: &Shape, since: u32) -> Result<Buckets, PgError> {
    let new = format!("age(t.xmin) <= age('{since}'::xid)");
    let agg = shape.key_aggregate();
    let sql = format!(
        "SELECT (kh & {mask})::int, count(*), concat_ws('/', count(*), {agg}(kh), count(*) FILTER (WHERE n), \
         coalesce(({agg}(kh) FILTER (WHERE n))::text, '-'), coalesce((sum(ch) FILTER (WHERE n))::text, '-')) \
         FROM (SELECT {kh} AS kh, {new} AS n, CASE WHEN {new} THEN hash_record_extended({r}, 0) END AS ch FROM {t} t) s \
         GROUP BY 1",
        mask = BUCKETS - 1,
        kh = shape.key_hash(),
        r = hashable_row(&shape.columns, &shape.types),
        t = qualified(table),
    );
    grouped(client, table, &sql, None).await
}

/// The rows of `buckets`, in one scan: key → the rows (several when a keyless table repeats a row), each as the
/// hash of the whole row and of each compared column.
async fn bucket_rows(
    client: &Client,
    table: &str,
    shape: &Shape,
    buckets: &[i32],
) -> Result<BTreeMap<String, Vec<FetchedRow>>, PgError> {
    let per_column: Vec<String> = shape
        .columns
        .iter()
        .map(|c| format!("coalesce(md5(t.{}::text), 'NULL')", quote_ident(c)))
        .collect();
    let sql = format!(
        "SELECT {k}, {r}, ARRAY[{c}]::text[] FROM {t} t WHERE {b} = ANY($1)",
        k = key_expr(shape),
        b = shape.bucket(),
        r = row_expr(&shape.columns),
        c = per_column.join(", "),
        t = qualified(table)
    );
    let buckets = buckets.to_vec();
    let rows = client
        .query(&sql, &[&buckets])
        .await
        .map_err(PgError::sql(format!("reading {table}")))?;
    let mut out: BTreeMap<String, Vec<FetchedRow>> = BTreeMap::new();
    for r in rows {
        out.entry(r.get(0)).or_default().push((r.get(1), r.get(2)));
    }
    for fetched in out.values_mut() {
        fetched.sort();
    }
    Ok(out)
}

type Buckets = BTreeMap<i32, (i64, String)>;

/// Where each twin's own changes begin: its next transaction id at the fork point (32-bit, as `xmin` is). Row
/// versions older than that are the fork point's, the same on both twins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since {
    pub a: u32,
    pub b: u32,
}

/// A server's next transaction id (32-bit): read before anything writes on a fresh fork, it is that fork's
/// [`Since`].
pub async fn next_xid(client: &Client) -> Result<u32, PgError> {
    let row = client
        .query_one(
            "SELECT (pg_snapshot_xmax(pg_current_snapshot())::text::bigint % 4294967296)::bigint",
            &[],
        )
        .await
        .map_err(PgError::sql("reading the next transaction id"))?;
    u32::try_from(row.get::<_, i64>(0)).map_err(|e| PgError::Config(format!("transaction id out of range: {e}")))
}

/// Where `columns` sit in `table`'s rows: name, number, type and modifier.
async fn layout(client: &Client, table: &str, columns: &[String]) -> Result<Vec<String>, PgError> {
    let columns = columns.to_vec();
    let rows = client
        .query(
            "SELECT attname || ':' || attnum || ':' || atttypid || ':' || atttypmod FROM pg_attribute \
             WHERE attrelid = $1::text::regclass AND attname = ANY($2) AND NOT attisdropped ORDER BY attnum",
            &[&qualified(table), &columns],
        )
        .await
        .map_err(PgError::sql(format!("reading the columns of {table}")))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The reference side's bucket summaries and contents by table and columns: the control twin does not change
/// between the comparison after the migration and the one after the rollback, so it is scanned once.
#[derive(Debug, Default)]
pub struct ReferenceCache {
    summaries: HashMap<(String, Vec<String>), Buckets>,
    contents: HashMap<(String, Vec<String>), Buckets>,
}

/// Compares `table` on `a` and `b` over `columns` (every row's content hashed on both sides).
pub async fn compare(a: &Client, b: &Client, table: &str, columns: &[String]) -> Result<TableComparison, PgError> {
    compare_cached(a, b, table, columns, None, &mut ReferenceCache::default()).await
}

/// Compares `table` on `a` and `b` over `columns`; `b` must not have changed since `cache` was filled. With
/// `since` (both sides are twins forked at one point), only buckets whose cheap summaries differ are hashed by
/// content.
pub async fn compare_cached(
    a: &Client,
    b: &Client,
    table: &str,
    columns: &[String],
    since: Option<Since>,
    cache: &mut ReferenceCache,
) -> Result<TableComparison, PgError> {
    let key = primary_key(b, table).await?;
    let types = column_types(b, table).await?;
    let shape = Shape {
        key,
        columns: columns.to_vec(),
        types,
    };
    // An old row version decodes to the same values on both sides only if the compared columns sit where they
    // sat (a column dropped and added again, or retyped in place, changes what the same bytes mean).
    let since = match since {
        Some(s) => {
            let (la, lb) = tokio::try_join!(layout(a, table, columns), layout(b, table, columns))?;
            (la == lb).then_some(s)
        }
        None => None,
    };
    let cache_key = (table.to_string(), columns.to_vec());
    // The two sides are separate servers: each scans its copy at the same time.
    let (rows_a, rows_b, candidates) = match since {
        Some(since) => {
            let (sa, sb) = match cache.summaries.get(&cache_key) {
                Some(sb) => (summary(a, table, &shape, since.a).await?, sb.clone()),
                None => {
                    let (sa, sb) =
                        tokio::try_join!(summary(a, table, &shape, since.a), summary(b, table, &shape, since.b))?;
                    cache.summaries.insert(cache_key.clone(), sb.clone());
                    (sa, sb)
                }
            };
            let candidates: Vec<i32> = (0..BUCKETS).filter(|i| sa.get(i) != sb.get(i)).collect();
            (
                sa.values().map(|v| v.0).sum::<i64>(),
                sb.values().map(|v| v.0).sum::<i64>(),
                Some(candidates),
            )
        }
        None => (0, 0, None),
    };
    // Content hashes: of the candidate buckets, or of everything without a summary.
    let (ca, cb) = match &candidates {
        Some(c) if c.is_empty() => (Buckets::new(), Buckets::new()),
        _ => {
            let only = candidates.as_deref();
            let cached = cache.contents.get(&cache_key).filter(|known| {
                only.map_or(known.len() as i32 == BUCKETS, |o| {
                    o.iter().all(|i| known.contains_key(i))
                })
            });
            match cached {
                Some(cb) => (content(a, table, &shape, only).await?, cb.clone()),
                None => {
                    let (ca, cb) = tokio::try_join!(content(a, table, &shape, only), content(b, table, &shape, only))?;
                    let known = cache.contents.entry(cache_key).or_default();
                    // A bucket absent from the result is empty on that side.
                    for i in only.map(<[i32]>::to_vec).unwrap_or_else(|| (0..BUCKETS).collect()) {
                        known.insert(i, cb.get(&i).cloned().unwrap_or((0, String::new())));
                    }
                    (ca, cb)
                }
            }
        }
    };
    let (rows_a, rows_b) = match candidates {
        Some(_) => (rows_a, rows_b),
        None => (ca.values().map(|v| v.0).sum(), cb.values().map(|v| v.0).sum()),
    };
    let empty = (0, String::new());
    let differing: Vec<i32> = match &candidates {
        Some(c) => c.clone(),
        None => (0..BUCKETS).collect(),
    }
    .into_iter()
    .filter(|i| {
        let x = ca.get(i).filter(|v| v.0 > 0).unwrap_or(&empty);
        let y = cb.get(i).filter(|v| v.0 > 0).unwrap_or(&empty);
        x != y
    })
    .collect();
    let mut out = TableComparison {
        table: table.to_string(),
        rows_a,
        rows_b,
        differing_rows: 0,
        sample_keys: Vec::new(),
        exact: true,
        columns: Vec::new(),
    };
    // The differing buckets that fit the row budget (at least one), fetched in one scan per side.
    let rows_in = |i: &i32| {
        let count = |c: &Buckets| c.get(i).map_or(0, |v| v.0);
        count(&ca).max(count(&cb))
    };
    let mut fetch = Vec::new();
    let mut budget = 0;
    for bucket in &differing {
        let n = rows_in(bucket);
        if !fetch.is_empty() && budget + n > ROW_BUDGET {
            out.exact = false;
            break;
        }
        budget += n;
        fetch.push(*bucket);
    }
    if !fetch.is_empty() {
        let (ra, rb) = tokio::try_join!(
            bucket_rows(a, table, &shape, &fetch),
            bucket_rows(b, table, &shape, &fetch)
        )?;
        let mut columns: Vec<ColumnDifference> = shape
            .columns
            .iter()
            .map(|c| ColumnDifference {
                column: c.clone(),
                rows: 0,
                sample_keys: Vec::new(),
            })
            .collect();
        let count = |column: &mut ColumnDifference, k: &String| {
            column.rows += 1;
            if column.sample_keys.len() < 5 {
                column.sample_keys.push(k.clone());
            }
        };
        for (k, va) in &ra {
            let vb = rb.get(k);
            if vb == Some(va) {
                continue;
            }
            out.differing_rows += 1;
            if out.sample_keys.len() < 5 {
                out.sample_keys.push(k.clone());
            }
            match (va.as_slice(), vb.map(Vec::as_slice)) {
                // One row per key on both sides: the columns that differ.
                ([(_, ca)], Some([(_, cb)])) => {
                    for (i, column) in columns.iter_mut().enumerate() {
                        if ca.get(i) != cb.get(i) {
                            count(column, k);
                        }
                    }
                }
                // On one side only (or repeated rows of a keyless table): every column.
                _ => columns.iter_mut().for_each(|column| count(column, k)),
            }
        }
        for k in rb.keys().filter(|k| !ra.contains_key(*k)) {
            out.differing_rows += 1;
            if out.sample_keys.len() < 5 {
                out.sample_keys.push(k.clone());
            }
            columns.iter_mut().for_each(|column| count(column, k));
        }
        out.columns = columns.into_iter().filter(|c| c.rows > 0).collect();
    }
    Ok(out)
}

/// `NULL`s in each of `columns`, in one scan: (nulls per column, rows).
pub async fn null_counts(client: &Client, table: &str, columns: &[String]) -> Result<(Vec<i64>, i64), PgError> {
    let filters: Vec<String> = columns
        .iter()
        .map(|c| format!("count(*) FILTER (WHERE {} IS NULL)", quote_ident(c)))
        .collect();
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), ARRAY[{}]::bigint[] FROM {}",
                if filters.is_empty() {
                    "NULL".to_string()
                } else {
                    filters.join(", ")
                },
                qualified(table)
            ),
            &[],
        )
        .await
        .map_err(PgError::sql(format!("counting NULLs in {table}")))?;
    let nulls: Vec<Option<i64>> = row.get(1);
    Ok((nulls.into_iter().map(|n| n.unwrap_or(0)).collect(), row.get(0)))
}

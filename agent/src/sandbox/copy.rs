//! The initial copy: every published table streamed from the source's exported snapshot (`COPY ... TO STDOUT`)
//! straight into the sandbox (`COPY ... FROM STDIN`), in binary where the column types allow it, by several
//! workers in parallel, with large tables split into block (ctid) ranges so that both ends stay busy. All
//! workers import the snapshot the slot exported, so together they read the source exactly as of the slot's
//! consistent point: no row is missed and none is copied twice.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt, pin_mut};
use tokio_postgres::Client;

use crate::pg::connect::{connect_plain, connect_source};
use crate::pg::{ConnInfo, PgError, QualifiedName, quote_ident, quote_literal};
use crate::progress::Progress;
use crate::source::PublishedTable;

/// Tables larger than the chunk size given to [`plan`] are split into block ranges of about that size (loaded with
/// WAL); [`WHOLE_TABLES`] keeps every table in one chunk (loaded without WAL under `wal_level = minimal`).
pub const MAX_CHUNK_BYTES: i64 = 64 * 1024 * 1024;
pub const WHOLE_TABLES: i64 = i64::MAX;
const BLOCK_SIZE: i64 = 8192;

/// One unit of copy work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub table: QualifiedName,
    pub columns: Vec<String>,
    pub row_filter: Option<String>,
    /// Block range `[start, end)`; `None` end = to the end of the table; `None` range = whole table.
    pub blocks: Option<(i64, Option<i64>)>,
    pub binary: bool,
    pub bytes: i64,
    /// Rows added to a table already loaded (a subset's closure): no truncate, no freeze.
    pub adds: bool,
}

impl Chunk {
    /// True when the chunk is a whole table: it is then loaded in a transaction that truncates the table first,
    /// which lets a `wal_level = minimal` server skip WAL for it and lets COPY freeze the rows.
    pub fn whole_table(&self) -> bool {
        self.blocks.is_none() && !self.adds
    }
}

/// Splits tables into chunks, largest first.
pub fn plan(tables: &[PublishedTable], text_only: &[QualifiedName], chunk_bytes: i64) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    for table in tables {
        let binary = !text_only.contains(&table.name);
        let base = Chunk {
            table: table.name.clone(),
            columns: table.columns.clone(),
            row_filter: table.row_filter.clone(),
            blocks: None,
            binary,
            bytes: table.bytes,
            adds: false,
        };
        if table.bytes <= chunk_bytes {
            chunks.push(base);
            continue;
        }
        let blocks = table.bytes / BLOCK_SIZE;
        let per_chunk = (chunk_bytes / BLOCK_SIZE).max(1);
        let mut start = 0;
        while start < blocks {
            let end = start + per_chunk;
            let last = end >= blocks;
            chunks.push(Chunk {
                blocks: Some((start, if last { None } else { Some(end) })),
                bytes: if last {
                    (blocks - start) * BLOCK_SIZE
                } else {
                    per_chunk * BLOCK_SIZE
                },
                ..base.clone()
            });
            start = end;
        }
    }
    chunks.sort_by_key(|c| std::cmp::Reverse(c.bytes));
    chunks
}

impl Chunk {
    fn columns_sql(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn format(&self) -> &'static str {
        if self.binary { "binary" } else { "text" }
    }

    /// The `COPY ... TO STDOUT` run on the source.
    pub fn copy_out_sql(&self) -> String {
        let mut conditions = Vec::new();
        if let Some((start, end)) = self.blocks {
            conditions.push(format!("ctid >= {}::tid", quote_literal(&format!("({start},0)"))));
            if let Some(end) = end {
                conditions.push(format!("ctid < {}::tid", quote_literal(&format!("({end},0)"))));
            }
        }
        if let Some(filter) = &self.row_filter {
            conditions.push(format!("({filter})"));
        }
        if conditions.is_empty() {
            format!(
                "COPY {} ({}) TO STDOUT (FORMAT {})",
                self.table.sql(),
                self.columns_sql(),
                self.format()
            )
        } else {
            format!(
                "COPY (SELECT {} FROM {} WHERE {}) TO STDOUT (FORMAT {})",
                self.columns_sql(),
                self.table.sql(),
                conditions.join(" AND "),
                self.format()
            )
        }
    }

    /// The `COPY ... FROM STDIN` run on the sandbox.
    pub fn copy_in_sql(&self) -> String {
        let freeze = if self.whole_table() { ", FREEZE" } else { "" };
        format!(
            "COPY {} ({}) FROM STDIN (FORMAT {}{freeze})",
            self.table.sql(),
            self.columns_sql(),
            self.format()
        )
    }
}

/// Tables with a column whose binary form carries type OIDs that differ between servers (arrays and composites
/// of user-defined types): they are copied in text format.
pub async fn text_only_tables(source: &Client, tables: &[PublishedTable]) -> Result<Vec<QualifiedName>, PgError> {
    let oids: Vec<u32> = tables.iter().map(|t| t.oid).collect();
    let rows = source
        .query(
            "SELECT DISTINCT a.attrelid FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_type b ON b.oid = t.typbasetype \
             LEFT JOIN pg_type e ON e.oid = coalesce(nullif(b.typelem, 0), t.typelem) \
             WHERE a.attrelid = ANY($1) AND a.attnum > 0 AND NOT a.attisdropped \
               AND (t.typtype = 'c' OR b.typtype = 'c' OR (e.oid IS NOT NULL AND (e.oid >= 16384 OR e.typtype = 'c')) \
                    OR t.typtype = 'r' OR t.typtype = 'm')",
            &[&oids],
        )
        .await
        .map_err(PgError::sql("checking column types for binary copy"))?;
    let flagged: Vec<u32> = rows.iter().map(|r| r.get(0)).collect();
    Ok(tables
        .iter()
        .filter(|t| flagged.contains(&t.oid))
        .map(|t| t.name.clone())
        .collect())
}

/// What the copy did.
#[derive(Debug, Clone, Default)]
pub struct CopyOutcome {
    pub chunks: usize,
    pub bytes: u64,
    pub rows: u64,
}

/// Copies `chunks` with `jobs` workers, each reading the source in snapshot `snapshot`.
pub async fn run(
    source: &ConnInfo,
    snapshot: &str,
    sandbox_conninfo: &str,
    chunks: Vec<Chunk>,
    jobs: usize,
    progress: Arc<Progress>,
) -> Result<CopyOutcome, PgError> {
    let count = chunks.len();
    let queue = Arc::new(Mutex::new(VecDeque::from(chunks)));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..jobs.max(1).min(count.max(1)) {
        let queue = Arc::clone(&queue);
        let progress = Arc::clone(&progress);
        let source = source.clone();
        let snapshot = snapshot.to_string();
        let sandbox = sandbox_conninfo.to_string();
        workers.spawn(async move { worker(&source, &snapshot, &sandbox, queue, progress).await });
    }
    let mut outcome = CopyOutcome {
        chunks: count,
        ..CopyOutcome::default()
    };
    while let Some(joined) = workers.join_next().await {
        let (bytes, rows) = joined.map_err(|e| PgError::Config(format!("copy worker panicked: {e}")))??;
        outcome.bytes += bytes;
        outcome.rows += rows;
    }
    Ok(outcome)
}

async fn worker(
    source: &ConnInfo,
    snapshot: &str,
    sandbox: &str,
    queue: Arc<Mutex<VecDeque<Chunk>>>,
    progress: Arc<Progress>,
) -> Result<(u64, u64), PgError> {
    let src = snapshot_session(source, snapshot).await?;
    let dst = connect_plain(sandbox, "understudy-copy").await?;
    // As the apply worker: a masked sandbox's replica triggers fire for these rows too.
    dst.batch_execute("SET synchronous_commit = off; SET session_replication_role = replica")
        .await
        .map_err(PgError::sql("configuring the copy session"))?;
    let (mut bytes, mut rows) = (0u64, 0u64);
    loop {
        let next = queue
            .lock()
            .map_err(|_| PgError::Config("copy queue poisoned".into()))?
            .pop_front();
        let Some(chunk) = next else { break };
        let (b, r) = copy_chunk(&src, &dst, &chunk, &progress).await?;
        bytes += b;
        rows += r;
        progress.add_item();
    }
    src.batch_execute("COMMIT")
        .await
        .map_err(PgError::sql("ending the snapshot transaction"))?;
    Ok((bytes, rows))
}

/// A session on the source reading as of the slot's exported snapshot, in a read-only transaction.
pub(super) async fn snapshot_session(source: &ConnInfo, snapshot: &str) -> Result<Client, PgError> {
    let src = connect_source(source, "understudy-copy").await?;
    src.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        quote_literal(snapshot)
    ))
    .await
    .map_err(PgError::sql("importing the slot's snapshot on the source"))?;
    Ok(src)
}

/// Streams one chunk from the source into the sandbox; returns its bytes and rows.
pub(super) async fn copy_chunk(
    src: &Client,
    dst: &Client,
    chunk: &Chunk,
    progress: &Progress,
) -> Result<(u64, u64), PgError> {
    let context = format!("copying {}", chunk.table);
    if chunk.whole_table() {
        dst.batch_execute(&format!("BEGIN; TRUNCATE {}", chunk.table.sql()))
            .await
            .map_err(PgError::sql(context.clone()))?;
    }
    let stream = src
        .copy_out(&chunk.copy_out_sql())
        .await
        .map_err(PgError::sql(context.clone()))?;
    let sink = dst
        .copy_in(&chunk.copy_in_sql())
        .await
        .map_err(PgError::sql(context.clone()))?;
    pin_mut!(stream, sink);
    let mut bytes = 0u64;
    // The source sends one CopyData message per row: relaying them in 256 KiB batches saves a frame per row on
    // the way out (CPU here and in the sandbox's COPY FROM).
    const BATCH: usize = 256 * 1024;
    let mut batch = bytes::BytesMut::with_capacity(BATCH + 64 * 1024);
    while let Some(data) = stream.next().await {
        let data = data.map_err(PgError::sql(context.clone()))?;
        bytes += data.len() as u64;
        batch.extend_from_slice(&data);
        if batch.len() >= BATCH {
            progress.add_bytes(batch.len() as u64);
            sink.feed(batch.split().freeze())
                .await
                .map_err(PgError::sql(context.clone()))?;
        }
    }
    if !batch.is_empty() {
        progress.add_bytes(batch.len() as u64);
        sink.feed(batch.split().freeze())
            .await
            .map_err(PgError::sql(context.clone()))?;
    }
    let rows = sink.as_mut().finish().await.map_err(PgError::sql(context.clone()))?;
    if chunk.whole_table() {
        dst.batch_execute("COMMIT").await.map_err(PgError::sql(context))?;
    }
    Ok((bytes, rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, bytes: i64) -> PublishedTable {
        PublishedTable {
            name: QualifiedName::new("public", name),
            oid: 1,
            columns: vec!["id".into(), "v".into()],
            row_filter: None,
            bytes,
        }
    }

    #[test]
    fn splits_large_tables_into_block_ranges_covering_everything() {
        let chunks = plan(
            &[table("big", 200 * 1024 * 1024), table("small", 1000)],
            &[],
            MAX_CHUNK_BYTES,
        );
        let big: Vec<&Chunk> = chunks.iter().filter(|c| c.table.name == "big").collect();
        assert_eq!(big.len(), 4);
        let mut ranges: Vec<(i64, Option<i64>)> = big.iter().filter_map(|c| c.blocks).collect();
        ranges.sort();
        assert_eq!(ranges[0].0, 0);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].1, Some(pair[1].0), "ranges must touch: {ranges:?}");
        }
        assert_eq!(ranges.last().map(|r| r.1), Some(None), "the last range is open-ended");
        assert!(chunks.iter().any(|c| c.table.name == "small" && c.blocks.is_none()));
    }

    #[test]
    fn sql_shapes() {
        let mut c = plan(&[table("t", 10)], &[QualifiedName::new("public", "t")], MAX_CHUNK_BYTES).remove(0);
        assert_eq!(
            c.copy_out_sql(),
            "COPY \"public\".\"t\" (\"id\", \"v\") TO STDOUT (FORMAT text)"
        );
        c.blocks = Some((10, Some(20)));
        c.row_filter = Some("v > 3".into());
        c.binary = true;
        assert_eq!(
            c.copy_out_sql(),
            "COPY (SELECT \"id\", \"v\" FROM \"public\".\"t\" WHERE ctid >= '(10,0)'::tid AND ctid < '(20,0)'::tid \
             AND (v > 3)) TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            c.copy_in_sql(),
            "COPY \"public\".\"t\" (\"id\", \"v\") FROM STDIN (FORMAT binary)"
        );
    }
}

//! Per-table row counts and content checksums, comparable across servers: rows are rendered as text and ordered
//! by the whole row, so that two tables with the same rows have the same checksum whatever their physical order.

use serde::Serialize;
use tokio_postgres::Client;

use crate::pg::{PgError, QualifiedName};

/// One table's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableChecksum {
    pub table: QualifiedName,
    pub rows: i64,
    pub md5: String,
}

/// Row count and checksum of `table` over `columns` (all columns when empty).
pub async fn table_checksum(
    client: &Client,
    table: &QualifiedName,
    columns: &[String],
) -> Result<TableChecksum, PgError> {
    let row_expr = if columns.is_empty() {
        "t::text".to_string()
    } else {
        format!(
            "row({})::text",
            columns
                .iter()
                .map(|c| format!("t.{}", crate::pg::quote_ident(c)))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let sql = format!(
        "SELECT count(*), coalesce(md5(string_agg(r, E'\\n' ORDER BY r COLLATE \"C\")), md5('')) \
         FROM (SELECT {row_expr} AS r FROM {} t) s",
        table.sql()
    );
    let row = client
        .query_one(&sql, &[])
        .await
        .map_err(PgError::sql(format!("checksumming {table}")))?;
    Ok(TableChecksum {
        table: table.clone(),
        rows: row.get(0),
        md5: row.get(1),
    })
}

/// Checksums of several tables.
pub async fn checksums(client: &Client, tables: &[QualifiedName]) -> Result<Vec<TableChecksum>, PgError> {
    let mut out = Vec::with_capacity(tables.len());
    for table in tables {
        out.push(table_checksum(client, table, &[]).await?);
    }
    Ok(out)
}

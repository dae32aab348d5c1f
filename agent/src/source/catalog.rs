//! Catalog reads on the source: which tables a publication carries and what Understudy needs to know of them.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::pg::{PgError, QualifiedName};

/// A table as the source publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedTable {
    pub name: QualifiedName,
    pub oid: u32,
    /// Published, non-generated columns in table order.
    pub columns: Vec<String>,
    /// The publication's row filter (PostgreSQL 15+), if any.
    pub row_filter: Option<String>,
    /// On-disk size of the table's main fork in bytes.
    pub bytes: i64,
}

/// What preflight needs to know of one table.
#[derive(Debug, Clone)]
pub struct TableFacts {
    pub name: QualifiedName,
    pub oid: u32,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: char,
    pub has_primary_key: bool,
    pub has_identity_index: bool,
    pub can_select: bool,
    pub owned: bool,
    pub bytes: i64,
}

impl TableFacts {
    /// True when UPDATE and DELETE on the table can be published.
    pub fn has_replica_identity(&self) -> bool {
        match self.replica_identity {
            'f' => true,
            'd' => self.has_primary_key,
            'i' => self.has_identity_index,
            _ => false,
        }
    }
}

/// The server's version number (`150018` for 15.18).
pub async fn server_version_num(client: &Client) -> Result<i32, PgError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(PgError::sql("reading server_version_num"))?;
    Ok(row.get(0))
}

/// Tables of `publication` with their published columns and row filters.
pub async fn published_tables(client: &Client, publication: &str) -> Result<Vec<PublishedTable>, PgError> {
    let version = server_version_num(client).await?;
    let query = if version >= 150000 {
        "SELECT c.oid, p.schemaname::text, p.tablename::text, p.attnames::text[], p.rowfilter, \
                pg_relation_size(c.oid) \
         FROM pg_publication_tables p \
         JOIN pg_namespace n ON n.nspname = p.schemaname \
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
         WHERE p.pubname = $1 ORDER BY 2, 3"
    } else {
        "SELECT c.oid, p.schemaname::text, p.tablename::text, NULL::text[], NULL::text, pg_relation_size(c.oid) \
         FROM pg_publication_tables p \
         JOIN pg_namespace n ON n.nspname = p.schemaname \
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
         WHERE p.pubname = $1 ORDER BY 2, 3"
    };
    let rows = client
        .query(query, &[&publication])
        .await
        .map_err(PgError::sql("listing published tables"))?;
    let mut tables = Vec::with_capacity(rows.len());
    for row in rows {
        let oid: u32 = row.get(0);
        let published: Option<Vec<String>> = row.get(3);
        let all = copyable_columns(client, oid).await?;
        let columns = match published {
            Some(list) => all.into_iter().filter(|c| list.contains(c)).collect(),
            None => all,
        };
        tables.push(PublishedTable {
            name: QualifiedName::new(row.get::<_, String>(1), row.get::<_, String>(2)),
            oid,
            columns,
            row_filter: row.get(4),
            bytes: row.get(5),
        });
    }
    Ok(tables)
}

/// Non-dropped, non-generated columns in table order.
pub async fn copyable_columns(client: &Client, oid: u32) -> Result<Vec<String>, PgError> {
    let rows = client
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped \
             AND attgenerated = '' ORDER BY attnum",
            &[&oid],
        )
        .await
        .map_err(PgError::sql("reading columns"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Facts about the given tables; names that do not resolve to a table are returned separately.
pub async fn table_facts(
    client: &Client,
    names: &[QualifiedName],
) -> Result<(Vec<TableFacts>, Vec<QualifiedName>), PgError> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        let row = client
            .query_opt(
                "SELECT c.oid, c.relreplident::text, \
                   EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary), \
                   EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident), \
                   has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT'), \
                   pg_has_role(c.relowner, 'USAGE'), pg_relation_size(c.oid) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&name.schema, &name.name],
            )
            .await
            .map_err(PgError::sql("reading table facts"))?;
        match row {
            Some(row) => {
                let ident: String = row.get(1);
                found.push(TableFacts {
                    name: name.clone(),
                    oid: row.get(0),
                    replica_identity: ident.chars().next().unwrap_or('d'),
                    has_primary_key: row.get(2),
                    has_identity_index: row.get(3),
                    can_select: row.get(4),
                    owned: row.get(5),
                    bytes: row.get(6),
                });
            }
            None => missing.push(name.clone()),
        }
    }
    Ok((found, missing))
}

/// Ordinary and partitioned tables of a schema.
pub async fn tables_in_schema(client: &Client, schema: &str) -> Result<Vec<QualifiedName>, PgError> {
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY 1",
            &[&schema],
        )
        .await
        .map_err(PgError::sql("listing tables of a schema"))?;
    Ok(rows
        .iter()
        .map(|r| QualifiedName::new(schema, r.get::<_, String>(0)))
        .collect())
}

/// Relations (tables, views, materialized views, foreign tables) of user schemas that are not in `keep`: the
/// schema dump leaves them out.
pub async fn relations_outside(client: &Client, keep: &[QualifiedName]) -> Result<Vec<QualifiedName>, PgError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' \
               AND n.nspname NOT LIKE 'pg\\_temp%' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e') \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(PgError::sql("listing relations"))?;
    Ok(rows
        .iter()
        .map(|r| QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .filter(|n| !keep.contains(n))
        .collect())
}

/// Foreign keys from a kept table to a table that is not kept: `(table, constraint, referenced table)`.
pub async fn foreign_keys_leaving(
    client: &Client,
    keep: &[QualifiedName],
) -> Result<Vec<(QualifiedName, String, QualifiedName)>, PgError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, k.conname::text, rn.nspname::text, r.relname::text \
             FROM pg_constraint k \
             JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_class r ON r.oid = k.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace \
             WHERE k.contype = 'f'",
            &[],
        )
        .await
        .map_err(PgError::sql("listing foreign keys"))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                r.get::<_, String>(2),
                QualifiedName::new(r.get::<_, String>(3), r.get::<_, String>(4)),
            )
        })
        .filter(|(from, _, to)| keep.contains(from) && !keep.contains(to))
        .collect())
}

/// A foreign key: the child's columns, the parent's columns it references and their types, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    pub name: String,
    pub child: QualifiedName,
    pub columns: Vec<String>,
    pub parent: QualifiedName,
    pub parent_columns: Vec<String>,
    /// `format_type` of each parent column.
    pub parent_types: Vec<String>,
}

/// Every foreign key whose child and parent are both among `tables`.
pub async fn foreign_keys_among(client: &Client, tables: &[QualifiedName]) -> Result<Vec<ForeignKey>, PgError> {
    let rows = client
        .query(
            "SELECT k.conname::text, cn.nspname::text, c.relname::text, pn.nspname::text, p.relname::text, \
               array(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(n, i) \
                     JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i), \
               array(SELECT a.attname::text FROM unnest(k.confkey) WITH ORDINALITY u(n, i) \
                     JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.i), \
               array(SELECT format_type(a.atttypid, a.atttypmod) FROM unnest(k.confkey) WITH ORDINALITY u(n, i) \
                     JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.i) \
             FROM pg_constraint k \
             JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace \
             JOIN pg_class p ON p.oid = k.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace \
             WHERE k.contype = 'f' ORDER BY 2, 3, 1",
            &[],
        )
        .await
        .map_err(PgError::sql("listing foreign keys"))?;
    Ok(rows
        .iter()
        .map(|r| ForeignKey {
            name: r.get(0),
            child: QualifiedName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            parent: QualifiedName::new(r.get::<_, String>(3), r.get::<_, String>(4)),
            columns: r.get(5),
            parent_columns: r.get(6),
            parent_types: r.get(7),
        })
        .filter(|k| tables.contains(&k.child) && tables.contains(&k.parent))
        .collect())
}

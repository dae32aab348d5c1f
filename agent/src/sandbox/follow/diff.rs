//! The catalog diff: the source's published tables, columns, indexes and sequences against the sandbox's, as the
//! changes a follower pass applies (additive ones) or records as drift.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::Client;

use crate::pg::{PgError, QualifiedName, quote_ident};
use crate::source::catalog;

/// One difference between the source and the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Change {
    AddSequence {
        sequence: QualifiedName,
        definition: String,
    },
    AddTable {
        table: QualifiedName,
    },
    AddColumn {
        table: QualifiedName,
        column: String,
        data_type: String,
        default: Option<String>,
        not_null: bool,
    },
    AddIndex {
        table: QualifiedName,
        index: String,
        definition: String,
    },
    DropColumn {
        table: QualifiedName,
        column: String,
    },
    ChangeType {
        table: QualifiedName,
        column: String,
        from: String,
        to: String,
    },
    DropIndex {
        table: QualifiedName,
        index: String,
    },
    LeftPublication {
        table: QualifiedName,
    },
}

impl Change {
    /// Additive changes are applied automatically.
    pub fn is_additive(&self) -> bool {
        matches!(
            self,
            Change::AddSequence { .. } | Change::AddTable { .. } | Change::AddColumn { .. } | Change::AddIndex { .. }
        )
    }

    fn order(&self) -> u8 {
        match self {
            Change::AddSequence { .. } => 0,
            Change::AddTable { .. } => 1,
            Change::AddColumn { .. } => 2,
            Change::AddIndex { .. } => 3,
            _ => 4,
        }
    }

    /// A line for people.
    pub fn describe(&self) -> String {
        match self {
            Change::AddSequence { sequence, .. } => format!("new sequence {sequence}"),
            Change::AddTable { table } => format!("new table {table} in the publication"),
            Change::AddColumn {
                table,
                column,
                data_type,
                ..
            } => format!("new column {table}.{column} {data_type}"),
            Change::AddIndex { index, table, .. } => format!("new index {index} on {table}"),
            Change::DropColumn { table, column } => format!(
                "column {table}.{column} was dropped on the source (mirror: ALTER TABLE {} DROP COLUMN {})",
                table.sql(),
                quote_ident(column)
            ),
            Change::ChangeType {
                table,
                column,
                from,
                to,
            } => format!(
                "column {table}.{column} changed type from {from} to {to} on the source (mirror: ALTER TABLE {} ALTER \
                 COLUMN {} TYPE {to})",
                table.sql(),
                quote_ident(column)
            ),
            Change::DropIndex { table, index } => {
                format!(
                    "index {index} on {table} was dropped on the source (mirror: DROP INDEX {})",
                    quote_ident(index)
                )
            }
            Change::LeftPublication { table } => {
                format!("table {table} left the publication; the sandbox keeps its last copy")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ColumnShape {
    data_type: String,
    not_null: bool,
    default: Option<String>,
}

#[derive(Debug, Default)]
struct TableShape {
    columns: BTreeMap<String, ColumnShape>,
    indexes: BTreeMap<String, String>,
}

async fn shapes(client: &Client, tables: &[QualifiedName]) -> Result<BTreeMap<QualifiedName, TableShape>, PgError> {
    let schemas: Vec<String> = tables.iter().map(|t| t.schema.clone()).collect();
    let names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
    let mut out: BTreeMap<QualifiedName, TableShape> = BTreeMap::new();
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    a.attnotnull, pg_get_expr(d.adbin, d.adrelid) \
             FROM unnest($1::text[], $2::text[]) AS w(s, t) \
             JOIN pg_namespace n ON n.nspname = w.s JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&schemas, &names],
        )
        .await
        .map_err(PgError::sql("reading columns"))?;
    for row in rows {
        let table = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        out.entry(table).or_default().columns.insert(
            row.get(2),
            ColumnShape {
                data_type: row.get(3),
                not_null: row.get(4),
                default: row.get(5),
            },
        );
    }
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, i.relname::text, pg_get_indexdef(i.oid) \
             FROM unnest($1::text[], $2::text[]) AS w(s, t) \
             JOIN pg_namespace n ON n.nspname = w.s JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t \
             JOIN pg_index x ON x.indrelid = c.oid JOIN pg_class i ON i.oid = x.indexrelid",
            &[&schemas, &names],
        )
        .await
        .map_err(PgError::sql("reading indexes"))?;
    for row in rows {
        let table = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        out.entry(table).or_default().indexes.insert(row.get(2), row.get(3));
    }
    Ok(out)
}

/// Sequences with their `CREATE SEQUENCE` and the table that owns them (serial and identity columns).
async fn sequences_of(client: &Client) -> Result<BTreeMap<QualifiedName, (String, Option<QualifiedName>)>, PgError> {
    let rows = client
        .query(
            "SELECT s.schemaname::text, s.sequencename::text, \
                    format('CREATE SEQUENCE IF NOT EXISTS %I.%I AS %s INCREMENT BY %s MINVALUE %s MAXVALUE %s START \
                            WITH %s CACHE %s %s', schemaname, sequencename, data_type, increment_by, min_value, \
                            max_value, start_value, cache_size, CASE WHEN cycle THEN 'CYCLE' ELSE 'NO CYCLE' END), \
                    tn.nspname::text, t.relname::text \
             FROM pg_sequences s \
             JOIN pg_namespace sn ON sn.nspname = s.schemaname \
             JOIN pg_class sc ON sc.relnamespace = sn.oid AND sc.relname = s.sequencename \
             LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = sc.oid \
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') \
             LEFT JOIN pg_class t ON t.oid = d.refobjid LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace \
             WHERE s.schemaname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .map_err(PgError::sql("reading sequences"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let owner = match (r.get::<_, Option<String>>(3), r.get::<_, Option<String>>(4)) {
                (Some(schema), Some(table)) => Some(QualifiedName::new(schema, table)),
                _ => None,
            };
            (
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                (r.get(2), owner),
            )
        })
        .collect())
}

/// The differences between the source's published tables (and sequences) and the sandbox.
pub async fn diff(source: &Client, sandbox: &Client, publication: &str) -> Result<Vec<Change>, PgError> {
    let published: Vec<QualifiedName> = catalog::published_tables(source, publication)
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    let subscribed: Vec<QualifiedName> = sandbox
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_subscription_rel r JOIN pg_class c ON c.oid = r.srrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace",
            &[],
        )
        .await
        .map_err(PgError::sql("reading pg_subscription_rel"))?
        .iter()
        .map(|r| QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    let source_shapes = shapes(source, &published).await?;
    let sandbox_shapes = shapes(sandbox, &published).await?;
    let mut changes = Vec::new();

    let source_seqs = sequences_of(source).await?;
    let sandbox_seqs = sequences_of(sandbox).await?;
    for (seq, (definition, owner)) in &source_seqs {
        // A sequence owned by a table the sandbox lacks comes with that table.
        let comes_with_table = owner.as_ref().is_some_and(|t| !sandbox_shapes.contains_key(t));
        if !sandbox_seqs.contains_key(seq) && !comes_with_table {
            changes.push(Change::AddSequence {
                sequence: seq.clone(),
                definition: definition.clone(),
            });
        }
    }
    for table in &published {
        let Some(src) = source_shapes.get(table) else {
            continue;
        };
        let Some(dst) = sandbox_shapes.get(table) else {
            changes.push(Change::AddTable { table: table.clone() });
            continue;
        };
        for (column, shape) in &src.columns {
            match dst.columns.get(column) {
                None => changes.push(Change::AddColumn {
                    table: table.clone(),
                    column: column.clone(),
                    data_type: shape.data_type.clone(),
                    default: shape.default.clone(),
                    not_null: shape.not_null,
                }),
                Some(have) if have.data_type != shape.data_type => changes.push(Change::ChangeType {
                    table: table.clone(),
                    column: column.clone(),
                    from: have.data_type.clone(),
                    to: shape.data_type.clone(),
                }),
                Some(_) => {}
            }
        }
        for column in dst.columns.keys().filter(|c| !src.columns.contains_key(*c)) {
            changes.push(Change::DropColumn {
                table: table.clone(),
                column: column.clone(),
            });
        }
        for (index, definition) in &src.indexes {
            if !dst.indexes.contains_key(index) {
                changes.push(Change::AddIndex {
                    table: table.clone(),
                    index: index.clone(),
                    definition: definition.clone(),
                });
            }
        }
        for index in dst.indexes.keys().filter(|i| !src.indexes.contains_key(*i)) {
            changes.push(Change::DropIndex {
                table: table.clone(),
                index: index.clone(),
            });
        }
    }
    for table in subscribed.iter().filter(|t| !published.contains(t)) {
        changes.push(Change::LeftPublication { table: table.clone() });
    }
    changes.sort_by_key(Change::order);
    Ok(changes)
}

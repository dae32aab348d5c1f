//! A subset's closure (pg_sample's): after the filtered copy, every parent row that an included row references
//! is copied too, from the same exported snapshot, recursively, so that no included row loses its parent. Each
//! round asks the source only for keys it has not asked for before, so cycles (and keys no parent has: true
//! orphans under a `NOT VALID` key) end it.

use std::collections::{BTreeMap, HashSet};

use tokio_postgres::Client;

use super::copy::{self, Chunk};
use crate::pg::{ConnInfo, PgError, QualifiedName, quote_ident, quote_literal};
use crate::progress::Progress;
use crate::source::PublishedTable;
use crate::source::catalog::ForeignKey;

/// Keys asked of the source in one statement.
const BATCH: usize = 5000;

/// What the closure added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    /// Parent rows added, by table.
    pub added: BTreeMap<QualifiedName, u64>,
    pub rounds: u32,
}

impl Closure {
    pub fn rows(&self) -> u64 {
        self.added.values().sum()
    }
}

/// Copies the parents the filtered copy left out. `filtered` are the tables copied through a row filter: the
/// parents of other tables are all there already.
pub async fn complete(
    source: &ConnInfo,
    snapshot: &str,
    sandbox: &Client,
    tables: &[PublishedTable],
    text_only: &[QualifiedName],
    keys: &[ForeignKey],
) -> Result<Closure, PgError> {
    let filtered: Vec<&PublishedTable> = tables.iter().filter(|t| t.row_filter.is_some()).collect();
    let keys: Vec<&ForeignKey> = keys
        .iter()
        .filter(|k| filtered.iter().any(|t| t.name == k.parent))
        .collect();
    let mut closure = Closure::default();
    if keys.is_empty() {
        return Ok(closure);
    }
    let src = copy::snapshot_session(source, snapshot).await?;
    // As the copy's sessions: a masked sandbox's replica triggers fire for these rows too.
    sandbox
        .batch_execute("SET session_replication_role = replica")
        .await
        .map_err(PgError::sql("configuring the closure's session"))?;
    let progress = Progress::start("closure", 0, 0, false);
    let mut asked: Vec<HashSet<Vec<String>>> = vec![HashSet::new(); keys.len()];
    loop {
        closure.rounds += 1;
        let mut added = 0;
        for (i, key) in keys.iter().enumerate() {
            let missing: Vec<Vec<String>> = missing_parents(sandbox, key)
                .await?
                .into_iter()
                .filter(|k| asked[i].insert(k.clone()))
                .collect();
            let Some(parent) = filtered.iter().find(|t| t.name == key.parent) else {
                continue;
            };
            for batch in missing.chunks(BATCH) {
                let chunk = Chunk {
                    table: parent.name.clone(),
                    columns: parent.columns.clone(),
                    row_filter: Some(key_condition(key, batch)),
                    blocks: None,
                    binary: !text_only.contains(&parent.name),
                    bytes: 0,
                    adds: true,
                };
                let (_, rows) = copy::copy_chunk(&src, sandbox, &chunk, &progress).await?;
                *closure.added.entry(parent.name.clone()).or_default() += rows;
                added += rows;
            }
        }
        if added == 0 {
            break;
        }
    }
    src.batch_execute("COMMIT")
        .await
        .map_err(PgError::sql("ending the closure's snapshot transaction"))?;
    Ok(closure)
}

/// The child's key values (as text) that reference no row of the parent on the sandbox.
async fn missing_parents(sandbox: &Client, key: &ForeignKey) -> Result<Vec<Vec<String>>, PgError> {
    let child: Vec<String> = key.columns.iter().map(|c| format!("t.{}", quote_ident(c))).collect();
    let present: Vec<String> = child.iter().map(|c| format!("{c} IS NOT NULL")).collect();
    let join: Vec<String> = key
        .parent_columns
        .iter()
        .zip(&child)
        .map(|(p, c)| format!("p.{} = {c}", quote_ident(p)))
        .collect();
    let select: Vec<String> = child.iter().map(|c| format!("{c}::text")).collect();
    let sql = format!(
        "SELECT DISTINCT {} FROM {} t WHERE {} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {})",
        select.join(", "),
        key.child.sql(),
        present.join(" AND "),
        key.parent.sql(),
        join.join(" AND ")
    );
    let rows = sandbox
        .query(&sql, &[])
        .await
        .map_err(PgError::sql(format!("finding parents missing for {}", key.name)))?;
    Ok(rows
        .iter()
        .map(|r| (0..key.columns.len()).map(|i| r.get::<_, String>(i)).collect())
        .collect())
}

/// `"id" = ANY('{"1","2"}'::bigint[])`, or `("a", "b") IN (SELECT * FROM unnest(...))` for a composite key: the
/// parent rows with these keys (a `COPY (SELECT ...)` takes no parameters, so the keys go as array literals).
fn key_condition(key: &ForeignKey, batch: &[Vec<String>]) -> String {
    let arrays: Vec<String> = (0..key.parent_columns.len())
        .map(|i| {
            let elements: Vec<String> = batch.iter().map(|k| array_element(&k[i])).collect();
            format!(
                "{}::{}[]",
                quote_literal(&format!("{{{}}}", elements.join(","))),
                key.parent_types[i]
            )
        })
        .collect();
    let columns: Vec<String> = key.parent_columns.iter().map(|c| quote_ident(c)).collect();
    if columns.len() == 1 {
        format!("{} = ANY({})", columns[0], arrays[0])
    } else {
        format!(
            "({}) IN (SELECT * FROM unnest({}))",
            columns.join(", "),
            arrays.join(", ")
        )
    }
}

/// One element of an array literal, quoted.
fn array_element(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(columns: &[&str], types: &[&str]) -> ForeignKey {
        ForeignKey {
            name: "k".into(),
            child: QualifiedName::new("public", "c"),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            parent: QualifiedName::new("public", "p"),
            parent_columns: columns.iter().map(|c| c.to_string()).collect(),
            parent_types: types.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn keys_go_as_typed_array_literals() {
        let one = key(&["id"], &["bigint"]);
        assert_eq!(
            key_condition(&one, &[vec!["1".into()], vec!["2".into()]]),
            "\"id\" = ANY('{\"1\",\"2\"}'::bigint[])"
        );
        let two = key(&["a", "b"], &["integer", "text"]);
        assert_eq!(
            key_condition(&two, &[vec!["1".into(), "it's \"x\"".into()]]),
            "(\"a\", \"b\") IN (SELECT * FROM unnest('{\"1\"}'::integer[], E'{\"it''s \\\\\"x\\\\\"\"}'::text[]))"
        );
    }
}

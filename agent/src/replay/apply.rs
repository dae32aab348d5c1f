//! Applying captured transactions to a fork through an ordinary session: each change becomes the SQL statement
//! the application would have run (INSERT with the columns production wrote; UPDATE and DELETE by replica
//! identity; TRUNCATE), inside the transaction's own BEGIN/COMMIT. Values travel as text literals that the fork
//! casts to the column's type, so a write fails on the fork exactly where it would fail on a changed schema.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::capture::{Change, Transaction};
use crate::pg::{quote_ident, quote_literal};
use crate::pgoutput::{Relation, TupleData, Value};

/// A change that cannot be turned into SQL, or SQL the fork refused.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("change for unknown relation oid {0} (no Relation message seen)")]
    UnknownRelation(u32),
    #[error("{0}")]
    Shape(String),
    #[error("transaction {xid} failed on the fork (SQLSTATE {sqlstate}): {message}")]
    Failed {
        xid: u32,
        sqlstate: String,
        message: String,
    },
}

/// Turns changes into SQL for a set of relations.
#[derive(Debug, Default)]
pub struct Applier {
    relations: HashMap<u32, Relation>,
}

impl Applier {
    pub fn new(relations: &HashMap<u32, Relation>) -> Self {
        Applier {
            relations: relations.clone(),
        }
    }

    /// Learns new relation descriptions.
    pub fn update_relations(&mut self, relations: &HashMap<u32, Relation>) {
        for (oid, rel) in relations {
            self.relations.insert(*oid, rel.clone());
        }
    }

    fn relation(&self, oid: u32) -> Result<&Relation, ApplyError> {
        self.relations.get(&oid).ok_or(ApplyError::UnknownRelation(oid))
    }

    /// The SQL statement for one change.
    pub fn statement(&self, change: &Change) -> Result<String, ApplyError> {
        match change {
            Change::Insert(i) => {
                let rel = self.relation(i.relation)?;
                let (cols, vals): (Vec<String>, Vec<String>) = rel
                    .columns
                    .iter()
                    .zip(&i.new.values)
                    .filter_map(|(c, v)| literal(v).map(|l| (quote_ident(&c.name), l)))
                    .unzip();
                Ok(format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    table(rel),
                    cols.join(", "),
                    vals.join(", ")
                ))
            }
            Change::Update(u) => {
                let rel = self.relation(u.relation)?;
                let sets: Vec<String> = rel
                    .columns
                    .iter()
                    .zip(&u.new.values)
                    .filter_map(|(c, v)| literal(v).map(|l| format!("{} = {l}", quote_ident(&c.name))))
                    .collect();
                let filter = match &u.old {
                    Some(old) => identity_filter(rel, old, u.old_is_full_row)?,
                    None => identity_filter(rel, &u.new, false)?,
                };
                Ok(format!("UPDATE {} SET {} WHERE {filter}", table(rel), sets.join(", ")))
            }
            Change::Delete(d) => {
                let rel = self.relation(d.relation)?;
                Ok(format!(
                    "DELETE FROM {} WHERE {}",
                    table(rel),
                    identity_filter(rel, &d.old, d.old_is_full_row)?
                ))
            }
            Change::Truncate(t) => {
                let names: Result<Vec<String>, ApplyError> =
                    t.relations.iter().map(|oid| self.relation(*oid).map(table)).collect();
                Ok(format!(
                    "TRUNCATE {}{}{}",
                    names?.join(", "),
                    if t.restart_identity { " RESTART IDENTITY" } else { "" },
                    if t.cascade { " CASCADE" } else { "" }
                ))
            }
        }
    }

    /// The whole transaction as one batch (`BEGIN; ...; COMMIT;`).
    pub fn transaction_sql(&self, tx: &Transaction) -> Result<String, ApplyError> {
        let mut sql = String::from("BEGIN;\n");
        for change in &tx.changes {
            sql.push_str(&self.statement(change)?);
            sql.push_str(";\n");
        }
        sql.push_str("COMMIT;");
        Ok(sql)
    }

    /// Applies one transaction on `client`.
    pub async fn apply(&self, client: &Client, tx: &Transaction) -> Result<(), ApplyError> {
        let sql = self.transaction_sql(tx)?;
        if let Err(e) = client.batch_execute(&sql).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(ApplyError::Failed {
                xid: tx.xid,
                sqlstate: e.code().map(|c| c.code().to_string()).unwrap_or_default(),
                message: crate::pg::describe(&e),
            });
        }
        Ok(())
    }
}

fn table(rel: &Relation) -> String {
    format!("{}.{}", quote_ident(&rel.namespace), quote_ident(&rel.name))
}

fn literal(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some("NULL".into()),
        Value::UnchangedToast => None,
        Value::Text(t) => Some(quote_literal(t)),
        Value::Binary(b) => Some(format!(
            "'\\x{}'",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )),
    }
}

/// The WHERE clause that finds the row: by key columns (index-friendly), or for a full old row by every column's
/// text form, limited to one physical row (duplicates are possible without a key).
fn identity_filter(rel: &Relation, old: &TupleData, full_row: bool) -> Result<String, ApplyError> {
    if full_row {
        let conds: Vec<String> = rel
            .columns
            .iter()
            .zip(&old.values)
            .filter_map(|(c, v)| match v {
                Value::Null => Some(format!("{} IS NULL", quote_ident(&c.name))),
                Value::UnchangedToast => None,
                other => literal(other).map(|l| format!("{}::text = {l}", quote_ident(&c.name))),
            })
            .collect();
        return Ok(format!(
            "ctid = (SELECT ctid FROM {} WHERE {} LIMIT 1)",
            table(rel),
            conds.join(" AND ")
        ));
    }
    let conds: Vec<String> = rel
        .columns
        .iter()
        .zip(&old.values)
        .filter(|(c, _)| c.key)
        .filter_map(|(c, v)| match v {
            Value::Null => Some(format!("{} IS NULL", quote_ident(&c.name))),
            Value::UnchangedToast => None,
            other => literal(other).map(|l| format!("{} = {l}", quote_ident(&c.name))),
        })
        .collect();
    if conds.is_empty() {
        return Err(ApplyError::Shape(format!(
            "{} has no replica identity columns in the change",
            table(rel)
        )));
    }
    Ok(conds.join(" AND "))
}

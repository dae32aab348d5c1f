//! Applying captured transactions to a fork through an ordinary session: each change becomes the SQL statement
//! the application would have run (INSERT with the columns production wrote; UPDATE and DELETE by replica
//! identity; TRUNCATE), inside the transaction's own BEGIN/COMMIT. Values travel as text literals that the fork
//! casts to the column's type, so a write fails on the fork exactly where it would fail on a changed schema.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::capture::{Change, Transaction};
use super::statement::{Builder, Param, Shaped};
use crate::pg::quote_ident;
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

    /// The SQL statement for one change, with its values inlined as literals.
    pub fn statement(&self, change: &Change) -> Result<String, ApplyError> {
        Ok(self.shaped(change)?.literal())
    }

    /// The statement for one change, with placeholders for its values (prepared once per shape).
    pub fn shaped(&self, change: &Change) -> Result<Shaped, ApplyError> {
        let mut b = Builder::default();
        match change {
            Change::Insert(i) => {
                let rel = self.relation(i.relation)?;
                let written: Vec<(&str, Param)> = rel
                    .columns
                    .iter()
                    .zip(&i.new.values)
                    .filter_map(|(c, v)| param(v).map(|p| (c.name.as_str(), p)))
                    .collect();
                let cols: Vec<String> = written.iter().map(|(c, _)| quote_ident(c)).collect();
                b.sql(&format!("INSERT INTO {} ({}) VALUES (", table(rel), cols.join(", ")));
                for (n, (_, value)) in written.into_iter().enumerate() {
                    b.sql(if n == 0 { "" } else { ", " }).param(value);
                }
                b.sql(")");
            }
            Change::Update(u) => {
                let rel = self.relation(u.relation)?;
                b.sql(&format!("UPDATE {} SET ", table(rel)));
                let sets = rel
                    .columns
                    .iter()
                    .zip(&u.new.values)
                    .filter_map(|(c, v)| param(v).map(|p| (c, p)));
                for (n, (c, value)) in sets.enumerate() {
                    b.sql(&format!(
                        "{}{} = ",
                        if n == 0 { "" } else { ", " },
                        quote_ident(&c.name)
                    ))
                    .param(value);
                }
                b.sql(" WHERE ");
                match &u.old {
                    Some(old) => identity_filter(&mut b, rel, old, u.old_is_full_row)?,
                    None => identity_filter(&mut b, rel, &u.new, false)?,
                }
            }
            Change::Delete(d) => {
                let rel = self.relation(d.relation)?;
                b.sql(&format!("DELETE FROM {} WHERE ", table(rel)));
                identity_filter(&mut b, rel, &d.old, d.old_is_full_row)?;
            }
            Change::Truncate(t) => {
                let names: Result<Vec<String>, ApplyError> =
                    t.relations.iter().map(|oid| self.relation(*oid).map(table)).collect();
                b.sql(&format!(
                    "TRUNCATE {}{}{}",
                    names?.join(", "),
                    if t.restart_identity { " RESTART IDENTITY" } else { "" },
                    if t.cascade { " CASCADE" } else { "" }
                ));
            }
        }
        Ok(b.build())
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

/// A column's value as a parameter (`None` for an unchanged TOASTed value, which is left out).
fn param(value: &Value) -> Option<Param> {
    match value {
        Value::Null => Some(Param::Null),
        Value::UnchangedToast => None,
        Value::Text(t) => Some(Param::Text(t.clone())),
        Value::Binary(bytes) => Some(Param::Hex(bytes.iter().map(|x| format!("{x:02x}")).collect())),
    }
}

/// The WHERE clause that finds the row: by key columns (index-friendly), or for a full old row by every column's
/// text form, limited to one physical row (duplicates are possible without a key).
fn identity_filter(b: &mut Builder, rel: &Relation, old: &TupleData, full_row: bool) -> Result<(), ApplyError> {
    let columns = rel.columns.iter().zip(&old.values).filter(|(c, _)| full_row || c.key);
    let mut conds = 0;
    if full_row {
        b.sql(&format!("ctid = (SELECT ctid FROM {} WHERE ", table(rel)));
    }
    for (c, v) in columns {
        let Some(value) = param(v) else { continue };
        b.sql(if conds == 0 { "" } else { " AND " });
        conds += 1;
        match value {
            Param::Null => b.sql(&format!("{} IS NULL", quote_ident(&c.name))),
            value if full_row => b.sql(&format!("{}::text = ", quote_ident(&c.name))).param(value),
            value => b.sql(&format!("{} = ", quote_ident(&c.name))).param(value),
        };
    }
    if full_row {
        b.sql(" LIMIT 1)");
    } else if conds == 0 {
        return Err(ApplyError::Shape(format!(
            "{} has no replica identity columns in the change",
            table(rel)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;
    use crate::pgoutput::{Column, Delete, Insert, Truncate, Update};

    const ORDERS: u32 = 16384;
    const EVENTS: u32 = 16390;
    const LINES: u32 = 16400;

    fn column(name: &str, key: bool, type_oid: u32) -> Column {
        Column {
            key,
            name: name.into(),
            type_oid,
            type_modifier: -1,
        }
    }

    fn relation(oid: u32, namespace: &str, name: &str, replica_identity: u8, columns: Vec<Column>) -> Relation {
        Relation {
            oid,
            namespace: namespace.into(),
            name: name.into(),
            replica_identity,
            columns,
        }
    }

    /// orders (id key, customer_id, note), events (replica identity full: id, payload, at), order_lines (a
    /// two-column key: order_id, line; qty).
    fn applier() -> Applier {
        let relations = [
            relation(
                ORDERS,
                "public",
                "orders",
                b'd',
                vec![
                    column("id", true, 20),
                    column("customer_id", false, 20),
                    column("note", false, 25),
                ],
            ),
            relation(
                EVENTS,
                "public",
                "events",
                b'f',
                vec![
                    column("id", false, 20),
                    column("payload", false, 3802),
                    column("at", false, 1184),
                ],
            ),
            relation(
                LINES,
                "sales",
                "order_lines",
                b'i',
                vec![
                    column("order_id", true, 20),
                    column("line", true, 23),
                    column("qty", false, 23),
                ],
            ),
        ];
        Applier::new(&relations.into_iter().map(|r| (r.oid, r)).collect())
    }

    fn text(v: &str) -> Value {
        Value::Text(v.into())
    }

    fn tuple(values: Vec<Value>) -> TupleData {
        TupleData { values }
    }

    fn sql(change: &Change) -> String {
        applier().statement(change).expect("renders")
    }

    #[test]
    fn an_insert_names_every_column_it_wrote() {
        let insert = Change::Insert(Insert {
            relation: ORDERS,
            new: tuple(vec![text("1"), text("42"), Value::Null]),
        });
        assert_eq!(
            sql(&insert),
            "INSERT INTO \"public\".\"orders\" (\"id\", \"customer_id\", \"note\") VALUES ('1', '42', NULL)"
        );
    }

    #[test]
    fn an_update_without_an_old_tuple_finds_the_row_by_its_new_key() {
        // The key did not change: no old tuple; an unchanged TOASTed value is left alone.
        let update = Change::Update(Update {
            relation: ORDERS,
            old: None,
            old_is_full_row: false,
            new: tuple(vec![text("1"), text("43"), Value::UnchangedToast]),
        });
        assert_eq!(
            sql(&update),
            "UPDATE \"public\".\"orders\" SET \"id\" = '1', \"customer_id\" = '43' WHERE \"id\" = '1'"
        );
    }

    #[test]
    fn an_update_of_the_key_finds_the_row_by_its_old_key() {
        let update = Change::Update(Update {
            relation: LINES,
            old: Some(tuple(vec![text("7"), text("1"), Value::Null])),
            old_is_full_row: false,
            new: tuple(vec![text("7"), text("2"), text("5")]),
        });
        assert_eq!(
            sql(&update),
            "UPDATE \"sales\".\"order_lines\" SET \"order_id\" = '7', \"line\" = '2', \"qty\" = '5' WHERE \
             \"order_id\" = '7' AND \"line\" = '1'"
        );
    }

    #[test]
    fn an_update_with_the_full_old_row_matches_one_physical_row_by_text() {
        let update = Change::Update(Update {
            relation: EVENTS,
            old: Some(tuple(vec![text("9"), Value::Null, Value::UnchangedToast])),
            old_is_full_row: true,
            new: tuple(vec![text("9"), text("{\"a\": 1}"), text("2025-01-15 10:00:00+00")]),
        });
        assert_eq!(
            sql(&update),
            "UPDATE \"public\".\"events\" SET \"id\" = '9', \"payload\" = '{\"a\": 1}', \"at\" = '2025-01-15 \
             10:00:00+00' WHERE ctid = (SELECT ctid FROM \"public\".\"events\" WHERE \"id\"::text = '9' AND \
             \"payload\" IS NULL LIMIT 1)"
        );
    }

    #[test]
    fn a_delete_finds_the_row_by_key_or_full_row() {
        let by_key = Change::Delete(Delete {
            relation: LINES,
            old: tuple(vec![text("7"), Value::Null, Value::Null]),
            old_is_full_row: false,
        });
        // A NULL in a key column (a unique index allows it) is matched with IS NULL.
        assert_eq!(
            sql(&by_key),
            "DELETE FROM \"sales\".\"order_lines\" WHERE \"order_id\" = '7' AND \"line\" IS NULL"
        );
        let full = Change::Delete(Delete {
            relation: EVENTS,
            old: tuple(vec![text("9"), text("{}"), text("2025-01-15 10:00:00+00")]),
            old_is_full_row: true,
        });
        assert_eq!(
            sql(&full),
            "DELETE FROM \"public\".\"events\" WHERE ctid = (SELECT ctid FROM \"public\".\"events\" WHERE \
             \"id\"::text = '9' AND \"payload\"::text = '{}' AND \"at\"::text = '2025-01-15 10:00:00+00' LIMIT 1)"
        );
    }

    #[test]
    fn a_change_without_identity_columns_is_refused() {
        let delete = Change::Delete(Delete {
            relation: EVENTS,
            old: tuple(vec![text("9"), text("{}"), text("now")]),
            old_is_full_row: false,
        });
        let err = applier().statement(&delete).expect_err("no key");
        assert!(matches!(err, ApplyError::Shape(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "\"public\".\"events\" has no replica identity columns in the change"
        );
        // A key sent only as an unchanged TOASTed value identifies nothing either.
        let update = Change::Update(Update {
            relation: ORDERS,
            old: None,
            old_is_full_row: false,
            new: tuple(vec![Value::UnchangedToast, text("1"), text("x")]),
        });
        assert!(matches!(applier().statement(&update), Err(ApplyError::Shape(_))));
    }

    #[test]
    fn truncate_lists_its_tables_and_options() {
        let t = |restart_identity, cascade| {
            sql(&Change::Truncate(Truncate {
                cascade,
                restart_identity,
                relations: vec![ORDERS, LINES],
            }))
        };
        assert_eq!(
            t(false, false),
            "TRUNCATE \"public\".\"orders\", \"sales\".\"order_lines\""
        );
        assert_eq!(
            t(true, false),
            "TRUNCATE \"public\".\"orders\", \"sales\".\"order_lines\" RESTART IDENTITY"
        );
        assert_eq!(
            t(false, true),
            "TRUNCATE \"public\".\"orders\", \"sales\".\"order_lines\" CASCADE"
        );
        assert_eq!(
            t(true, true),
            "TRUNCATE \"public\".\"orders\", \"sales\".\"order_lines\" RESTART IDENTITY CASCADE"
        );
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        let odd = relation(
            7,
            "My Schema",
            "Order\"s",
            b'd',
            vec![
                column("select", true, 25),
                column("Note", false, 25),
                column("raw", false, 17),
            ],
        );
        let applier = Applier::new(&[(7, odd)].into_iter().collect());
        let insert = Change::Insert(Insert {
            relation: 7,
            new: tuple(vec![
                text("it's"),
                text("C:\\temp\\x"),
                Value::Binary(vec![0x00, 0xab, 0xff]),
            ]),
        });
        assert_eq!(
            applier.statement(&insert).expect("renders"),
            "INSERT INTO \"My Schema\".\"Order\"\"s\" (\"select\", \"Note\", \"raw\") VALUES ('it''s', \
             E'C:\\\\temp\\\\x', '\\x00abff')"
        );
        let delete = Change::Delete(Delete {
            relation: 7,
            old: tuple(vec![text("'; DROP TABLE x; --"), Value::Null, Value::Null]),
            old_is_full_row: false,
        });
        assert_eq!(
            applier.statement(&delete).expect("renders"),
            "DELETE FROM \"My Schema\".\"Order\"\"s\" WHERE \"select\" = '''; DROP TABLE x; --'"
        );
    }

    #[test]
    fn a_change_for_an_unknown_relation_is_an_error() {
        let insert = Change::Insert(Insert {
            relation: 99,
            new: tuple(vec![text("1")]),
        });
        let err = applier().statement(&insert).expect_err("unknown");
        assert!(matches!(err, ApplyError::UnknownRelation(99)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "change for unknown relation oid 99 (no Relation message seen)"
        );
        let truncate = Change::Truncate(Truncate {
            cascade: false,
            restart_identity: false,
            relations: vec![ORDERS, 98],
        });
        assert!(matches!(
            applier().statement(&truncate),
            Err(ApplyError::UnknownRelation(98))
        ));
    }

    fn transaction(changes: Vec<Change>) -> Transaction {
        Transaction {
            xid: 731,
            commit_lsn: Lsn(0x1A2B_3C00),
            end_lsn: Lsn(0x1A2B_3C40),
            commit_time: 0,
            changes,
        }
    }

    #[test]
    fn a_transaction_is_one_batch_between_begin_and_commit() {
        let tx = transaction(vec![
            Change::Insert(Insert {
                relation: ORDERS,
                new: tuple(vec![text("2"), text("42"), text("gift")]),
            }),
            Change::Delete(Delete {
                relation: ORDERS,
                old: tuple(vec![text("1"), Value::Null, Value::Null]),
                old_is_full_row: false,
            }),
        ]);
        assert_eq!(
            applier().transaction_sql(&tx).expect("renders"),
            "BEGIN;\nINSERT INTO \"public\".\"orders\" (\"id\", \"customer_id\", \"note\") VALUES ('2', '42', \
             'gift');\nDELETE FROM \"public\".\"orders\" WHERE \"id\" = '1';\nCOMMIT;"
        );
        assert_eq!(
            applier().transaction_sql(&transaction(Vec::new())).expect("empty"),
            "BEGIN;\nCOMMIT;"
        );
        // One change that cannot be rendered fails the whole transaction.
        let bad = transaction(vec![Change::Insert(Insert {
            relation: 99,
            new: tuple(vec![text("1")]),
        })]);
        assert!(matches!(
            applier().transaction_sql(&bad),
            Err(ApplyError::UnknownRelation(99))
        ));
    }

    #[test]
    fn later_relation_messages_replace_earlier_ones() {
        let mut applier = Applier::default();
        let insert = Change::Insert(Insert {
            relation: 5,
            new: tuple(vec![text("1"), text("x")]),
        });
        assert!(matches!(
            applier.statement(&insert),
            Err(ApplyError::UnknownRelation(5))
        ));
        let v1 = relation(5, "public", "t", b'd', vec![column("id", true, 20)]);
        applier.update_relations(&[(5, v1)].into_iter().collect());
        assert_eq!(
            applier.statement(&insert).expect("known"),
            "INSERT INTO \"public\".\"t\" (\"id\") VALUES ('1')"
        );
        let v2 = relation(
            5,
            "public",
            "t",
            b'd',
            vec![column("id", true, 20), column("added", false, 25)],
        );
        applier.update_relations(&[(5, v2)].into_iter().collect());
        assert_eq!(
            applier.statement(&insert).expect("known"),
            "INSERT INTO \"public\".\"t\" (\"id\", \"added\") VALUES ('1', 'x')"
        );
    }

    #[test]
    fn decoded_messages_render_like_constructed_ones() {
        // A Relation and an Insert as pgoutput sends them.
        let mut r = vec![b'R'];
        r.extend_from_slice(&ORDERS.to_be_bytes());
        for s in ["public", "orders"] {
            r.extend_from_slice(s.as_bytes());
            r.push(0);
        }
        r.push(b'd');
        r.extend_from_slice(&2u16.to_be_bytes());
        for (flags, name, oid) in [(1u8, "id", 20u32), (0, "note", 25)] {
            r.push(flags);
            r.extend_from_slice(name.as_bytes());
            r.push(0);
            r.extend_from_slice(&oid.to_be_bytes());
            r.extend_from_slice(&(-1i32).to_be_bytes());
        }
        let mut i = vec![b'I'];
        i.extend_from_slice(&ORDERS.to_be_bytes());
        i.push(b'N');
        i.extend_from_slice(&2u16.to_be_bytes());
        i.push(b't');
        i.extend_from_slice(&1u32.to_be_bytes());
        i.push(b'5');
        i.push(b'n');
        let (Ok(crate::pgoutput::Message::Relation(rel)), Ok(crate::pgoutput::Message::Insert(ins))) =
            (crate::pgoutput::decode(&r), crate::pgoutput::decode(&i))
        else {
            panic!("both decode")
        };
        let applier = Applier::new(&[(rel.oid, rel)].into_iter().collect());
        assert_eq!(
            applier.statement(&Change::Insert(ins)).expect("renders"),
            "INSERT INTO \"public\".\"orders\" (\"id\", \"note\") VALUES ('5', NULL)"
        );
    }
}

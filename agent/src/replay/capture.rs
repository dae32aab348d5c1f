//! Reading a capture slot on the sandbox with `pg_logical_slot_{peek,get}_binary_changes` on an ordinary
//! connection, and assembling the pgoutput messages into whole transactions.

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::lsn::Lsn;
use crate::pg::PgError;
use crate::pgoutput::{self, DecodeError, Message, Relation};

/// One row change of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Insert(pgoutput::Insert),
    Update(pgoutput::Update),
    Delete(pgoutput::Delete),
    Truncate(pgoutput::Truncate),
}

/// A committed transaction as captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub xid: u32,
    pub commit_lsn: Lsn,
    /// Confirm this position once the transaction is applied.
    pub end_lsn: Lsn,
    pub commit_time: i64,
    pub changes: Vec<Change>,
}

/// Errors while capturing.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error("at {lsn}: {source}")]
    Decode {
        lsn: Lsn,
        #[source]
        source: DecodeError,
    },
    #[error("at {lsn}: {detail}")]
    Stream { lsn: Lsn, detail: String },
}

/// Reads a capture slot and keeps the relation descriptions it has seen.
pub struct CaptureReader {
    client: Client,
    slot: String,
    publication: String,
    relations: HashMap<u32, Relation>,
}

impl CaptureReader {
    pub fn new(client: Client, slot: impl Into<String>, publication: impl Into<String>) -> Self {
        CaptureReader {
            client,
            slot: slot.into(),
            publication: publication.into(),
            relations: HashMap::new(),
        }
    }

    /// Relations seen so far, by OID on the sandbox.
    pub fn relations(&self) -> &HashMap<u32, Relation> {
        &self.relations
    }

    /// Reads transactions committed up to `upto` (all when `None`), at most about `max_changes` changes. With
    /// `consume` the slot advances past them; otherwise they are only peeked.
    pub async fn read(
        &mut self,
        upto: Option<Lsn>,
        max_changes: Option<i32>,
        consume: bool,
    ) -> Result<Vec<Transaction>, CaptureError> {
        self.read_with(upto, max_changes, consume, true).await
    }

    /// As [`CaptureReader::read`]; `flush` first makes every change the sandbox has applied visible to decoding
    /// (needed for an exact end; a live tail can skip it, the sandbox's WAL writer flushes every 10 ms).
    pub async fn read_with(
        &mut self,
        upto: Option<Lsn>,
        max_changes: Option<i32>,
        consume: bool,
        flush: bool,
    ) -> Result<Vec<Transaction>, CaptureError> {
        let rows = self.read_raw(upto, max_changes, consume, flush).await?;
        let mut assembler = Assembler::default();
        let mut out = Vec::new();
        for (lsn, data) in rows {
            if let Some(tx) = assembler.push(lsn, &data, &mut self.relations)? {
                out.push(tx);
            }
        }
        Ok(out)
    }

    /// The pgoutput messages of whole transactions committed up to `upto`, as the slot gives them (what a
    /// recording stores); `consume` and `flush` as for [`CaptureReader::read_with`].
    pub async fn read_raw(
        &mut self,
        upto: Option<Lsn>,
        max_changes: Option<i32>,
        consume: bool,
        flush: bool,
    ) -> Result<Vec<(Lsn, Vec<u8>)>, CaptureError> {
        // Logical decoding reads only flushed WAL, and the apply worker commits asynchronously: a transaction with
        // an xid committed synchronously here flushes everything before it, so the read sees every applied change.
        if flush {
            self.client
                .batch_execute("SET synchronous_commit = on; SELECT pg_current_xact_id();")
                .await
                .map_err(PgError::sql("flushing the sandbox's WAL"))?;
        }
        let function = if consume {
            "pg_logical_slot_get_binary_changes"
        } else {
            "pg_logical_slot_peek_binary_changes"
        };
        let sql = format!(
            "SELECT lsn::text, data FROM {function}($1, $2::text::pg_lsn, $3, 'proto_version', '1', \
             'publication_names', $4)"
        );
        let upto_text = upto.map(|l| l.to_string());
        let rows = self
            .client
            .query(&sql, &[&self.slot, &upto_text, &max_changes, &self.publication])
            .await
            .map_err(PgError::sql(format!("reading capture slot {}", self.slot)))?;
        Ok(rows
            .iter()
            .map(|row| (row.get::<_, String>(0).parse().unwrap_or_default(), row.get(1)))
            .collect())
    }
}

/// Assembles pgoutput messages into whole transactions, learning relations as they come.
#[derive(Debug, Default)]
pub struct Assembler {
    current: Option<Transaction>,
}

impl Assembler {
    /// Takes one message; returns the transaction it completes, if it is a Commit.
    pub fn push(
        &mut self,
        lsn: Lsn,
        data: &[u8],
        relations: &mut HashMap<u32, Relation>,
    ) -> Result<Option<Transaction>, CaptureError> {
        let message = pgoutput::decode(data).map_err(|source| CaptureError::Decode { lsn, source })?;
        let current = &mut self.current;
        match message {
            Message::Begin(b) => {
                *current = Some(Transaction {
                    xid: b.xid,
                    commit_lsn: b.final_lsn,
                    end_lsn: Lsn(0),
                    commit_time: b.commit_time,
                    changes: Vec::new(),
                })
            }
            Message::Commit(c) => {
                let mut tx = current.take().ok_or(CaptureError::Stream {
                    lsn,
                    detail: "Commit without Begin".into(),
                })?;
                tx.end_lsn = c.end_lsn;
                tx.commit_lsn = c.commit_lsn;
                return Ok(Some(tx));
            }
            Message::Relation(r) => {
                relations.insert(r.oid, r);
            }
            Message::Insert(i) => push(current, lsn, Change::Insert(i))?,
            Message::Update(u) => push(current, lsn, Change::Update(u))?,
            Message::Delete(d) => push(current, lsn, Change::Delete(d))?,
            Message::Truncate(t) => push(current, lsn, Change::Truncate(t))?,
            Message::Origin(_) | Message::Type(_) | Message::Message(_) => {}
        }
        Ok(None)
    }
}

fn push(current: &mut Option<Transaction>, lsn: Lsn, change: Change) -> Result<(), CaptureError> {
    match current {
        Some(tx) => {
            tx.changes.push(change);
            Ok(())
        }
        None => Err(CaptureError::Stream {
            lsn,
            detail: "a change outside a transaction".into(),
        }),
    }
}

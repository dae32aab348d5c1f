//! One replay worker's session on the fork. A transaction goes out in one round trip: BEGIN, each change's
//! prepared statement and COMMIT are sent without waiting for each reply (tokio-postgres pipelines requests
//! polled together), and the replies are read after. A statement that fails aborts the transaction, the ones
//! after it are refused by the server (`25P02`) and the COMMIT rolls back, so the first failure names the table,
//! the kind and the SQLSTATE exactly as one statement per round trip would. Statements are prepared once per
//! shape (relation, columns written, NULLs in the identity) and kept for the session. A fork is thrown away, so
//! its commits do not wait for their WAL to reach the disk (`synchronous_commit = off`): a crash of the fork
//! loses nothing anyone needs, and a worker is not held back by a disk flush per transaction that production's
//! group commit spreads over many writers.

use std::collections::HashMap;

use futures_util::future::join_all;
use tokio_postgres::{Client, Statement};

use super::record::{WriteFailure, WriteKind};
use super::statement::{Shaped, TextParam};
use crate::pg::PgError;

/// One change of a transaction, ready to send.
#[derive(Debug, Clone)]
pub(super) struct Step {
    pub statement: Shaped,
    pub table: String,
    pub kind: WriteKind,
}

/// SQLSTATEs a statement prepared before a schema change can give where a fresh one would not (its parameter
/// types were fixed when it was prepared): the transaction is retried once with statements prepared anew.
const STALE_PLAN: [&str; 3] = ["42804", "0A000", "26000"];

pub(super) struct Session {
    client: Client,
    pub pid: i32,
    begin: Statement,
    commit: Statement,
    prepared: HashMap<String, Statement>,
}

impl Session {
    pub async fn open(client: Client) -> Result<Self, PgError> {
        client
            .batch_execute("SET synchronous_commit = off")
            .await
            .map_err(PgError::sql("replay worker settings"))?;
        let pid: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map_err(PgError::sql("replay worker"))?
            .get(0);
        let begin = client.prepare("BEGIN").await.map_err(PgError::sql("preparing BEGIN"))?;
        let commit = client
            .prepare("COMMIT")
            .await
            .map_err(PgError::sql("preparing COMMIT"))?;
        Ok(Session {
            client,
            pid,
            begin,
            commit,
            prepared: HashMap::new(),
        })
    }

    /// Applies one transaction; its first failure, if any.
    pub async fn apply(&mut self, steps: &[Step]) -> Option<WriteFailure> {
        let reused = steps.iter().any(|s| self.prepared.contains_key(s.statement.sql()));
        match self.attempt(steps).await {
            Some(f) if reused && STALE_PLAN.contains(&f.sqlstate.as_str()) => {
                self.prepared.clear();
                self.attempt(steps).await
            }
            outcome => outcome,
        }
    }

    /// Prepares the shapes not seen yet, all at once; a statement the fork cannot prepare (a dropped column,
    /// say) is the transaction's failure.
    async fn prepare(&mut self, steps: &[Step]) -> Option<WriteFailure> {
        let mut missing: Vec<&Step> = Vec::new();
        for step in steps {
            let sql = step.statement.sql();
            if !self.prepared.contains_key(sql) && !missing.iter().any(|m| m.statement.sql() == sql) {
                missing.push(step);
            }
        }
        let client = &self.client;
        let results = join_all(missing.iter().map(|s| client.prepare(s.statement.sql()))).await;
        for (step, result) in missing.into_iter().zip(results) {
            match result {
                Ok(statement) => {
                    self.prepared.insert(step.statement.sql().to_string(), statement);
                }
                Err(e) => return Some(statement_failure(step, &e)),
            }
        }
        None
    }

    async fn attempt(&mut self, steps: &[Step]) -> Option<WriteFailure> {
        if let Some(failure) = self.prepare(steps).await {
            return Some(failure);
        }
        let mut sends = Vec::with_capacity(steps.len() + 2);
        sends.push(self.send(&self.begin, Vec::new()));
        for step in steps {
            let Some(statement) = self.prepared.get(step.statement.sql()) else {
                return Some(WriteFailure {
                    message: "the statement was not prepared".into(),
                    ..statement_failure_of(step)
                });
            };
            let params: Vec<TextParam<'_>> = step.statement.params().iter().map(|p| p.as_text()).collect();
            sends.push(self.send(statement, params));
        }
        sends.push(self.send(&self.commit, Vec::new()));
        let mut results = join_all(sends).await.into_iter();
        if let Some(Err(e)) = results.next() {
            return Some(edge_failure(WriteKind::Begin, &e));
        }
        let mut failure = None;
        for (step, result) in steps.iter().zip(results.by_ref()) {
            if let (None, Err(e)) = (&failure, result) {
                failure = Some(statement_failure(step, &e));
            }
        }
        match (failure, results.next()) {
            (Some(f), _) => Some(f),
            (None, Some(Err(e))) => Some(edge_failure(WriteKind::Commit, &e)),
            (None, _) => None,
        }
    }

    async fn send(&self, statement: &Statement, params: Vec<TextParam<'_>>) -> Result<u64, tokio_postgres::Error> {
        self.client.execute_raw(statement, params).await
    }
}

fn statement_failure(step: &Step, e: &tokio_postgres::Error) -> WriteFailure {
    WriteFailure {
        sqlstate: code(e),
        message: e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
        ..statement_failure_of(step)
    }
}

/// A failure of `step` (its table, kind and sample), without a cause yet.
fn statement_failure_of(step: &Step) -> WriteFailure {
    WriteFailure {
        table: step.table.clone(),
        kind: step.kind,
        sqlstate: String::new(),
        message: String::new(),
        sample: step.statement.literal().chars().take(300).collect(),
    }
}

fn edge_failure(kind: WriteKind, e: &tokio_postgres::Error) -> WriteFailure {
    WriteFailure {
        table: String::new(),
        kind,
        sqlstate: code(e),
        message: crate::pg::describe(e),
        sample: String::new(),
    }
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

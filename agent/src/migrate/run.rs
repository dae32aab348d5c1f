//! Running a migration on one session, statement by statement, timed, with a per-statement timeout and a
//! deadline for the whole run. The session's pid is known before the first statement so that the lock sampler can
//! attribute locks and waits to it.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use super::{Kind, Plan, kind};
use crate::pg::describe;

/// What happened to one statement.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatementOutcome {
    pub index: usize,
    pub line: usize,
    pub sql: String,
    /// Milliseconds since the migration started.
    pub started_ms: f64,
    pub duration_ms: f64,
    pub ok: bool,
    pub sqlstate: Option<String>,
    pub error: Option<String>,
    /// True when the statement was stopped by the statement timeout or the run's deadline.
    pub timed_out: bool,
    #[serde(skip)]
    pub started_at: Option<Instant>,
    #[serde(skip)]
    pub ended_at: Option<Instant>,
}

/// The whole migration.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationOutcome {
    pub pid: i32,
    pub ok: bool,
    pub duration_ms: f64,
    pub statements: Vec<StatementOutcome>,
    /// Statements not run because an earlier one failed.
    pub skipped: usize,
}

/// Runs `plan` on `client` (whose backend pid is `pid`). `statement_timeout` applies to each statement;
/// `deadline` to the whole run (then the running statement is cancelled).
pub async fn run(
    client: &Client,
    pid: i32,
    plan: &Plan,
    statement_timeout: Option<Duration>,
    deadline: Option<Instant>,
) -> MigrationOutcome {
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let mut ok = true;
    if let Some(t) = statement_timeout {
        let _ = client
            .batch_execute(&format!("SET statement_timeout = {}", t.as_millis()))
            .await;
    }
    let mut statements: Vec<(usize, String)> = plan.statements.iter().map(|s| (s.line, s.sql.clone())).collect();
    if plan.single_transaction {
        statements.insert(0, (0, "BEGIN".into()));
        statements.push((0, "COMMIT".into()));
    }
    let total = statements.len();
    let mut in_transaction = false;
    for (index, (line, sql)) in statements.into_iter().enumerate() {
        let t0 = Instant::now();
        let mut by_deadline = false;
        let result = {
            let fut = client.batch_execute(&sql);
            tokio::pin!(fut);
            let remaining = deadline
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::MAX);
            tokio::select! {
                r = &mut fut => r,
                _ = tokio::time::sleep(remaining) => {
                    by_deadline = true;
                    let _ = client.cancel_token().cancel_query(tokio_postgres::NoTls).await;
                    fut.await
                }
            }
        };
        let duration = t0.elapsed();
        let mut outcome = StatementOutcome {
            index,
            line,
            sql: sql.clone(),
            started_ms: t0.duration_since(started).as_secs_f64() * 1000.0,
            duration_ms: duration.as_secs_f64() * 1000.0,
            ok: true,
            sqlstate: None,
            error: None,
            timed_out: false,
            started_at: Some(t0),
            ended_at: Some(Instant::now()),
        };
        match kind(&sql) {
            Kind::Begin => in_transaction = true,
            Kind::Commit | Kind::Rollback => in_transaction = false,
            _ => {}
        }
        if let Err(e) = result {
            let sqlstate = e.code().map(|c| c.code().to_string());
            outcome.timed_out = by_deadline || sqlstate.as_deref() == Some("57014");
            outcome.ok = false;
            outcome.error = Some(if by_deadline {
                format!("the run's deadline passed: {}", describe(&e))
            } else {
                describe(&e)
            });
            outcome.sqlstate = sqlstate;
            outcomes.push(outcome);
            ok = false;
            if in_transaction {
                let _ = client.batch_execute("ROLLBACK").await;
            }
            break;
        }
        outcomes.push(outcome);
    }
    let skipped = total - outcomes.len();
    let _ = pid;
    MigrationOutcome {
        pid,
        ok,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        statements: outcomes,
        skipped,
    }
}

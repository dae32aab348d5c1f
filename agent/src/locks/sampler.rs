//! The lock sampler: one connection to the fork, polling at a fixed interval until stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::pg::PgError;

/// One row of one sample: a lock (held or awaited) of a session.
#[derive(Debug, Clone)]
pub struct LockSample {
    pub at: Instant,
    pub pid: i32,
    pub application_name: String,
    /// Relation name (`schema.table`), or the lock type for non-relation locks.
    pub target: String,
    pub is_relation: bool,
    pub mode: String,
    pub granted: bool,
    /// How long this lock had been awaited at the sample (from `pg_locks.waitstart`).
    pub waited: Option<Duration>,
    pub blocked_by: Vec<i32>,
    pub query: String,
}

/// A running sampler.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<(Vec<LockSample>, usize), PgError>>,
}

const SAMPLE_SQL: &str = "\
SELECT l.pid, coalesce(a.application_name, ''), \
       CASE WHEN l.locktype = 'relation' THEN coalesce(n.nspname || '.' || c.relname, l.relation::text) \
            ELSE l.locktype END, \
       l.locktype = 'relation', l.mode, l.granted, \
       extract(epoch FROM clock_timestamp() - l.waitstart)::float8, \
       pg_blocking_pids(l.pid), coalesce(left(a.query, 200), '') \
FROM pg_locks l \
JOIN pg_stat_activity a ON a.pid = l.pid \
LEFT JOIN pg_class c ON c.oid = l.relation \
LEFT JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE l.pid <> pg_backend_pid() AND a.datname = current_database() \
  AND l.locktype IN ('relation', 'transactionid', 'tuple', 'object', 'advisory') \
  AND (l.locktype = 'relation' AND (c.oid IS NULL OR n.nspname NOT IN ('pg_catalog', 'information_schema')) \
       OR NOT l.granted)";

impl Sampler {
    /// Starts sampling on `client` every `interval`.
    pub fn start(client: Client, interval: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = tokio::spawn(async move {
            let statement = client
                .prepare(SAMPLE_SQL)
                .await
                .map_err(PgError::sql("preparing the lock sampler"))?;
            let mut samples = Vec::new();
            let mut rounds = 0usize;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !flag.load(Ordering::Relaxed) {
                tick.tick().await;
                let asked = Instant::now();
                let rows = match client.query(&statement, &[]).await {
                    Ok(rows) => rows,
                    Err(e) if client.is_closed() => {
                        return Err(PgError::Sql {
                            context: "lock sampler".into(),
                            source: e,
                        });
                    }
                    Err(_) => continue,
                };
                // The server read pg_locks somewhere between asking and answering: take the midpoint.
                let at = asked + asked.elapsed() / 2;
                rounds += 1;
                for r in rows {
                    samples.push(LockSample {
                        at,
                        pid: r.get(0),
                        application_name: r.get(1),
                        target: r.get::<_, Option<String>>(2).unwrap_or_default(),
                        is_relation: r.get(3),
                        mode: r.get(4),
                        granted: r.get(5),
                        waited: r
                            .get::<_, Option<f64>>(6)
                            .filter(|s| *s >= 0.0)
                            .map(Duration::from_secs_f64),
                        blocked_by: r.get(7),
                        query: r.get(8),
                    });
                }
            }
            Ok((samples, rounds))
        });
        Sampler { stop, handle }
    }

    /// Stops and returns every sample and the number of sampling rounds.
    pub async fn stop(self) -> Result<(Vec<LockSample>, usize), PgError> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .await
            .map_err(|e| PgError::Config(format!("lock sampler failed: {e}")))?
    }
}

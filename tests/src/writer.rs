//! A steady application writer on the sample schema: a mix of INSERT, UPDATE and DELETE transactions at a target
//! rate, on its own connection, until stopped. Used by the demo, the tests and the benchmark.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

use understudy::pg::PgError;

/// Counters and switches shared with the writer task.
#[derive(Debug, Default)]
pub struct WriterState {
    pub transactions: AtomicU64,
    pub errors: AtomicU64,
    stop: AtomicBool,
    /// Asked to hold still (between transactions) until resumed.
    hold: AtomicBool,
    /// Holding still: no transaction is open.
    held: AtomicBool,
    /// Set once the source has the `orders.coupon` column: the writer then fills it.
    pub write_coupon: AtomicBool,
}

/// A running writer.
pub struct Writer {
    pub state: Arc<WriterState>,
    handle: JoinHandle<Result<(), PgError>>,
}

impl Writer {
    /// Starts writing through `client` at about `per_second` transactions a second (0: as fast as it can).
    pub fn start(client: tokio_postgres::Client, per_second: u32) -> Self {
        let state = Arc::new(WriterState::default());
        let shared = Arc::clone(&state);
        let handle = tokio::spawn(async move { write_loop(client, per_second, shared).await });
        Writer { state, handle }
    }

    pub fn transactions(&self) -> u64 {
        self.state.transactions.load(Ordering::Relaxed)
    }

    /// Holds still after the current transaction, for a comparison that needs the source quiet; returns once no
    /// transaction is open.
    pub async fn pause(&self) {
        self.state.hold.store(true, Ordering::SeqCst);
        while !self.state.held.load(Ordering::SeqCst) && !self.handle.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Writes again after [`Writer::pause`].
    pub fn resume(&self) {
        self.state.hold.store(false, Ordering::SeqCst);
    }

    /// Stops after the current transaction and returns the number committed.
    pub async fn stop(self) -> Result<u64, PgError> {
        self.state.stop.store(true, Ordering::Relaxed);
        match self.handle.await {
            Ok(result) => result?,
            Err(e) => return Err(PgError::Config(format!("writer task failed: {e}"))),
        }
        Ok(self.state.transactions.load(Ordering::Relaxed))
    }
}

async fn write_loop(client: tokio_postgres::Client, per_second: u32, state: Arc<WriterState>) -> Result<(), PgError> {
    let pause = if per_second == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(1.0 / f64::from(per_second))
    };
    let mut n: i64 = 0;
    while !state.stop.load(Ordering::Relaxed) {
        if state.hold.load(Ordering::SeqCst) {
            state.held.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        state.held.store(false, Ordering::SeqCst);
        if state.hold.load(Ordering::SeqCst) {
            // `pause` may have read `held` before it was cleared: look again before writing.
            continue;
        }
        n += 1;
        let coupon = state.write_coupon.load(Ordering::Relaxed);
        let sql = match n % 10 {
            0 => "BEGIN; DELETE FROM orders WHERE id = (SELECT min(id) FROM orders); COMMIT;".to_string(),
            1 | 2 => format!(
                "BEGIN; UPDATE orders SET status = 'paid', total_cents = total_cents + 1 WHERE id = \
                 (SELECT max(id) - {} FROM orders); INSERT INTO events (kind, payload) VALUES ('pay', \
                 jsonb_build_object('n', {n})); COMMIT;",
                n % 50
            ),
            3 => format!(
                "UPDATE customers SET email = 'changed' || {n} || '@example.com' WHERE id = 1 + {n} % \
                 (SELECT count(*) FROM customers WHERE id < 1000);"
            ),
            _ if coupon => format!(
                "INSERT INTO orders (customer_id, total_cents, note, coupon) VALUES (1 + {n} % 10, {n} % 9999, \
                 'w{n}', 'C{n}');"
            ),
            _ => format!(
                "INSERT INTO orders (customer_id, total_cents, note) VALUES (1 + {n} % 10, {n} % 9999, 'w{n}');"
            ),
        };
        match client.batch_execute(&sql).await {
            Ok(()) => {
                state.transactions.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                state.errors.fetch_add(1, Ordering::Relaxed);
                let _ = client.batch_execute("ROLLBACK").await;
                if client.is_closed() {
                    return Err(PgError::Sql {
                        context: "writer".into(),
                        source: e,
                    });
                }
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(())
}

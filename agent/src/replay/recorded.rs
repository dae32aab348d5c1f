//! Replay of a recording: the stream file read back transaction by transaction and handed to the dispatcher at
//! the recorded pace, N times faster, or as fast as the fork takes them. A transaction that committed `t` after
//! the window's first is due `t / N` after the replay started; with `max` every transaction is due at once.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::Transaction;
use super::record::{Batch, ReplayError, Signal};
use super::stream::StreamReader;
use crate::lsn::Lsn;
use crate::pgoutput::Relation;

/// How fast a recording is replayed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Speed {
    /// N× the recorded pace (1 is the pace production had).
    Times(f64),
    /// As fast as the fork applies it.
    Max,
}

impl Speed {
    /// When a transaction `offset` into the window is due, for a replay that started at `t0`.
    pub fn due(self, t0: Instant, offset: Duration) -> Instant {
        match self {
            Speed::Times(n) => t0 + offset.div_f64(n),
            Speed::Max => t0,
        }
    }
}

impl std::fmt::Display for Speed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Speed::Times(n) => write!(f, "{n}"),
            Speed::Max => f.write_str("max"),
        }
    }
}

/// A `--speed` that is not a number above 0 or `max`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "speed {0:?} is not a number above 0 or max (1 is the recorded pace, 2 twice as fast, max as fast as the fork allows)"
)]
pub struct SpeedError(pub String);

impl FromStr for Speed {
    type Err = SpeedError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("max") {
            return Ok(Speed::Max);
        }
        let text = s.trim().trim_end_matches(['x', 'X']);
        match text.parse::<f64>() {
            Ok(n) if n.is_finite() && n > 0.0 && n <= 1000.0 => Ok(Speed::Times(n)),
            _ => Err(SpeedError(s.to_string())),
        }
    }
}

/// Transactions read but not yet applied, at most (the rest of the stream waits in its file).
const READ_AHEAD: usize = 20_000;

/// Transactions read together and the relations they were read with.
type Group = (Arc<HashMap<u32, Relation>>, Vec<Transaction>);

/// Reads up to `n` transactions on a blocking thread, grouped where the relations changed between them.
async fn read_chunk(mut reader: StreamReader, n: usize) -> Result<(StreamReader, Vec<Group>), ReplayError> {
    tokio::task::spawn_blocking(move || {
        let mut groups: Vec<Group> = Vec::new();
        let mut seen = u64::MAX;
        for _ in 0..n {
            let Some(tx) = reader.next_transaction()? else { break };
            if reader.relation_messages != seen || groups.is_empty() {
                seen = reader.relation_messages;
                groups.push((Arc::new(reader.relations().clone()), Vec::new()));
            }
            if let Some(last) = groups.last_mut() {
                last.1.push(tx);
            }
        }
        Ok((reader, groups))
    })
    .await
    .map_err(|e| ReplayError::Task(e.to_string()))?
}

/// Shared with the replay's owner.
pub(super) struct Shared {
    pub backlog: Arc<Mutex<usize>>,
    pub last_read: Arc<Mutex<Lsn>>,
    pub held: watch::Sender<bool>,
    /// How far into the recorded window the replay has handed transactions out.
    pub offset: watch::Sender<Duration>,
    /// Set when the whole stream was handed out.
    pub ended: watch::Sender<bool>,
}

/// Hands the stream's transactions to the dispatcher when due, until its end or a stop.
pub(super) async fn recorded_loop(
    mut reader: StreamReader,
    tx: mpsc::UnboundedSender<Batch>,
    mut stop: watch::Receiver<Signal>,
    speed: Speed,
    shared: Shared,
) -> Result<(), ReplayError> {
    let t0 = Instant::now();
    let mut first: Option<i64> = None;
    loop {
        // At `max` the stream is read ahead of the fork by at most this many transactions.
        while shared.backlog.lock().map(|b| *b).unwrap_or(0) > READ_AHEAD {
            if *stop.borrow() == Signal::Stop {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (back, groups) = read_chunk(reader, 512).await?;
        reader = back;
        if groups.is_empty() {
            let _ = shared.ended.send(true);
            return Ok(());
        }
        for (relations, transactions) in groups {
            let mut due_now = Vec::new();
            for t in transactions {
                let start = *first.get_or_insert(t.commit_time);
                let offset = Duration::from_micros(t.commit_time.saturating_sub(start).max(0) as u64);
                let due = speed.due(t0, offset);
                if due > Instant::now() {
                    send(&tx, &shared, std::mem::take(&mut due_now), &relations)?;
                    if !wait_until(due, &mut stop, &shared).await {
                        return Ok(());
                    }
                }
                if let Signal::StopAt(upto) = *stop.borrow()
                    && t.end_lsn > upto
                {
                    send(&tx, &shared, due_now, &relations)?;
                    let _ = shared.ended.send(true);
                    return Ok(());
                }
                let _ = shared.offset.send(offset);
                due_now.push(t);
            }
            send(&tx, &shared, due_now, &relations)?;
        }
    }
}

/// Waits until `due` while following the owner's signal; false when told to stop now.
async fn wait_until(due: Instant, stop: &mut watch::Receiver<Signal>, shared: &Shared) -> bool {
    loop {
        match *stop.borrow_and_update() {
            Signal::Stop => return false,
            Signal::Hold => {
                let _ = shared.held.send(true);
            }
            Signal::Run | Signal::StopAt(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => return true,
            changed = stop.changed() => if changed.is_err() { return false },
        }
    }
}

fn send(
    tx: &mpsc::UnboundedSender<Batch>,
    shared: &Shared,
    batch: Vec<Transaction>,
    relations: &Arc<HashMap<u32, Relation>>,
) -> Result<(), ReplayError> {
    let Some(last) = batch.last() else { return Ok(()) };
    if let Ok(mut l) = shared.last_read.lock() {
        *l = last.end_lsn;
    }
    if let Ok(mut b) = shared.backlog.lock() {
        *b += batch.len();
    }
    tx.send((batch, Arc::clone(relations), Instant::now()))
        .map_err(|_| ReplayError::Task("the dispatcher stopped".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_parse_and_pace() {
        assert_eq!("1".parse(), Ok(Speed::Times(1.0)));
        assert_eq!("2x".parse(), Ok(Speed::Times(2.0)));
        assert_eq!("MAX".parse(), Ok(Speed::Max));
        for bad in ["0", "-1", "fast", "inf", "NaN", ""] {
            let err = bad.parse::<Speed>().expect_err(bad);
            assert!(err.to_string().contains("not a number above 0 or max"), "{err}");
        }
        let t0 = Instant::now();
        assert_eq!(
            Speed::Times(2.0).due(t0, Duration::from_secs(4)),
            t0 + Duration::from_secs(2)
        );
        assert_eq!(
            Speed::Times(1.0).due(t0, Duration::from_secs(4)),
            t0 + Duration::from_secs(4)
        );
        assert_eq!(Speed::Max.due(t0, Duration::from_secs(4)), t0);
    }
}

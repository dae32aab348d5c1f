//! Live replay: the capture slot is tailed on the sandbox (so the pace follows production live) and each
//! transaction is applied to the fork by one of several worker sessions, in commit order per row (module
//! `dispatch`), each in one round trip (module `session`). A backlog that builds while a lock is held is applied
//! as fast as the fork allows once it is released. Every transaction is timed; failures keep their table,
//! statement kind and SQLSTATE.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::capture::CaptureReader;
use super::dispatch::dispatch_loop;
use super::record::{Batch, Signal};
pub use super::record::{ReplayError, WriteFailure, WriteKind, WriteRecord};
use super::recorded::{self, Speed};
use super::session::Session;
use super::stream::StreamReader;
use crate::lsn::Lsn;
use crate::pg::connect::connect_plain;

/// Where to read and where to write.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// The sandbox database holding the capture slot.
    pub sandbox_conninfo: String,
    pub capture_slot: String,
    pub publication: String,
    pub fork_conninfo: String,
    pub workers: usize,
    pub poll_interval: Duration,
}

/// A task aborted when its owner drops it: a replay dropped mid-way (a cancelled dry-run) stops reading the
/// capture slot and writing to the fork at once, so that both can be removed.
struct Task<T>(Option<JoinHandle<T>>);

impl<T> Task<T> {
    fn spawn(future: impl std::future::Future<Output = T> + Send + 'static) -> Self
    where
        T: Send + 'static,
    {
        Task(Some(tokio::spawn(future)))
    }

    fn into_handle(mut self) -> Option<JoinHandle<T>> {
        self.0.take()
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// A running replay.
pub struct LiveReplay {
    stop: watch::Sender<Signal>,
    reader: Task<Result<(), ReplayError>>,
    dispatcher: Task<Result<(), ReplayError>>,
    records: Arc<Mutex<Vec<WriteRecord>>>,
    /// Transactions read but not yet applied.
    backlog: Arc<Mutex<usize>>,
    pub worker_pids: Vec<i32>,
    pub last_read: Arc<Mutex<Lsn>>,
    held: watch::Receiver<bool>,
    /// A recording's replay: how far into the window it has got, and whether it has handed out the whole stream.
    offset: watch::Receiver<Duration>,
    ended: watch::Receiver<bool>,
}

impl LiveReplay {
    /// Connects the reader (to the sandbox) and the workers (to the fork) and starts tailing.
    pub async fn start(config: &LiveConfig) -> Result<Self, ReplayError> {
        let reader_client = connect_plain(&config.sandbox_conninfo, "understudy-capture").await?;
        let (workers, worker_pids) = sessions(&config.fork_conninfo, config.workers).await?;
        let (stop, stop_rx) = watch::channel(Signal::Run);
        let (tx, rx) = mpsc::unbounded_channel::<Batch>();
        let parts = Parts::new();
        let reader = Task::spawn(read_loop(
            CaptureReader::new(reader_client, &config.capture_slot, &config.publication),
            tx,
            stop_rx,
            config.poll_interval,
            Arc::clone(&parts.backlog),
            Arc::clone(&parts.last_read),
            parts.held_tx.clone(),
        ));
        Ok(parts.into_replay(stop, reader, rx, workers, worker_pids))
    }

    /// Replays recording stream `stream` into the fork at `fork_conninfo` at `speed`.
    pub async fn start_recorded(
        stream: StreamReader,
        fork_conninfo: &str,
        workers: usize,
        speed: Speed,
    ) -> Result<Self, ReplayError> {
        let (workers, worker_pids) = sessions(fork_conninfo, workers).await?;
        let (stop, stop_rx) = watch::channel(Signal::Run);
        let (tx, rx) = mpsc::unbounded_channel::<Batch>();
        let parts = Parts::new();
        let shared = recorded::Shared {
            backlog: Arc::clone(&parts.backlog),
            last_read: Arc::clone(&parts.last_read),
            held: parts.held_tx.clone(),
            offset: parts.offset_tx.clone(),
            ended: parts.ended_tx.clone(),
        };
        let reader = Task::spawn(recorded::recorded_loop(stream, tx, stop_rx, speed, shared));
        Ok(parts.into_replay(stop, reader, rx, workers, worker_pids))
    }

    /// Waits until a recording's replay has handed out the transactions of the first `offset` of its window (or
    /// all of them).
    pub async fn wait_offset(&mut self, offset: Duration) {
        let mut ended = self.ended.clone();
        tokio::select! {
            _ = self.offset.wait_for(|o| *o >= offset) => {}
            _ = ended.wait_for(|e| *e) => {}
        }
    }

    /// Waits until a recording's replay has handed out its whole stream.
    pub async fn wait_ended(&mut self) {
        let _ = self.ended.wait_for(|e| *e).await;
    }

    /// Records so far.
    pub fn records(&self) -> Vec<WriteRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn backlog(&self) -> usize {
        self.backlog.lock().map(|b| *b).unwrap_or(0)
    }

    /// Stops reading (after one last read of everything the sandbox has applied), lets the workers apply what
    /// was read (for at most `drain`), and returns every record.
    pub async fn stop(self, drain: Duration) -> Result<Stopped, ReplayError> {
        self.finish(Signal::Stop, drain).await
    }

    /// Stops after applying exactly the transactions that committed on the sandbox before `upto`: two replays
    /// stopped at the same LSN have applied the same stream.
    pub async fn stop_at(self, upto: Lsn, drain: Duration) -> Result<Stopped, ReplayError> {
        self.finish(Signal::StopAt(upto), drain).await
    }

    /// Holds the reader: returns once no read is in flight and none will start until `stop_at`. Every
    /// transaction read so far committed before a WAL position taken after this returns.
    pub async fn hold(&mut self) {
        let _ = self.stop.send(Signal::Hold);
        let _ = self.held.wait_for(|h| *h).await;
    }

    async fn finish(self, signal: Signal, drain: Duration) -> Result<Stopped, ReplayError> {
        let _ = self.stop.send(signal);
        let gone = || ReplayError::Task("the replay task was already stopped".into());
        let reader = self.reader.into_handle().ok_or_else(gone)?;
        reader.await.map_err(|e| ReplayError::Task(e.to_string()))??;
        let mut dispatcher = self.dispatcher.into_handle().ok_or_else(gone)?;
        match tokio::time::timeout(drain, &mut dispatcher).await {
            Ok(joined) => joined.map_err(|e| ReplayError::Task(e.to_string()))??,
            Err(_) => dispatcher.abort(),
        }
        let records = self.records.lock().map(|r| r.clone()).unwrap_or_default();
        let unapplied = self.backlog.lock().map(|b| *b).unwrap_or(0);
        Ok(Stopped { records, unapplied })
    }
}

/// The worker sessions on the fork, and their pids.
async fn sessions(fork_conninfo: &str, n: usize) -> Result<(Vec<Session>, Vec<i32>), ReplayError> {
    let mut workers = Vec::new();
    for _ in 0..n.max(1) {
        let client = connect_plain(fork_conninfo, "understudy-replay").await?;
        workers.push(Session::open(client).await?);
    }
    let pids = workers.iter().map(|w| w.pid).collect();
    Ok((workers, pids))
}

/// What a replay shares between its reader, its dispatcher and its owner.
struct Parts {
    records: Arc<Mutex<Vec<WriteRecord>>>,
    backlog: Arc<Mutex<usize>>,
    last_read: Arc<Mutex<Lsn>>,
    held_tx: watch::Sender<bool>,
    offset_tx: watch::Sender<Duration>,
    ended_tx: watch::Sender<bool>,
}

impl Parts {
    fn new() -> Self {
        Parts {
            records: Arc::new(Mutex::new(Vec::new())),
            backlog: Arc::new(Mutex::new(0)),
            last_read: Arc::new(Mutex::new(Lsn(0))),
            held_tx: watch::channel(false).0,
            offset_tx: watch::channel(Duration::ZERO).0,
            ended_tx: watch::channel(false).0,
        }
    }

    fn into_replay(
        self,
        stop: watch::Sender<Signal>,
        reader: Task<Result<(), ReplayError>>,
        rx: mpsc::UnboundedReceiver<Batch>,
        workers: Vec<Session>,
        worker_pids: Vec<i32>,
    ) -> LiveReplay {
        let dispatcher = Task::spawn(dispatch_loop(
            rx,
            workers,
            Arc::clone(&self.records),
            Arc::clone(&self.backlog),
        ));
        LiveReplay {
            stop,
            reader,
            dispatcher,
            records: self.records,
            backlog: self.backlog,
            held: self.held_tx.subscribe(),
            worker_pids,
            last_read: self.last_read,
            offset: self.offset_tx.subscribe(),
            ended: self.ended_tx.subscribe(),
        }
    }
}

/// What a stopped replay did.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// Every transaction applied (or failed) on the fork, in the order they ended.
    pub records: Vec<WriteRecord>,
    /// Transactions read but not applied when it stopped (its drain ran out of time).
    pub unapplied: usize,
}

async fn read_loop(
    mut reader: CaptureReader,
    tx: mpsc::UnboundedSender<Batch>,
    mut stop: watch::Receiver<Signal>,
    poll: Duration,
    backlog: Arc<Mutex<usize>>,
    last_read: Arc<Mutex<Lsn>>,
    held: watch::Sender<bool>,
) -> Result<(), ReplayError> {
    loop {
        let mut signal = *stop.borrow_and_update();
        if signal == Signal::Hold {
            let _ = held.send(true);
            while signal == Signal::Hold {
                if stop.changed().await.is_err() {
                    return Ok(());
                }
                signal = *stop.borrow_and_update();
            }
        }
        let stopping = signal != Signal::Run;
        let upto = match signal {
            Signal::StopAt(lsn) => Some(lsn),
            _ => None,
        };
        // The last reads flush the sandbox's WAL so that they see everything applied there.
        let batch = reader.read_with(upto, Some(2000), true, stopping).await?;
        let empty = batch.is_empty();
        if !empty {
            if let Ok(mut b) = backlog.lock() {
                *b += batch.len();
            }
            if let (Some(last), Ok(mut l)) = (batch.last(), last_read.lock()) {
                *l = last.end_lsn;
            }
            if tx
                .send((batch, Arc::new(reader.relations().clone()), Instant::now()))
                .is_err()
            {
                return Ok(());
            }
        }
        if stopping && empty {
            return Ok(());
        }
        if empty {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

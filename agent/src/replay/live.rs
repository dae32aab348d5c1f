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
use super::record::Batch;
pub use super::record::{ReplayError, WriteFailure, WriteKind, WriteRecord};
use super::session::Session;
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

/// What the reader should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Run,
    /// Finish the read in flight, then read nothing more until told to stop (so that a stop point taken now is
    /// past everything read).
    Hold,
    /// Read everything the sandbox has applied, then stop.
    Stop,
    /// Read the transactions that committed before this LSN, then stop.
    StopAt(Lsn),
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
}

impl LiveReplay {
    /// Connects the reader (to the sandbox) and the workers (to the fork) and starts tailing.
    pub async fn start(config: &LiveConfig) -> Result<Self, ReplayError> {
        let reader_client = connect_plain(&config.sandbox_conninfo, "understudy-capture").await?;
        let mut workers = Vec::new();
        for _ in 0..config.workers.max(1) {
            let client = connect_plain(&config.fork_conninfo, "understudy-replay").await?;
            workers.push(Session::open(client).await?);
        }
        let worker_pids = workers.iter().map(|w| w.pid).collect();
        let (stop, stop_rx) = watch::channel(Signal::Run);
        let (tx, rx) = mpsc::unbounded_channel::<Batch>();
        let records = Arc::new(Mutex::new(Vec::new()));
        let backlog = Arc::new(Mutex::new(0usize));
        let last_read = Arc::new(Mutex::new(Lsn(0)));
        let (held_tx, held) = watch::channel(false);
        let reader = Task::spawn(read_loop(
            CaptureReader::new(reader_client, &config.capture_slot, &config.publication),
            tx,
            stop_rx,
            config.poll_interval,
            Arc::clone(&backlog),
            Arc::clone(&last_read),
            held_tx,
        ));
        let dispatcher = Task::spawn(dispatch_loop(rx, workers, Arc::clone(&records), Arc::clone(&backlog)));
        Ok(LiveReplay {
            stop,
            reader,
            dispatcher,
            records,
            backlog,
            held,
            worker_pids,
            last_read,
        })
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
            if tx.send((batch, reader.relations().clone(), Instant::now())).is_err() {
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

//! Live replay: the capture slot is tailed on the sandbox (so the pace follows production live) and each
//! transaction is applied to the fork by one of several worker sessions, in commit order per row: a transaction
//! is dispatched only when no transaction in flight touches the same row (or, for TRUNCATE and tables without a
//! key, the same table). A backlog that builds while a lock is held is applied as fast as the fork allows once it
//! is released. Every transaction is timed; failures keep their table, statement kind and SQLSTATE.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::apply::Applier;
use super::capture::{CaptureError, CaptureReader, Change, Transaction};
use crate::lsn::Lsn;
use crate::pg::PgError;
use crate::pg::connect::connect_plain;
use crate::pgoutput::{Relation, Value};

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

/// A write that failed on the fork.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct WriteFailure {
    pub table: String,
    pub kind: WriteKind,
    pub sqlstate: String,
    pub message: String,
    pub sample: String,
}

/// What a replayed write was: one of the transaction's changes, or its BEGIN or COMMIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WriteKind {
    Begin,
    Insert,
    Update,
    Delete,
    Truncate,
    Commit,
}

impl WriteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteKind::Begin => "begin",
            WriteKind::Insert => "insert",
            WriteKind::Update => "update",
            WriteKind::Delete => "delete",
            WriteKind::Truncate => "truncate",
            WriteKind::Commit => "commit",
        }
    }
}

impl std::fmt::Display for WriteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One replayed transaction.
#[derive(Debug, Clone)]
pub struct WriteRecord {
    pub worker_pid: i32,
    /// When the reader handed the transaction to the dispatcher (it waits from here while workers are busy).
    pub queued: Instant,
    pub start: Instant,
    pub end: Instant,
    /// How far behind production's commit the write finished on the fork.
    pub lag: Duration,
    pub changes: usize,
    pub end_lsn: Lsn,
    pub failure: Option<WriteFailure>,
}

impl WriteRecord {
    pub fn latency(&self) -> Duration {
        self.end - self.start
    }
}

/// Errors that stop the replay (not write failures, which are records).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("replay task failed: {0}")]
    Task(String),
}

/// A running replay.
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

type Batch = (Vec<Transaction>, HashMap<u32, Relation>, Instant);
/// A row (relation, key values) or, with `None`, a whole table.
type RowKey = (u32, Option<String>);
type KeySet = HashSet<RowKey>;

impl LiveReplay {
    /// Connects the reader (to the sandbox) and the workers (to the fork) and starts tailing.
    pub async fn start(config: &LiveConfig) -> Result<Self, ReplayError> {
        let reader_client = connect_plain(&config.sandbox_conninfo, "understudy-capture").await?;
        let mut workers = Vec::new();
        let mut worker_pids = Vec::new();
        for _ in 0..config.workers.max(1) {
            let c = connect_plain(&config.fork_conninfo, "understudy-replay").await?;
            let pid: i32 = c
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .map_err(PgError::sql("replay worker"))?
                .get(0);
            worker_pids.push(pid);
            workers.push((c, pid));
        }
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

/// Row identities a transaction touches: `(relation, Some(key))` for a row, `(relation, None)` for the table.
fn keys(tx: &Transaction, relations: &HashMap<u32, Relation>) -> KeySet {
    let mut out = HashSet::new();
    let key_of = |rel: u32, values: &[Value]| -> (u32, Option<String>) {
        match relations.get(&rel) {
            Some(r) if r.columns.iter().any(|c| c.key) => {
                let k: Vec<String> = r
                    .columns
                    .iter()
                    .zip(values)
                    .filter(|(c, _)| c.key)
                    .map(|(_, v)| match v {
                        Value::Text(t) => t.clone(),
                        Value::Null => "\u{0}".into(),
                        _ => "?".into(),
                    })
                    .collect();
                (rel, Some(k.join("\u{1}")))
            }
            _ => (rel, None),
        }
    };
    for change in &tx.changes {
        match change {
            Change::Insert(i) => {
                out.insert(key_of(i.relation, &i.new.values));
            }
            Change::Update(u) => {
                out.insert(key_of(u.relation, &u.new.values));
                if let Some(old) = &u.old {
                    out.insert(key_of(u.relation, &old.values));
                }
            }
            Change::Delete(d) => {
                out.insert(key_of(d.relation, &d.old.values));
            }
            Change::Truncate(t) => {
                for r in &t.relations {
                    out.insert((*r, None));
                }
            }
        }
    }
    out
}

fn conflicts(keys: &KeySet, inflight: &HashMap<RowKey, usize>) -> bool {
    keys.iter().any(|k| {
        inflight.contains_key(k)
            || inflight.contains_key(&(k.0, None))
            || (k.1.is_none() && inflight.keys().any(|i| i.0 == k.0))
    })
}

struct Job {
    statements: Vec<(String, String, WriteKind)>,
    render_error: Option<WriteFailure>,
    commit_time: i64,
    end_lsn: Lsn,
    changes: usize,
    queued: Instant,
}

struct Done {
    worker: usize,
    keys: KeySet,
    record: WriteRecord,
}

async fn dispatch_loop(
    mut rx: mpsc::UnboundedReceiver<Batch>,
    workers: Vec<(Client, i32)>,
    records: Arc<Mutex<Vec<WriteRecord>>>,
    backlog: Arc<Mutex<usize>>,
) -> Result<(), ReplayError> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    for (index, (client, pid)) in workers.into_iter().enumerate() {
        let (job_tx, job_rx) = mpsc::unbounded_channel::<(Job, KeySet)>();
        senders.push(job_tx);
        handles.push(tokio::spawn(worker_loop(index, client, pid, job_rx, done_tx.clone())));
    }
    drop(done_tx);
    let mut free: VecDeque<usize> = (0..senders.len()).collect();
    let mut inflight: HashMap<RowKey, usize> = HashMap::new();
    let mut applier = Applier::default();
    let finish = |done: Done, free: &mut VecDeque<usize>, inflight: &mut HashMap<RowKey, usize>| {
        for k in &done.keys {
            if let Some(n) = inflight.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    inflight.remove(k);
                }
            }
        }
        free.push_back(done.worker);
        if let Ok(mut b) = backlog.lock() {
            *b = b.saturating_sub(1);
        }
        if let Ok(mut r) = records.lock() {
            r.push(done.record);
        }
    };
    while let Some((batch, relations, read_at)) = rx.recv().await {
        applier.update_relations(&relations);
        for tx in batch {
            let k = keys(&tx, &relations);
            while free.is_empty() || conflicts(&k, &inflight) {
                match done_rx.recv().await {
                    Some(done) => finish(done, &mut free, &mut inflight),
                    None => return Err(ReplayError::Task("every replay worker stopped".into())),
                }
            }
            let mut statements = Vec::new();
            let mut render_error = None;
            for change in &tx.changes {
                let (table, kind) = describe_change(change, &relations);
                match applier.statement(change) {
                    Ok(sql) => statements.push((sql, table, kind)),
                    Err(e) => {
                        render_error = Some(WriteFailure {
                            table,
                            kind,
                            sqlstate: String::new(),
                            message: e.to_string(),
                            sample: String::new(),
                        });
                        break;
                    }
                }
            }
            let job = Job {
                statements,
                render_error,
                commit_time: tx.commit_time,
                end_lsn: tx.end_lsn,
                changes: tx.changes.len(),
                queued: read_at,
            };
            for key in &k {
                *inflight.entry(key.clone()).or_default() += 1;
            }
            let Some(worker) = free.pop_front() else { continue };
            if senders[worker].send((job, k)).is_err() {
                return Err(ReplayError::Task("a replay worker stopped".into()));
            }
        }
    }
    drop(senders);
    while let Some(done) = done_rx.recv().await {
        finish(done, &mut free, &mut inflight);
    }
    for h in handles {
        let _ = h.await;
    }
    Ok(())
}

fn describe_change(change: &Change, relations: &HashMap<u32, Relation>) -> (String, WriteKind) {
    let name = |oid: u32| {
        relations
            .get(&oid)
            .map(|r| format!("{}.{}", r.namespace, r.name))
            .unwrap_or_else(|| format!("oid {oid}"))
    };
    match change {
        Change::Insert(i) => (name(i.relation), WriteKind::Insert),
        Change::Update(u) => (name(u.relation), WriteKind::Update),
        Change::Delete(d) => (name(d.relation), WriteKind::Delete),
        Change::Truncate(t) => (
            t.relations.first().map(|r| name(*r)).unwrap_or_default(),
            WriteKind::Truncate,
        ),
    }
}

/// Microseconds since 2000-01-01 (PostgreSQL's epoch) → time since that commit.
fn since_commit(commit_time: i64) -> Duration {
    let unix_micros = commit_time + 946_684_800_000_000;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    Duration::from_micros(now.saturating_sub(unix_micros).max(0) as u64)
}

async fn worker_loop(
    index: usize,
    client: Client,
    pid: i32,
    mut jobs: mpsc::UnboundedReceiver<(Job, KeySet)>,
    done: mpsc::UnboundedSender<Done>,
) {
    while let Some((job, keys)) = jobs.recv().await {
        let start = Instant::now();
        let mut failure = job.render_error;
        if failure.is_none() {
            failure = apply_job(&client, &job.statements).await;
        }
        let end = Instant::now();
        let record = WriteRecord {
            worker_pid: pid,
            queued: job.queued,
            start,
            end,
            lag: since_commit(job.commit_time),
            changes: job.changes,
            end_lsn: job.end_lsn,
            failure,
        };
        if done
            .send(Done {
                worker: index,
                keys,
                record,
            })
            .is_err()
        {
            return;
        }
    }
}

async fn apply_job(client: &Client, statements: &[(String, String, WriteKind)]) -> Option<WriteFailure> {
    if let Err(e) = client.batch_execute("BEGIN").await {
        return Some(WriteFailure {
            table: String::new(),
            kind: WriteKind::Begin,
            sqlstate: code(&e),
            message: crate::pg::describe(&e),
            sample: String::new(),
        });
    }
    for (sql, table, kind) in statements {
        if let Err(e) = client.batch_execute(sql).await {
            let _ = client.batch_execute("ROLLBACK").await;
            return Some(WriteFailure {
                table: table.clone(),
                kind: *kind,
                sqlstate: code(&e),
                message: e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string()),
                sample: sql.chars().take(300).collect(),
            });
        }
    }
    if let Err(e) = client.batch_execute("COMMIT").await {
        return Some(WriteFailure {
            table: String::new(),
            kind: WriteKind::Commit,
            sqlstate: code(&e),
            message: crate::pg::describe(&e),
            sample: String::new(),
        });
    }
    None
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

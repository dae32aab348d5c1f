//! Dispatching captured transactions to the worker sessions, in commit order per row. A transaction whose rows
//! (or, for TRUNCATE and tables without a key, whose tables) no transaction in flight touches goes to the least
//! busy worker. One that conflicts with the transactions of exactly one worker is queued behind them on that
//! worker, whose session applies them in order, so a hot row does not hold up the rest of the stream. One that
//! conflicts with several workers waits until it conflicts with at most one.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use super::apply::Applier;
use super::capture::{Change, Transaction};
use super::record::{Batch, ReplayError, WriteFailure, WriteKind, WriteRecord};
use super::session::{Session, Step};
use crate::lsn::Lsn;
use crate::pgoutput::{Relation, Value};

/// A row (relation, key values) or, with `None`, a whole table.
type RowKey = (u32, Option<String>);
type KeySet = HashSet<RowKey>;

/// Transactions a worker may have queued (its own and those behind it) before the dispatcher waits for it.
const QUEUE_DEPTH: usize = 4;

struct Job {
    steps: Vec<Step>,
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

/// What the workers have in flight: who holds each row and how many keys of each table each worker holds.
#[derive(Default)]
struct Inflight {
    rows: HashMap<RowKey, (usize, usize)>,
    tables: HashMap<u32, HashMap<usize, usize>>,
    queued: Vec<usize>,
}

impl Inflight {
    fn new(workers: usize) -> Self {
        Inflight {
            queued: vec![0; workers],
            ..Inflight::default()
        }
    }

    /// The workers holding a row or table that `keys` touches.
    fn owners(&self, keys: &KeySet) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        for key in keys {
            if key.1.is_none() {
                if let Some(by_worker) = self.tables.get(&key.0) {
                    out.extend(by_worker.keys().copied());
                }
                continue;
            }
            for held in [key.clone(), (key.0, None)] {
                if let Some((worker, _)) = self.rows.get(&held) {
                    out.insert(*worker);
                }
            }
        }
        out
    }

    /// The worker for a transaction touching `keys`, if it can go now.
    fn choose(&self, keys: &KeySet) -> Option<usize> {
        let owners = self.owners(keys);
        let worker = match owners.len() {
            0 => (0..self.queued.len()).min_by_key(|w| self.queued[*w])?,
            1 => *owners.first()?,
            _ => return None,
        };
        (self.queued[worker] < QUEUE_DEPTH).then_some(worker)
    }

    fn add(&mut self, worker: usize, keys: &KeySet) {
        for key in keys {
            self.rows.entry(key.clone()).or_insert((worker, 0)).1 += 1;
            *self.tables.entry(key.0).or_default().entry(worker).or_default() += 1;
        }
        self.queued[worker] += 1;
    }

    fn remove(&mut self, worker: usize, keys: &KeySet) {
        for key in keys {
            if let Some(held) = self.rows.get_mut(key) {
                held.1 -= 1;
                if held.1 == 0 {
                    self.rows.remove(key);
                }
            }
            if let Some(by_worker) = self.tables.get_mut(&key.0) {
                if let Some(n) = by_worker.get_mut(&worker) {
                    *n -= 1;
                    if *n == 0 {
                        by_worker.remove(&worker);
                    }
                }
                if by_worker.is_empty() {
                    self.tables.remove(&key.0);
                }
            }
        }
        self.queued[worker] = self.queued[worker].saturating_sub(1);
    }
}

/// Applies every batch received on `rx` with `workers`, recording each transaction.
pub(super) async fn dispatch_loop(
    mut rx: mpsc::UnboundedReceiver<Batch>,
    workers: Vec<Session>,
    records: Arc<Mutex<Vec<WriteRecord>>>,
    backlog: Arc<Mutex<usize>>,
) -> Result<(), ReplayError> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    let count = workers.len();
    for (index, session) in workers.into_iter().enumerate() {
        let (job_tx, job_rx) = mpsc::unbounded_channel::<(Job, KeySet)>();
        senders.push(job_tx);
        handles.push(tokio::spawn(worker_loop(index, session, job_rx, done_tx.clone())));
    }
    drop(done_tx);
    let mut inflight = Inflight::new(count);
    let mut applier = Applier::default();
    let mut known: Option<Arc<HashMap<u32, Relation>>> = None;
    let finish = |done: Done, inflight: &mut Inflight| {
        inflight.remove(done.worker, &done.keys);
        if let Ok(mut b) = backlog.lock() {
            *b = b.saturating_sub(1);
        }
        if let Ok(mut r) = records.lock() {
            r.push(done.record);
        }
    };
    loop {
        // Finished transactions are recorded as they finish, also while the stream is quiet.
        let received = tokio::select! {
            Some(done) = done_rx.recv() => {
                finish(done, &mut inflight);
                continue;
            }
            received = rx.recv() => received,
        };
        let Some((batch, relations, read_at)) = received else {
            break;
        };
        // Batches read with the same relations share them: learned once.
        if !known.as_ref().is_some_and(|k| Arc::ptr_eq(k, &relations)) {
            applier.update_relations(&relations);
            known = Some(Arc::clone(&relations));
        }
        for tx in batch {
            let k = keys(&tx, &relations);
            let worker = loop {
                if let Some(worker) = inflight.choose(&k) {
                    break worker;
                }
                match done_rx.recv().await {
                    Some(done) => finish(done, &mut inflight),
                    None => return Err(ReplayError::Task("every replay worker stopped".into())),
                }
            };
            let job = render(&applier, tx, &relations, read_at);
            inflight.add(worker, &k);
            if senders[worker].send((job, k)).is_err() {
                return Err(ReplayError::Task("a replay worker stopped".into()));
            }
        }
    }
    drop(senders);
    while let Some(done) = done_rx.recv().await {
        finish(done, &mut inflight);
    }
    for h in handles {
        let _ = h.await;
    }
    Ok(())
}

/// A transaction's statements; the first change that cannot be rendered is the transaction's failure.
fn render(applier: &Applier, tx: Transaction, relations: &HashMap<u32, Relation>, queued: Instant) -> Job {
    let mut steps = Vec::with_capacity(tx.changes.len());
    let mut render_error = None;
    for change in &tx.changes {
        let (table, kind) = describe_change(change, relations);
        match applier.shaped(change) {
            Ok(statement) => steps.push(Step { statement, table, kind }),
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
    Job {
        steps,
        render_error,
        commit_time: tx.commit_time,
        end_lsn: tx.end_lsn,
        changes: tx.changes.len(),
        queued,
    }
}

/// Row identities a transaction touches: `(relation, Some(key))` for a row, `(relation, None)` for the table.
fn keys(tx: &Transaction, relations: &HashMap<u32, Relation>) -> KeySet {
    let mut out = HashSet::new();
    let key_of = |rel: u32, values: &[Value]| -> RowKey {
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
    mut session: Session,
    mut jobs: mpsc::UnboundedReceiver<(Job, KeySet)>,
    done: mpsc::UnboundedSender<Done>,
) {
    while let Some((job, keys)) = jobs.recv().await {
        let start = Instant::now();
        let failure = match job.render_error {
            Some(failure) => Some(failure),
            None => session.apply(&job.steps).await,
        };
        let end = Instant::now();
        let record = WriteRecord {
            worker_pid: session.pid,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: &[(u32, Option<&str>)]) -> KeySet {
        keys.iter().map(|(r, k)| (*r, k.map(str::to_string))).collect()
    }

    #[test]
    fn a_free_transaction_goes_to_the_least_busy_worker() {
        let mut inflight = Inflight::new(3);
        inflight.add(0, &set(&[(1, Some("a"))]));
        inflight.add(1, &set(&[(1, Some("b"))]));
        assert_eq!(inflight.choose(&set(&[(1, Some("c"))])), Some(2));
    }

    #[test]
    fn a_transaction_on_one_workers_row_queues_behind_it() {
        let mut inflight = Inflight::new(2);
        inflight.add(0, &set(&[(1, Some("a"))]));
        assert_eq!(inflight.choose(&set(&[(1, Some("a")), (2, Some("x"))])), Some(0));
        // Until its queue is full.
        for _ in 1..QUEUE_DEPTH {
            inflight.add(0, &set(&[(1, Some("a"))]));
        }
        assert_eq!(inflight.choose(&set(&[(1, Some("a"))])), None);
        // A free one still goes to the other worker.
        assert_eq!(inflight.choose(&set(&[(1, Some("z"))])), Some(1));
    }

    #[test]
    fn a_transaction_on_two_workers_rows_waits() {
        let mut inflight = Inflight::new(2);
        inflight.add(0, &set(&[(1, Some("a"))]));
        inflight.add(1, &set(&[(1, Some("b"))]));
        assert_eq!(inflight.choose(&set(&[(1, Some("a")), (1, Some("b"))])), None);
        inflight.remove(1, &set(&[(1, Some("b"))]));
        assert_eq!(inflight.choose(&set(&[(1, Some("a")), (1, Some("b"))])), Some(0));
    }

    #[test]
    fn a_whole_table_conflicts_with_every_row_of_it() {
        let mut inflight = Inflight::new(3);
        inflight.add(0, &set(&[(1, Some("a"))]));
        inflight.add(1, &set(&[(2, Some("a"))]));
        // TRUNCATE of table 1 (or a write to a keyless table 1): only worker 0 holds rows of it.
        assert_eq!(inflight.choose(&set(&[(1, None)])), Some(0));
        inflight.add(2, &set(&[(1, Some("b"))]));
        assert_eq!(inflight.choose(&set(&[(1, None)])), None);
        // A row of a table held whole conflicts with the holder.
        let mut whole = Inflight::new(2);
        whole.add(1, &set(&[(3, None)]));
        assert_eq!(whole.choose(&set(&[(3, Some("k"))])), Some(1));
        whole.remove(1, &set(&[(3, None)]));
        assert!(whole.rows.is_empty() && whole.tables.is_empty());
        assert_eq!(whole.queued, vec![0, 0]);
    }
}

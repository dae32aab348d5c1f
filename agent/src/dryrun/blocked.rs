//! From replayed writes and lock episodes to what production would feel: which writes waited behind the
//! migration and for how long, which statement made them wait, and the latency of writes before, during and
//! after the migration. Pure: every input is a measurement already taken.

use std::time::{Duration, Instant};

use crate::locks::{BlockEpisode, LockReport};
use crate::migrate::MigrationOutcome;
use crate::replay::live::WriteRecord;
use crate::report::{FailureGroup, Latency, Percentiles, StatementReport, WritesReport};

/// When the windows of a run began and ended.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeline {
    pub warmup_started: Instant,
    pub migration_started: Instant,
    pub migration_ended: Instant,
    pub after_ended: Instant,
    /// The lock sampler's interval: a wait is seen up to one interval late.
    pub sample_interval: Duration,
}

/// When each statement of the migration ran: `(index, start, end)`.
pub(crate) fn statement_spans(outcome: &MigrationOutcome) -> Vec<(usize, Instant, Instant)> {
    outcome
        .statements
        .iter()
        .filter_map(|s| Some((s.index, s.started_at?, s.ended_at?)))
        .collect()
}

/// Each statement with the locks it took and the waits it had (no blocked writes counted yet).
pub(crate) fn statements(outcome: &MigrationOutcome, locks: &LockReport) -> Vec<StatementReport> {
    outcome
        .statements
        .iter()
        .map(|s| StatementReport {
            outcome: s.clone(),
            locks: locks
                .held
                .iter()
                .filter(|l| l.statement == Some(s.index))
                .cloned()
                .collect(),
            waits: locks
                .migration_waits
                .iter()
                .filter(|w| w.statement == Some(s.index))
                .cloned()
                .collect(),
            blocked_writes: 0,
        })
        .collect()
}

/// How long `r` waited behind the migration, if it did: its worker waited in an episode, or it queued for a
/// worker while the workers waited (production's connections would each have waited on the lock).
pub(crate) fn blocked_wait(r: &WriteRecord, episodes: &[&BlockEpisode], t: &Timeline) -> Option<Duration> {
    // Nothing waits behind the migration before it starts (a sampling round that began just before it carries an
    // earlier timestamp).
    let own = episodes
        .iter()
        .filter(|e| e.pid == r.worker_pid && e.start <= r.end && e.end >= r.start)
        .map(|e| {
            r.end
                .min(e.end + t.sample_interval)
                .saturating_duration_since(r.start.max(e.start).max(t.migration_started))
        })
        .filter(|w| !w.is_zero())
        .max();
    let queued = episodes
        .iter()
        .filter(|e| {
            e.start <= r.start && r.queued <= e.end && r.start.saturating_duration_since(r.queued) > t.sample_interval
        })
        .map(|e| {
            r.start
                .min(e.end + t.sample_interval)
                .saturating_duration_since(r.queued.max(e.start).max(t.migration_started))
        })
        .filter(|w| !w.is_zero())
        .max();
    match (own, queued) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// The statement a blocked write belongs to: the one running while it waited (the sampler sees a wait up to one
/// interval after the statement ended, so a write that queued in that tail belongs to it too), else the last
/// statement that had started.
pub(crate) fn statement_of(r: &WriteRecord, statements: &[StatementReport], t: &Timeline) -> Option<usize> {
    let span = |s: &StatementReport| s.outcome.started_at.zip(s.outcome.ended_at);
    statements
        .iter()
        .position(|s| span(s).is_some_and(|(a, b)| r.queued <= b + t.sample_interval && r.end >= a))
        .or_else(|| {
            statements
                .iter()
                .rposition(|s| s.outcome.started_at.is_some_and(|a| a <= r.end))
        })
}

/// The writes section of the report; counts each blocked write against its statement in `statements`.
pub(crate) fn writes(
    records: &[WriteRecord],
    episodes: &[&BlockEpisode],
    statements: &mut [StatementReport],
    t: &Timeline,
    unapplied_before_stop: usize,
) -> WritesReport {
    let mut blocked = 0usize;
    let mut blocked_total = Duration::ZERO;
    let mut blocked_max = Duration::ZERO;
    for r in records {
        if let Some(w) = blocked_wait(r, episodes, t) {
            blocked += 1;
            blocked_total += w;
            blocked_max = blocked_max.max(w);
            if let Some(i) = statement_of(r, statements, t) {
                statements[i].blocked_writes += 1;
            }
        }
    }
    let window = |from: Instant, to: Instant| {
        Percentiles::of(
            records
                .iter()
                .filter(|r| r.start >= from && r.start < to)
                .map(|r| r.latency().as_secs_f64() * 1000.0)
                .collect(),
        )
    };
    let failures: Vec<_> = records.iter().filter_map(|r| r.failure.clone()).collect();
    let total_secs = t
        .after_ended
        .saturating_duration_since(t.warmup_started)
        .as_secs_f64()
        .max(0.001);
    WritesReport {
        replayed: records.len(),
        per_second: records.len() as f64 / total_secs,
        failed: failures.len(),
        blocked,
        blocked_total_ms: blocked_total.as_secs_f64() * 1000.0,
        blocked_max_ms: blocked_max.as_secs_f64() * 1000.0,
        latency: Latency {
            before: window(t.warmup_started, t.migration_started),
            during: window(t.migration_started, t.migration_ended),
            after: window(t.migration_ended, t.after_ended + Duration::from_secs(3600)),
        },
        lag: Percentiles::of(records.iter().map(|r| r.lag.as_secs_f64() * 1000.0).collect()),
        failures: FailureGroup::group(&failures),
        unapplied: unapplied_before_stop.saturating_sub(records.len().min(unapplied_before_stop)),
    }
}

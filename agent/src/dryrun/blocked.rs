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
    unapplied: usize,
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
        unapplied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::live::WriteKind;
    use crate::report::sample::{at, episode, ok_statement, percentiles, record, spanning, statement, write_failure};

    const WORKER: i32 = 5101;
    const OTHER: i32 = 5102;

    /// Warm-up from 0 to 1 s, the migration from 1 s to 3 s, the after window to 4 s; sampling every 20 ms.
    fn timeline(base: Instant) -> Timeline {
        Timeline {
            warmup_started: base,
            migration_started: at(base, 1000),
            migration_ended: at(base, 3000),
            after_ended: at(base, 4000),
            sample_interval: Duration::from_millis(20),
        }
    }

    /// Three statements: 1000-1100, 1100-2500 and 2500-3000 ms.
    fn statements(base: Instant) -> Vec<StatementReport> {
        [(0, 1, 1000, 1100), (1, 2, 1100, 2500), (2, 4, 2500, 3000)]
            .into_iter()
            .map(|(index, line, from, to)| {
                let sql = format!("statement {index}");
                statement(spanning(
                    ok_statement(index, line, &sql, (from - 1000) as f64, (to - from) as f64),
                    base,
                    from,
                    to,
                ))
            })
            .collect()
    }

    fn ms(d: Option<Duration>) -> Option<u128> {
        d.map(|d| d.as_millis())
    }

    #[test]
    fn a_write_whose_worker_waited_counts_the_overlap_and_one_sample_interval() {
        let base = Instant::now();
        let t = timeline(base);
        let e = episode(WORKER, at(base, 1250), at(base, 1800));
        let r = record(WORKER, at(base, 1200), at(base, 1200), at(base, 1900));
        // From the episode's start to one interval after its last sighting (the write ended later).
        assert_eq!(ms(blocked_wait(&r, &[&e], &t)), Some(570));
        // A write that ended inside the episode waited until it ended.
        let short = record(WORKER, at(base, 1200), at(base, 1200), at(base, 1500));
        assert_eq!(ms(blocked_wait(&short, &[&e], &t)), Some(250));
        // Another worker's write at the same time, handed over at once, did not wait.
        let other = record(OTHER, at(base, 1300), at(base, 1300), at(base, 1310));
        assert_eq!(blocked_wait(&other, &[&e], &t), None);
        // Nor did one of the same worker that ran before the episode.
        let before = record(WORKER, at(base, 1100), at(base, 1100), at(base, 1240));
        assert_eq!(blocked_wait(&before, &[&e], &t), None);
        // The longest of the worker's episodes counts.
        let e2 = episode(WORKER, at(base, 1820), at(base, 1850));
        assert_eq!(ms(blocked_wait(&r, &[&e2, &e], &t)), Some(570));
    }

    #[test]
    fn a_write_that_queued_while_the_workers_waited_counts_its_queueing() {
        let base = Instant::now();
        let t = timeline(base);
        let e = episode(WORKER, at(base, 1250), at(base, 1800));
        // Handed over at 1300, started at 1850 on the other worker: it waited for a worker until the episode's
        // end plus one interval.
        let r = record(OTHER, at(base, 1300), at(base, 1850), at(base, 1860));
        assert_eq!(ms(blocked_wait(&r, &[&e], &t)), Some(520));
        // Queued no longer than one sample interval: not blocked.
        let quick = record(OTHER, at(base, 1300), at(base, 1320), at(base, 1330));
        assert_eq!(blocked_wait(&quick, &[&e], &t), None);
        // Queued after the episode ended: not blocked.
        let late = record(OTHER, at(base, 1810), at(base, 1900), at(base, 1910));
        assert_eq!(blocked_wait(&late, &[&e], &t), None);
    }

    #[test]
    fn queueing_and_the_workers_own_wait_add_up() {
        let base = Instant::now();
        let t = timeline(base);
        let e = episode(WORKER, at(base, 1250), at(base, 1800));
        // Queued 1100-1300 (50 ms of it while the episode ran), then ran 1300-1900 waiting 520 ms itself.
        let r = record(WORKER, at(base, 1100), at(base, 1300), at(base, 1900));
        assert_eq!(ms(blocked_wait(&r, &[&e], &t)), Some(570));
    }

    #[test]
    fn nothing_before_the_migration_started_counts() {
        let base = Instant::now();
        let t = timeline(base);
        // A sampling round that began before the migration carries an earlier start.
        let e = episode(WORKER, at(base, 800), at(base, 1100));
        let before = record(WORKER, at(base, 700), at(base, 700), at(base, 990));
        assert_eq!(blocked_wait(&before, &[&e], &t), None);
        let across = record(WORKER, at(base, 700), at(base, 700), at(base, 1050));
        assert_eq!(ms(blocked_wait(&across, &[&e], &t)), Some(50));
        let queued = record(OTHER, at(base, 850), at(base, 1130), at(base, 1140));
        assert_eq!(ms(blocked_wait(&queued, &[&e], &t)), Some(120));
        assert_eq!(blocked_wait(&across, &[], &t), None);
    }

    #[test]
    fn a_blocked_write_belongs_to_the_statement_running_while_it_waited() {
        let base = Instant::now();
        let t = timeline(base);
        let s = statements(base);
        let of = |queued: u64, end: u64| {
            statement_of(
                &record(WORKER, at(base, queued), at(base, queued), at(base, end)),
                &s,
                &t,
            )
        };
        assert_eq!(of(1010, 1050), Some(0));
        // Spanning two statements: the first.
        assert_eq!(of(1050, 1500), Some(0));
        assert_eq!(of(1200, 1900), Some(1));
        // Queued within one sample interval after a statement ended: still that statement's.
        assert_eq!(of(2510, 2700), Some(1));
        assert_eq!(of(2520, 2700), Some(1));
        assert_eq!(of(2521, 2700), Some(2));
        // After every statement: the last one that had started.
        assert_eq!(of(3100, 3200), Some(2));
        // Before any statement started: none.
        assert_eq!(of(800, 900), None);
    }

    #[test]
    fn a_statement_without_an_end_takes_the_writes_after_its_start() {
        let base = Instant::now();
        let t = timeline(base);
        let mut s = statements(base);
        s[2].outcome.ended_at = None;
        let r = record(WORKER, at(base, 2600), at(base, 2600), at(base, 2700));
        assert_eq!(statement_of(&r, &s, &t), Some(2));
        assert_eq!(statement_of(&r, &[], &t), None);
    }

    #[test]
    fn the_writes_section_counts_blocked_writes_per_statement_and_latency_per_window() {
        let base = Instant::now();
        let t = timeline(base);
        let mut s = statements(base);
        let mut failing = record(OTHER, at(base, 2600), at(base, 2600), at(base, 2605));
        failing.failure = Some(write_failure(
            "public.orders",
            WriteKind::Insert,
            "23502",
            "null value in column \"note\"",
            "INSERT INTO \"public\".\"orders\" (\"id\") VALUES ('1')",
        ));
        let records = vec![
            // Warm-up: 10 and 30 ms.
            record(WORKER, at(base, 200), at(base, 200), at(base, 210)),
            record(OTHER, at(base, 500), at(base, 500), at(base, 530)),
            // During: blocked 570 ms in its own worker (700 ms latency), queued 520 ms (10 ms), a failure (5 ms).
            record(WORKER, at(base, 1200), at(base, 1200), at(base, 1900)),
            record(OTHER, at(base, 1300), at(base, 1850), at(base, 1860)),
            failing,
            // After: 20 ms.
            record(WORKER, at(base, 3500), at(base, 3500), at(base, 3520)),
        ];
        let e = episode(WORKER, at(base, 1250), at(base, 1800));
        let w = writes(&records, &[&e], &mut s, &t, 10);
        assert_eq!(w.replayed, 6);
        assert_eq!(w.per_second, 1.5);
        assert_eq!(w.failed, 1);
        assert_eq!(w.blocked, 2);
        assert_eq!(w.blocked_total_ms.round(), 1090.0);
        assert_eq!(w.blocked_max_ms.round(), 570.0);
        let blocked: Vec<usize> = s.iter().map(|s| s.blocked_writes).collect();
        assert_eq!(blocked, vec![0, 2, 0]);
        let rounded = |p: &Percentiles| (p.count, p.p50_ms.round(), p.p99_ms.round(), p.max_ms.round());
        let expected = |p: Percentiles| (p.count, p.p50_ms, p.p99_ms, p.max_ms);
        assert_eq!(rounded(&w.latency.before), expected(percentiles(2, 30.0, 30.0, 30.0)));
        assert_eq!(rounded(&w.latency.during), expected(percentiles(3, 10.0, 700.0, 700.0)));
        assert_eq!(rounded(&w.latency.after), expected(percentiles(1, 20.0, 20.0, 20.0)));
        // Lag: each write's latency plus 5 ms.
        assert_eq!(rounded(&w.lag), expected(percentiles(6, 25.0, 705.0, 705.0)));
        assert_eq!(w.failures.len(), 1);
        assert_eq!(
            (w.failures[0].table.as_str(), w.failures[0].kind, w.failures[0].count),
            ("public.orders", WriteKind::Insert, 1)
        );
    }

    #[test]
    fn writes_drained_after_the_after_window_still_count_as_after() {
        let base = Instant::now();
        let t = timeline(base);
        let records = vec![record(WORKER, at(base, 4200), at(base, 4200), at(base, 4240))];
        let w = writes(&records, &[], &mut [], &t, 0);
        assert_eq!(w.latency.after.count, 1);
        assert_eq!(w.latency.during.count + w.latency.before.count, 0);
        assert_eq!((w.blocked, w.blocked_total_ms, w.unapplied), (0, 0.0, 0));
    }

    #[test]
    fn an_empty_run_has_empty_percentiles() {
        let base = Instant::now();
        let mut t = timeline(base);
        t.after_ended = base;
        let w = writes(&[], &[], &mut [], &t, 0);
        assert_eq!((w.replayed, w.per_second, w.failed, w.blocked), (0, 0.0, 0, 0));
        assert_eq!(w.latency.during.count, 0);
        assert!(w.failures.is_empty());
    }

    #[test]
    fn transactions_left_unapplied_at_the_end_are_counted() {
        let base = Instant::now();
        let t = timeline(base);
        // Ten writes replayed during the run; five more read but not applied when the replay stopped (its drain
        // ran out of time): the replay says how many were left.
        let records: Vec<WriteRecord> = (0..10)
            .map(|i| record(WORKER, at(base, 100 * i), at(base, 100 * i), at(base, 100 * i + 5)))
            .collect();
        let w = writes(&records, &[], &mut [], &t, 5);
        assert_eq!(w.unapplied, 5);
    }
}

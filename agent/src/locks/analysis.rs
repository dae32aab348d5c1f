//! From lock samples to findings.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::LockSample;

/// A lock the migration held.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct HeldLock {
    pub relation: String,
    pub mode: String,
    /// Milliseconds since the migration started when the lock was first seen granted.
    pub granted_ms: f64,
    /// How long it was seen held (first to last sample), milliseconds.
    pub held_ms: f64,
    /// The statement (index) during which it was first granted.
    pub statement: Option<usize>,
}

/// A period in which the migration itself waited for a lock.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct MigrationWait {
    pub relation: String,
    pub mode: String,
    pub waited_ms: f64,
    /// Who held what it waited for: pid, application, query.
    pub blockers: Vec<String>,
    pub statement: Option<usize>,
}

/// A session waiting behind the migration (directly or through the queue).
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct BlockEpisode {
    pub pid: i32,
    pub application_name: String,
    pub relation: String,
    pub mode: String,
    #[serde(skip)]
    pub start: Instant,
    #[serde(skip)]
    pub end: Instant,
    pub waited_ms: f64,
}

/// What the samples say.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LockReport {
    pub samples: usize,
    pub interval_ms: f64,
    pub held: Vec<HeldLock>,
    pub migration_waits: Vec<MigrationWait>,
    /// Sessions that waited behind the migration.
    pub blocked: Vec<BlockEpisode>,
    /// The most sessions seen waiting at once on one relation, and which.
    pub longest_queue: usize,
    pub longest_queue_relation: Option<String>,
}

/// Analyses `samples` for the migration session `pid`; `statements` gives each statement's time span.
pub fn analyse(
    samples: &[LockSample],
    rounds: usize,
    interval: Duration,
    pid: i32,
    started: Instant,
    statements: &[(usize, Instant, Instant)],
) -> LockReport {
    let ms = |t: Instant| t.saturating_duration_since(started).as_secs_f64() * 1000.0;
    // The statement running at `t`; a sample up to one interval before a statement's start or after its end is
    // attributed to it (sampling instants are not exact).
    let statement_at = |t: Instant| {
        statements
            .iter()
            .find(|(_, a, b)| *a <= t && t <= *b)
            .map(|(i, _, _)| *i)
            .or_else(|| {
                statements
                    .iter()
                    .find(|(_, a, b)| a.checked_sub(interval).is_some_and(|a| a <= t) && t <= *b + interval)
                    .map(|(i, _, _)| *i)
            })
    };
    let mut report = LockReport {
        samples: rounds,
        interval_ms: interval.as_secs_f64() * 1000.0,
        ..LockReport::default()
    };

    // Held by the migration: first and last sighting per (relation, mode).
    let mut held: BTreeMap<(String, String), (Instant, Instant)> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.pid == pid && s.granted && s.is_relation) {
        let e = held.entry((s.target.clone(), s.mode.clone())).or_insert((s.at, s.at));
        e.1 = s.at;
    }
    report.held = held
        .into_iter()
        .map(|((relation, mode), (first, last))| HeldLock {
            relation,
            mode,
            granted_ms: ms(first),
            held_ms: (last - first).as_secs_f64() * 1000.0 + interval.as_secs_f64() * 1000.0,
            statement: statement_at(first),
        })
        .collect();
    report.held.sort_by(|a, b| a.granted_ms.total_cmp(&b.granted_ms));

    // The migration's own waits, and who it waited for.
    let by_pid: HashMap<i32, (&str, &str)> = samples
        .iter()
        .map(|s| (s.pid, (s.application_name.as_str(), s.query.as_str())))
        .collect();
    let mut waits: BTreeMap<(String, String), (Duration, Vec<i32>, Instant)> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.pid == pid && !s.granted) {
        let e = waits
            .entry((s.target.clone(), s.mode.clone()))
            .or_insert((Duration::ZERO, Vec::new(), s.at));
        if let Some(w) = s.waited {
            e.0 = e.0.max(w);
        }
        for b in &s.blocked_by {
            if !e.1.contains(b) {
                e.1.push(*b);
            }
        }
    }
    report.migration_waits = waits
        .into_iter()
        .map(|((relation, mode), (waited, blockers, first))| MigrationWait {
            relation,
            mode,
            waited_ms: waited.as_secs_f64() * 1000.0,
            blockers: blockers
                .iter()
                .map(|b| match by_pid.get(b) {
                    Some((app, query)) => format!("pid {b} ({}): {query}", if app.is_empty() { "?" } else { app }),
                    None => format!("pid {b}"),
                })
                .collect(),
            statement: statement_at(first),
        })
        .collect();

    // Sessions waiting behind the migration: blocked by it, or by a session that is itself waiting behind it
    // (the lock queue), per sample.
    let mut rounds_at: BTreeMap<Instant, Vec<&LockSample>> = BTreeMap::new();
    for s in samples {
        rounds_at.entry(s.at).or_default().push(s);
    }
    let mut open: HashMap<(i32, String), BlockEpisode> = HashMap::new();
    let mut episodes = Vec::new();
    for (at, round) in &rounds_at {
        let waiting: Vec<&&LockSample> = round.iter().filter(|s| !s.granted && s.pid != pid).collect();
        let mut behind: Vec<i32> = Vec::new();
        let mut changed = true;
        while changed {
            changed = false;
            for s in &waiting {
                if !behind.contains(&s.pid) && s.blocked_by.iter().any(|b| *b == pid || behind.contains(b)) {
                    behind.push(s.pid);
                    changed = true;
                }
            }
        }
        // Ordered by relation, so that of two queues as long the same one is named every time.
        let mut queue: BTreeMap<&str, usize> = BTreeMap::new();
        for s in waiting.iter().filter(|s| s.is_relation) {
            *queue.entry(s.target.as_str()).or_default() += 1;
        }
        if let Some((rel, n)) = queue.into_iter().rev().max_by_key(|(_, n)| *n)
            && n > report.longest_queue
        {
            report.longest_queue = n;
            report.longest_queue_relation = Some(rel.to_string());
        }
        let mut seen = Vec::new();
        for s in waiting.iter().filter(|s| behind.contains(&s.pid)) {
            let key = (s.pid, s.target.clone());
            seen.push(key.clone());
            let start = s.waited.and_then(|w| at.checked_sub(w)).unwrap_or(*at);
            let e = open.entry(key).or_insert(BlockEpisode {
                pid: s.pid,
                application_name: s.application_name.clone(),
                relation: s.target.clone(),
                mode: s.mode.clone(),
                start,
                end: *at,
                waited_ms: 0.0,
            });
            e.end = *at;
            e.waited_ms = (e.end - e.start).as_secs_f64() * 1000.0;
        }
        let closed: Vec<(i32, String)> = open.keys().filter(|k| !seen.contains(k)).cloned().collect();
        for k in closed {
            if let Some(e) = open.remove(&k) {
                episodes.push(e);
            }
        }
    }
    episodes.extend(open.into_values());
    episodes.sort_by_key(|e| e.start);
    report.blocked = episodes;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample::at;

    const MIGRATION: i32 = 100;
    const INTERVAL: Duration = Duration::from_millis(20);

    /// Each session's application and query, as `pg_stat_activity` shows them.
    fn who(pid: i32) -> (&'static str, &'static str) {
        match pid {
            MIGRATION => (
                "understudy-migrate",
                "ALTER TABLE orders ALTER COLUMN note SET NOT NULL",
            ),
            200 => ("report", "SELECT count(*) FROM orders"),
            201 => ("", "LOCK TABLE orders IN SHARE MODE"),
            400 => ("billing", "UPDATE customers SET plan = 'pro' WHERE id = 3"),
            _ => (
                "understudy-replay",
                "INSERT INTO \"public\".\"orders\" (\"id\") VALUES ('1')",
            ),
        }
    }

    fn lock(base: Instant, ms: u64, pid: i32, target: &str, mode: &str) -> LockSample {
        let (app, query) = who(pid);
        LockSample {
            at: at(base, ms),
            pid,
            application_name: app.into(),
            target: target.into(),
            is_relation: target.contains('.'),
            mode: mode.into(),
            granted: true,
            waited: None,
            blocked_by: Vec::new(),
            query: query.into(),
        }
    }

    fn waiting(
        base: Instant,
        ms: u64,
        pid: i32,
        target: &str,
        mode: &str,
        waited_ms: Option<u64>,
        by: &[i32],
    ) -> LockSample {
        LockSample {
            granted: false,
            waited: waited_ms.map(Duration::from_millis),
            blocked_by: by.to_vec(),
            ..lock(base, ms, pid, target, mode)
        }
    }

    /// Milliseconds since `base`, rounded to the microsecond.
    fn since(base: Instant, t: Instant) -> f64 {
        round(t.duration_since(base).as_secs_f64() * 1000.0)
    }

    fn round(ms: f64) -> f64 {
        (ms * 1000.0).round() / 1000.0
    }

    const ORDERS: &str = "public.orders";
    const AEL: &str = "AccessExclusiveLock";
    const REL: &str = "RowExclusiveLock";

    /// Statement 0 (1000-1100 ms) builds an index under ShareLock; statement 1 (1100-1300 ms) queues for
    /// AccessExclusiveLock behind a report (pid 200) and two more sessions, and replayed writes queue behind it:
    /// 301 directly, 302 behind 301, 303 on a transaction id.
    fn scenario(base: Instant) -> Vec<LockSample> {
        let mut s = Vec::new();
        for ms in [1020, 1040, 1060, 1080] {
            s.push(lock(base, ms, MIGRATION, ORDERS, "ShareLock"));
        }
        s.push(lock(base, 1020, MIGRATION, "transactionid", "ExclusiveLock"));
        s.push(lock(base, 1020, 200, ORDERS, "AccessShareLock"));
        s.push(lock(base, 1020, 201, ORDERS, "ShareLock"));
        s.push(waiting(base, 1120, MIGRATION, ORDERS, AEL, Some(15), &[200]));
        s.push(waiting(base, 1120, 400, "public.customers", REL, Some(30), &[200]));
        s.push(waiting(base, 1140, MIGRATION, ORDERS, AEL, Some(35), &[200]));
        s.push(waiting(base, 1140, 301, ORDERS, REL, Some(25), &[MIGRATION]));
        s.push(waiting(base, 1160, MIGRATION, ORDERS, AEL, Some(55), &[200, 201, 999]));
        // 302 is listed before the session it waits behind: the queue is followed to its end.
        s.push(waiting(base, 1160, 302, ORDERS, REL, Some(10), &[301]));
        s.push(waiting(base, 1160, 301, ORDERS, REL, Some(45), &[MIGRATION]));
        s.push(lock(base, 1180, MIGRATION, ORDERS, AEL));
        s.push(waiting(base, 1180, 301, ORDERS, REL, Some(65), &[MIGRATION]));
        s.push(waiting(base, 1180, 302, ORDERS, REL, Some(30), &[301]));
        s.push(waiting(
            base,
            1180,
            303,
            "transactionid",
            "ShareLock",
            None,
            &[MIGRATION],
        ));
        s.push(lock(base, 1200, MIGRATION, ORDERS, AEL));
        s.push(waiting(base, 1200, 301, ORDERS, REL, Some(85), &[MIGRATION]));
        s.push(lock(base, 1220, MIGRATION, ORDERS, AEL));
        s
    }

    fn spans(base: Instant) -> Vec<(usize, Instant, Instant)> {
        vec![(0, at(base, 1000), at(base, 1100)), (1, at(base, 1100), at(base, 1300))]
    }

    #[test]
    fn locks_the_migration_held_with_when_and_how_long() {
        let base = Instant::now();
        let r = analyse(&scenario(base), 11, INTERVAL, MIGRATION, at(base, 1000), &spans(base));
        assert_eq!((r.samples, r.interval_ms), (11, 20.0));
        let held: Vec<(&str, &str, f64, f64, Option<usize>)> = r
            .held
            .iter()
            .map(|h| {
                (
                    h.relation.as_str(),
                    h.mode.as_str(),
                    round(h.granted_ms),
                    round(h.held_ms),
                    h.statement,
                )
            })
            .collect();
        // By when granted; first to last sighting plus one interval; non-relation locks left out.
        assert_eq!(
            held,
            vec![
                (ORDERS, "ShareLock", 20.0, 80.0, Some(0)),
                (ORDERS, AEL, 180.0, 60.0, Some(1))
            ]
        );
    }

    #[test]
    fn the_migrations_own_wait_names_its_blockers() {
        let base = Instant::now();
        let r = analyse(&scenario(base), 11, INTERVAL, MIGRATION, at(base, 1000), &spans(base));
        assert_eq!(r.migration_waits.len(), 1);
        let w = &r.migration_waits[0];
        assert_eq!(
            (w.relation.as_str(), w.mode.as_str(), w.statement),
            (ORDERS, AEL, Some(1))
        );
        assert_eq!(round(w.waited_ms), 55.0);
        assert_eq!(
            w.blockers,
            vec![
                "pid 200 (report): SELECT count(*) FROM orders",
                "pid 201 (?): LOCK TABLE orders IN SHARE MODE",
                "pid 999",
            ]
        );
    }

    #[test]
    fn sessions_waiting_behind_the_migration_directly_or_in_its_queue_are_episodes() {
        let base = Instant::now();
        let r = analyse(&scenario(base), 11, INTERVAL, MIGRATION, at(base, 1000), &spans(base));
        let episodes: Vec<(i32, &str, &str, &str, f64, f64, f64)> = r
            .blocked
            .iter()
            .map(|e| {
                (
                    e.pid,
                    e.application_name.as_str(),
                    e.relation.as_str(),
                    e.mode.as_str(),
                    since(base, e.start),
                    since(base, e.end),
                    round(e.waited_ms),
                )
            })
            .collect();
        // 400 waited behind the report, not the migration: no episode. A start is the first sighting less the
        // wait so far; an episode ends at its last sighting.
        assert_eq!(
            episodes,
            vec![
                (301, "understudy-replay", ORDERS, REL, 1115.0, 1200.0, 85.0),
                (302, "understudy-replay", ORDERS, REL, 1150.0, 1180.0, 30.0),
                (
                    303,
                    "understudy-replay",
                    "transactionid",
                    "ShareLock",
                    1180.0,
                    1180.0,
                    0.0
                ),
            ]
        );
    }

    #[test]
    fn the_longest_queue_counts_waiting_sessions_on_one_relation() {
        let base = Instant::now();
        let r = analyse(&scenario(base), 11, INTERVAL, MIGRATION, at(base, 1000), &spans(base));
        // At 1160 and 1180 two sessions wait on orders (the migration's own wait and 303's transaction id do not
        // count); at 1120 only one on customers.
        assert_eq!(r.longest_queue, 2);
        assert_eq!(r.longest_queue_relation.as_deref(), Some(ORDERS));
    }

    #[test]
    fn a_lock_seen_within_one_interval_of_a_statement_belongs_to_it() {
        let base = Instant::now();
        let samples = vec![
            lock(base, 985, MIGRATION, "public.a", "AccessShareLock"),
            lock(base, 1050, MIGRATION, "public.b", "AccessShareLock"),
            lock(base, 1310, MIGRATION, "public.c", "AccessShareLock"),
            lock(base, 1400, MIGRATION, "public.d", "AccessShareLock"),
            // Another session's locks are not the migration's.
            lock(base, 1050, 200, "public.e", "AccessShareLock"),
        ];
        let r = analyse(&samples, 4, INTERVAL, MIGRATION, at(base, 1000), &spans(base));
        let held: Vec<(&str, f64, Option<usize>)> = r
            .held
            .iter()
            .map(|h| (h.relation.as_str(), round(h.granted_ms), h.statement))
            .collect();
        // Seen before the migration started: granted at 0 ms (saturating), attributed to the first statement.
        assert_eq!(
            held,
            vec![
                ("public.a", 0.0, Some(0)),
                ("public.b", 50.0, Some(0)),
                ("public.c", 310.0, Some(1)),
                ("public.d", 400.0, None),
            ]
        );
        assert!(r.held.iter().all(|h| round(h.held_ms) == 20.0));
    }

    #[test]
    fn a_session_that_waits_twice_has_two_episodes() {
        let base = Instant::now();
        let samples = vec![
            waiting(base, 1100, 301, ORDERS, REL, Some(10), &[MIGRATION]),
            lock(base, 1120, MIGRATION, ORDERS, AEL),
            waiting(base, 1140, 301, ORDERS, REL, None, &[MIGRATION]),
            waiting(base, 1160, 301, ORDERS, REL, Some(40), &[MIGRATION]),
        ];
        let r = analyse(&samples, 4, INTERVAL, MIGRATION, at(base, 1000), &spans(base));
        let episodes: Vec<(f64, f64, f64)> = r
            .blocked
            .iter()
            .map(|e| (since(base, e.start), since(base, e.end), round(e.waited_ms)))
            .collect();
        // Without a wait time the first sighting is the start.
        assert_eq!(episodes, vec![(1090.0, 1100.0, 10.0), (1140.0, 1160.0, 20.0)]);
        assert_eq!(r.longest_queue, 1);
    }

    #[test]
    fn no_samples_no_findings() {
        let base = Instant::now();
        let r = analyse(&[], 0, INTERVAL, MIGRATION, base, &[]);
        assert_eq!((r.samples, r.longest_queue), (0, 0));
        assert!(r.held.is_empty() && r.migration_waits.is_empty() && r.blocked.is_empty());
        assert_eq!(r.longest_queue_relation, None);
    }
}

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
        let mut queue: HashMap<&str, usize> = HashMap::new();
        for s in waiting.iter().filter(|s| s.is_relation) {
            *queue.entry(s.target.as_str()).or_default() += 1;
        }
        if let Some((rel, n)) = queue.into_iter().max_by_key(|(_, n)| *n)
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

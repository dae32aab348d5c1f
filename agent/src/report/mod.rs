//! The dry-run report: a JSON document with a stable schema (`docs/report.md`), a terminal summary ([`text`])
//! and Markdown for a pull-request comment ([`markdown`]); the findings ([`finding`]) and the verdict
//! ([`verdict`]) they lead to.

pub mod finding;
mod markdown;
#[cfg(test)]
pub(crate) mod sample;
mod text;
pub mod verdict;

use serde::Serialize;

pub use finding::{Finding, FindingCode, Severity};
pub use verdict::{RollbackPolicy, Thresholds, Verdict, VerdictReport, judge};

use crate::locks::{BlockEpisode, HeldLock, MigrationWait};
use crate::migrate::StatementOutcome;
use crate::replay::live::{WriteFailure, WriteKind};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Default, utoipa::ToSchema)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(mut values_ms: Vec<f64>) -> Self {
        if values_ms.is_empty() {
            return Percentiles::default();
        }
        values_ms.sort_by(f64::total_cmp);
        let at = |q: f64| values_ms[((values_ms.len() - 1) as f64 * q).round() as usize];
        Percentiles {
            count: values_ms.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ForkSummary {
    pub name: String,
    pub strategy: String,
    pub fork_point: String,
    pub pause_ms: u64,
    pub ready_ms: u64,
    pub kept: bool,
    /// The sandbox's copy the fork was made from: 1, and one more after each resync.
    pub sandbox_generation: u32,
    /// WAL the sandbox had not yet confirmed from its source when it was forked.
    pub sandbox_lag_bytes: Option<u64>,
    /// How far behind its source the sandbox was when it was forked, in seconds.
    pub sandbox_lag_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatementReport {
    #[serde(flatten)]
    pub outcome: StatementOutcome,
    pub locks: Vec<HeldLock>,
    pub waits: Vec<MigrationWait>,
    /// Replayed writes that waited behind the migration while this statement ran.
    pub blocked_writes: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MigrationReport {
    pub file: String,
    pub ok: bool,
    pub duration_ms: f64,
    pub skipped: usize,
    pub statements: Vec<StatementReport>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FailureGroup {
    pub table: String,
    pub kind: WriteKind,
    pub sqlstate: String,
    pub count: usize,
    pub message: String,
    pub sample: String,
}

impl FailureGroup {
    pub fn group(failures: &[WriteFailure]) -> Vec<FailureGroup> {
        let mut groups: Vec<FailureGroup> = Vec::new();
        for f in failures {
            match groups
                .iter_mut()
                .find(|g| g.table == f.table && g.kind == f.kind && g.sqlstate == f.sqlstate)
            {
                Some(g) => g.count += 1,
                None => groups.push(FailureGroup {
                    table: f.table.clone(),
                    kind: f.kind,
                    sqlstate: f.sqlstate.clone(),
                    count: 1,
                    message: f.message.clone(),
                    sample: f.sample.clone(),
                }),
            }
        }
        groups.sort_by_key(|g| std::cmp::Reverse(g.count));
        groups
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Latency {
    pub before: Percentiles,
    pub during: Percentiles,
    pub after: Percentiles,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WritesReport {
    pub replayed: usize,
    pub per_second: f64,
    pub failed: usize,
    pub blocked: usize,
    pub blocked_total_ms: f64,
    pub blocked_max_ms: f64,
    pub latency: Latency,
    /// How far behind production's commit replayed writes finished.
    pub lag: Percentiles,
    pub failures: Vec<FailureGroup>,
    /// Transactions read but not applied when the run ended.
    pub unapplied: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LocksSummary {
    pub sample_interval_ms: f64,
    pub samples: usize,
    pub longest_queue: usize,
    pub longest_queue_relation: Option<String>,
    pub blocked_sessions: Vec<BlockEpisode>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReadProbe {
    pub table: String,
    pub probes: usize,
    pub max_ms: f64,
    /// Time the probe spent in reads slower than 100 ms.
    pub blocked_ms: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Windows {
    pub warmup_ms: f64,
    pub migration_ms: f64,
    pub after_ms: f64,
}

/// A run on a recording: which one, how fast, and where in its window the migration started.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecordedReplay {
    pub name: String,
    /// A multiple of the recorded pace, or `max`.
    pub speed: String,
    /// The migration's offset into the window, in recorded time.
    pub migrate_at_ms: f64,
    /// The window's length by its commits.
    pub window_ms: f64,
    pub transactions: u64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DryRunReport {
    pub schema_version: u32,
    pub understudy_version: String,
    pub sandbox: String,
    pub started_at: String,
    /// The run's OpenTelemetry trace (a build with tracing, exporting): find the run in the tracing backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub trace_id: Option<crate::telemetry::TraceId>,
    pub fork: ForkSummary,
    /// The recording replayed, on a run on a recording.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<RecordedReplay>,
    /// On a subset sandbox, the rows it holds: every figure that depends on data (pre-flight counts, durations,
    /// lock times) was measured on them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subset: Option<crate::source::SubsetState>,
    pub windows: Windows,
    pub migration: MigrationReport,
    pub writes: WritesReport,
    pub locks: LocksSummary,
    pub reads: Vec<ReadProbe>,
    /// Data-dependent pre-flight of the up-migration (counted on the control twin before the migration ran).
    pub preflight: Vec<crate::verify::preflight::PreflightFinding>,
    /// The migrated fork against its control twin; `None` with `--no-verify`.
    pub verification: Option<crate::verify::twins::Verification>,
    pub rollback: crate::verify::twins::Rollback,
    pub findings: Vec<Finding>,
    pub verdict: VerdictReport,
}

impl DryRunReport {
    /// The line saying the figures were measured on a subset, when they were.
    pub fn subset_note(&self) -> Option<String> {
        let subset = self.subset.as_ref()?;
        let filters: Vec<String> = subset.filters.iter().map(|(t, f)| format!("{t} WHERE {f}")).collect();
        Some(format!(
            "measured on a subset (durations, lock times and pre-flight counts are the subset's, not \
             production's): {}",
            filters.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample::{failing_report, write_failure};

    #[test]
    fn percentiles_pick_ranks_of_the_sorted_values() {
        let p = Percentiles::of(vec![5.0, 1.0, 3.0]);
        assert_eq!((p.count, p.p50_ms, p.p99_ms, p.max_ms), (3, 3.0, 5.0, 5.0));
        let hundred: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = Percentiles::of(hundred);
        assert_eq!((p.count, p.p50_ms, p.p99_ms, p.max_ms), (100, 51.0, 99.0, 100.0));
        let p = Percentiles::of(Vec::new());
        assert_eq!((p.count, p.p50_ms, p.p99_ms, p.max_ms), (0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn failures_group_by_table_kind_and_sqlstate_most_first() {
        let f =
            |table: &str, kind, sqlstate: &str, message: &str| write_failure(table, kind, sqlstate, message, message);
        let groups = FailureGroup::group(&[
            f("public.a", WriteKind::Insert, "23502", "first"),
            f("public.b", WriteKind::Insert, "23502", "b"),
            f("public.b", WriteKind::Insert, "23502", "b again"),
            f("public.a", WriteKind::Insert, "23502", "second"),
            f("public.a", WriteKind::Update, "23502", "update"),
            f("public.a", WriteKind::Insert, "23505", "unique"),
            f("public.b", WriteKind::Insert, "23502", "b third"),
        ]);
        let got: Vec<(&str, WriteKind, &str, usize, &str)> = groups
            .iter()
            .map(|g| {
                (
                    g.table.as_str(),
                    g.kind,
                    g.sqlstate.as_str(),
                    g.count,
                    g.message.as_str(),
                )
            })
            .collect();
        // The first failure of a group is its message and sample; ties keep their first appearance.
        assert_eq!(
            got,
            vec![
                ("public.b", WriteKind::Insert, "23502", 3, "b"),
                ("public.a", WriteKind::Insert, "23502", 2, "first"),
                ("public.a", WriteKind::Update, "23502", 1, "update"),
                ("public.a", WriteKind::Insert, "23505", 1, "unique"),
            ]
        );
        assert_eq!(groups[1].sample, "first");
        assert!(FailureGroup::group(&[]).is_empty());
    }

    #[test]
    fn json_of_a_failing_run() {
        insta::assert_json_snapshot!(failing_report());
    }
}

//! The dry-run report: a JSON document with a stable schema (`docs/report.md`), a terminal summary and Markdown
//! for a pull-request comment.

use serde::Serialize;

use crate::locks::{BlockEpisode, HeldLock, MigrationWait};
use crate::migrate::StatementOutcome;
use crate::replay::live::WriteFailure;

pub const SCHEMA_VERSION: u32 = 1;

/// pass / warn / fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    Info,
    Warn,
    Fail,
}

/// One thing a person should know, with its evidence and what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// A stable code, e.g. `preflight-orphans`, `failed-writes`, `rollback-lossy`.
    pub code: String,
    pub severity: Severity,
    pub title: String,
    /// The migration file and line the finding is about, when it is about a statement.
    pub file: Option<String>,
    pub line: Option<usize>,
    pub evidence: String,
    pub remedy: String,
}

impl Finding {
    pub fn new(code: &str, severity: Severity, title: String, evidence: String, remedy: &str) -> Self {
        Finding {
            code: code.into(),
            severity,
            title,
            file: None,
            line: None,
            evidence,
            remedy: remedy.into(),
        }
    }

    pub fn at(mut self, file: &str, line: usize) -> Self {
        self.file = Some(file.to_string());
        self.line = Some(line);
        self
    }
}

#[derive(Debug, Clone, Serialize, Default)]
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

#[derive(Debug, Clone, Serialize)]
pub struct ForkSummary {
    pub name: String,
    pub strategy: String,
    pub fork_point: String,
    pub pause_ms: u64,
    pub ready_ms: u64,
    pub kept: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatementReport {
    #[serde(flatten)]
    pub outcome: StatementOutcome,
    pub locks: Vec<HeldLock>,
    pub waits: Vec<MigrationWait>,
    /// Replayed writes that waited behind the migration while this statement ran.
    pub blocked_writes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrationReport {
    pub file: String,
    pub ok: bool,
    pub duration_ms: f64,
    pub skipped: usize,
    pub statements: Vec<StatementReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureGroup {
    pub table: String,
    pub kind: String,
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
                    kind: f.kind.clone(),
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

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub before: Percentiles,
    pub during: Percentiles,
    pub after: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Serialize)]
pub struct LocksSummary {
    pub sample_interval_ms: f64,
    pub samples: usize,
    pub longest_queue: usize,
    pub longest_queue_relation: Option<String>,
    pub blocked_sessions: Vec<BlockEpisode>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReadProbe {
    pub table: String,
    pub probes: usize,
    pub max_ms: f64,
    /// Time the probe spent in reads slower than 100 ms.
    pub blocked_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Windows {
    pub warmup_ms: f64,
    pub migration_ms: f64,
    pub after_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerdictReport {
    pub result: Verdict,
    pub reasons: Vec<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct DryRunReport {
    pub schema_version: u32,
    pub understudy_version: String,
    pub sandbox: String,
    pub started_at: String,
    pub fork: ForkSummary,
    pub windows: Windows,
    pub migration: MigrationReport,
    pub writes: WritesReport,
    pub locks: LocksSummary,
    pub reads: Vec<ReadProbe>,
    /// Data-dependent pre-flight of the up-migration (counted on the control twin before the migration ran).
    pub preflight: Vec<crate::verify::preflight::PreflightFinding>,
    /// The migrated fork against its control twin; `None` with `--no-verify`.
    pub verification: Option<super::verification::Verification>,
    pub rollback: super::verification::Rollback,
    pub findings: Vec<Finding>,
    pub verdict: VerdictReport,
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else {
        format!("{v:.0} ms")
    }
}

fn first_line(sql: &str) -> String {
    let l = sql.lines().next().unwrap_or("");
    if l.chars().count() > 70 {
        format!("{}…", l.chars().take(69).collect::<String>())
    } else {
        l.to_string()
    }
}

impl DryRunReport {
    /// The terminal summary.
    pub fn text(&self) -> String {
        let mut o = String::new();
        let v = match self.verdict.result {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        o.push_str(&format!(
            "dry-run of {} on sandbox {}: {v}\n",
            self.migration.file, self.sandbox
        ));
        for r in &self.verdict.reasons {
            o.push_str(&format!("  - {r}\n"));
        }
        o.push_str(&format!(
            "fork {} ({}, at {}, apply paused {} ms); windows: warm-up {}, migration {}, after {}\n",
            self.fork.name,
            self.fork.strategy,
            self.fork.fork_point,
            self.fork.pause_ms,
            ms(self.windows.warmup_ms),
            ms(self.windows.migration_ms),
            ms(self.windows.after_ms)
        ));
        o.push_str("statements:\n");
        for s in &self.migration.statements {
            let status = if s.outcome.ok {
                "ok".to_string()
            } else {
                format!("FAILED {}", s.outcome.sqlstate.clone().unwrap_or_default())
            };
            o.push_str(&format!(
                "  line {:>4}  {:>9}  {:<8} {}\n",
                s.outcome.line,
                ms(s.outcome.duration_ms),
                status,
                first_line(&s.outcome.sql)
            ));
            for l in &s.locks {
                o.push_str(&format!(
                    "               holds {} on {} for {}\n",
                    l.mode,
                    l.relation,
                    ms(l.held_ms)
                ));
            }
            for w in &s.waits {
                o.push_str(&format!(
                    "               waited {} for {} on {} behind {}\n",
                    ms(w.waited_ms),
                    w.mode,
                    w.relation,
                    w.blockers.join("; ")
                ));
            }
            if s.blocked_writes > 0 {
                o.push_str(&format!(
                    "               blocked {} replayed write(s)\n",
                    s.blocked_writes
                ));
            }
            if let Some(e) = &s.outcome.error {
                o.push_str(&format!("               error: {e}\n"));
            }
        }
        let w = &self.writes;
        o.push_str(&format!(
            "writes: {} replayed ({:.0}/s), {} failed, {} blocked (total {}, max {}), longest lock queue {}{}\n",
            w.replayed,
            w.per_second,
            w.failed,
            w.blocked,
            ms(w.blocked_total_ms),
            ms(w.blocked_max_ms),
            self.locks.longest_queue,
            self.locks
                .longest_queue_relation
                .as_ref()
                .map(|r| format!(" on {r}"))
                .unwrap_or_default()
        ));
        o.push_str(&format!(
            "write latency p50/p99: before {}/{}, during {}/{}, after {}/{}; replay lag p99 {}\n",
            ms(w.latency.before.p50_ms),
            ms(w.latency.before.p99_ms),
            ms(w.latency.during.p50_ms),
            ms(w.latency.during.p99_ms),
            ms(w.latency.after.p50_ms),
            ms(w.latency.after.p99_ms),
            ms(w.lag.p99_ms)
        ));
        for f in &w.failures {
            o.push_str(&format!(
                "  {} × {} on {} failed with {}: {}\n",
                f.count, f.kind, f.table, f.sqlstate, f.message
            ));
        }
        for r in self.reads.iter().filter(|r| r.blocked_ms > 0.0) {
            o.push_str(&format!(
                "reads of {} blocked {} (longest read {})\n",
                r.table,
                ms(r.blocked_ms),
                ms(r.max_ms)
            ));
        }
        o
    }

    /// Markdown for a pull-request comment.
    pub fn markdown(&self) -> String {
        let icon = match self.verdict.result {
            Verdict::Pass => "✅ pass",
            Verdict::Warn => "⚠️ warn",
            Verdict::Fail => "❌ fail",
        };
        let mut o = format!(
            "### Understudy dry-run: {icon}\n\n`{}` on sandbox `{}` under replayed production writes.\n\n",
            self.migration.file, self.sandbox
        );
        for r in &self.verdict.reasons {
            o.push_str(&format!("- {r}\n"));
        }
        o.push_str(
            "\n| line | statement | duration | locks held | blocked writes | result |\n|---|---|---|---|---|---|\n",
        );
        for s in &self.migration.statements {
            let locks: Vec<String> = s
                .locks
                .iter()
                .map(|l| format!("{} on `{}` ({})", l.mode, l.relation, ms(l.held_ms)))
                .collect();
            o.push_str(&format!(
                "| {} | `{}` | {} | {} | {} | {} |\n",
                s.outcome.line,
                first_line(&s.outcome.sql).replace('|', "\\|"),
                ms(s.outcome.duration_ms),
                if locks.is_empty() {
                    "-".into()
                } else {
                    locks.join("<br>")
                },
                s.blocked_writes,
                if s.outcome.ok {
                    "ok".to_string()
                } else {
                    format!("**{}**", s.outcome.sqlstate.clone().unwrap_or_else(|| "error".into()))
                }
            ));
        }
        let w = &self.writes;
        o.push_str(&format!(
            "\n**Writes**: {} replayed, {} failed, {} blocked (max wait {}), longest lock queue {}. \
             p99 latency before/during/after: {} / {} / {}.\n",
            w.replayed,
            w.failed,
            w.blocked,
            ms(w.blocked_max_ms),
            self.locks.longest_queue,
            ms(w.latency.before.p99_ms),
            ms(w.latency.during.p99_ms),
            ms(w.latency.after.p99_ms)
        ));
        let notable: Vec<&Finding> = self.findings.iter().filter(|f| f.severity != Severity::Info).collect();
        if !notable.is_empty() {
            o.push_str("\n| severity | finding | where | evidence | fix |\n|---|---|---|---|---|\n");
            for f in notable {
                o.push_str(&format!(
                    "| {} | **{}** {} | {} | {} | {} |\n",
                    if f.severity == Severity::Fail {
                        "❌ fail"
                    } else {
                        "⚠️ warn"
                    },
                    f.code,
                    f.title.replace('|', "\\|"),
                    f.line
                        .map(|l| format!("`{}:{l}`", f.file.clone().unwrap_or_default()))
                        .unwrap_or_default(),
                    f.evidence.replace('|', "\\|"),
                    f.remedy.replace('|', "\\|")
                ));
            }
        }
        if !w.failures.is_empty() {
            o.push_str("\n| table | write | SQLSTATE | count | error |\n|---|---|---|---|---|\n");
            for f in &w.failures {
                o.push_str(&format!(
                    "| `{}` | {} | {} | {} | {} |\n",
                    f.table,
                    f.kind,
                    f.sqlstate,
                    f.count,
                    f.message.replace('|', "\\|")
                ));
            }
        }
        o
    }
}

//! The Markdown of a dry-run report, for a pull-request comment.

use super::text::{first_line, ms};
use super::{DryRunReport, Finding, Severity, Verdict};

impl DryRunReport {
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
        if let Some(note) = self.subset_note() {
            o.push_str(&format!("\n_{note}_\n"));
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
        if let Some(t) = &self.trace_id {
            o.push_str(&format!("\nTrace `{t}`.\n"));
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use crate::report::sample::{self, failing_report, passing_report};
    use crate::report::{FindingCode, Severity, Thresholds, judge};

    #[test]
    fn markdown_of_a_failing_run() {
        insta::assert_snapshot!(failing_report().markdown());
    }

    #[test]
    fn markdown_of_a_passing_run() {
        let md = passing_report().markdown();
        // Only informational findings and no failed writes: neither table.
        assert!(!md.contains("| severity |") && !md.contains("| SQLSTATE |"), "{md}");
        insta::assert_snapshot!(md);
    }

    #[test]
    fn a_warning_run_is_marked_warn() {
        let mut r = passing_report();
        r.findings.push(sample::finding(
            FindingCode::RollbackUntested,
            Severity::Warn,
            "rollback untested: no down-migration given",
        ));
        r.verdict = judge(
            &sample::outcome_of(&r.migration.statements, 0),
            &r.migration.statements,
            &r.writes,
            &Thresholds::default(),
            &r.findings,
        );
        let md = r.markdown();
        assert!(md.starts_with("### Understudy dry-run: ⚠️ warn\n"), "{md}");
        assert!(
            md.contains("| ⚠️ warn | **rollback-untested** rollback untested: no down-migration given |  |  |  |\n"),
            "{md}"
        );
    }
}

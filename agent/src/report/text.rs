//! The terminal summary of a dry-run report.

use super::{DryRunReport, Verdict};

pub(super) fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else {
        format!("{v:.0} ms")
    }
}

pub(super) fn first_line(sql: &str) -> String {
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
        if let Some(note) = self.subset_note() {
            o.push_str(&format!("{note}\n"));
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
        if let Some(t) = &self.trace_id {
            o.push_str(&format!("trace {t}\n"));
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample::{failing_report, passing_report};
    use crate::report::{FindingCode, Severity, sample};

    #[test]
    fn text_of_a_failing_run() {
        insta::assert_snapshot!(failing_report().text());
    }

    #[test]
    fn text_of_a_passing_run() {
        insta::assert_snapshot!(passing_report().text());
    }

    #[test]
    fn a_warning_run_says_warn() {
        let mut r = passing_report();
        r.findings.push(sample::finding(
            FindingCode::ConstraintNotValid,
            Severity::Warn,
            "constraint public.orders.orders_customer_fk is left NOT VALID",
        ));
        r.verdict = crate::report::judge(
            &sample::outcome_of(&r.migration.statements, 0),
            &r.migration.statements,
            &r.writes,
            &crate::report::Thresholds::default(),
            &r.findings,
        );
        let text = r.text();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("dry-run of migrations/0042_orders_note.sql on sandbox shop: WARN")
        );
        assert_eq!(
            lines.next(),
            Some("  - constraint public.orders.orders_customer_fk is left NOT VALID")
        );
    }

    #[test]
    fn durations_switch_to_seconds_at_one_second() {
        assert_eq!(ms(0.0), "0 ms");
        assert_eq!(ms(999.4), "999 ms");
        assert_eq!(ms(1000.0), "1.00 s");
        assert_eq!(ms(61234.5), "61.23 s");
    }

    #[test]
    fn a_statement_shows_as_its_first_line_cut_at_70_characters() {
        assert_eq!(first_line("CREATE INDEX i\n    ON t (c);"), "CREATE INDEX i");
        assert_eq!(first_line(""), "");
        let seventy = "x".repeat(70);
        assert_eq!(first_line(&seventy), seventy);
        let long = format!("{seventy}é");
        assert_eq!(first_line(&long), format!("{}…", "x".repeat(69)));
        // Characters, not bytes.
        let accents = "é".repeat(71);
        assert_eq!(first_line(&accents), format!("{}…", "é".repeat(69)));
    }
}

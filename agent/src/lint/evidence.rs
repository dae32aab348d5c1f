//! squawk's hits joined to the evidence: each rule hit on the up-migration becomes a finding that says what its
//! statement was measured to do (duration, locks held, writes blocked), and matters (warn) only when the
//! statement did harm.

use crate::report::{Finding, FindingCode, Severity, StatementReport};

/// squawk's rule hits on the up-migration, each joined to what its statement was measured to do.
pub fn findings(text: &str, file: &str, statements: &[StatementReport]) -> Vec<Finding> {
    let ms = |v: f64| {
        if v >= 1000.0 {
            format!("{:.1} s", v / 1000.0)
        } else {
            format!("{v:.0} ms")
        }
    };
    super::lint(text, 15)
        .into_iter()
        .map(|hit| {
            // The statement the hit is in: the last one starting at or before its line.
            let stmt = statements
                .iter()
                .filter(|s| s.outcome.line <= hit.line && s.outcome.line > 0)
                .max_by_key(|s| s.outcome.line);
            let (severity, evidence) = match stmt {
                Some(s) => {
                    let locks: Vec<String> = s
                        .locks
                        .iter()
                        .map(|l| format!("held {} on {} {}", l.mode, l.relation, ms(l.held_ms)))
                        .collect();
                    let mut evidence = format!("measured: ran {}", ms(s.outcome.duration_ms));
                    if !locks.is_empty() {
                        evidence.push_str(&format!(", {}", locks.join(", ")));
                    }
                    evidence.push_str(&format!(", {} write(s) blocked", s.blocked_writes));
                    if !s.outcome.ok {
                        evidence.push_str(&format!(
                            ", failed with {}",
                            s.outcome.sqlstate.clone().unwrap_or_default()
                        ));
                    }
                    let harmful = s.blocked_writes > 0 || !s.outcome.ok;
                    (if harmful { Severity::Warn } else { Severity::Info }, evidence)
                }
                None => (Severity::Warn, "not run (an earlier statement failed)".to_string()),
            };
            Finding::new(
                FindingCode::Lint(hit.rule),
                severity,
                hit.message,
                evidence,
                hit.help.as_deref().unwrap_or(""),
            )
            .at(file, hit.line)
        })
        .collect()
}

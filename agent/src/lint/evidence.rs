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
    let starts: Vec<usize> = crate::migrate::split::split(text)
        .map(|all| all.iter().map(|s| s.line).collect())
        .unwrap_or_else(|_| statements.iter().map(|s| s.outcome.line).collect());
    super::lint(text, 15)
        .into_iter()
        .map(|hit| {
            // The statement the hit is in: the last of the file starting at or before its line; its measurements,
            // if it ran.
            let containing = starts.iter().copied().filter(|l| *l <= hit.line).max();
            let stmt = containing.and_then(|line| statements.iter().find(|s| s.outcome.line == line));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::sample::{failed, held, ok_statement, statement};

    const FILE: &str = "migrations/0043_orders_customer.sql";

    /// Three statements, each hit by a squawk rule: a NOT NULL column without a default (line 2), a blocking
    /// index build spread over two lines (3-4), a foreign key validated at once (line 5).
    const MIGRATION: &str = "-- orders belong to customers\n\
        ALTER TABLE orders ADD COLUMN customer_id bigint NOT NULL;\n\
        CREATE INDEX orders_customer_idx\n    ON orders (customer_id);\n\
        ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id);\n";

    fn measured() -> Vec<StatementReport> {
        let mut add = statement(ok_statement(
            0,
            2,
            "ALTER TABLE orders ADD COLUMN customer_id bigint NOT NULL;",
            0.0,
            2.4,
        ));
        add.locks = vec![held("public.orders", "AccessExclusiveLock", 0.2, 20.0, 0)];
        let mut index = statement(ok_statement(
            1,
            3,
            "CREATE INDEX orders_customer_idx\n    ON orders (customer_id);",
            2.4,
            3850.0,
        ));
        index.locks = vec![held("public.orders", "ShareLock", 2.6, 3860.0, 1)];
        index.blocked_writes = 41;
        let mut fk = statement(failed(
            ok_statement(
                2,
                5,
                "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id);",
                3852.4,
                310.0,
            ),
            "23503",
            "insert or update on table \"orders\" violates foreign key constraint \"orders_customer_fk\"",
            false,
        ));
        fk.locks = vec![
            held("public.orders", "ShareRowExclusiveLock", 3852.6, 320.0, 2),
            held("public.customers", "ShareRowExclusiveLock", 3852.7, 320.0, 2),
        ];
        vec![add, index, fk]
    }

    #[test]
    fn lint_hits_carry_their_statements_measurements() {
        let found = findings(MIGRATION, FILE, &measured());
        // Harmless when its statement blocked nothing and succeeded; a warning otherwise.
        let severities: Vec<(Option<usize>, Severity)> = found.iter().map(|f| (f.line, f.severity)).collect();
        assert!(severities.contains(&(Some(3), Severity::Warn)), "{severities:?}");
        assert!(severities.contains(&(Some(5), Severity::Warn)), "{severities:?}");
        assert!(
            found
                .iter()
                .filter(|f| f.line == Some(2))
                .all(|f| f.severity == Severity::Info),
            "{found:#?}"
        );
        insta::assert_json_snapshot!(found);
    }

    #[test]
    fn a_hit_before_every_measured_statement_was_not_run() {
        // No statement was measured at or before the hit's line.
        let found = findings("CREATE INDEX i ON t (c);\n", FILE, &[]);
        let index = found
            .iter()
            .find(|f| f.code == FindingCode::Lint("require-concurrent-index-creation".into()))
            .expect("rule hit");
        assert_eq!(index.severity, Severity::Warn);
        assert_eq!(index.evidence, "not run (an earlier statement failed)");
        assert_eq!((index.file.as_deref(), index.line), (Some(FILE), Some(1)));
    }

    #[test]
    fn a_hit_after_the_failed_statement_was_not_run() {
        // The index build failed; the foreign key on line 5 never ran.
        let mut statements = measured();
        statements.truncate(2);
        statements[1].outcome = failed(
            statements[1].outcome.clone(),
            "55P03",
            "canceling statement due to lock timeout",
            false,
        );
        let found = findings(MIGRATION, FILE, &statements);
        let fk = found.iter().find(|f| f.line == Some(5)).expect("foreign key hit");
        assert_eq!(fk.evidence, "not run (an earlier statement failed)");
    }
}

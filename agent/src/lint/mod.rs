//! Static lint with squawk's rules (`squawk-linter`), positioned by line so that the dry-run can join each hit to
//! the measured evidence of its statement. `understudy lint FILE` runs this pass alone.

pub mod evidence;

use std::str::FromStr;

use serde::Serialize;
use squawk_linter::{Linter, Version};
use squawk_syntax::SourceFile;

/// One rule hit.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LintHit {
    /// squawk's rule name, e.g. `require-concurrent-index-creation`.
    pub rule: String,
    pub message: String,
    pub help: Option<String>,
    /// 1-based line and column of the hit.
    pub line: usize,
    pub column: usize,
}

/// Lints `sql` for PostgreSQL `pg_major`. Statements run outside a transaction unless the file opens one (as
/// `psql -f` runs them).
pub fn lint(sql: &str, pg_major: u32) -> Vec<LintHit> {
    let parse = SourceFile::parse(sql);
    let mut linter = Linter::with_default_rules();
    if let Ok(v) = Version::from_str(&pg_major.to_string()) {
        linter.settings.pg_version = v;
    }
    let mut hits: Vec<LintHit> = linter
        .lint(&parse, sql)
        .into_iter()
        .map(|v| {
            let offset = u32::from(v.text_range.start()) as usize;
            let (line, column) = crate::migrate::syntax::position(sql, offset);
            LintHit {
                rule: v.code.to_string(),
                message: v.message,
                help: v.help,
                line,
                column,
            }
        })
        .collect();
    hits.sort_by_key(|h| (h.line, h.column));
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_a_blocking_index_with_its_line() {
        let hits = lint(
            "-- add an index\nALTER TABLE t ADD COLUMN c int;\nCREATE INDEX i ON t (c);\n",
            15,
        );
        let hit = hits
            .iter()
            .find(|h| h.rule == "require-concurrent-index-creation")
            .expect("rule hit");
        assert_eq!(hit.line, 3);
        assert_eq!(hit.column, 1);
    }

    #[test]
    fn concurrent_index_outside_a_transaction_is_clean_of_that_rule() {
        let hits = lint("CREATE INDEX CONCURRENTLY i ON t (c);\n", 15);
        assert!(
            !hits.iter().any(|h| h.rule == "require-concurrent-index-creation"),
            "{hits:?}"
        );
    }

    #[test]
    fn foreign_key_without_not_valid() {
        let hits = lint("ALTER TABLE a ADD CONSTRAINT f FOREIGN KEY (b) REFERENCES b (id);", 15);
        assert!(
            hits.iter().any(|h| h.rule == "adding-foreign-key-constraint"),
            "{hits:?}"
        );
    }
}

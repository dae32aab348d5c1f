//! Migrations: splitting a file with `psql -f` semantics, deciding what runs inside a transaction, and running it
//! statement by statement on one session, timed.

pub mod run;
pub mod split;
pub mod syntax;

pub use run::{MigrationOutcome, StatementOutcome, run};
pub use split::{SplitError, Statement, split};

/// How one statement behaves with respect to transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT` / `END`.
    Commit,
    /// `ROLLBACK` / `ABORT`.
    Rollback,
    /// Cannot run inside a transaction block (`CREATE INDEX CONCURRENTLY`, `VACUUM`, ...).
    NonTransactional,
    Ordinary,
}

/// Classifies a statement.
pub fn kind(sql: &str) -> Kind {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(6)
        .map(|w| w.trim_end_matches(';').to_ascii_uppercase())
        .collect();
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match (w(0), w(1)) {
        ("BEGIN", "ATOMIC") => Kind::Ordinary,
        ("BEGIN", _) | ("START", "TRANSACTION") => Kind::Begin,
        ("COMMIT", "PREPARED") | ("ROLLBACK", "PREPARED") => Kind::NonTransactional,
        ("COMMIT", _) | ("END", _) => Kind::Commit,
        ("ROLLBACK", "TO") => Kind::Ordinary,
        ("ROLLBACK", _) | ("ABORT", _) => Kind::Rollback,
        ("VACUUM", _)
        | ("CREATE", "DATABASE")
        | ("DROP", "DATABASE")
        | ("ALTER", "SYSTEM")
        | ("CREATE", "TABLESPACE")
        | ("DROP", "TABLESPACE") => Kind::NonTransactional,
        ("REINDEX", _) if words.iter().any(|x| x == "CONCURRENTLY") => Kind::NonTransactional,
        ("CREATE", _) | ("DROP", _)
            if words.iter().take(4).any(|x| x == "INDEX") && words.iter().any(|x| x == "CONCURRENTLY") =>
        {
            Kind::NonTransactional
        }
        ("ALTER", "TABLE")
            if sql.to_ascii_uppercase().contains("DETACH PARTITION")
                && sql.to_ascii_uppercase().contains("CONCURRENTLY") =>
        {
            Kind::NonTransactional
        }
        _ => Kind::Ordinary,
    }
}

/// A migration that cannot be run as asked.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(transparent)]
    Split(#[from] SplitError),
    #[error("the migration has no statement")]
    Empty,
    #[error("line {line}, column {column}: syntax error: {message}; fix the statement (nothing was forked)")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "line {line}: {sql:?} cannot run inside a transaction block; remove --single-transaction or the surrounding BEGIN"
    )]
    NotInTransaction { line: usize, sql: String },
}

/// Statements to run and whether each runs inside a transaction the file (or `--single-transaction`) opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub statements: Vec<Statement>,
    pub single_transaction: bool,
}

impl Plan {
    /// Parses a migration file's text.
    pub fn parse(text: &str, single_transaction: bool) -> Result<Self, PlanError> {
        let statements = split(text)?;
        if statements.is_empty() {
            return Err(PlanError::Empty);
        }
        if let Some(e) = syntax::syntax_errors(text).into_iter().next() {
            return Err(PlanError::Syntax {
                line: e.line,
                column: e.column,
                message: e.message,
            });
        }
        let mut open = single_transaction;
        for s in &statements {
            match kind(&s.sql) {
                Kind::Begin => open = true,
                Kind::Commit | Kind::Rollback => open = single_transaction,
                Kind::NonTransactional if open => {
                    return Err(PlanError::NotInTransaction {
                        line: s.line,
                        sql: first_line(&s.sql),
                    });
                }
                _ => {}
            }
        }
        Ok(Plan {
            statements,
            single_transaction,
        })
    }
}

fn first_line(sql: &str) -> String {
    let line = sql.lines().next().unwrap_or("");
    if line.len() > 80 {
        format!(
            "{}...",
            &line[..line.char_indices().nth(77).map_or(line.len(), |(i, _)| i)]
        )
    } else {
        line.to_string()
    }
}

/// Tables a statement names as its target (for read probes), best effort: `ALTER TABLE x`, `CREATE INDEX ... ON
/// x`, `UPDATE x`, `DELETE FROM x`, `INSERT INTO x`, `REFERENCES x`, `LOCK x`.
pub fn target_tables(sql: &str) -> Vec<String> {
    let tokens: Vec<&str> = sql
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',' || c == ';')
        .filter(|t| !t.is_empty())
        .collect();
    let upper: Vec<String> = tokens.iter().map(|t| t.to_ascii_uppercase()).collect();
    let mut out = Vec::new();
    let skip = ["IF", "EXISTS", "NOT", "ONLY", "TABLE", "CONCURRENTLY"];
    let mut i = 0;
    while i < tokens.len() {
        let take_after = match upper[i].as_str() {
            "TABLE" if i > 0 && upper[i - 1] == "ALTER" => true,
            "ON" if upper[..i].iter().any(|u| u == "INDEX") => true,
            "UPDATE" if i == 0 => true,
            "FROM" if i > 0 && upper[i - 1] == "DELETE" => true,
            "INTO" if i > 0 && upper[i - 1] == "INSERT" => true,
            "REFERENCES" | "LOCK" => true,
            _ => false,
        };
        if take_after {
            let mut j = i + 1;
            while j < tokens.len() && skip.contains(&upper[j].as_str()) {
                j += 1;
            }
            if let Some(t) = tokens.get(j) {
                let name = t.trim_matches('"').to_string();
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        i += 1;
    }
    out
}

impl crate::error::Classify for PlanError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind("BEGIN"), Kind::Begin);
        assert_eq!(kind("start transaction isolation level serializable"), Kind::Begin);
        assert_eq!(kind("commit"), Kind::Commit);
        assert_eq!(kind("CREATE INDEX CONCURRENTLY i ON t (a)"), Kind::NonTransactional);
        assert_eq!(
            kind("create unique index concurrently if not exists i on t (a)"),
            Kind::NonTransactional
        );
        assert_eq!(kind("DROP INDEX CONCURRENTLY i"), Kind::NonTransactional);
        assert_eq!(kind("CREATE INDEX i ON t (a)"), Kind::Ordinary);
        assert_eq!(kind("VACUUM t"), Kind::NonTransactional);
        assert_eq!(kind("ROLLBACK TO SAVEPOINT s"), Kind::Ordinary);
        assert_eq!(
            kind("ALTER TABLE t DETACH PARTITION p CONCURRENTLY"),
            Kind::NonTransactional
        );
    }

    #[test]
    fn plans_refuse_concurrent_index_in_a_transaction() {
        assert!(Plan::parse("CREATE INDEX CONCURRENTLY i ON t (a);", false).is_ok());
        let err = Plan::parse("CREATE INDEX CONCURRENTLY i ON t (a);", true).expect_err("single transaction");
        assert!(matches!(err, PlanError::NotInTransaction { line: 1, .. }));
        let err = Plan::parse(
            "BEGIN;\nALTER TABLE t ADD c int;\nCREATE INDEX CONCURRENTLY i ON t (c);\nCOMMIT;",
            false,
        )
        .expect_err("in BEGIN");
        assert!(matches!(err, PlanError::NotInTransaction { line: 3, .. }));
        assert!(
            Plan::parse(
                "BEGIN; ALTER TABLE t ADD c int; COMMIT; CREATE INDEX CONCURRENTLY i ON t (c);",
                false
            )
            .is_ok()
        );
        assert_eq!(Plan::parse("-- nothing\n", false), Err(PlanError::Empty));
        let err = Plan::parse(
            "ALTER TABLE t ADD COLUMN c int;\nALTER TABLE t ADD COLUM d int;\n",
            false,
        )
        .expect_err("a typo");
        assert!(matches!(err, PlanError::Syntax { line: 2, .. }), "{err}");
        assert!(err.to_string().contains("fix the statement"), "{err}");
    }

    #[test]
    fn targets() {
        assert_eq!(
            target_tables("ALTER TABLE IF EXISTS ONLY public.orders ADD COLUMN x int"),
            vec!["public.orders"]
        );
        assert_eq!(
            target_tables("CREATE INDEX CONCURRENTLY i ON orders (customer_id)"),
            vec!["orders"]
        );
        assert_eq!(
            target_tables("ALTER TABLE orders ADD FOREIGN KEY (customer_id) REFERENCES customers (id)"),
            vec!["orders", "customers"]
        );
        assert_eq!(target_tables("UPDATE users SET email = lower(email)"), vec!["users"]);
    }
}

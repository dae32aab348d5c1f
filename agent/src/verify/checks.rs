//! User checks (`--checks FILE`): every statement of the file is a named check ("check N, line L" or the text of
//! a `-- check: name` comment on the line before it), run read-only on both twins, results compared.

use serde::Serialize;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::migrate::{SplitError, Statement, split};

/// One check's result on both twins.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CheckResult {
    pub name: String,
    pub line: usize,
    pub sql: String,
    /// Rows as text on the migrated fork and on the control twin (at most 20 each).
    pub migrated: Vec<Vec<Option<String>>>,
    pub control: Vec<Vec<Option<String>>>,
    pub changed: bool,
    pub error: Option<String>,
}

/// Parses a checks file into named statements.
pub fn parse(text: &str) -> Result<Vec<(String, Statement)>, SplitError> {
    let lines: Vec<&str> = text.lines().collect();
    Ok(split(text)?
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let named = s
                .line
                .checked_sub(2)
                .and_then(|l| lines.get(l))
                .and_then(|l| l.trim().strip_prefix("-- check:").map(|n| n.trim().to_string()))
                .filter(|n| !n.is_empty());
            (named.unwrap_or_else(|| format!("check {} (line {})", i + 1, s.line)), s)
        })
        .collect())
}

async fn rows(client: &Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    client
        .batch_execute("BEGIN READ ONLY")
        .await
        .map_err(|e| crate::pg::describe(&e))?;
    let result = client.simple_query(sql).await;
    let _ = client.batch_execute("ROLLBACK").await;
    let messages = result.map_err(|e| crate::pg::describe(&e))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .take(20)
        .collect())
}

/// Runs every check on both twins.
pub async fn run(migrated: &Client, control: &Client, checks: &[(String, Statement)]) -> Vec<CheckResult> {
    let mut out = Vec::new();
    for (name, s) in checks {
        let a = rows(migrated, &s.sql).await;
        let b = rows(control, &s.sql).await;
        let error = match (&a, &b) {
            (Err(e), _) => Some(format!("on the migrated fork: {e}")),
            (_, Err(e)) => Some(format!("on the control twin: {e}")),
            _ => None,
        };
        let (a, b) = (a.unwrap_or_default(), b.unwrap_or_default());
        out.push(CheckResult {
            name: name.clone(),
            line: s.line,
            sql: s.sql.clone(),
            changed: a != b || error.is_some(),
            migrated: a,
            control: b,
            error,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_comments_or_position() {
        let checks =
            parse("-- check: users without email\nSELECT count(*) FROM users WHERE email IS NULL;\n\nSELECT 1;")
                .expect("ok");
        assert_eq!(checks[0].0, "users without email");
        assert_eq!(checks[1].0, "check 2 (line 4)");
    }
}

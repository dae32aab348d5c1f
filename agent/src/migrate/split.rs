//! Splitting a migration file into statements the way `psql -f` runs them: semicolons end statements except
//! inside quotes, quoted identifiers, dollar-quoted bodies, comments and parentheses-free `BEGIN ... END` of
//! `CREATE FUNCTION ... BEGIN ATOMIC`; each statement keeps its line number for reports.

/// One statement of a migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The SQL text without the terminating semicolon, trimmed.
    pub sql: String,
    /// 1-based line where the statement starts.
    pub line: usize,
}

/// A file that cannot be split.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SplitError {
    #[error("line {line}: unterminated {what}")]
    Unterminated { what: &'static str, line: usize },
    #[error("line {line}: psql meta-command {command:?} is not supported in migrations (only SQL)")]
    MetaCommand { command: String, line: usize },
}

/// Splits `text` into statements.
pub fn split(text: &str) -> Result<Vec<Statement>, SplitError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut current = String::new();
    let mut start_line = 1;
    let mut line = 1;
    let mut i = 0;
    let mut atomic_depth = 0usize; // inside BEGIN ATOMIC ... END
    let mut at_line_start = true;
    while i < chars.len() {
        let c = chars[i];
        if current.trim().is_empty() && !c.is_whitespace() {
            start_line = line;
        }
        if at_line_start && c == '\\' && current.trim().is_empty() {
            let end = chars[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(chars.len(), |p| i + p);
            let command: String = chars[i..end].iter().collect();
            return Err(SplitError::MetaCommand {
                command: command.trim().to_string(),
                line,
            });
        }
        at_line_start = false;
        match c {
            '\n' => {
                line += 1;
                at_line_start = true;
                current.push(c);
                i += 1;
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                let open_line = line;
                let mut depth = 0;
                loop {
                    if i >= chars.len() {
                        return Err(SplitError::Unterminated {
                            what: "comment",
                            line: open_line,
                        });
                    }
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if chars[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
                current.push(' ');
            }
            '\'' | '"' => {
                let open_line = line;
                current.push(c);
                i += 1;
                loop {
                    let Some(&d) = chars.get(i) else {
                        return Err(SplitError::Unterminated {
                            what: if c == '\'' { "string" } else { "quoted identifier" },
                            line: open_line,
                        });
                    };
                    current.push(d);
                    i += 1;
                    if d == '\n' {
                        line += 1;
                    }
                    if d == c {
                        if chars.get(i) == Some(&c) {
                            current.push(c);
                            i += 1;
                        } else {
                            break;
                        }
                    }
                }
            }
            '$' => {
                // A dollar-quote tag: $$ or $tag$ (tag: letters, digits, underscore, not starting with a digit).
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let is_tag = chars.get(j) == Some(&'$') && !chars.get(i + 1).is_some_and(|c| c.is_ascii_digit());
                if !is_tag {
                    current.push(c);
                    i += 1;
                    continue;
                }
                let tag: String = chars[i..=j].iter().collect();
                let open_line = line;
                current.push_str(&tag);
                i = j + 1;
                loop {
                    if i >= chars.len() {
                        return Err(SplitError::Unterminated {
                            what: "dollar-quoted string",
                            line: open_line,
                        });
                    }
                    if chars[i] == '$' && chars[i..].iter().take(tag.len()).collect::<String>() == tag {
                        current.push_str(&tag);
                        i += tag.len();
                        break;
                    }
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    current.push(chars[i]);
                    i += 1;
                }
            }
            ';' if atomic_depth == 0 => {
                let sql = current.trim().to_string();
                if !sql.is_empty() {
                    out.push(Statement { sql, line: start_line });
                }
                current.clear();
                i += 1;
            }
            _ => {
                if c.is_alphabetic() && (i == 0 || !is_word(chars[i - 1])) {
                    let mut j = i;
                    while j < chars.len() && is_word(chars[j]) {
                        j += 1;
                    }
                    let word: String = chars[i..j].iter().collect::<String>().to_ascii_uppercase();
                    if word == "ATOMIC" && last_word(&current).eq_ignore_ascii_case("BEGIN") {
                        atomic_depth += 1;
                    } else if word == "END" && atomic_depth > 0 {
                        atomic_depth -= 1;
                    } else if (word == "CASE") && atomic_depth > 0 {
                        atomic_depth += 1;
                    }
                    current.extend(&chars[i..j]);
                    i = j;
                } else {
                    current.push(c);
                    i += 1;
                }
            }
        }
    }
    let sql = current.trim().to_string();
    if !sql.is_empty() {
        out.push(Statement { sql, line: start_line });
    }
    Ok(out)
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn last_word(text: &str) -> &str {
    text.trim_end().rsplit(|c: char| !is_word(c)).next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqls(text: &str) -> Vec<String> {
        split(text).expect("splits").into_iter().map(|s| s.sql).collect()
    }

    #[test]
    fn semicolons_inside_quotes_comments_and_dollar_bodies() {
        let text = "-- a comment; not a statement\nALTER TABLE t ADD COLUMN c text DEFAULT 'a;b';\n\
                    /* block; /* nested; */ */ UPDATE \"we;ird\" SET x = 1;\n\
                    CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\n\
                    DO $$ BEGIN PERFORM 1; END $$;\nSELECT $1x;";
        assert_eq!(
            sqls(text),
            vec![
                "ALTER TABLE t ADD COLUMN c text DEFAULT 'a;b'",
                "UPDATE \"we;ird\" SET x = 1",
                "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
                "DO $$ BEGIN PERFORM 1; END $$",
                "SELECT $1x",
            ]
        );
    }

    #[test]
    fn line_numbers() {
        let stmts = split("\n\nCREATE INDEX i ON t (a);\n-- x\nALTER TABLE t\n  ADD COLUMN b int;\n").expect("ok");
        assert_eq!(stmts.iter().map(|s| s.line).collect::<Vec<_>>(), vec![3, 5]);
    }

    #[test]
    fn begin_atomic_bodies() {
        let text = "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true THEN 2 END; END;\nSELECT 3;";
        assert_eq!(sqls(text).len(), 2, "{:?}", sqls(text));
    }

    #[test]
    fn escaped_quotes_and_errors() {
        assert_eq!(sqls("SELECT 'it''s; fine';"), vec!["SELECT 'it''s; fine'"]);
        assert_eq!(
            split("SELECT 'open;"),
            Err(SplitError::Unterminated {
                what: "string",
                line: 1
            })
        );
        assert_eq!(
            split("SELECT $$ x;"),
            Err(SplitError::Unterminated {
                what: "dollar-quoted string",
                line: 1
            })
        );
        assert!(matches!(
            split("\\set x 1\nSELECT 1;"),
            Err(SplitError::MetaCommand { line: 1, .. })
        ));
    }
}

//! Data-dependent pre-flight: before the migration runs, count on the fork what will break it, with sample keys
//! and the remedy: NULLs for `SET NOT NULL` (and a `NOT NULL` column added without a default to a non-empty
//! table), orphans for `ADD FOREIGN KEY`, duplicate groups for `UNIQUE` constraints and unique indexes, including
//! duplicates an `UPDATE` of a unique column would create (`lower(email)`), NULLs such an update would write, rows
//! violating a new `CHECK`, and values that will not cast for `ALTER COLUMN ... TYPE`.

use serde::Serialize;
use tokio_postgres::Client;

use crate::migrate::Statement;
use crate::pg::quote_ident;
use crate::verify::data::{primary_key, qualified};

/// What kind of breakage the pre-flight counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PreflightCode {
    /// NULLs under `SET NOT NULL`.
    NotNullViolations,
    /// A `NOT NULL` column without a default added to a non-empty table.
    NotNullWithoutDefault,
    /// Child rows without a parent under `ADD FOREIGN KEY`.
    Orphans,
    /// Duplicate groups under a new `UNIQUE` constraint or unique index.
    Duplicates,
    /// NULLs an `UPDATE` would write into a column that must not have them.
    NullAfterUpdate,
    /// Rows violating a new `CHECK`.
    CheckViolations,
    /// Values that will not cast under `ALTER COLUMN ... TYPE`.
    Uncastable,
}

impl PreflightCode {
    pub fn as_str(self) -> &'static str {
        match self {
            PreflightCode::NotNullViolations => "not-null-violations",
            PreflightCode::NotNullWithoutDefault => "not-null-without-default",
            PreflightCode::Orphans => "orphans",
            PreflightCode::Duplicates => "duplicates",
            PreflightCode::NullAfterUpdate => "null-after-update",
            PreflightCode::CheckViolations => "check-violations",
            PreflightCode::Uncastable => "uncastable",
        }
    }

    pub const ALL: [PreflightCode; 7] = [
        PreflightCode::NotNullViolations,
        PreflightCode::NotNullWithoutDefault,
        PreflightCode::Orphans,
        PreflightCode::Duplicates,
        PreflightCode::NullAfterUpdate,
        PreflightCode::CheckViolations,
        PreflightCode::Uncastable,
    ];
}

impl std::fmt::Display for PreflightCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the pre-flight found for one statement.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PreflightFinding {
    pub code: PreflightCode,
    pub line: usize,
    pub table: String,
    pub count: i64,
    pub samples: Vec<String>,
    pub message: String,
    pub remedy: String,
}

fn words(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        if let Some(q) = quote {
            cur.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => {
                quote = Some(c);
                cur.push(c);
            }
            '(' => {
                if depth == 0 && !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                depth += 1;
                cur.push(c);
            }
            ')' => {
                depth -= 1;
                cur.push(c);
                if depth == 0 {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c if c.is_whitespace() && depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            ',' if depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(",".into());
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn up(w: &str) -> String {
    w.to_ascii_uppercase()
}

fn inner(paren: &str) -> &str {
    paren
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(paren)
}

fn ident(name: &str) -> String {
    let n = name.trim();
    if n.starts_with('"') {
        n.to_string()
    } else {
        quote_ident(&n.to_ascii_lowercase())
    }
}

fn column_list(paren: &str) -> Vec<String> {
    inner(paren).split(',').map(ident).collect()
}

fn table_name(raw: &str) -> String {
    let raw = raw.trim_matches('"');
    if raw.contains('.') {
        raw.to_string()
    } else {
        format!("public.{}", raw.to_ascii_lowercase())
    }
}

async fn count_and_samples(client: &Client, count_sql: &str, sample_sql: &str) -> Result<(i64, Vec<String>), String> {
    let n: i64 = client
        .query_one(count_sql, &[])
        .await
        .map_err(|e| crate::pg::describe(&e))?
        .get(0);
    let mut samples = Vec::new();
    if n > 0 {
        for r in client
            .query(sample_sql, &[])
            .await
            .map_err(|e| crate::pg::describe(&e))?
        {
            samples.push(r.get::<_, Option<String>>(0).unwrap_or_else(|| "NULL".into()));
        }
    }
    Ok((n, samples))
}

async fn key_expr(client: &Client, table: &str) -> String {
    match primary_key(client, table).await {
        Ok(k) if !k.is_empty() => format!(
            "row({})::text",
            k.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
        ),
        _ => "ctid::text".into(),
    }
}

/// Unique columns of a table (single-column unique constraints and unique indexes), lower-cased names.
async fn unique_columns(client: &Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT a.attname::text FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0] \
             WHERE x.indrelid = $1::text::regclass AND x.indisunique AND x.indnatts = 1 AND x.indexprs IS NULL",
            &[&qualified(table)],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect())
        .unwrap_or_default()
}

/// Runs the pre-flight for every statement of the migration.
///
/// On a subset, `source` is the source's connection: a row whose parent the subset left out is not an orphan
/// (`verify::orphans`).
pub async fn run(client: &Client, statements: &[Statement], source: Option<&Client>) -> Vec<PreflightFinding> {
    let mut out = Vec::new();
    let becoming = becoming_unique(statements);
    for s in statements {
        for f in check_statement(client, s, &becoming, source).await {
            out.push(f);
        }
    }
    out
}

/// `(table, column)` pairs the migration makes unique (`ADD UNIQUE (c)`, `CREATE UNIQUE INDEX ... (c)`): an
/// earlier `UPDATE` of such a column must not create duplicates either.
fn becoming_unique(statements: &[Statement]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in statements {
        let w = words(&s.sql);
        let u: Vec<String> = w.iter().map(|x| up(x)).collect();
        let single = |paren: Option<&String>| {
            paren
                .map(|p| inner(p).trim().trim_matches('"').to_ascii_lowercase())
                .filter(|c| !c.contains(',') && !c.contains('('))
        };
        if u.first().map(String::as_str) == Some("ALTER") && u.get(1).map(String::as_str) == Some("TABLE") {
            let mut i = 2;
            while matches!(u.get(i).map(String::as_str), Some("IF" | "EXISTS" | "ONLY")) {
                i += 1;
            }
            if let (Some(t), Some(q)) = (w.get(i), u.iter().position(|x| x == "UNIQUE"))
                && let Some(c) = single(w.get(q + 1))
            {
                out.push((table_name(t), c));
            }
        } else if u.first().map(String::as_str) == Some("CREATE")
            && u.get(1).map(String::as_str) == Some("UNIQUE")
            && let Some(on) = u.iter().position(|x| x == "ON")
        {
            let j = if u.get(on + 1).map(String::as_str) == Some("ONLY") {
                on + 2
            } else {
                on + 1
            };
            if let (Some(t), Some(c)) = (w.get(j), single(w.iter().skip(j + 1).find(|x| x.starts_with('(')))) {
                out.push((table_name(t), c));
            }
        }
    }
    out
}

async fn check_statement(
    client: &Client,
    s: &Statement,
    becoming: &[(String, String)],
    source: Option<&Client>,
) -> Vec<PreflightFinding> {
    let w = words(&s.sql);
    let u: Vec<String> = w.iter().map(|x| up(x)).collect();
    let mut out: Vec<PreflightFinding> = Vec::new();
    let line = s.line;
    let found = |code: PreflightCode, table: &str, count: i64, samples: Vec<String>, message: String, remedy: &str| {
        (count > 0).then(|| PreflightFinding {
            code,
            line,
            table: table.into(),
            count,
            samples,
            message,
            remedy: remedy.into(),
        })
    };
    let g = |i: usize| u.get(i).map(String::as_str).unwrap_or("");
    if g(0) == "ALTER" && g(1) == "TABLE" {
        let mut i = 2;
        while matches!(g(i), "IF" | "EXISTS" | "ONLY") {
            i += 1;
        }
        let Some(raw_table) = w.get(i) else { return out };
        let table = table_name(raw_table);
        let t = qualified(&table);
        let key = key_expr(client, &table).await;
        // Split the actions at top-level commas.
        let actions: Vec<(Vec<String>, Vec<String>)> = {
            let mut acts = Vec::new();
            let (mut aw, mut au) = (Vec::new(), Vec::new());
            for (x, y) in w[i + 1..].iter().zip(&u[i + 1..]) {
                if x == "," {
                    acts.push((std::mem::take(&mut aw), std::mem::take(&mut au)));
                } else {
                    aw.push(x.clone());
                    au.push(y.clone());
                }
            }
            acts.push((aw, au));
            acts
        };
        for (aw, au) in actions {
            let a = |j: usize| au.get(j).map(String::as_str).unwrap_or("");
            let not_valid = au.windows(2).any(|p| p[0] == "NOT" && p[1] == "VALID");
            // ALTER [COLUMN] c SET NOT NULL
            if a(0) == "ALTER" && au.windows(3).any(|p| p == ["SET", "NOT", "NULL"]) {
                let col_at = if a(1) == "COLUMN" { 2 } else { 1 };
                if let Some(c) = aw.get(col_at) {
                    let c = ident(c);
                    match count_and_samples(
                        client,
                        &format!("SELECT count(*) FROM {t} WHERE {c} IS NULL"),
                        &format!("SELECT {key} FROM {t} WHERE {c} IS NULL LIMIT 5"),
                    )
                    .await
                    {
                        Ok((n, samples)) => out.extend(found(
                            PreflightCode::NotNullViolations,
                            &table,
                            n,
                            samples,
                            format!("{n} row(s) of {table} have {c} NULL: SET NOT NULL will fail"),
                            "backfill the NULLs first (UPDATE ... SET col = ... WHERE col IS NULL, in batches), or add \
                             CHECK (col IS NOT NULL) NOT VALID, VALIDATE it, then SET NOT NULL",
                        )),
                        Err(e) => tracing::debug!(%e, "pre-flight query failed"),
                    }
                }
            }
            // ADD [COLUMN] c type NOT NULL without DEFAULT
            if a(0) == "ADD"
                && a(1) != "CONSTRAINT"
                && !matches!(a(1), "FOREIGN" | "UNIQUE" | "CHECK" | "PRIMARY")
                && au.windows(2).any(|p| p == ["NOT", "NULL"])
                && !au.contains(&"DEFAULT".to_string())
                && !au.contains(&"GENERATED".to_string())
                && let Ok(row) = client.query_one(&format!("SELECT count(*) FROM {t}"), &[]).await
            {
                let n: i64 = row.get(0);
                out.extend(found(
                    PreflightCode::NotNullWithoutDefault,
                    &table,
                    n,
                    Vec::new(),
                    format!("{table} has {n} row(s): adding a NOT NULL column without a default will fail"),
                    "add the column with a DEFAULT, or add it nullable, backfill, then SET NOT NULL",
                ));
            }
            let fk_at = au.iter().position(|x| x == "FOREIGN");
            if a(0) == "ADD"
                && !not_valid
                && let Some(fk) = fk_at
                && au.get(fk + 1).map(String::as_str) == Some("KEY")
            {
                let cols = aw.get(fk + 2).map(|c| column_list(c)).unwrap_or_default();
                let ref_at = au.iter().position(|x| x == "REFERENCES");
                if let Some(r) = ref_at
                    && let Some(rt) = aw.get(r + 1)
                {
                    let rtable = table_name(rt);
                    let rcols = match aw.get(r + 2).filter(|c| c.starts_with('(')) {
                        Some(c) => column_list(c),
                        None => primary_key(client, &rtable)
                            .await
                            .unwrap_or_default()
                            .iter()
                            .map(|c| quote_ident(c))
                            .collect(),
                    };
                    if !cols.is_empty() && cols.len() == rcols.len() {
                        let join: Vec<String> = cols
                            .iter()
                            .zip(&rcols)
                            .map(|(c, rc)| format!("p.{rc} = t.{c}"))
                            .collect();
                        let present: Vec<String> = cols.iter().map(|c| format!("t.{c} IS NOT NULL")).collect();
                        let cond = format!(
                            "{} AND NOT EXISTS (SELECT 1 FROM {} p WHERE {})",
                            present.join(" AND "),
                            qualified(&rtable),
                            join.join(" AND ")
                        );
                        let new_key = super::orphans::NewKey {
                            table: &t,
                            row_key: &key,
                            columns: &cols,
                            parent: &rtable,
                            parent_columns: &rcols,
                            condition: &cond,
                        };
                        match super::orphans::count(client, source, &new_key).await {
                            Ok(o) => out.extend(found(
                                PreflightCode::Orphans,
                                &table,
                                o.count,
                                o.samples,
                                if source.is_some() {
                                    format!(
                                        "{} row(s) of {table} reference no row of {rtable}, on the source either: the \
                                         foreign key will fail (measured on a subset; {} more reference rows the \
                                         subset left out, not counted)",
                                        o.count, o.left_out
                                    )
                                } else {
                                    format!(
                                        "{} row(s) of {table} reference no row of {rtable}: the foreign key will fail",
                                        o.count
                                    )
                                },
                                "clean the orphans (delete them or point them at a valid row), or add the constraint NOT \
                                 VALID now and VALIDATE CONSTRAINT after the cleanup",
                            )),
                            Err(e) => tracing::debug!(%e, "pre-flight query failed"),
                        }
                    }
                }
            }
            if a(0) == "ADD"
                && let Some(uq) = au.iter().position(|x| x == "UNIQUE")
            {
                let cols = aw.get(uq + 1).map(|c| column_list(c)).unwrap_or_default();
                if !cols.is_empty() {
                    out.extend(duplicates(client, &table, &cols.join(", "), s.line).await);
                }
            }
            if a(0) == "ADD"
                && !not_valid
                && let Some(ck) = au.iter().position(|x| x == "CHECK")
                && let Some(expr) = aw.get(ck + 1)
            {
                {
                    match count_and_samples(
                        client,
                        &format!("SELECT count(*) FROM {t} WHERE NOT {expr}"),
                        &format!("SELECT {key} FROM {t} WHERE NOT {expr} LIMIT 5"),
                    )
                    .await
                    {
                        Ok((n, samples)) => out.extend(found(
                            PreflightCode::CheckViolations,
                            &table,
                            n,
                            samples,
                            format!("{n} row(s) of {table} violate CHECK {expr}: the constraint will fail"),
                            "fix those rows first, or add the constraint NOT VALID and VALIDATE it after the fix",
                        )),
                        Err(e) => tracing::debug!(%e, "pre-flight query failed"),
                    }
                }
            }
            // ALTER [COLUMN] c [SET DATA] TYPE t (without USING)
            if a(0) == "ALTER"
                && let Some(ty) = au.iter().position(|x| x == "TYPE")
                && !au.contains(&"USING".to_string())
            {
                let col_at = if a(1) == "COLUMN" { 2 } else { 1 };
                if let (Some(c), Some(_)) = (aw.get(col_at), aw.get(ty + 1)) {
                    let c = ident(c);
                    let new_type = aw[ty + 1..].join(" ");
                    let function = format!(
                        "CREATE OR REPLACE FUNCTION pg_temp.understudy_casts(v text) RETURNS boolean LANGUAGE plpgsql AS $f$ \
                         BEGIN PERFORM v::{new_type}; RETURN true; EXCEPTION WHEN others THEN RETURN false; END $f$"
                    );
                    if client.batch_execute(&function).await.is_ok() {
                        let cond = format!("{c} IS NOT NULL AND NOT pg_temp.understudy_casts({c}::text)");
                        if let Ok((n, samples)) = count_and_samples(
                            client,
                            &format!("SELECT count(*) FROM {t} WHERE {cond}"),
                            &format!("SELECT {key} || ': ' || {c}::text FROM {t} WHERE {cond} LIMIT 5"),
                        )
                        .await
                        {
                            out.extend(found(
                                PreflightCode::Uncastable,
                                &table,
                                n,
                                samples,
                                format!(
                                    "{n} value(s) of {table}.{c} will not cast to {new_type}: the type change will fail"
                                ),
                                "clean those values first, or give the change a USING expression that handles them",
                            ));
                        }
                    }
                }
            }
        }
    } else if g(0) == "CREATE" && (g(1) == "UNIQUE") && u.contains(&"INDEX".to_string()) {
        if let Some(on) = u.iter().position(|x| x == "ON") {
            let mut j = on + 1;
            if g(j) == "ONLY" {
                j += 1;
            }
            if let (Some(rt), Some(cols)) = (w.get(j), w.iter().skip(j + 1).find(|x| x.starts_with('('))) {
                let table = table_name(rt);
                out.extend(duplicates(client, &table, inner(cols), s.line).await);
            }
        }
    } else if g(0) == "UPDATE" {
        // UPDATE t SET c = expr [WHERE ...]: when c is unique, duplicates the new values would create; NULLs.
        let Some(raw_table) = w.get(1) else { return out };
        let table = table_name(raw_table);
        let t = qualified(&table);
        let mut uniques = unique_columns(client, &table).await;
        uniques.extend(becoming.iter().filter(|(t, _)| *t == table).map(|(_, c)| c.clone()));
        let set_at = u.iter().position(|x| x == "SET");
        let where_at = u.iter().position(|x| x == "WHERE");
        if let Some(set) = set_at {
            let end = where_at.unwrap_or(w.len());
            let assignment = w[set + 1..end].join(" ");
            for part in assignment.split(" , ") {
                let Some((col, expr)) = part.split_once('=') else {
                    continue;
                };
                let col = col.trim().trim_matches('"').to_ascii_lowercase();
                let expr = expr.trim();
                if !uniques.contains(&col) || expr.is_empty() {
                    continue;
                }
                let filter = where_at.map(|wi| w[wi + 1..].join(" "));
                // New values for updated rows, current values for the others.
                let value = match &filter {
                    Some(f) => format!("CASE WHEN {f} THEN {expr} ELSE {} END", ident(&col)),
                    None => expr.to_string(),
                };
                let groups = format!(
                    "SELECT v, count(*) AS n FROM (SELECT {value} AS v FROM {t}) s WHERE v IS NOT NULL GROUP BY v HAVING count(*) > 1"
                );
                if let Ok((n, samples)) = count_and_samples(
                    client,
                    &format!("SELECT count(*) FROM ({groups}) g"),
                    &format!("SELECT v::text || ' (' || n || ' rows)' FROM ({groups}) g ORDER BY n DESC LIMIT 5"),
                )
                .await
                {
                    out.extend(found(
                        PreflightCode::Duplicates,
                        &table,
                        n,
                        samples,
                        format!("the update makes {n} group(s) of duplicate {col} values in {table}: the unique constraint will reject it"),
                        "resolve the duplicates first (merge or rename the colliding rows), then run the update",
                    ));
                }
                if let Ok((n, samples)) = count_and_samples(
                    client,
                    &format!("SELECT count(*) FROM {t} WHERE ({value}) IS NULL"),
                    &format!(
                        "SELECT {} FROM {t} WHERE ({value}) IS NULL LIMIT 5",
                        key_expr(client, &table).await
                    ),
                )
                .await
                {
                    out.extend(found(
                        PreflightCode::NullAfterUpdate,
                        &table,
                        n,
                        samples,
                        format!("{n} row(s) of {table} will have {col} NULL after the update"),
                        "decide what these rows should hold (they are not covered by the transformation)",
                    ));
                }
            }
        }
    }
    out
}

async fn duplicates(client: &Client, table: &str, cols: &str, line: usize) -> Option<PreflightFinding> {
    let t = qualified(table);
    let not_null: Vec<String> = cols.split(',').map(|c| format!("{} IS NOT NULL", c.trim())).collect();
    let groups = format!(
        "SELECT row({cols})::text AS v, count(*) AS n FROM {t} WHERE {} GROUP BY {cols} HAVING count(*) > 1",
        not_null.join(" AND ")
    );
    let (n, samples) = count_and_samples(
        client,
        &format!("SELECT count(*) FROM ({groups}) g"),
        &format!("SELECT v || ' (' || n || ' rows)' FROM ({groups}) g ORDER BY n DESC LIMIT 5"),
    )
    .await
    .ok()?;
    (n > 0).then(|| PreflightFinding {
        code: PreflightCode::Duplicates,
        line,
        table: table.into(),
        count: n,
        samples,
        message: format!("{n} group(s) of duplicate ({cols}) in {table}: the unique constraint or index will fail"),
        remedy: "resolve the duplicates first (merge or delete them), then add the constraint".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_parentheses_and_quotes() {
        assert_eq!(
            words(
                "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (customer_id) REFERENCES customers(id), ADD CHECK (total > 0)"
            ),
            vec![
                "ALTER",
                "TABLE",
                "orders",
                "ADD",
                "CONSTRAINT",
                "fk",
                "FOREIGN",
                "KEY",
                "(customer_id)",
                "REFERENCES",
                "customers",
                "(id)",
                ",",
                "ADD",
                "CHECK",
                "(total > 0)"
            ]
        );
        assert_eq!(
            words("UPDATE users SET email = lower(email)"),
            vec!["UPDATE", "users", "SET", "email", "=", "lower", "(email)"]
        );
        assert_eq!(table_name("Users"), "public.users");
        assert_eq!(column_list("(a, \"B\")"), vec!["\"a\"", "\"B\""]);
    }
}

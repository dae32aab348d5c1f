//! Subsets: the rows a sandbox holds, as publication row filters (PostgreSQL 15). A subset is one partitioning
//! key for every table whose columns it names (`tenant_id IN (3, 17)`), filters of single tables over it, or both.
//! Each filter is checked on the source before anything is made there: it must be one expression on the table's
//! own columns (a read-only `EXPLAIN`), PostgreSQL must accept it in a publication (built-in immutable functions,
//! no subqueries: probed by a `CREATE PUBLICATION` inside a transaction that is rolled back, so no other session
//! ever sees it), and its columns must be in the table's replica identity, without which the source itself would
//! refuse UPDATE and DELETE on the table once it is published.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::catalog::TableFacts;
use super::problem::Problem;
use crate::pg::{PgError, QualifiedName, quote_ident};

/// What rows a sandbox holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Subset {
    /// A filter for every replicated table that has the columns it names, for example `tenant_id IN (3, 17)`.
    /// Tables without them are copied whole, unless `tables` filters them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Filters of single tables (`schema.table` or `table` in `public`), used instead of `key` for them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tables: BTreeMap<String, String>,
}

/// The subset a sandbox holds: each filtered table with the filter the publication carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SubsetState {
    /// The partitioning key it was asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Filtered tables (`schema.table`) and their filters as the source's publication holds them.
    pub filters: BTreeMap<String, String>,
}

/// One table's filter, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFilter {
    pub table: QualifiedName,
    pub filter: String,
}

impl SubsetState {
    /// The subset of published tables, `None` when no table has a row filter.
    pub fn of(tables: &[super::PublishedTable], key: Option<String>) -> Option<SubsetState> {
        let filters: BTreeMap<String, String> = tables
            .iter()
            .filter_map(|t| Some((t.name.to_string(), t.row_filter.clone()?)))
            .collect();
        (!filters.is_empty()).then_some(SubsetState { key, filters })
    }

    /// Whether `table` is filtered.
    pub fn filters(&self, table: &QualifiedName) -> bool {
        self.filters.contains_key(&table.to_string())
    }
}

impl Subset {
    /// True when it asks for nothing.
    pub fn is_empty(&self) -> bool {
        self.key.is_none() && self.tables.is_empty()
    }

    /// Adds one `--subset` flag: `TABLE: FILTER` filters one table, a bare `FILTER` is the partitioning key.
    pub fn add_flag(&mut self, raw: &str) -> Result<(), String> {
        let raw = raw.trim();
        if let Some((table, filter)) = split_table(raw) {
            if self
                .tables
                .insert(table.to_string(), filter.trim().to_string())
                .is_some()
            {
                return Err(format!("--subset names table {table} twice; give one filter per table"));
            }
        } else if self.key.is_some() {
            return Err("--subset gives two partitioning keys; combine them into one expression with AND".into());
        } else {
            self.key = Some(raw.to_string());
        }
        Ok(())
    }

    /// Checks the shape of every filter (not yet the source's view of it).
    pub fn check(&self) -> Result<(), String> {
        let named = self.tables.iter().map(|(t, f)| (t.as_str(), f));
        for (table, filter) in self.key.iter().map(|k| ("the partitioning key", k)).chain(named) {
            check_expression(filter).map_err(|why| format!("subset filter of {table} ({filter:?}): {why}"))?;
        }
        for table in self.tables.keys() {
            if !is_table_name(table) {
                return Err(format!(
                    "subset table {table:?} is not a table name: write schema.table or table (in public)"
                ));
            }
        }
        Ok(())
    }
}

/// `orders: amount > 0` → `("orders", " amount > 0")`; `a::int > 0` (a cast) is not a table prefix.
fn split_table(raw: &str) -> Option<(&str, &str)> {
    let at = raw.find(':')?;
    let (head, rest) = raw.split_at(at);
    let rest = &rest[1..];
    if rest.starts_with(':') || !is_table_name(head.trim()) {
        return None;
    }
    Some((head.trim(), rest))
}

fn is_table_name(text: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && part.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    match text.split_once('.') {
        Some((schema, name)) => ok(schema) && ok(name),
        None => ok(text),
    }
}

/// One expression: not empty, no `;`, parentheses balanced outside quotes and never closed below the start (so
/// that it cannot end the publication's `WHERE (...)` and go on).
fn check_expression(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("it is empty".into());
    }
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => {
                depth -= 1;
                if depth < 0 {
                    return Err("a ')' closes more than it opened".into());
                }
            }
            (None, ';') => return Err("it holds a ';': give one expression".into()),
            _ => {}
        }
    }
    if quote.is_some() {
        return Err("a quote is not closed".into());
    }
    if depth != 0 {
        return Err("a '(' is not closed".into());
    }
    Ok(())
}

/// Resolves `subset` for the tables to replicate and checks each filter on the source, within a transaction
/// that is rolled back. Returns the filtered tables, or the problems with their fixes.
pub async fn resolve(
    client: &Client,
    subset: &Subset,
    tables: &[TableFacts],
    publication: &str,
) -> Result<Result<Vec<TableFilter>, Vec<Problem>>, PgError> {
    let mut problems = Vec::new();
    if let Err(why) = subset.check() {
        problems.push(problem("subset-filter", why, "correct the --subset flag"));
        return Ok(Err(problems));
    }
    let by_name: BTreeMap<QualifiedName, &TableFacts> = tables.iter().map(|t| (t.name.clone(), t)).collect();
    let mut wanted = Vec::new();
    for (table, filter) in &subset.tables {
        let name = QualifiedName::parse(table);
        if by_name.contains_key(&name) {
            wanted.push((name, filter.clone(), true));
        } else {
            problems.push(problem(
                "subset-table",
                format!("the subset filters {name}, which this sandbox does not replicate"),
                "filter a table that --tables or --schema names, or add the table to them",
            ));
        }
    }
    if let Some(key) = &subset.key {
        for t in tables {
            if !wanted.iter().any(|(n, _, _)| n == &t.name) {
                wanted.push((t.name.clone(), key.clone(), false));
            }
        }
    }
    client
        .batch_execute("BEGIN READ WRITE; SET LOCAL lock_timeout = '2s'; SET LOCAL statement_timeout = '10s'")
        .await
        .map_err(PgError::sql("starting the subset check"))?;
    let mut out = Vec::new();
    for (i, (table, filter, named)) in wanted.into_iter().enumerate() {
        let facts = by_name[&table];
        match probe(client, &table, &filter, &format!("{publication}_probe_{i}")).await? {
            Probe::Accepted(columns) => {
                let outside = outside_identity(client, facts, &columns).await?;
                if outside.is_empty() {
                    out.push(TableFilter { table, filter });
                } else {
                    problems.push(problem(
                        "subset-filter",
                        format!(
                            "the subset filter of {table} ({filter}) reads {}, which is not in the table's replica \
                             identity: once published, the source would refuse UPDATE and DELETE on {table}",
                            outside.join(", ")
                        ),
                        format!(
                            "filter {table} on its primary key or replica identity columns, or widen the identity \
                             (ALTER TABLE {} REPLICA IDENTITY FULL) first",
                            table.sql()
                        ),
                    ));
                }
            }
            Probe::NoSuchColumn if !named => {}
            Probe::NoSuchColumn | Probe::Refused(_) => {
                let why = match probe_error(client, &table, &filter).await? {
                    Some(why) => why,
                    None => "PostgreSQL refused it".into(),
                };
                problems.push(problem(
                    "subset-filter",
                    format!("PostgreSQL 15 cannot publish the subset filter of {table} ({filter}): {why}"),
                    "use only the table's own columns, constants, operators and built-in immutable functions \
                     (no subqueries, no now(), no user-defined functions)",
                ));
            }
        }
    }
    client
        .batch_execute("ROLLBACK")
        .await
        .map_err(PgError::sql("ending the subset check"))?;
    if problems.is_empty() {
        Ok(Ok(out))
    } else {
        Ok(Err(problems))
    }
}

enum Probe {
    /// Accepted, reading these attribute numbers.
    Accepted(Vec<i16>),
    /// The filter names a column the table does not have (a partitioning key then does not apply to it).
    NoSuchColumn,
    Refused(String),
}

/// Tries the filter in a publication under a savepoint (the transaction is rolled back by the caller).
async fn probe(client: &Client, table: &QualifiedName, filter: &str, name: &str) -> Result<Probe, PgError> {
    client
        .batch_execute("SAVEPOINT understudy_subset")
        .await
        .map_err(PgError::sql("checking a subset filter"))?;
    let created = client
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE {} WHERE ({filter})",
            quote_ident(name),
            table.sql()
        ))
        .await;
    let result = match created {
        Ok(()) => {
            let row = client
                .query_one(
                    "SELECT r.prqual::text FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid \
                     WHERE p.pubname = $1",
                    &[&name],
                )
                .await
                .map_err(PgError::sql("reading a probed subset filter"))?;
            Probe::Accepted(attnums(&row.get::<_, String>(0)))
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_COLUMN) => Probe::NoSuchColumn,
        Err(e) => Probe::Refused(crate::pg::describe(&e)),
    };
    client
        .batch_execute("ROLLBACK TO SAVEPOINT understudy_subset")
        .await
        .map_err(PgError::sql("checking a subset filter"))?;
    Ok(result)
}

/// The message PostgreSQL gives for the filter (asked again under a savepoint, for the refusal).
async fn probe_error(client: &Client, table: &QualifiedName, filter: &str) -> Result<Option<String>, PgError> {
    Ok(match probe(client, table, filter, "understudy_subset_probe").await? {
        Probe::Refused(why) => Some(why),
        Probe::NoSuchColumn => Some(format!("it names a column {table} does not have")),
        Probe::Accepted(_) => None,
    })
}

/// The attribute numbers a stored expression reads (`:varattno N` of its `Var` nodes).
fn attnums(node_tree: &str) -> Vec<i16> {
    let mut out: Vec<i16> = node_tree
        .split(":varattno ")
        .skip(1)
        .filter_map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit() && c != '-')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The columns among `attnums` that the table's replica identity does not cover.
async fn outside_identity(client: &Client, facts: &TableFacts, attnums: &[i16]) -> Result<Vec<String>, PgError> {
    if facts.replica_identity == 'f' || attnums.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum = ANY($2) \
             AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid \
                 AND (CASE WHEN $3 = 'i' THEN i.indisreplident ELSE i.indisprimary END) \
                 AND a.attnum = ANY(i.indkey)) ORDER BY a.attnum",
            &[&facts.oid, &attnums, &facts.replica_identity.to_string()],
        )
        .await
        .map_err(PgError::sql("reading a table's replica identity"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn problem(code: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem {
        code,
        message: message.into(),
        fix: fix.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_split_a_table_from_a_key() {
        let mut s = Subset::default();
        s.add_flag("tenant_id IN (3, 17)").expect("accepted");
        s.add_flag("public.orders: amount::int > 0").expect("accepted");
        s.add_flag("kind::text = 'a:b'").expect_err("refused");
        assert_eq!(s.key.as_deref(), Some("tenant_id IN (3, 17)"));
        assert_eq!(
            s.tables.get("public.orders").map(String::as_str),
            Some("amount::int > 0")
        );
        let mut t = Subset::default();
        t.add_flag("kind::text = 'a:b'").expect("accepted");
        assert_eq!(
            t.key.as_deref(),
            Some("kind::text = 'a:b'"),
            "a cast is not a table prefix"
        );
        assert!(t.add_flag("orders: true").is_ok());
        assert!(t.add_flag("orders: false").expect_err("refused").contains("twice"));
    }

    #[test]
    fn expressions_cannot_escape_their_parentheses() {
        assert!(check_expression("a = 1").is_ok());
        assert!(
            check_expression("name = 'x)'").is_ok(),
            "a quoted parenthesis does not count"
        );
        assert!(check_expression("true), public.other WHERE (true").is_err());
        assert!(check_expression("a = 1; DROP TABLE t").is_err());
        assert!(check_expression("(a = 1").is_err());
        assert!(check_expression("'open").is_err());
        assert!(check_expression("  ").is_err());
    }

    #[test]
    fn attribute_numbers_of_a_stored_expression() {
        let tree = "{OPEXPR :opno 96 :args ({VAR :varno 1 :varattno 3 :vartype 23} {VAR :varno 1 :varattno 1 \
                    :vartype 23} {VAR :varno 1 :varattno 3 :vartype 23}) :location 5}";
        assert_eq!(attnums(tree), vec![1, 3]);
        assert!(attnums("{CONST :consttype 16}").is_empty());
    }
}

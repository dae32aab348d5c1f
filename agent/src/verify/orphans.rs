//! Orphans under a new foreign key, counted on the fork. On a subset, a child row whose parent is not on the fork
//! may have it on the source (the subset left the parent out): the distinct keys of such rows are looked up in
//! the source's parent table (keys only, by its index, read-only), and only the keys it lacks count as orphans.

use tokio_postgres::Client;

/// Key groups checked against the source at most (beyond, the rest count as orphans: a bound, said so).
const MOST_KEYS: usize = 100_000;
const BATCH: usize = 5_000;

/// What the count found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Orphans {
    /// Child rows that reference no parent (on the source either, on a subset).
    pub count: i64,
    /// Up to five of them: `key -> (referencing values)`.
    pub samples: Vec<String>,
    /// Child rows whose parent the subset left out (on the source, not on the fork): not counted.
    pub left_out: i64,
}

/// The columns and tables of one foreign key the migration adds, as SQL (quoted) text.
pub struct NewKey<'a> {
    /// The child table, quoted, aliased `t` in `condition`.
    pub table: &'a str,
    /// The child's row key expression (for samples).
    pub row_key: &'a str,
    pub columns: &'a [String],
    /// The parent table (`schema.name`).
    pub parent: &'a str,
    pub parent_columns: &'a [String],
    /// `t.c IS NOT NULL AND NOT EXISTS (parent row)`.
    pub condition: &'a str,
}

/// Counts the orphans of `key` on `fork`; with `source` (a subset's), only those the source lacks a parent for.
pub async fn count(fork: &Client, source: Option<&Client>, key: &NewKey<'_>) -> Result<Orphans, String> {
    let values: Vec<String> = key.columns.iter().map(|c| format!("t.{c}::text")).collect();
    let groups = fork
        .query(
            &format!(
                "SELECT {v}, count(*), min({k}) FROM {t} t WHERE {cond} GROUP BY {v} ORDER BY 1 LIMIT {limit}",
                v = values.join(", "),
                k = key.row_key,
                t = key.table,
                cond = key.condition,
                limit = MOST_KEYS + 1,
            ),
            &[],
        )
        .await
        .map_err(|e| crate::pg::describe(&e))?;
    let n = key.columns.len();
    let groups: Vec<(Vec<String>, i64, String)> = groups
        .iter()
        .map(|r| {
            let vals = (0..n).map(|i| r.get::<_, String>(i)).collect();
            (
                vals,
                r.get::<_, i64>(n),
                r.get::<_, Option<String>>(n + 1).unwrap_or_default(),
            )
        })
        .collect();
    let present = match source {
        Some(source) if groups.len() <= MOST_KEYS => on_source(fork, source, key, &groups).await?,
        _ => vec![false; groups.len()],
    };
    let mut out = Orphans::default();
    for ((vals, rows, sample), present) in groups.iter().zip(present) {
        if present {
            out.left_out += rows;
        } else {
            out.count += rows;
            if out.samples.len() < 5 {
                out.samples.push(format!("{sample} -> ({})", vals.join(",")));
            }
        }
    }
    if groups.len() > MOST_KEYS {
        // More key groups than are looked up: count them all (a bound), on the fork's evidence.
        let total: i64 = fork
            .query_one(
                &format!("SELECT count(*) FROM {} t WHERE {}", key.table, key.condition),
                &[],
            )
            .await
            .map_err(|e| crate::pg::describe(&e))?
            .get(0);
        out.count = total;
    }
    Ok(out)
}

/// For each group, whether the source's parent table has its key.
async fn on_source(
    fork: &Client,
    source: &Client,
    key: &NewKey<'_>,
    groups: &[(Vec<String>, i64, String)],
) -> Result<Vec<bool>, String> {
    let mut types = Vec::new();
    for column in key.parent_columns {
        let row = fork
            .query_one(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                 WHERE a.attrelid = $1::text::regclass AND a.attname = $2",
                &[&crate::verify::data::qualified(key.parent), &unquote(column)],
            )
            .await
            .map_err(|e| crate::pg::describe(&e))?;
        types.push(row.get::<_, String>(0));
    }
    let aliases: Vec<String> = (0..types.len()).map(|i| format!("k{i}")).collect();
    let params: Vec<String> = (1..=types.len()).map(|i| format!("${i}::text[]")).collect();
    let join: Vec<String> = key
        .parent_columns
        .iter()
        .zip(&aliases)
        .zip(&types)
        .map(|((p, a), ty)| format!("p.{p} = k.{a}::{ty}"))
        .collect();
    let sql = format!(
        "SELECT k.i FROM unnest({}) WITH ORDINALITY AS k({}, i) \
         WHERE EXISTS (SELECT 1 FROM {} p WHERE {})",
        params.join(", "),
        aliases.join(", "),
        crate::verify::data::qualified(key.parent),
        join.join(" AND ")
    );
    let mut present = vec![false; groups.len()];
    for (b, batch) in groups.chunks(BATCH).enumerate() {
        let columns: Vec<Vec<&str>> = (0..types.len())
            .map(|i| batch.iter().map(|(vals, _, _)| vals[i].as_str()).collect())
            .collect();
        let args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = columns
            .iter()
            .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = source
            .query(&sql, &args)
            .await
            .map_err(|e| format!("looking the keys up on the source: {}", crate::pg::describe(&e)))?;
        for row in rows {
            let i = usize::try_from(row.get::<_, i64>(0) - 1).unwrap_or(usize::MAX);
            if let Some(slot) = present.get_mut(b * BATCH + i) {
                *slot = true;
            }
        }
    }
    Ok(present)
}

/// `"Name"` → `Name`, `name` → `name`.
fn unquote(column: &str) -> String {
    match column.strip_prefix('"').and_then(|c| c.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => column.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unquotes_identifiers() {
        assert_eq!(super::unquote("\"User \"\"Id\"\"\""), "User \"Id\"");
        assert_eq!(super::unquote("user_id"), "user_id");
    }
}

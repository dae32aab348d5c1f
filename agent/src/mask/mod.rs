//! Masking: a policy per column of the tables that hold personal data, applied as rows arrive on the sandbox, in
//! the initial copy and in the applied stream alike, so that no unmasked value is ever stored there (and so none
//! reaches a fork, a recording or a report). `mask::install` puts it on the sandbox: keyed, deterministic,
//! injective functions and a replica trigger per table (`docs/masking.md`). `exclude`d columns never leave the
//! source: the publication's column list leaves them out.
//!
//! Fails closed: every column of a masked table must have a policy (its keys are kept), and a column added to it
//! on the source later holds a filler on the sandbox until the mask config classifies it.

pub mod install;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::pg::{PgError, QualifiedName, quote_ident};

/// What happens to one column's values on their way to the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// As it is.
    Keep,
    /// An e-mail address of the same length and shape: every letter and digit replaced, `@`, dots and the top-level
    /// domain kept.
    FakeEmail,
    /// A name of the same length and shape: vowels replaced by vowels, consonants by consonants, case kept.
    FakeName,
    /// Every letter and digit replaced within its class, case, length and punctuation kept.
    Hash,
    /// NULL (refused on a NOT NULL column).
    Null,
    /// Never leaves the source (the publication's column list); NULL on the sandbox, or the type's filler on a NOT
    /// NULL column (`docs/masking.md`).
    Exclude,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Keep => "keep",
            Policy::FakeEmail => "fake-email",
            Policy::FakeName => "fake-name",
            Policy::Hash => "hash",
            Policy::Null => "null",
            Policy::Exclude => "exclude",
        }
    }

    /// The masking function's style, for the policies that rewrite text.
    pub(crate) fn style(self) -> Option<&'static str> {
        match self {
            Policy::FakeEmail => Some("email"),
            Policy::FakeName => Some("name"),
            Policy::Hash => Some("hash"),
            _ => None,
        }
    }
}

/// A mask config (`mask.toml`): per table (`schema.table`, or `table` in `public`), a policy per column.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    #[serde(default)]
    pub tables: BTreeMap<String, BTreeMap<String, Policy>>,
}

impl MaskConfig {
    /// Reads a `mask.toml`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let config: MaskConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if config.tables.is_empty() {
            return Err("it names no table: add [tables.\"schema.table\"] with a policy per column".into());
        }
        Ok(config)
    }

    /// The config with table names qualified.
    pub fn tables(&self) -> BTreeMap<QualifiedName, &BTreeMap<String, Policy>> {
        self.tables.iter().map(|(t, c)| (QualifiedName::parse(t), c)).collect()
    }

    /// Columns whose values never leave the source, by table.
    pub fn excluded(&self) -> BTreeMap<QualifiedName, Vec<String>> {
        self.tables()
            .into_iter()
            .filter_map(|(t, cols)| {
                let out: Vec<String> = cols
                    .iter()
                    .filter(|(_, p)| **p == Policy::Exclude)
                    .map(|(c, _)| c.clone())
                    .collect();
                (!out.is_empty()).then_some((t, out))
            })
            .collect()
    }
}

/// One column as the checks see it.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub name: String,
    /// `typcategory`: `S` string, `N` numeric, `B` boolean, `D` date/time, `U` user (uuid, json ...).
    pub category: String,
    pub type_name: String,
    pub not_null: bool,
    /// In the primary key or the replica identity index.
    pub key: bool,
    /// A foreign key's column on this side.
    pub referencing: Option<String>,
}

pub(crate) async fn columns(client: &Client, table: &QualifiedName) -> Result<Vec<Column>, PgError> {
    let rows = client
        .query(
            "SELECT a.attname::text, t.typcategory::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND (i.indisprimary OR i.indisreplident) \
                       AND a.attnum = ANY(i.indkey)), \
               (SELECT min(k.conname)::text FROM pg_constraint k WHERE k.conrelid = a.attrelid AND k.contype = 'f' \
                       AND a.attnum = ANY(k.conkey)) \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&table.sql()],
        )
        .await
        .map_err(PgError::sql(format!("reading the columns of {table}")))?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            category: r.get(1),
            type_name: r.get(2),
            not_null: r.get(3),
            key: r.get(4),
            referencing: r.get(5),
        })
        .collect())
}

/// The filler of an excluded or unclassified column: NULL where it may be, else the type's empty value; `None`
/// when the type has none.
pub(crate) fn filler(category: &str, type_name: &str, not_null: bool) -> Option<String> {
    if !not_null {
        return Some("NULL".into());
    }
    let value = match (category, type_name) {
        ("S", _) => "''",
        ("N", _) => "0",
        ("B", _) => "false",
        ("D", "date" | "timestamp without time zone" | "timestamp with time zone") => "'epoch'",
        ("U", "uuid") => "'00000000-0000-0000-0000-000000000000'",
        ("U", "json" | "jsonb") => "'{}'",
        ("A", _) => "'{}'",
        _ => return None,
    };
    Some(format!("{value}::{type_name}"))
}

/// A part of a mask config that cannot apply, with its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub fix: String,
}

/// Checks `config` against the source's tables before anything is made: every named table is replicated, every
/// column of a masked table has a policy (keys are kept), no key is masked, text policies only on text, `null` only
/// where NULL may be, `exclude` only where a filler exists. `replicated` are the tables the sandbox will hold.
pub async fn check(
    client: &Client,
    config: &MaskConfig,
    replicated: &[QualifiedName],
) -> Result<Vec<Refusal>, PgError> {
    let mut problems = Vec::new();
    let mut say = |message: String, fix: String| problems.push(Refusal { message, fix });
    for (table, policies) in config.tables() {
        if !replicated.contains(&table) {
            say(
                format!("the mask config names {table}, which this sandbox does not replicate"),
                "name a replicated table (schema.table) in [tables]".into(),
            );
            continue;
        }
        let cols = columns(client, &table).await?;
        for name in policies.keys().filter(|c| !cols.iter().any(|col| &col.name == *c)) {
            say(
                format!("the mask config names column {table}.{name}, which does not exist"),
                format!("check the column's name (case-sensitive) under [tables.\"{table}\"]"),
            );
        }
        let mut unclassified = Vec::new();
        for col in &cols {
            let Some(policy) = policies.get(&col.name).copied() else {
                if !col.key {
                    unclassified.push(col.name.clone());
                }
                continue;
            };
            let at = format!("{table}.{}", col.name);
            if policy != Policy::Keep && col.key {
                say(
                    format!(
                        "{at} is in the table's primary key or replica identity: masking it would break the stream \
                         (the apply worker finds rows by their key) and every reference to it"
                    ),
                    format!("keep {at} (a key is not personal data by itself), or mask the columns that are"),
                );
            } else if policy != Policy::Keep
                && let Some(fk) = &col.referencing
            {
                say(
                    format!("{at} is in foreign key {fk}: masked, it would reference no row"),
                    format!("keep {at}"),
                );
            } else if policy.style().is_some() && col.category != "S" {
                say(
                    format!("{at} is {}, and {} rewrites text", col.type_name, policy.as_str()),
                    format!("use null or exclude for {at}"),
                );
            } else if policy == Policy::Null && col.not_null {
                say(
                    format!("{at} is NOT NULL, so the null policy cannot apply"),
                    format!("use exclude (a filler) or hash for {at}"),
                );
            } else if policy == Policy::Exclude && filler(&col.category, &col.type_name, col.not_null).is_none() {
                say(
                    format!(
                        "{at} is NOT NULL {} and that type has no filler for exclude",
                        col.type_name
                    ),
                    format!("use null on a nullable column, or keep {at}"),
                );
            }
        }
        if !unclassified.is_empty() {
            say(
                format!(
                    "{table} is masked but has no policy for {}: a masked table fails closed",
                    unclassified.join(", ")
                ),
                format!(
                    "add each under [tables.\"{table}\"] as keep, fake-email, fake-name, hash, null or exclude ({})",
                    unclassified
                        .iter()
                        .map(|c| format!("{} = \"keep\"", quote_ident(c)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_parse_and_refuse_unknown_policies() {
        let c = MaskConfig::parse(
            "[tables.users]\nemail = \"fake-email\"\nname = \"fake-name\"\nnote = \"exclude\"\n\
             [tables.\"billing.cards\"]\nholder = \"hash\"\n",
        )
        .expect("parses");
        let tables = c.tables();
        assert_eq!(
            tables[&QualifiedName::new("public", "users")]["email"],
            Policy::FakeEmail
        );
        assert!(tables.contains_key(&QualifiedName::new("billing", "cards")));
        assert_eq!(
            c.excluded(),
            BTreeMap::from([(QualifiedName::new("public", "users"), vec!["note".to_string()])])
        );
        let bad = MaskConfig::parse("[tables.users]\nemail = \"scramble\"\n").expect_err("unknown policy");
        assert!(bad.contains("unknown variant"), "{bad}");
        assert!(MaskConfig::parse("").expect_err("empty").contains("names no table"));
    }

    #[test]
    fn fillers_by_type() {
        assert_eq!(filler("S", "text", true).as_deref(), Some("''::text"));
        assert_eq!(filler("N", "integer", false).as_deref(), Some("NULL"));
        assert_eq!(filler("D", "date", true).as_deref(), Some("'epoch'::date"));
        assert_eq!(filler("G", "point", true), None);
    }
}

//! A catalog snapshot of the user schemas and the diff between two of them: every added, dropped or changed
//! table, column, index (and its validity), constraint (and whether it is validated), sequence, view and function.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::Client;

use crate::pg::PgError;

/// Objects by kind and name, each with a definition string compared for changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaSnapshot {
    pub objects: BTreeMap<(String, String), String>,
}

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SchemaChange {
    /// `table`, `column`, `index`, `constraint`, `sequence`, `view`, `function`, `invalid-index`,
    /// `unvalidated-constraint`.
    pub kind: String,
    pub name: String,
    /// `added`, `dropped`, `changed`.
    pub change: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

const SNAPSHOT_SQL: &str = "
SELECT 'table', n.nspname || '.' || c.relname, c.relkind::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
UNION ALL
SELECT 'column', n.nspname || '.' || c.relname || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
       || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
   AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
UNION ALL
SELECT 'index', n.nspname || '.' || i.relname, pg_get_indexdef(i.oid) || CASE WHEN x.indisvalid THEN '' ELSE ' INVALID' END
  FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_namespace n ON n.oid = i.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
UNION ALL
SELECT 'constraint', n.nspname || '.' || c.relname || '.' || k.conname,
       pg_get_constraintdef(k.oid) || CASE WHEN k.convalidated THEN '' ELSE ' NOT VALID' END
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
UNION ALL
SELECT 'sequence', schemaname || '.' || sequencename, data_type::text || ' increment ' || increment_by
  FROM pg_sequences WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
UNION ALL
SELECT 'view', n.nspname || '.' || c.relname, md5(pg_get_viewdef(c.oid))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
UNION ALL
SELECT 'function', n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')', md5(pg_get_functiondef(p.oid))
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE p.prokind IN ('f', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')";

impl SchemaSnapshot {
    pub async fn read(client: &Client) -> Result<Self, PgError> {
        let rows = client
            .query(SNAPSHOT_SQL, &[])
            .await
            .map_err(PgError::sql("reading the schema"))?;
        Ok(SchemaSnapshot {
            objects: rows
                .iter()
                .map(|r| ((r.get::<_, String>(0), r.get::<_, String>(1)), r.get::<_, String>(2)))
                .collect(),
        })
    }

    /// Columns of `schema.table`, by name, with their definition.
    pub fn columns(&self, table: &str) -> BTreeMap<String, String> {
        let prefix = format!("{table}.");
        self.objects
            .iter()
            .filter(|((k, n), _)| k == "column" && n.starts_with(&prefix) && !n[prefix.len()..].contains('.'))
            .map(|((_, n), d)| (n[prefix.len()..].to_string(), d.clone()))
            .collect()
    }

    /// Names of the tables.
    pub fn tables(&self) -> Vec<String> {
        self.objects
            .keys()
            .filter(|(k, _)| k == "table")
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// What changed from `before` to `self`.
    pub fn diff(before: &SchemaSnapshot, after: &SchemaSnapshot) -> Vec<SchemaChange> {
        let mut out = Vec::new();
        for ((kind, name), def) in &after.objects {
            match before.objects.get(&(kind.clone(), name.clone())) {
                None => out.push(SchemaChange {
                    kind: kind.clone(),
                    name: name.clone(),
                    change: "added".into(),
                    before: None,
                    after: Some(def.clone()),
                }),
                Some(old) if old != def => out.push(SchemaChange {
                    kind: kind.clone(),
                    name: name.clone(),
                    change: "changed".into(),
                    before: Some(old.clone()),
                    after: Some(def.clone()),
                }),
                Some(_) => {}
            }
        }
        for ((kind, name), def) in &before.objects {
            if !after.objects.contains_key(&(kind.clone(), name.clone())) {
                out.push(SchemaChange {
                    kind: kind.clone(),
                    name: name.clone(),
                    change: "dropped".into(),
                    before: Some(def.clone()),
                    after: None,
                });
            }
        }
        out
    }
}

impl SchemaChange {
    pub fn describe(&self) -> String {
        match self.change.as_str() {
            "added" => format!(
                "{} {} added: {}",
                self.kind,
                self.name,
                self.after.clone().unwrap_or_default()
            ),
            "dropped" => format!(
                "{} {} dropped (was {})",
                self.kind,
                self.name,
                self.before.clone().unwrap_or_default()
            ),
            _ => format!(
                "{} {} changed from {} to {}",
                self.kind,
                self.name,
                self.before.clone().unwrap_or_default(),
                self.after.clone().unwrap_or_default()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(items: &[(&str, &str, &str)]) -> SchemaSnapshot {
        SchemaSnapshot {
            objects: items
                .iter()
                .map(|(k, n, d)| ((k.to_string(), n.to_string()), d.to_string()))
                .collect(),
        }
    }

    #[test]
    fn diff_names_each_change() {
        let before = snap(&[
            ("table", "public.t", "r"),
            ("column", "public.t.a", "integer"),
            ("column", "public.t.b", "text"),
        ]);
        let after = snap(&[
            ("table", "public.t", "r"),
            ("column", "public.t.a", "bigint"),
            ("column", "public.t.c", "text"),
            (
                "index",
                "public.t_c",
                "CREATE INDEX t_c ON public.t USING btree (c) INVALID",
            ),
        ]);
        let d: Vec<String> = SchemaSnapshot::diff(&before, &after)
            .iter()
            .map(SchemaChange::describe)
            .collect();
        assert!(
            d.contains(&"column public.t.a changed from integer to bigint".to_string()),
            "{d:?}"
        );
        assert!(d.contains(&"column public.t.c added: text".to_string()), "{d:?}");
        assert!(d.contains(&"column public.t.b dropped (was text)".to_string()), "{d:?}");
        assert!(
            d.iter()
                .any(|x| x.starts_with("index public.t_c added") && x.ends_with("INVALID")),
            "{d:?}"
        );
        assert_eq!(after.columns("public.t").len(), 2);
    }
}

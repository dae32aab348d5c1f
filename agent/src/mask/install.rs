//! Masking on the sandbox: schema `understudy_mask` holds the key, `scramble(value, style)` and, per masked table,
//! a trigger function; each table gets a `BEFORE INSERT OR UPDATE` trigger enabled as a *replica* trigger, so it
//! fires for the apply worker (which runs with `session_replication_role = replica`) and for the initial copy's
//! sessions (which set it), and never for a migration or a replay on a fork. Forks drop the schema, key and all.
//!
//! `scramble` is a keyed bijection per length: two passes over the lower-cased value (left to right, then right to
//! left), each shifting every letter or digit within its class (a-z, or vowels and consonants for names; 0-9;
//! Latin-1, Greek and Cyrillic lower-case letters; CJK ideographs) by an amount drawn from a SHA-256 chain over the
//! key and what the pass has read so far; then the original's upper-case positions are upper-cased again. So equal
//! values mask equal, different ones differently, and two values equal under `lower()` mask to values equal under
//! `lower()` (and no others). NULL stays NULL; other characters (spaces, `@`, punctuation, other scripts) stay.

use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::{MaskConfig, Policy, columns, filler};
use crate::pg::{PgError, QualifiedName, quote_ident, quote_literal};

/// The schema of the masking objects on the sandbox.
pub const SCHEMA: &str = "understudy_mask";
const TRIGGER: &str = "understudy_mask";

/// Lower-case letter classes besides a-z (each maps onto itself).
const LATIN1: &str = "àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþ";
const GREEK: &str = "αβγδεζηθικλμνξοπρστυφχψω";
const CYRILLIC: &str = "абвгдежзийклмнопрстуфхцчшщъыьэюя";

/// One pass of `scramble` over `c` (`1..n` or `REVERSE n..1`): each shiftable character moved by an amount drawn
/// from a SHA-256 chain over the salt, the pass's name and length, and the characters the pass has read.
fn pass(name: &str, range: &str) -> String {
    format!(
        "  st := sha256(salt || convert_to('{name} ' || n, 'UTF8'));
  FOR i IN {range} LOOP
    prev := c[i];
    IF i < keep_from THEN
      c[i] := {SCHEMA}.shift(c[i], get_byte(st, 0) * 256 + get_byte(st, 1), names);
    END IF;
    st := sha256(st || convert_to(prev, 'UTF8'));
  END LOOP;
"
    )
}

fn functions_sql() -> String {
    let forward = pass("forward", "1..n");
    let backward = pass("backward", "REVERSE n..1");
    format!(
        r#"
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC;
CREATE TABLE IF NOT EXISTS {SCHEMA}.secret (key bytea NOT NULL);
CREATE OR REPLACE FUNCTION {SCHEMA}.shift(c text, a int, names boolean) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $f$
DECLARE
  code int := ascii(c);
  cls text;
BEGIN
  IF code BETWEEN 97 AND 122 THEN
    IF names THEN
      cls := CASE WHEN position(c IN 'aeiou') > 0 THEN 'aeiou' ELSE 'bcdfghjklmnpqrstvwxyz' END;
    ELSE
      cls := 'abcdefghijklmnopqrstuvwxyz';
    END IF;
  ELSIF code BETWEEN 48 AND 57 THEN
    cls := '0123456789';
  ELSIF code BETWEEN 19968 AND 40959 THEN
    RETURN chr(19968 + (code - 19968 + a) % 20992);
  ELSIF position(c IN '{LATIN1}') > 0 THEN
    cls := '{LATIN1}';
  ELSIF position(c IN '{GREEK}') > 0 THEN
    cls := '{GREEK}';
  ELSIF position(c IN '{CYRILLIC}') > 0 THEN
    cls := '{CYRILLIC}';
  ELSE
    RETURN c;
  END IF;
  RETURN substr(cls, (position(c IN cls) - 1 + a) % length(cls) + 1, 1);
END $f$;
CREATE OR REPLACE FUNCTION {SCHEMA}.scramble(v text, style text) RETURNS text
LANGUAGE plpgsql STABLE STRICT AS $f$
DECLARE
  low text := lower(v);
  n int := length(low);
  c text[];
  keep_from int;
  at int;
  dot int;
  salt bytea;
  st bytea;
  prev text;
  names boolean := style = 'name';
BEGIN
  IF n = 0 THEN
    RETURN v;
  END IF;
  c := regexp_split_to_array(low, '');
  keep_from := n + 1;
  IF style = 'email' AND strpos(low, '@') > 0 THEN
    at := n + 1 - strpos(reverse(low), '@');
    dot := n + 1 - strpos(reverse(low), '.');
    IF strpos(low, '.') > 0 AND dot > at THEN
      keep_from := dot;
    END IF;
  END IF;
  SELECT sha256(s.key || convert_to(style, 'UTF8')) INTO salt FROM {SCHEMA}.secret s;
{forward}{backward}  FOR i IN 1..n LOOP
    IF substr(v, i, 1) <> substr(low, i, 1) THEN
      c[i] := upper(c[i]);
    END IF;
  END LOOP;
  RETURN array_to_string(c, '');
END $f$;
"#
    )
}

/// Installs masking on the sandbox database: the key (replaced), the functions, and a trigger on every masked
/// table. Run before the initial copy, in one transaction; the tables' columns and keys are read from `source`
/// (the sandbox has no indexes yet).
pub async fn install(client: &Client, source: &Client, key: &[u8; 32], config: &MaskConfig) -> Result<(), PgError> {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut sql = format!("BEGIN;\n{}", functions_sql());
    sql.push_str(&format!(
        "DELETE FROM {SCHEMA}.secret; INSERT INTO {SCHEMA}.secret VALUES ('\\x{hex}'::bytea);\n"
    ));
    client
        .batch_execute(&sql)
        .await
        .map_err(PgError::sql("installing the masking functions on the sandbox"))?;
    for (table, policies) in config.tables() {
        let trigger = table_sql(source, &table, policies).await?;
        client
            .batch_execute(&trigger)
            .await
            .map_err(PgError::sql(format!("installing the masking trigger on {table}")))?;
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(PgError::sql("installing masking on the sandbox"))
}

/// The trigger function and trigger of one table, from its policies and the columns it has now on `columns_of`
/// (the sandbox, or the source before the sandbox has its indexes): a column without a policy that is not a key
/// (one the source added later) holds its filler, never its value.
pub async fn table_sql(
    columns_of: &Client,
    table: &QualifiedName,
    policies: &BTreeMap<String, Policy>,
) -> Result<String, PgError> {
    let mut body = String::new();
    for col in columns(columns_of, table).await? {
        let c = quote_ident(&col.name);
        let policy = match policies.get(&col.name) {
            Some(p) => *p,
            None if col.key => Policy::Keep,
            None => Policy::Exclude,
        };
        match policy {
            Policy::Keep => {}
            Policy::FakeEmail | Policy::FakeName | Policy::Hash => {
                let style = policy.style().unwrap_or("hash");
                body.push_str(&format!(
                    "  IF TG_OP = 'INSERT' THEN NEW.{c} := {SCHEMA}.scramble(NEW.{c}, '{style}');\n  \
                     ELSIF NEW.{c} IS DISTINCT FROM OLD.{c} THEN NEW.{c} := {SCHEMA}.scramble(NEW.{c}, '{style}');\n  \
                     END IF;\n"
                ));
            }
            Policy::Null => body.push_str(&format!("  NEW.{c} := NULL;\n")),
            Policy::Exclude => {
                let fill = filler(&col.category, &col.type_name, col.not_null).unwrap_or_else(|| "NULL".into());
                body.push_str(&format!("  NEW.{c} := {fill};\n"));
            }
        }
    }
    let function = format!(
        "{SCHEMA}.{}",
        quote_ident(&format!("t_{}_{}", table.schema, table.name))
    );
    Ok(format!(
        "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $t$\nBEGIN\n{body}  RETURN NEW;\nEND $t$;\n\
         DROP TRIGGER IF EXISTS {TRIGGER} ON {t};\n\
         CREATE TRIGGER {TRIGGER} BEFORE INSERT OR UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {function}();\n\
         ALTER TABLE {t} ENABLE REPLICA TRIGGER {TRIGGER};\n",
        t = table.sql()
    ))
}

/// Columns of masked tables on the sandbox that the config does not classify (`schema.table.column`): they hold
/// fillers, and the sandbox is degraded until the config names them.
pub async fn unclassified(client: &Client, config: &MaskConfig) -> Result<Vec<String>, PgError> {
    let mut out = Vec::new();
    for (table, policies) in config.tables() {
        for col in columns(client, &table).await? {
            if !col.key && !policies.contains_key(&col.name) {
                out.push(format!("{table}.{}", col.name));
            }
        }
    }
    Ok(out)
}

/// Removes masking from a fork: the key, the functions and the triggers (a fork gets no unmasked rows to mask,
/// and its migration must run on the values as they are).
pub async fn remove(client: &Client) -> Result<(), PgError> {
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .await
        .map_err(PgError::sql("removing masking from a fork"))
}

/// A literal for tests and docs: what `scramble` gives for `value` (run on a server with masking installed).
pub async fn scramble(client: &Client, value: &str, policy: Policy) -> Result<Option<String>, PgError> {
    let Some(style) = policy.style() else {
        return Ok(Some(value.to_string()));
    };
    let row = client
        .query_one(
            &format!(
                "SELECT {SCHEMA}.scramble({}, {})",
                quote_literal(value),
                quote_literal(style)
            ),
            &[],
        )
        .await
        .map_err(PgError::sql("masking a value"))?;
    Ok(row.get(0))
}

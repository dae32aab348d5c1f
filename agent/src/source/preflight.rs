//! Preflight: every check on the source runs before anything is created there, and all failures are reported
//! together, each with the fix. A refused preflight leaves the source exactly as it was.

use std::fmt;

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::catalog::{self, PublishedTable, TableFacts};
use super::objects;
use super::subset::{Subset, TableFilter};
use crate::pg::{PgError, QualifiedName, quote_ident};

/// What the sandbox replicates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum Replicate {
    /// An existing publication on the source.
    Publication(String),
    /// These tables, in a publication Understudy creates.
    Tables(Vec<QualifiedName>),
    /// Every table of a schema, in a publication Understudy creates.
    Schema(String),
}

pub use super::problem::Problem;

/// A refused preflight.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
pub struct PreflightFailed {
    pub problems: Vec<Problem>,
}

impl fmt::Display for PreflightFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the source failed preflight; nothing was created on it:")?;
        for p in &self.problems {
            writeln!(f, "  ✗ [{}] {}", p.code, p.message)?;
            writeln!(f, "    fix: {}", p.fix)?;
        }
        Ok(())
    }
}

/// What passed preflight: the plan for the source side.
#[derive(Debug, Clone)]
pub struct Preflight {
    pub role: String,
    pub server_version_num: i32,
    /// The publication the subscription will use.
    pub publication: String,
    /// `Some` when Understudy must create that publication: the tables, or a whole schema.
    pub create_publication: Option<(Vec<QualifiedName>, Option<String>)>,
    /// Tables to copy (known only after the publication exists when Understudy creates it).
    pub tables: Vec<QualifiedName>,
    /// The subset's row filters, for the publication Understudy creates.
    pub filters: Vec<TableFilter>,
    /// Column lists (every column but the excluded ones), for the publication Understudy creates.
    pub columns: std::collections::BTreeMap<QualifiedName, Vec<String>>,
    pub warnings: Vec<String>,
}

/// Runs every check for a sandbox whose slot and (own) publication are named `slot` and `own_publication`.
pub async fn run(
    client: &Client,
    what: &Replicate,
    slot: &str,
    own_publication: &str,
    local_major: u32,
    subset: Option<&Subset>,
    mask: Option<&crate::mask::MaskConfig>,
) -> Result<Result<Preflight, PreflightFailed>, PgError> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let row = client
        .query_one(
            "SELECT current_user::text, current_setting('server_version_num')::int, current_setting('wal_level'), \
                    current_setting('max_replication_slots')::int, \
                    (SELECT count(*) FROM pg_replication_slots), \
                    current_setting('max_wal_senders')::int, \
                    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'), \
                    r.rolsuper, r.rolreplication, \
                    has_database_privilege(current_database(), 'CREATE'), current_database()::text \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(PgError::sql("reading the source's settings"))?;
    let role: String = row.get(0);
    let version: i32 = row.get(1);
    let wal_level: String = row.get(2);
    let max_slots: i32 = row.get(3);
    let used_slots: i64 = row.get(4);
    let max_senders: i32 = row.get(5);
    let used_senders: i64 = row.get(6);
    let is_super: bool = row.get(7);
    let can_replicate: bool = row.get(8) || is_super;
    let can_create: bool = row.get(9);
    let database: String = row.get(10);

    let major = (version / 10000) as u32;
    if version < 100000 || major > local_major {
        problems.push(Problem {
            code: "server-version",
            message: format!(
                "the source runs PostgreSQL {major}; this machine's client programs are version {local_major}"
            ),
            fix: format!(
                "install PostgreSQL {major} here (apt-get install -y postgresql-{major}) and set PG_BINDIR to its \
                 bin directory; sources from version 10 up are supported"
            ),
        });
    }
    if wal_level != "logical" {
        problems.push(Problem {
            code: "wal-level",
            message: format!("wal_level is {wal_level:?}; logical replication needs \"logical\""),
            fix: "run ALTER SYSTEM SET wal_level = logical on the source and restart it".to_string(),
        });
    }
    if i64::from(max_slots) - used_slots < 1 {
        problems.push(Problem {
            code: "replication-slots",
            message: format!(
                "no free replication slot: max_replication_slots = {max_slots} and {used_slots} are in use"
            ),
            fix: "raise max_replication_slots (ALTER SYSTEM SET max_replication_slots = ...) and restart the \
                  source, or drop an unused slot with pg_drop_replication_slot"
                .to_string(),
        });
    } else if i64::from(max_slots) - used_slots < 2 {
        warnings.push(
            "only one replication slot is free: tables added to the publication later need a second one \
             briefly for their initial copy"
                .to_string(),
        );
    }
    if i64::from(max_senders) - used_senders < 1 {
        problems.push(Problem {
            code: "wal-senders",
            message: format!("no free WAL sender: max_wal_senders = {max_senders} and {used_senders} are in use"),
            fix: "raise max_wal_senders (ALTER SYSTEM SET max_wal_senders = ...) and restart the source".to_string(),
        });
    }
    if !can_replicate {
        problems.push(Problem {
            code: "replication-role",
            message: format!("role {role} has neither REPLICATION nor SUPERUSER"),
            fix: format!(
                "run ALTER ROLE {} REPLICATION on the source (as a superuser)",
                quote_ident(&role)
            ),
        });
    }
    if objects::slot_info(client, slot).await?.is_some() {
        problems.push(Problem {
            code: "slot-exists",
            message: format!("replication slot {slot} already exists on the source (another sandbox of this name?)"),
            fix: format!(
                "remove the other sandbox with `understudy sandbox delete`, choose another name, or if the slot is \
                 orphaned run SELECT pg_drop_replication_slot('{slot}') on the source"
            ),
        });
    }

    let mut create_publication = None;
    let publication;
    let tables: Vec<QualifiedName>;
    let mut publishes_changes = true;
    match what {
        Replicate::Publication(name) => {
            publication = name.clone();
            let row = client
                .query_opt(
                    "SELECT pubupdate, pubdelete FROM pg_publication WHERE pubname = $1",
                    &[name],
                )
                .await
                .map_err(PgError::sql("reading pg_publication"))?;
            match row {
                None => {
                    problems.push(Problem {
                        code: "publication-missing",
                        message: format!("publication {name} does not exist in database {database} on the source"),
                        fix: format!(
                            "create it (CREATE PUBLICATION {} FOR TABLE ...), or pass --tables or --schema so that \
                             Understudy creates one",
                            quote_ident(name)
                        ),
                    });
                    tables = Vec::new();
                }
                Some(row) => {
                    let (update, delete): (bool, bool) = (row.get(0), row.get(1));
                    publishes_changes = update || delete;
                    let listed: Vec<PublishedTable> = catalog::published_tables(client, name).await?;
                    tables = listed.into_iter().map(|t| t.name).collect();
                    if tables.is_empty() {
                        problems.push(Problem {
                            code: "publication-empty",
                            message: format!("publication {name} publishes no table"),
                            fix: format!("add tables: ALTER PUBLICATION {} ADD TABLE ...", quote_ident(name)),
                        });
                    }
                }
            }
        }
        Replicate::Tables(list) => {
            publication = own_publication.to_string();
            tables = list.clone();
            create_publication = Some((list.clone(), None));
        }
        Replicate::Schema(schema) => {
            publication = own_publication.to_string();
            tables = catalog::tables_in_schema(client, schema).await?;
            if tables.is_empty() {
                problems.push(Problem {
                    code: "table-missing",
                    message: format!("schema {schema} has no table in database {database}"),
                    fix: "name a schema that holds tables, or use --tables".to_string(),
                });
            }
            let whole = if is_super { Some(schema.clone()) } else { None };
            create_publication = Some((tables.clone(), whole));
        }
    }

    let (facts, missing) = catalog::table_facts(client, &tables).await?;
    if !missing.is_empty() {
        problems.push(Problem {
            code: "table-missing",
            message: format!("no such table on the source: {}", join(&missing)),
            fix: "check the names (schema.table, case-sensitive) in --tables".to_string(),
        });
    }
    if create_publication.is_some() {
        if objects::publication_exists(client, own_publication).await? {
            problems.push(Problem {
                code: "publication-exists",
                message: format!("publication {own_publication} already exists on the source"),
                fix: format!(
                    "another sandbox of this name owns it: delete that sandbox, choose another name, or pass \
                     --publication {own_publication} to use it as it is"
                ),
            });
        }
        let not_owned: Vec<QualifiedName> = facts
            .iter()
            .filter(|t| !t.owned && !is_super)
            .map(|t| t.name.clone())
            .collect();
        if !can_create || !not_owned.is_empty() {
            let reason = if !can_create {
                format!("role {role} lacks CREATE on database {database}")
            } else {
                format!("role {role} does not own {}", join(&not_owned))
            };
            let list = tables.iter().map(QualifiedName::sql).collect::<Vec<_>>().join(", ");
            problems.push(Problem {
                code: "create-publication",
                message: format!("Understudy cannot create the publication: {reason}"),
                fix: format!(
                    "ask a table owner or DBA to run CREATE PUBLICATION {} FOR TABLE {list}; then pass \
                     --publication {own_publication}",
                    quote_ident(own_publication)
                ),
            });
        }
    }
    let unreadable: Vec<QualifiedName> = facts.iter().filter(|t| !t.can_select).map(|t| t.name.clone()).collect();
    if !unreadable.is_empty() {
        let list = unreadable.iter().map(QualifiedName::sql).collect::<Vec<_>>().join(", ");
        let schemas: std::collections::BTreeSet<String> = unreadable.iter().map(|t| quote_ident(&t.schema)).collect();
        problems.push(Problem {
            code: "select-privilege",
            message: format!("role {role} cannot read {}", join(&unreadable)),
            fix: format!(
                "GRANT USAGE ON SCHEMA {} TO {r}; GRANT SELECT ON {list} TO {r};",
                schemas.into_iter().collect::<Vec<_>>().join(", "),
                r = quote_ident(&role)
            ),
        });
    }
    if publishes_changes {
        let without: Vec<&TableFacts> = facts.iter().filter(|t| !t.has_replica_identity()).collect();
        if !without.is_empty() {
            let names: Vec<QualifiedName> = without.iter().map(|t| t.name.clone()).collect();
            problems.push(Problem {
                code: "replica-identity",
                message: format!(
                    "{} without a replica identity: publishing it would make the source's own UPDATE and DELETE \
                     on it fail",
                    join(&names)
                ),
                fix: format!(
                    "give each a primary key (ALTER TABLE ... ADD PRIMARY KEY ...) or, if none fits, {}",
                    names
                        .iter()
                        .map(|n| format!("ALTER TABLE {} REPLICA IDENTITY FULL;", n.sql()))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            });
        }
    }
    for (from, constraint, to) in catalog::foreign_keys_leaving(client, &tables).await? {
        warnings.push(format!(
            "foreign key {constraint} on {from} references {to}, which is not replicated; the sandbox leaves the \
             constraint out"
        ));
    }

    let mut filters = Vec::new();
    if let Some(subset) = subset.filter(|s| !s.is_empty()) {
        if let Replicate::Publication(name) = what {
            problems.push(Problem {
                code: "subset-publication",
                message: format!(
                    "--subset needs a publication Understudy creates; publication {name} is the source's own, and \
                     its row filters are the subset"
                ),
                fix: format!(
                    "pass --tables or --schema instead of --publication, or put the filters in the publication: \
                     ALTER PUBLICATION {} SET TABLE t WHERE (...)",
                    quote_ident(name)
                ),
            });
        } else if problems.is_empty() {
            match super::subset::resolve(client, subset, &facts, own_publication).await? {
                Ok(resolved) => filters = resolved,
                Err(refused) => problems.extend(refused),
            }
        }
    }
    let mut columns = std::collections::BTreeMap::new();
    if let Some(mask) = mask
        && problems.is_empty()
    {
        columns = masked_columns(client, mask, what, &tables, &mut problems).await?;
    }
    if (!filters.is_empty() || mask.is_some())
        && let Some((_, whole)) = create_publication.as_mut()
    {
        // Row filters and column lists are given table by table, so a schema's tables are listed; and a masked
        // sandbox takes no table it was not checked with (a table created later would arrive unmasked).
        *whole = None;
    }
    if !problems.is_empty() {
        return Ok(Err(PreflightFailed { problems }));
    }
    Ok(Ok(Preflight {
        filters,
        columns,
        role,
        server_version_num: version,
        publication,
        create_publication,
        tables,
        warnings,
    }))
}

/// The mask config's checks, and the column lists that leave its excluded columns on the source: the published
/// columns of each table with exclusions (for a publication Understudy creates), or a refusal when an existing
/// publication would send them.
pub(crate) async fn masked_columns(
    client: &Client,
    mask: &crate::mask::MaskConfig,
    what: &Replicate,
    tables: &[QualifiedName],
    problems: &mut Vec<Problem>,
) -> Result<std::collections::BTreeMap<QualifiedName, Vec<String>>, PgError> {
    for refusal in crate::mask::check(client, mask, tables).await? {
        problems.push(Problem {
            code: "mask-config",
            message: refusal.message,
            fix: refusal.fix,
        });
    }
    let mut columns = std::collections::BTreeMap::new();
    let excluded = mask.excluded();
    if let Replicate::Publication(name) = what {
        for table in catalog::published_tables(client, name).await? {
            let sent: Vec<&String> = excluded
                .get(&table.name)
                .map(|ex| ex.iter().filter(|c| table.columns.contains(c)).collect())
                .unwrap_or_default();
            if !sent.is_empty() {
                let keep: Vec<String> = table
                    .columns
                    .iter()
                    .filter(|c| !sent.contains(c))
                    .map(|c| quote_ident(c))
                    .collect();
                problems.push(Problem {
                    code: "mask-config",
                    message: format!(
                        "publication {name} sends {}.{}, which the mask config excludes: excluded columns never \
                         leave the source",
                        table.name,
                        sent.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                    fix: format!(
                        "give the publication a column list: ALTER PUBLICATION {} SET TABLE {} ({})",
                        quote_ident(name),
                        table.name.sql(),
                        keep.join(", ")
                    ),
                });
            }
        }
        return Ok(columns);
    }
    for (table, ex) in excluded {
        let (facts, _) = catalog::table_facts(client, std::slice::from_ref(&table)).await?;
        if let Some(f) = facts.first() {
            let all = catalog::copyable_columns(client, f.oid).await?;
            columns.insert(table, all.into_iter().filter(|c| !ex.contains(c)).collect());
        }
    }
    Ok(columns)
}

fn join(names: &[QualifiedName]) -> String {
    names.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

impl crate::error::Classify for PreflightFailed {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Invalid
    }
}

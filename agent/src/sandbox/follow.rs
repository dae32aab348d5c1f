//! Staying current: logical replication does not carry DDL, so the follower compares the source's catalog (for
//! the published tables) with the sandbox's and applies additive changes (new sequence, new table in the
//! publication, new column, new index) to the sandbox, then refreshes the subscription. The apply worker retries
//! a transaction it could not apply (a missing column) every `wal_retrieve_retry_interval`, so a column added here
//! lets the retry through with nothing lost. Changes that are not safe to apply by itself (dropped or retyped
//! columns, tables leaving the publication) are recorded as drift and put the sandbox in `degraded`, with the SQL
//! that would mirror them.
//!
//! Each pass guards the source first. A gap in the stream (see [`crate::source::identity`]: the slot dropped or
//! recreated, another server, a new timeline, a rewound source) stops the subscription before anything else, and
//! the sandbox goes `stale` with the reason. A slot that keeps more WAL than the budget is dropped (the breaker)
//! and the sandbox goes `stale` too: production's disk matters more than the sandbox. A stale sandbox is rebuilt
//! by [`super::resync`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use tokio_postgres::Client;

use super::state::{self, SandboxMeta, SandboxState, StaleReason, StateDir};
use super::{SandboxError, cluster_of, sequences};
use crate::lsn::Lsn;
use crate::pg::connect::connect_source;
use crate::pg::tools::{self, Section};
use crate::pg::{ClusterStatus, PgBinaries, PgError, QualifiedName, quote_ident};
use crate::source::identity::{self, Gap, SourceMark};
use crate::source::{SandboxName, catalog, objects};

/// One difference between the source and the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Change {
    AddSequence {
        sequence: QualifiedName,
        definition: String,
    },
    AddTable {
        table: QualifiedName,
    },
    AddColumn {
        table: QualifiedName,
        column: String,
        data_type: String,
        default: Option<String>,
        not_null: bool,
    },
    AddIndex {
        table: QualifiedName,
        index: String,
        definition: String,
    },
    DropColumn {
        table: QualifiedName,
        column: String,
    },
    ChangeType {
        table: QualifiedName,
        column: String,
        from: String,
        to: String,
    },
    DropIndex {
        table: QualifiedName,
        index: String,
    },
    LeftPublication {
        table: QualifiedName,
    },
}

impl Change {
    /// Additive changes are applied automatically.
    pub fn is_additive(&self) -> bool {
        matches!(
            self,
            Change::AddSequence { .. } | Change::AddTable { .. } | Change::AddColumn { .. } | Change::AddIndex { .. }
        )
    }

    fn order(&self) -> u8 {
        match self {
            Change::AddSequence { .. } => 0,
            Change::AddTable { .. } => 1,
            Change::AddColumn { .. } => 2,
            Change::AddIndex { .. } => 3,
            _ => 4,
        }
    }

    /// A line for people.
    pub fn describe(&self) -> String {
        match self {
            Change::AddSequence { sequence, .. } => format!("new sequence {sequence}"),
            Change::AddTable { table } => format!("new table {table} in the publication"),
            Change::AddColumn {
                table,
                column,
                data_type,
                ..
            } => format!("new column {table}.{column} {data_type}"),
            Change::AddIndex { index, table, .. } => format!("new index {index} on {table}"),
            Change::DropColumn { table, column } => format!(
                "column {table}.{column} was dropped on the source (mirror: ALTER TABLE {} DROP COLUMN {})",
                table.sql(),
                quote_ident(column)
            ),
            Change::ChangeType {
                table,
                column,
                from,
                to,
            } => format!(
                "column {table}.{column} changed type from {from} to {to} on the source (mirror: ALTER TABLE {} ALTER \
                 COLUMN {} TYPE {to})",
                table.sql(),
                quote_ident(column)
            ),
            Change::DropIndex { table, index } => {
                format!(
                    "index {index} on {table} was dropped on the source (mirror: DROP INDEX {})",
                    quote_ident(index)
                )
            }
            Change::LeftPublication { table } => {
                format!("table {table} left the publication; the sandbox keeps its last copy")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ColumnShape {
    data_type: String,
    not_null: bool,
    default: Option<String>,
}

#[derive(Debug, Default)]
struct TableShape {
    columns: BTreeMap<String, ColumnShape>,
    indexes: BTreeMap<String, String>,
}

async fn shapes(client: &Client, tables: &[QualifiedName]) -> Result<BTreeMap<QualifiedName, TableShape>, PgError> {
    let schemas: Vec<String> = tables.iter().map(|t| t.schema.clone()).collect();
    let names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
    let mut out: BTreeMap<QualifiedName, TableShape> = BTreeMap::new();
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    a.attnotnull, pg_get_expr(d.adbin, d.adrelid) \
             FROM unnest($1::text[], $2::text[]) AS w(s, t) \
             JOIN pg_namespace n ON n.nspname = w.s JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&schemas, &names],
        )
        .await
        .map_err(PgError::sql("reading columns"))?;
    for row in rows {
        let table = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        out.entry(table).or_default().columns.insert(
            row.get(2),
            ColumnShape {
                data_type: row.get(3),
                not_null: row.get(4),
                default: row.get(5),
            },
        );
    }
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, i.relname::text, pg_get_indexdef(i.oid) \
             FROM unnest($1::text[], $2::text[]) AS w(s, t) \
             JOIN pg_namespace n ON n.nspname = w.s JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t \
             JOIN pg_index x ON x.indrelid = c.oid JOIN pg_class i ON i.oid = x.indexrelid",
            &[&schemas, &names],
        )
        .await
        .map_err(PgError::sql("reading indexes"))?;
    for row in rows {
        let table = QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1));
        out.entry(table).or_default().indexes.insert(row.get(2), row.get(3));
    }
    Ok(out)
}

/// Sequences with their `CREATE SEQUENCE` and the table that owns them (serial and identity columns).
async fn sequences_of(client: &Client) -> Result<BTreeMap<QualifiedName, (String, Option<QualifiedName>)>, PgError> {
    let rows = client
        .query(
            "SELECT s.schemaname::text, s.sequencename::text, \
                    format('CREATE SEQUENCE IF NOT EXISTS %I.%I AS %s INCREMENT BY %s MINVALUE %s MAXVALUE %s START \
                            WITH %s CACHE %s %s', schemaname, sequencename, data_type, increment_by, min_value, \
                            max_value, start_value, cache_size, CASE WHEN cycle THEN 'CYCLE' ELSE 'NO CYCLE' END), \
                    tn.nspname::text, t.relname::text \
             FROM pg_sequences s \
             JOIN pg_namespace sn ON sn.nspname = s.schemaname \
             JOIN pg_class sc ON sc.relnamespace = sn.oid AND sc.relname = s.sequencename \
             LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = sc.oid \
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') \
             LEFT JOIN pg_class t ON t.oid = d.refobjid LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace \
             WHERE s.schemaname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .map_err(PgError::sql("reading sequences"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let owner = match (r.get::<_, Option<String>>(3), r.get::<_, Option<String>>(4)) {
                (Some(schema), Some(table)) => Some(QualifiedName::new(schema, table)),
                _ => None,
            };
            (
                QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                (r.get(2), owner),
            )
        })
        .collect())
}

/// The differences between the source's published tables (and sequences) and the sandbox.
pub async fn diff(source: &Client, sandbox: &Client, publication: &str) -> Result<Vec<Change>, PgError> {
    let published: Vec<QualifiedName> = catalog::published_tables(source, publication)
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    let subscribed: Vec<QualifiedName> = sandbox
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_subscription_rel r JOIN pg_class c ON c.oid = r.srrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace",
            &[],
        )
        .await
        .map_err(PgError::sql("reading pg_subscription_rel"))?
        .iter()
        .map(|r| QualifiedName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    let source_shapes = shapes(source, &published).await?;
    let sandbox_shapes = shapes(sandbox, &published).await?;
    let mut changes = Vec::new();

    let source_seqs = sequences_of(source).await?;
    let sandbox_seqs = sequences_of(sandbox).await?;
    for (seq, (definition, owner)) in &source_seqs {
        // A sequence owned by a table the sandbox lacks comes with that table.
        let comes_with_table = owner.as_ref().is_some_and(|t| !sandbox_shapes.contains_key(t));
        if !sandbox_seqs.contains_key(seq) && !comes_with_table {
            changes.push(Change::AddSequence {
                sequence: seq.clone(),
                definition: definition.clone(),
            });
        }
    }
    for table in &published {
        let Some(src) = source_shapes.get(table) else {
            continue;
        };
        let Some(dst) = sandbox_shapes.get(table) else {
            changes.push(Change::AddTable { table: table.clone() });
            continue;
        };
        for (column, shape) in &src.columns {
            match dst.columns.get(column) {
                None => changes.push(Change::AddColumn {
                    table: table.clone(),
                    column: column.clone(),
                    data_type: shape.data_type.clone(),
                    default: shape.default.clone(),
                    not_null: shape.not_null,
                }),
                Some(have) if have.data_type != shape.data_type => changes.push(Change::ChangeType {
                    table: table.clone(),
                    column: column.clone(),
                    from: have.data_type.clone(),
                    to: shape.data_type.clone(),
                }),
                Some(_) => {}
            }
        }
        for column in dst.columns.keys().filter(|c| !src.columns.contains_key(*c)) {
            changes.push(Change::DropColumn {
                table: table.clone(),
                column: column.clone(),
            });
        }
        for (index, definition) in &src.indexes {
            if !dst.indexes.contains_key(index) {
                changes.push(Change::AddIndex {
                    table: table.clone(),
                    index: index.clone(),
                    definition: definition.clone(),
                });
            }
        }
        for index in dst.indexes.keys().filter(|i| !src.indexes.contains_key(*i)) {
            changes.push(Change::DropIndex {
                table: table.clone(),
                index: index.clone(),
            });
        }
    }
    for table in subscribed.iter().filter(|t| !published.contains(t)) {
        changes.push(Change::LeftPublication { table: table.clone() });
    }
    changes.sort_by_key(Change::order);
    Ok(changes)
}

/// What one follower pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FollowReport {
    pub applied: Vec<String>,
    pub pending: Vec<String>,
    /// Drift this pass found that the pass before had not (each change is counted once, when it appears).
    pub new_drift: usize,
    pub sequences_synced: usize,
    pub breaker_tripped: bool,
    /// This pass found a gap in the stream (and marked the sandbox stale).
    pub gap: bool,
    pub error: Option<String>,
}

/// One pass of the follower over sandbox `name`: source guard, DDL, sequences. Records the outcome in the
/// metadata.
pub async fn follow_once(state_dir: &StateDir, name: &SandboxName) -> Result<FollowReport, SandboxError> {
    let dir = state_dir.sandbox_dir(name);
    if !dir.exists() {
        return Err(SandboxError::NotFound {
            name: name.to_string(),
            state_dir: state_dir.root().to_path_buf(),
        });
    }
    let mut meta = SandboxMeta::load(&dir)?;
    let mut report = FollowReport::default();
    if meta.phase == SandboxState::Stale {
        report.error = meta.last_error.as_ref().map(|e| e.message.clone());
        return Ok(report);
    }
    let cluster = cluster_of(&meta)?;
    if !matches!(cluster.status().await?, ClusterStatus::Running { .. }) {
        cluster.start().await?;
    }
    let sandbox = cluster.connect(&meta.database).await?;
    // A fork holds this lock while it pauses the sandbox: skip the pass rather than disturb its fork point. Held
    // by this pass until it ends (the connection closes).
    let pause_guard = cluster.connect(super::admin_database(&meta.database)).await?;
    let free: bool = pause_guard
        .query_one("SELECT pg_try_advisory_lock($1)", &[&super::PAUSE_LOCK])
        .await
        .map_err(PgError::sql("checking the fork pause lock"))?
        .get(0);
    if !free {
        report.error = Some("a fork is pausing the sandbox; pass skipped".into());
        return Ok(report);
    }
    // A subscription left disabled by an interrupted fork is enabled again.
    sandbox
        .batch_execute(&format!(
            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_subscription WHERE subname = {n} AND NOT subenabled) THEN \
             ALTER SUBSCRIPTION {i} ENABLE; END IF; END $$",
            n = crate::pg::quote_literal(&meta.subscription),
            i = quote_ident(&meta.subscription)
        ))
        .await
        .map_err(PgError::sql("re-enabling the subscription"))?;
    let source_info = state::load_source(&dir)?;
    let source = match connect_source(&source_info, "understudy-follow").await {
        Ok(c) => c,
        Err(e) => {
            meta.source_reached(false);
            meta.record_error(
                format!("the source cannot be reached: {e}"),
                "check the network and credentials; the slot keeps WAL on the source meanwhile",
            );
            meta.save(&dir)?;
            report.error = Some(e.to_string());
            return Ok(report);
        }
    };

    if meta.source_unreachable_since.is_some() {
        meta.source_reached(true);
        if meta
            .last_error
            .as_ref()
            .is_some_and(|e| e.message.starts_with("the source cannot be reached"))
        {
            meta.last_error = None;
        }
    }
    // Guard the source first: a gap stops the stream before anything else happens.
    if let Some(gap) = find_gap(&source, &sandbox, &cluster, &mut meta).await? {
        tracing::warn!(sandbox = %name, %gap, "the stream from the source has a gap; the sandbox stops following it");
        detach(&sandbox, &meta.subscription).await?;
        meta.mark_stale(StaleReason::Gap(gap));
        meta.save(&dir)?;
        report.gap = true;
        report.error = meta.last_error.as_ref().map(|e| e.message.clone());
        return Ok(report);
    }
    if let Some(slot) = objects::slot_info(&source, &meta.slot).await?
        && (slot.retained_bytes > meta.wal_budget_bytes || slot.wal_status == Some(objects::WalStatus::Lost))
    {
        trip_breaker(&source, &sandbox, &mut meta, slot.retained_bytes).await?;
        meta.save(&dir)?;
        report.breaker_tripped = true;
        report.error = meta.last_error.as_ref().map(|e| e.message.clone());
        return Ok(report);
    }

    let changes = diff(&source, &sandbox, &meta.publication).await?;
    let mut refresh = false;
    let mut pending = Vec::new();
    for change in &changes {
        if !change.is_additive() {
            pending.push(change.describe());
            continue;
        }
        match apply(&source_info, &cluster, &sandbox, &meta, change, &dir).await {
            Ok(()) => {
                match (change, &meta.masking) {
                    // Fails closed: a masked sandbox has the table (so that the apply worker can read past its
                    // changes) but does not subscribe to it, so none of its rows arrive unmasked.
                    (Change::AddTable { table }, Some(_)) => pending.push(format!(
                        "table {table} was added to the publication; a masked sandbox does not take its rows (they \
                         would arrive unmasked): create a sandbox whose mask config names it"
                    )),
                    (Change::AddTable { .. }, None) => refresh = true,
                    _ => {}
                }
                tracing::info!(change = %change.describe(), "applied to the sandbox");
                report.applied.push(change.describe());
            }
            Err(e) => {
                let text = format!("could not apply \"{}\": {e}", change.describe());
                meta.record_error(
                    text.clone(),
                    "apply the change to the sandbox by hand, or recreate the sandbox",
                );
                pending.push(text);
            }
        }
    }
    if refresh {
        sandbox
            .batch_execute(&format!(
                "ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = true)",
                quote_ident(&meta.subscription)
            ))
            .await
            .map_err(PgError::sql("refreshing the subscription"))?;
    }
    let seqs = sequences::sync(&source, &sandbox).await?;
    report.sequences_synced = seqs.synced;

    if let Some(message) = apply_failure(&sandbox, &cluster, &meta).await? {
        meta.record_error(
            message,
            "see `understudy sandbox status`; the agent applies additive DDL (`understudy agent start` when none runs)",
        );
    }
    if let Some(masking) = &meta.masking {
        for column in crate::mask::install::unclassified(&sandbox, masking).await? {
            pending.push(format!(
                "column {column} has no masking policy: the sandbox holds a filler for it, not its values; classify \
                 it in the mask config (understudy sandbox mask NAME --mask-config FILE)"
            ));
        }
    }
    report.new_drift = pending.iter().filter(|p| !meta.pending_drift.contains(p)).count();
    meta.pending_drift = pending.clone();
    meta.phase = if pending.is_empty() {
        SandboxState::Ready
    } else {
        SandboxState::Degraded
    };
    meta.save(&dir)?;
    report.pending = pending;
    Ok(report)
}

async fn apply(
    source: &crate::pg::ConnInfo,
    cluster: &crate::pg::Cluster,
    sandbox: &Client,
    meta: &SandboxMeta,
    change: &Change,
    dir: &Path,
) -> Result<(), SandboxError> {
    let database = meta.database.as_str();
    let exec = |sql: String| async move {
        sandbox
            .batch_execute(&sql)
            .await
            .map_err(|e| SandboxError::Failed(crate::pg::describe(&e)))
    };
    match change {
        Change::AddSequence { definition, .. } => exec(definition.clone()).await,
        Change::AddColumn {
            table,
            column,
            data_type,
            default,
            not_null,
        } => {
            let mut sql = format!(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {data_type}",
                table.sql(),
                quote_ident(column)
            );
            if let Some(default) = default {
                sql.push_str(&format!(" DEFAULT {default}"));
            }
            if *not_null && default.is_some() {
                sql.push_str(" NOT NULL");
            }
            let masked = meta
                .masking
                .as_ref()
                .and_then(|m| m.tables().get(table).map(|p| (*p).clone()));
            match masked {
                // Fails closed: the column and the trigger that holds its values back (until the mask config
                // classifies it) appear together, before the apply worker can store a row with it.
                Some(policies) => {
                    exec(format!("BEGIN; {sql}")).await?;
                    let trigger = crate::mask::install::table_sql(sandbox, table, &policies).await;
                    match trigger {
                        Ok(trigger) => exec(format!("{trigger} COMMIT")).await,
                        Err(e) => {
                            exec("ROLLBACK".into()).await.ok();
                            Err(e.into())
                        }
                    }
                }
                None => exec(sql).await,
            }
        }
        Change::AddIndex { definition, .. } => {
            let definition = definition
                .replacen("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)
                .replacen("CREATE UNIQUE INDEX ", "CREATE UNIQUE INDEX IF NOT EXISTS ", 1);
            exec(definition).await
        }
        Change::AddTable { table } => {
            let bins = PgBinaries::locate()?;
            let work = dir.join("work");
            std::fs::create_dir_all(&work).map_err(|e| SandboxError::io("creating the work directory", e))?;
            let archive = work.join(format!("table-{}-{}.dump", table.schema, table.name));
            tools::dump_schema(
                &bins,
                source,
                tools::DumpScope::Only(std::slice::from_ref(table)),
                &archive,
            )
            .await?;
            let result = tools::restore(&bins, &archive, &cluster.conninfo(database), Section::All, None, 1).await;
            let _ = std::fs::remove_file(&archive);
            result.map_err(SandboxError::from)
        }
        _ => Ok(()),
    }
}

async fn trip_breaker(
    source: &Client,
    sandbox: &Client,
    meta: &mut SandboxMeta,
    retained: u64,
) -> Result<(), SandboxError> {
    detach(sandbox, &meta.subscription).await?;
    objects::drop_slot(source, &meta.slot).await?;
    meta.mark_stale(StaleReason::BreakerTripped {
        retained_bytes: retained,
        budget_bytes: meta.wal_budget_bytes,
    });
    Ok(())
}

/// Stops the subscription for good: disabled, and no longer naming a slot, so that its apply worker can never
/// take a slot of that name again (a recreated one, or the next generation's).
pub(crate) async fn detach(sandbox: &Client, subscription: &str) -> Result<(), SandboxError> {
    let sub = quote_ident(subscription);
    sandbox
        .batch_execute(&format!("ALTER SUBSCRIPTION {sub} DISABLE"))
        .await
        .map_err(PgError::sql("disabling the subscription"))?;
    sandbox
        .batch_execute(&format!("ALTER SUBSCRIPTION {sub} SET (slot_name = NONE)"))
        .await
        .map_err(PgError::sql("detaching the subscription from its slot"))?;
    Ok(())
}

/// Checks the source against the mark kept in `meta` (see [`crate::source::identity`]) and the sandbox's log
/// for a missing slot; keeps the new mark when the stream is continuous.
async fn find_gap(
    source: &Client,
    sandbox: &Client,
    cluster: &crate::pg::Cluster,
    meta: &mut SandboxMeta,
) -> Result<Option<Gap>, SandboxError> {
    let found = continuity(source, sandbox, cluster, meta).await?;
    if found.gap.is_none() {
        meta.source_mark = found.mark;
        meta.log_checked_to = found.log_checked_to;
    }
    Ok(found.gap)
}

/// What one continuity check found.
pub(crate) struct Continuity {
    pub gap: Option<Gap>,
    /// The mark to keep when there is no gap.
    mark: Option<SourceMark>,
    log_checked_to: u64,
}

/// The continuity check itself, changing nothing (a fork runs it inside its pause, the follower each pass).
pub(crate) async fn continuity(
    source: &Client,
    sandbox: &Client,
    cluster: &crate::pg::Cluster,
    meta: &SandboxMeta,
) -> Result<Continuity, SandboxError> {
    // What the sandbox applied is read first: the source, read after, can only be further on.
    let applied = applied_position(sandbox, meta.subscription_oid).await?;
    let seen = identity::observe(source, &meta.slot).await?;
    let log = std::fs::read(cluster.log_path()).unwrap_or_default();
    let from = if (log.len() as u64) < meta.log_checked_to {
        0
    } else {
        meta.log_checked_to as usize
    };
    let fresh = String::from_utf8_lossy(log.get(from..).unwrap_or_default());
    let mut out = Continuity {
        gap: None,
        mark: meta.source_mark.clone(),
        log_checked_to: log.len() as u64,
    };
    if seen.slot.is_some() && identity::log_shows_slot_missing(&fresh, &meta.slot) {
        out.gap = Some(Gap::SlotRecreated {
            slot: meta.slot.clone(),
            evidence: "the sandbox's apply worker found no slot of that name since the last pass".into(),
        });
        return Ok(out);
    }
    match (&meta.source_mark, seen.slot) {
        (None, None) => {
            out.gap = Some(Gap::SlotMissing {
                slot: meta.slot.clone(),
            })
        }
        (None, Some(_)) => out.mark = Some(SourceMark::first(&seen)),
        (Some(mark), _) => match mark.check(&seen, &meta.slot, applied) {
            Ok(next) => out.mark = Some(next),
            Err(gap) => out.gap = Some(gap),
        },
    }
    Ok(out)
}

/// What the sandbox has applied: its subscription's replication origin.
pub(crate) async fn applied_position(
    sandbox: &Client,
    subscription_oid: Option<u32>,
) -> Result<Option<Lsn>, SandboxError> {
    let Some(oid) = subscription_oid else { return Ok(None) };
    let row = sandbox
        .query_opt(
            "SELECT remote_lsn::text FROM pg_replication_origin_status WHERE external_id = $1",
            &[&format!("pg_{oid}")],
        )
        .await
        .map_err(PgError::sql("reading the subscription's replication origin"))?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|t| t.parse().ok())
        .filter(|l: &Lsn| l.0 != 0))
}

/// The apply worker's last failure, from the server log, when it is not running.
async fn apply_failure(
    sandbox: &Client,
    cluster: &crate::pg::Cluster,
    meta: &SandboxMeta,
) -> Result<Option<String>, SandboxError> {
    let running: bool = sandbox
        .query_opt(
            "SELECT pid IS NOT NULL FROM pg_stat_subscription WHERE subname = $1 AND relid IS NULL",
            &[&meta.subscription],
        )
        .await
        .map_err(PgError::sql("reading pg_stat_subscription"))?
        .map(|r| r.get(0))
        .unwrap_or(false);
    if running {
        return Ok(None);
    }
    let log = cluster.log_tail(200);
    Ok(log
        .lines()
        .rev()
        .find(|l| l.contains("ERROR:") && l.contains("logical replication"))
        .map(|l| {
            format!(
                "the apply worker stopped: {}",
                l.split("ERROR:").nth(1).unwrap_or(l).trim()
            )
        }))
}

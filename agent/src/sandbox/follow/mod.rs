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

use std::path::Path;

use serde::Serialize;
use tokio_postgres::Client;

use super::state::{self, SandboxMeta, SandboxState, StaleReason, StateDir};
use super::{SandboxError, cluster_of, sequences};
use crate::lsn::Lsn;
use crate::pg::connect::connect_source;
use crate::pg::tools::{self, Section};
use crate::pg::{ClusterStatus, PgBinaries, PgError, quote_ident};
use crate::source::identity::{self, Gap, SourceMark};
use crate::source::{SandboxName, objects};

mod diff;

pub use diff::{Change, diff};

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

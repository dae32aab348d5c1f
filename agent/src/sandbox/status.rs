//! `sandbox status`: the recorded phase checked against live facts from the sandbox (apply worker, per-table sync
//! state, apply errors) and from the source (our slot: lag, retained WAL, `wal_status`), plus a schema drift check.

use serde::{Deserialize, Serialize};

use super::follow;
use super::state::{LastError, Outage, ResyncPolicy, ResyncStatus, SandboxMeta, SandboxState, StaleReason, StateDir};
use super::{SandboxError, cluster_of};
use crate::lsn::Lsn;
use crate::pg::connect::connect_source;
use crate::pg::{ClusterStatus, PgError};
use crate::source::{SandboxName, SubsetState, objects};

/// Where one table is in its synchronisation (`pg_subscription_rel.srsubstate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TableSyncState {
    /// `i`: waiting for its table-sync worker.
    Initializing,
    /// `d`: its data is being copied.
    Copying,
    /// `f`: copied, not yet caught up.
    FinishedCopy,
    /// `s`: catching up with the apply worker.
    Syncing,
    /// `r`: streaming.
    Ready,
    /// A state this version does not know.
    Unknown,
}

impl TableSyncState {
    pub fn from_srsubstate(code: &str) -> Self {
        match code {
            "r" => TableSyncState::Ready,
            "s" => TableSyncState::Syncing,
            "d" => TableSyncState::Copying,
            "i" => TableSyncState::Initializing,
            "f" => TableSyncState::FinishedCopy,
            _ => TableSyncState::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TableSyncState::Initializing => "initializing",
            TableSyncState::Copying => "copying",
            TableSyncState::FinishedCopy => "finished-copy",
            TableSyncState::Syncing => "syncing",
            TableSyncState::Ready => "ready",
            TableSyncState::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for TableSyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One replicated table.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TableSync {
    pub table: String,
    pub state: TableSyncState,
}

/// The source's side of the sandbox: our slot.
#[derive(Serialize)]
pub struct SourceSide {
    pub reachable: bool,
    pub slot: Option<objects::SlotInfo>,
    /// Seconds the subscriber's confirmation trails the source (`pg_stat_replication.replay_lag`), when known.
    pub lag_seconds: Option<f64>,
    /// The connection, reused for the drift check.
    #[serde(skip)]
    pub client: tokio_postgres::Client,
}

/// Everything `status` prints.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SandboxStatus {
    pub name: String,
    pub state: SandboxState,
    /// Why the state is not `ready`.
    pub reasons: Vec<String>,
    pub source: String,
    pub publication: String,
    pub slot: String,
    pub cluster: String,
    pub cluster_running: bool,
    pub apply_worker_running: bool,
    pub apply_error_count: i64,
    pub received_lsn: Option<Lsn>,
    pub applied_lsn: Option<Lsn>,
    /// The source's current WAL position, when it was read.
    pub source_lsn: Option<Lsn>,
    /// The position our slot on the source has confirmed (everything before it is on the sandbox).
    pub confirmed_lsn: Option<Lsn>,
    /// Bytes of WAL the sandbox has not confirmed (from the slot).
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    /// WAL our slot keeps on the source.
    pub retained_wal_bytes: Option<u64>,
    pub wal_status: Option<objects::WalStatus>,
    pub wal_budget_bytes: u64,
    pub tables: Vec<TableSync>,
    /// Schema changes on the source not (yet) on the sandbox.
    pub drift: Vec<String>,
    pub last_error: Option<LastError>,
    pub warnings: Vec<String>,
    /// Which copy of the source this is: 1, and one more after each resync.
    #[serde(default)]
    pub generation: u32,
    /// Why the sandbox is stale, when it is.
    #[serde(default)]
    pub stale_reason: Option<StaleReason>,
    /// What happens when it goes stale.
    #[serde(default)]
    pub resync: ResyncPolicy,
    /// What the resync is doing, or what the last one did.
    #[serde(default)]
    pub resync_status: Option<ResyncStatus>,
    /// How long the agent has not reached the source (`None` while it does).
    #[serde(default)]
    pub source_outage_seconds: Option<f64>,
    /// The last outage of the source that ended.
    #[serde(default)]
    pub last_outage: Option<Outage>,
    /// The rows it holds when not all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<SubsetState>,
    /// Its masking, when its rows are masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masking: Option<crate::mask::MaskConfig>,
    /// On a subset, the share of each table's rows that is present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shares: Vec<TableShare>,
}

/// How much of a table a subset holds: live rows by the statistics of both servers (estimates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TableShare {
    pub table: String,
    /// Its filter, when the subset filters it (a table without one is whole, with its parents' closure).
    pub filter: Option<String>,
    pub rows: i64,
    pub source_rows: i64,
    /// `rows / source_rows`, when the source has rows.
    pub share: Option<f64>,
}

/// Reads the status of sandbox `name`.
pub async fn status(state_dir: &StateDir, name: &SandboxName) -> Result<SandboxStatus, SandboxError> {
    let dir = state_dir.sandbox_dir(name);
    if !dir.exists() {
        return Err(SandboxError::NotFound {
            name: name.to_string(),
            state_dir: state_dir.root().to_path_buf(),
        });
    }
    let meta = SandboxMeta::load(&dir)?;
    let mut reasons = Vec::new();
    let cluster = cluster_of(&meta)?;
    let cluster_running = matches!(cluster.status().await?, ClusterStatus::Running { .. });
    let mut out = SandboxStatus {
        name: name.to_string(),
        state: meta.phase,
        reasons: Vec::new(),
        source: meta.source.clone(),
        publication: meta.publication.clone(),
        slot: meta.slot.clone(),
        cluster: cluster.conninfo(&meta.database),
        cluster_running,
        apply_worker_running: false,
        apply_error_count: 0,
        received_lsn: None,
        applied_lsn: None,
        source_lsn: None,
        confirmed_lsn: None,
        lag_bytes: None,
        lag_seconds: None,
        retained_wal_bytes: None,
        wal_status: None,
        wal_budget_bytes: meta.wal_budget_bytes,
        tables: Vec::new(),
        drift: meta.pending_drift.clone(),
        last_error: meta.last_error.clone(),
        warnings: meta.warnings.clone(),
        generation: meta.generation,
        stale_reason: meta.stale_reason.clone(),
        resync: meta.resync,
        resync_status: meta.resync_status.clone(),
        source_outage_seconds: meta.source_unreachable_since.map(|since| {
            (jiff::Timestamp::now() - since)
                .total(jiff::Unit::Second)
                .unwrap_or(0.0)
        }),
        last_outage: meta.last_outage.clone(),
        subset: meta.subset.clone(),
        masking: meta.masking.clone(),
        shares: Vec::new(),
    };
    if !meta.pending_drift.is_empty() {
        reasons.push(format!(
            "{} schema change(s) on the source not applied",
            meta.pending_drift.len()
        ));
    }

    let mut sandbox_client = None;
    if cluster_running {
        match cluster.connect(&meta.database).await {
            Ok(client) => {
                read_sandbox(&client, &meta, &mut out).await?;
                sandbox_client = Some(client);
            }
            Err(e) => reasons.push(format!("the sandbox server does not accept connections: {e}")),
        }
    } else {
        reasons.push(
            "the sandbox server is not running (the agent restarts it: `understudy agent start` when none runs)"
                .to_string(),
        );
    }
    if cluster_running && !out.apply_worker_running && meta.phase != SandboxState::Stale {
        reasons.push("the apply worker is not running (see the sandbox log and last_error)".to_string());
    }
    if out.tables.iter().any(|t| t.state != TableSyncState::Ready) {
        out.state = SandboxState::InitialSync;
    }

    let source_side = read_source(&dir, &meta).await;
    match &source_side {
        Ok(side) => {
            match &side.slot {
                Some(slot) => {
                    out.lag_bytes = Some(slot.lag_bytes);
                    out.source_lsn = Some(slot.current_lsn);
                    out.confirmed_lsn = slot.confirmed_flush_lsn;
                    out.retained_wal_bytes = Some(slot.retained_bytes);
                    out.wal_status = slot.wal_status;
                    if slot.wal_status == Some(objects::WalStatus::Lost) {
                        out.state = SandboxState::Stale;
                        reasons.push("the source invalidated our slot (wal_status = lost)".into());
                    } else if slot.retained_bytes > meta.wal_budget_bytes {
                        reasons.push(format!(
                            "our slot keeps {} bytes of WAL on the source, over the budget of {}",
                            slot.retained_bytes, meta.wal_budget_bytes
                        ));
                    }
                }
                None if meta.phase != SandboxState::InitialSync => {
                    out.state = SandboxState::Stale;
                    reasons.push(format!("slot {} no longer exists on the source", meta.slot));
                }
                None => {}
            }
            out.lag_seconds = side.lag_seconds;
            if let (Some(subset), Some(client)) = (&meta.subset, &sandbox_client) {
                out.shares = shares(client, &side.client, subset).await.unwrap_or_default();
            }
            if let Some(client) = &sandbox_client
                && let Ok(diff) = follow::diff(&side.client, client, &meta.publication).await
            {
                for change in diff.iter().filter(|c| !meta.pending_drift.contains(&c.describe())) {
                    out.drift.push(change.describe());
                }
            }
        }
        Err(e) => reasons.push(format!("the source cannot be reached: {e}")),
    }
    if out.state == SandboxState::Ready && !reasons.is_empty() {
        out.state = SandboxState::Degraded;
    }
    if out.state == SandboxState::InitialSync
        && meta.phase == SandboxState::Ready
        && out.tables.iter().all(|t| t.state == TableSyncState::Ready)
    {
        out.state = SandboxState::Ready;
    }
    out.reasons = reasons;
    Ok(out)
}

async fn read_sandbox(
    client: &tokio_postgres::Client,
    meta: &SandboxMeta,
    out: &mut SandboxStatus,
) -> Result<(), SandboxError> {
    let row = client
        .query_opt(
            "SELECT s.pid IS NOT NULL, s.received_lsn::text, s.latest_end_lsn::text, \
                    coalesce(st.apply_error_count, 0) \
             FROM pg_stat_subscription s LEFT JOIN pg_stat_subscription_stats st ON st.subid = s.subid \
             WHERE s.subname = $1 AND s.relid IS NULL",
            &[&meta.subscription],
        )
        .await
        .map_err(PgError::sql("reading pg_stat_subscription"))?;
    if let Some(row) = row {
        out.apply_worker_running = row.get(0);
        out.received_lsn = row.get::<_, Option<String>>(1).and_then(|t| t.parse().ok());
        out.applied_lsn = row.get::<_, Option<String>>(2).and_then(|t| t.parse().ok());
        out.apply_error_count = row.get(3);
    }
    let rows = client
        .query(
            "SELECT r.srrelid::regclass::text, r.srsubstate::text FROM pg_subscription_rel r \
             JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1 ORDER BY 1",
            &[&meta.subscription],
        )
        .await
        .map_err(PgError::sql("reading pg_subscription_rel"))?;
    out.tables = rows
        .iter()
        .map(|r| TableSync {
            table: r.get(0),
            state: TableSyncState::from_srsubstate(&r.get::<_, String>(1)),
        })
        .collect();
    Ok(())
}

/// Live rows per table on the sandbox and on the source, from their statistics (`n_live_tup`, or `reltuples`
/// where the statistics were reset), never by counting production's tables.
async fn shares(
    sandbox: &tokio_postgres::Client,
    source: &tokio_postgres::Client,
    subset: &SubsetState,
) -> Result<Vec<TableShare>, PgError> {
    const LIVE_ROWS: &str = "SELECT n.nspname || '.' || c.relname, \
           CASE WHEN coalesce(s.n_live_tup, 0) = 0 THEN greatest(c.reltuples, 0)::bigint ELSE s.n_live_tup END \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
           AND n.nspname NOT LIKE 'pg\\_%'";
    async fn live_rows(
        client: &tokio_postgres::Client,
        which: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>, PgError> {
        Ok(client
            .query(LIVE_ROWS, &[])
            .await
            .map_err(PgError::sql(format!("reading the {which}'s table statistics")))?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }
    let here = live_rows(sandbox, "sandbox").await?;
    let there = live_rows(source, "source").await?;
    Ok(here
        .into_iter()
        .map(|(table, rows)| {
            let source_rows = there.get(&table).copied().unwrap_or(0);
            TableShare {
                filter: subset.filters.get(&table).cloned(),
                share: (source_rows > 0).then(|| rows as f64 / source_rows as f64),
                table,
                rows,
                source_rows,
            }
        })
        .collect())
}

async fn read_source(dir: &std::path::Path, meta: &SandboxMeta) -> Result<SourceSide, SandboxError> {
    let source = crate::sandbox::state::load_source(dir)?;
    let client = connect_source(&source, "understudy-status").await?;
    let slot = objects::slot_info(&client, &meta.slot).await?;
    let lag_seconds = client
        .query_opt(
            "SELECT extract(epoch FROM coalesce(replay_lag, flush_lag, write_lag))::float8 FROM pg_stat_replication \
             WHERE application_name = $1 ORDER BY backend_start DESC LIMIT 1",
            &[&meta.subscription],
        )
        .await
        .map_err(PgError::sql("reading pg_stat_replication"))?
        .and_then(|r| r.get::<_, Option<f64>>(0));
    let lag_seconds = match (&slot, lag_seconds) {
        (Some(s), None) if s.active && s.lag_bytes == 0 => Some(0.0),
        (_, lag) => lag,
    };
    Ok(SourceSide {
        reachable: true,
        slot,
        lag_seconds,
        client,
    })
}

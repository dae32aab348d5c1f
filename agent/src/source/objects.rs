//! The objects Understudy owns on a source: one logical slot, optionally one publication, and the short-lived
//! tablesync slots PostgreSQL creates for the sandbox's subscription. Creation and idempotent removal.

use std::time::Duration;

use serde::Serialize;
use tokio_postgres::Client;

use super::subset::TableFilter;
use crate::lsn::Lsn;
use crate::pg::{PgError, QualifiedName, quote_ident};

/// Creates publication `name` for `tables` (or for a whole schema with `FOR TABLES IN SCHEMA`).
pub async fn create_publication(
    client: &Client,
    name: &str,
    tables: &[QualifiedName],
    whole_schema: Option<&str>,
    filters: &[TableFilter],
    columns: &std::collections::BTreeMap<QualifiedName, Vec<String>>,
) -> Result<(), PgError> {
    let listed = |t: &QualifiedName| {
        let mut item = t.sql();
        if let Some(cols) = columns.get(t) {
            let cols: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
            item.push_str(&format!(" ({})", cols.join(", ")));
        }
        if let Some(f) = filters.iter().find(|f| &f.table == t) {
            item.push_str(&format!(" WHERE ({})", f.filter));
        }
        item
    };
    let target = match whole_schema {
        Some(schema) => format!("TABLES IN SCHEMA {}", quote_ident(schema)),
        None => format!("TABLE {}", tables.iter().map(listed).collect::<Vec<_>>().join(", ")),
    };
    client
        .batch_execute(&format!("CREATE PUBLICATION {} FOR {target}", quote_ident(name)))
        .await
        .map_err(PgError::sql(format!("creating publication {name} on the source")))
}

/// Drops publication `name` if it exists.
pub async fn drop_publication(client: &Client, name: &str) -> Result<bool, PgError> {
    let existed = publication_exists(client, name).await?;
    client
        .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(name)))
        .await
        .map_err(PgError::sql(format!("dropping publication {name} on the source")))?;
    Ok(existed)
}

pub async fn publication_exists(client: &Client, name: &str) -> Result<bool, PgError> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&name],
        )
        .await
        .map_err(PgError::sql("reading pg_publication"))?;
    Ok(row.get(0))
}

/// `pg_replication_slots.wal_status`: whether the WAL the slot needs is still there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WalStatus {
    /// Within `max_wal_size`.
    Reserved,
    /// Beyond `max_wal_size`, kept for the slot (`wal_keep_size`, `max_slot_wal_keep_size`).
    Extended,
    /// Some needed WAL will be removed at the next checkpoint.
    Unreserved,
    /// Needed WAL was removed: the slot is unusable.
    Lost,
}

impl WalStatus {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "reserved" => Some(WalStatus::Reserved),
            "extended" => Some(WalStatus::Extended),
            "unreserved" => Some(WalStatus::Unreserved),
            "lost" => Some(WalStatus::Lost),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WalStatus::Reserved => "reserved",
            WalStatus::Extended => "extended",
            WalStatus::Unreserved => "unreserved",
            WalStatus::Lost => "lost",
        }
    }
}

/// A replication slot as the source reports it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotInfo {
    pub name: String,
    pub active: bool,
    pub active_pid: Option<i32>,
    pub confirmed_flush_lsn: Option<Lsn>,
    pub restart_lsn: Option<Lsn>,
    pub wal_status: Option<WalStatus>,
    pub safe_wal_size: Option<i64>,
    /// WAL the slot keeps on the source: current WAL position − restart_lsn.
    pub retained_bytes: u64,
    /// WAL not yet confirmed by the subscriber: current WAL position − confirmed_flush_lsn.
    pub lag_bytes: u64,
    pub current_lsn: Lsn,
}

fn parse_lsn(text: Option<String>) -> Option<Lsn> {
    text.and_then(|t| t.parse().ok())
}

/// Reads slot `name`; `None` when it does not exist.
pub async fn slot_info(client: &Client, name: &str) -> Result<Option<SlotInfo>, PgError> {
    let row = client
        .query_opt(
            "SELECT slot_name::text, active, active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status, \
                    safe_wal_size, \
                    (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(PgError::sql("reading pg_replication_slots"))?;
    let Some(row) = row else { return Ok(None) };
    let current = parse_lsn(row.get(7)).unwrap_or_default();
    let confirmed = parse_lsn(row.get(3));
    let restart = parse_lsn(row.get(4));
    Ok(Some(SlotInfo {
        name: row.get(0),
        active: row.get(1),
        active_pid: row.get(2),
        confirmed_flush_lsn: confirmed,
        restart_lsn: restart,
        wal_status: row.get::<_, Option<String>>(5).as_deref().and_then(WalStatus::parse),
        safe_wal_size: row.get(6),
        retained_bytes: restart.map(|r| current.bytes_since(r)).unwrap_or(0),
        lag_bytes: confirmed.map(|c| current.bytes_since(c)).unwrap_or(0),
        current_lsn: current,
    }))
}

/// Names of slots whose name starts with `prefix` (LIKE-escaped by the caller).
pub async fn slots_like(client: &Client, pattern: &str) -> Result<Vec<String>, PgError> {
    let rows = client
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE $1",
            &[&pattern],
        )
        .await
        .map_err(PgError::sql("reading pg_replication_slots"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Drops slot `name` if it exists, first ending the walsender that holds it (which runs as our own role).
/// Returns whether a slot was dropped.
pub async fn drop_slot(client: &Client, name: &str) -> Result<bool, PgError> {
    for _ in 0..100 {
        let Some(slot) = slot_info(client, name).await? else {
            return Ok(false);
        };
        if let Some(pid) = slot.active_pid {
            client
                .query("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .map_err(PgError::sql(format!(
                    "ending the walsender (pid {pid}) that holds slot {name}"
                )))?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        match client.query("SELECT pg_drop_replication_slot($1)", &[&name]).await {
            Ok(_) => return Ok(true),
            // 55006: object in use (a walsender took it again); 42704: gone meanwhile.
            Err(e) if e.code().is_some_and(|c| c.code() == "55006") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) if e.code().is_some_and(|c| c.code() == "42704") => return Ok(false),
            Err(e) => {
                return Err(PgError::Sql {
                    context: format!("dropping slot {name} on the source"),
                    source: e,
                });
            }
        }
    }
    Err(PgError::Config(format!(
        "slot {name} stayed in use on the source for 10 s; end its walsender and run \
         SELECT pg_drop_replication_slot('{name}')"
    )))
}

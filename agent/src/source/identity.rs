//! Gap detection: what identifies the source and our slot, recorded when a sandbox is made and checked on every
//! pass of the follower, so that a sandbox never goes on as if its stream were continuous when it is not.
//!
//! PostgreSQL 15 gives a slot no identity of its own (no oid, no creation time), so the mark is made of what a
//! least-privileged role can read and what only moves one way while the slot and the server live on:
//!
//! - the **system identifier** (`pg_control_system()`): another server answering at the same address has another;
//! - the **timeline** (of the current WAL file): a failover or a point-in-time restore starts a new one, and
//!   PostgreSQL 15 does not carry logical slots to a standby;
//! - the **WAL position**: the source's must never be behind what the sandbox has applied (a restore from a
//!   file-system backup rewinds it without a new timeline);
//! - the slot's **decoded bytes** (`pg_stat_replication_slots.total_bytes`) and **confirmed flush**: within one
//!   postmaster's life neither goes back, and a slot recreated under our name starts again from zero. Both may go
//!   back after a crash restart of the source (statistics are reset, and the slot's position is restored from its
//!   last checkpoint), so they are compared only while the postmaster's start time is the one recorded.
//!
//! The follower adds a fifth, from the sandbox's own server log: its apply worker finding our slot missing at
//! any moment means that the slot there now is not the one the sandbox was built from.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::lsn::Lsn;
use crate::pg::PgError;

/// What identified the source and our slot at the last pass (kept in the sandbox's metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceMark {
    /// `pg_control_system().system_identifier`, as text (a u64 does not survive JSON in every reader).
    pub system_identifier: String,
    pub timeline: u32,
    pub postmaster_start: jiff::Timestamp,
    /// The most the slot had decoded in this postmaster's life (`pg_stat_replication_slots.total_bytes`).
    pub slot_decoded_bytes: i64,
    /// The furthest confirmed flush position seen for the slot in this postmaster's life.
    pub slot_confirmed_flush: Option<Lsn>,
}

/// One reading of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub system_identifier: String,
    pub timeline: u32,
    pub postmaster_start: jiff::Timestamp,
    pub current_lsn: Lsn,
    /// `None` when the slot does not exist.
    pub slot: Option<SlotSeen>,
}

/// The slot's part of a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotSeen {
    pub decoded_bytes: i64,
    pub confirmed_flush: Option<Lsn>,
}

/// Why the stream from the source is not continuous.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Gap {
    /// The slot is gone: dropped by someone, or lost in a failover.
    SlotMissing { slot: String },
    /// A slot of our name exists, but it is not the one the sandbox was built from.
    SlotRecreated { slot: String, evidence: String },
    /// Another server answers at the source's address.
    DifferentServer { was: String, now: String },
    /// The source moved to another timeline: a failover or a point-in-time restore.
    TimelineChanged { was: u32, now: u32 },
    /// The source's WAL is behind what the sandbox applied: it was restored from a backup.
    SourceRewound { source_lsn: Lsn, applied: Lsn },
}

impl std::fmt::Display for Gap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gap::SlotMissing { slot } => write!(f, "slot {slot} no longer exists on the source"),
            Gap::SlotRecreated { slot, evidence } => write!(
                f,
                "slot {slot} on the source is not the one this sandbox was built from ({evidence}): changes made \
                 while it was missing are not in the sandbox"
            ),
            Gap::DifferentServer { was, now } => write!(
                f,
                "another server answers at the source's address (system identifier {now}, the sandbox was built \
                 from {was})"
            ),
            Gap::TimelineChanged { was, now } => write!(
                f,
                "the source moved from timeline {was} to {now} (a failover or a restore); PostgreSQL 15 does not \
                 keep logical slots across it"
            ),
            Gap::SourceRewound { source_lsn, applied } => write!(
                f,
                "the source's WAL is at {source_lsn}, behind the {applied} the sandbox applied: it was restored \
                 from a backup"
            ),
        }
    }
}

/// Reads the source's identity and, when it exists, slot `slot`'s position and decoded bytes.
pub async fn observe(client: &Client, slot: &str) -> Result<Observed, PgError> {
    let row = client
        .query_one(
            "SELECT (SELECT system_identifier::text FROM pg_control_system()), \
                    ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int, \
                    pg_postmaster_start_time(), pg_current_wal_lsn()::text, \
                    (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1), \
                    (SELECT total_bytes FROM pg_stat_replication_slots WHERE slot_name = $1), \
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await
        .map_err(PgError::sql("reading the source's identity"))?;
    let started: std::time::SystemTime = row.get(2);
    let parse = |text: Option<String>| text.and_then(|t| t.parse::<Lsn>().ok());
    let timeline: i32 = row.get(1);
    Ok(Observed {
        system_identifier: row.get(0),
        timeline: u32::try_from(timeline).unwrap_or_default(),
        postmaster_start: jiff::Timestamp::try_from(started).unwrap_or_default(),
        current_lsn: parse(row.get(3)).unwrap_or_default(),
        slot: row.get::<_, bool>(6).then(|| SlotSeen {
            decoded_bytes: row.get::<_, Option<i64>>(5).unwrap_or(0),
            confirmed_flush: parse(row.get(4)),
        }),
    })
}

impl SourceMark {
    /// The first mark, from a reading taken when the slot was made.
    pub fn first(seen: &Observed) -> Self {
        SourceMark {
            system_identifier: seen.system_identifier.clone(),
            timeline: seen.timeline,
            postmaster_start: seen.postmaster_start,
            slot_decoded_bytes: seen.slot.map(|s| s.decoded_bytes).unwrap_or(0),
            slot_confirmed_flush: seen.slot.and_then(|s| s.confirmed_flush),
        }
    }

    /// Checks a new reading against this mark and `applied` (the sandbox's replication origin, what it has
    /// applied). Returns the mark to keep, or the gap.
    pub fn check(&self, seen: &Observed, slot: &str, applied: Option<Lsn>) -> Result<SourceMark, Gap> {
        if seen.system_identifier != self.system_identifier {
            return Err(Gap::DifferentServer {
                was: self.system_identifier.clone(),
                now: seen.system_identifier.clone(),
            });
        }
        if seen.timeline != self.timeline {
            return Err(Gap::TimelineChanged {
                was: self.timeline,
                now: seen.timeline,
            });
        }
        if let Some(applied) = applied
            && seen.current_lsn < applied
        {
            return Err(Gap::SourceRewound {
                source_lsn: seen.current_lsn,
                applied,
            });
        }
        let Some(now) = seen.slot else {
            return Err(Gap::SlotMissing { slot: slot.to_string() });
        };
        if seen.postmaster_start != self.postmaster_start {
            // A restart: the statistics may be reset and the position restored from a checkpoint. Start again.
            return Ok(SourceMark::first(seen));
        }
        if now.decoded_bytes < self.slot_decoded_bytes {
            return Err(Gap::SlotRecreated {
                slot: slot.to_string(),
                evidence: format!(
                    "it has decoded {} bytes, the slot seen before had decoded {}",
                    now.decoded_bytes, self.slot_decoded_bytes
                ),
            });
        }
        if let (Some(was), Some(is)) = (self.slot_confirmed_flush, now.confirmed_flush)
            && is < was
        {
            return Err(Gap::SlotRecreated {
                slot: slot.to_string(),
                evidence: format!("its confirmed position {is} is behind the {was} seen before"),
            });
        }
        Ok(SourceMark {
            slot_decoded_bytes: now.decoded_bytes,
            slot_confirmed_flush: now.confirmed_flush.max(self.slot_confirmed_flush),
            ..self.clone()
        })
    }
}

/// Whether the sandbox's server log (the part written since offset `from`) shows its apply worker finding slot
/// `slot` missing.
pub fn log_shows_slot_missing(log: &str, slot: &str) -> bool {
    let needle = format!("replication slot \"{slot}\" does not exist");
    log.lines().any(|l| l.contains(&needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(sysid: &str, tl: u32, start: i64, lsn: u64, slot: Option<(i64, u64)>) -> Observed {
        Observed {
            system_identifier: sysid.into(),
            timeline: tl,
            postmaster_start: jiff::Timestamp::from_second(start).expect("time"),
            current_lsn: Lsn(lsn),
            slot: slot.map(|(b, c)| SlotSeen {
                decoded_bytes: b,
                confirmed_flush: Some(Lsn(c)),
            }),
        }
    }

    #[test]
    fn a_continuous_slot_passes_and_the_mark_moves_forward() {
        let mark = SourceMark::first(&seen("1", 1, 10, 100, Some((0, 100))));
        let next = mark
            .check(&seen("1", 1, 10, 500, Some((900, 400))), "s", Some(Lsn(300)))
            .expect("continuous");
        assert_eq!(next.slot_decoded_bytes, 900);
        assert_eq!(next.slot_confirmed_flush, Some(Lsn(400)));
    }

    #[test]
    fn each_kind_of_gap_is_named() {
        let mark = SourceMark::first(&seen("1", 1, 10, 100, Some((5000, 900))));
        let check = |s: Observed, applied: u64| mark.check(&s, "s", Some(Lsn(applied)));
        assert!(matches!(
            check(seen("2", 1, 10, 1000, Some((5000, 900))), 900),
            Err(Gap::DifferentServer { .. })
        ));
        assert!(matches!(
            check(seen("1", 2, 10, 1000, Some((5000, 900))), 900),
            Err(Gap::TimelineChanged { was: 1, now: 2 })
        ));
        assert!(matches!(
            check(seen("1", 1, 10, 800, Some((5000, 800))), 900),
            Err(Gap::SourceRewound { .. })
        ));
        assert!(matches!(
            check(seen("1", 1, 10, 1000, None), 900),
            Err(Gap::SlotMissing { .. })
        ));
        assert!(matches!(
            check(seen("1", 1, 10, 2000, Some((120, 1900))), 900),
            Err(Gap::SlotRecreated { .. })
        ));
        assert!(matches!(
            check(seen("1", 1, 10, 2000, Some((6000, 800))), 900),
            Err(Gap::SlotRecreated { .. })
        ));
    }

    #[test]
    fn a_restart_of_the_source_starts_a_new_mark_instead_of_a_gap() {
        let mark = SourceMark::first(&seen("1", 1, 10, 100, Some((5000, 900))));
        let after = mark
            .check(&seen("1", 1, 99, 1000, Some((0, 700))), "s", Some(Lsn(900)))
            .expect("a restart is not a gap");
        assert_eq!(after.slot_decoded_bytes, 0);
        assert_eq!(after.postmaster_start, jiff::Timestamp::from_second(99).expect("time"));
    }

    #[test]
    fn the_log_evidence_names_our_slot_only() {
        let log =
            "2026 ERROR:  could not start WAL streaming: ERROR:  replication slot \"understudy_a\" does not exist";
        assert!(log_shows_slot_missing(log, "understudy_a"));
        assert!(!log_shows_slot_missing(log, "understudy_b"));
    }
}

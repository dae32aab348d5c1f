//! Abandoned objects on a source (`understudy sweep --source`): slots and publications named by Understudy
//! (`understudy_*`) that no sandbox of the state directory owns. A slot a walsender holds is in use, whoever holds
//! it, and is never listed; a publication is listed only when no slot of its name remains. Listing only reads;
//! removal drops each object again only if it is still unowned and idle.

use std::collections::BTreeSet;

use serde::Serialize;
use tokio_postgres::Client;

use super::names::PREFIX;
use super::objects;
use crate::pg::PgError;

/// What kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Slot,
    Publication,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Slot => "slot",
            Kind::Publication => "publication",
        }
    }
}

/// One abandoned object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Abandoned {
    pub kind: Kind,
    pub name: String,
    /// For a slot: the WAL it keeps on the source, in bytes.
    pub retained_bytes: Option<u64>,
}

impl Abandoned {
    /// The same object (its WAL figure moves on while production writes).
    fn is(&self, other: &Abandoned) -> bool {
        self.kind == other.kind && self.name == other.name
    }
}

/// The names the sandboxes of a state directory own on their sources.
#[derive(Debug, Clone, Default)]
pub struct Owned {
    pub slots: BTreeSet<String>,
    pub publications: BTreeSet<String>,
}

fn like_prefix() -> String {
    format!("{}%", PREFIX.replace('_', "\\_"))
}

/// The abandoned objects on the source `client` is connected to (its database), none of `owned`.
pub async fn find(client: &Client, owned: &Owned) -> Result<Vec<Abandoned>, PgError> {
    let slots = client
        .query(
            "SELECT slot_name::text, active, \
                    COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint \
             FROM pg_replication_slots WHERE slot_name LIKE $1 AND database = current_database() \
             ORDER BY slot_name",
            &[&like_prefix()],
        )
        .await
        .map_err(PgError::sql("reading pg_replication_slots"))?;
    let mut found = Vec::new();
    let mut slot_names = BTreeSet::new();
    for row in &slots {
        let name: String = row.get(0);
        let active: bool = row.get(1);
        let retained: i64 = row.get(2);
        slot_names.insert(name.clone());
        if !active && !owned.slots.contains(&name) {
            found.push(Abandoned {
                kind: Kind::Slot,
                name,
                retained_bytes: Some(u64::try_from(retained).unwrap_or(0)),
            });
        }
    }
    let publications = client
        .query(
            "SELECT pubname::text FROM pg_publication WHERE pubname LIKE $1 ORDER BY pubname",
            &[&like_prefix()],
        )
        .await
        .map_err(PgError::sql("reading pg_publication"))?;
    for row in &publications {
        let name: String = row.get(0);
        let slot_kept = slot_names.contains(&name) && !found.iter().any(|a| a.kind == Kind::Slot && a.name == name);
        if !owned.publications.contains(&name) && !slot_kept {
            found.push(Abandoned {
                kind: Kind::Publication,
                name,
                retained_bytes: None,
            });
        }
    }
    Ok(found)
}

/// What [`remove`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Removal {
    pub removed: Vec<Abandoned>,
    /// Objects the role may not drop (a publication made by its tables' owner), with what to run instead.
    pub refused: Vec<(Abandoned, String)>,
}

/// Removes `objects`, each only if it is still abandoned (listed again by [`find`] now).
pub async fn remove(client: &Client, owned: &Owned, objects: &[Abandoned]) -> Result<Removal, PgError> {
    let now = find(client, owned).await?;
    let mut removal = Removal::default();
    // Slots first: a publication goes only once no slot of its name is left.
    let mut order: Vec<&Abandoned> = objects.iter().filter(|o| now.iter().any(|n| n.is(o))).collect();
    order.sort_by_key(|o| o.kind);
    for object in order {
        let gone = match object.kind {
            Kind::Slot => drop_idle_slot(client, &object.name).await,
            Kind::Publication => objects::drop_publication(client, &object.name).await,
        };
        match gone {
            Ok(true) => removal.removed.push(object.clone()),
            Ok(false) => {}
            Err(e) if e.sqlstate() == Some("42501") => removal.refused.push((
                object.clone(),
                format!(
                    "this role may not drop it: run DROP PUBLICATION {} as its owner",
                    crate::pg::quote_ident(&object.name)
                ),
            )),
            Err(e) => return Err(e),
        }
    }
    Ok(removal)
}

/// Drops slot `name` unless a walsender took it meanwhile.
pub(crate) async fn drop_idle_slot(client: &Client, name: &str) -> Result<bool, PgError> {
    let rows = client
        .query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1 AND NOT active",
            &[&name],
        )
        .await
        .map_err(PgError::sql(format!("dropping slot {name} on the source")))?;
    Ok(!rows.is_empty())
}

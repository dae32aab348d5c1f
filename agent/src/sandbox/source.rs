//! A new connection string for a sandbox's source (a rotated password, a moved host): checked against the source
//! (it must answer), kept, and given to the subscription, whose worker reconnects with it. A source without our
//! slot (a failover, a restore) is a gap: the sandbox goes stale and its resync builds from the new source.

use super::state::{self, SandboxMeta, SandboxState, StaleReason, StateDir};
use super::{SandboxError, SandboxLock, cluster_of};
use crate::pg::connect::connect_source;
use crate::pg::{ConnInfo, PgError, quote_ident, quote_literal};
use crate::source::identity::Gap;
use crate::source::{SandboxName, objects};

/// Replaces the source connection string of sandbox `name`.
pub async fn set_source(state_dir: &StateDir, name: &SandboxName, source: &ConnInfo) -> Result<(), SandboxError> {
    let dir = state_dir.sandbox_dir(name);
    if !dir.exists() {
        return Err(SandboxError::NotFound {
            name: name.to_string(),
            state_dir: state_dir.root().to_path_buf(),
        });
    }
    let _lock = SandboxLock::acquire(state_dir, name).await?;
    let mut meta = SandboxMeta::load(&dir)?;
    let client = connect_source(source, "understudy")
        .await
        .map_err(SandboxError::SourceUnreachable)?;
    let has_slot = objects::slot_info(&client, &meta.slot).await?.is_some();
    let old_source = state::load_source(&dir).ok();
    state::save_source(&dir, source)?;
    meta.source = source.redacted();
    let sandbox = cluster_of(&meta)?.connect(&meta.database).await?;
    if !has_slot {
        // Not where the stream was (a failover to a standby without our slot, a restored or replaced source):
        // a gap. The subscription stops before it could apply anything from there, and the resync builds the
        // next copy from this source.
        if meta.phase != SandboxState::Stale {
            super::follow::detach(&sandbox, &meta.subscription).await?;
            meta.mark_stale(StaleReason::Gap(Gap::SlotMissing {
                slot: meta.slot.clone(),
            }));
        }
        meta.save(&dir)?;
        if let Some(old) = old_source {
            drop_old_slot(&old, &meta.slot).await;
        }
        return Ok(());
    }
    meta.save(&dir)?;
    sandbox
        .batch_execute(&format!(
            "ALTER SUBSCRIPTION {} CONNECTION {}",
            quote_ident(&meta.subscription),
            quote_literal(&source.to_secret_string())
        ))
        .await
        .map_err(PgError::sql("giving the subscription the new connection string"))?;
    Ok(())
}

/// Drops our slot where the stream was, if that server still answers: nobody would read it again, and it would
/// keep WAL there. A server that does not answer keeps it until `understudy sweep --source` finds it.
async fn drop_old_slot(old: &ConnInfo, slot: &str) {
    match connect_source(old, "understudy").await {
        Ok(client) => match objects::drop_slot(&client, slot).await {
            Ok(true) => tracing::info!(source = %old.redacted(), slot, "dropped our slot on the old source"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(source = %old.redacted(), slot, error = %e, "could not drop our slot on the old source; `understudy sweep --source` finds it")
            }
        },
        Err(e) => {
            tracing::warn!(source = %old.redacted(), slot, error = %e, "the old source does not answer: `understudy sweep --source` finds our slot there once it does")
        }
    }
}

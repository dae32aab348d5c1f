//! A new connection string for a sandbox's source (a rotated password, a moved host): checked against the source
//! (it must answer and hold our slot), then kept and given to the subscription, whose worker reconnects with it.

use super::state::{self, SandboxMeta, StateDir};
use super::{SandboxError, SandboxLock, cluster_of};
use crate::pg::connect::connect_source;
use crate::pg::{ConnInfo, PgError, quote_ident, quote_literal};
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
    if objects::slot_info(&client, &meta.slot).await?.is_none() {
        return Err(SandboxError::Failed(format!(
            "the source at {} has no slot {}: it is not this sandbox's source (a source restored or replaced \
             needs a new sandbox)",
            source.redacted(),
            meta.slot
        )));
    }
    state::save_source(&dir, source)?;
    meta.source = source.redacted();
    meta.save(&dir)?;
    let sandbox = cluster_of(&meta)?.connect(&meta.database).await?;
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

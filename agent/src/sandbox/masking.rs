//! `sandbox mask`: a masked sandbox's config changed after creation, to classify columns the source added since
//! (which hold a filler until then). A policy already given cannot change: the rows on the sandbox were masked by
//! it (a sandbox created anew takes the new config).

use super::SandboxError;
use super::state::StateDir;
use crate::mask::MaskConfig;
use crate::pg::connect::connect_source;
use crate::source::{PreflightFailed, Problem, Replicate, SandboxName, catalog};

/// What a new mask config changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reclassified {
    /// Columns it classifies that were not before (`schema.table.column`): rows that arrived before hold the filler
    /// (a resync refills them).
    pub classified: Vec<String>,
    /// Columns still without a policy.
    pub unclassified: Vec<String>,
}

/// Gives sandbox `name` the mask config `config`: checked against the source as at creation, no existing policy
/// changed, then saved and its triggers installed anew.
pub async fn reclassify(
    state_dir: &StateDir,
    name: &SandboxName,
    config: &MaskConfig,
) -> Result<Reclassified, SandboxError> {
    let (_lock, dir, mut meta) = super::resync::locked(state_dir, name).await?;
    let Some(old) = meta.masking.clone() else {
        return Err(refused(
            format!(
                "sandbox {name} is not masked: its rows arrived unmasked, so masking is chosen when a sandbox is created \
             (sandbox create --mask-config)"
            ),
            "create a masked sandbox with this config".into(),
        ));
    };
    let source = connect_source(&super::state::load_source(&dir)?, "understudy-mask").await?;
    let tables: Vec<_> = catalog::published_tables(&source, &meta.publication)
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    let mut problems = Vec::new();
    crate::source::preflight::masked_columns(
        &source,
        config,
        &Replicate::Publication(meta.publication.clone()),
        &tables,
        &mut problems,
    )
    .await?;
    let before = old.tables();
    let mut classified = Vec::new();
    for (table, policies) in config.tables() {
        for (column, policy) in policies {
            match before.get(&table).and_then(|p| p.get(column)) {
                Some(was) if was != policy => problems.push(Problem {
                    code: "mask-config",
                    message: format!(
                        "the policy of {table}.{column} would change from {} to {}: the rows on the sandbox were \
                         masked by {}",
                        was.as_str(),
                        policy.as_str(),
                        was.as_str()
                    ),
                    fix: format!(
                        "keep {table}.{column} = \"{}\", or create a sandbox anew with the new config",
                        was.as_str()
                    ),
                }),
                Some(_) => {}
                None => classified.push(format!("{table}.{column}")),
            }
        }
    }
    for table in before.keys().filter(|t| !config.tables().contains_key(*t)) {
        problems.push(Problem {
            code: "mask-config",
            message: format!("the new config leaves out {table}, which is masked"),
            fix: format!("keep [tables.\"{table}\"] with its policies"),
        });
    }
    if !problems.is_empty() {
        return Err(PreflightFailed { problems }.into());
    }
    let sandbox = super::cluster_of(&meta)?.connect(&meta.database).await?;
    let mut sql = String::from("BEGIN;\n");
    for (table, policies) in config.tables() {
        sql.push_str(&crate::mask::install::table_sql(&sandbox, &table, policies).await?);
    }
    sql.push_str("COMMIT;");
    sandbox
        .batch_execute(&sql)
        .await
        .map_err(crate::pg::PgError::sql("installing the new masking triggers"))?;
    let unclassified = crate::mask::install::unclassified(&sandbox, config).await?;
    meta.masking = Some(config.clone());
    meta.pending_drift.retain(|d| !d.contains("has no masking policy"));
    meta.save(&dir)?;
    Ok(Reclassified {
        classified,
        unclassified,
    })
}

fn refused(message: String, fix: String) -> SandboxError {
    PreflightFailed {
        problems: vec![Problem {
            code: "mask-config",
            message,
            fix,
        }],
    }
    .into()
}

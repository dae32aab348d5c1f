//! The SQL of a dry-run, parsed and checked before anything is forked: the up-migration's plan, the
//! down-migration's, and the checks.

use super::{DryRunError, DryRunOptions};
use crate::migrate::{self, Plan, PlanError};

pub(crate) struct Inputs {
    pub file: String,
    pub text: String,
    pub plan: Plan,
    pub down: Option<(String, Plan)>,
    pub checks: Vec<(String, migrate::Statement)>,
}

impl Inputs {
    pub fn parse(opts: &DryRunOptions) -> Result<Self, DryRunError> {
        let plan_of = |name: &str, sql: &str| {
            Plan::parse(sql, opts.single_transaction).map_err(|source| DryRunError::Plan {
                file: name.to_string(),
                source,
            })
        };
        let plan = plan_of(&opts.up.name, &opts.up.sql)?;
        let down = match &opts.down {
            Some(d) => Some((d.name.clone(), plan_of(&d.name, &d.sql)?)),
            None => None,
        };
        let checks = match &opts.checks {
            Some(c) => crate::verify::checks::parse(&c.sql).map_err(|e| DryRunError::Plan {
                file: c.name.clone(),
                source: PlanError::Split(e),
            })?,
            None => Vec::new(),
        };
        Ok(Inputs {
            file: opts.up.name.clone(),
            text: opts.up.sql.clone(),
            plan,
            down,
            checks,
        })
    }
}

//! Dry-runs only on a current sandbox: before forking, the sandbox's state, its apply worker and its lag behind
//! the source are checked, and a sandbox that would give a report on stale data is refused with the fix.

use std::time::Duration;

use super::DryRunError;
use crate::sandbox::{self, SandboxState, SandboxStatus, StateDir};
use crate::source::SandboxName;

/// How far behind its source the sandbox was when it was forked.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct SandboxLag {
    pub bytes: Option<u64>,
    pub seconds: Option<f64>,
}

/// Why a sandbox is refused, and the fix.
pub(crate) struct Refusal {
    pub reason: String,
    pub fix: String,
}

/// Checks that `name` may be forked for a dry-run, and returns its lag.
pub(crate) async fn check(state: &StateDir, name: &SandboxName, max_lag: Duration) -> Result<SandboxLag, DryRunError> {
    let first = sandbox::status(state, name)
        .await
        .map_err(|e| DryRunError::Fork(e.into()))?;
    let refuse = |st: &SandboxStatus, r: Refusal| DryRunError::NotCurrent {
        sandbox: name.to_string(),
        state: st.state,
        lag: describe_lag(st),
        reason: r.reason,
        fix: r.fix,
    };
    let seconds = match judge(&first, max_lag) {
        Judged::Refuse(r) => return Err(refuse(&first, r)),
        Judged::Current(s) => s,
        Judged::Measure => match catch_up(state, name, max_lag).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(refuse(
                    &first,
                    Refusal {
                        reason: format!(
                            "it did not catch up with the source's current position within --max-sandbox-lag {}",
                            crate::units::Duration::from(max_lag)
                        ),
                        fix: "wait for it to catch up, or raise --max-sandbox-lag if a report on older data is \
                              acceptable"
                            .into(),
                    },
                ));
            }
            Err(e) => return Err(e),
        },
    };
    // A worker that fails in a loop is running between its failures: its error count tells.
    if first.apply_error_count > 0 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let second = sandbox::status(state, name)
            .await
            .map_err(|e| DryRunError::Fork(e.into()))?;
        if second.apply_error_count > first.apply_error_count {
            let fix = fix_for(name, &second);
            return Err(refuse(
                &second,
                Refusal {
                    reason: format!(
                        "its apply worker keeps failing ({} error(s) in the last 1.5 s){}",
                        second.apply_error_count - first.apply_error_count,
                        second
                            .last_error
                            .as_ref()
                            .map(|e| format!(": {}", e.message))
                            .unwrap_or_default()
                    ),
                    fix,
                },
            ));
        }
        if let Judged::Refuse(r) = judge(&second, max_lag) {
            return Err(refuse(&second, r));
        }
    }
    Ok(SandboxLag {
        bytes: first.lag_bytes,
        seconds: Some(seconds),
    })
}

/// How long the sandbox takes to confirm the source's current WAL position, if it does within `limit`: an upper
/// bound of its lag, measured when the source does not report one (`pg_stat_replication.replay_lag` is NULL
/// between its samples).
async fn catch_up(state: &StateDir, name: &SandboxName, limit: Duration) -> Result<Option<f64>, DryRunError> {
    let dir = state.sandbox_dir(name);
    let meta = sandbox::SandboxMeta::load(&dir).map_err(|e| DryRunError::Fork(e.into()))?;
    let source_info = sandbox::state::load_source(&dir).map_err(|e| DryRunError::Fork(e.into()))?;
    let source = crate::pg::connect::connect_source(&source_info, "understudy-gate").await?;
    let target: String = source
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(crate::pg::PgError::sql("reading the source's WAL position"))?
        .get(0);
    drop(source);
    let target: crate::lsn::Lsn = target
        .parse()
        .map_err(|e: crate::lsn::ParseLsnError| DryRunError::Pg(crate::pg::PgError::Config(e.to_string())))?;
    let started = std::time::Instant::now();
    let client = sandbox::cluster_of(&meta)
        .map_err(|e| DryRunError::Fork(e.into()))?
        .connect(&meta.database)
        .await?;
    match sandbox::create::wait_caught_up(&client, &meta.subscription, target, limit).await {
        Ok(()) => Ok(Some(started.elapsed().as_secs_f64())),
        Err(_) => Ok(None),
    }
}

fn describe_lag(st: &SandboxStatus) -> String {
    match (st.lag_seconds, st.lag_bytes) {
        (Some(s), Some(b)) => format!("{s:.1} s ({b} bytes)"),
        (None, Some(b)) => format!("unknown seconds ({b} bytes)"),
        (Some(s), None) => format!("{s:.1} s"),
        (None, None) => "unknown".into(),
    }
}

fn fix_for(name: &SandboxName, st: &SandboxStatus) -> String {
    let mut fix = format!("see `understudy sandbox status {name}`");
    if let Some(e) = &st.last_error {
        fix = format!("{}; {fix}", e.fix);
    }
    fix
}

/// What a status says against the limit.
pub(crate) enum Judged {
    Refuse(Refusal),
    /// Current, with this lag in seconds.
    Current(f64),
    /// Current but for its lag, which the source does not report: measure it.
    Measure,
}

/// What a status says against the limit (pure).
pub(crate) fn judge(st: &SandboxStatus, max_lag: Duration) -> Judged {
    let name = &st.name;
    let reasons = if st.reasons.is_empty() {
        String::new()
    } else {
        format!(": {}", st.reasons.join("; "))
    };
    match st.state {
        SandboxState::Stale => {
            return Judged::Refuse(Refusal {
                reason: format!("it is stale{reasons}"),
                fix: format!("recreate it: understudy sandbox delete {name} && understudy sandbox create {name} ..."),
            });
        }
        SandboxState::InitialSync => {
            return Judged::Refuse(Refusal {
                reason: format!("its initial copy is still running{reasons}"),
                fix: format!("wait until `understudy sandbox status {name}` says ready"),
            });
        }
        SandboxState::Degraded => {
            return Judged::Refuse(Refusal {
                reason: format!("it is degraded{reasons}"),
                fix: st
                    .last_error
                    .as_ref()
                    .map(|e| e.fix.clone())
                    .unwrap_or_else(|| format!("see `understudy sandbox status {name}`")),
            });
        }
        SandboxState::Ready => {}
    }
    if !st.cluster_running || !st.apply_worker_running {
        return Judged::Refuse(Refusal {
            reason: if st.cluster_running {
                "its apply worker is not running".into()
            } else {
                "its server is not running".into()
            },
            fix: format!(
                "start the agent for this state directory (`understudy agent`, or any `understudy sandbox` command starts \
                 it), then see `understudy sandbox status {name}`"
            ),
        });
    }
    let lag = st
        .lag_seconds
        .or(if st.lag_bytes == Some(0) { Some(0.0) } else { None });
    match lag {
        Some(s) if s > max_lag.as_secs_f64() => Judged::Refuse(Refusal {
            reason: format!(
                "it lags {s:.1} s behind the source, more than --max-sandbox-lag {}",
                crate::units::Duration::from(max_lag)
            ),
            fix: "wait for it to catch up, or raise --max-sandbox-lag if a report on older data is acceptable".into(),
        }),
        Some(s) => Judged::Current(s),
        None => Judged::Measure,
    }
}

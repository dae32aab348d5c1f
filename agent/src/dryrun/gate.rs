//! Dry-runs only on a current sandbox: before forking, the sandbox's state, its apply worker and its lag behind
//! the source are checked, and a sandbox that would give a report on stale data is refused with the fix.

use std::time::Duration;

use super::DryRunError;
use crate::sandbox::state::ResyncPolicy;
use crate::sandbox::{self, SandboxState, SandboxStatus, StateDir};
use crate::source::SandboxName;

/// How far behind its source the sandbox was when it was forked.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct SandboxLag {
    pub bytes: Option<u64>,
    pub seconds: Option<f64>,
}

impl SandboxLag {
    /// Not measured (a run on a recording forks no live sandbox).
    pub fn none() -> Self {
        SandboxLag {
            bytes: None,
            seconds: None,
        }
    }
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
                fix: match st.resync {
                    ResyncPolicy::Auto => format!(
                        "wait for the agent's resync (`understudy sandbox status {name}` shows it), then run again"
                    ),
                    ResyncPolicy::Manual => format!("rebuild it first: understudy sandbox resync {name}"),
                },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::state::LastError;

    const LIMIT: Duration = Duration::from_secs(10);

    /// A ready, running sandbox with the given lag.
    fn status(lag_seconds: Option<f64>, lag_bytes: Option<u64>) -> SandboxStatus {
        SandboxStatus {
            name: "shop".into(),
            state: SandboxState::Ready,
            reasons: Vec::new(),
            source: "host=db.internal dbname=shop".into(),
            publication: "understudy_shop".into(),
            slot: "understudy_shop".into(),
            cluster: "host=/tmp port=6543 dbname=shop".into(),
            cluster_running: true,
            apply_worker_running: true,
            apply_error_count: 0,
            received_lsn: None,
            applied_lsn: None,
            source_lsn: None,
            confirmed_lsn: None,
            lag_bytes,
            lag_seconds,
            retained_wal_bytes: None,
            wal_status: None,
            wal_budget_bytes: 8 << 30,
            tables: Vec::new(),
            drift: Vec::new(),
            last_error: None,
            warnings: Vec::new(),
            generation: 1,
            stale_reason: None,
            resync: ResyncPolicy::Auto,
            resync_status: None,
            source_outage_seconds: None,
            last_outage: None,
            subset: None,
            masking: None,
            shares: Vec::new(),
        }
    }

    fn in_state(state: SandboxState, reasons: &[&str]) -> SandboxStatus {
        SandboxStatus {
            state,
            reasons: reasons.iter().map(ToString::to_string).collect(),
            ..status(Some(0.1), Some(0))
        }
    }

    fn last_error(fix: &str) -> Option<LastError> {
        Some(LastError {
            message: "could not apply a change".into(),
            fix: fix.into(),
            at: jiff::Timestamp::UNIX_EPOCH,
        })
    }

    fn describe(j: &Judged) -> String {
        match j {
            Judged::Refuse(r) => format!("Refuse({:?}, {:?})", r.reason, r.fix),
            Judged::Current(s) => format!("Current({s})"),
            Judged::Measure => "Measure".into(),
        }
    }

    /// The refusal's reason and fix.
    fn refused(st: &SandboxStatus) -> (String, String) {
        match judge(st, LIMIT) {
            Judged::Refuse(r) => (r.reason, r.fix),
            other => panic!("expected a refusal, got {}", describe(&other)),
        }
    }

    #[test]
    fn a_stale_sandbox_is_refused_with_its_resync() {
        let mut st = in_state(
            SandboxState::Stale,
            &["the slot understudy_shop is gone from the source"],
        );
        let (reason, fix) = refused(&st);
        assert_eq!(reason, "it is stale: the slot understudy_shop is gone from the source");
        assert_eq!(
            fix,
            "wait for the agent's resync (`understudy sandbox status shop` shows it), then run again"
        );
        st.resync = ResyncPolicy::Manual;
        assert_eq!(refused(&st).1, "rebuild it first: understudy sandbox resync shop");
    }

    #[test]
    fn a_sandbox_still_copying_is_refused_with_wait() {
        let (reason, fix) = refused(&in_state(SandboxState::InitialSync, &[]));
        assert_eq!(reason, "its initial copy is still running");
        assert_eq!(fix, "wait until `understudy sandbox status shop` says ready");
    }

    #[test]
    fn a_degraded_sandbox_is_refused_with_its_errors_fix() {
        let mut st = in_state(
            SandboxState::Degraded,
            &["apply worker failing", "schema drift on public.orders"],
        );
        let (reason, fix) = refused(&st);
        assert_eq!(
            reason,
            "it is degraded: apply worker failing; schema drift on public.orders"
        );
        assert_eq!(fix, "see `understudy sandbox status shop`");
        st.last_error = last_error("apply the schema change on the sandbox by hand");
        assert_eq!(refused(&st).1, "apply the schema change on the sandbox by hand");
    }

    #[test]
    fn a_sandbox_whose_server_or_worker_is_down_is_refused() {
        let fix = "start the agent for this state directory (`understudy agent`, or any `understudy sandbox` command \
                   starts it), then see `understudy sandbox status shop`";
        let down = SandboxStatus {
            cluster_running: false,
            apply_worker_running: false,
            ..status(Some(0.0), Some(0))
        };
        assert_eq!(
            refused(&down),
            ("its server is not running".to_string(), fix.to_string())
        );
        let no_worker = SandboxStatus {
            apply_worker_running: false,
            ..status(Some(0.0), Some(0))
        };
        assert_eq!(
            refused(&no_worker),
            ("its apply worker is not running".to_string(), fix.to_string())
        );
    }

    #[test]
    fn a_sandbox_lagging_over_the_limit_is_refused() {
        let (reason, fix) = refused(&status(Some(12.46), Some(4096)));
        assert_eq!(
            reason,
            "it lags 12.5 s behind the source, more than --max-sandbox-lag 10s"
        );
        assert_eq!(
            fix,
            "wait for it to catch up, or raise --max-sandbox-lag if a report on older data is acceptable"
        );
    }

    #[test]
    fn a_sandbox_within_the_limit_is_current_with_its_lag() {
        for (seconds, bytes, expected) in [
            (Some(2.5), Some(4096), 2.5),
            // The limit itself is not over it.
            (Some(10.0), None, 10.0),
            // Nothing unconfirmed: no lag, whatever the source's replay_lag.
            (None, Some(0), 0.0),
        ] {
            match judge(&status(seconds, bytes), LIMIT) {
                Judged::Current(s) => assert_eq!(s, expected, "{seconds:?} {bytes:?}"),
                other => panic!("{seconds:?} {bytes:?}: expected current, got {}", describe(&other)),
            }
        }
    }

    #[test]
    fn a_sandbox_whose_lag_is_unknown_is_measured() {
        for bytes in [Some(8192), None] {
            let j = judge(&status(None, bytes), LIMIT);
            assert!(matches!(j, Judged::Measure), "{bytes:?}: {}", describe(&j));
        }
    }

    #[test]
    fn lag_and_fix_are_described_for_the_refusal() {
        assert_eq!(describe_lag(&status(Some(1.24), Some(300))), "1.2 s (300 bytes)");
        assert_eq!(describe_lag(&status(None, Some(300))), "unknown seconds (300 bytes)");
        assert_eq!(describe_lag(&status(Some(3.0), None)), "3.0 s");
        assert_eq!(describe_lag(&status(None, None)), "unknown");
        let name = SandboxName::parse("shop").expect("valid name");
        let mut st = status(None, None);
        assert_eq!(fix_for(&name, &st), "see `understudy sandbox status shop`");
        st.last_error = last_error("grant SELECT on public.orders to the replication user");
        assert_eq!(
            fix_for(&name, &st),
            "grant SELECT on public.orders to the replication user; see `understudy sandbox status shop`"
        );
    }
}

//! A Sandbox's status from its agent's view: the conditions `Ready`, `Replicating`, `Degraded` and `Stale`, each
//! with a reason and a message, and the figures (lag, WAL retained, slot, tables by sync state, restarts).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use understudy::sandbox::SandboxState;
use understudy::server::sandboxes::SandboxView;

use crate::controller::condition;
use crate::crd::sandbox::TableCounts;
use crate::crd::{Sandbox, SandboxStatus};

/// A digest of the source's connection string, kept in `status.sourceHash` to notice a changed Secret: SHA-256
/// keyed with the agent's token (which only the Secret holds), so that the status, readable by anyone who can
/// read the Sandbox, gives no way to test guesses of the password offline. The first 16 hex digits.
pub fn source_hash(key: &str, conninfo: &str) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(key.as_bytes());
    h.update([0u8]);
    h.update(conninfo.as_bytes());
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

pub fn is_ready(status: &SandboxStatus) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The status from the agent's view: the four conditions and the figures.
pub fn status_from(sbx: &Sandbox, view: &SandboxView, source_hash: Option<String>) -> SandboxStatus {
    let old = sbx.status.clone().unwrap_or_default().conditions;
    let generation = sbx.metadata.generation;
    let st = view.status.as_ref();
    let sup = view.supervision.as_ref();
    let state = view.state;
    let reasons = st.map(|s| s.reasons.join("; ")).unwrap_or_default();
    let current = sup.is_some_and(|s| s.current);
    let replicating = st.is_some_and(|s| s.apply_worker_running);
    let resync = st.and_then(|s| s.resync_status.as_ref());
    let cond = |t: &str, on: bool, yes: (&str, String), no: (&str, String)| -> Condition {
        let (reason, message) = if on { yes } else { no };
        condition(&old, t, on, reason, message, generation)
    };
    let not_current = sup.and_then(|s| s.not_current_reason.clone()).unwrap_or_else(|| {
        if view.creating {
            "the agent is making the initial copy".into()
        } else {
            reasons.clone()
        }
    });
    let conditions = vec![
        cond(
            "Ready",
            state == Some(SandboxState::Ready) && current,
            ("Current", "the sandbox is current with its source".into()),
            (if view.creating { "InitialSync" } else { "NotCurrent" }, not_current),
        ),
        cond(
            "Replicating",
            replicating,
            ("Streaming", "the apply worker streams from the source's slot".into()),
            ("NotStreaming", "the apply worker is not running".into()),
        ),
        cond(
            "Degraded",
            state == Some(SandboxState::Degraded),
            ("Degraded", reasons.clone()),
            ("AsExpected", "the sandbox is not degraded".into()),
        ),
        cond(
            "Stale",
            state == Some(SandboxState::Stale),
            ("Stale", reasons.clone()),
            ("AsExpected", "the sandbox is not stale".into()),
        ),
        cond(
            "Resyncing",
            resync.is_some_and(|r| r.in_progress()),
            ("Resyncing", resync.map(|r| r.describe()).unwrap_or_default()),
            ("AsExpected", "no resync is under way".into()),
        ),
    ];
    let mut tables = TableCounts::default();
    for t in st.map(|s| s.tables.as_slice()).unwrap_or_default() {
        match t.state {
            understudy::sandbox::TableSyncState::Ready => tables.ready += 1,
            understudy::sandbox::TableSyncState::Syncing => tables.syncing += 1,
            understudy::sandbox::TableSyncState::Copying => tables.copying += 1,
            _ => tables.other += 1,
        }
    }
    SandboxStatus {
        state: state
            .and_then(|s| serde_json::to_value(s).ok())
            .and_then(|v| v.as_str().map(str::to_string)),
        conditions,
        lag_bytes: st.and_then(|s| s.lag_bytes),
        lag_seconds: st.and_then(|s| s.lag_seconds).map(|s| (s * 1000.0).round() / 1000.0),
        wal_retained_bytes: st.and_then(|s| s.retained_wal_bytes),
        wal_status: st.and_then(|s| s.wal_status).map(|w| w.as_str().to_string()),
        slot: st.map(|s| s.slot.clone()),
        tables: st.map(|_| tables),
        server_restarts: sup.map(|s| s.restarts),
        source_hash,
        observed_generation: generation,
        copy_generation: st.map(|s| s.generation),
        stale_reason: st.and_then(|s| s.stale_reason.as_ref()).map(ToString::to_string),
        resync: resync.map(|r| r.describe()),
        resync_policy: st.map(|s| s.resync.as_str().to_string()),
        source_outage_seconds: st.and_then(|s| s.source_outage_seconds.or(s.last_outage.as_ref().map(|o| o.seconds))),
        resync_request: sbx.status.as_ref().and_then(|s| s.resync_request.clone()),
    }
}

#[cfg(test)]
mod tests {
    use understudy::sandbox::status::TableSync;
    use understudy::sandbox::{SandboxStatus as AgentStatus, TableSyncState};
    use understudy::supervisor::Supervision;

    use super::*;
    use crate::crd::SandboxSpec;

    fn sandbox() -> Sandbox {
        Sandbox::new(
            "shop",
            serde_json::from_value::<SandboxSpec>(serde_json::json!({
                "source": {"secretRef": {"name": "prod"}}, "publication": "shop_pub"}))
            .expect("spec"),
        )
    }

    fn agent_status(state: SandboxState, worker: bool, reasons: &[&str]) -> AgentStatus {
        serde_json::from_value(serde_json::json!({
            "name": "shop", "state": state, "reasons": reasons, "source": "host=db password=********",
            "publication": "shop_pub", "slot": "understudy_shop", "cluster": "host=/x port=5432",
            "cluster_running": true, "apply_worker_running": worker, "apply_error_count": 0,
            "received_lsn": null, "applied_lsn": null, "source_lsn": "0/10", "confirmed_lsn": "0/10",
            "lag_bytes": 120, "lag_seconds": 0.123456, "retained_wal_bytes": 4096, "wal_status": "reserved",
            "wal_budget_bytes": 1073741824, "tables": [], "drift": [], "last_error": null, "warnings": []
        }))
        .expect("agent status")
    }

    fn view(state: SandboxState, worker: bool, current: bool, reasons: &[&str]) -> SandboxView {
        let mut st = agent_status(state, worker, reasons);
        st.tables = vec![
            TableSync {
                table: "public.orders".into(),
                state: TableSyncState::Ready,
            },
            TableSync {
                table: "public.events".into(),
                state: TableSyncState::Copying,
            },
        ];
        SandboxView {
            name: "shop".into(),
            state: Some(state),
            creating: false,
            creation_error: None,
            status: Some(st),
            supervision: Some(Supervision {
                restarts: 2,
                current,
                not_current_reason: (!current).then(|| "lags 45.0 s behind the source".to_string()),
                ..Supervision::default()
            }),
        }
    }

    fn cond<'a>(s: &'a SandboxStatus, t: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == t).expect("condition")
    }

    #[test]
    fn a_current_sandbox_is_ready_and_replicating() {
        let s = status_from(
            &sandbox(),
            &view(SandboxState::Ready, true, true, &[]),
            Some("h".into()),
        );
        assert_eq!(
            (cond(&s, "Ready").status.as_str(), cond(&s, "Ready").reason.as_str()),
            ("True", "Current")
        );
        assert_eq!(cond(&s, "Replicating").status, "True");
        assert_eq!(cond(&s, "Degraded").status, "False");
        assert_eq!(cond(&s, "Stale").status, "False");
        assert_eq!(s.state.as_deref(), Some("ready"));
        assert_eq!(s.lag_seconds, Some(0.123));
        assert_eq!((s.lag_bytes, s.wal_retained_bytes), (Some(120), Some(4096)));
        assert_eq!(s.wal_status.as_deref(), Some("reserved"));
        assert_eq!(s.slot.as_deref(), Some("understudy_shop"));
        assert_eq!(s.server_restarts, Some(2));
        assert_eq!(s.tables.as_ref().map(|t| (t.ready, t.copying)), Some((1, 1)));
        assert_eq!(s.source_hash.as_deref(), Some("h"));
    }

    #[test]
    fn a_lagging_sandbox_is_not_ready_and_says_why() {
        let s = status_from(&sandbox(), &view(SandboxState::Ready, true, false, &[]), None);
        assert_eq!(cond(&s, "Ready").status, "False");
        assert_eq!(cond(&s, "Ready").reason, "NotCurrent");
        assert!(cond(&s, "Ready").message.contains("45.0 s"));
    }

    #[test]
    fn degraded_and_stale_sandboxes_carry_their_reasons() {
        let s = status_from(
            &sandbox(),
            &view(SandboxState::Degraded, true, false, &["1 schema change(s)"]),
            None,
        );
        assert_eq!(cond(&s, "Degraded").status, "True");
        assert!(cond(&s, "Degraded").message.contains("schema change"));
        let s = status_from(
            &sandbox(),
            &view(SandboxState::Stale, false, false, &["slot gone"]),
            None,
        );
        assert_eq!(cond(&s, "Stale").status, "True");
        assert_eq!(cond(&s, "Replicating").status, "False");
        assert_eq!(cond(&s, "Ready").status, "False");
    }

    #[test]
    fn a_sandbox_in_its_initial_copy_says_so() {
        let v = SandboxView {
            name: "shop".into(),
            state: Some(SandboxState::InitialSync),
            creating: true,
            creation_error: None,
            status: None,
            supervision: None,
        };
        let s = status_from(&sandbox(), &v, None);
        assert_eq!(cond(&s, "Ready").reason, "InitialSync");
        assert_eq!(s.state.as_deref(), Some("initial-sync"));
        assert_eq!(s.tables, None);
    }

    #[test]
    fn the_source_hash_changes_with_the_secret() {
        let key = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            source_hash(key, "host=a password=x"),
            source_hash(key, "host=a password=x")
        );
        assert_ne!(
            source_hash(key, "host=a password=x"),
            source_hash(key, "host=a password=y")
        );
        // Keyed: without the agent's token, the same connection string gives another digest.
        assert_ne!(
            source_hash(key, "host=a password=x"),
            source_hash("another-agent-token-0000000000000", "host=a password=x")
        );
        assert_eq!(source_hash(key, "x").len(), 16);
    }
}

//! Unit tests of the findings from measurements.

use std::time::Instant;

use super::*;
use crate::lsn::Lsn;
use crate::replay::live::WriteKind;
use crate::report::sample::{at, failed, ok_statement, record, write_failure};
use crate::verify::checks::CheckResult;
use crate::verify::data::TableComparison;
use crate::verify::preflight::PreflightCode;
use crate::verify::schema::SchemaChange;
use crate::verify::twins::{LossyColumn, NewColumn};

/// (code, severity, title) of each finding, to compare at a glance.
fn summary(found: &[Finding]) -> Vec<(String, Severity, String)> {
    found
        .iter()
        .map(|f| (f.code.to_string(), f.severity, f.title.clone()))
        .collect()
}

fn change(kind: &str, name: &str, change: &str, before: Option<&str>, after: Option<&str>) -> SchemaChange {
    SchemaChange {
        kind: kind.into(),
        name: name.into(),
        change: change.into(),
        before: before.map(Into::into),
        after: after.map(Into::into),
    }
}

fn proven(tables_compared: usize) -> Rollback {
    Rollback {
        tested: true,
        file: Some("down.sql".into()),
        ok: true,
        tables_compared,
        ..Rollback::default()
    }
}

#[test]
fn preflight_counts_fail_at_their_line_with_samples() {
    let found = vec![
        PreflightFinding {
            code: PreflightCode::Orphans,
            line: 7,
            table: "public.orders".into(),
            count: 3,
            samples: vec!["customer_id=4".into(), "customer_id=9".into()],
            message: "3 row(s) of public.orders have no parent in public.customers".into(),
            remedy: "delete or fix the orphans first".into(),
        },
        PreflightFinding {
            code: PreflightCode::Duplicates,
            line: 9,
            table: "public.users".into(),
            count: 1,
            samples: Vec::new(),
            message: "1 duplicate group in public.users (email)".into(),
            remedy: "remove the duplicates".into(),
        },
    ];
    let f = preflight(&found, "m.sql");
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].code, FindingCode::Preflight(PreflightCode::Orphans));
    assert_eq!(f[0].severity, Severity::Fail);
    assert_eq!(
        f[0].title,
        "3 row(s) of public.orders have no parent in public.customers"
    );
    assert_eq!(f[0].evidence, "samples: customer_id=4, customer_id=9");
    assert_eq!(f[0].remedy, "delete or fix the orphans first");
    assert_eq!((f[0].file.as_deref(), f[0].line), (Some("m.sql"), Some(7)));
    assert_eq!(f[1].code.to_string(), "preflight-duplicates");
    assert_eq!(f[1].evidence, "");
    assert_eq!(f[1].line, Some(9));
    assert!(preflight(&[], "m.sql").is_empty());
}

fn at_lsn(base: Instant, lsn: u64) -> crate::replay::live::WriteRecord {
    let mut r = record(5101, at(base, lsn), at(base, lsn), at(base, lsn + 2));
    r.end_lsn = Lsn(lsn);
    r
}

#[test]
fn a_healthy_control_twin_has_no_finding() {
    let base = Instant::now();
    let records: Vec<_> = [16, 32, 48].map(|l| at_lsn(base, l)).into();
    let mut migrated = records.clone();
    // Failures on the migrated fork are the migration's, not the replay's.
    migrated[1].failure = Some(write_failure(
        "public.orders",
        WriteKind::Insert,
        "23502",
        "null",
        "INSERT",
    ));
    assert!(replay_health(&migrated, &records).is_empty());
    assert!(replay_health(&[], &[]).is_empty());
}

#[test]
fn failures_on_the_control_twin_are_the_sandboxs_problem() {
    let base = Instant::now();
    let records: Vec<_> = [16, 32, 48].map(|l| at_lsn(base, l)).into();
    let mut control = records.clone();
    for r in &mut control[..2] {
        r.failure = Some(write_failure(
            "public.orders",
            WriteKind::Update,
            "40P01",
            "deadlock",
            "UPDATE",
        ));
    }
    let f = replay_health(&records, &control);
    assert_eq!(
        summary(&f),
        vec![(
            "control-replay-failed".to_string(),
            Severity::Warn,
            "2 replayed write(s) failed on the control twin too (not caused by the migration)".to_string()
        )]
    );
    assert_eq!(f[0].remedy, "check the sandbox's health (`understudy sandbox status`)");
}

#[test]
fn twins_that_applied_different_transactions_diverge() {
    let base = Instant::now();
    let migrated: Vec<_> = [0x10, 0x20, 0x30].map(|l| at_lsn(base, l)).into();
    let control: Vec<_> = [0x20, 0x30, 0x40].map(|l| at_lsn(base, l)).into();
    let f = replay_health(&migrated, &control);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].code, FindingCode::ReplayDivergence);
    assert_eq!(f[0].severity, Severity::Warn);
    assert_eq!(
        f[0].title,
        "the twins applied different transactions (1 only on the migrated fork, 1 only on the control twin): \
         data differences below may not be the migration's"
    );
    assert_eq!(
        f[0].evidence,
        "only on the migrated fork: [\"0/10\"]; only on the control twin: [\"0/40\"]"
    );
}

#[test]
fn divergence_counts_every_transaction_but_lists_five() {
    let base = Instant::now();
    let migrated: Vec<_> = (1..=7).map(|l| at_lsn(base, l)).collect();
    let f = replay_health(&migrated, &[]);
    assert_eq!(f.len(), 1);
    assert!(
        f[0].title
            .contains("(7 only on the migrated fork, 0 only on the control twin)"),
        "{}",
        f[0].title
    );
    assert_eq!(
        f[0].evidence,
        "only on the migrated fork: [\"0/1\", \"0/2\", \"0/3\", \"0/4\", \"0/5\"]; only on the control twin: []"
    );
    // Both at once: control failures and divergence.
    let mut control = vec![at_lsn(base, 1)];
    control[0].failure = Some(write_failure("public.t", WriteKind::Delete, "XX000", "boom", "DELETE"));
    let codes: Vec<FindingCode> = replay_health(&migrated, &control).into_iter().map(|f| f.code).collect();
    assert_eq!(
        codes,
        vec![FindingCode::ControlReplayFailed, FindingCode::ReplayDivergence]
    );
}

#[test]
fn schema_changes_invalid_index_fails_not_valid_constraint_warns_others_inform() {
    let v = Verification {
        schema_changes: vec![
            change(
                "index",
                "public.orders_email_key",
                "added",
                None,
                Some("CREATE UNIQUE INDEX orders_email_key ON public.orders USING btree (email) INVALID"),
            ),
            change(
                "constraint",
                "public.orders.orders_customer_fk",
                "added",
                None,
                Some("FOREIGN KEY (customer_id) REFERENCES customers(id) NOT VALID"),
            ),
            change(
                "index",
                "public.orders_note_idx",
                "added",
                None,
                Some("CREATE INDEX orders_note_idx ON public.orders USING btree (note)"),
            ),
            change(
                "column",
                "public.orders.total",
                "changed",
                Some("integer"),
                Some("numeric(12,2)"),
            ),
            change("column", "public.orders.legacy", "dropped", Some("text"), None),
        ],
        ..Verification::default()
    };
    let f = verification(&v, &Rollback::default(), false, false);
    assert_eq!(
        summary(&f),
        vec![
            (
                "index-invalid".to_string(),
                Severity::Fail,
                "index public.orders_email_key is left INVALID".to_string()
            ),
            (
                "constraint-not-valid".to_string(),
                Severity::Warn,
                "constraint public.orders.orders_customer_fk is left NOT VALID".to_string()
            ),
            (
                "schema-change".to_string(),
                Severity::Info,
                "index public.orders_note_idx added: CREATE INDEX orders_note_idx ON public.orders USING btree (note)"
                    .to_string()
            ),
            (
                "schema-change".to_string(),
                Severity::Info,
                "column public.orders.total changed from integer to numeric(12,2)".to_string()
            ),
            (
                "schema-change".to_string(),
                Severity::Info,
                "column public.orders.legacy dropped (was text)".to_string()
            ),
        ]
    );
    assert_eq!(
        f[0].evidence,
        "CREATE UNIQUE INDEX orders_email_key ON public.orders USING btree (email) INVALID"
    );
    assert_eq!(
        f[1].evidence,
        "FOREIGN KEY (customer_id) REFERENCES customers(id) NOT VALID"
    );
}

#[test]
fn changed_data_and_new_column_nulls_inform() {
    let table = |name: &str, a: i64, b: i64, differing: i64, exact: bool| TableComparison {
        table: name.into(),
        rows_a: a,
        rows_b: b,
        differing_rows: differing,
        sample_keys: vec!["id=1".into(), "id=2".into()],
        exact,
        columns: Vec::new(),
    };
    let v = Verification {
        tables: vec![
            table("public.orders", 100, 100, 3, true),
            table("public.customers", 50, 50, 0, true),
            table("public.events", 90, 100, 10, false),
        ],
        new_columns: vec![NewColumn {
            table: "public.orders".into(),
            column: "note".into(),
            definition: "text".into(),
            nulls: 40,
            rows: 100,
        }],
        ..Verification::default()
    };
    let f = verification(&v, &Rollback::default(), false, false);
    assert_eq!(
        summary(&f),
        vec![
            (
                "data-changed".to_string(),
                Severity::Info,
                "public.orders: 3 row(s) differ from the control twin (rows 100 vs 100)".to_string()
            ),
            (
                "data-changed".to_string(),
                Severity::Info,
                "public.events: 10 row(s) differ from the control twin (at least) (rows 90 vs 100)".to_string()
            ),
            (
                "new-column-nulls".to_string(),
                Severity::Info,
                "public.orders.note (text): 40 NULL of 100 rows".to_string()
            ),
        ]
    );
    assert_eq!(f[0].evidence, "sample keys: id=1, id=2");
}

#[test]
fn checks_that_fail_or_change_warn() {
    let check = |name: &str, line: usize, migrated: &str, control: &str, error: Option<&str>| CheckResult {
        name: name.into(),
        line,
        sql: "SELECT count(*) FROM orders".into(),
        migrated: vec![vec![Some(migrated.into())]],
        control: vec![vec![Some(control.into())]],
        changed: migrated != control,
        error: error.map(Into::into),
    };
    let v = Verification {
        checks: vec![
            check("orders", 1, "100", "100", None),
            check("totals", 3, "7", "9", None),
            check("broken", 5, "", "", Some("relation \"nope\" does not exist")),
            // An error wins over a change.
            check("both", 7, "1", "2", Some("permission denied")),
        ],
        ..Verification::default()
    };
    let f = verification(&v, &Rollback::default(), false, false);
    assert_eq!(
        summary(&f),
        vec![
            (
                "check-changed".to_string(),
                Severity::Warn,
                "check \"totals\" (line 3) changed".to_string()
            ),
            (
                "check-error".to_string(),
                Severity::Warn,
                "check \"broken\" failed to run".to_string()
            ),
            (
                "check-error".to_string(),
                Severity::Warn,
                "check \"both\" failed to run".to_string()
            ),
        ]
    );
    assert_eq!(f[0].evidence, "migrated: (7); control: (9)");
    assert_eq!(f[1].evidence, "relation \"nope\" does not exist");
}

#[test]
fn no_rollback_finding_when_the_up_migration_failed() {
    let v = Verification::default();
    for down_given in [false, true] {
        assert!(verification(&v, &Rollback::default(), down_given, false).is_empty());
    }
}

#[test]
fn a_rollback_without_a_down_migration_is_untested() {
    let f = verification(&Verification::default(), &Rollback::default(), false, true);
    assert_eq!(
        summary(&f),
        vec![(
            "rollback-untested".to_string(),
            Severity::Warn,
            "rollback untested: no down-migration given".to_string()
        )]
    );
    assert_eq!(
        f[0].remedy,
        "pass --down DOWN.sql; if the migration cannot be reversed, say so in the pull request"
    );
}

#[test]
fn a_failed_down_migration_fails_with_its_statement() {
    let rollback = Rollback {
        tested: true,
        file: Some("down.sql".into()),
        ok: false,
        statements: vec![
            ok_statement(0, 1, "DROP INDEX orders_note_idx;", 0.0, 1.0),
            failed(
                ok_statement(1, 2, "ALTER TABLE orders DROP COLUMN nope;", 1.0, 1.0),
                "42703",
                "column \"nope\" of relation \"orders\" does not exist",
                false,
            ),
        ],
        ..Rollback::default()
    };
    let f = verification(&Verification::default(), &rollback, true, true);
    assert_eq!(
        summary(&f),
        vec![(
            "rollback-failed".to_string(),
            Severity::Fail,
            "the down-migration failed: this migration cannot be reversed as written".to_string()
        )]
    );
    assert_eq!(
        f[0].evidence,
        "line 2: column \"nope\" of relation \"orders\" does not exist"
    );
    // No failed statement to quote (the run stopped otherwise): no evidence.
    let quiet = Rollback { ok: false, ..proven(0) };
    assert_eq!(
        verification(&Verification::default(), &quiet, true, true)[0].evidence,
        ""
    );
}

#[test]
fn a_rollback_that_leaves_schema_or_loses_data_fails() {
    let rollback = Rollback {
        schema_differences: vec![change("column", "public.orders.note", "added", None, Some("text"))],
        lossy_columns: vec![LossyColumn {
            table: "public.orders".into(),
            column: "total".into(),
            values_not_restored: 12,
            sample_keys: vec!["id=4".into(), "id=5".into()],
        }],
        ..proven(3)
    };
    let f = verification(&Verification::default(), &rollback, true, true);
    assert_eq!(
        summary(&f),
        vec![
            (
                "rollback-schema".to_string(),
                Severity::Fail,
                "after the down-migration, column public.orders.note added: text".to_string()
            ),
            (
                "rollback-lossy".to_string(),
                Severity::Fail,
                "column public.orders.total: 12 values not restored by the down-migration".to_string()
            ),
        ]
    );
    assert_eq!(f[1].evidence, "sample keys: id=4, id=5");
}

#[test]
fn a_rollback_that_restores_everything_is_proven() {
    let f = verification(&Verification::default(), &proven(4), true, true);
    assert_eq!(
        summary(&f),
        vec![(
            "rollback-proven".to_string(),
            Severity::Info,
            "the down-migration restores the control twin's schema and data (4 tables compared)".to_string()
        )]
    );
}

#[test]
fn check_rows_read_as_tuples_with_null_and_at_most_five() {
    assert_eq!(super::rows(&[]), "no rows");
    assert_eq!(super::rows(&[vec![Some("7".into()), None]]), "(7, NULL)");
    let many: Vec<Vec<Option<String>>> = (0..7).map(|i| vec![Some(i.to_string())]).collect();
    assert_eq!(super::rows(&many), "(0); (1); (2); (3); (4); … 7 rows in all");
}

//! Verification, data pre-flight, rollback proof and the verdict, on a source with the seed's shapes and with
//! writes flowing. Exact numbers are asserted against what was seeded.

use std::time::Duration;

use fixtures::harness::*;
use fixtures::writer::Writer;
use understudy::dryrun::DryRunOptions;
use understudy::fork;
use understudy::report::{DryRunReport, Severity, Verdict};
use understudy::report::{FindingCode, Thresholds};
use understudy::sandbox::{self, StateDir};
use understudy::source::Replicate;
use understudy::verify::preflight::PreflightCode;

// The seed (`seeded_source`): accounts: 1,000 rows; 123 with plan NULL; 37 whose org_id matches no org; 500 with
// a plan_note. users: 200 rows; 15 mixed-case duplicate pairs of e-mails; 9 NULL e-mails.

fn options(root: &TempRoot, name: &str, up: &str, down: Option<&str>, checks: Option<&str>) -> DryRunOptions {
    let write = |suffix: &str, text: &str| {
        let path = root.path().join(format!("{name}-{suffix}.sql"));
        std::fs::write(&path, text).expect("write file");
        sql(&path.display().to_string(), text)
    };
    DryRunOptions {
        down: down.map(|d| write("down", d)),
        checks: checks.map(|c| write("checks", c)),
        after: Duration::from_millis(1000),
        workers: 2,
        statement_timeout: Some(Duration::from_secs(60)),
        sample_interval: Duration::from_millis(20),
        ..dry_run_options(write("up", up), name)
    }
}

fn finding<'a>(report: &'a DryRunReport, code: &str) -> &'a understudy::report::Finding {
    let code: FindingCode = code.parse().expect("a finding code");
    report.findings.iter().find(|f| f.code == code).unwrap_or_else(|| {
        panic!(
            "no {code} finding in {:#?}",
            report.findings.iter().map(|f| (&f.code, &f.title)).collect::<Vec<_>>()
        )
    })
}

fn assert_clean(state: &StateDir) {
    assert!(fork::list(state).is_empty(), "forks left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_shaped_failures_rollback_proof_and_a_safe_migration() {
    let root = TempRoot::new("verify");
    let source = seeded_source(&root, 20_000).await;
    let opts = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("sandbox");
    let state = root.state();
    let writer = Writer::start(source.admin().await.expect("writer"), 150);

    // SET NOT NULL over old rows with NULLs: fails, and the pre-flight counts exactly the seeded NULLs.
    let report = dry_run(
        &state,
        &options(
            &root,
            "nn",
            "ALTER TABLE accounts ALTER COLUMN plan SET NOT NULL;",
            None,
            None,
        ),
    )
    .await
    .expect("dry-run");
    assert_eq!(report.verdict.result, Verdict::Fail);
    assert!(!report.migration.ok);
    assert_eq!(
        report.migration.statements[0].outcome.sqlstate.as_deref(),
        Some("23502")
    );
    let pf = report
        .preflight
        .iter()
        .find(|p| p.code == PreflightCode::NotNullViolations)
        .expect("pre-flight");
    assert_eq!(pf.count, 123);
    assert_eq!(pf.samples.len(), 5);
    let f = finding(&report, "preflight-not-null-violations");
    assert_eq!((f.severity, f.line), (Severity::Fail, Some(1)));
    assert!(f.remedy.contains("backfill"), "{}", f.remedy);
    assert_clean(&state);

    // ADD FOREIGN KEY over orphans: fails, count equals the orphans seeded, sample keys are real orphans.
    let report = dry_run(
        &state,
        &options(&root, "fk", "-- link accounts to orgs\nALTER TABLE accounts\n  ADD CONSTRAINT accounts_org_fk FOREIGN KEY (org_id) REFERENCES orgs (id);", None, None))
    .await
    .expect("dry-run");
    assert_eq!(report.verdict.result, Verdict::Fail);
    let pf = report
        .preflight
        .iter()
        .find(|p| p.code == PreflightCode::Orphans)
        .expect("orphans");
    assert_eq!(pf.count, 37);
    assert_eq!(pf.line, 2);
    for sample in &pf.samples {
        // "(id) -> (org_id)" with id ≤ 37 and org_id = 900 + id.
        let id: i32 = sample
            .trim_start_matches('(')
            .split(')')
            .next()
            .and_then(|x| x.parse().ok())
            .expect("sample key");
        assert!(id <= 37, "{sample} is not an orphan");
        assert!(sample.ends_with(&format!("({})", 900 + id)), "{sample}");
    }
    assert!(finding(&report, "preflight-orphans").remedy.contains("NOT VALID"));
    assert_clean(&state);

    // UPDATE users SET email = lower(email) before a unique constraint: duplicates and NULLs counted, and the
    // user check's changed output shown (the UPDATE committed before the constraint failed).
    let report = dry_run(
        &state,
        &options(
            &root,
            "lower",
            "UPDATE users SET email = lower(email);\nALTER TABLE users ADD CONSTRAINT users_email_lower UNIQUE (email);",
            None,
            Some("-- check: distinct e-mails\nSELECT count(DISTINCT email) FROM users;\n-- check: users\nSELECT count(*) FROM users;"),
        ))
    .await
    .expect("dry-run");
    let dups = report
        .preflight
        .iter()
        .find(|p| p.code == PreflightCode::Duplicates)
        .expect("duplicates");
    assert_eq!((dups.count, dups.line), (15, 1));
    assert!(
        dups.samples
            .iter()
            .all(|s| s.starts_with("person") && s.ends_with("@example.com (2 rows)")),
        "{:?}",
        dups.samples
    );
    let nulls = report
        .preflight
        .iter()
        .find(|p| p.code == PreflightCode::NullAfterUpdate)
        .expect("nulls");
    assert_eq!(nulls.count, 9);
    let verification = report.verification.as_ref().expect("verification");
    let distinct = verification
        .checks
        .iter()
        .find(|c| c.name == "distinct e-mails")
        .expect("check");
    assert!(distinct.changed, "{distinct:?}");
    assert_eq!(distinct.control, vec![vec![Some("191".to_string())]]);
    assert_eq!(distinct.migrated, vec![vec![Some("176".to_string())]]);
    assert!(
        !verification
            .checks
            .iter()
            .find(|c| c.name == "users")
            .expect("check")
            .changed
    );
    assert!(finding(&report, "check-changed").title.contains("distinct e-mails"));
    let users = verification
        .tables
        .iter()
        .find(|t| t.table == "public.users")
        .expect("users compared");
    assert_eq!(users.differing_rows, 15, "the 15 mixed-case e-mails changed");
    assert_eq!(report.verdict.result, Verdict::Fail);
    assert_clean(&state);

    // A lossy down-migration is caught with the column named and the count of values lost.
    let report = dry_run(
        &state,
        &options(
            &root,
            "lossy",
            "ALTER TABLE accounts DROP COLUMN plan_note;",
            Some("ALTER TABLE accounts ADD COLUMN plan_note text;"),
            None,
        ),
    )
    .await
    .expect("dry-run");
    assert!(report.rollback.tested && report.rollback.ok);
    let lossy = report
        .rollback
        .lossy_columns
        .iter()
        .find(|l| l.column == "plan_note")
        .expect("lossy column");
    assert_eq!(
        (lossy.table.as_str(), lossy.values_not_restored),
        ("public.accounts", 500)
    );
    assert!(
        finding(&report, "rollback-lossy")
            .title
            .contains("column public.accounts.plan_note: 500 values not restored")
    );
    assert_eq!(report.verdict.result, Verdict::Fail);
    assert_clean(&state);

    // A safe, reversible migration passes with no finding above info, the rollback proven while writes flow.
    let report = dry_run(
        &state,
        &options(
            &root,
            "safe",
            "ALTER TABLE orders ADD COLUMN priority int;\nCREATE INDEX CONCURRENTLY orders_priority_idx ON orders (priority);",
            Some("DROP INDEX CONCURRENTLY orders_priority_idx;\nALTER TABLE orders DROP COLUMN priority;"),
            None,
        ))
    .await
    .expect("dry-run");
    let above_info: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.severity != Severity::Info)
        .collect();
    assert!(above_info.is_empty(), "{above_info:#?}");
    assert_eq!(report.verdict.result, Verdict::Pass, "{:?}", report.verdict.reasons);
    assert!(
        report.writes.replayed > 50,
        "writes must flow during the run: {}",
        report.writes.replayed
    );
    finding(&report, "rollback-proven");
    let verification = report.verification.as_ref().expect("verification");
    assert!(
        verification.tables.iter().all(|t| t.differing_rows == 0),
        "{:?}",
        verification.tables
    );
    let col = verification
        .new_columns
        .iter()
        .find(|c| c.column == "priority")
        .expect("new column");
    assert_eq!(col.nulls, col.rows);
    assert_clean(&state);

    // Thresholds a team sets: an untested rollback fails under `rollback = "require"`, a duration limit fails a
    // slow migration.
    let mut opts = options(
        &root,
        "strict",
        "ALTER TABLE orders ADD COLUMN flag text;\nSELECT pg_sleep(1.5);",
        None,
        None,
    );
    opts.thresholds = Thresholds::default().with(
        &understudy::dryrun::config::parse("[thresholds]\nrollback = \"require\"\nmax_duration = \"1s\"")
            .expect("config"),
    );
    let report = dry_run(&state, &opts).await.expect("dry-run");
    assert_eq!(report.verdict.result, Verdict::Fail);
    let reasons = report.verdict.reasons.join(" | ");
    assert!(reasons.contains("rollback untested"), "{reasons}");
    assert!(reasons.contains("over the limit of 1s"), "{reasons}");
    assert_clean(&state);
    // A bad configuration file is a usage error before anything is forked.
    let bad = root.path().join("bad.toml");
    std::fs::write(&bad, "[thresholds]\nmax_lock_wait = \"soon\"\n").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("--state-dir")
        .arg(state.root())
        .args(["dry-run", "--sandbox", "shop", "--config"])
        .arg(&bad)
        .arg("--up")
        .arg(&opts.up.name)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("thresholds.max_lock_wait"));
    assert_clean(&state);

    writer.stop().await.expect("writer");
    assert_eq!(capture_slots(&meta).await, 0);
}

/// Two databases `a` and `b` on one embedded server, each given `setup`; with `twin`, `b` is a copy of `a`
/// (`CREATE DATABASE … TEMPLATE`: the same row versions, as twins forked at one point have).
async fn two_databases(
    label: &str,
    setup: &str,
    twin: bool,
) -> (
    TempRoot,
    fixtures::source::SourceServer,
    tokio_postgres::Client,
    tokio_postgres::Client,
) {
    let root = TempRoot::new(label);
    let server = fixtures::source::SourceServer::start(&root.path().join("pg"), "a", &[])
        .await
        .expect("server");
    let a = server.cluster.connect("a").await.expect("a");
    a.batch_execute(setup).await.expect("setup a");
    drop(a);
    let admin = server.cluster.connect("postgres").await.expect("admin");
    let create = if twin {
        "CREATE DATABASE b TEMPLATE a"
    } else {
        "CREATE DATABASE b"
    };
    admin.batch_execute(create).await.expect("database b");
    let b = server.cluster.connect("b").await.expect("b");
    if !twin {
        b.batch_execute(setup).await.expect("setup b");
    }
    let a = server.cluster.connect("a").await.expect("a");
    (root, server, a, b)
}

fn names(columns: &[&str]) -> Vec<String> {
    columns.iter().map(|s| s.to_string()).collect()
}

/// The table comparison behind verification: the same rows in another physical order compare equal; values the
/// type's own hash would call equal but that differ (numeric scale, case under a case-insensitive collation)
/// are differences; a table without a key compares as a multiset of rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_comparison_is_exact_and_order_independent() {
    use understudy::verify::data;
    let schema = "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);\n\
                  CREATE TABLE t (id int PRIMARY KEY, amount numeric, email text COLLATE ci, at timestamptz);\n\
                  CREATE TABLE log (what text, n int);";
    let (_root, _server, a, b) = two_databases("vcmp", schema, false).await;
    let t_columns = names(&["id", "amount", "email", "at"]);
    let log_columns = names(&["what", "n"]);
    a.batch_execute(
        "INSERT INTO t SELECT g, g * 1.5, 'user' || g || '@example.com', '2026-01-01'::timestamptz + g * interval '1 h' \
         FROM generate_series(1, 5000) g; INSERT INTO log VALUES ('x', 1), ('x', 1), ('y', 2);",
    )
    .await
    .expect("rows a");
    b.batch_execute(
        "INSERT INTO t SELECT g, g * 1.5, 'user' || g || '@example.com', '2026-01-01'::timestamptz + g * interval '1 h' \
         FROM generate_series(5000, 1, -1) g; INSERT INTO log VALUES ('y', 2), ('x', 1), ('x', 1);",
    )
    .await
    .expect("rows b");
    let same = data::compare(&a, &b, "public.t", &t_columns).await.expect("compare");
    assert_eq!(
        (same.rows_a, same.rows_b, same.differing_rows),
        (5000, 5000, 0),
        "{same:?}"
    );
    let same = data::compare(&a, &b, "public.log", &log_columns)
        .await
        .expect("compare");
    assert_eq!(same.differing_rows, 0, "{same:?}");

    // 1.5 and 1.50 are equal numbers, 'User7@…' and 'user7@…' are equal under the collation: both are changes.
    b.batch_execute(
        "UPDATE t SET amount = amount::numeric(12, 2) WHERE id IN (1, 3); \
         UPDATE t SET email = upper(email) WHERE id = 7; \
         DELETE FROM log WHERE what = 'y'; INSERT INTO log VALUES ('z', 3), ('z', 3);",
    )
    .await
    .expect("changes");
    let changed = data::compare(&a, &b, "public.t", &t_columns).await.expect("compare");
    assert_eq!(changed.differing_rows, 3, "{changed:?}");
    assert!(changed.exact);
    let mut keys = changed.sample_keys.clone();
    keys.sort();
    assert_eq!(keys, vec!["(1)", "(3)", "(7)"]);
    // The same scan says which column differs in which rows.
    let by_column: Vec<(String, i64, Vec<String>)> = changed
        .columns
        .iter()
        .map(|c| (c.column.clone(), c.rows, c.sample_keys.clone()))
        .collect();
    assert_eq!(
        by_column,
        vec![
            ("amount".to_string(), 2, vec!["(1)".to_string(), "(3)".to_string()]),
            ("email".to_string(), 1, vec!["(7)".to_string()]),
        ]
    );
    // A table without a key compares as a multiset of rows: {x, x, y} against {x, x, z, z}, then against
    // {y, z, z} (the same row count).
    let log = data::compare(&a, &b, "public.log", &log_columns)
        .await
        .expect("compare");
    assert!(log.differing_rows > 0, "{log:?}");
    b.batch_execute("DELETE FROM log; INSERT INTO log VALUES ('y', 2), ('z', 3), ('z', 3)")
        .await
        .expect("y z z");
    let log = data::compare(&a, &b, "public.log", &log_columns)
        .await
        .expect("compare");
    assert_eq!((log.rows_a, log.rows_b), (3, 3));
    assert!(log.differing_rows > 0, "{log:?}");
}

/// Twins forked at one point compare by cheap per-bucket summaries, and hash by content only what changed since
/// the fork point: a row rewritten to the same values on one side is no difference, a changed value, a row
/// deleted on one side and the same change on both sides are what they are, with and without a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twin_comparison_hashes_only_what_changed_since_the_fork_point() {
    use understudy::verify::data::{self, ReferenceCache, Since};
    let (_root, _server, a, b) = two_databases(
        "vtwin",
        "CREATE TABLE t (id int PRIMARY KEY, v text, n numeric); CREATE TABLE log (what text, n int); \
         INSERT INTO t SELECT g, 'v' || g, g / 7.0 FROM generate_series(1, 20000) g; \
         INSERT INTO log SELECT 'x' || (g % 10), g % 3 FROM generate_series(1, 3000) g;",
        true,
    )
    .await;
    let since = Since {
        a: data::next_xid(&a).await.expect("xid a"),
        b: data::next_xid(&b).await.expect("xid b"),
    };
    let t_cols = names(&["id", "v", "n"]);
    let log_cols = names(&["what", "n"]);
    let cmp = |table: &'static str, cols: Vec<String>| {
        let (a, b) = (&a, &b);
        async move {
            data::compare_cached(a, b, table, &cols, Some(since), &mut ReferenceCache::default())
                .await
                .expect("compare")
        }
    };
    let same = cmp("public.t", t_cols.clone()).await;
    assert_eq!((same.rows_a, same.rows_b, same.differing_rows), (20000, 20000, 0));

    // Rewritten to the same values on one side only: new row versions, no difference.
    a.batch_execute("UPDATE t SET v = v WHERE id <= 5000; UPDATE log SET n = n WHERE what = 'x1'")
        .await
        .expect("no-op updates");
    assert_eq!(cmp("public.t", t_cols.clone()).await.differing_rows, 0);
    assert_eq!(cmp("public.log", log_cols.clone()).await.differing_rows, 0);

    // The same change on both sides is no difference either; a changed value and a deleted row are.
    for c in [&a, &b] {
        c.batch_execute("UPDATE t SET n = 0 WHERE id = 10")
            .await
            .expect("same change");
    }
    a.batch_execute("UPDATE t SET v = 'changed' WHERE id = 20; DELETE FROM log WHERE what = 'x2' AND n = 1")
        .await
        .expect("changes on a");
    b.batch_execute("DELETE FROM t WHERE id = 30")
        .await
        .expect("delete on b");
    let t = cmp("public.t", t_cols.clone()).await;
    assert_eq!((t.rows_a, t.rows_b, t.differing_rows), (20000, 19999, 2), "{t:?}");
    let mut keys = t.sample_keys.clone();
    keys.sort();
    assert_eq!(keys, vec!["(20)", "(30)"]);
    let log = cmp("public.log", log_cols.clone()).await;
    assert_eq!(log.rows_a + 100, log.rows_b, "{log:?}");
    assert!(log.differing_rows > 0, "{log:?}");
    // The full comparison (every row hashed) agrees.
    let full = data::compare(&a, &b, "public.t", &t_cols).await.expect("full");
    assert_eq!((full.rows_a, full.rows_b, full.differing_rows), (20000, 19999, 2));
    // A column dropped and added again changes every row without a new row version: not missed.
    a.batch_execute("ALTER TABLE t DROP COLUMN v; ALTER TABLE t ADD COLUMN v text")
        .await
        .expect("drop and add");
    let t = cmp("public.t", t_cols.clone()).await;
    assert_eq!(t.differing_rows, 20000, "{t:?}");
}

/// When a migration changes every row of a large table, the differing rows are counted in one scan per side up
/// to a budget (200,000 rows), and beyond it the count is a lower bound marked as such; below it, exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_changed_is_counted_in_one_scan_within_a_budget() {
    use understudy::verify::data;
    let (_root, _server, a, b) = two_databases(
        "vbig",
        "CREATE TABLE small (id int PRIMARY KEY, email text); \
         INSERT INTO small SELECT g, 'User' || g || '@Example.com' FROM generate_series(1, 5000) g; \
         CREATE TABLE big (id bigint PRIMARY KEY, email text); \
         INSERT INTO big SELECT g, 'User' || g || '@Example.com' FROM generate_series(1, 300000) g;",
        false,
    )
    .await;
    a.batch_execute("UPDATE small SET email = lower(email); UPDATE big SET email = lower(email)")
        .await
        .expect("lower");
    let cols = names(&["id", "email"]);
    let small = data::compare(&a, &b, "public.small", &cols).await.expect("small");
    assert_eq!((small.differing_rows, small.exact), (5000, true), "{small:?}");
    assert_eq!(small.columns.len(), 1, "{:?}", small.columns);
    assert_eq!(
        (small.columns[0].column.as_str(), small.columns[0].rows),
        ("email", 5000)
    );
    let big = data::compare(&a, &b, "public.big", &cols).await.expect("big");
    assert!(!big.exact, "{big:?}");
    assert!(big.differing_rows >= 150_000 && big.differing_rows < 300_000, "{big:?}");
    assert_eq!(big.sample_keys.len(), 5);
}

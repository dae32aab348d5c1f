//! `understudy source setup-sql` prints what a DBA runs, and that is enough: a sandbox created with the role it
//! makes follows the source through writes, DDL passes and a dry-run, and is deleted. The source logs every
//! statement (`log_statement = all`, replication commands too): the role ran only reads and replication
//! commands, it holds no write privilege on any table, and it leaves no slot and no session behind.

mod common;

use fixtures::harness::*;
use fixtures::source::SourceServer;
use fixtures::writer::Writer;
use understudy::dryrun::{DryRunRequest, SqlText};
use understudy::report::Thresholds;
use understudy::sandbox::{self, follow};
use understudy::source::{Replicate, SandboxName};

const ROLE: &str = "understudy_audit";

/// What a statement of the role may begin with: reads, session settings, transactions, cursors, and the
/// replication protocol's commands.
const READS: &[&str] = &[
    "SELECT",
    "WITH",
    "SHOW",
    "SET ",
    "RESET",
    "BEGIN",
    "START TRANSACTION",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "DECLARE",
    "FETCH",
    "CLOSE",
    "DISCARD",
    "DEALLOCATE",
    "IDENTIFY_SYSTEM",
    "CREATE_REPLICATION_SLOT",
    "DROP_REPLICATION_SLOT",
    "START_REPLICATION",
    "TIMELINE_HISTORY",
];

/// The first line of each statement the role ran, from the source's log.
fn statements_of(log: &str, role: &str) -> Vec<String> {
    let tag = format!("user={role} ");
    log.lines()
        .filter(|l| l.contains(&tag))
        .filter_map(|l| {
            let (_, rest) = l.split_once("LOG:  ")?;
            if let Some(s) = rest.strip_prefix("statement: ") {
                return Some(s.trim().to_string());
            }
            if let Some(s) = rest.strip_prefix("received replication command: ") {
                return Some(s.trim().to_string());
            }
            // The extended protocol: "execute <unnamed>: SELECT ...", "execute s3: ...".
            let s = rest.strip_prefix("execute ")?;
            Some(s.split_once(": ")?.1.trim().to_string())
        })
        .collect()
}

/// A statement that is not a read: anything outside [`READS`], a COPY into a table, a LOCK stronger than ACCESS
/// SHARE, a CTE that modifies.
fn is_write(statement: &str) -> bool {
    let upper = statement.to_ascii_uppercase();
    if upper.starts_with("COPY ") {
        return !upper.contains(" TO STDOUT");
    }
    if upper.starts_with("LOCK TABLE ") {
        return !upper.contains("IN ACCESS SHARE MODE");
    }
    if upper.starts_with("WITH") {
        return ["INSERT ", "UPDATE ", "DELETE "].iter().any(|w| upper.contains(w));
    }
    !READS.iter().any(|r| upper.starts_with(r))
}

#[test]
fn the_read_classifier_refuses_writes() {
    for write in [
        "INSERT INTO orders VALUES (1)",
        "UPDATE orders SET note = ''",
        "COPY orders FROM STDIN",
        "TRUNCATE orders",
        "LOCK TABLE orders IN EXCLUSIVE MODE",
        "WITH x AS (DELETE FROM orders RETURNING *) SELECT 1",
        "CREATE TABLE t (a int)",
        "ALTER TABLE orders ADD COLUMN x int",
    ] {
        assert!(is_write(write), "{write}");
    }
    for read in [
        "SELECT 1",
        "COPY public.orders TO STDOUT (FORMAT binary)",
        "LOCK TABLE public.orders IN ACCESS SHARE MODE",
        "CREATE_REPLICATION_SLOT \"understudy_x\" LOGICAL pgoutput (SNAPSHOT 'export')",
    ] {
        assert!(!is_write(read), "{read}");
    }
    let log = "2026-12-02 10:00:00.000 UTC [42] user=understudy_audit LOG:  execute <unnamed>: SELECT 2\n\
               2026-12-02 10:00:00.000 UTC [42] user=postgres LOG:  statement: INSERT INTO t VALUES (1)\n\
               2026-12-02 10:00:00.000 UTC [43] user=understudy_audit LOG:  statement: COPY t TO STDOUT";
    assert_eq!(statements_of(log, ROLE), ["SELECT 2", "COPY t TO STDOUT"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setup_sql_role_is_enough_and_only_reads() {
    let root = TempRoot::new("setupsql");
    let settings = [
        ("log_statement", "all"),
        ("log_replication_commands", "on"),
        ("log_line_prefix", "%m [%p] user=%u "),
    ];
    let source = SourceServer::start(&root.path().join("source"), "shop", &settings)
        .await
        .expect("source");
    source.load_sample(2_000, "shop_pub").await.expect("sample");

    // What the DBA runs: the printed script, with psql's \password answered by the test.
    let state = root.state();
    let out = common::cli(&state)
        .args(["source", "setup-sql", "--sandbox", "audit", "--role", ROLE])
        .args(["--database", "shop", "--schema", "public", "--jobs", "2"])
        .output()
        .expect("run understudy");
    let script = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{script}{}", String::from_utf8_lossy(&out.stderr));
    assert!(script.contains(&format!("\\password \"{ROLE}\"")), "{script}");
    let sql: String = script
        .lines()
        .filter(|l| !l.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n");
    let admin = source.admin().await.expect("admin");
    admin.batch_execute(&sql).await.expect("the printed SQL runs");
    admin
        .batch_execute(&format!("ALTER ROLE {ROLE} PASSWORD 'audit-pass-7f3e'"))
        .await
        .expect("password");

    // A sandbox with that role: created, following writes, a follower pass, a dry-run, deleted.
    let mut create = create_options(
        &root,
        &source,
        "audit",
        Replicate::Publication("understudy_audit".into()),
    );
    create.source = source.conninfo_as(ROLE, "audit-pass-7f3e");
    let meta = sandbox::create(&create, &quiet)
        .await
        .expect("a sandbox with the setup-sql role");
    let writer = Writer::start(source.admin().await.expect("writer"), 100);
    let name = SandboxName::parse("audit").expect("name");
    follow::follow_once(&state, &name).await.expect("a follower pass");
    let mut request = DryRunRequest::new(
        "audit",
        SqlText {
            name: Some("add.sql".into()),
            sql: "ALTER TABLE orders ADD COLUMN channel text;".into(),
        },
    );
    request.warmup = Some(understudy::units::Duration::from_millis(800));
    request.after = Some(understudy::units::Duration::from_millis(500));
    let (opts, _) = request.validate(&Thresholds::default()).expect("request");
    let report = dry_run(&state, &opts).await.expect("a dry-run");
    assert!(report.writes.replayed > 0, "production's writes were replayed");
    writer.stop().await.expect("writer");
    wait_caught_up(&source, &meta).await;
    sandbox::delete(&state, &name, None, false).await.expect("delete");

    // What the role did on the source: reads and replication commands only.
    let log = std::fs::read_to_string(source.cluster.log_path()).expect("the source's log");
    let ran = statements_of(&log, ROLE);
    assert!(ran.len() > 20, "the log records the role's statements: {ran:?}");
    assert!(
        ran.iter().any(|s| s.starts_with("CREATE_REPLICATION_SLOT")) && ran.iter().any(|s| s.starts_with("COPY")),
        "the slot and the copy are in the log: {ran:?}"
    );
    let writes: Vec<&String> = ran.iter().filter(|s| is_write(s)).collect();
    assert!(writes.is_empty(), "the role wrote on the source: {writes:?}");
    let writable: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND has_table_privilege($1, c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')",
            &[&ROLE],
        )
        .await
        .expect("privileges")
        .get(0);
    assert_eq!(writable, 0, "the role may write to no table");
    let limit: i32 = admin
        .query_one("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", &[&ROLE])
        .await
        .expect("role")
        .get(0);
    assert_eq!(limit, 6, "2 copy workers and 4 more");
    wait_nothing_left(&source, ROLE).await;
}

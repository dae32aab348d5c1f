//! Every refused input gets its message with the fix, a non-zero exit, and leaves nothing on the source (no slot,
//! no publication, no role) nor a sandbox directory.

use fixtures::harness::*;
use fixtures::source::SourceServer;
use understudy::pg::QualifiedName;
use understudy::sandbox::{self, SandboxError};
use understudy::source::Replicate;

fn problem_codes(err: &SandboxError) -> Vec<&'static str> {
    match err {
        SandboxError::Preflight(p) => p.problems.iter().map(|p| p.code).collect(),
        other => panic!("expected a preflight refusal, got: {other}"),
    }
}

async fn roles(source: &SourceServer) -> Vec<String> {
    source
        .admin()
        .await
        .expect("admin")
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%' ORDER BY 1",
            &[],
        )
        .await
        .expect("roles")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn assert_untouched(root: &TempRoot, source: &SourceServer, name: &str, roles_before: &[String]) {
    let (slots, pubs) = our_objects(source).await;
    assert!(slots.is_empty(), "slots left on the source: {slots:?}");
    assert!(pubs.is_empty(), "publications left on the source: {pubs:?}");
    assert_eq!(roles(source).await, roles_before, "roles changed on the source");
    let dir = root
        .state()
        .sandbox_dir(&understudy::source::SandboxName::parse(name).expect("name"));
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_not_logical() {
    let root = TempRoot::new("wal");
    let source = SourceServer::start(&root.path().join("source"), "shop", &[("wal_level", "replica")])
        .await
        .expect("source");
    source.load_sample(100, "shop_pub").await.expect("sample");
    let before = roles(&source).await;
    let opts = create_options(&root, &source, "wal", Replicate::Publication("shop_pub".into()));
    let err = sandbox::create(&opts, &quiet).await.expect_err("must refuse");
    assert_eq!(problem_codes(&err), vec!["wal-level"]);
    let text = err.to_string();
    assert!(text.contains("wal_level is \"replica\""), "{text}");
    assert!(text.contains("ALTER SYSTEM SET wal_level = logical"), "{text}");
    assert!(text.contains("nothing was created"), "{text}");
    assert_untouched(&root, &source, "wal", &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_free_slot_and_no_wal_sender() {
    let root = TempRoot::new("slots");
    let source = SourceServer::start(
        &root.path().join("source"),
        "shop",
        &[("max_replication_slots", "1"), ("max_wal_senders", "0")],
    )
    .await
    .expect("source");
    source.load_sample(100, "shop_pub").await.expect("sample");
    let admin = source.admin().await.expect("admin");
    admin
        .batch_execute("SELECT pg_create_logical_replication_slot('someone_elses', 'pgoutput')")
        .await
        .expect("occupy the only slot");
    let before = roles(&source).await;
    let opts = create_options(&root, &source, "slots", Replicate::Publication("shop_pub".into()));
    let err = sandbox::create(&opts, &quiet).await.expect_err("must refuse");
    let codes = problem_codes(&err);
    assert!(codes.contains(&"replication-slots"), "{codes:?}");
    assert!(codes.contains(&"wal-senders"), "{codes:?}");
    let text = err.to_string();
    assert!(text.contains("max_replication_slots = 1 and 1 are in use"), "{text}");
    assert!(text.contains("max_wal_senders = 0"), "{text}");
    assert_untouched(&root, &source, "slots", &before).await;
    let other: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'someone_elses'",
            &[],
        )
        .await
        .expect("slots")
        .get(0);
    assert_eq!(other, 1, "someone else's slot must be left alone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_privileges_replica_identity_and_missing_publication() {
    let root = TempRoot::new("roles");
    let source = sample_source(&root, 100).await;
    let admin = source.admin().await.expect("admin");
    admin
        .batch_execute(
            "CREATE ROLE no_repl LOGIN PASSWORD 'pw1'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO no_repl; \
             CREATE ROLE no_select LOGIN REPLICATION PASSWORD 'pw2'; \
             CREATE TABLE audit_log (at timestamptz, line text); \
             CREATE TABLE plain (id int); \
             CREATE PUBLICATION with_nopk FOR TABLE orders, audit_log; \
             GRANT SELECT ON audit_log TO understudy_replicator;",
        )
        .await
        .expect("setup");
    let before = roles(&source).await;

    // A role without REPLICATION.
    let mut opts = create_options(&root, &source, "r1", Replicate::Publication("shop_pub".into()));
    opts.source = source.conninfo_as("no_repl", "pw1");
    let err = sandbox::create(&opts, &quiet).await.expect_err("no REPLICATION");
    assert_eq!(problem_codes(&err), vec!["replication-role"]);
    assert!(err.to_string().contains("ALTER ROLE \"no_repl\" REPLICATION"), "{err}");
    assert_untouched(&root, &source, "r1", &before).await;

    // A role that cannot read the published tables: all three are named, with the GRANT to run.
    let mut opts = create_options(&root, &source, "r2", Replicate::Publication("shop_pub".into()));
    opts.source = source.conninfo_as("no_select", "pw2");
    let err = sandbox::create(&opts, &quiet).await.expect_err("no SELECT");
    assert_eq!(problem_codes(&err), vec!["select-privilege"]);
    let text = err.to_string();
    for table in ["public.customers", "public.orders", "public.events"] {
        assert!(text.contains(table), "{table} not named: {text}");
    }
    assert!(text.contains("GRANT SELECT ON"), "{text}");
    assert_untouched(&root, &source, "r2", &before).await;

    // A published table without a replica identity is listed (and the one with a primary key is not).
    let opts = create_options(&root, &source, "r3", Replicate::Publication("with_nopk".into()));
    let err = sandbox::create(&opts, &quiet).await.expect_err("no replica identity");
    assert_eq!(problem_codes(&err), vec!["replica-identity"]);
    let text = err.to_string();
    assert!(text.contains("public.audit_log without a replica identity"), "{text}");
    assert!(!text.contains("public.orders without"), "{text}");
    assert!(text.contains("REPLICA IDENTITY FULL"), "{text}");
    assert_untouched(&root, &source, "r3", &before).await;

    // A publication that does not exist.
    let opts = create_options(&root, &source, "r4", Replicate::Publication("nope".into()));
    let err = sandbox::create(&opts, &quiet).await.expect_err("missing publication");
    assert_eq!(problem_codes(&err), vec!["publication-missing"]);
    assert!(err.to_string().contains("publication nope does not exist"), "{err}");
    assert_untouched(&root, &source, "r4", &before).await;

    // --tables with a role that does not own them: Understudy cannot create the publication, says who can.
    let opts = create_options(
        &root,
        &source,
        "r5",
        Replicate::Tables(vec![QualifiedName::parse("orders")]),
    );
    let err = sandbox::create(&opts, &quiet)
        .await
        .expect_err("cannot create publication");
    let codes = problem_codes(&err);
    assert!(codes.contains(&"create-publication"), "{codes:?}");
    assert!(
        err.to_string()
            .contains("CREATE PUBLICATION \"understudy_r5\" FOR TABLE \"public\".\"orders\""),
        "{err}"
    );
    assert_untouched(&root, &source, "r5", &before).await;

    // --tables naming a table that does not exist.
    let opts = create_options(
        &root,
        &source,
        "r6",
        Replicate::Tables(vec![QualifiedName::parse("orderz")]),
    );
    let err = sandbox::create(&opts, &quiet).await.expect_err("missing table");
    assert!(problem_codes(&err).contains(&"table-missing"));
    assert!(
        err.to_string().contains("no such table on the source: public.orderz"),
        "{err}"
    );
    assert_untouched(&root, &source, "r6", &before).await;

    // A wrong password: a clear error, no secret in it.
    let mut opts = create_options(&root, &source, "r7", Replicate::Publication("shop_pub".into()));
    opts.source = source.conninfo_as("understudy_replicator", "wrong-password-123");
    let err = sandbox::create(&opts, &quiet).await.expect_err("bad password");
    let text = err.to_string();
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(!text.contains("wrong-password-123"), "the password leaked: {text}");
    assert_untouched(&root, &source, "r7", &before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_already_used_on_the_source_is_refused_and_the_other_sandbox_survives() {
    let root = TempRoot::new("dup");
    let source = sample_source(&root, 100).await;
    let opts = create_options(&root, &source, "dup", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("first");
    // Same name, another state directory: the slot name is taken on the source.
    let other = TempRoot::new("dup2");
    let mut second = create_options(&other, &source, "dup", Replicate::Publication("shop_pub".into()));
    second.state_dir = other.state();
    let err = sandbox::create(&second, &quiet).await.expect_err("slot exists");
    assert_eq!(problem_codes(&err), vec!["slot-exists"]);
    // Same state directory: refused before touching anything.
    let err = sandbox::create(&opts, &quiet).await.expect_err("exists locally");
    assert!(matches!(err, SandboxError::Exists { .. }), "{err}");
    let (slots, _) = our_objects(&source).await;
    assert_eq!(slots, vec![meta.slot.clone()], "the first sandbox's slot must survive");
    sandbox::delete(&opts.state_dir, &opts.name, None, false)
        .await
        .expect("delete");
    assert_eq!(our_objects(&source).await, (vec![], vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_refusals_exit_non_zero_with_the_fix() {
    let root = TempRoot::new("cli");
    let source = SourceServer::start(&root.path().join("source"), "shop", &[("wal_level", "replica")])
        .await
        .expect("source");
    source.load_sample(100, "shop_pub").await.expect("sample");
    let state = root.path().join("state");
    let run = |args: &[&str], env_source: Option<String>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_understudy"));
        cmd.arg("--state-dir")
            .arg(&state)
            .args(args)
            .env_remove("UNDERSTUDY_SOURCE");
        if let Some(s) = env_source {
            cmd.env("UNDERSTUDY_SOURCE", s);
        }
        cmd.output().expect("run understudy")
    };
    let conninfo = source.replicator_conninfo().to_secret_string();
    let out = run(
        &["sandbox", "create", "cli", "--publication", "shop_pub", "--no-progress"],
        Some(conninfo),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("[wal-level]") && stderr.contains("fix: run ALTER SYSTEM SET wal_level"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(fixtures::source::REPLICATOR_PASSWORD),
        "password leaked: {stderr}"
    );
    assert_eq!(our_objects(&source).await, (vec![], vec![]));

    let out = run(
        &["sandbox", "create", "Bad_Name", "--publication", "p"],
        Some("host=x".into()),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid sandbox name \"Bad_Name\""));

    let out = run(&["sandbox", "create", "ok", "--publication", "p"], Some("host".into()));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid connection string"));

    let out = run(&["sandbox", "create", "ok"], Some("host=127.0.0.1".into()));
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--publication NAME"));

    let out = run(&["sandbox", "status", "ghost"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sandbox named ghost"));

    let out = run(&["sandbox", "delete", "ghost"], None);
    assert_eq!(out.status.code(), Some(2));
}

//! A masked sandbox of the tenant source (`fixtures::tenants`): no original value of a masked column is found on
//! the sandbox, in a fork or in a report; the `lower(email)` duplicate groups, the exact duplicates and the NULL
//! counts equal production's; the dedupe migration fails on the masked sandbox with the same duplicate count as
//! on an unmasked one; a column the source adds later holds a filler and degrades the sandbox until it is
//! classified; and bad configs are refused with nothing made.

use std::time::Duration;

use fixtures::harness::*;
use fixtures::tenants;
use understudy::fork::{self, ForkOptions};
use understudy::mask::MaskConfig;
use understudy::pg::QualifiedName;
use understudy::sandbox::{self, SandboxError, SandboxMeta, SandboxState};
use understudy::source::{Replicate, SandboxName};
use understudy::verify::preflight::PreflightCode;

const MASK: &str = r#"
[tables.users]
org_id = "keep"
email = "fake-email"
name = "fake-name"

[tables.orgs]
name = "hash"

[tables.orders]
user_id = "keep"
approved_by = "keep"
amount = "keep"
note = "exclude"
"#;

const DEDUPE: &str = "UPDATE users SET email = lower(email);\nCREATE UNIQUE INDEX users_email_key ON users (email);\n";

fn tenant_tables() -> Vec<QualifiedName> {
    ["orgs", "users", "orders"]
        .iter()
        .map(|t| QualifiedName::new("public", *t))
        .collect()
}

/// Every value the masked columns hold on the source.
async fn originals(source: &tokio_postgres::Client) -> Vec<String> {
    source
        .query(
            "SELECT email FROM users WHERE email IS NOT NULL UNION SELECT name FROM users WHERE name IS NOT NULL \
             UNION SELECT name FROM orgs UNION SELECT note FROM orders WHERE note IS NOT NULL \
             UNION SELECT phone FROM users WHERE phone IS NOT NULL",
            &[],
        )
        .await
        .expect("originals")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Original values found in any row of any user table of `db`.
async fn leaks(db: &tokio_postgres::Client, originals: &[String]) -> Vec<String> {
    let tables: Vec<String> = db
        .query(
            "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables ORDER BY 1",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut found = Vec::new();
    for table in tables {
        for row in db
            .query(&format!("SELECT t::text FROM {table} t"), &[])
            .await
            .expect("rows")
        {
            let text: String = row.get(0);
            for o in originals.iter().filter(|o| text.contains(o.as_str())) {
                found.push(format!("{table}: {o}"));
            }
        }
    }
    found
}

/// The one number `sql` selects.
async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

async fn connect(meta: &SandboxMeta) -> tokio_postgres::Client {
    sandbox::cluster_of(meta)
        .expect("cluster")
        .connect(&meta.database)
        .await
        .expect("sandbox")
}

fn masked_options(root: &TempRoot, source: &fixtures::source::SourceServer, name: &str) -> sandbox::CreateOptions {
    let mut opts = create_options(root, source, name, Replicate::Tables(tenant_tables()));
    opts.mask = Some(MaskConfig::parse(MASK).expect("mask config"));
    opts
}

async fn dedupe_duplicates(root: &TempRoot, sandbox_name: &str) -> (i64, understudy::report::DryRunReport) {
    let mut run = dry_run_options(sql("dedupe.sql", DEDUPE), &format!("{sandbox_name}-dedupe"));
    run.sandbox = SandboxName::parse(sandbox_name).expect("name");
    run.warmup = Duration::from_millis(800);
    run.after = Duration::from_millis(500);
    let report = dry_run(&root.state(), &run).await.expect("dry-run");
    assert!(
        !report.migration.statements.iter().all(|s| s.outcome.ok),
        "{sandbox_name}: the unique index fails on production's duplicates"
    );
    let duplicates = report
        .preflight
        .iter()
        .find(|p| p.code == PreflightCode::Duplicates)
        .unwrap_or_else(|| panic!("{sandbox_name}: a duplicates finding: {:?}", report.preflight))
        .count;
    (duplicates, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_sandbox_holds_no_original_and_keeps_production_s_duplicates() {
    let root = TempRoot::new("masking");
    let source = tenants::source(&root.path().join("source")).await.expect("source");
    let admin = source.admin().await.expect("admin");
    let opts = masked_options(&root, &source, "masked");
    let meta = sandbox::create(&opts, &quiet).await.expect("create the masked sandbox");
    let plain_opts = create_options(&root, &source, "plain", Replicate::Tables(tenant_tables()));
    let plain_opts = sandbox::CreateOptions {
        name: SandboxName::parse("plain").expect("name"),
        ..plain_opts
    };
    // The unmasked twin of the sandbox needs its own publication name: it is another sandbox.
    let plain = sandbox::create(&plain_opts, &quiet)
        .await
        .expect("create the unmasked sandbox");

    // Writes after the copy: new users with mixed-case duplicates, changed e-mails and names, NULLs.
    admin
        .batch_execute(
            "INSERT INTO users VALUES (7001, 1, 11, 'New.Person@Example.com', 'New Person'), \
                                      (7002, 1, 11, 'new.person@example.com', 'Other Person'), \
                                      (7003, 1, 11, NULL, NULL); \
             UPDATE users SET email = 'Changed' || id || '@Example.org', name = 'Changed Name ' || id \
              WHERE id % 17 = 0; \
             UPDATE users SET name = NULL WHERE id % 19 = 0; \
             UPDATE orders SET note = 'secret note ' || id WHERE id % 23 = 0; \
             INSERT INTO orgs VALUES (99, 1, 'Brand New Org');",
        )
        .await
        .expect("writes");
    wait_caught_up(&source, &meta).await;
    wait_caught_up(&source, &plain).await;
    let db = connect(&meta).await;
    let plain_db = connect(&plain).await;

    let before = originals_without_phone(&admin).await;
    let originals = &before;
    assert!(originals.len() > 300, "{} originals", originals.len());
    assert_eq!(
        leaks(&db, originals).await,
        Vec::<String>::new(),
        "no original value on the sandbox"
    );
    assert!(
        !leaks(&plain_db, originals).await.is_empty(),
        "the scan finds the originals on an unmasked sandbox (so it would find a leak)"
    );
    let want = shape_values(&admin).await;
    assert_eq!(
        shape_values(&db).await,
        want,
        "duplicates, distinct values and NULLs as production's"
    );
    assert!(
        want[0] > 0 && want[4] > 0,
        "the source has lower(email) duplicate groups and NULLs: {want:?}"
    );
    let notes = count(&db, "SELECT count(*) FROM orders WHERE note IS NOT NULL").await;
    assert_eq!(notes, 0, "the excluded column holds its filler (NULL)");
    let published: Vec<String> = admin
        .query_one(
            "SELECT attnames::text[] FROM pg_publication_tables WHERE pubname = 'understudy_masked' \
             AND tablename = 'orders'",
            &[],
        )
        .await
        .expect("column list")
        .get(0);
    assert!(
        !published.contains(&"note".to_string()),
        "note never leaves the source: {published:?}"
    );

    // A fork holds masked values only, and no key.
    let fork = fork::create(
        &root.state(),
        &ForkOptions {
            sandbox: meta.name.clone(),
            name: Some(SandboxName::parse("masked-scan").expect("name")),
            strategy: None,
            ttl: Duration::from_secs(600),
            owner_pid: None,
        },
        &quiet,
    )
    .await
    .expect("fork");
    let (fork_db, conn) = tokio_postgres::connect(&fork.conninfo(&meta), tokio_postgres::NoTls)
        .await
        .expect("fork connection");
    tokio::spawn(conn);
    assert_eq!(
        leaks(&fork_db, originals).await,
        Vec::<String>::new(),
        "no original value in a fork"
    );
    let masking_left: i64 = fork_db
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'understudy_mask'",
            &[],
        )
        .await
        .expect("schema")
        .get(0);
    assert_eq!(masking_left, 0, "the key and triggers are not in the fork");
    drop(fork_db);
    fork::delete(&root.state(), &fork.name).await.expect("fork deleted");

    // The dedupe migration fails on the masked sandbox with production's duplicate count.
    let (masked_dups, report) = dedupe_duplicates(&root, "masked").await;
    let (plain_dups, _) = dedupe_duplicates(&root, "plain").await;
    assert_eq!(
        masked_dups, plain_dups,
        "the same duplicates on masked and unmasked sandboxes"
    );
    assert!(masked_dups > 0);
    eprintln!("masking: dedupe duplicates masked {masked_dups}, unmasked {plain_dups}");
    for row in connect(&meta)
        .await
        .query(
            "SELECT email, name FROM users WHERE id IN (3001, 3007, 3013) ORDER BY id",
            &[],
        )
        .await
        .expect("sample")
    {
        eprintln!(
            "masking: sample {:?} {:?}",
            row.get::<_, Option<String>>(0),
            row.get::<_, Option<String>>(1)
        );
    }
    let text = serde_json::to_string(&report).expect("report json") + &report.text() + &report.markdown();
    let in_report: Vec<&String> = originals.iter().filter(|o| text.contains(o.as_str())).collect();
    assert!(in_report.is_empty(), "no original value in the report: {in_report:?}");

    // A recording taken while new personal data is written holds it masked.
    let writes = tokio::spawn({
        let app = source.admin().await.expect("app");
        async move {
            for i in 0..30 {
                app.batch_execute(&format!(
                    "INSERT INTO users VALUES ({id}, 2, 21, 'Recorded.Person{i}@Example.net', 'Recorded Name {i}'); \
                     UPDATE users SET name = 'Renamed Person {i}' WHERE id = {id};",
                    id = 8000 + i
                ))
                .await
                .expect("write");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let rec = understudy::recording::take(
        &root.state(),
        &understudy::recording::RecordOptions {
            sandbox: meta.name.clone(),
            name: Some(SandboxName::parse("masked-peak").expect("name")),
            window: Duration::from_secs(3),
            ttl: Duration::from_secs(600),
        },
        &quiet,
    )
    .await
    .expect("record");
    writes.await.expect("writes");
    assert!(rec.transactions > 10, "{rec:?}");
    let mut stream = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(
            std::fs::File::open(understudy::recording::stream_path(&root.state(), &rec)).expect("stream"),
        ),
        &mut stream,
    )
    .expect("gunzip");
    let stream = String::from_utf8_lossy(&stream);
    let recorded = originals_without_phone(&admin).await;
    let in_stream: Vec<&String> = recorded.iter().filter(|o| stream.contains(o.as_str())).collect();
    assert!(
        in_stream.is_empty(),
        "no original value in the recording: {in_stream:?}"
    );
    assert!(!stream.contains("Recorded.Person") && !stream.contains("Renamed Person"));
    understudy::recording::delete(&root.state(), &rec.name)
        .await
        .expect("recording deleted");

    // A column the source adds to a masked table holds a filler and degrades the sandbox until it is classified.
    admin
        .batch_execute("ALTER TABLE users ADD COLUMN phone text; UPDATE users SET phone = '+1-555-' || id;")
        .await
        .expect("new column");
    sandbox::follow::follow_once(&opts.state_dir, &opts.name)
        .await
        .expect("follow");
    wait_caught_up(&source, &meta).await;
    sandbox::follow::follow_once(&opts.state_dir, &opts.name)
        .await
        .expect("follow");
    // The dry-runs restarted the sandbox's server (a template fork): a new session.
    let db = connect(&meta).await;
    let phones = count(&db, "SELECT count(phone) FROM users").await;
    assert_eq!(phones, 0, "the unclassified column's values are held back");
    let st = sandbox::status(&opts.state_dir, &opts.name).await.expect("status");
    assert_eq!(st.state, SandboxState::Degraded, "{:?}", st.reasons);
    assert!(
        st.drift
            .iter()
            .any(|d| d.contains("public.users.phone has no masking policy")),
        "the status names the column: {:?}",
        st.drift
    );
    let classified =
        MaskConfig::parse(&MASK.replace("name = \"fake-name\"\n", "name = \"fake-name\"\nphone = \"hash\"\n"))
            .expect("config");
    let changed = MaskConfig::parse(&MASK.replace("email = \"fake-email\"", "email = \"keep\"")).expect("config");
    let err = sandbox::masking::reclassify(&opts.state_dir, &opts.name, &changed)
        .await
        .expect_err("a given policy cannot change");
    assert!(
        err.to_string().contains("would change from fake-email to keep"),
        "{err}"
    );
    let done = sandbox::masking::reclassify(&opts.state_dir, &opts.name, &classified)
        .await
        .expect("classified");
    assert_eq!(done.classified, vec!["public.users.phone".to_string()]);
    sandbox::follow::follow_once(&opts.state_dir, &opts.name)
        .await
        .expect("follow");
    admin
        .batch_execute("UPDATE users SET phone = '+1-777-' || id WHERE id % 2 = 0")
        .await
        .expect("phones");
    wait_caught_up(&source, &meta).await;
    let st = sandbox::status(&opts.state_dir, &opts.name).await.expect("status");
    assert!(
        st.drift.is_empty() && st.state == SandboxState::Ready,
        "{:?} {:?}",
        st.state,
        st.reasons
    );
    let phones = count(&db, "SELECT count(phone) FROM users").await;
    assert!(phones > 50, "classified, the column's new values arrive ({phones})");
    let all = crate::originals(&admin).await;
    assert_eq!(leaks(&db, &all).await, Vec::<String>::new(), "masked, not as they are");
    // A table added to the publication later is not subscribed to: its rows would arrive unmasked. The stream
    // goes on past them.
    admin
        .batch_execute(
            "CREATE TABLE invites (id int PRIMARY KEY, email text); \
             ALTER TABLE invites OWNER TO understudy_replicator; \
             ALTER PUBLICATION understudy_masked ADD TABLE invites; \
             INSERT INTO invites VALUES (1, 'Invited.Person@Example.com');",
        )
        .await
        .expect("a new table");
    sandbox::follow::follow_once(&opts.state_dir, &opts.name)
        .await
        .expect("follow");
    wait_caught_up(&source, &meta).await;
    let st = sandbox::status(&opts.state_dir, &opts.name).await.expect("status");
    assert_eq!(st.state, SandboxState::Degraded, "{:?}", st.reasons);
    assert!(
        st.drift
            .iter()
            .any(|d| d.contains("table public.invites was added to the publication")),
        "{:?}",
        st.drift
    );
    let invites = count(&db, "SELECT count(*) FROM invites").await;
    assert_eq!(invites, 0, "the new table's rows do not reach the masked sandbox");
    admin
        .batch_execute("INSERT INTO invites VALUES (2, 'Second.Invite@Example.com')")
        .await
        .expect("another invite");
    wait_caught_up(&source, &meta).await;
    for m in [&meta, &plain] {
        sandbox::delete(&root.state(), &m.name, None, false)
            .await
            .expect("delete");
    }
    assert_eq!(
        our_objects(&source).await,
        (vec![], vec![]),
        "nothing left on the source"
    );
}

async fn originals_without_phone(source: &tokio_postgres::Client) -> Vec<String> {
    source
        .query(
            "SELECT email FROM users WHERE email IS NOT NULL UNION SELECT name FROM users WHERE name IS NOT NULL \
             UNION SELECT name FROM orgs UNION SELECT note FROM orders WHERE note IS NOT NULL",
            &[],
        )
        .await
        .expect("originals")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Shapes that must equal production's: `lower(email)` duplicate groups, exact duplicate groups, distinct values,
/// NULLs, the e-mail format and lengths.
async fn shape_values(db: &tokio_postgres::Client) -> Vec<i64> {
    let row = db
        .query_one(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM users WHERE email IS NOT NULL GROUP BY lower(email) \
                     HAVING count(*) > 1) g), \
                    (SELECT count(*) FROM (SELECT 1 FROM users WHERE email IS NOT NULL GROUP BY email \
                     HAVING count(*) > 1) g), \
                    (SELECT count(DISTINCT email) FROM users), (SELECT count(DISTINCT lower(email)) FROM users), \
                    (SELECT count(*) FROM users WHERE email IS NULL), \
                    (SELECT count(*) FROM users WHERE name IS NULL), \
                    (SELECT count(DISTINCT name) FROM users), (SELECT count(DISTINCT name) FROM orgs), \
                    (SELECT count(*) FROM users WHERE email NOT LIKE '%_@_%._%'), \
                    (SELECT sum(length(email)) FROM users)",
            &[],
        )
        .await
        .expect("shapes");
    (0..row.len()).map(|i| row.get::<_, i64>(i)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mask_configs_are_refused_with_nothing_made() {
    let root = TempRoot::new("masking-refused");
    let source = tenants::source(&root.path().join("source")).await.expect("source");
    let cases = [
        (
            MASK.replace("org_id = \"keep\"", "org_id = \"keep\"\nid = \"hash\""),
            "primary key or replica identity",
        ),
        (
            MASK.replace("org_id = \"keep\"", "org_id = \"hash\""),
            "is in foreign key",
        ),
        (MASK.replace("org_id = \"keep\"\n", ""), "has no policy for org_id"),
        (
            MASK.replace("[tables.orgs]\nname = \"hash\"", "[tables.orgs]\nname = \"null\""),
            "is NOT NULL",
        ),
        (
            MASK.replace("amount = \"keep\"", "amount = \"fake-name\""),
            "rewrites text",
        ),
        (
            MASK.replace("note = \"exclude\"", "note = \"exclude\"\nnope = \"keep\""),
            "does not exist",
        ),
        (format!("{MASK}\n[tables.nosuch]\nx = \"keep\"\n"), "does not replicate"),
    ];
    for (text, says) in cases {
        let mut opts = masked_options(&root, &source, "refused");
        opts.mask = Some(MaskConfig::parse(&text).expect("parses"));
        let err = sandbox::create(&opts, &quiet).await.expect_err("refused");
        assert!(matches!(err, SandboxError::Preflight(_)), "{says}: {err:?}");
        assert!(err.to_string().contains(says), "{says}: {err}");
        assert_eq!(our_objects(&source).await, (vec![], vec![]), "{says}: nothing made");
        assert!(root.state().sandbox_names().is_empty(), "{says}: nothing here");
    }
    // An existing publication that sends an excluded column is refused, with the column list to give it.
    source
        .admin()
        .await
        .expect("admin")
        .batch_execute("CREATE PUBLICATION tenant_pub FOR TABLE orgs, users, orders")
        .await
        .expect("publication");
    let mut opts = create_options(&root, &source, "refused", Replicate::Publication("tenant_pub".into()));
    opts.mask = Some(MaskConfig::parse(MASK).expect("config"));
    let err = sandbox::create(&opts, &quiet).await.expect_err("refused");
    assert!(err.to_string().contains("sends public.orders.note"), "{err}");
    assert!(
        err.to_string().contains("ALTER PUBLICATION \"tenant_pub\" SET TABLE"),
        "{err}"
    );
    assert_eq!(our_objects(&source).await.0, Vec::<String>::new(), "no slot made");
}

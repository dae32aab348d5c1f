//! `docs/errors.md` is the table of bad inputs, and this test runs every row of it: the command line (its exit
//! code and the message, whose fixed parts are the row's text around each `…`) and the agent's API (its status,
//! and the same message), then checks that nothing was left behind: no slot, publication or role on any source,
//! no sandbox directory. A row without a case here, or a case without its row, fails the test.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::*;
use fixtures::harness::*;
use fixtures::source::SourceServer;
use serde_json::{Value, json};
use understudy::sandbox::{self, StateDir};
use understudy::source::Replicate;

/// One row of `docs/errors.md`.
#[derive(Debug)]
struct Row {
    message: String,
    exit: i32,
    api: Option<u16>,
}

fn rows() -> BTreeMap<String, Row> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/errors.md"))
        .expect("docs/errors.md");
    let mut rows = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 5, "a row has id, input, message, exit, API: {line}");
        let id = cells[0].trim_matches('`').to_string();
        let message = cells[2].trim_matches('`').replace("\\|", "|");
        let exit = cells[3].parse().unwrap_or_else(|_| panic!("{id}: exit {:?}", cells[3]));
        let api = (cells[4] != "—").then(|| cells[4].parse().unwrap_or_else(|_| panic!("{id}: API {:?}", cells[4])));
        rows.insert(id, Row { message, exit, api });
    }
    rows
}

/// Whether `text` has the row's fixed parts, in order.
fn matches(pattern: &str, text: &str) -> bool {
    let mut rest = text;
    for part in pattern.split('…').filter(|p| !p.is_empty()) {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// What a case produced: the command line's output and, when the row has an API status, the API's answer.
struct Outcome {
    cli: Output,
    api: Option<(u16, Value)>,
}

fn check(id: &str, row: &Row, got: &Outcome) {
    let stderr = String::from_utf8_lossy(&got.cli.stderr);
    assert_eq!(
        got.cli.status.code(),
        Some(row.exit),
        "{id}: exit code; stderr: {stderr}"
    );
    assert!(
        matches(&row.message, &stderr),
        "{id}: {:?} not in stderr: {stderr}",
        row.message
    );
    assert!(
        !stderr.contains(fixtures::source::REPLICATOR_PASSWORD),
        "{id}: a password in {stderr}"
    );
    match (row.api, &got.api) {
        (Some(status), Some((got_status, body))) => {
            assert_eq!(*got_status, status, "{id}: API status: {body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                matches(&row.message, message),
                "{id}: {:?} not in the API's {body}",
                row.message
            );
        }
        (None, None) => {}
        (want, got) => panic!(
            "{id}: the row's API status is {want:?}, the case gave {:?}",
            got.as_ref().map(|g| g.0)
        ),
    }
}

fn create(state: &StateDir, name: &str, source: &str, publication: &str) -> Output {
    cli(state)
        .args(["sandbox", "create", name, "--publication", publication, "--no-progress"])
        .env("UNDERSTUDY_SOURCE", source)
        .output()
        .expect("run understudy")
}

async fn api_create(agent: &Agent, name: &str, source: &str, publication: &str) -> Option<(u16, Value)> {
    Some(
        agent
            .post(
                "/v1/sandboxes",
                &json!({"name": name, "source": source, "publication": publication}),
            )
            .await,
    )
}

async fn create_both(agent: &Agent, name: &str, source: &str, publication: &str) -> Outcome {
    Outcome {
        cli: create(&agent.state, name, source, publication),
        api: api_create(agent, name, source, publication).await,
    }
}

fn dry_run(state: &StateDir, args: &[&str]) -> Output {
    cli(state).arg("dry-run").args(args).output().expect("run understudy")
}

async fn roles(source: &SourceServer) -> Vec<String> {
    let admin = source.admin().await.expect("admin");
    let rows = admin
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%' ORDER BY 1",
            &[],
        )
        .await
        .expect("roles");
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_of_the_table_is_refused_and_leaves_nothing() {
    let root = TempRoot::new("errors");
    let state = root.state();
    let source = sample_source(&root, 500).await;
    source
        .admin()
        .await
        .expect("admin")
        .batch_execute(
            "CREATE TABLE no_pk (v text); CREATE PUBLICATION pub_nopk FOR TABLE no_pk;
             CREATE TABLE secret (id int PRIMARY KEY); CREATE PUBLICATION pub_secret FOR TABLE secret;
             REVOKE ALL ON secret FROM understudy_replicator;
             ALTER TABLE orders OWNER TO understudy_replicator; GRANT CREATE ON DATABASE shop TO understudy_replicator;",
        )
        .await
        .expect("bad tables");
    let replica = SourceServer::start(&root.path().join("replica"), "shop", &[("wal_level", "replica")])
        .await
        .expect("wal_level = replica source");
    replica.load_sample(50, "shop_pub").await.expect("sample");
    let full = SourceServer::start(
        &root.path().join("full"),
        "shop",
        &[("max_replication_slots", "1"), ("max_wal_senders", "0")],
    )
    .await
    .expect("a source with no free slot");
    full.load_sample(50, "shop_pub").await.expect("sample");
    full.admin()
        .await
        .expect("admin")
        .batch_execute("SELECT pg_create_logical_replication_slot('someone_elses', 'pgoutput')")
        .await
        .expect("occupy the only slot");
    let sources = [&source, &replica, &full];
    let mut roles_before = Vec::new();
    for s in sources {
        roles_before.push(roles(s).await);
    }

    // A sandbox for the dry-run rows, and the agent whose API the rows also call.
    let opts = create_options(&root, &source, "shop", Replicate::Publication("shop_pub".into()));
    let meta = sandbox::create(&opts, &quiet).await.expect("sandbox shop");
    let agent = Agent::start(&state, &[]).await;
    let good = source.replicator_conninfo().to_secret_string();
    let mut wrong = source.replicator_conninfo();
    wrong.set("password", "not-the-password");
    let mut closed = source.replicator_conninfo();
    closed.set("port", &understudy::pg::cluster::free_port().expect("port").to_string());
    let good_sql = root.path().join("ok.sql");
    std::fs::write(&good_sql, "ALTER TABLE orders ADD COLUMN channel text;\n").expect("ok.sql");
    let bad_sql = root.path().join("typo.sql");
    std::fs::write(
        &bad_sql,
        "ALTER TABLE orders ADD COLUMN a text;\nALTER TABLE orders ADD COLUM b text;\n",
    )
    .expect("typo.sql");
    let (good_sql, bad_sql) = (good_sql.to_string_lossy(), bad_sql.to_string_lossy());
    let up = |sql: &str| json!({"sandbox": "shop", "up": {"name": "up.sql", "sql": sql}});

    let rows = rows();
    let mut ran = Vec::new();
    for (id, row) in &rows {
        let got = match id.as_str() {
            "bad-conninfo" => create_both(&agent, "bad", "host", "shop_pub").await,
            "wrong-password" => create_both(&agent, "bad", &wrong.to_secret_string(), "shop_pub").await,
            "unreachable-host" => create_both(&agent, "bad", &closed.to_secret_string(), "shop_pub").await,
            "wal-level" => {
                let info = replica.replicator_conninfo().to_secret_string();
                create_both(&agent, "bad", &info, "shop_pub").await
            }
            "replica-identity" => create_both(&agent, "bad", &good, "pub_nopk").await,
            "missing-privileges" => create_both(&agent, "bad", &good, "pub_secret").await,
            "no-free-slot" => {
                let info = full.replicator_conninfo().to_secret_string();
                create_both(&agent, "bad", &info, "shop_pub").await
            }
            "malformed-sql" => Outcome {
                cli: dry_run(&state, &["--sandbox", "shop", "--up", &bad_sql]),
                api: Some(
                    agent
                        .post(
                            "/v1/dryruns",
                            &up("ALTER TABLE orders ADD COLUMN a text;\nALTER TABLE orders ADD COLUM b text;\n"),
                        )
                        .await,
                ),
            },
            "missing-file" => Outcome {
                cli: dry_run(&state, &["--sandbox", "shop", "--up", "/nonexistent/up.sql"]),
                api: None,
            },
            "invalid-schedule" => {
                let mut body = up("SELECT 1;");
                body["schedule"] = json!({"at": "25:00"});
                Outcome {
                    cli: dry_run(&state, &["--sandbox", "shop", "--up", &good_sql, "--at", "25:00"]),
                    api: Some(agent.post("/v1/dryruns", &body).await),
                }
            }
            "unknown-sandbox" => Outcome {
                cli: dry_run(&state, &["--sandbox", "ghost", "--up", &good_sql]),
                api: Some(
                    agent
                        .post("/v1/dryruns", &json!({"sandbox": "ghost", "up": {"sql": "SELECT 1;"}}))
                        .await,
                ),
            },
            "full-state-dir" => {
                let Some(mount) = LoopMount::new(root.path(), "ext4", 40) else {
                    panic!("the full state directory row needs root (a small loop-mounted filesystem)");
                };
                let small = mount.state();
                let other = Agent::start(&small, &[]).await;
                let got = Outcome {
                    cli: create(&small, "bad", &good, "shop_pub"),
                    api: api_create(&other, "bad", &good, "shop_pub").await,
                };
                assert!(
                    small.sandbox_names().is_empty(),
                    "full-state-dir: a sandbox was left on the small disk"
                );
                got
            }
            "unpublishable-filter" => {
                let filter = "id > 0 AND now() > '2020-01-01'";
                Outcome {
                    cli: cli(&state)
                        .args(["sandbox", "create", "bad", "--tables", "public.orders", "--no-progress"])
                        .args(["--subset", filter])
                        .env("UNDERSTUDY_SOURCE", &good)
                        .output()
                        .expect("run understudy"),
                    api: Some(
                        agent
                            .post(
                                "/v1/sandboxes",
                                &json!({"name": "bad", "source": good, "tables": ["public.orders"],
                                        "subset": {"key": filter}}),
                            )
                            .await,
                    ),
                }
            }
            "masked-key" => {
                let mask = root.path().join("mask.toml");
                std::fs::write(&mask, "[tables.customers]\nid = \"hash\"\n").expect("mask.toml");
                Outcome {
                    cli: cli(&state)
                        .args(["sandbox", "create", "bad", "--publication", "shop_pub", "--no-progress"])
                        .arg("--mask-config")
                        .arg(&mask)
                        .env("UNDERSTUDY_SOURCE", &good)
                        .output()
                        .expect("run understudy"),
                    api: Some(
                        agent
                            .post(
                                "/v1/sandboxes",
                                &json!({"name": "bad", "source": good, "publication": "shop_pub",
                                        "mask": {"tables": {"customers": {"id": "hash"}}}}),
                            )
                            .await,
                    ),
                }
            }
            "second-agent" => Outcome {
                cli: cli(&state)
                    .args(["agent", "--listen", "127.0.0.1:0", "--token-file"])
                    .arg(state.root().join("test.token"))
                    .output()
                    .expect("a second agent"),
                api: None,
            },
            other => panic!("docs/errors.md has row {other}, which this test does not run"),
        };
        check(id, row, &got);
        eprintln!(
            "{id}: exit {:?}, API {:?}",
            got.cli.status.code(),
            got.api.as_ref().map(|a| a.0)
        );
        ran.push(id.clone());
    }
    let expected = [
        "bad-conninfo",
        "full-state-dir",
        "invalid-schedule",
        "malformed-sql",
        "masked-key",
        "missing-file",
        "missing-privileges",
        "no-free-slot",
        "replica-identity",
        "second-agent",
        "unknown-sandbox",
        "unpublishable-filter",
        "unreachable-host",
        "wal-level",
        "wrong-password",
    ];
    assert_eq!(ran, expected, "every bad input of the issue has its row");

    // A mask config for a sandbox that is not masked: its rows arrived unmasked, so masking is a creation's.
    let (status, body) = agent
        .patch(
            "/v1/sandboxes/shop",
            &json!({"mask": {"tables": {"orders": {"customer_id": "keep"}}}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("sandbox shop is not masked"), "{body}");

    // Nothing left behind: no sandbox but shop, and on the sources only shop's slot.
    assert_eq!(state.sandbox_names().len(), 1, "only sandbox shop is here");
    assert!(
        !state
            .sandbox_dir(&understudy::source::SandboxName::parse("bad").expect("name"))
            .exists()
    );
    let (slots, pubs) = our_objects(&source).await;
    assert_eq!(slots, vec![meta.slot.clone()], "only shop's slot on the source");
    assert!(pubs.is_empty(), "{pubs:?}");
    for (s, before) in sources.iter().zip(&roles_before) {
        assert_eq!(&roles(s).await, before, "roles changed on a source");
    }
    for s in [&replica, &full] {
        assert_eq!(our_objects(s).await, (vec![], vec![]));
    }
    let forks: Vec<_> = std::fs::read_dir(state.root().join("forks"))
        .into_iter()
        .flatten()
        .collect();
    assert!(forks.is_empty(), "no fork was made by a refused dry-run");
    drop(agent);
}

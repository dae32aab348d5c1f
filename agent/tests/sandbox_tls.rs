//! TLS to the source: libpq's sslmode semantics for the agent's own connections, pg_dump/psql and the
//! subscription; a source that refuses plain connections; a wrong root certificate is refused with nothing left.

use fixtures::harness::*;
use fixtures::source::SourceServer;
use fixtures::writer::Writer;
use understudy::sandbox;
use understudy::source::Replicate;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_source_with_require_and_verify_full() {
    let root = TempRoot::new("tls");
    let certs = root.path().join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (ca, cert, key) = ca_and_server_cert(&certs);
    let other = certs.join("other");
    std::fs::create_dir_all(&other).expect("other dir");
    let (other_ca, _, _) = ca_and_server_cert(&other);
    let source = SourceServer::start(
        &root.path().join("source"),
        "shop",
        &[
            ("ssl", "on"),
            ("ssl_cert_file", cert.as_str()),
            ("ssl_key_file", key.as_str()),
        ],
    )
    .await
    .expect("source");
    source.load_sample(5_000, "shop_pub").await.expect("sample");
    // Plain TCP is refused from now on.
    std::fs::write(
        source.cluster.data_dir().join("pg_hba.conf"),
        "local all postgres trust\nlocal all all scram-sha-256\nhostssl all all 127.0.0.1/32 scram-sha-256\n\
         hostnossl all all 127.0.0.1/32 reject\n",
    )
    .expect("hba");
    source
        .admin()
        .await
        .expect("admin")
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .expect("reload");

    // sslmode=disable: refused by the server, with its reason, and nothing is created.
    let mut opts = create_options(&root, &source, "plain", Replicate::Publication("shop_pub".into()));
    opts.source.set("sslmode", "disable");
    let err = sandbox::create(&opts, &quiet).await.expect_err("plain refused");
    assert!(err.to_string().contains("no encryption"), "{err}");
    assert_eq!(our_objects(&source).await, (vec![], vec![]));

    // A root certificate that did not sign the server's: refused before anything is created.
    let mut opts = create_options(&root, &source, "wrongca", Replicate::Publication("shop_pub".into()));
    opts.source.set("sslmode", "verify-full");
    opts.source.set("sslrootcert", &other_ca);
    let err = sandbox::create(&opts, &quiet).await.expect_err("wrong CA");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    assert_eq!(our_objects(&source).await, (vec![], vec![]));

    // verify-full with the right root: the agent, pg_dump, psql and the subscription all use TLS.
    let mut opts = create_options(&root, &source, "secure", Replicate::Publication("shop_pub".into()));
    opts.source.set("sslmode", "verify-full");
    opts.source.set("sslrootcert", &ca);
    let writer = Writer::start(source.admin().await.expect("writer"), 200);
    let meta = sandbox::create(&opts, &quiet).await.expect("create over TLS");
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    writer.stop().await.expect("writer");
    wait_caught_up(&source, &meta).await;
    assert_parity(&source, &meta, &sample_tables()).await;
    let ssl_walsenders: i64 = source
        .admin()
        .await
        .expect("admin")
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.backend_type = 'walsender' AND s.ssl",
            &[],
        )
        .await
        .expect("pg_stat_ssl")
        .get(0);
    assert_eq!(ssl_walsenders, 1, "the subscription streams over TLS");
    let st = sandbox::status(&opts.state_dir, &opts.name)
        .await
        .expect("status over TLS");
    assert_eq!(st.state, sandbox::SandboxState::Ready, "{:?}", st.reasons);

    // And the unverified sslmode=require, from the command line (delete with --source after the state is gone).
    let mut require = source.replicator_conninfo();
    require.set("sslmode", "require");
    let client = understudy::pg::connect::connect_source(&require, "test")
        .await
        .expect("require");
    let ssl: bool = client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await
        .expect("q")
        .get(0);
    assert!(ssl);
    sandbox::delete(&opts.state_dir, &opts.name, None, false)
        .await
        .expect("delete");
    assert_eq!(our_objects(&source).await, (vec![], vec![]));
}

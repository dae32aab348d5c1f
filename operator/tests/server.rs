//! The real API server (1.20, with `crds/` installed by the local cluster) accepts the example manifests of
//! `docs/examples/kubernetes/`, shows them through the printer columns and short names, and refuses a DryRun that
//! breaks the schema, naming the field. Needs `bash .ci/kube-build` once.

use std::path::Path;

use fixtures::harness::TempRoot;
use local_cluster::{LocalCluster, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_accepts_the_examples_and_refuses_a_broken_dry_run() {
    let root = TempRoot::new("server");
    let cluster = LocalCluster::start(Options::new(root.path().join("k8s")).no_operator())
        .await
        .expect("local cluster");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/kubernetes");
    let out = cluster
        .kubectl(&["apply", "--validate=false", "-f", &examples.display().to_string()])
        .await
        .expect("the server accepts every example");
    for created in [
        "secret/shop-production created",
        "sandbox.understudy.dev/shop created",
        "sandbox.understudy.dev/shop-tenant3 created",
        "dryrun.understudy.dev/orders-flag created",
        "dryrun.understudy.dev/orders-index-nightly created",
        "dryrun.understudy.dev/orders-index-peak created",
        "configmap/migration-042 created",
    ] {
        assert!(out.contains(created), "{created} missing from:\n{out}");
    }
    let listed = cluster
        .kubectl(&["get", "sbx,dr", "-o", "name"])
        .await
        .expect("kubectl get sbx,dr");
    assert_eq!(
        listed.lines().collect::<Vec<_>>(),
        vec![
            "sandbox.understudy.dev/shop",
            "sandbox.understudy.dev/shop-tenant3",
            "dryrun.understudy.dev/orders-flag",
            "dryrun.understudy.dev/orders-index-nightly",
            "dryrun.understudy.dev/orders-index-peak"
        ],
        "{listed}"
    );
    let by_category = cluster
        .kubectl(&["get", "understudy", "-o", "name"])
        .await
        .expect("kubectl get understudy");
    assert_eq!(by_category.lines().count(), 5, "{by_category}");
    let columns = cluster.kubectl(&["get", "dr"]).await.expect("kubectl get dr");
    let header = columns.lines().next().unwrap_or_default();
    for column in ["SANDBOX", "PHASE", "VERDICT", "AGE"] {
        assert!(header.contains(column), "{column} missing from {header}");
    }

    let bad = root.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: understudy.dev/v1alpha1\nkind: DryRun\nmetadata: {name: bad}\nspec:\n  sandbox: shop\n  up: SELECT 1;\n  workers: four\n",
    )
    .expect("write");
    let refused = cluster
        .kubectl(&["apply", "--validate=false", "-f", &bad.display().to_string()])
        .await
        .expect_err("a DryRun with workers: four is refused");
    assert!(refused.to_string().contains("spec.workers"), "{refused:#}");
    cluster.shutdown().await.expect("shutdown");
}

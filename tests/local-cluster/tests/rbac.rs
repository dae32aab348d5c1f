//! RBAC is real: the operator user can do exactly what `rbac.yaml` grants in its namespace (asked of the API server
//! with SelfSubjectAccessReviews), real requests outside it are forbidden, and a verb missing from the Role makes a
//! request fail. Dropping the cluster (no `shutdown()`) with an agent running leaves nothing running. Needs
//! `bash .ci/kube-build` once and a built `understudy` binary.

mod common;

use anyhow::{Result, bail, ensure};
use common::understudy_bin;
use fixtures::harness::TempRoot;
use fixtures::kube::OPERATOR_USER;
use k8s_openapi::ByteString;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use local_cluster::{LocalCluster, Options, procs};

/// What the operator needs, namespaced: (group, resource, granted verbs).
const GRANTS: &[(&str, &str, &[&str])] = &[
    (
        "understudy.dev",
        "sandboxes",
        &["get", "list", "watch", "patch", "update"],
    ),
    (
        "understudy.dev",
        "dryruns",
        &["get", "list", "watch", "patch", "update"],
    ),
    ("understudy.dev", "sandboxes/status", &["get", "patch", "update"]),
    ("understudy.dev", "dryruns/status", &["get", "patch", "update"]),
    ("understudy.dev", "sandboxes/finalizers", &["update"]),
    ("understudy.dev", "dryruns/finalizers", &["update"]),
    (
        "apps",
        "statefulsets",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    ("", "services", &["get", "list", "watch", "create", "patch", "delete"]),
    ("", "configmaps", &["get", "list", "watch", "create", "patch", "delete"]),
    (
        "networking.k8s.io",
        "networkpolicies",
        &["get", "create", "patch", "delete"],
    ),
    ("", "secrets", &["get", "create", "patch"]),
    ("", "pods", &["get", "list", "watch"]),
    ("events.k8s.io", "events", &["create", "patch"]),
];
const VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_user_gets_exactly_its_role() {
    let tmp = TempRoot::new("local-cluster-rbac");
    let options = Options::new(tmp.path().join("cluster"))
        .understudy_bin(understudy_bin())
        .no_operator();
    let cluster = LocalCluster::start(options).await.expect("start the local cluster");
    let dir = cluster.dir().to_path_buf();
    let checked = checks(&cluster).await;
    if let Err(e) = &checked {
        eprintln!("{e:#}\n{}", cluster.logs());
    }
    // Dropped without `shutdown()`, with an agent running: Drop stops everything too.
    let running = run_an_agent(&cluster).await;
    let pids = cluster.container_pids();
    drop(cluster);
    let left = procs::naming(&dir);
    assert!(left.is_empty(), "left running after drop: {left:?}");
    assert!(
        pids.iter().all(|p| !procs::alive(*p)),
        "a container process survived the drop: {pids:?}"
    );
    checked.expect("RBAC checks");
    running.expect("run an agent before the drop");
    assert!(!pids.is_empty(), "no container process ran before the drop");
}

async fn run_an_agent(cluster: &LocalCluster) -> Result<()> {
    common::create_token_secret(&cluster.client(), cluster.namespace(), "agent-token").await?;
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("dropped".into()),
            ..Default::default()
        },
        spec: Some(common::agent_spec(
            "agent-token",
            "scratch",
            "/scratch",
            "/scratch/state",
            true,
        )),
        ..Pod::default()
    };
    Api::<Pod>::namespaced(cluster.client(), cluster.namespace())
        .create(&PostParams::default(), &pod)
        .await?;
    cluster
        .wait_pod_ready("dropped", std::time::Duration::from_secs(60))
        .await?;
    Ok(())
}

async fn checks(cluster: &LocalCluster) -> Result<()> {
    let ns = cluster.namespace();
    let operator = cluster.operator_client().await?;
    let admin = cluster.client();

    // The Role, verb by verb, as the server decides it.
    let mut wrong = Vec::new();
    for (group, resource, granted) in GRANTS {
        for verb in VERBS {
            let allowed = can_i(&operator, ns, group, resource, verb).await?;
            if allowed != granted.contains(verb) {
                wrong.push(format!("{verb} {resource}.{group}: allowed={allowed}"));
            }
        }
    }
    ensure!(
        wrong.is_empty(),
        "the operator's permissions differ from its Role: {wrong:?}"
    );
    for (group, resource) in [
        ("", "secrets"),
        ("understudy.dev", "sandboxes"),
        ("apps", "statefulsets"),
    ] {
        ensure!(
            !can_i(&operator, "default", group, resource, "get").await?,
            "get {resource} in default is allowed"
        );
    }
    ensure!(
        !can_i(&operator, ns, "", "nodes", "list").await?,
        "list nodes is allowed"
    );

    // Real requests. Secrets in another namespace: forbidden, even by name.
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some("source-credentials".into()),
            ..Default::default()
        },
        data: Some([("password".to_string(), ByteString(b"pw".to_vec()))].into()),
        ..Secret::default()
    };
    for namespace in ["default", ns] {
        Api::<Secret>::namespaced(admin.clone(), namespace)
            .create(&PostParams::default(), &secret)
            .await?;
    }
    let elsewhere: Api<Secret> = Api::namespaced(operator.clone(), "default");
    expect_forbidden(
        elsewhere.list(&ListParams::default()).await.map(|_| ()),
        "list secrets in default",
    )?;
    expect_forbidden(
        elsewhere.get("source-credentials").await.map(|_| ()),
        "get a secret in default",
    )?;
    // In its namespace: reading one by name is allowed.
    let here: Api<Secret> = Api::namespaced(operator.clone(), ns);
    let got = here.get("source-credentials").await?;
    ensure!(
        got.data.is_some_and(|d| d.contains_key("password")),
        "the secret read has no data"
    );
    // ... a verb missing from the Role fails: listing (the operator may not enumerate the namespace's Secrets).
    expect_forbidden(
        here.list(&ListParams::default()).await.map(|_| ()),
        "list secrets in its namespace",
    )?;
    expect_forbidden(
        here.delete("source-credentials", &Default::default()).await.map(|_| ()),
        "delete a secret",
    )?;
    // Listing the operator's own resources works (the CRDs are installed and granted).
    let sandboxes = cluster.kubectl_as_operator(&["get", "sandboxes", "-o", "name"]).await?;
    ensure!(sandboxes.trim().is_empty(), "sandboxes: {sandboxes:?}");
    let cluster_wide = cluster.kubectl_as_operator(&["get", "sandboxes", "-A"]).await;
    ensure!(
        cluster_wide.is_err(),
        "listing sandboxes in every namespace is allowed: {cluster_wide:?}"
    );
    Ok(())
}

/// Whether the operator may `verb` `resource` (`name/subresource` allowed) of `group` in `namespace`.
async fn can_i(client: &Client, namespace: &str, group: &str, resource: &str, verb: &str) -> Result<bool> {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_string())),
        None => (resource, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                verb: Some(verb.into()),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

fn expect_forbidden(result: kube::Result<()>, what: &str) -> Result<()> {
    match result {
        Err(kube::Error::Api(s)) if s.code == 403 => {
            ensure!(
                s.message.contains(OPERATOR_USER),
                "{what}: forbidden for another user: {}",
                s.message
            );
            Ok(())
        }
        Err(e) => bail!("{what}: failed, but not as forbidden: {e}"),
        Ok(()) => bail!("{what}: allowed"),
    }
}

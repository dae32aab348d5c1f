//! The library starts the operator given to it (here a stand-in script) as the operator user, and a test can kill
//! it (a crash: its whole process group goes) and restart it with the same command; shutdown stops it.
//! Needs `bash .ci/kube-build` once and a built `understudy` binary.

mod common;

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use common::{group_members, stand_in_pgid, understudy_bin, wait_for_file, write_stand_in};
use fixtures::harness::TempRoot;
use local_cluster::{LocalCluster, Options, procs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_is_started_killed_and_restarted() {
    let tmp = TempRoot::new("local-cluster-operator");
    let dir = tmp.path().join("cluster");
    std::fs::create_dir_all(&dir).expect("create the cluster directory");
    let script = write_stand_in(&dir);
    let mut options = Options::new(&dir)
        .understudy_bin(understudy_bin())
        .operator_bin(&script);
    options.operator_args = vec!["--extra".into()];
    options.operator_env = vec![("RUST_LOG".into(), "debug".into())];
    let mut cluster = LocalCluster::start(options).await.expect("start the local cluster");
    let checked = checks(&mut cluster).await;
    if let Err(e) = &checked {
        eprintln!("{e:#}\n{}", cluster.logs());
    }
    let pgid = stand_in_pgid(&dir);
    let dir = cluster.dir().to_path_buf();
    cluster.shutdown().await.expect("shut down");
    assert!(
        procs::naming(&dir).is_empty(),
        "left running: {:?}",
        procs::naming(&dir)
    );
    if let Some(pgid) = pgid {
        assert!(
            group_members(pgid).is_empty(),
            "the restarted stand-in's group survived the shutdown"
        );
    }
    checked.expect("operator checks");
}

async fn checks(cluster: &mut LocalCluster) -> Result<()> {
    let out = cluster.dir().join("stand-in.out");
    let report = tokio::task::block_in_place(|| wait_for_file(&out, Duration::from_secs(60)))?;
    ensure!(
        report.contains("args: --namespace understudy --agent-image understudy:local --listen 127.0.0.1:0 --extra"),
        "{report}"
    );
    ensure!(report.contains("sandboxes: ok"), "{report}");
    let first = stand_in_pgid(cluster.dir()).context("no pgid")?;
    ensure!(
        matches!(cluster.operator_state(), Some(Ok(pid)) if pid == first),
        "{:?}",
        cluster.operator_state()
    );

    // Killed: gone at once, with its children (the script's `sleep`).
    std::fs::remove_file(&out)?;
    cluster.kill_operator();
    ensure!(
        matches!(cluster.operator_state(), Some(Err(_))),
        "still running: {:?}",
        cluster.operator_state()
    );
    // SIGKILL to the group is delivered at once; its members leave /proc once the kernel has reaped them, which
    // on a loaded machine takes a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !group_members(first).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        group_members(first).is_empty(),
        "the killed operator's group: {:?}",
        group_members(first)
    );

    // Restarted: the same command again, a new process.
    cluster.restart_operator()?;
    let report = tokio::task::block_in_place(|| wait_for_file(&out, Duration::from_secs(60)))?;
    let second = stand_in_pgid(cluster.dir()).context("no pgid")?;
    ensure!(second != first, "the same process after a restart");
    ensure!(report.contains("--extra"), "{report}");
    let log = std::fs::read_to_string(cluster.dir().join("logs/operator.log"))?;
    ensure!(
        log.matches("stand-in operator running").count() == 2,
        "operator.log: {log}"
    );
    Ok(())
}

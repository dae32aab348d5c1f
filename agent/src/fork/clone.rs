//! Forks of a stopped fork (a recording's start point): the start point's files copied by its own strategy (a
//! btrfs snapshot of its subvolume, a reflink or plain copy of its data directory, or a template copy of its
//! database), then started. The start point was detached and its sequences moved when it was made, and its
//! server was stopped cleanly, so a clone needs neither a pause of the sandbox nor a capture slot: it starts at
//! exactly the start point.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::meta::{ForkError, ForkMeta, ForkOptions, ForkPhase, ForkTimings, create_dir_with, fork_dir};
use super::{Strategy, capture_slot_name, fork_cluster_config, remove};
use crate::pg::cluster::Cluster;
use crate::pg::{PgBinaries, PgError, quote_ident};
use crate::sandbox::{SandboxMeta, StateDir, cluster_of};
use crate::source::SandboxName;

/// Makes forks `names` of the stopped fork `start`, started and ready; what was made is removed on failure.
pub async fn clone_stopped(
    state: &StateDir,
    start: &ForkMeta,
    opts: &ForkOptions,
    names: &[SandboxName],
    say: &(dyn Fn(&str) + Sync),
) -> Result<Vec<ForkMeta>, ForkError> {
    let sandbox = SandboxMeta::load(&state.sandbox_dir(&start.sandbox))?;
    let mut made: Vec<(ForkMeta, PathBuf)> = Vec::new();
    let result = async {
        for name in names {
            let t = Instant::now();
            let dir = fork_dir(state, name);
            let now = jiff::Timestamp::now();
            let mut meta = ForkMeta {
                name: name.clone(),
                sandbox: start.sandbox.clone(),
                sandbox_generation: start.sandbox_generation,
                phase: ForkPhase::Creating,
                strategy: start.strategy,
                strategy_reason: format!("a copy of {} ({})", start.name, start.strategy.as_str()),
                creator_pid: std::process::id(),
                owner_pid: opts.owner_pid,
                lsn: start.lsn,
                capture_slot: capture_slot_name(name),
                database: if start.strategy.separate_server() {
                    start.database.clone()
                } else {
                    format!("fork_{}", name.as_str().replace('-', "_"))
                },
                cluster: start.strategy.separate_server().then(|| fork_cluster_config(&dir)),
                created_at: now,
                expires_at: now
                    .checked_add(
                        jiff::SignedDuration::try_from(opts.ttl).unwrap_or(jiff::SignedDuration::from_hours(4)),
                    )
                    .unwrap_or(now),
                timings: ForkTimings::default(),
            };
            create_dir_with(&dir, &meta)?;
            made.push((meta.clone(), dir.clone()));
            copy(&sandbox, start, &meta, state).await?;
            meta.timings.copy_ms = t.elapsed().as_millis() as u64;
            if let Some(config) = meta.cluster.clone() {
                let cluster = Cluster::adopt(PgBinaries::locate()?, crate::pg::os_user::RunAs::detect()?, config)?;
                cluster.start().await?;
            }
            meta.timings.total_ms = t.elapsed().as_millis() as u64;
            meta.phase = ForkPhase::Ready;
            meta.save(&dir)?;
            say(&format!(
                "fork {name} of {} (start point {}) ready in {} ms",
                start.name,
                start.lsn.map(|l| l.to_string()).unwrap_or_default(),
                meta.timings.total_ms
            ));
            if let Some(last) = made.last_mut() {
                last.0 = meta.clone();
            }
        }
        Ok::<_, ForkError>(())
    }
    .await;
    match result {
        Ok(()) => Ok(made.into_iter().map(|(m, _)| m).collect()),
        Err(e) => {
            for (meta, dir) in &made {
                let _ = remove(state, meta, dir).await;
            }
            Err(e)
        }
    }
}

/// Copies the start point's data into fork `meta`.
async fn copy(sandbox: &SandboxMeta, start: &ForkMeta, meta: &ForkMeta, state: &StateDir) -> Result<(), ForkError> {
    let src = fork_dir(state, &start.name).join("pgdata");
    let dst = fork_dir(state, &meta.name).join("pgdata");
    match start.strategy {
        Strategy::BtrfsSnapshot => {
            let mut snapshot = tokio::process::Command::new("btrfs");
            snapshot.args(["subvolume", "snapshot"]).arg(&src).arg(&dst);
            super::copy::run("btrfs subvolume snapshot", &mut snapshot).await
        }
        Strategy::Reflink | Strategy::Copy => {
            let reflink = start.strategy == Strategy::Reflink;
            let mut cmd = tokio::process::Command::new("cp");
            cmd.arg("-a")
                .arg(if reflink { "--reflink=always" } else { "--reflink=never" })
                .arg(&src)
                .arg(&dst);
            super::copy::run(if reflink { "cp --reflink=always" } else { "cp -a" }, &mut cmd).await
        }
        Strategy::Template => {
            let admin = cluster_of(sandbox)?
                .connect(crate::sandbox::admin_database(&sandbox.database))
                .await?;
            let sql = format!(
                "CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY",
                quote_ident(&meta.database),
                quote_ident(&start.database)
            );
            // Nobody connects to a start point but another clone's copy finishing: retry while it is in use.
            let started = Instant::now();
            loop {
                match admin.batch_execute(&sql).await {
                    Ok(()) => return Ok(()),
                    Err(e)
                        if e.code().is_some_and(|c| c.code() == "55006")
                            && started.elapsed() < Duration::from_secs(30) =>
                    {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        return Err(PgError::Sql {
                            context: "CREATE DATABASE ... TEMPLATE (the start point)".into(),
                            source: e,
                        }
                        .into());
                    }
                }
            }
        }
    }
}

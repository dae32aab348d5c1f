//! The copy inside the apply pause: the capture slot at the fork point, then the data by the chosen strategy.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::Strategy;
use super::meta::{ForkError, ForkMeta, io};
use crate::pg::{PgError, quote_ident};
use crate::sandbox::SandboxMeta;

pub(super) async fn capture_and_copy(
    sandbox: &SandboxMeta,
    client: Client,
    admin: &Client,
    set: &mut [(ForkMeta, PathBuf)],
) -> Result<(), ForkError> {
    // Every capture slot is created while nothing changes the sandbox: they all start at the same point.
    for (meta, dir) in set.iter_mut() {
        let t = Instant::now();
        let lsn: String = client
            .query_one(
                "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&meta.capture_slot],
            )
            .await
            .map_err(PgError::sql("creating the capture slot on the sandbox"))?
            .get(0);
        meta.timings.capture_slot_ms = t.elapsed().as_millis() as u64;
        meta.lsn = Some(
            lsn.parse()
                .map_err(|e: crate::lsn::ParseLsnError| ForkError::Corrupt(e.to_string()))?,
        );
        meta.save(dir)?;
    }
    // A template copy needs the sandbox's database to itself.
    drop(client);
    for (meta, dir) in set.iter_mut() {
        copy_one(sandbox, admin, meta, dir).await?;
    }
    Ok(())
}

async fn copy_one(sandbox: &SandboxMeta, admin: &Client, meta: &mut ForkMeta, dir: &Path) -> Result<(), ForkError> {
    let copy_started = Instant::now();
    let src = &sandbox.cluster.data_dir;
    let dst = dir.join("pgdata");
    match meta.strategy {
        Strategy::BtrfsSnapshot => {
            admin
                .batch_execute("CHECKPOINT")
                .await
                .map_err(PgError::sql("checkpoint in the pause"))?;
            let mut snapshot = tokio::process::Command::new("btrfs");
            snapshot.args(["subvolume", "snapshot"]).arg(src).arg(&dst);
            run("btrfs subvolume snapshot", &mut snapshot).await?;
        }
        Strategy::Reflink | Strategy::Copy => {
            let reflink = meta.strategy == Strategy::Reflink;
            admin
                .query("SELECT pg_backup_start('understudy-fork', true)", &[])
                .await
                .map_err(PgError::sql("starting the backup window"))?;
            // Everything but the WAL now; the WAL once the backup window has ended (it must reach the backup's
            // end), so that it is copied once.
            let owner = crate::pg::os_user::RunAs::detect()?;
            let copied = copy_dir_without_wal(src, &dst, reflink, &owner).await;
            let stopped = admin
                .query_one("SELECT labelfile, spcmapfile FROM pg_backup_stop(false)", &[])
                .await
                .map_err(PgError::sql("ending the backup window"));
            copied?;
            let row = stopped?;
            let label: String = row.get(0);
            let spcmap: String = row.get(1);
            copy_dir(&src.join("pg_wal"), &dst.join("pg_wal"), reflink).await?;
            std::fs::write(dst.join("backup_label"), label).map_err(io("writing backup_label"))?;
            if !spcmap.is_empty() {
                std::fs::write(dst.join("tablespace_map"), spcmap).map_err(io("writing tablespace_map"))?;
            }
            if let Some(cluster) = meta.own_cluster()? {
                for f in ["backup_label", "tablespace_map"] {
                    let p = dst.join(f);
                    if p.exists() {
                        cluster.run_as().own(&p)?;
                    }
                }
            }
        }
        Strategy::Template => {
            let sql = format!(
                "CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY",
                quote_ident(&meta.database),
                quote_ident(&sandbox.database)
            );
            let started = Instant::now();
            loop {
                match admin.batch_execute(&sql).await {
                    Ok(()) => break,
                    // 55006: the template is being accessed by other users. PostgreSQL itself waits up to 5 s for
                    // them to leave before it says so.
                    Err(e)
                        if e.code().is_some_and(|c| c.code() == "55006")
                            && started.elapsed() < Duration::from_secs(30) =>
                    {
                        // Then end the other sessions on the sandbox's database (readers of ours or of a person):
                        // the template copy needs it to itself, and the pause must stay short.
                        if started.elapsed() >= Duration::from_secs(2) {
                            admin
                                .query(
                                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                                    &[&sandbox.database],
                                )
                                .await
                                .map_err(PgError::sql("ending sessions on the template database"))?;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => {
                        return Err(PgError::Sql {
                            context: "CREATE DATABASE ... TEMPLATE".into(),
                            source: e,
                        }
                        .into());
                    }
                }
            }
        }
    }
    meta.timings.copy_ms = copy_started.elapsed().as_millis() as u64;
    Ok(())
}

async fn copy_dir(src: &Path, dst: &Path, reflink: bool) -> Result<(), ForkError> {
    let mut cmd = tokio::process::Command::new("cp");
    cmd.arg("-a");
    // GNU cp 9 reflinks by default where it can: say which copy is wanted.
    cmd.arg(if reflink { "--reflink=always" } else { "--reflink=never" });
    cmd.arg(src).arg(dst);
    run(if reflink { "cp --reflink=always" } else { "cp -a" }, &mut cmd).await
}

/// Copies the data directory `src` into `dst` (created here with the server's owner and mode 0700), all but
/// `pg_wal`.
async fn copy_dir_without_wal(
    src: &Path,
    dst: &Path,
    reflink: bool,
    owner: &crate::pg::os_user::RunAs,
) -> Result<(), ForkError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(dst).map_err(io(format!("creating {}", dst.display())))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("setting the mode of {}", dst.display())))?;
    owner.own(dst)?;
    let entries: Vec<PathBuf> = std::fs::read_dir(src)
        .map_err(io(format!("reading {}", src.display())))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() != "pg_wal")
        .map(|e| e.path())
        .collect();
    let mut cmd = tokio::process::Command::new("cp");
    cmd.arg("-a");
    cmd.arg(if reflink { "--reflink=always" } else { "--reflink=never" });
    cmd.arg("-t").arg(dst).args(&entries);
    run(if reflink { "cp --reflink=always" } else { "cp -a" }, &mut cmd).await
}

/// Runs a copy command; it is killed if the fork's creation is dropped (interrupted).
pub(super) async fn run(what: &str, cmd: &mut tokio::process::Command) -> Result<(), ForkError> {
    let out = cmd
        .kill_on_drop(true)
        .output()
        .await
        .map_err(io(format!("running {what}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let hint = if detail.contains("No space left") {
            " (the state directory's filesystem is full)"
        } else {
            ""
        };
        Err(ForkError::Command {
            what: what.to_string(),
            detail: format!("{detail}{hint}"),
        })
    }
}

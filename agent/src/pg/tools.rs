//! PostgreSQL's own programs as children: `pg_dump`/`pg_restore` for schema, and `psql` holding a replication
//! connection open (the only way to create a slot that exports its snapshot without a replication-protocol
//! client; psql brings libpq's TLS and authentication with it). Passwords go through `PGPASSWORD`, never argv.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::cluster::tool_error;
use super::ident::quote_ident;
use super::{ConnInfo, PgBinaries, PgError, QualifiedName};
use crate::lsn::Lsn;

fn client_command(bins: &PgBinaries, program: &str, source: Option<&ConnInfo>) -> Command {
    let mut cmd = Command::new(bins.tool(program));
    cmd.stdin(Stdio::null())
        .env_remove("PGPASSWORD")
        .env("PGAPPNAME", "understudy");
    if let Some(password) = source.and_then(|s| s.password()) {
        cmd.env("PGPASSWORD", password);
    }
    cmd
}

/// Which relations a schema dump holds.
#[derive(Debug, Clone, Copy)]
pub enum DumpScope<'a> {
    /// The whole database but these relations (the sandbox's initial schema).
    AllExcept(&'a [QualifiedName]),
    /// Only these tables and what they own (a table added to the publication later).
    Only(&'a [QualifiedName]),
}

/// Dumps the schema (no data) of the source database into a custom-format archive, without publications,
/// subscriptions, ownership and privileges.
pub async fn dump_schema(
    bins: &PgBinaries,
    source: &ConnInfo,
    scope: DumpScope<'_>,
    out_file: &Path,
) -> Result<(), PgError> {
    let mut cmd = client_command(bins, "pg_dump", Some(source));
    cmd.args([
        "--schema-only",
        "--format=custom",
        "--no-owner",
        "--no-privileges",
        "--no-publications",
        "--no-subscriptions",
        "--no-security-labels",
        "--no-tablespaces",
        "--lock-wait-timeout=30000",
    ]);
    let (flag, relations) = match scope {
        DumpScope::AllExcept(list) => ("--exclude-table", list),
        DumpScope::Only(list) => ("--table", list),
    };
    for rel in relations {
        cmd.arg(format!(
            "{flag}={}.{}",
            quote_ident(&rel.schema),
            quote_ident(&rel.name)
        ));
    }
    cmd.arg("--file")
        .arg(out_file)
        .arg("--dbname")
        .arg(source.for_arguments());
    let out = cmd.output().await.map_err(|e| PgError::io("running pg_dump", e))?;
    if !out.status.success() {
        return Err(tool_error("pg_dump", &out));
    }
    Ok(())
}

/// The table of contents of an archive (`pg_restore -l`).
pub async fn archive_toc(bins: &PgBinaries, archive: &Path) -> Result<String, PgError> {
    let out = client_command(bins, "pg_restore", None)
        .arg("--list")
        .arg(archive)
        .output()
        .await
        .map_err(|e| PgError::io("running pg_restore --list", e))?;
    if !out.status.success() {
        return Err(tool_error("pg_restore --list", &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Which part of an archive to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    PreData,
    PostData,
    All,
}

/// Restores `section` of `archive` into `target` (a libpq connection string without secrets), restricted to the
/// entries of `use_list` when given, with `jobs` parallel jobs, stopping at the first error.
pub async fn restore(
    bins: &PgBinaries,
    archive: &Path,
    target: &str,
    section: Section,
    use_list: Option<&Path>,
    jobs: usize,
) -> Result<(), PgError> {
    let mut cmd = client_command(bins, "pg_restore", None);
    cmd.args(["--exit-on-error", "--no-owner", "--no-privileges"]);
    match section {
        Section::PreData => {
            cmd.arg("--section=pre-data");
        }
        Section::PostData => {
            cmd.arg("--section=post-data");
        }
        Section::All => {}
    }
    if let Some(list) = use_list {
        cmd.arg("--use-list").arg(list);
    }
    if jobs > 1 {
        cmd.arg(format!("--jobs={jobs}"));
    }
    cmd.arg("--dbname").arg(target).arg(archive);
    let out = cmd.output().await.map_err(|e| PgError::io("running pg_restore", e))?;
    if !out.status.success() {
        return Err(tool_error("pg_restore", &out));
    }
    Ok(())
}

/// A logical replication slot being created on a replication connection that stays open: while it does, the
/// snapshot it exported can be imported by other sessions (`SET TRANSACTION SNAPSHOT`), which then see the
/// database exactly as of the slot's consistent point.
pub struct ExportedSlot {
    child: Child,
    stdin: ChildStdin,
    pub slot_name: String,
    pub consistent_point: Lsn,
    pub snapshot: String,
}

impl ExportedSlot {
    /// Creates logical slot `slot_name` (pgoutput) on `source` and keeps its exported snapshot open.
    pub async fn create(bins: &PgBinaries, source: &ConnInfo, slot_name: &str) -> Result<Self, PgError> {
        let mut conn = source.without("password");
        conn.set("replication", "database");
        let mut child = client_command(bins, "psql", Some(source))
            .args(["-X", "-q", "-At", "-F", "|", "-v", "ON_ERROR_STOP=1"])
            .arg(conn.for_arguments())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| PgError::io("running psql for the replication connection", e))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| PgError::Config("psql has no stdin".into()))?;
        let stdout: ChildStdout = child
            .stdout
            .take()
            .ok_or_else(|| PgError::Config("psql has no stdout".into()))?;
        let command = format!(
            "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export');\n",
            quote_ident(slot_name)
        );
        stdin
            .write_all(command.as_bytes())
            .await
            .map_err(|e| PgError::io("writing to psql", e))?;
        stdin.flush().await.map_err(|e| PgError::io("writing to psql", e))?;
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let read = reader
            .read_line(&mut line)
            .await
            .map_err(|e| PgError::io("reading from psql", e))?;
        if read == 0 {
            let mut stderr = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut stderr).await;
            }
            let _ = child.wait().await;
            return Err(PgError::Tool {
                program: "psql (replication connection)".to_string(),
                status: "exited".to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        let fields: Vec<&str> = line.trim().split('|').collect();
        let [name, point, snapshot, _plugin] = fields.as_slice() else {
            return Err(PgError::Config(format!(
                "unexpected CREATE_REPLICATION_SLOT answer {:?}",
                line.trim()
            )));
        };
        let consistent_point = point
            .parse()
            .map_err(|e| PgError::Config(format!("CREATE_REPLICATION_SLOT gave a bad consistent point: {e}")))?;
        Ok(ExportedSlot {
            child,
            stdin,
            slot_name: (*name).to_string(),
            consistent_point,
            snapshot: (*snapshot).to_string(),
        })
    }

    /// Closes the replication connection; the slot stays, the snapshot ends.
    pub async fn release(mut self) -> Result<(), PgError> {
        let _ = self.stdin.write_all(b"\\q\n").await;
        let _ = self.stdin.flush().await;
        drop(self.stdin);
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| PgError::io("waiting for psql", e))?;
        if !status.success() {
            return Err(PgError::Config(format!(
                "psql (replication connection) exited with {status}"
            )));
        }
        Ok(())
    }
}

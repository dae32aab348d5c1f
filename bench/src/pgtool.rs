//! PostgreSQL's client programs (`pgbench`, `pg_dump`, `pg_restore`) run as children, and SQL error rendering.

use std::process::Stdio;

use anyhow::{Context, Result, bail};
use tokio::process::Command;
use understudy::pg::{Cluster, ConnInfo, PgBinaries};

/// Environment variables that would change where or how a client program connects.
const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGOPTIONS",
    "PGSSLMODE",
];

/// A command for one of PostgreSQL's client programs, killed when its future is dropped (Ctrl-C, errors).
pub fn command(bins: &PgBinaries, program: &str) -> Command {
    let mut cmd = Command::new(bins.tool(program));
    cmd.stdin(Stdio::null())
        .current_dir("/")
        .kill_on_drop(true)
        .env("PGAPPNAME", "understudy-bench");
    for var in LIBPQ_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `cmd` to completion and returns its standard output; a failure carries its standard error.
pub async fn run(mut cmd: Command, what: &str) -> Result<String> {
    let out = cmd.output().await.with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `pgbench <args> <database>` as the superuser over the cluster's Unix socket.
pub async fn pgbench(bins: &PgBinaries, cluster: &Cluster, database: &str, args: &[&str]) -> Result<String> {
    let mut cmd = command(bins, "pgbench");
    cmd.arg("-h")
        .arg(&cluster.config().socket_dir)
        .arg("-p")
        .arg(cluster.port().to_string())
        .args(["-U", "postgres"])
        .args(args)
        .arg(database);
    run(cmd, &format!("pgbench {}", args.join(" "))).await
}

/// Points a client program at `source` (password through `PGPASSWORD`, never in argv).
pub fn connect_to(cmd: &mut Command, source: &ConnInfo) {
    if let Some(password) = source.password() {
        cmd.env("PGPASSWORD", password);
    }
    cmd.arg("--dbname").arg(source.for_arguments());
}

/// The TPS pgbench printed (`tps = 1234.5 (without initial connection time)`).
pub fn parse_tps(output: &str) -> Result<f64> {
    output
        .lines()
        .find_map(|line| line.trim().strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("pgbench printed no \"tps = \" line:\n{}", output.trim()))
}

/// The number of transactions pgbench reports as processed.
pub fn parse_processed(output: &str) -> Option<u64> {
    output.lines().find_map(|line| {
        let rest = line
            .trim()
            .strip_prefix("number of transactions actually processed: ")?;
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    })
}

/// Maps a `tokio_postgres` error to an `anyhow` error with the server's message (its own `Display` says only
/// "db error").
pub fn sql(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> anyhow::Error {
    let context = context.into();
    move |e| anyhow::anyhow!("{context}: {}", understudy::pg::describe(&e))
}

/// `pg_dump -Fd -j<jobs>` of `source` (no publications or subscriptions) into the directory `dir`.
pub async fn dump_directory(bins: &PgBinaries, source: &ConnInfo, jobs: u32, dir: &std::path::Path) -> Result<()> {
    let mut dump = command(bins, "pg_dump");
    dump.args([
        "--format=directory",
        &format!("--jobs={jobs}"),
        "--no-publications",
        "--no-subscriptions",
    ])
    .arg("--file")
    .arg(dir);
    connect_to(&mut dump, source);
    run(dump, "pg_dump").await.map(drop)
}

/// `pg_restore -j<jobs> --exit-on-error --no-owner --no-privileges` of the directory `dir` into `conninfo`.
pub async fn restore_directory(bins: &PgBinaries, conninfo: &str, jobs: u32, dir: &std::path::Path) -> Result<()> {
    let mut restore = command(bins, "pg_restore");
    restore
        .args([
            &format!("--jobs={jobs}"),
            "--exit-on-error",
            "--no-owner",
            "--no-privileges",
        ])
        .arg("--dbname")
        .arg(conninfo)
        .arg(dir);
    run(restore, "pg_restore").await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PGBENCH_15: &str = "pgbench (15.18 (Debian 15.18-0+deb12u1))\n\
        transaction type: <builtin: TPC-B (sort of)>\n\
        scaling factor: 50\nquery mode: simple\nnumber of clients: 2\nnumber of threads: 2\n\
        maximum number of tries: 1\nduration: 10 s\n\
        number of transactions actually processed: 12345\n\
        number of failed transactions: 0 (0.000%)\n\
        latency average = 1.620 ms\ninitial connection time = 4.512 ms\n\
        tps = 1234.567890 (without initial connection time)\n";

    #[test]
    fn reads_pgbench_results() -> Result<()> {
        assert!((parse_tps(PGBENCH_15)? - 1234.56789).abs() < 1e-9);
        assert_eq!(parse_processed(PGBENCH_15), Some(12345));
        assert!(parse_tps("nothing here").is_err());
        Ok(())
    }
}

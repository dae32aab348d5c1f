//! The benchmark's servers under one working directory, and their clean-up: the pgbench source, the cluster the
//! baseline restores into, and the sandboxes created along the way.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use fixtures::source::SourceServer;
use understudy::pg::cluster::{Cluster, free_port};
use understudy::pg::os_user::RunAs;
use understudy::pg::{PgBinaries, quote_ident};
use understudy::sandbox::{self, CreateOptions, StateDir};
use understudy::source::{Replicate, SandboxName, objects};

use crate::noise::Noise;
use crate::pgtool::{self, sql};

/// The source database.
pub const DATABASE: &str = "bench";
/// The publication the sandboxes replicate.
pub const PUBLICATION: &str = "bench_pub";
/// The sandboxes' name (one exists at a time: its slot on the source is named after it).
pub const SANDBOX: &str = "bench";
/// The published tables, checked by row count on every copy.
pub const TABLES: [&str; 5] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
    "bench_heartbeat",
];

/// Row counts per table, in [`TABLES`] order.
pub type Counts = Vec<(String, i64)>;

/// The servers of one benchmark run.
pub struct Lab {
    pub root: PathBuf,
    pub bins: PgBinaries,
    /// CPU used by other processes on this machine.
    pub noise: Noise,
    run_as: RunAs,
    source: Option<SourceServer>,
    baseline: Option<Cluster>,
    /// Sandboxes created (or being created) and not deleted yet.
    sandboxes: Vec<StateDir>,
}

/// What the loaded source holds.
pub struct SourceFacts {
    pub counts: Counts,
    pub database_bytes: i64,
    pub accounts_bytes: i64,
    pub load_seconds: f64,
}

impl SourceFacts {
    pub fn accounts_rows(&self) -> i64 {
        self.counts
            .iter()
            .find(|(t, _)| t == "pgbench_accounts")
            .map(|(_, n)| *n)
            .unwrap_or(0)
    }
}

impl Lab {
    /// What a bench sandbox of the source is created with: the publication, the least-privilege role over TCP,
    /// `jobs` copy workers, and a WAL budget no bench run reaches.
    pub fn create_options(&self, name: SandboxName, state_dir: StateDir, jobs: u32) -> Result<CreateOptions> {
        Ok(CreateOptions {
            name,
            source: self.source()?.replicator_conninfo(),
            replicate: Replicate::Publication(PUBLICATION.into()),
            state_dir,
            jobs: jobs as usize,
            wal_budget_bytes: 64 << 30,
            progress: false,
            resync: Default::default(),
            subset: None,
            mask: None,
        })
    }

    /// Creates the working directory `root` (which must not exist), traversable by the servers' OS user.
    pub fn new(root: PathBuf) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let bins = PgBinaries::locate()?;
        let run_as = RunAs::detect()?;
        let root = std::path::absolute(&root).with_context(|| format!("resolving {}", root.display()))?;
        if root.exists() {
            bail!(
                "{} exists (a kept run?): remove it or pass another --dir",
                root.display()
            );
        }
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting the mode of {}", root.display()))?;
        Ok(Lab {
            noise: Noise::start(&root),
            root,
            bins,
            run_as,
            source: None,
            baseline: None,
            sandboxes: Vec::new(),
        })
    }

    pub fn source(&self) -> Result<&SourceServer> {
        self.source.as_ref().context("the source is not running")
    }

    pub fn baseline(&self) -> Result<&Cluster> {
        self.baseline.as_ref().context("the baseline cluster is not running")
    }

    /// Starts the source, loads `pgbench -i -s scale`, adds the heartbeat table, publishes everything and reads
    /// every table once (row counts, and a warm cache for both sync methods).
    pub async fn prepare_source(&mut self, scale: u32) -> Result<SourceFacts> {
        eprintln!("starting the source cluster ...");
        let server = SourceServer::start(&self.root.join("source"), DATABASE, &[])
            .await
            .context("starting the source cluster")?;
        self.source = Some(server);
        let source = self.source()?;
        eprintln!(
            "loading pgbench -i -s {scale} into the source (port {}) ...",
            source.cluster.port()
        );
        let started = Instant::now();
        pgtool::pgbench(
            &self.bins,
            &source.cluster,
            DATABASE,
            &["-i", "-s", &scale.to_string(), "-q"],
        )
        .await?;
        let load_seconds = started.elapsed().as_secs_f64();
        let admin = source.admin().await?;
        admin
            .batch_execute(&format!(
                "ALTER TABLE pgbench_history REPLICA IDENTITY FULL;
                 CREATE TABLE bench_heartbeat (id int PRIMARY KEY, at timestamptz NOT NULL);
                 INSERT INTO bench_heartbeat VALUES (1, clock_timestamp());
                 CREATE PUBLICATION {} FOR TABLE {};",
                quote_ident(PUBLICATION),
                TABLES.join(", ")
            ))
            .await
            .map_err(sql("publishing the pgbench tables"))?;
        admin
            .batch_execute("VACUUM ANALYZE bench_heartbeat")
            .await
            .map_err(sql("vacuuming the heartbeat table"))?;
        admin
            .batch_execute("CHECKPOINT")
            .await
            .map_err(sql("checkpointing the source"))?;
        source.grant_read().await?;
        eprintln!("reading every table once (row counts; warms the cache) ...");
        let counts = counts(&admin).await?;
        let row = admin
            .query_one(
                "SELECT pg_database_size(current_database()), pg_total_relation_size('pgbench_accounts')",
                &[],
            )
            .await
            .map_err(sql("reading sizes"))?;
        Ok(SourceFacts {
            counts,
            database_bytes: row.try_get(0)?,
            accounts_bytes: row.try_get(1)?,
            load_seconds,
        })
    }

    /// Initialises and starts the cluster the baseline restores into, configured like a sandbox cluster.
    pub async fn start_baseline_cluster(&mut self) -> Result<()> {
        let mut config = sandbox::sandbox_cluster_config(&self.root.join("baseline"));
        config.port = free_port()?;
        eprintln!("initialising the baseline's target cluster ...");
        let cluster = Cluster::init(self.bins.clone(), self.run_as.clone(), config)
            .await
            .context("initialising the baseline cluster")?;
        self.baseline = Some(cluster);
        self.baseline()?
            .start()
            .await
            .context("starting the baseline cluster")?;
        Ok(())
    }

    /// The state directory of the sync benchmark's sandboxes: one for all of them, as a user's is (what the
    /// library caches there is warm after the first create). Recorded for clean-up before anything is created.
    pub fn sandbox_state(&mut self) -> StateDir {
        let state = StateDir::at(self.root.join("state"));
        if !self.sandboxes.iter().any(|s| s.root() == state.root()) {
            self.sandboxes.push(state.clone());
        }
        state
    }

    /// Deletes the sandbox in `state` (its slot on the source too).
    pub async fn delete_sandbox(&mut self, state: &StateDir) -> Result<()> {
        let name = SandboxName::parse(SANDBOX)?;
        sandbox::delete(state, &name, None, false)
            .await
            .with_context(|| format!("deleting the sandbox in {}", state.root().display()))?;
        Ok(())
    }

    /// Removes everything (sandboxes first, so that their slots leave the source), or with `keep` says where it
    /// all is.
    pub async fn finish(mut self, keep: bool) -> Result<()> {
        if keep {
            self.describe_kept();
            if let Some(source) = &mut self.source {
                source.keep();
            }
            return Ok(());
        }
        let mut problems = Vec::new();
        let name = SandboxName::parse(SANDBOX)?;
        for state in std::mem::take(&mut self.sandboxes) {
            if !state.sandbox_dir(&name).exists() {
                continue;
            }
            if let Err(e) = sandbox::delete(&state, &name, None, true).await {
                problems.push(format!("deleting the sandbox in {}: {e}", state.root().display()));
            }
        }
        let mut slots_left = None;
        if let Some(source) = &self.source
            && let Ok(admin) = source.admin().await
        {
            slots_left = objects::slots_like(&admin, "understudy\\_%")
                .await
                .ok()
                .map(|s| s.len());
        }
        if let Some(cluster) = self.baseline.take()
            && let Err(e) = cluster.destroy().await
        {
            problems.push(format!("destroying the baseline cluster: {e}"));
        }
        if let Some(source) = self.source.take()
            && let Err(e) = source.destroy().await
        {
            problems.push(format!("destroying the source cluster: {e}"));
        }
        if let Err(e) = std::fs::remove_dir_all(&self.root)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("removing {}: {e}", self.root.display()));
        }
        eprintln!(
            "cleaned up: sandboxes deleted ({} Understudy slot(s) were left on the source), clusters destroyed, {} \
             removed",
            slots_left.map_or_else(|| "?".to_string(), |n| n.to_string()),
            self.root.display()
        );
        if problems.is_empty() {
            Ok(())
        } else {
            bail!(problems.join("; "))
        }
    }

    fn describe_kept(&self) {
        println!();
        println!("## Kept (--keep)");
        println!();
        if let Some(source) = &self.source {
            println!("- source:   psql \"{}\"", source.cluster.conninfo(DATABASE));
        }
        if let Some(cluster) = &self.baseline {
            println!(
                "- baseline: psql \"{}\" (restored databases are dropped after each run)",
                cluster.conninfo("postgres")
            );
        }
        for state in &self.sandboxes {
            println!(
                "- sandbox:  understudy --state-dir {} sandbox status {SANDBOX}",
                state.root().display()
            );
        }
        println!(
            "- clean up: understudy --state-dir <dir> sandbox delete {SANDBOX}; then, as the postgres user, pg_ctl \
             -D <data dir> stop -m immediate for the source ({}) and baseline ({}); rm -rf {}",
            self.source
                .as_ref()
                .map(|s| s.cluster.data_dir().display().to_string())
                .unwrap_or_default(),
            self.baseline
                .as_ref()
                .map(|c| c.data_dir().display().to_string())
                .unwrap_or_default(),
            self.root.display()
        );
    }
}

/// Row counts of [`TABLES`].
pub async fn counts(client: &tokio_postgres::Client) -> Result<Counts> {
    let mut out = Vec::new();
    for table in TABLES {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {}", quote_ident(table)), &[])
            .await
            .map_err(sql(format!("counting {table}")))?
            .try_get(0)?;
        out.push((table.to_string(), n));
    }
    Ok(out)
}

/// Checks that `client`'s tables hold as many rows as `expected` says.
pub async fn check_counts(client: &tokio_postgres::Client, expected: &Counts, what: &str) -> Result<()> {
    let got = counts(client).await?;
    if &got != expected {
        bail!("{what} does not hold the source's rows: expected {expected:?}, found {got:?}");
    }
    Ok(())
}

/// The machine, for the report.
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory: String,
    pub postgres: String,
}

impl Machine {
    /// The "Setup" table every command opens with: this machine, PostgreSQL, and the command as run.
    pub async fn setup_table(bins: &PgBinaries, command: &str) -> crate::table::Table {
        let machine = Machine::describe(bins).await;
        let mut setup = crate::table::Table::new("Setup", &["item", "value"]);
        setup.row(["machine", &machine.summary()]);
        setup.row(["PostgreSQL", &machine.postgres]);
        setup.row(["command", command]);
        setup
    }

    pub async fn describe(bins: &PgBinaries) -> Self {
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| format!("{:.1} GiB", kb / (1024.0 * 1024.0)))
            .unwrap_or_else(|| "unknown".to_string());
        let mut cmd = pgtool::command(bins, "postgres");
        cmd.arg("--version");
        let postgres = pgtool::run(cmd, "postgres --version")
            .await
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"));
        Machine {
            cpus,
            cpu_model,
            memory,
            postgres,
        }
    }

    pub fn summary(&self) -> String {
        format!("{} CPU(s) ({}), {} RAM", self.cpus, self.cpu_model, self.memory)
    }
}

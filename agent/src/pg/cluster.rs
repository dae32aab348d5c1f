//! The embedded PostgreSQL launcher: `initdb`, start, stop and status of a cluster in a directory Understudy owns,
//! on a private Unix-socket directory (and optionally TCP), with `wal_level = logical`. The command line, the test
//! harness and (later) the Kubernetes pods all use this code.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::connect::connect_plain;
use super::os_user::RunAs;
use super::{PgBinaries, PgError};

/// Where a cluster lives and how it listens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The data directory (created by `initdb`).
    pub data_dir: PathBuf,
    /// The private directory for the server's Unix socket.
    pub socket_dir: PathBuf,
    /// The port (also names the socket file).
    pub port: u16,
    /// `listen_addresses`: empty for Unix socket only, `127.0.0.1` for loopback TCP.
    pub listen_addresses: String,
    /// Extra `postgresql.conf` settings.
    #[serde(default)]
    pub settings: Vec<(String, String)>,
}

/// How to stop a server (`pg_ctl -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Fast,
    Immediate,
}

/// Whether a cluster's server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterStatus {
    Running {
        pid: u32,
    },
    Stopped,
    /// The data directory is missing or not a PostgreSQL data directory.
    Missing,
}

/// One embedded cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    bins: PgBinaries,
    run_as: RunAs,
    config: ClusterConfig,
}

/// Settings every embedded cluster gets.
const BASE_SETTINGS: &[(&str, &str)] = &[
    ("wal_level", "logical"),
    ("max_wal_senders", "10"),
    ("max_replication_slots", "20"),
    ("max_logical_replication_workers", "8"),
    ("max_worker_processes", "16"),
    ("max_connections", "100"),
    ("logging_collector", "off"),
    ("log_min_messages", "warning"),
    ("shared_buffers", "128MB"),
    ("max_wal_size", "2GB"),
];

impl Cluster {
    /// Describes an existing cluster without touching it.
    pub fn open(bins: PgBinaries, run_as: RunAs, config: ClusterConfig) -> Self {
        Cluster { bins, run_as, config }
    }

    /// Runs `initdb` into `config.data_dir` (which must not exist yet) and writes Understudy's settings.
    pub async fn init(bins: PgBinaries, run_as: RunAs, config: ClusterConfig) -> Result<Self, PgError> {
        Self::init_with(bins, run_as, config, None).await
    }

    /// As [`Cluster::init`], copying a cached `initdb` result from `template_cache` (made there on first use)
    /// instead of running `initdb` each time: a copy of the fresh cluster takes tens of milliseconds, `initdb`
    /// most of a second.
    pub async fn init_with(
        bins: PgBinaries,
        run_as: RunAs,
        config: ClusterConfig,
        template: Option<std::path::PathBuf>,
    ) -> Result<Self, PgError> {
        let cluster = Cluster { bins, run_as, config };
        let data = &cluster.config.data_dir;
        let empty_dir = std::fs::read_dir(data).map(|mut d| d.next().is_none()).unwrap_or(false);
        if data.exists() && !empty_dir {
            return Err(PgError::Config(format!(
                "{} already exists; refusing to initdb over it",
                data.display()
            )));
        }
        let socket = cluster.socket_path();
        if socket.as_os_str().len() > 100 {
            return Err(PgError::Config(format!(
                "the socket path {} is longer than Unix sockets allow (about 100 bytes); use a shorter state \
                 directory",
                socket.display()
            )));
        }
        for dir in [data.parent(), Some(cluster.config.socket_dir.as_path())]
            .into_iter()
            .flatten()
        {
            std::fs::create_dir_all(dir).map_err(|e| PgError::io(format!("creating {}", dir.display()), e))?;
            cluster.run_as.own(dir)?;
        }
        set_mode(&cluster.config.socket_dir, 0o700)?;
        if let Some(parent) = data.parent() {
            cluster.run_as.check_writable(parent)?;
        }
        match &template {
            None => cluster.initdb(data).await?,
            Some(cache) => {
                let tpl = cache.join(format!("initdb-{}", cluster.bins.major()));
                if !tpl.join("PG_VERSION").is_file() {
                    std::fs::create_dir_all(cache)
                        .map_err(|e| PgError::io(format!("creating {}", cache.display()), e))?;
                    cluster.run_as.own(cache)?;
                    let tmp = cache.join(format!("initdb-{}.tmp-{}", cluster.bins.major(), std::process::id()));
                    let _ = std::fs::remove_dir_all(&tmp);
                    cluster.initdb(&tmp).await?;
                    if std::fs::rename(&tmp, &tpl).is_err() {
                        let _ = std::fs::remove_dir_all(&tmp);
                    }
                }
                let mut cp = tokio::process::Command::new("cp");
                cp.arg("-a");
                if data.exists() {
                    cp.arg(format!("{}/.", tpl.display())).arg(data);
                } else {
                    cp.arg(&tpl).arg(data);
                }
                let out = cp
                    .output()
                    .await
                    .map_err(|e| PgError::io("copying the initdb template", e))?;
                if !out.status.success() {
                    return Err(tool_error("cp (initdb template)", &out));
                }
                cluster.run_as.own(data)?;
                set_mode(data, 0o700)?;
            }
        }
        cluster.write_settings()?;
        Ok(cluster)
    }

    async fn initdb(&self, data: &Path) -> Result<(), PgError> {
        let out = self
            .run_as
            .command(&self.bins.tool("initdb"))
            .arg("-D")
            .arg(data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "-N"])
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| PgError::io("running initdb", e))?;
        if !out.status.success() {
            return Err(tool_error("initdb", &out));
        }
        Ok(())
    }

    /// Takes over a data directory copied from another cluster (a fork): removes the copied lock file and
    /// options, gives it this configuration's port, socket and settings, and owns its new socket directory.
    pub fn adopt(bins: PgBinaries, run_as: RunAs, config: ClusterConfig) -> Result<Self, PgError> {
        let cluster = Cluster { bins, run_as, config };
        if let Some(parent) = cluster.config.data_dir.parent() {
            cluster.run_as.own(parent)?;
        }
        for stale in ["postmaster.pid", "postmaster.opts"] {
            let path = cluster.config.data_dir.join(stale);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(PgError::io(format!("removing {}", path.display()), e)),
            }
        }
        std::fs::create_dir_all(&cluster.config.socket_dir)
            .map_err(|e| PgError::io(format!("creating {}", cluster.config.socket_dir.display()), e))?;
        cluster.run_as.own(&cluster.config.socket_dir)?;
        set_mode(&cluster.config.socket_dir, 0o700)?;
        cluster.write_settings()?;
        Ok(cluster)
    }

    /// Changes the configuration (rewrites `understudy.conf`); takes effect at the next start.
    pub fn reconfigure(&mut self, config: ClusterConfig) -> Result<(), PgError> {
        self.config = config;
        self.write_settings()
    }

    /// Writes `understudy.conf` (included from `postgresql.conf`) from the configuration.
    fn write_settings(&self) -> Result<(), PgError> {
        let mut conf = String::from("# Written by Understudy; edits are overwritten.\n");
        let listen = quote_conf(&self.config.listen_addresses);
        let socket = quote_conf(&self.config.socket_dir.display().to_string());
        conf.push_str(&format!(
            "port = {}\nlisten_addresses = {listen}\nunix_socket_directories = {socket}\n",
            self.config.port
        ));
        for (key, value) in BASE_SETTINGS {
            if !self.config.settings.iter().any(|(k, _)| k == key) {
                conf.push_str(&format!("{key} = {}\n", quote_conf(value)));
            }
        }
        for (key, value) in &self.config.settings {
            conf.push_str(&format!("{key} = {}\n", quote_conf(value)));
        }
        let data = &self.config.data_dir;
        let path = data.join("understudy.conf");
        std::fs::write(&path, conf).map_err(|e| PgError::io(format!("writing {}", path.display()), e))?;
        self.run_as.own(&path)?;
        let main = data.join("postgresql.conf");
        let text = std::fs::read_to_string(&main).map_err(|e| PgError::io(format!("reading {}", main.display()), e))?;
        if !text.contains("include_if_exists = 'understudy.conf'") {
            std::fs::write(&main, format!("{text}\ninclude_if_exists = 'understudy.conf'\n"))
                .map_err(|e| PgError::io(format!("writing {}", main.display()), e))?;
        }
        Ok(())
    }

    /// Starts the server and waits until it accepts connections. After a crash (`kill -9` of the postmaster) the
    /// old server's processes may still hold the lock file or shared memory for a moment: start is retried for
    /// up to 15 s in that case.
    pub async fn start(&self) -> Result<(), PgError> {
        let mut attempts = 0;
        loop {
            if let ClusterStatus::Running { .. } = self.status().await? {
                return Ok(());
            }
            match self.start_once().await {
                Ok(()) => return Ok(()),
                Err(PgError::Tool { stderr, .. })
                    if attempts < 30
                        && (stderr.contains("lock file \"postmaster.pid\" already exists")
                            || stderr.contains("pre-existing shared memory block")) =>
                {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_once(&self) -> Result<(), PgError> {
        let log_len = std::fs::metadata(self.log_path()).map(|m| m.len()).unwrap_or(0);
        let out = self
            .run_as
            .command(&self.bins.tool("pg_ctl"))
            .arg("-D")
            .arg(&self.config.data_dir)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "120", "start"])
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| PgError::io("running pg_ctl start", e))?;
        if !out.status.success() {
            let mut err = tool_error("pg_ctl start", &out);
            if let PgError::Tool { stderr, .. } = &mut err {
                let log = std::fs::read(self.log_path()).unwrap_or_default();
                let fresh = String::from_utf8_lossy(log.get(log_len as usize..).unwrap_or_default());
                let tail: Vec<&str> = fresh.lines().collect();
                stderr.push_str(&format!(
                    "\nserver log ({}):\n{}",
                    self.log_path().display(),
                    tail[tail.len().saturating_sub(20)..].join("\n")
                ));
            }
            return Err(err);
        }
        Ok(())
    }

    /// Stops the server; a no-op when it is not running.
    pub async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        if !matches!(self.status().await?, ClusterStatus::Running { .. }) {
            return Ok(());
        }
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let out = self
            .run_as
            .command(&self.bins.tool("pg_ctl"))
            .arg("-D")
            .arg(&self.config.data_dir)
            .args(["-w", "-t", "60", "-m", mode, "stop"])
            .current_dir("/")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| PgError::io("running pg_ctl stop", e))?;
        if !out.status.success() && matches!(self.status().await?, ClusterStatus::Running { .. }) {
            return Err(tool_error("pg_ctl stop", &out));
        }
        Ok(())
    }

    /// Whether the server runs, from `postmaster.pid` and a liveness check of that process.
    pub async fn status(&self) -> Result<ClusterStatus, PgError> {
        let data = &self.config.data_dir;
        if !data.join("PG_VERSION").is_file() {
            return Ok(ClusterStatus::Missing);
        }
        match self.postmaster_pid() {
            Some(pid) if self.is_our_postmaster(pid) => Ok(ClusterStatus::Running { pid }),
            _ => Ok(ClusterStatus::Stopped),
        }
    }

    /// True when `pid` is a live postmaster of *this* data directory. A copied data directory (a fork) carries
    /// the original's `postmaster.pid`: trusting it would signal the original's server.
    fn is_our_postmaster(&self, pid: u32) -> bool {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return false;
        }
        let ours = std::fs::canonicalize(&self.config.data_dir).unwrap_or_else(|_| self.config.data_dir.clone());
        match std::fs::read_link(format!("/proc/{pid}/cwd")) {
            Ok(cwd) => cwd == ours,
            // Not allowed to look (another user's process): fall back to its command line.
            Err(_) => postmasters_under(&self.config.data_dir).contains(&pid),
        }
    }

    /// The postmaster's pid from `postmaster.pid`, if the file is there.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.config.data_dir.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Sends SIGKILL to the postmaster (crash tests).
    pub fn kill9(&self) -> Result<(), PgError> {
        let pid = self
            .postmaster_pid()
            .filter(|p| self.is_our_postmaster(*p))
            .ok_or_else(|| PgError::Config("the cluster is not running".into()))?;
        let status = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .map_err(|e| PgError::io("running kill", e))?;
        if !status.success() {
            return Err(PgError::Config(format!("kill -9 {pid} failed")));
        }
        Ok(())
    }

    /// Stops the server (immediately) and removes the data and socket directories.
    pub async fn destroy(&self) -> Result<(), PgError> {
        if self.stop(StopMode::Immediate).await.is_err()
            && let Some(pid) = self.postmaster_pid()
        {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
        for dir in [&self.config.data_dir, &self.config.socket_dir] {
            crate::cow::remove_dir(dir).map_err(|e| PgError::io(format!("removing {}", dir.display()), e))?;
        }
        Ok(())
    }

    /// Kills (SIGKILL) any postmaster still running on this data directory, also when `postmaster.pid` is gone.
    pub fn kill_strays(&self) {
        let mut pids = postmasters_under(&self.config.data_dir);
        pids.extend(self.postmaster_pid().filter(|p| self.is_our_postmaster(*p)));
        for pid in pids {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }

    /// A libpq connection string for `dbname` as the superuser, over the Unix socket.
    pub fn conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={dbname}",
            self.config.socket_dir.display(),
            self.config.port
        )
    }

    /// A connection to `dbname` as the superuser.
    /// Refused connections are retried for a moment: a local server answers "connection refused" briefly while
    /// it reaps a backend that was killed with its client.
    pub async fn connect(&self, dbname: &str) -> Result<tokio_postgres::Client, PgError> {
        let mut attempts = 0;
        loop {
            match connect_plain(&self.conninfo(dbname), "understudy").await {
                Err(PgError::Connect { detail, .. }) if detail.contains("Connection refused") && attempts < 20 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// Waits until the server accepts connections, up to `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), PgError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.connect("postgres").await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn port(&self) -> u16 {
        self.config.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    pub fn binaries(&self) -> &PgBinaries {
        &self.bins
    }

    pub fn run_as(&self) -> &RunAs {
        &self.run_as
    }

    pub fn socket_path(&self) -> PathBuf {
        self.config.socket_dir.join(format!(".s.PGSQL.{}", self.config.port))
    }

    pub fn log_path(&self) -> PathBuf {
        let name = self
            .config
            .data_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.config.data_dir.with_file_name(format!("{name}.log"))
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Pids of postmasters whose data directory (`-D`) lies under `root`, found from `/proc/*/cmdline`: the way to
/// find a server whose `postmaster.pid` (or whole data directory) was removed by hand.
pub fn postmasters_under(root: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_postgres = args
            .first()
            .is_some_and(|a| a.ends_with(b"/postgres") || *a == b"postgres");
        if !is_postgres {
            continue;
        }
        let under = args
            .windows(2)
            .any(|w| w[0] == b"-D" && Path::new(std::str::from_utf8(w[1]).unwrap_or("")).starts_with(root));
        if under && !is_zombie(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> Result<u16, PgError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| PgError::io("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| PgError::io("finding a free port", e))
}

fn quote_conf(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), PgError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| PgError::io(format!("setting the mode of {}", path.display()), e))
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

pub(crate) fn tool_error(program: &str, out: &std::process::Output) -> PgError {
    PgError::Tool {
        program: program.to_string(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

//! The test harness: real PostgreSQL servers started by the library's own launcher in temporary directories,
//! torn down afterwards.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::source::SourceServer;
use understudy::pg::QualifiedName;
use understudy::sandbox::{self, CreateOptions, SandboxMeta, StateDir};
use understudy::source::{Replicate, SandboxName};
use understudy::verify::checksum;

/// The checkers' venv that `.ci/setup` makes (`$UNDERSTUDY_TOOLS/venv`, default `/opt/understudy-tools/venv`):
/// schemathesis, kubernetes-validate, jsonschema, helm-python-sdk.
pub fn tools_venv() -> PathBuf {
    std::env::var_os("UNDERSTUDY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/opt/understudy-tools".into())
        .join("venv")
}

/// Asserts that `promtool check metrics` (Debian's prometheus package) accepts the exposition `text`.
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; run bash .ci/setup)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the metrics");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every `understudy_…` metric name in `text` (rules, dashboard expressions), a histogram's series under its
/// histogram's name (`…_seconds_bucket` is `…_seconds`).
pub fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("understudy_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| b.ends_with("_seconds")))
            .unwrap_or(name);
        names.insert(base.to_string());
        rest = &tail[end..];
    }
    names
}

/// A temporary directory the server's OS user can reach, removed on drop.
pub struct TempRoot(pub PathBuf);

impl TempRoot {
    pub fn new(label: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("us-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp root");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod temp root");
        TempRoot(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn state(&self) -> StateDir {
        StateDir::at(self.0.join("state"))
    }
}

/// Pids of `understudy` processes (agents) whose `--state-dir` lies under `root`.
pub fn agents_under(root: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_understudy = args.first().is_some_and(|a| a.ends_with(b"/understudy"));
        let under = args
            .windows(2)
            .any(|w| w[0] == b"--state-dir" && Path::new(std::str::from_utf8(w[1]).unwrap_or("")).starts_with(root));
        if is_understudy && under && pid != std::process::id() {
            pids.push(pid);
        }
    }
    pids
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        // Agents first (they would restart servers), then any server still running under this root.
        for pid in agents_under(&self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
        for pid in understudy::pg::cluster::postmasters_under(&self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A source with the sample schema (`rows` orders) published as `shop_pub`.
pub async fn sample_source(root: &TempRoot, rows: i64) -> SourceServer {
    let source = SourceServer::start(&root.path().join("source"), "shop", &[])
        .await
        .expect("start source");
    source.load_sample(rows, "shop_pub").await.expect("load sample");
    source
}

/// A source with the sample schema and the seed's shapes (`orgs`, `accounts`, `users`: NULLs in old rows, orphans,
/// mixed-case duplicate e-mails), all published as `shop_pub` and readable by the replication role.
pub async fn seeded_source(root: &TempRoot, rows: i64) -> SourceServer {
    let source = sample_source(root, rows).await;
    let seed = format!(
        "{}\nALTER PUBLICATION shop_pub ADD TABLE orgs, accounts, users;\n\
         GRANT SELECT ON orgs, accounts, users TO {};",
        crate::migrations::SEED,
        understudy::pg::quote_ident(crate::source::REPLICATOR)
    );
    source
        .admin()
        .await
        .expect("admin")
        .batch_execute(&seed)
        .await
        .expect("seed");
    source
}

pub fn create_options(root: &TempRoot, source: &SourceServer, name: &str, replicate: Replicate) -> CreateOptions {
    CreateOptions {
        name: SandboxName::parse(name).expect("valid name"),
        source: source.replicator_conninfo(),
        replicate,
        state_dir: root.state(),
        jobs: 2,
        wal_budget_bytes: 1 << 30,
        progress: false,
        resync: Default::default(),
        subset: None,
        mask: None,
    }
}

pub fn quiet(_: &str) {}

pub fn sample_tables() -> Vec<QualifiedName> {
    ["customers", "orders", "events"]
        .iter()
        .map(|t| QualifiedName::new("public", *t))
        .collect()
}

/// Waits until the sandbox has confirmed the source's current WAL position.
pub async fn wait_caught_up(source: &SourceServer, meta: &SandboxMeta) {
    let admin = source.admin().await.expect("source admin");
    let target: String = admin
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    let sandbox_db = sandbox::cluster_of(meta)
        .expect("cluster")
        .connect(&meta.database)
        .await
        .expect("connect sandbox");
    sandbox::create::wait_caught_up(
        &sandbox_db,
        &meta.subscription,
        target.parse().expect("lsn"),
        Duration::from_secs(90),
    )
    .await
    .expect("sandbox catches up");
}

/// Asserts that every table has the same row count and checksum on the source and the sandbox.
pub async fn assert_parity(source: &SourceServer, meta: &SandboxMeta, tables: &[QualifiedName]) {
    let admin = source.admin().await.expect("source admin");
    let sandbox_db = sandbox::cluster_of(meta)
        .expect("cluster")
        .connect(&meta.database)
        .await
        .expect("connect sandbox");
    let a = checksum::checksums(&admin, tables).await.expect("source checksums");
    let b = checksum::checksums(&sandbox_db, tables)
        .await
        .expect("sandbox checksums");
    assert_eq!(a, b, "source and sandbox differ");
    assert!(a.iter().all(|c| c.rows > 0), "tables must not be empty: {a:?}");
}

/// Capture slots left on a sandbox (one per live fork).
pub async fn capture_slots(meta: &SandboxMeta) -> i64 {
    let cluster = sandbox::cluster_of(meta).expect("cluster");
    let db = match cluster.connect(&meta.database).await {
        Ok(db) => db,
        Err(e) => panic!("sandbox: {e}\n{}", cluster.log_tail(30)),
    };
    db.query_one(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'understudy_capture%'",
        &[],
    )
    .await
    .expect("slots")
    .get(0)
}

/// Slots and publications of ours (`understudy_%`) on the source.
pub async fn our_objects(source: &SourceServer) -> (Vec<String>, Vec<String>) {
    let admin = source.admin().await.expect("source admin");
    let slots = admin
        .query("SELECT slot_name::text FROM pg_replication_slots WHERE slot_name LIKE 'understudy%' OR slot_name LIKE 'pg\\_%\\_sync\\_%'", &[])
        .await
        .expect("slots")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let pubs = admin
        .query(
            "SELECT pubname::text FROM pg_publication WHERE pubname LIKE 'understudy%'",
            &[],
        )
        .await
        .expect("publications")
        .iter()
        .map(|r| r.get(0))
        .collect();
    (slots, pubs)
}

/// Waits (10 s at most) until the source holds no slot of ours (nor a tablesync slot) and no session of `role`.
pub async fn wait_nothing_left(source: &SourceServer, role: &str) {
    let admin = source.admin().await.expect("source admin");
    eventually(Duration::from_secs(10), "nothing of Understudy's on the source", || {
        let admin = &admin;
        async move {
            let sessions: i64 = admin
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", &[&role])
                .await
                .map(|r| r.get(0))
                .unwrap_or(1);
            sessions == 0 && our_objects(source).await.0.is_empty()
        }
    })
    .await;
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A loop-mounted filesystem (btrfs or xfs with reflink) for copy-on-write fork tests; root only.
pub struct LoopMount {
    pub dir: PathBuf,
    image: PathBuf,
}

impl LoopMount {
    /// Mounts a fresh `kind` filesystem of `megabytes` under `parent`. `None` when not root (the caller says
    /// the strategy cannot be tested here); as root a failure is a test failure.
    pub fn new(parent: &Path, kind: &str, megabytes: u64) -> Option<Self> {
        if !understudy::pg::os_user::running_as_root() {
            eprintln!("not root: cannot loop-mount {kind}; this strategy is not tested here");
            return None;
        }
        let image = parent.join(format!("{kind}.img"));
        let dir = parent.join(format!("{kind}-mnt"));
        std::fs::create_dir_all(&dir).expect("mount point");
        let file = std::fs::File::create(&image).expect("image");
        file.set_len(megabytes * 1024 * 1024).expect("size image");
        let mkfs = match kind {
            "btrfs" => std::process::Command::new("mkfs.btrfs").arg("-q").arg(&image).output(),
            "xfs" => std::process::Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&image)
                .output(),
            "ext4" => std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&image)
                .output(),
            other => panic!("unknown filesystem {other}"),
        }
        .expect("run mkfs (install btrfs-progs / xfsprogs: bash .ci/setup)");
        assert!(
            mkfs.status.success(),
            "mkfs.{kind}: {}",
            String::from_utf8_lossy(&mkfs.stderr)
        );
        let mount = std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&dir)
            .output()
            .expect("mount");
        assert!(
            mount.status.success(),
            "mount {kind}: {}",
            String::from_utf8_lossy(&mount.stderr)
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Some(LoopMount { dir, image })
    }

    pub fn state(&self) -> StateDir {
        StateDir::at(self.dir.join("state"))
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        for pid in understudy::pg::cluster::postmasters_under(&self.dir) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
        for _ in 0..50 {
            let out = std::process::Command::new("umount").arg(&self.dir).output();
            if out.map(|o| o.status.success()).unwrap_or(false) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Runs a dry-run now, printing nothing.
pub async fn dry_run(
    state: &StateDir,
    opts: &understudy::dryrun::DryRunOptions,
) -> Result<understudy::report::DryRunReport, understudy::dryrun::DryRunError> {
    understudy::dryrun::execute(
        state,
        opts,
        &understudy::schedule::Schedule::Now,
        &understudy::dryrun::progress::Silent,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
}

/// A dry-run of `up` on sandbox `shop` into fork `fork_name`, with the tests' defaults: verification, 1.5 s
/// windows, 4 workers, a 5-minute deadline, a 10 ms sampler. Tests change what they are about.
pub fn dry_run_options(up: understudy::dryrun::MigrationText, fork_name: &str) -> understudy::dryrun::DryRunOptions {
    understudy::dryrun::DryRunOptions {
        sandbox: SandboxName::parse("shop").expect("name"),
        up,
        down: None,
        checks: None,
        verify: true,
        single_transaction: false,
        warmup: Duration::from_millis(1500),
        after: Duration::from_millis(1500),
        workers: 4,
        strategy: None,
        fork_name: SandboxName::parse(fork_name).expect("name"),
        keep_fork: false,
        statement_timeout: None,
        deadline: Duration::from_secs(300),
        sample_interval: Duration::from_millis(10),
        thresholds: understudy::report::Thresholds::default(),
        long_readers: Vec::new(),
        max_sandbox_lag: Duration::from_secs(30),
        recorded: None,
    }
}

/// A superuser connection string for sandbox `meta`'s database (over its socket).
pub fn sandbox_conninfo(meta: &SandboxMeta) -> String {
    format!(
        "host={} port={} user=postgres dbname={}",
        meta.cluster.socket_dir.display(),
        meta.cluster.port,
        meta.database
    )
}

/// SQL named `name` for a dry-run.
pub fn sql(name: &str, text: &str) -> understudy::dryrun::MigrationText {
    understudy::dryrun::MigrationText {
        name: name.to_string(),
        sql: text.to_string(),
    }
}

/// A test certificate authority and a server certificate it signed for 127.0.0.1 and localhost, in `dir`:
/// (CA certificate, server certificate, server key), as PEM file paths.
pub fn ca_and_server_cert(dir: &Path) -> (String, String, String) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=understudy-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("extensions");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.crt",
        "-extfile",
        "server.ext",
    ]);
    // Readable by the servers' OS user (a source server reads its key), the key by it alone.
    use std::os::unix::fs::PermissionsExt;
    for (file, mode) in [("ca.crt", 0o644), ("server.crt", 0o644), ("server.key", 0o600)] {
        let path = dir.join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        if understudy::pg::os_user::running_as_root() {
            understudy::pg::os_user::RunAs::detect()
                .expect("run as")
                .own(&path)
                .expect("own");
        }
    }
    let path = |f: &str| dir.join(f).display().to_string();
    (path("ca.crt"), path("server.crt"), path("server.key"))
}

//! A real Kubernetes control plane for a test: etcd, kube-apiserver (RBAC on) and kube-controller-manager
//! (garbage collector, Job, namespace, StatefulSet and PVC-protection controllers: [`DEFAULT_CONTROLLERS`]) on free
//! loopback ports, data and logs under a root the test owns, killed on drop. The binaries come from
//! `.ci/kube-build` (Debian's `kubernetes` source package, 1.20) and Debian's `etcd-server`. There is no kubelet,
//! scheduler or container runtime: Pods stay `Pending` unless the test plays the node (`tests/local-cluster` does).

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The user of [`ControlPlane::operator_token`]: no groups, so it can do only what RBAC grants it.
pub const OPERATOR_USER: &str = "understudy-operator";
/// The user of [`ControlPlane::admin_token`], in `system:masters`.
pub const ADMIN_USER: &str = "understudy-admin";

/// The kube-controller-manager controllers [`ControlPlane::start`] runs: the garbage collector (owned objects go with
/// their owner), Jobs, namespace deletion, StatefulSets (a StatefulSet becomes its Pods and their PVCs) and PVC
/// protection (the API server's admission gives every PVC the `kubernetes.io/pvc-protection` finalizer; this
/// controller removes it once no Pod uses the claim, or a deleted PVC would stay `Terminating` for ever).
pub const DEFAULT_CONTROLLERS: &[&str] = &["garbagecollector", "job", "namespace", "statefulset", "pvc-protection"];

/// How [`ControlPlane::start_with`] starts the control plane.
#[derive(Clone, Debug, Default)]
pub struct ControlPlaneOptions {
    /// The API server's port on 127.0.0.1; a free one when `None`.
    pub api_port: Option<u16>,
    /// kube-controller-manager's `--controllers`; [`DEFAULT_CONTROLLERS`] when empty.
    pub controllers: Vec<String>,
}

/// How long [`ControlPlane::start`] waits for `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long [`Drop`] waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where `.ci/kube-build` puts `bin/kube-apiserver` and `bin/kube-controller-manager`.
pub fn kube_dir() -> PathBuf {
    std::env::var_os("UNDERSTUDY_KUBE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/understudy-tools/kube"))
}

/// A running control plane; dropping it stops every process it started.
pub struct ControlPlane {
    root: PathBuf,
    server_url: String,
    admin_token: String,
    operator_token: String,
    /// In start order; stopped in reverse.
    children: Vec<(&'static str, Child)>,
    startup: Duration,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager with data, certificates, kubeconfigs and logs under
    /// `root` (created if missing), and returns once `/readyz` answers 200.
    pub async fn start(root: &Path) -> Result<ControlPlane> {
        Self::start_with(root, &ControlPlaneOptions::default()).await
    }

    /// [`ControlPlane::start`] with a chosen API port and controllers. A `root` used before keeps its etcd data
    /// (the objects survive) and its serving certificate; tokens and kubeconfigs are new on every start.
    pub async fn start_with(root: &Path, options: &ControlPlaneOptions) -> Result<ControlPlane> {
        let began = Instant::now();
        let bins = kube_dir().join("bin");
        let apiserver = bins.join("kube-apiserver");
        let controller_manager = bins.join("kube-controller-manager");
        for b in [&apiserver, &controller_manager] {
            if !b.is_file() {
                bail!("{} is missing: run `bash .ci/kube-build` (as root) first", b.display());
            }
        }
        let etcd = find_in_path("etcd").context("etcd is not on PATH: run `bash .ci/kube-build` (as root) first")?;

        std::fs::create_dir_all(root).with_context(|| format!("create {}", root.display()))?;
        let root = root
            .canonicalize()
            .with_context(|| format!("canonicalize {}", root.display()))?;
        for d in ["etcd", "certs", "logs"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        let [etcd_port, peer_port, free_api_port] = free_ports()?;
        let api_port = options.api_port.unwrap_or(free_api_port);
        let controllers = if options.controllers.is_empty() {
            DEFAULT_CONTROLLERS.join(",")
        } else {
            options.controllers.join(",")
        };
        let mut cp = ControlPlane {
            server_url: format!("https://127.0.0.1:{api_port}"),
            admin_token: random_token()?,
            operator_token: random_token()?,
            children: Vec::new(),
            startup: Duration::ZERO,
            root,
        };
        let r = cp.root.clone();
        let p = |name: &str| r.join(name).display().to_string();

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        cp.spawn(
            "etcd",
            &etcd,
            &[
                ("--data-dir", &p("etcd")),
                ("--listen-client-urls", &etcd_url),
                ("--advertise-client-urls", &etcd_url),
                ("--listen-peer-urls", &peer_url),
                ("--initial-advertise-peer-urls", &peer_url),
                ("--initial-cluster", &format!("default={peer_url}")),
                ("--logger", "zap"),
            ],
        )?;

        // The service-account key pair (the token controller is not run, but the flags are required).
        openssl(&["genrsa", "-out", &p("sa.key"), "2048"]).await?;
        openssl(&["rsa", "-in", &p("sa.key"), "-pubout", "-out", &p("sa.pub")]).await?;
        std::fs::write(
            r.join("tokens.csv"),
            format!(
                "{},{ADMIN_USER},{ADMIN_USER},system:masters\n{},{OPERATOR_USER},{OPERATOR_USER}\n",
                cp.admin_token, cp.operator_token
            ),
        )?;
        cp.wait_until("etcd /health", &format!("{etcd_url}/health"), None)
            .await?;

        cp.spawn(
            "kube-apiserver",
            &apiserver,
            &[
                ("--etcd-servers", &etcd_url),
                ("--bind-address", "127.0.0.1"),
                ("--secure-port", &api_port.to_string()),
                ("--cert-dir", &p("certs")),
                ("--token-auth-file", &p("tokens.csv")),
                ("--authorization-mode", "RBAC"),
                ("--service-account-key-file", &p("sa.pub")),
                ("--service-account-signing-key-file", &p("sa.key")),
                ("--service-account-issuer", "https://kubernetes.default.svc"),
                ("--service-cluster-ip-range", "10.0.0.0/24"),
                ("--disable-admission-plugins", "ServiceAccount"),
            ],
        )?;
        let readyz = format!("{}/readyz", cp.server_url);
        let token = cp.admin_token.clone();
        cp.wait_until("kube-apiserver /readyz", &readyz, Some(&token)).await?;

        // The self-signed serving certificate is written with its CA after it: keep the CA for the kubeconfigs.
        let bundle = std::fs::read_to_string(r.join("certs/apiserver.crt")).context("read certs/apiserver.crt")?;
        let ca = last_pem_cert(&bundle).context("no certificate in certs/apiserver.crt")?;
        std::fs::write(r.join("ca.crt"), ca)?;
        cp.write_kubeconfig(&cp.admin_kubeconfig(), "admin", &cp.admin_token, "default")?;
        cp.write_kubeconfig(&cp.operator_kubeconfig(), "operator", &cp.operator_token, "default")?;

        cp.spawn_controller_manager(&controller_manager, &controllers)?;
        // Let a controller manager that fails on its flags fail here rather than in the test.
        tokio::time::sleep(Duration::from_millis(300)).await;
        cp.check_alive()?;
        cp.startup = began.elapsed();
        Ok(cp)
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The root given to [`ControlPlane::start`], canonicalized.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// PEM of the CA that signed the API server's certificate (valid for 127.0.0.1).
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.root.join("admin.kubeconfig")
    }

    pub fn operator_kubeconfig(&self) -> PathBuf {
        self.root.join("operator.kubeconfig")
    }

    /// Bearer token of [`ADMIN_USER`] (`system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Bearer token of [`OPERATOR_USER`] (no groups: RBAC applies).
    pub fn operator_token(&self) -> &str {
        &self.operator_token
    }

    pub fn operator_user(&self) -> &'static str {
        OPERATOR_USER
    }

    /// How long [`ControlPlane::start`] took until the API server was ready.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// `kubectl --kubeconfig KUBECONFIG`, ready for `.args(..)`.
    pub fn kubectl(&self, kubeconfig: &Path) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(kubeconfig).stdin(Stdio::null());
        c
    }

    /// Runs kubectl as the admin and returns its stdout, or an error with its stderr.
    pub fn kubectl_admin(&self, args: &[&str]) -> Result<String> {
        let out = self
            .kubectl(&self.admin_kubeconfig())
            .args(args)
            .output()
            .context("run kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The last lines of each process's log, for a failing test to print.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            let path = self.log_path(name);
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            let _ = writeln!(
                out,
                "==> {} (last {} lines) <==\n{}",
                path.display(),
                tail.len(),
                tail.join("\n")
            );
        }
        out
    }

    /// Pids of the processes still running.
    pub fn pids(&mut self) -> Vec<u32> {
        self.children
            .iter_mut()
            .filter_map(|(_, c)| matches!(c.try_wait(), Ok(None)).then(|| c.id()))
            .collect()
    }

    /// `ROOT/logs/NAME.log` of `etcd`, `kube-apiserver` or `kube-controller-manager`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.root.join("logs").join(format!("{name}.log"))
    }

    /// Starts `program --flag=value...` with its output in `logs/NAME.log`.
    fn spawn(&mut self, name: &'static str, program: &Path, flags: &[(&str, &str)]) -> Result<()> {
        let log = std::fs::File::create(self.log_path(name))?;
        let child = Command::new(program)
            .args(flags.iter().map(|(k, v)| format!("{k}={v}")))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        self.children.push((name, child));
        Ok(())
    }

    /// Starts kube-controller-manager as the admin with `controllers` (comma-separated).
    fn spawn_controller_manager(&mut self, program: &Path, controllers: &str) -> Result<()> {
        let kubeconfig = self.admin_kubeconfig().display().to_string();
        let sa_key = self.root.join("sa.key").display().to_string();
        self.spawn(
            "kube-controller-manager",
            program,
            &[
                ("--kubeconfig", &kubeconfig),
                ("--controllers", controllers),
                ("--leader-elect", "false"),
                ("--use-service-account-credentials", "false"),
                ("--service-account-private-key-file", &sa_key),
                ("--port", "0"),
                ("--secure-port", "0"),
            ],
        )
    }

    fn check_alive(&mut self) -> Result<()> {
        let mut dead = None;
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                dead = Some(format!("{name} exited ({status})"));
                break;
            }
        }
        match dead {
            Some(what) => bail!("{what} during start-up\n{}", self.logs()),
            None => Ok(()),
        }
    }

    /// Polls `url` with `curl` until it answers 200, failing early if a process died.
    async fn wait_until(&mut self, what: &str, url: &str, token: Option<&str>) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        loop {
            let mut curl = tokio::process::Command::new("curl");
            curl.args(["-k", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"]);
            if let Some(h) = &auth {
                curl.args(["-H", h]);
            }
            let out = curl.arg(url).stdin(Stdio::null()).output().await.context("run curl")?;
            let last = String::from_utf8_lossy(&out.stdout).into_owned();
            if last == "200" {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{what} did not answer 200 within {READY_TIMEOUT:?} (last: {last:?})\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Writes a kubeconfig for this server (CA: [`ControlPlane::ca_cert`]) with one user `user` authenticated by
    /// `token` and `namespace` as the context's namespace.
    pub fn write_kubeconfig(&self, path: &Path, user: &str, token: &str, namespace: &str) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: understudy\n  cluster:\n    server: {}\n    \
             certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: \
             {user}\n  context:\n    cluster: understudy\n    user: {user}\n    namespace: {namespace}\n\
             current-context: {user}\n",
            self.server_url,
            self.ca_cert().display(),
        );
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // One at a time in reverse start order (an API server whose etcd is gone does not exit on SIGTERM):
        // SIGTERM, a short wait, then SIGKILL.
        while let Some((_, mut child)) = self.children.pop() {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                let deadline = Instant::now() + STOP_GRACE;
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if matches!(child.try_wait(), Ok(None)) {
                    let _ = child.kill();
                }
            }
            let _ = child.wait();
        }
    }
}

/// Three distinct free loopback ports (held together while picked, so they differ).
fn free_ports() -> Result<[u16; 3]> {
    let listeners = [
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
    ];
    let mut ports = [0u16; 3];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
}

/// 32 hex digits from the kernel's random source.
fn random_token() -> Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

async fn openssl(args: &[&str]) -> Result<()> {
    let mut cmd = tokio::process::Command::new("openssl");
    cmd.args(args);
    run_tool(
        cmd,
        &format!("openssl {}", args.join(" ")),
        "install it: bash .ci/kube-build",
    )
    .await?;
    Ok(())
}

/// Runs `cmd` (stdin closed, without blocking the runtime): its stdout, or an error naming `what` with its stderr
/// (`hint` when it cannot start).
pub async fn run_tool(mut cmd: tokio::process::Command, what: &str, hint: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("run {what} ({hint})"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `CERTIFICATE` block of a PEM bundle.
fn last_pem_cert(bundle: &str) -> Option<String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let start = bundle.rfind(BEGIN)?;
    let end = bundle[start..].find(END)? + start + END.len();
    Some(format!("{}\n", &bundle[start..end]))
}

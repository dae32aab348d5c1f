//! The operator as a local process: `OPERATOR_BIN --namespace NS --agent-image understudy:local [EXTRA...]` with
//! `KUBECONFIG=DIR/operator.kubeconfig` (the non-admin user), its output appended to `DIR/logs/operator.log`, in its
//! own process group (stopped as a whole: SIGTERM, then SIGKILL).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::procs;

/// The image name the operator is told to use; the node ignores images.
pub const AGENT_IMAGE: &str = "understudy:local";

/// A running operator.
pub struct OperatorProcess {
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

/// How the operator is started (kept to restart it).
#[derive(Clone, Debug)]
pub struct OperatorCommand {
    pub program: PathBuf,
    pub kubeconfig: PathBuf,
    pub namespace: String,
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

impl OperatorProcess {
    pub fn start(cmd: &OperatorCommand) -> Result<Self> {
        use std::os::unix::process::CommandExt as _;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cmd.log)
            .with_context(|| format!("open {}", cmd.log.display()))?;
        let child = Command::new(&cmd.program)
            .args(["--namespace", &cmd.namespace, "--agent-image", AGENT_IMAGE])
            // Its /metrics on a port of its own: 0.0.0.0:8080 would take the agents' port on every loopback address.
            .args(["--listen", "127.0.0.1:0"])
            .args(&cmd.extra_args)
            .env("KUBECONFIG", &cmd.kubeconfig)
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .env_remove(procs::MARKER_VAR)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start the operator {}", cmd.program.display()))?;
        Ok(OperatorProcess {
            child,
            log: cmd.log.clone(),
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// How it ended, if it did.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// SIGTERM to its group, up to `grace`, then SIGKILL; waits without blocking the runtime.
    pub async fn stop(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.signal_group("TERM");
        while self.exit_status().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill_and_reap();
    }

    /// [`OperatorProcess::stop`] from synchronous code (`Drop`).
    pub fn stop_blocking(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.signal_group("TERM");
        while self.exit_status().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill_and_reap();
    }

    fn signal_group(&self, signal: &str) {
        procs::signal(-i64::from(self.child.id()), signal);
    }

    /// SIGKILL to its group at once (a crash), and reaped.
    pub fn kill(&mut self) {
        self.kill_and_reap();
    }

    fn kill_and_reap(&mut self) {
        // Its group may outlive it (a script's children).
        self.signal_group("KILL");
        if self.exit_status().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

//! An `understudy agent` process for the tests, and a client of its API.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use understudy::agent::AgentRecord;
use understudy::sandbox::StateDir;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// The `understudy` binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_understudy")
}

/// `understudy --state-dir STATE`, to which a test adds its arguments.
pub fn cli(state: &StateDir) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("--state-dir").arg(state.root());
    cmd
}

/// A running agent, killed when dropped.
pub struct Agent {
    pub child: Child,
    pub record: AgentRecord,
    pub state: StateDir,
    pub log: PathBuf,
    pub http: reqwest::Client,
    pub base: String,
}

impl Agent {
    /// Starts `understudy agent` for `state` with the test token and `extra` arguments; waits until it listens.
    pub async fn start(state: &StateDir, extra: &[&str]) -> Self {
        std::fs::create_dir_all(state.root()).expect("state dir");
        let token_file = state.root().join("test.token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
        let log = state.root().join("test-agent.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(bin())
            .arg("--state-dir")
            .arg(state.root())
            .arg("-v")
            .args([
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--follow-interval",
                "1s",
                "--token-file",
            ])
            .arg(&token_file)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn the agent");
        let record = wait_for_record(state, child.id(), &log).await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client");
        let base = record.url();
        Agent {
            child,
            record,
            state: state.clone(),
            log,
            http,
            base,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET");
        (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.with_body(reqwest::Method::POST, path, body).await
    }

    pub async fn put(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.with_body(reqwest::Method::PUT, path, body).await
    }

    pub async fn patch(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.with_body(reqwest::Method::PATCH, path, body).await
    }

    async fn with_body(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let r = self
            .http
            .request(method.clone(), self.url(path))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .delete(self.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("DELETE");
        (r.status().as_u16(), r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Polls a dry-run until it ends; returns its view.
    pub async fn wait_run(&self, id: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, view) = self.get(&format!("/v1/dryruns/{id}")).await;
            assert_eq!(status, 200, "{view}");
            if matches!(view["phase"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
                return view;
            }
            assert!(Instant::now() < deadline, "dry-run {id} did not end: {view}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Polls until the run is in `phase`.
    pub async fn wait_phase(&self, id: &str, phase: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, view) = self.get(&format!("/v1/dryruns/{id}")).await;
            if view["phase"].as_str() == Some(phase) {
                return;
            }
            assert!(Instant::now() < deadline, "dry-run {id} never reached {phase}: {view}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits for the process to exit; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "the agent did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the agent of `state` with `pid` has written its record.
pub async fn wait_for_record(state: &StateDir, pid: u32, log: &Path) -> AgentRecord {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = understudy::agent::running(state).filter(|r| r.pid == pid) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A migration that fails on the seed's data: `plan` has NULLs in 123 rows of accounts.
pub const SET_NOT_NULL: &str = "ALTER TABLE accounts ALTER COLUMN plan SET NOT NULL;\n";

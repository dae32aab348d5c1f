//! Steady `pgbench -n -c 2 -j 2 -R <rate> -P 1` (built-in TPC-B-like script) on the source: the write load every
//! measurement under load runs beside, with pgbench's per-second TPS reports kept.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::AsyncBufReadExt;

use crate::lab::{DATABASE, Lab};
use crate::pgtool;
use crate::sync::mean;

/// Steady pgbench load on the source, killed when dropped; its per-second TPS reports are kept.
pub struct Load {
    child: tokio::process::Child,
    progress: Arc<Mutex<Vec<(Instant, f64)>>>,
    tail: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Load {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Load {
    pub fn start(lab: &Lab, rate: u32) -> Result<Self> {
        let source = lab.source()?;
        let mut cmd = pgtool::command(&lab.bins, "pgbench");
        cmd.arg("-h")
            .arg(&source.cluster.config().socket_dir)
            .arg("-p")
            .arg(source.cluster.port().to_string())
            .args([
                "-U", "postgres", "-n", "-c", "2", "-j", "2", "-P", "1", "-T", "86400", "-R",
            ])
            .arg(rate.to_string())
            .arg(DATABASE)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting pgbench (load)")?;
        let stderr = child.stderr.take().context("pgbench's standard error")?;
        let progress = Arc::new(Mutex::new(Vec::new()));
        let tail = Arc::new(Mutex::new(Vec::new()));
        let reader = {
            let progress = Arc::clone(&progress);
            let tail = Arc::clone(&tail);
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(tps) = parse_progress(&line) {
                        if let Ok(mut p) = progress.lock() {
                            p.push((Instant::now(), tps));
                        }
                    } else if let Ok(mut t) = tail.lock() {
                        t.push(line);
                        let excess = t.len().saturating_sub(20);
                        t.drain(..excess);
                    }
                }
            })
        };
        Ok(Load {
            child,
            progress,
            tail,
            reader,
        })
    }

    /// Fails when pgbench is no longer running.
    pub fn check(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("checking on pgbench")? {
            let tail = self.tail.lock().map(|t| t.join("\n")).unwrap_or_default();
            bail!("the pgbench load ended early ({status}): {tail}");
        }
        Ok(())
    }

    /// Mean of pgbench's per-second TPS reports covering `from..to` (the first report after `to` when the
    /// window is shorter than a report).
    pub fn tps(&self, from: Instant, to: Instant) -> Option<f64> {
        let progress = self.progress.lock().ok()?;
        let until = to + Duration::from_secs(1);
        let inside: Vec<f64> = progress
            .iter()
            .filter(|(at, _)| *at > from && *at <= until)
            .map(|(_, tps)| *tps)
            .collect();
        if inside.is_empty() {
            progress.iter().find(|(at, _)| *at > to).map(|(_, tps)| *tps)
        } else {
            Some(mean(inside.iter().copied()))
        }
    }

    /// Every report so far: the load's mean TPS over the whole run.
    pub fn overall_tps(&self) -> Option<f64> {
        let progress = self.progress.lock().ok()?;
        (!progress.is_empty()).then(|| mean(progress.iter().map(|(_, t)| *t)))
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `progress: 5.0 s, 499.8 tps, lat 1.234 ms stddev 0.456, 0 failed, lag 0.123 ms` → 499.8.
fn parse_progress(line: &str) -> Option<f64> {
    line.strip_prefix("progress: ")?
        .split(", ")
        .find_map(|part| part.strip_suffix(" tps"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_progress() {
        assert_eq!(
            parse_progress("progress: 5.0 s, 499.8 tps, lat 1.234 ms stddev 0.456, 0 failed, lag 0.123 ms"),
            Some(499.8)
        );
        assert_eq!(
            parse_progress("progress: 1.0 s, 0.0 tps, lat 0.000 ms stddev 0.000, lag 0.000 ms"),
            Some(0.0)
        );
        assert_eq!(parse_progress("starting vacuum...end."), None);
    }
}

//! Progress of long steps on a terminal (items, bytes, rate, ETA) on stderr; silent when stderr is not a TTY.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A shared counter that a ticker renders.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total_bytes: u64,
    total_items: u64,
    bytes: AtomicU64,
    items: AtomicU64,
    started: Instant,
    done: AtomicBool,
}

impl Progress {
    /// Starts a progress line; it is drawn every 250 ms while stderr is a terminal and `enabled`.
    pub fn start(label: &str, total_items: u64, total_bytes: u64, enabled: bool) -> Arc<Self> {
        let progress = Arc::new(Progress {
            label: label.to_string(),
            total_bytes,
            total_items,
            bytes: AtomicU64::new(0),
            items: AtomicU64::new(0),
            started: Instant::now(),
            done: AtomicBool::new(false),
        });
        if enabled && std::io::stderr().is_terminal() {
            let ticker = Arc::clone(&progress);
            tokio::spawn(async move {
                while !ticker.done.load(Ordering::Relaxed) {
                    eprint!("\r\x1b[2K{}", ticker.line());
                    let _ = std::io::stderr().flush();
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
        }
        progress
    }

    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_item(&self) {
        self.items.fetch_add(1, Ordering::Relaxed);
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Stops drawing and clears the line.
    pub fn finish(&self) {
        if !self.done.swap(true, Ordering::Relaxed) && std::io::stderr().is_terminal() {
            eprint!("\r\x1b[2K");
        }
    }

    fn line(&self) -> String {
        let bytes = self.bytes();
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = bytes as f64 / elapsed;
        let eta = if self.total_bytes > bytes && rate > 0.0 {
            format!(", ETA {:.0}s", (self.total_bytes - bytes) as f64 / rate)
        } else {
            String::new()
        };
        format!(
            "{}: {}/{} done, {} of ~{} ({}/s){eta}",
            self.label,
            self.items.load(Ordering::Relaxed),
            self.total_items,
            human_bytes(bytes),
            human_bytes(self.total_bytes),
            human_bytes(rate as u64)
        )
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanises() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}

//! How much CPU *other* processes used while the benchmark measured, so that a disturbed run can be told from a
//! quiet one. A thread samples `/proc` every 250 ms: the machine's busy CPU time (`/proc/stat`) minus the CPU time
//! of this process, its descendants (pg_dump, pgbench, ...) and the PostgreSQL servers whose command line names
//! the working directory, with their backends. Processes that live less than one sampling interval are counted as
//! other processes, so the figure errs on the high side.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Linux reports CPU times in USER_HZ ticks, 100 per second on every mainstream architecture.
const TICKS_PER_SECOND: f64 = 100.0;
const INTERVAL: Duration = Duration::from_millis(250);

/// The sampling thread; stopped when dropped.
pub struct Noise {
    foreign_ticks: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Noise {
    /// Starts sampling; servers whose command line contains `root` count as this benchmark's.
    pub fn start(root: &Path) -> Self {
        let foreign_ticks = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let marker = root.display().to_string();
        let thread = {
            let foreign_ticks = Arc::clone(&foreign_ticks);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("noise".into())
                .spawn(move || sample(&marker, &foreign_ticks, &stop))
                .ok()
        };
        Noise {
            foreign_ticks,
            stop,
            thread,
        }
    }

    /// CPU seconds used by other processes since the start.
    pub fn foreign_seconds(&self) -> f64 {
        self.foreign_ticks.load(Ordering::Relaxed) as f64 / TICKS_PER_SECOND
    }

    /// Whether the sampling works here (a `/proc` file system).
    pub fn available(&self) -> bool {
        self.thread.is_some() && system_busy_ticks().is_some()
    }
}

impl Drop for Noise {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sample(marker: &str, foreign_ticks: &AtomicU64, stop: &AtomicBool) {
    let me = std::process::id();
    let mut last_busy = system_busy_ticks().unwrap_or(0);
    let mut last_ours = our_processes(me, marker);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(INTERVAL);
        let Some(busy) = system_busy_ticks() else {
            return;
        };
        let ours = our_processes(me, marker);
        let our_delta: u64 = ours
            .iter()
            .map(|(pid, cpu)| cpu.saturating_sub(last_ours.get(pid).copied().unwrap_or(0)))
            .sum();
        let busy_delta = busy.saturating_sub(last_busy);
        foreign_ticks.fetch_add(busy_delta.saturating_sub(our_delta), Ordering::Relaxed);
        last_busy = busy;
        last_ours = ours;
    }
}

/// The busy ticks of all CPUs: user, nice, system, irq, softirq and steal (not idle, not iowait).
fn system_busy_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

/// This process, its descendants and the servers under `marker` with theirs: pid → user + system ticks.
fn our_processes(me: u32, marker: &str) -> HashMap<u32, u64> {
    let mut procs: HashMap<u32, (u32, u64, bool)> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        let ppid = num(1) as u32;
        let cpu = num(11) + num(12);
        let is_server = head.ends_with("(postgres")
            && std::fs::read(entry.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false);
        procs.insert(pid, (ppid, cpu, is_server));
    }
    let mut ours = HashMap::new();
    for (&pid, &(_, cpu, _)) in &procs {
        let mut at = pid;
        for _ in 0..64 {
            let Some(&(ppid, _, is_server)) = procs.get(&at) else {
                break;
            };
            if at == me || is_server {
                ours.insert(pid, cpu);
                break;
            }
            if ppid == 0 || ppid == at {
                break;
            }
            at = ppid;
        }
    }
    ours
}

//! The fork benchmark's tables: each data size's runs, its dump + restore, per strategy against the baseline,
//! flatness from 1× to 4×, and the summary.

use understudy::fork::Strategy;

use super::{FLAT, ForkRun, ORDER, ScaleReport};
use crate::sync::mean;
use crate::table::{self, Table, secs};

fn ms(ms: u64) -> String {
    secs(ms as f64 / 1000.0)
}

fn opt_tps(tps: Option<f64>) -> String {
    tps.map_or_else(|| "?".to_string(), |t| format!("{t:.0}"))
}

fn yes_no(met: bool) -> String {
    if met { "yes" } else { "**no**" }.to_string()
}

/// Copy-on-write strategies: the ones the ≤ 2 s and ≥ 8× targets are about.
fn copy_on_write(strategy: Strategy) -> bool {
    matches!(strategy, Strategy::BtrfsSnapshot | Strategy::Reflink)
}

impl ScaleReport {
    fn label(&self) -> String {
        format!(
            "scale {} ({}, {} accounts)",
            self.scale,
            table::bytes(self.database_bytes),
            self.accounts_rows
        )
    }

    pub fn of(&self, strategy: Strategy) -> impl Iterator<Item = &ForkRun> {
        self.forks.iter().filter(move |f| f.strategy == strategy)
    }

    pub fn mean_fork(&self, strategy: Strategy) -> f64 {
        mean(self.of(strategy).map(|f| f.seconds))
    }

    fn max_fork(&self, strategy: Strategy) -> f64 {
        self.of(strategy).map(|f| f.seconds).fold(0.0, f64::max)
    }

    fn mean_pause(&self, strategy: Strategy) -> f64 {
        mean(self.of(strategy).map(|f| f.timings.pause_ms as f64 / 1000.0))
    }

    pub fn mean_dump(&self) -> f64 {
        mean(self.dumps.iter().map(|d| d.run.total()))
    }

    pub fn runs_table(&self) -> Table {
        let mut t = Table::new(
            &format!("Forks, {}: every run", self.label()),
            &[
                "strategy (filesystem)",
                "round",
                "fork ready",
                "↳ before the pause",
                "↳ apply pause",
                "↳ capture slot",
                "↳ copy",
                "↳ start + detach",
                "fork point",
                "sandbox caught up after",
                "source tps",
                "other CPU",
            ],
        );
        for f in &self.forks {
            t.row([
                format!("{} ({})", f.strategy.as_str(), f.fs),
                (f.round + 1).to_string(),
                secs(f.seconds),
                ms(f.timings
                    .total_ms
                    .saturating_sub(f.timings.pause_ms + f.timings.start_ms)),
                ms(f.timings.pause_ms),
                ms(f.timings.capture_slot_ms),
                ms(f.timings.copy_ms),
                ms(f.timings.start_ms),
                f.lsn.clone(),
                secs(f.catch_up),
                opt_tps(f.tps),
                format!("{:.1} s", f.other_cpu),
            ]);
        }
        t
    }

    pub fn dump_table(&self, jobs: u32) -> Table {
        let mut t = Table::new(
            &format!(
                "pg_dump -Fd -j{jobs} + pg_restore -j{jobs} under the same load, {}",
                self.label()
            ),
            &[
                "round",
                "pg_dump",
                "pg_restore",
                "dump + restore",
                "source tps",
                "other CPU",
            ],
        );
        for d in &self.dumps {
            t.row([
                (d.round + 1).to_string(),
                secs(d.run.dump),
                secs(d.run.restore),
                secs(d.run.total()),
                opt_tps(d.tps),
                format!("{:.1} s", d.run.other_cpu),
            ]);
        }
        t
    }

    pub fn strategy_table(&self, jobs: u32) -> Table {
        let n = self.dumps.len();
        let mut t = Table::new(
            &format!("Per strategy, {}: means of {n} run(s)", self.label()),
            &[
                "strategy (filesystem)",
                "fork ready (min–max)",
                "apply pause",
                "copy",
                "start + detach",
                &format!("dump + restore (-j{jobs})"),
                "dump+restore / fork",
                "≤ 2 s (every run)",
                "≥ 8×",
            ],
        );
        let dump = self.mean_dump();
        for strategy in ORDER {
            let runs: Vec<&ForkRun> = self.of(strategy).collect();
            let Some(first) = runs.first() else { continue };
            let fork = self.mean_fork(strategy);
            let min = runs.iter().map(|f| f.seconds).fold(f64::INFINITY, f64::min);
            let ratio = dump / fork;
            let cow = copy_on_write(strategy);
            t.row([
                format!("{} ({})", strategy.as_str(), first.fs),
                format!("{} ({:.2}–{:.2})", secs(fork), min, self.max_fork(strategy)),
                secs(self.mean_pause(strategy)),
                secs(mean(runs.iter().map(|f| f.timings.copy_ms as f64 / 1000.0))),
                secs(mean(runs.iter().map(|f| f.timings.start_ms as f64 / 1000.0))),
                secs(dump),
                format!("**{ratio:.1}×**"),
                if cow {
                    yes_no(self.max_fork(strategy) <= 2.0)
                } else {
                    "(not a target)".to_string()
                },
                if cow {
                    yes_no(ratio >= 8.0)
                } else {
                    "(not a target)".to_string()
                },
            ]);
        }
        t.row([
            "source load during the forks (mean pgbench tps)".to_string(),
            opt_tps(self.load_tps),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        if let Some(other) = self.other_cpu {
            t.row([
                "CPU used by other processes during this data size".to_string(),
                format!("{other:.1} s"),
            ]);
        }
        t
    }
}

pub fn flatness_table(reports: &[ScaleReport], jobs: u32) -> Table {
    let (first, last) = match (reports.first(), reports.last()) {
        (Some(a), Some(b)) => (a, b),
        _ => return Table::new("Fork time against data size", &["-"]),
    };
    let factor = f64::from(last.scale) / f64::from(first.scale);
    let mut t = Table::new(
        &format!(
            "Fork time against data size: scale {} → {} ({factor:.0}× the data)",
            first.scale, last.scale
        ),
        &[
            "method",
            &format!("{}×: ready", 1),
            &format!("{factor:.0}×: ready"),
            "growth",
            &format!("flat (growth ≤ {FLAT})"),
            "1×: apply pause",
            &format!("{factor:.0}×: apply pause"),
            &format!("{factor:.0}×: dump+restore / fork"),
        ],
    );
    for strategy in ORDER {
        if first.of(strategy).next().is_none() || last.of(strategy).next().is_none() {
            continue;
        }
        let (a, b) = (first.mean_fork(strategy), last.mean_fork(strategy));
        t.row([
            strategy.as_str().to_string(),
            secs(a),
            secs(b),
            format!("{:.2}×", b / a),
            yes_no(b / a <= FLAT),
            secs(first.mean_pause(strategy)),
            secs(last.mean_pause(strategy)),
            format!("{:.1}×", last.mean_dump() / b),
        ]);
    }
    let (a, b) = (first.mean_dump(), last.mean_dump());
    t.row([
        format!("pg_dump -Fd -j{jobs} + pg_restore -j{jobs}"),
        secs(a),
        secs(b),
        format!("{:.2}×", b / a),
        yes_no(b / a <= FLAT),
        String::new(),
        String::new(),
        String::new(),
    ]);
    t
}

pub fn summary_table(reports: &[ScaleReport], jobs: u32) -> Table {
    let mut t = Table::new("Summary", &["measure", "this run", "target", "met"]);
    for report in reports {
        for strategy in ORDER.into_iter().filter(|s| copy_on_write(*s)) {
            if report.of(strategy).next().is_none() {
                continue;
            }
            let fork = report.mean_fork(strategy);
            let max = report.max_fork(strategy);
            t.row([
                format!(
                    "{} fork ready, scale {}: mean (slowest run)",
                    strategy.as_str(),
                    report.scale
                ),
                format!("{} ({})", secs(fork), secs(max)),
                "≤ 2 s".to_string(),
                yes_no(max <= 2.0),
            ]);
            let ratio = report.mean_dump() / fork;
            t.row([
                format!(
                    "{}: (pg_dump -j{jobs} + pg_restore -j{jobs}) / fork, scale {}",
                    strategy.as_str(),
                    report.scale
                ),
                format!("{ratio:.1}× ({} / {})", secs(report.mean_dump()), secs(fork)),
                "≥ 8×".to_string(),
                yes_no(ratio >= 8.0),
            ]);
        }
    }
    if let (Some(first), Some(last)) = (reports.first(), reports.last())
        && reports.len() > 1
    {
        for strategy in ORDER.into_iter().filter(|s| copy_on_write(*s)) {
            if first.of(strategy).next().is_none() || last.of(strategy).next().is_none() {
                continue;
            }
            let growth = last.mean_fork(strategy) / first.mean_fork(strategy);
            t.row([
                format!(
                    "{} fork ready, scale {} → {}",
                    strategy.as_str(),
                    first.scale,
                    last.scale
                ),
                format!("{growth:.2}×"),
                format!("flat (≤ {FLAT}×)"),
                yes_no(growth <= FLAT),
            ]);
        }
    }
    for report in reports {
        let pauses: Vec<String> = ORDER
            .iter()
            .filter(|s| report.of(**s).next().is_some())
            .map(|s| format!("{} {}", s.as_str(), secs(report.mean_pause(*s))))
            .collect();
        t.row([
            format!("sandbox apply pause (mean), scale {}", report.scale),
            pauses.join(", "),
            String::new(),
            String::new(),
        ]);
    }
    t
}

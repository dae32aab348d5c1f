//! `understudy-bench all`: every figure of the comparison with the manual way, measured in one run on the same
//! data, at `--scale` and at `--scale-factor` times that, ending with one table of ratios.
//!
//! ```sh
//! cargo run --release -p understudy-bench -- all --scale 50
//! ```
//!
//! Per data size, on one source loaded with `pgbench -i -s <scale>` (as in `sync`):
//!
//! 1. **Initial sync**: `sync`'s warm-up round and `--repeat` rounds of `understudy::sandbox::create` against
//!    `pg_dump -Fd -j` + `pg_restore -j` (method: `main.rs`). The last sandbox is then deleted.
//! 2. **Forks**: `fork`'s measurements (method: `fork.rs`): a sandbox on loop-mounted btrfs and one on xfs,
//!    fork-ready time per strategy under `pgbench -R <fork-rate>` against dump + restore under the same load.
//! 3. **Dry-run**: `dryrun`'s three measurements (method: `dryrun.rs`) on the btrfs sandbox of step 2 (forks are
//!    btrfs snapshots, the recommended set-up): replay throughput against the source's write rate, lock-wait
//!    resolution against a 10 s poller, and the time from a migration file to a verdict against the manual
//!    workflow scripted on the same data (dump, restore, `psql -f` up, a check query, `psql -f` down).
//!
//! Then a summary: each comparison as a ratio, one column per data size, with its target. It needs root (loop
//! mounts). Everything is removed after each data size, also after an error or Ctrl-C.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use understudy::fork::Strategy;
use understudy::source::SandboxName;

use crate::dryrun::{self, Figures, Settings};
use crate::fork::{self, ScaleReport};
use crate::lab::{Lab, Machine};
use crate::rig::Rig;
use crate::sync::{self, SyncReport};
use crate::table::{self, Table, secs};
use crate::{AllArgs, ForkArgs, Sizes, SyncArgs, run};

/// Everything measured at one data size.
struct Size {
    scale: u32,
    label: String,
    sync: SyncReport,
    forks: ScaleReport,
    dryrun: Figures,
}

pub async fn command(args: AllArgs) -> Result<()> {
    if !understudy::pg::os_user::running_as_root() {
        bail!("the benchmark loop-mounts btrfs and xfs filesystems for the forks: run it as root");
    }
    let base = run::make_base(args.dir.clone(), "all")?;
    let scales = args.sizes.scales()?;
    println!("# understudy-bench all");
    let (sizes, ended) = run::per_size(&base, &scales, async |lab: &mut Lab, rig: &mut Rig, scale, i| {
        if i == 0 {
            print!("{}", setup_table(&args, lab).await.render());
        }
        run_size(&args, lab, rig, scale).await
    })
    .await;
    if !sizes.is_empty() {
        print!("{}", summary(&sizes, &args).render());
    }
    ended
}

async fn setup_table(args: &AllArgs, lab: &Lab) -> Table {
    Machine::setup_table(
        &lab.bins,
        &format!(
            "understudy-bench all --scale {} --scale-factor {} --also-4x {} --repeat {} --fork-rate {} \
             --dryrun-rate {} --window-seconds {} --jobs {}",
            args.sizes.scale,
            args.sizes.scale_factor,
            args.sizes.also_4x,
            args.sizes.repeat,
            args.fork_rate,
            args.dryrun_rate,
            args.window_seconds,
            args.jobs
        ),
    )
    .await
}

async fn run_size(args: &AllArgs, lab: &mut Lab, rig: &mut Rig, scale: u32) -> Result<Size> {
    let facts = lab.prepare_source(scale).await?;
    let label = format!(
        "scale {scale}: {}, pgbench_accounts {} rows",
        table::bytes(facts.database_bytes),
        facts.accounts_rows()
    );
    println!("\n# Data size: {label}");
    lab.start_baseline_cluster().await?;

    eprintln!("== {label}: 1. initial sync ==");
    let sync_args = SyncArgs {
        scale,
        repeat: args.sizes.repeat,
        jobs: args.jobs,
        sustain_seconds: 1,
        lag_seconds: 1,
        rate: None,
        keep: false,
        dir: None,
    };
    let sync = sync::measure(lab, &sync_args, &facts.counts).await?;
    let state = lab.sandbox_state();
    lab.delete_sandbox(&state).await?;
    print!("{}", sync.table(args.jobs).render());

    eprintln!("== {label}: 2. forks ==");
    let fork_args = ForkArgs {
        sizes: Sizes {
            scale,
            also_4x: false,
            ..args.sizes.clone()
        },
        rate: args.fork_rate,
        jobs: args.jobs,
        dir: None,
    };
    let forks = fork::measure(&fork_args, lab, rig, scale, &facts).await?;
    print!("{}", forks.runs_table().render());
    print!("{}", forks.dump_table(args.jobs).render());
    print!("{}", forks.strategy_table(args.jobs).render());

    eprintln!("== {label}: 3. dry-run (on the btrfs sandbox) ==");
    let target = rig.target(Strategy::BtrfsSnapshot)?;
    let meta = target.meta.as_ref().context("the btrfs sandbox was not created")?;
    let settings = Settings {
        rate: args.dryrun_rate,
        jobs: args.jobs,
        window: Duration::from_secs(u64::from(args.window_seconds)),
    };
    let figures = dryrun::measure(lab, &target.state, meta, &settings, facts.accounts_rows()).await;
    if figures.is_err() {
        // Forks an interrupted dry-run left (the library removes them itself when it gets to finish).
        for name in dryrun::FORKS
            .iter()
            .filter_map(|n| SandboxName::parse(n).ok())
            .flat_map(|n| [understudy::dryrun::control_name(&n), n])
        {
            let _ = understudy::fork::delete(&target.state, &name).await;
        }
    }
    let figures = figures?;
    for t in &figures.tables {
        print!("{}", t.render());
    }
    Ok(Size {
        scale,
        label,
        sync,
        forks,
        dryrun: figures,
    })
}

fn ratio(value: Option<f64>) -> String {
    value.map_or("n/a".to_string(), |r| format!("{r:.2}"))
}

/// One row per comparison, one column per data size.
fn summary(sizes: &[Size], args: &AllArgs) -> Table {
    let mut header: Vec<String> = vec!["comparison (all measured in this run)".to_string()];
    header.extend(sizes.iter().map(|s| format!("scale {}", s.scale)));
    header.push("target".to_string());
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = Table::new(
        "Summary: Understudy against the manual way, same data, same run",
        &header,
    );
    let j = args.jobs;
    let mut row = |name: String, cells: Vec<String>, target: &str| {
        let mut r = vec![name];
        r.extend(cells);
        r.push(target.to_string());
        t.row(r);
    };
    row(
        "data (the source database)".to_string(),
        sizes.iter().map(|s| s.label.clone()).collect(),
        "",
    );
    row(
        format!("initial sync: sandbox create / (pg_dump -Fd -j{j} + pg_restore -j{j})"),
        sizes
            .iter()
            .map(|s| {
                format!(
                    "{:.2} ({} / {})",
                    s.sync.mean_ratio(),
                    secs(s.sync.mean_sandbox()),
                    secs(s.sync.mean_baseline())
                )
            })
            .collect(),
        "≤ 0.80",
    );
    for strategy in fork::ORDER {
        if sizes.iter().all(|s| s.forks.of(strategy).next().is_none()) {
            continue;
        }
        let target = if matches!(strategy, Strategy::BtrfsSnapshot | Strategy::Reflink) {
            "≥ 8×, ready ≤ 2 s"
        } else {
            "(for comparison)"
        };
        row(
            format!(
                "fork ready, {}: (pg_dump + pg_restore under the same load) / fork",
                strategy.as_str()
            ),
            sizes
                .iter()
                .map(|s| {
                    let fork = s.forks.mean_fork(strategy);
                    format!(
                        "{:.1}× ({} / {})",
                        s.forks.mean_dump() / fork,
                        secs(s.forks.mean_dump()),
                        secs(fork)
                    )
                })
                .collect(),
            target,
        );
    }
    if let (Some(first), Some(last)) = (sizes.first(), sizes.last())
        && sizes.len() > 1
    {
        for strategy in [Strategy::BtrfsSnapshot, Strategy::Reflink] {
            let growth = last.forks.mean_fork(strategy) / first.forks.mean_fork(strategy);
            let mut cells = vec![String::new(); sizes.len()];
            if let Some(c) = cells.last_mut() {
                *c = format!("{growth:.2}× the 1× time");
            }
            row(
                format!("fork ready, {}: growth from 1× to the larger size", strategy.as_str()),
                cells,
                "≤ 1.5×",
            );
        }
    }
    row(
        format!(
            "replay throughput / source write rate (pgbench -R {})",
            args.dryrun_rate
        ),
        sizes
            .iter()
            .map(|s| {
                format!(
                    "{} ({:.0} / {} tps)",
                    ratio(s.dryrun.replay_ratio),
                    s.dryrun.replay_per_second,
                    s.dryrun.source_tps.map_or("?".to_string(), |t| format!("{t:.0}"))
                )
            })
            .collect(),
        "≥ 1.00",
    );
    row(
        "lock-wait detection resolution: 10 s poller / Understudy's sampler".to_string(),
        sizes
            .iter()
            .map(|s| {
                let interval = s.dryrun.sample_interval_ms.max(0.001);
                format!("{:.0}× (10 000 / {interval:.0} ms)", 10_000.0 / interval)
            })
            .collect(),
        "(higher is finer)",
    );
    row(
        "CREATE INDEX's lock hold: P(a 10 s poller sees it at all)".to_string(),
        sizes
            .iter()
            .map(|s| match s.dryrun.lock_hold_ms {
                Some(ms) => format!("{:.1} % (held {ms:.0} ms)", (ms / 10_000.0).min(1.0) * 100.0),
                None => "no ShareLock seen".to_string(),
            })
            .collect(),
        "(Understudy: 100 %)",
    );
    row(
        "time to a verdict: manual (dump, restore, psql up, check, down) / dry-run with verification".to_string(),
        sizes
            .iter()
            .map(|s| {
                format!(
                    "{:.2} ({} / {})",
                    s.dryrun.manual_seconds / s.dryrun.verdict_seconds.max(0.001),
                    secs(s.dryrun.manual_seconds),
                    secs(s.dryrun.verdict_seconds)
                )
            })
            .collect(),
        "> 1 (Understudy faster)",
    );
    t
}

//! `understudy-bench fork`: how long a fork of a sandbox takes, per strategy, under steady write load on the
//! source, against `pg_dump -Fd` + `pg_restore` of the same source, at 1× and 4× the data.
//!
//! # Setup (per data size)
//!
//! A fresh [`Lab`] (source loaded with `pgbench -i -s <scale>`, published as in `sync`, and the baseline's
//! target cluster), and two loop-mounted copy-on-write filesystems under its working directory, each holding
//! the state directory of one sandbox that follows the source:
//!
//! - **btrfs** (`mkfs.btrfs`), sandbox `bench-btrfs`: its data directory is a btrfs subvolume, so the
//!   strategies `btrfs-snapshot`, `template` and `copy` are measured on it;
//! - **xfs** (`mkfs.xfs -m reflink=1`), sandbox `bench-xfs`: strategy `reflink`.
//!
//! Both sandboxes replicate the same publication (their slots on the source are named after them), both are
//! created with [`understudy::sandbox::create`] and checked by row count before the load starts.
//!
//! # Load
//!
//! `pgbench -n -c 2 -j 2 -R <rate> -P 1` (built-in TPC-B-like script) runs on the source from before the first
//! measurement to after the last one, so every fork (and every dump + restore) is taken while production writes
//! and the sandboxes apply. The TPS pgbench reports each second is averaged over every measurement.
//!
//! # Measurements, `--repeat` rounds
//!
//! Each round measures, in this order (reversed every other round): a fork with every strategy, then one
//! `pg_dump -Fd -j<jobs>` + `pg_restore -j<jobs>` of the source into a fresh database
//! ([`crate::sync::dump_restore`]). Before each measurement (not timed) the page cache is written back (`sync`)
//! and both sandboxes must have applied a heartbeat written on the source just before (caught up).
//!
//! - **fork ready** is the wall time of one [`understudy::fork::create`] call with a forced strategy: from the
//!   request to a fork at a known LSN (its capture slot's start) that is detached and accepts writes. The
//!   library's own timings ([`understudy::fork::ForkTimings`]) are printed beside it: what precedes the pause
//!   (`total_ms - pause_ms - start_ms`: sweep, checks, capture publication, the `CHECKPOINT` before the pause),
//!   the sandbox's apply pause, the capture slot and the copy (both inside the pause), start + detach of the
//!   fork.
//! - After the call (not timed): how long the sandbox took to apply the backlog its pause built up (a heartbeat
//!   written on the source when the call returned becoming visible on the sandbox), then a check that the fork
//!   accepts writes and holds the source's `pgbench_branches`/`pgbench_tellers` rows and `max(aid)`. Then the
//!   fork is deleted ([`understudy::fork::delete`]).
//!
//! The ratio (dump + restore) / fork ready is computed from the means; the targets are: copy-on-write forks
//! ready in ≤ 2 s (every run) and ≥ 8× faster than dump + restore, and fork time flat from 1× to 4× the data.
//!
//! # Clean-up
//!
//! After each data size, also after an error or Ctrl-C: forks deleted, sandboxes deleted (their slots leave the
//! source, their servers stop), any server still running inside a mount killed, the filesystems unmounted and
//! their images removed, then the lab's clusters and directory.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use understudy::fork::{self, ForkOptions, ForkTimings, Strategy};
use understudy::pg::connect::connect_plain;
use understudy::sandbox::{self, SandboxMeta};
use understudy::source::SandboxName;

use crate::ForkArgs;
use crate::lab::{self, Counts, Lab, Machine, SourceFacts};
use crate::load::Load;
use crate::pgtool::sql;
use crate::rig::{Mount, Rig, Target};
use crate::run;
use crate::sync::{self, BaselineRun};
use crate::table::{self, Table, secs};

mod tables;

pub use tables::{flatness_table, summary_table};

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
/// The order strategies are measured in within a round (reversed every other round).
pub const ORDER: [Strategy; 4] = [
    Strategy::BtrfsSnapshot,
    Strategy::Reflink,
    Strategy::Template,
    Strategy::Copy,
];
/// A fork-ready time at most this many times its 1× value at 4× the data counts as flat.
const FLAT: f64 = 1.5;

/// `understudy-bench fork`.
pub async fn command(args: ForkArgs) -> Result<()> {
    if !understudy::pg::os_user::running_as_root() {
        bail!("the fork benchmark loop-mounts btrfs and xfs filesystems: run it as root");
    }
    let base = run::make_base(args.dir.clone(), "fork")?;
    let scales = args.sizes.scales()?;
    println!("# understudy-bench fork");
    let (reports, ended) = run::per_size(&base, &scales, async |lab: &mut Lab, rig: &mut Rig, scale, i| {
        if i == 0 {
            print!("{}", setup_table(&args, lab, &base).await.render());
        }
        let mut report = run_scale(&args, lab, rig, scale).await?;
        report.other_cpu = lab.noise.available().then(|| lab.noise.foreign_seconds());
        print!("{}", report.runs_table().render());
        print!("{}", report.dump_table(args.jobs).render());
        print!("{}", report.strategy_table(args.jobs).render());
        Ok(report)
    })
    .await;
    if !reports.is_empty() {
        if reports.len() > 1 {
            print!("{}", flatness_table(&reports, args.jobs).render());
        }
        print!("{}", summary_table(&reports, args.jobs).render());
    }
    ended
}

async fn setup_table(args: &ForkArgs, lab: &Lab, base: &Path) -> Table {
    let mut setup = Machine::setup_table(
        &lab.bins,
        &format!(
            "understudy-bench fork --scale {} --scale-factor {} --also-4x {} --repeat {} --rate {} --jobs {}",
            args.sizes.scale, args.sizes.scale_factor, args.sizes.also_4x, args.sizes.repeat, args.rate, args.jobs
        ),
    )
    .await;
    setup.row(["working directory", &base.display().to_string()]);
    setup.row([
        "load on the source during every measurement",
        &format!(
            "pgbench -n -c 2 -j 2 -R {} -P 1 (TPC-B-like), from before the first measurement to after the last",
            args.rate
        ),
    ]);
    setup.row([
        "sandboxes",
        "bench-btrfs on loop-mounted btrfs (btrfs-snapshot, template, copy); bench-xfs on loop-mounted xfs \
         -m reflink=1 (reflink); both follow the source",
    ]);
    setup
}

/// One fork measurement.
pub struct ForkRun {
    strategy: Strategy,
    fs: &'static str,
    round: u32,
    /// Wall time of `fork::create`.
    seconds: f64,
    timings: ForkTimings,
    lsn: String,
    /// Time the sandbox took to apply the backlog of its pause, after the call returned.
    catch_up: f64,
    /// When the call ran, for the load's TPS (read once the load's later reports are in).
    window: (Instant, Instant),
    tps: Option<f64>,
    other_cpu: f64,
}

struct DumpRun {
    round: u32,
    run: BaselineRun,
    window: (Instant, Instant),
    tps: Option<f64>,
}

pub struct ScaleReport {
    pub scale: u32,
    database_bytes: i64,
    accounts_rows: i64,
    load_tps: Option<f64>,
    forks: Vec<ForkRun>,
    dumps: Vec<DumpRun>,
    /// CPU other processes used during this data size's whole run.
    other_cpu: Option<f64>,
}

async fn run_scale(args: &ForkArgs, lab: &mut Lab, rig: &mut Rig, scale: u32) -> Result<ScaleReport> {
    let facts = lab.prepare_source(scale).await?;
    eprintln!(
        "source: pgbench scale {scale}, {} (pgbench_accounts {} rows)",
        table::bytes(facts.database_bytes),
        facts.accounts_rows()
    );
    lab.start_baseline_cluster().await?;
    measure(args, lab, rig, scale, &facts).await
}

/// The fork measurements of one data size on a prepared source (and a running baseline cluster): mounts and
/// sandboxes made into `rig` (left there, following the source, for the caller to use and finish), forks and
/// dump + restore under load.
pub async fn measure(
    args: &ForkArgs,
    lab: &mut Lab,
    rig: &mut Rig,
    scale: u32,
    facts: &SourceFacts,
) -> Result<ScaleReport> {
    // Room for the sandbox, a full copy of it, its WAL and slack; the images are sparse.
    let db = u64::try_from(facts.database_bytes).unwrap_or(0);
    let image_bytes = (6 * GIB + 3 * db).div_ceil(GIB) * GIB;
    for (fs, strategies) in [
        (
            "btrfs",
            vec![Strategy::BtrfsSnapshot, Strategy::Template, Strategy::Copy],
        ),
        ("xfs", vec![Strategy::Reflink]),
    ] {
        eprintln!("making a {} GiB {fs} filesystem (loop mount) ...", image_bytes / GIB);
        let mount = Mount::new(&lab.root, fs, image_bytes)?;
        let state = mount.state();
        rig.mounts.push(mount);
        let name = SandboxName::parse(&format!("bench-{fs}"))?;
        rig.targets.push(Target {
            fs,
            name: name.clone(),
            state: state.clone(),
            strategies,
            meta: None,
        });
        eprintln!("creating sandbox {name} on {fs} ...");
        let opts = lab.create_options(name, state, args.jobs)?;
        let say = |line: &str| eprintln!("    {line}");
        let started = Instant::now();
        let meta = sandbox::create(&opts, &say)
            .await
            .with_context(|| format!("creating the sandbox on {fs}"))?;
        eprintln!("  sandbox ready in {}", secs(started.elapsed().as_secs_f64()));
        {
            let client = sandbox::cluster_of(&meta)?.connect(&meta.database).await?;
            lab::check_counts(&client, &facts.counts, "the sandbox").await?;
        }
        if let Some(target) = rig.targets.last_mut() {
            target.meta = Some(meta);
        }
    }

    eprintln!(
        "starting the load on the source: pgbench -n -c 2 -j 2 -R {} ...",
        args.rate
    );
    let mut load = Load::start(lab, args.rate)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    load.check()?;

    let mut forks = Vec::new();
    let mut dumps = Vec::new();
    for round in 0..args.sizes.repeat {
        let mut steps: Vec<Option<Strategy>> = ORDER.iter().copied().map(Some).chain([None]).collect();
        if round % 2 == 1 {
            steps.reverse();
        }
        for step in steps {
            settle(lab, rig).await?;
            load.check()?;
            match step {
                Some(strategy) => {
                    let run = fork_once(lab, rig, strategy, scale, round, &facts.counts).await?;
                    eprintln!(
                        "{}× round {}: {} fork ready in {} (pause {} ms, copy {} ms, start {} ms)",
                        if scale == args.sizes.scale {
                            1
                        } else {
                            args.sizes.scale_factor
                        },
                        round + 1,
                        strategy.as_str(),
                        secs(run.seconds),
                        run.timings.pause_ms,
                        run.timings.copy_ms,
                        run.timings.start_ms
                    );
                    forks.push(run);
                }
                None => {
                    eprintln!(
                        "round {}: pg_dump -Fd -j{j} + pg_restore -j{j} (under load) ...",
                        round + 1,
                        j = args.jobs
                    );
                    let started = Instant::now();
                    let run = sync::dump_restore(
                        lab,
                        args.jobs,
                        &format!("{scale}_{round}"),
                        &facts.counts,
                        &["pgbench_history"],
                    )
                    .await?;
                    let window = (started, Instant::now());
                    eprintln!("  dump + restore {}", secs(run.total()));
                    dumps.push(DumpRun {
                        round,
                        run,
                        window,
                        tps: None,
                    });
                }
            }
        }
    }
    // pgbench reports every second: the last measurement's report is in after one more.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    load.check()?;
    for f in &mut forks {
        f.tps = load.tps(f.window.0, f.window.1);
    }
    for d in &mut dumps {
        d.tps = load.tps(d.window.0, d.window.1);
    }
    let load_tps = load.overall_tps();
    load.stop().await;
    Ok(ScaleReport {
        scale,
        database_bytes: facts.database_bytes,
        accounts_rows: facts.accounts_rows(),
        load_tps,
        forks,
        dumps,
        other_cpu: None,
    })
}

/// Before a measurement: dirty pages written back, and every sandbox caught up with the source.
async fn settle(lab: &Lab, rig: &Rig) -> Result<()> {
    let mut sync_cmd = tokio::process::Command::new("sync");
    sync_cmd.kill_on_drop(true);
    let status = sync_cmd.status().await.context("running sync")?;
    if !status.success() {
        bail!("sync failed ({status})");
    }
    for target in &rig.targets {
        if let Some(meta) = &target.meta {
            catch_up(lab, meta).await?;
        }
    }
    Ok(())
}

/// Writes a heartbeat on the source and waits until the sandbox shows it; returns the seconds that took. The
/// connection to the sandbox is closed afterwards (a template fork needs the sandbox's database to itself).
async fn catch_up(lab: &Lab, meta: &SandboxMeta) -> Result<f64> {
    let source = lab.source()?.admin().await?;
    let sandbox_db = sandbox::cluster_of(meta)?.connect(&meta.database).await?;
    crate::lag::catch_up(&source, &sandbox_db)
        .await
        .with_context(|| format!("sandbox {}", meta.name))
}

async fn fork_once(
    lab: &Lab,
    rig: &Rig,
    strategy: Strategy,
    scale: u32,
    round: u32,
    expected: &Counts,
) -> Result<ForkRun> {
    let target = rig.target(strategy)?;
    let meta = target.meta.as_ref().context("the sandbox was not created")?;
    let name = SandboxName::parse(&format!("f{scale}-{round}-{}", strategy.as_str()))?;
    let opts = ForkOptions {
        sandbox: target.name.clone(),
        name: Some(name.clone()),
        strategy: Some(strategy),
        ttl: Duration::from_secs(3600),
        owner_pid: None,
    };
    eprintln!(
        "fork {name} of {} ({}, strategy {}) ...",
        target.name,
        target.fs,
        strategy.as_str()
    );
    let say = |line: &str| eprintln!("    {line}");
    let other_before = lab.noise.foreign_seconds();
    let started = Instant::now();
    let created = fork::create(&target.state, &opts, &say).await;
    let seconds = started.elapsed().as_secs_f64();
    let ended = Instant::now();
    let other_cpu = lab.noise.foreign_seconds() - other_before;
    let fork_meta = created.with_context(|| format!("fork create ({})", strategy.as_str()))?;

    // Not timed: the sandbox's backlog, then the fork itself.
    let caught_up = catch_up(lab, meta).await?;
    let checked = check_fork(&fork_meta.conninfo(meta), expected).await;
    let deleted = fork::delete(&target.state, &name).await;
    checked.with_context(|| format!("checking fork {name}"))?;
    deleted.with_context(|| format!("deleting fork {name}"))?;
    Ok(ForkRun {
        strategy,
        fs: target.fs,
        round,
        seconds,
        lsn: fork_meta.lsn.map(|l| l.to_string()).unwrap_or_default(),
        timings: fork_meta.timings,
        catch_up: caught_up,
        window: (started, ended),
        tps: None,
        other_cpu,
    })
}

/// The fork accepts writes and holds the source's unchanging rows (branches, tellers and the highest account).
async fn check_fork(conninfo: &str, expected: &Counts) -> Result<()> {
    let client = connect_plain(conninfo, "understudy-bench").await?;
    client
        .batch_execute(
            "CREATE TABLE bench_fork_probe (x int); INSERT INTO bench_fork_probe VALUES (1); \
             DROP TABLE bench_fork_probe",
        )
        .await
        .map_err(sql("writing to the fork"))?;
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM pgbench_branches), (SELECT count(*) FROM pgbench_tellers), \
             (SELECT coalesce(max(aid), 0)::int8 FROM pgbench_accounts)",
            &[],
        )
        .await
        .map_err(sql("reading the fork"))?;
    let got: [i64; 3] = [row.try_get(0)?, row.try_get(1)?, row.try_get(2)?];
    let want = |table: &str| expected.iter().find(|(t, _)| t == table).map(|(_, n)| *n).unwrap_or(-1);
    let wanted = [
        want("pgbench_branches"),
        want("pgbench_tellers"),
        want("pgbench_accounts"),
    ];
    if got != wanted {
        bail!("branches, tellers, max(aid): expected {wanted:?}, found {got:?}");
    }
    Ok(())
}

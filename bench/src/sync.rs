//! Initial sync: `understudy::sandbox::create` against `pg_dump -Fd -j` + `pg_restore -j`, alternating.

use std::time::Instant;

use anyhow::{Context, Result};
use understudy::pg::quote_ident;
use understudy::sandbox::state::InitialCopy;
use understudy::sandbox::{self, SandboxMeta};
use understudy::source::SandboxName;

use crate::SyncArgs;
use crate::lab::{self, Counts, Lab};
use crate::pgtool::{self, sql};
use crate::table::{Table, secs};

/// One `sandbox::create`.
pub struct SandboxRun {
    /// Wall-clock time of the call.
    pub seconds: f64,
    /// The phase timings the library recorded.
    pub phases: Option<InitialCopy>,
    /// CPU seconds other processes used meanwhile.
    pub other_cpu: f64,
}

/// One `pg_dump` + `pg_restore`.
pub struct BaselineRun {
    pub dump: f64,
    pub restore: f64,
    /// CPU seconds other processes used meanwhile.
    pub other_cpu: f64,
}

impl BaselineRun {
    pub fn total(&self) -> f64 {
        self.dump + self.restore
    }
}

pub struct Round {
    pub sandbox_first: bool,
    pub sandbox: SandboxRun,
    pub baseline: BaselineRun,
}

pub struct SyncReport {
    /// The first sandbox create in the state directory and a first dump + restore (not in the means).
    pub warmup: Round,
    pub rounds: Vec<Round>,
    /// The sandbox of the last sandbox run, left running for the lag measurement.
    pub kept: SandboxMeta,
}

/// Runs a warm-up round, then `args.repeat` rounds; round r runs the sandbox first when r is even, the baseline
/// first when it is odd.
///
/// All sandboxes live in one state directory, as a user's sandboxes do, so the warm-up's create is the first one
/// there: it fills what the library caches in the state directory (the `initdb` template), and the measured
/// creates find it, as every create after a user's first does. The warm-up is reported apart, not in the means.
pub async fn measure(lab: &mut Lab, args: &SyncArgs, expected: &Counts) -> Result<SyncReport> {
    let mut kept = None;
    let warmup = Round {
        sandbox_first: true,
        sandbox: sandbox_run(lab, args, "warm-up", expected, false, &mut kept).await?,
        baseline: baseline_run(lab, args, "warm-up", "warmup", expected).await?,
    };
    let mut rounds = Vec::new();
    for round in 0..args.repeat {
        let sandbox_first = round % 2 == 0;
        let last = round + 1 == args.repeat;
        let label = format!("round {}", round + 1);
        let tag = round.to_string();
        let (sandbox, baseline) = if sandbox_first {
            let s = sandbox_run(lab, args, &label, expected, last, &mut kept).await?;
            let b = baseline_run(lab, args, &label, &tag, expected).await?;
            (s, b)
        } else {
            let b = baseline_run(lab, args, &label, &tag, expected).await?;
            let s = sandbox_run(lab, args, &label, expected, last, &mut kept).await?;
            (s, b)
        };
        eprintln!(
            "round {}: sandbox create {}, pg_dump + pg_restore {} (ratio {:.2})",
            round + 1,
            secs(sandbox.seconds),
            secs(baseline.total()),
            sandbox.seconds / baseline.total()
        );
        rounds.push(Round {
            sandbox_first,
            sandbox,
            baseline,
        });
    }
    Ok(SyncReport {
        warmup,
        rounds,
        kept: kept.context("no sandbox was kept for the lag measurement")?,
    })
}

async fn sandbox_run(
    lab: &mut Lab,
    args: &SyncArgs,
    label: &str,
    expected: &Counts,
    keep: bool,
    kept: &mut Option<SandboxMeta>,
) -> Result<SandboxRun> {
    let state = lab.sandbox_state();
    let opts = lab.create_options(SandboxName::parse(lab::SANDBOX)?, state.clone(), args.jobs)?;
    eprintln!("{label}: sandbox create (jobs {}) ...", args.jobs);
    let say = |line: &str| eprintln!("    {line}");
    let other_before = lab.noise.foreign_seconds();
    let started = Instant::now();
    let meta = sandbox::create(&opts, &say).await.context("sandbox create")?;
    let seconds = started.elapsed().as_secs_f64();
    let other_cpu = lab.noise.foreign_seconds() - other_before;
    let client = sandbox::cluster_of(&meta)?.connect(&meta.database).await?;
    lab::check_counts(&client, expected, "the sandbox").await?;
    drop(client);
    let run = SandboxRun {
        seconds,
        phases: meta.initial_copy.clone(),
        other_cpu,
    };
    if keep {
        *kept = Some(meta);
    } else {
        lab.delete_sandbox(&state).await?;
    }
    Ok(run)
}

async fn baseline_run(
    lab: &mut Lab,
    args: &SyncArgs,
    label: &str,
    tag: &str,
    expected: &Counts,
) -> Result<BaselineRun> {
    eprintln!("{label}: pg_dump -Fd -j{j} + pg_restore -j{j} ...", j = args.jobs);
    dump_restore(lab, args.jobs, tag, expected, &[]).await
}

/// `pg_dump -Fd -j<jobs>` of the source (as the replication role, over TCP) into a directory, then `pg_restore
/// -j<jobs>` into a fresh database `restore_<tag>` on the baseline cluster (created before and dropped after the
/// clock). Afterwards (not timed) the restored row counts must equal `expected`, except for the tables named in
/// `growing` (written to while the dump ran). The dump directory and the database are removed.
pub async fn dump_restore(lab: &Lab, jobs: u32, tag: &str, expected: &Counts, growing: &[&str]) -> Result<BaselineRun> {
    let cluster = lab.baseline()?;
    let database = format!("restore_{tag}");
    let admin = cluster.connect("postgres").await?;
    admin
        .batch_execute("CHECKPOINT")
        .await
        .map_err(sql("checkpointing the baseline cluster"))?;
    admin
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&database)))
        .await
        .map_err(sql("creating the baseline's database"))?;
    let dump_dir = lab.root.join(format!("dump{tag}"));
    let source = lab.source()?.replicator_conninfo();

    let other_before = lab.noise.foreign_seconds();
    let started = Instant::now();
    pgtool::dump_directory(&lab.bins, &source, jobs, &dump_dir).await?;
    let dumped = started.elapsed().as_secs_f64();

    let started = Instant::now();
    pgtool::restore_directory(&lab.bins, &cluster.conninfo(&database), jobs, &dump_dir).await?;
    let restored = started.elapsed().as_secs_f64();
    let other_cpu = lab.noise.foreign_seconds() - other_before;

    let client = cluster.connect(&database).await?;
    if growing.is_empty() {
        lab::check_counts(&client, expected, "the restored database").await?;
    } else {
        let keep = |c: &Counts| -> Counts {
            c.iter()
                .filter(|(t, _)| !growing.contains(&t.as_str()))
                .cloned()
                .collect()
        };
        let got = keep(&lab::counts(&client).await?);
        let want = keep(expected);
        if got != want {
            anyhow::bail!("the restored database does not hold the source's rows: expected {want:?}, found {got:?}");
        }
    }
    drop(client);
    admin
        .batch_execute(&format!("DROP DATABASE {}", quote_ident(&database)))
        .await
        .map_err(sql("dropping the baseline's database"))?;
    std::fs::remove_dir_all(&dump_dir).with_context(|| format!("removing {}", dump_dir.display()))?;
    Ok(BaselineRun {
        dump: dumped,
        restore: restored,
        other_cpu,
    })
}

impl SyncReport {
    pub fn mean_sandbox(&self) -> f64 {
        mean(self.rounds.iter().map(|r| r.sandbox.seconds))
    }

    pub fn mean_baseline(&self) -> f64 {
        mean(self.rounds.iter().map(|r| r.baseline.total()))
    }

    /// mean(sandbox create) / mean(dump + restore).
    pub fn mean_ratio(&self) -> f64 {
        self.mean_sandbox() / self.mean_baseline()
    }

    pub fn table(&self, jobs: u32) -> Table {
        let mut table = Table::new(
            &format!("1. Initial sync: sandbox create vs pg_dump -Fd -j{jobs} + pg_restore -j{jobs}"),
            &[
                "run",
                "sandbox create",
                "↳ cluster + schema",
                "↳ copy",
                "↳ indexes",
                "↳ other",
                "pg_dump",
                "pg_restore",
                "dump + restore",
                "ratio",
                "other CPU: S / B",
            ],
        );
        let warmup = std::iter::once((
            "warm-up: first create in the state dir, not in the mean".to_string(),
            &self.warmup,
        ));
        let measured = self.rounds.iter().enumerate().map(|(i, round)| {
            let order = if round.sandbox_first {
                "sandbox first"
            } else {
                "baseline first"
            };
            (format!("{} ({order})", i + 1), round)
        });
        for (label, round) in warmup.chain(measured) {
            let s = &round.sandbox;
            let (schema, copy, indexes, other) = match &s.phases {
                Some(p) => (
                    secs(p.schema_seconds),
                    secs(p.copy_seconds),
                    secs(p.indexes_seconds),
                    secs(s.seconds - p.schema_seconds - p.copy_seconds - p.indexes_seconds),
                ),
                None => Default::default(),
            };
            table.row([
                label,
                secs(s.seconds),
                schema,
                copy,
                indexes,
                other,
                secs(round.baseline.dump),
                secs(round.baseline.restore),
                secs(round.baseline.total()),
                format!("{:.2}", s.seconds / round.baseline.total()),
                format!("{:.1} / {:.1} s", s.other_cpu, round.baseline.other_cpu),
            ]);
        }
        let phase_mean = |f: fn(&InitialCopy) -> f64| {
            let values: Vec<f64> = self
                .rounds
                .iter()
                .filter_map(|r| r.sandbox.phases.as_ref().map(f))
                .collect();
            if values.is_empty() {
                String::new()
            } else {
                secs(mean(values.iter().copied()))
            }
        };
        let other = mean(self.rounds.iter().map(|r| {
            r.sandbox.phases.as_ref().map_or(0.0, |p| {
                r.sandbox.seconds - p.schema_seconds - p.copy_seconds - p.indexes_seconds
            })
        }));
        table.row([
            "mean".to_string(),
            secs(self.mean_sandbox()),
            phase_mean(|p| p.schema_seconds),
            phase_mean(|p| p.copy_seconds),
            phase_mean(|p| p.indexes_seconds),
            secs(other),
            secs(mean(self.rounds.iter().map(|r| r.baseline.dump))),
            secs(mean(self.rounds.iter().map(|r| r.baseline.restore))),
            secs(self.mean_baseline()),
            format!("**{:.2}**", self.mean_ratio()),
            String::new(),
        ]);
        table
    }
}

pub fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

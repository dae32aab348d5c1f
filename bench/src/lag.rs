//! Apply lag under steady pgbench load, measured end to end with a heartbeat row: updated on the source every
//! 100 ms, its age sampled on the sandbox every 100 ms (same machine, same clock).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_postgres::Client;
use understudy::sandbox::{self, SandboxMeta};

use crate::SyncArgs;
use crate::lab::{DATABASE, Lab};
use crate::pgtool::{self, sql};
use crate::table::{Table, percentile, secs};

const TICK: Duration = Duration::from_millis(100);
/// The longest the sandbox may take to apply a backlog before the bench gives up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(900);

pub struct LagReport {
    pub sustain_seconds: u32,
    pub sustained_tps: f64,
    /// Time the sandbox took to apply the unthrottled run's backlog.
    pub sustained_catch_up: f64,
    pub lag_seconds: u32,
    pub rate: u32,
    pub rate_is_default: bool,
    pub lag_tps: f64,
    pub lag_transactions: Option<u64>,
    pub heartbeats: u64,
    pub samples: usize,
    pub over_one_second: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// Time from the end of the load until the sandbox had applied all of it.
    pub catch_up: f64,
    /// CPU seconds other processes used during the lag run.
    pub other_cpu: f64,
}

/// A spawned task that is aborted when dropped (errors, Ctrl-C), so that nothing keeps writing to a server being
/// torn down.
struct Task<T>(JoinHandle<T>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Task<T> {
    async fn join(mut self) -> Result<T> {
        (&mut self.0).await.context("a measuring task failed")
    }
}

pub async fn measure(lab: &Lab, meta: &SandboxMeta, args: &SyncArgs) -> Result<LagReport> {
    let source = lab.source()?;
    let sandbox_cluster = sandbox::cluster_of(meta)?;
    let admin = source.admin().await?;
    let sandbox = sandbox_cluster.connect(&meta.database).await?;

    eprintln!(
        "measuring the source's sustained rate: unthrottled pgbench -c 2 -j 2 -T {} (sandbox attached) ...",
        args.sustain_seconds
    );
    let out = pgtool::pgbench(
        &lab.bins,
        &source.cluster,
        DATABASE,
        &["-c", "2", "-j", "2", "-T", &args.sustain_seconds.to_string()],
    )
    .await?;
    let sustained_tps = pgtool::parse_tps(&out)?;
    let load_ended = Instant::now();
    eprintln!("  source sustained rate: {sustained_tps:.1} tps; waiting for the sandbox to catch up ...");
    catch_up(&admin, &sandbox).await?;
    let sustained_catch_up = load_ended.elapsed().as_secs_f64();
    eprintln!("  caught up after {}", secs(sustained_catch_up));

    let rate = args
        .rate
        .unwrap_or_else(|| ((sustained_tps * 0.8).round() as u32).max(1));
    // Heartbeats go out on a fixed 100 ms grid from `epoch`; samples are taken on the same grid shifted by 50 ms
    // (see `sample`).
    let epoch = tokio::time::Instant::now();
    let stop_heartbeat = Arc::new(AtomicBool::new(false));
    let heartbeat = Task(tokio::spawn(beat(
        source.admin().await?,
        epoch,
        Arc::clone(&stop_heartbeat),
    )));
    // The first heartbeats must have arrived before sampling starts, or the first samples measure the pause.
    catch_up(&admin, &sandbox).await?;

    eprintln!(
        "lag run: pgbench -c 2 -j 2 -T {} -R {rate}, heartbeat every 100 ms, sampling the sandbox every 100 ms ...",
        args.lag_seconds
    );
    let other_before = lab.noise.foreign_seconds();
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = Task(tokio::spawn(sample(
        sandbox_cluster.connect(&meta.database).await?,
        epoch,
        Arc::clone(&stop_sampling),
    )));
    let out = pgtool::pgbench(
        &lab.bins,
        &source.cluster,
        DATABASE,
        &[
            "-c",
            "2",
            "-j",
            "2",
            "-T",
            &args.lag_seconds.to_string(),
            "-R",
            &rate.to_string(),
        ],
    )
    .await?;
    let load_ended = Instant::now();
    stop_sampling.store(true, Ordering::Relaxed);
    let other_cpu = lab.noise.foreign_seconds() - other_before;
    // A heartbeat written now, after every pgbench transaction committed: once the sandbox shows it (or a later
    // one), it has applied all of the load. Heartbeats commit in the order of their `at` (each UPDATE waits for
    // the row lock and then takes its own `clock_timestamp()`), so the running heartbeat task does not disturb
    // this; it is stopped afterwards so that waiting for its next tick does not count.
    catch_up(&admin, &sandbox).await?;
    let catch_up_seconds = load_ended.elapsed().as_secs_f64();
    stop_heartbeat.store(true, Ordering::Relaxed);
    let mut samples = sampler.join().await??;
    let heartbeats = heartbeat.join().await??;
    let lag_tps = pgtool::parse_tps(&out)?;

    if samples.is_empty() {
        bail!("no lag sample was taken during the lag run");
    }
    samples.sort_by(f64::total_cmp);
    let report = LagReport {
        sustain_seconds: args.sustain_seconds,
        sustained_tps,
        sustained_catch_up,
        lag_seconds: args.lag_seconds,
        rate,
        rate_is_default: args.rate.is_none(),
        lag_tps,
        lag_transactions: pgtool::parse_processed(&out),
        heartbeats,
        samples: samples.len(),
        over_one_second: samples.iter().filter(|s| **s > 1.0).count(),
        p50: percentile(&samples, 50.0),
        p99: percentile(&samples, 99.0),
        max: samples.last().copied().unwrap_or(0.0),
        catch_up: catch_up_seconds,
        other_cpu,
    };
    eprintln!(
        "  apply lag p50 {} p99 {} max {} over {} samples; source {:.1} tps",
        secs(report.p50),
        secs(report.p99),
        secs(report.max),
        report.samples,
        report.lag_tps
    );
    Ok(report)
}

/// Updates the heartbeat row at `epoch` + k × 100 ms (one transaction each) until `stop`; returns how many it
/// wrote.
async fn beat(client: Client, epoch: tokio::time::Instant, stop: Arc<AtomicBool>) -> Result<u64> {
    let update = client
        .prepare("UPDATE bench_heartbeat SET at = clock_timestamp() WHERE id = 1")
        .await
        .map_err(sql("preparing the heartbeat"))?;
    let mut tick = tokio::time::interval_at(epoch, TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut beats = 0;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        client
            .execute(&update, &[])
            .await
            .map_err(sql("writing the heartbeat on the source"))?;
        beats += 1;
    }
    Ok(beats)
}

/// Samples the heartbeat's age on the sandbox at `epoch` + 50 ms + k × 100 ms until `stop`.
///
/// With heartbeats written at `epoch` + k × 100 ms, a sample taken 50 ms after a heartbeat sees that heartbeat
/// when it was applied within 50 ms, and reads 0.05 s; otherwise it sees an older one and reads 0.15 s, 0.25 s,
/// ...: each sample is the true commit-to-visible delay rounded up to the next 0.05 + k × 0.1 s. Without the
/// fixed phase, the two timers' accidental offset would decide where that rounding falls.
async fn sample(client: Client, epoch: tokio::time::Instant, stop: Arc<AtomicBool>) -> Result<Vec<f64>> {
    let query = client
        .prepare("SELECT extract(epoch FROM clock_timestamp() - at)::float8 FROM bench_heartbeat WHERE id = 1")
        .await
        .map_err(sql("preparing the lag sample"))?;
    let now = tokio::time::Instant::now();
    let mut start = epoch + TICK / 2;
    while start < now {
        start += TICK;
    }
    let mut tick = tokio::time::interval_at(start, TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut samples = Vec::new();
    loop {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            return Ok(samples);
        }
        let row = client
            .query_one(&query, &[])
            .await
            .map_err(sql("sampling the heartbeat on the sandbox"))?;
        samples.push(row.try_get(0)?);
    }
}

/// Writes a heartbeat on the source and waits until the sandbox shows it (or a later one): everything committed
/// on the source before it has then been applied. Returns the seconds that took.
pub async fn catch_up(source: &Client, sandbox: &Client) -> Result<f64> {
    let mark: f64 = source
        .query_one(
            "UPDATE bench_heartbeat SET at = clock_timestamp() WHERE id = 1 \
             RETURNING extract(epoch FROM at)::float8",
            &[],
        )
        .await
        .map_err(sql("writing a heartbeat on the source"))?
        .try_get(0)?;
    let started = Instant::now();
    loop {
        let seen: f64 = sandbox
            .query_one(
                "SELECT extract(epoch FROM at)::float8 FROM bench_heartbeat WHERE id = 1",
                &[],
            )
            .await
            .map_err(sql("reading the heartbeat on the sandbox"))?
            .try_get(0)?;
        if seen >= mark {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > CATCH_UP_TIMEOUT {
            bail!(
                "the sandbox did not apply a heartbeat within {CATCH_UP_TIMEOUT:?} (it shows one {:.1} s older)",
                mark - seen
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl LagReport {
    pub fn table(&self) -> Table {
        let mut table = Table::new("2. Apply lag under steady pgbench load", &["measure", "value"]);
        table.row([
            format!(
                "source sustained rate (unthrottled pgbench -c 2 -j 2 -T {}, sandbox attached)",
                self.sustain_seconds
            ),
            format!("{:.1} tps", self.sustained_tps),
        ]);
        table.row([
            "sandbox applied that run's backlog after".to_string(),
            secs(self.sustained_catch_up),
        ]);
        table.row([
            "lag run".to_string(),
            format!(
                "pgbench -c 2 -j 2 -T {} -R {}{}",
                self.lag_seconds,
                self.rate,
                if self.rate_is_default {
                    " (80 % of sustained)"
                } else {
                    ""
                }
            ),
        ]);
        table.row([
            "source TPS during the lag run".to_string(),
            format!(
                "{:.1} tps{}",
                self.lag_tps,
                self.lag_transactions
                    .map(|n| format!(" ({n} transactions)"))
                    .unwrap_or_default()
            ),
        ]);
        table.row([
            "heartbeats written / lag samples".to_string(),
            format!("{} / {}", self.heartbeats, self.samples),
        ]);
        table.row(["apply lag p50".to_string(), secs(self.p50)]);
        table.row(["apply lag p99".to_string(), secs(self.p99)]);
        table.row(["apply lag max".to_string(), secs(self.max)]);
        table.row([
            "samples over 1 s".to_string(),
            format!("{} of {}", self.over_one_second, self.samples),
        ]);
        table.row([
            "sandbox applied everything after the load stopped, in".to_string(),
            secs(self.catch_up),
        ]);
        table.row([
            "CPU used by other processes during the lag run".to_string(),
            format!("{:.1} s", self.other_cpu),
        ]);
        table
    }
}

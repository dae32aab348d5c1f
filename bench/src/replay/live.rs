//! Step 5 of `understudy-bench replay`: a live replay following pgbench at 80 % of the source's maximum rate
//! (method: the doc comment of `replay/mod.rs`).

use anyhow::{Context, Result};
use understudy::fork::{self, ForkMeta, ForkOptions};
use understudy::replay::live::{LiveConfig, LiveReplay, Stopped};
use understudy::sandbox::{self, SandboxMeta, StateDir};
use understudy::source::SandboxName;

use super::{DRAIN_LIMIT, FORK_TTL, Fidelity, POLL, SourceRun, compare, complaints, cpu, failures, source_run};
use crate::lab::Lab;
use crate::table::{Table, percentile, secs};
use crate::yes_no;

const LIVE_FORK: &str = "bench-replay-live";
const LIVE_WORKERS: usize = 4;

async fn make_fork(state: &StateDir, meta: &SandboxMeta, name: &str) -> Result<ForkMeta> {
    let opts = ForkOptions {
        sandbox: meta.name.clone(),
        name: Some(SandboxName::parse(name)?),
        strategy: None,
        ttl: FORK_TTL,
        owner_pid: None,
    };
    eprintln!("   fork {name} ...");
    fork::create(state, &opts, &|line: &str| eprintln!("    {line}"))
        .await
        .with_context(|| format!("creating fork {name}"))
}

fn live_config(meta: &SandboxMeta, fork: &ForkMeta, workers: usize) -> Result<LiveConfig> {
    Ok(LiveConfig {
        sandbox_conninfo: sandbox::cluster_of(meta)?.conninfo(&meta.database),
        capture_slot: fork.capture_slot.clone(),
        publication: fork::CAPTURE_PUBLICATION.to_string(),
        fork_conninfo: fork.conninfo(meta),
        workers,
        poll_interval: POLL,
    })
}

pub(super) struct Live {
    pub(super) rate: u32,
    pub(super) run: SourceRun,
    pub(super) stopped: Stopped,
    /// Sorted `WriteRecord.lag`s, in milliseconds.
    pub(super) lags_ms: Vec<f64>,
    /// Records / first record's start to last record's end.
    pub(super) replay_tps: f64,
    /// From pgbench's end to the last record's end.
    pub(super) tail: f64,
    pub(super) fidelity: Fidelity,
    /// CPU other processes used from the replay's start to its stop.
    pub(super) other: f64,
}

pub(super) async fn live_lag(
    lab: &Lab,
    state: &StateDir,
    meta: &SandboxMeta,
    max_tps: f64,
    seconds: u32,
) -> Result<Live> {
    eprintln!("4. live replay: fork {LIVE_FORK} ...");
    let fork = make_fork(state, meta, LIVE_FORK).await?;
    let rate = ((max_tps * 0.8).round() as u32).max(1);
    let other = lab.noise.foreign_seconds();
    let replay = LiveReplay::start(&live_config(meta, &fork, LIVE_WORKERS)?)
        .await
        .context("starting the replay")?;
    eprintln!("   {LIVE_WORKERS} replay workers following:");
    let run = source_run(lab, meta, seconds, &["-R", &rate.to_string()]).await?;
    let stopped = replay.stop(DRAIN_LIMIT).await.context("stopping the replay")?;
    let other = lab.noise.foreign_seconds() - other;
    let fidelity = compare(meta, &fork).await?;
    fork::delete(state, &fork.name)
        .await
        .with_context(|| format!("deleting fork {}", fork.name))?;

    let mut lags_ms: Vec<f64> = stopped.records.iter().map(|r| r.lag.as_secs_f64() * 1000.0).collect();
    lags_ms.sort_by(f64::total_cmp);
    let first = stopped.records.iter().map(|r| r.start).min();
    let last = stopped.records.iter().map(|r| r.end).max();
    let (replay_tps, tail) = match (first, last) {
        (Some(first), Some(last)) => (
            stopped.records.len() as f64 / last.saturating_duration_since(first).as_secs_f64().max(1e-9),
            last.saturating_duration_since(run.ended).as_secs_f64(),
        ),
        _ => (0.0, 0.0),
    };
    Ok(Live {
        rate,
        run,
        stopped,
        lags_ms,
        replay_tps,
        tail,
        fidelity,
        other,
    })
}

impl Live {
    pub(super) fn lag(&self, p: f64) -> f64 {
        percentile(&self.lags_ms, p)
    }

    pub(super) fn lags(&self) -> String {
        let [p50, p99, max] = [50.0, 99.0, 100.0].map(|p| self.lag(p));
        format!("{p50:.0} / {p99:.0} / {max:.0} ms")
    }

    pub(super) fn problem(&self) -> Option<String> {
        let c = complaints(&self.stopped, self.run.transactions, &self.fidelity);
        (!c.is_empty()).then(|| format!("the live replay: {}", c.join("; ")))
    }

    pub(super) fn table(&self) -> Table {
        let title = format!(
            "4. Live replay lag: {LIVE_WORKERS} workers following pgbench -n -c 2 -j 2 -T {} -R {} (80 % of the \
             maximum rate)",
            self.run.seconds, self.rate
        );
        let mut t = Table::new(&title, &["measure", "value"]);
        let (run, stopped) = (&self.run, &self.stopped);
        let pgbench = format!("{:.1} tps, {} transactions", run.tps, run.transactions);
        t.row(["pgbench on the source", &pgbench]);
        t.row(["the sandbox had applied the run after", &secs(run.catch_up)]);
        let (records, failed) = (stopped.records.len(), failures(stopped).0);
        let replayed = format!("{records}, {failed} / {}", stopped.unapplied);
        t.row(["transactions replayed, failed / unapplied", &replayed]);
        let rate = format!("{:.1} tps, {:.2}", self.replay_tps, self.replay_tps / run.tps.max(1e-9));
        t.row(["replay rate (records / first start to last end), × pgbench's", &rate]);
        t.row([
            "lag p50 / p99 / max (WriteRecord.lag: source commit to applied on the fork)",
            &self.lags(),
        ]);
        t.row(["last write applied on the fork after pgbench ended", &secs(self.tail)]);
        let equal = format!("{} ({})", yes_no(self.fidelity.equal), self.fidelity.rows);
        t.row(["fork = sandbox after the stop (checksums, rows)", &equal]);
        t.row(["CPU used by other processes meanwhile".to_string(), cpu(self.other)]);
        t
    }
}

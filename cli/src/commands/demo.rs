//! `understudy demo`: the embedded production, its sandbox and the curated dry-runs (the fixtures crate).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Args)]
pub struct DemoArgs {
    /// Keep the clusters afterwards (prints how to connect)
    #[arg(long)]
    keep: bool,
    /// Seconds to watch the sandbox follow the writer
    #[arg(long, default_value_t = 6)]
    seconds: u64,
    /// Rows in the demo's largest table
    #[arg(long, default_value_t = 200_000)]
    rows: i64,
    /// Where to write the dry-run reports [default: a new directory under the temp directory]
    #[arg(long)]
    reports: Option<PathBuf>,
    /// Only the sandbox part (no dry-runs)
    #[arg(long)]
    sandbox_only: bool,
}

pub async fn run(args: DemoArgs, state_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let outcome = fixtures::demo(fixtures::DemoOptions {
        keep: args.keep,
        watch_seconds: args.seconds,
        rows: args.rows,
        reports: args.reports,
        sandbox_only: args.sandbox_only,
        state_dir,
    })
    .await?;
    if outcome.tables_equal != outcome.tables_total {
        anyhow::bail!(
            "the sandbox did not end equal to production: {}/{} tables equal",
            outcome.tables_equal,
            outcome.tables_total
        );
    }
    Ok(ExitCode::SUCCESS)
}

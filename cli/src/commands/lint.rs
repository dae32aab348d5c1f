//! `understudy lint FILE...`: squawk's rules alone.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use understudy::error::UsageError;

#[derive(Args)]
pub struct LintArgs {
    /// SQL files
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The PostgreSQL major version the migration targets
    #[arg(long, default_value_t = 15)]
    pg_version: u32,
}

pub fn run(args: LintArgs) -> anyhow::Result<ExitCode> {
    let mut total = 0;
    for file in &args.files {
        let text =
            std::fs::read_to_string(file).map_err(|e| UsageError(format!("cannot read {}: {e}", file.display())))?;
        for hit in understudy::lint::lint(&text, args.pg_version) {
            total += 1;
            println!(
                "{}:{}:{}: {}: {}",
                file.display(),
                hit.line,
                hit.column,
                hit.rule,
                hit.message
            );
            if let Some(help) = hit.help {
                println!("  help: {help}");
            }
        }
    }
    if total == 0 {
        println!("no lint findings in {} file(s)", args.files.len());
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{total} finding(s); run `understudy dry-run` to measure what they would do on production's data");
        Ok(ExitCode::FAILURE)
    }
}

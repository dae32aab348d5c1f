//! `understudy sweep`: what nobody owns, listed (the default) or removed (`--apply`): locally the forks, fork
//! files and capture slots of no run, and the recordings that expired or whose recorder is gone; with `--source`, the slots and publications named by Understudy on the
//! source that no sandbox of this state directory owns.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;
use understudy::fork::orphans::{self, Orphan};
use understudy::pg::connect::connect_source;
use understudy::recording::{self, Abandoned as AbandonedRecording};
use understudy::sandbox::StateDir;
use understudy::source::sweep::{self as source_sweep, Abandoned, Removal};

use crate::output::{self, Format};

#[derive(Args)]
pub struct SweepArgs {
    /// Also sweep this source (a libpq connection string; the password from PGPASSWORD when it has none)
    #[arg(long, env = "UNDERSTUDY_SOURCE", hide_env_values = true)]
    source: Option<String>,
    /// List what would be removed (the default)
    #[arg(long, conflicts_with = "apply")]
    dry_run: bool,
    /// Remove what is listed
    #[arg(long)]
    apply: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Serialize)]
struct Swept {
    applied: bool,
    local: Vec<Orphan>,
    recordings: Vec<AbandonedRecording>,
    source: Vec<Abandoned>,
    /// What the source's role may not drop, and what to run instead.
    refused: Vec<(Abandoned, String)>,
}

pub async fn run(args: SweepArgs, state: StateDir) -> anyhow::Result<ExitCode> {
    let mut recordings = recording::abandoned(&state);
    if args.apply {
        // First, so that the forks of the recordings removed here are not listed again below.
        recordings = recording::remove(&state, &recordings).await?;
    }
    let mut local = orphans::find(&state).await?;
    let mut source = Vec::new();
    let client = match &args.source {
        Some(text) => Some(connect_source(&crate::commands::sandbox::source_from(text)?, "understudy-sweep").await?),
        None => None,
    };
    let owned = understudy::sandbox::state::owned_on_sources(&state);
    if let Some(client) = &client {
        source = source_sweep::find(client, &owned).await?;
    }
    let mut refused = Vec::new();
    if args.apply {
        local = orphans::remove(&state, &local).await?;
        if let Some(client) = &client {
            let Removal { removed, refused: r } = source_sweep::remove(client, &owned, &source).await?;
            source = removed;
            refused = r;
        }
    }
    let swept = Swept {
        applied: args.apply,
        local,
        recordings,
        source,
        refused,
    };
    match args.format {
        Format::Json => output::json(&swept)?,
        Format::Text => print(&swept, args.source.is_some()),
    }
    // Something left on the source that this role may not remove: not done.
    Ok(if swept.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print(swept: &Swept, with_source: bool) {
    let verb = if swept.applied { "removed" } else { "would remove" };
    for o in &swept.local {
        let of = o
            .sandbox
            .as_deref()
            .map(|s| format!(" (sandbox {s})"))
            .unwrap_or_default();
        println!("{verb} {} {}{of}: {}", o.kind.as_str(), o.name, o.why);
    }
    for r in &swept.recordings {
        let of = r
            .sandbox
            .as_deref()
            .map(|s| format!(" (sandbox {s})"))
            .unwrap_or_default();
        println!("{verb} recording {}{of}: {}", r.name, r.why);
    }
    for a in &swept.source {
        let keeps = a
            .retained_bytes
            .map(|b| format!(", keeps {} of WAL", understudy::units::ByteSize(b)))
            .unwrap_or_default();
        println!(
            "{verb} {} {} on the source: no sandbox here owns it{keeps}",
            a.kind.as_str(),
            a.name
        );
    }
    for (a, fix) in &swept.refused {
        println!("left {} {} on the source: {fix}", a.kind.as_str(), a.name);
    }
    let nothing = swept.local.is_empty() && swept.recordings.is_empty();
    if nothing && swept.source.is_empty() && swept.refused.is_empty() {
        let place = if with_source { "here or on the source" } else { "here" };
        println!("nothing abandoned {place}");
    } else if !swept.applied {
        println!("(a dry run: `understudy sweep --apply` removes them)");
    }
}

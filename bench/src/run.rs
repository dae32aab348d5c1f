//! What every bench command does around its measurements: stop on Ctrl-C, clean up whatever happened, and turn
//! the outcome and the clean-up into one exit; for the multi-size commands, a fresh lab per data size.

use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::lab::Lab;
use crate::rig::Rig;

/// Runs `work` until it ends or Ctrl-C. An error is printed here, with a note that clean-up follows.
pub async fn interruptible<T>(work: impl Future<Output = Result<T>>) -> Result<T> {
    let outcome = tokio::select! {
        outcome = work => outcome,
        signal = tokio::signal::ctrl_c() => match signal {
            Ok(()) => Err(anyhow::anyhow!("interrupted")),
            Err(e) => Err(anyhow::Error::new(e).context("waiting for Ctrl-C")),
        },
    };
    if let Err(e) = &outcome {
        eprintln!("error: {e:#}");
        eprintln!("cleaning up after the error ...");
    }
    outcome
}

/// One exit from a command's outcome (an error was printed by [`interruptible`]) and its clean-up.
pub fn conclude(outcome: Result<()>, cleanup: Result<()>) -> Result<()> {
    match (outcome, cleanup) {
        (Ok(()), Ok(())) => Ok(()),
        (Ok(()), Err(e)) => Err(e.context("the benchmark ran, but cleaning up failed")),
        // The error was printed already; exit non-zero with a short line.
        (Err(_), Ok(())) => bail!("the benchmark failed (see above); everything was cleaned up"),
        (Err(_), Err(e)) => Err(e.context("the benchmark failed (see above) and cleaning up failed")),
    }
}

/// The working directory of a multi-size command: `dir`, or `/tmp/understudy-bench-<what>-<pid>`; it must not
/// exist, and is made traversable by the servers' OS user.
pub fn make_base(dir: Option<PathBuf>, what: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let base =
        dir.unwrap_or_else(|| std::env::temp_dir().join(format!("understudy-bench-{what}-{}", std::process::id())));
    let base = std::path::absolute(&base).with_context(|| format!("resolving {}", base.display()))?;
    if base.exists() {
        bail!("{} exists: remove it or pass another --dir", base.display());
    }
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", base.display()))?;
    Ok(base)
}

/// Runs `measure` once per data size on a fresh lab (under `base/scale-N`) and rig, cleaning both up after each
/// size, also after an error or Ctrl-C, and stopping at the first failure; then removes `base` and says how the
/// whole run ended. Returns what the sizes measured (those before a failure too) and the error, if any.
pub async fn per_size<R>(
    base: &Path,
    scales: &[u32],
    mut measure: impl AsyncFnMut(&mut Lab, &mut Rig, u32, usize) -> Result<R>,
) -> (Vec<R>, Result<()>) {
    let mut done = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    for (i, &scale) in scales.iter().enumerate() {
        let mut lab = match Lab::new(base.join(format!("scale-{scale}"))) {
            Ok(lab) => lab,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        let mut rig = Rig::default();
        let outcome = interruptible(measure(&mut lab, &mut rig, scale, i)).await;
        let rig_cleanup = rig.finish().await;
        let lab_cleanup = lab.finish(false).await;
        match outcome {
            Ok(r) => done.push(r),
            Err(e) => failure = Some(e),
        }
        for cleanup in [rig_cleanup, lab_cleanup] {
            if let Err(e) = cleanup {
                eprintln!("error: cleaning up: {e:#}");
                failure.get_or_insert(e.context("cleaning up"));
            }
        }
        if failure.is_some() {
            break;
        }
    }
    if let Err(e) = std::fs::remove_dir(base)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("note: could not remove {}: {e}", base.display());
    }
    let ended = match failure {
        None => Ok(()),
        Some(e) if done.is_empty() => Err(e.context("the benchmark failed; everything was cleaned up")),
        Some(e) => Err(e.context(format!(
            "the benchmark failed after {} of {} data size(s) (their tables are above); everything was cleaned up",
            done.len(),
            scales.len()
        ))),
    };
    (done, ended)
}

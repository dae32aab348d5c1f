//! A dry-run on a recording: the recording checked before anything is made (ready, unexpired, matching its
//! checksum, of this sandbox, long enough for the migration's offset), then its start point forked.

use super::{DryRunError, DryRunOptions, Recorded, RequestError, control_name};
use crate::fork::{self, ForkMeta, ForkOptions};
use crate::recording::{self, RecordingError, RecordingMeta};
use crate::sandbox::StateDir;

/// The recording `r` names, if a dry-run of `opts` may run on it.
pub(crate) fn check(state: &StateDir, opts: &DryRunOptions, r: &Recorded) -> Result<RecordingMeta, DryRunError> {
    let meta = recording::verified(state, &r.name)?;
    if meta.sandbox != opts.sandbox {
        return Err(RequestError(format!(
            "recording: {} is a recording of sandbox {}, not of {}; run the dry-run on sandbox {} or record {} \
             with `understudy record --sandbox {}`",
            meta.name, meta.sandbox, opts.sandbox, meta.sandbox, opts.sandbox, opts.sandbox
        ))
        .into());
    }
    if r.migrate_at > meta.span() {
        return Err(RequestError(format!(
            "migrate_at: {} is past the end of recording {}'s window ({} of commits)",
            humantime::format_duration(r.migrate_at),
            meta.name,
            humantime::format_duration(std::time::Duration::from_millis(meta.span().as_millis() as u64))
        ))
        .into());
    }
    Ok(meta)
}

/// The run's fork (and control twin) made from the recording's start point.
pub(crate) async fn fork(
    state: &StateDir,
    opts: &DryRunOptions,
    fork_opts: &ForkOptions,
    rec: &RecordingMeta,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(ForkMeta, Option<ForkMeta>), DryRunError> {
    let start = fork::list(state)
        .into_iter()
        .find(|f| f.name == rec.fork)
        .ok_or_else(|| {
            RecordingError::Corrupt(format!(
                "recording {}'s start point (fork {}) is gone; delete the recording and take a new one",
                rec.name, rec.fork
            ))
        })?;
    let mut names = vec![opts.fork_name.clone()];
    if opts.verify {
        names.push(control_name(&opts.fork_name));
    }
    let mut made = fork::clone_stopped(state, &start, fork_opts, &names, say).await?;
    let control = if opts.verify { made.pop() } else { None };
    let first = made
        .pop()
        .ok_or_else(|| RecordingError::Corrupt("no fork was made of the start point".into()))?;
    Ok((first, control))
}

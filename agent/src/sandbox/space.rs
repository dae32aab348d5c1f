//! Room for a sandbox in the state directory: checked before anything is created (on the source or here), and
//! named when a build runs out of it anyway, so that a full disk reads as a full disk and not as a failed COPY.

use std::path::{Path, PathBuf};

use bytesize::ByteSize;

/// What a sandbox needs beyond its tables: the cluster from the initdb template, WAL segments, the log.
pub const CLUSTER_FLOOR: u64 = 64 * 1024 * 1024;

/// Below this, a failed build is taken to have run out of space whatever its error says.
const NEARLY_FULL: u64 = 1024 * 1024;

/// Why there is no room.
#[derive(Debug, thiserror::Error)]
pub enum NoSpace {
    #[error(
        "the state directory {} has {} free and a sandbox of these tables needs about {} (the published tables \
         take {} on the source, with indexes): free space there, or give --state-dir (UNDERSTUDY_STATE_DIR) on a \
         larger filesystem; nothing was created",
        path.display(), iec(*free), iec(*needed), iec(*tables)
    )]
    Before {
        path: PathBuf,
        free: u64,
        needed: u64,
        tables: u64,
    },
    #[error(
        "the state directory {} ran out of space while the sandbox was built ({} free now; {cause}): free space \
         there, or give --state-dir (UNDERSTUDY_STATE_DIR) on a larger filesystem; what the build made was removed",
        path.display(), iec(*free)
    )]
    During { path: PathBuf, free: u64, cause: String },
}

fn iec(bytes: u64) -> String {
    ByteSize::b(bytes).display().iec().to_string()
}

/// Bytes available to an unprivileged writer on the filesystem of `path` (or of its nearest existing parent).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let st = rustix::fs::statvfs(existing).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// What a sandbox of tables taking `table_bytes` on the source (with their indexes and TOAST) needs.
pub fn needed(table_bytes: u64) -> u64 {
    table_bytes
        .saturating_add(table_bytes / 4)
        .saturating_add(CLUSTER_FLOOR)
}

/// Refuses when the filesystem of `state_root` cannot hold a sandbox of `table_bytes`.
pub fn check(state_root: &Path, table_bytes: u64) -> Result<(), NoSpace> {
    let needed = needed(table_bytes);
    match free_bytes(state_root) {
        Some(free) if free < needed => Err(NoSpace::Before {
            path: state_root.to_path_buf(),
            free,
            needed,
            tables: table_bytes,
        }),
        _ => Ok(()),
    }
}

/// `cause` as running out of space in `state_root`, when it is that (see [`ran_out`]).
pub fn explain(cause: &str, state_root: &Path) -> Option<NoSpace> {
    ran_out(cause, state_root).then(|| NoSpace::During {
        path: state_root.to_path_buf(),
        free: free_bytes(state_root).unwrap_or(0),
        cause: cause.to_string(),
    })
}

/// Whether a build that failed with `error` ran out of space in `dir`: the error says so (ENOSPC, PostgreSQL's
/// `disk_full`), or the filesystem is all but full.
fn ran_out(error: &str, dir: &Path) -> bool {
    error.contains("No space left on device")
        || error.contains("could not extend file")
        || free_bytes(dir).is_some_and(|free| free < NEARLY_FULL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_has_a_floor_and_room_for_indexes() {
        assert_eq!(needed(0), CLUSTER_FLOOR);
        assert_eq!(needed(400), 500 + CLUSTER_FLOOR);
    }

    #[test]
    fn free_space_is_read_for_paths_not_made_yet() {
        let dir = std::env::temp_dir().join("understudy-space-test/not/made/yet");
        assert!(free_bytes(&dir).is_some_and(|b| b > 0));
        assert!(check(&dir, 0).is_ok(), "a temp dir holds an empty sandbox");
        let err = check(&dir, u64::MAX / 2).expect_err("no filesystem holds that");
        let text = err.to_string();
        assert!(text.contains("free space there, or give --state-dir"), "{text}");
        assert!(text.contains("nothing was created"), "{text}");
    }

    #[test]
    fn a_failed_build_that_ran_out_is_told_apart() {
        let tmp = std::env::temp_dir();
        assert!(ran_out(
            "loading orders: ERROR: could not extend file \"base/16384/16390\": No space left on device",
            &tmp
        ));
        assert!(ran_out(
            "creating /x/sandbox.json: No space left on device (os error 28)",
            &tmp
        ));
        assert!(!ran_out(
            "loading orders: ERROR: permission denied for table orders",
            &tmp
        ));
        let during = explain("COPY: No space left on device", &tmp)
            .expect("out of space")
            .to_string();
        assert!(
            during.contains("ran out of space while the sandbox was built"),
            "{during}"
        );
        assert!(during.contains("COPY: No space left on device"), "{during}");
    }
}

//! Directories that appear under their name only with their metadata in them (forks, recordings). One is made
//! under a hidden staging name beside its place (`.staging-<name>.<pid>`), filled, then renamed into place
//! without replacing anything. So a directory under a final name without metadata is never one being made, and a
//! staging directory is abandoned once its process is gone.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const PREFIX: &str = ".staging-";

/// Why a directory could not be placed.
#[derive(Debug)]
pub enum PlaceError<E> {
    /// Filling the staging directory failed.
    Fill(E),
    /// Something appeared under the name meanwhile.
    Exists,
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// Whether `file_name` names a staging directory (a name of ours never starts with a dot).
pub fn is_staging(file_name: &str) -> bool {
    file_name.starts_with(PREFIX)
}

/// The pid of the process staging `file_name`, if it is a staging directory's name.
pub fn pid_of(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix(PREFIX)?;
    rest.rsplit_once('.')?.1.parse().ok()
}

/// Whether process `pid` is alive.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether a staging directory named `file_name` is abandoned: its process is gone (or its name names none).
pub fn abandoned(file_name: &str) -> bool {
    is_staging(file_name) && !pid_of(file_name).is_some_and(alive)
}

fn staging_of(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.with_file_name(format!("{PREFIX}{name}.{}", std::process::id()))
}

/// Makes directory `dir` (mode 0755) with what `fill` writes into it: staged, then renamed into place. Nothing is
/// left behind when it fails.
pub fn place<E>(dir: &Path, fill: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), PlaceError<E>> {
    let staging = staging_of(dir);
    let io = |what: String| move |source| PlaceError::Io { what, source };
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    std::fs::create_dir(&staging).map_err(io(format!("creating {}", staging.display())))?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))
        .map_err(io(format!("setting the mode of {}", staging.display())))
        .and_then(|()| fill(&staging).map_err(PlaceError::Fill))
        .and_then(|()| match super::state::rename_new(&staging, dir) {
            Ok(true) => Ok(()),
            Ok(false) => Err(PlaceError::Exists),
            Err(source) => Err(PlaceError::Io {
                what: format!("renaming {} to {}", staging.display(), dir.display()),
                source,
            }),
        });
    if placed.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_appears_only_filled_and_never_replaces_one() {
        let root = std::env::temp_dir().join(format!("staging-test-{}", std::process::id()));
        let dir = root.join("forks/f1");
        place(&dir, |d| std::fs::write(d.join("meta.json"), "{}")).expect("placed");
        assert!(dir.join("meta.json").exists());
        let again = place(&dir, |d| std::fs::write(d.join("other"), "x"));
        assert!(matches!(again, Err(PlaceError::Exists)), "{again:?}");
        let failed = place(&root.join("forks/f2"), |_| Err("no metadata"));
        assert!(matches!(failed, Err(PlaceError::Fill("no metadata"))));
        let left: Vec<String> = std::fs::read_dir(root.join("forks"))
            .expect("read")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["f1"], "no staging directory and no f2 is left");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_staging_directory_is_abandoned_once_its_process_is_gone() {
        let mine = format!("{PREFIX}f1.{}", std::process::id());
        assert_eq!(pid_of(&mine), Some(std::process::id()));
        assert!(!abandoned(&mine));
        assert!(abandoned(&format!("{PREFIX}f1.999999999")));
        assert!(
            abandoned(&format!("{PREFIX}f1")),
            "a staging name without a pid is nobody's"
        );
        assert!(!abandoned("f1"), "not a staging directory");
    }
}

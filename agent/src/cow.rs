//! Copy-on-write filesystem helpers: what the state directory's filesystem can do, btrfs subvolumes.

use std::path::Path;
use std::process::Command;

/// The filesystem type of `path` (`btrfs`, `xfs`, `ext2/ext3`, `tmpfs`, ...).
pub fn filesystem(path: &Path) -> Option<String> {
    let out = Command::new("stat").args(["-f", "-c", "%T"]).arg(path).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// True when `dir` is the root of a btrfs subvolume (inode 256 on btrfs).
pub fn is_btrfs_subvolume(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    filesystem(dir).as_deref() == Some("btrfs") && std::fs::metadata(dir).map(|m| m.ino() == 256).unwrap_or(false)
}

/// True when `cp --reflink=always` works inside `dir`.
pub fn reflink_works(dir: &Path) -> bool {
    let probe = dir.join(format!(".reflink-probe-{}", std::process::id()));
    let copy = dir.join(format!(".reflink-probe-{}-copy", std::process::id()));
    let ok = std::fs::write(&probe, b"understudy").is_ok()
        && Command::new("cp")
            .arg("--reflink=always")
            .arg(&probe)
            .arg(&copy)
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    let _ = std::fs::remove_file(&probe);
    let _ = std::fs::remove_file(&copy);
    ok
}

/// Creates `path` as a btrfs subvolume when its parent is on btrfs (so that forks can snapshot it); returns
/// whether it did.
pub fn make_subvolume_if_btrfs(path: &Path) -> bool {
    let Some(parent) = path.parent() else { return false };
    if filesystem(parent).as_deref() != Some("btrfs") || path.exists() {
        return false;
    }
    Command::new("btrfs")
        .args(["subvolume", "create"])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Removes a directory; a btrfs subvolume is deleted as such.
pub fn remove_dir(path: &Path) -> std::io::Result<()> {
    if is_btrfs_subvolume(path) {
        let status = Command::new("btrfs")
            .args(["subvolume", "delete"])
            .arg(path)
            .stdout(std::process::Stdio::null())
            .status()?;
        if status.success() {
            return Ok(());
        }
    }
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

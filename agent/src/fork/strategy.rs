//! How a fork's data is copied: a btrfs snapshot, a reflink copy, `CREATE DATABASE ... TEMPLATE` on the
//! sandbox's own server, or a plain physical copy. `Auto` picks the fastest the state directory supports.

use std::path::Path;

pub use crate::cow::{filesystem, is_btrfs_subvolume, reflink_works};

use serde::{Deserialize, Serialize};

/// A copy strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// A btrfs subvolume snapshot of the sandbox's data directory: atomic, cost independent of size.
    BtrfsSnapshot,
    /// `cp --reflink=always` (xfs with reflink, btrfs) inside a backup window: cost independent of size.
    Reflink,
    /// `CREATE DATABASE ... TEMPLATE` on the sandbox's own server (no second server; cost grows with size).
    Template,
    /// A plain physical copy inside a backup window (portable; cost grows with size).
    Copy,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::BtrfsSnapshot => "btrfs-snapshot",
            Strategy::Reflink => "reflink",
            Strategy::Template => "template",
            Strategy::Copy => "copy",
        }
    }

    pub const ALL: [Strategy; 4] = [
        Strategy::BtrfsSnapshot,
        Strategy::Reflink,
        Strategy::Template,
        Strategy::Copy,
    ];

    /// True when the fork runs its own server (every strategy but `Template`).
    pub fn separate_server(self) -> bool {
        self != Strategy::Template
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Strategy::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| {
            let names: Vec<&str> = Strategy::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown fork strategy {text:?} (use one of {})", names.join(", "))
        })
    }
}

/// Picks the fastest strategy the sandbox's data directory and the forks directory support, and says why.
pub fn choose(sandbox_data: &Path, forks_dir: &Path) -> (Strategy, String) {
    let fs = filesystem(forks_dir).unwrap_or_else(|| "unknown".into());
    let same_fs = filesystem(sandbox_data).as_deref() == Some(fs.as_str());
    if is_btrfs_subvolume(sandbox_data) && fs == "btrfs" {
        return (
            Strategy::BtrfsSnapshot,
            "the sandbox's data directory is a btrfs subvolume".into(),
        );
    }
    if same_fs && reflink_works(forks_dir) {
        return (
            Strategy::Reflink,
            format!("the state directory is on {fs}, which supports reflink copies"),
        );
    }
    (
        Strategy::Template,
        format!(
            "the state directory is on {fs}, without copy-on-write (put it on btrfs or xfs with reflink=1 for \
             forks in constant time; see docs/forks.md)"
        ),
    )
}

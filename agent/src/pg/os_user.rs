//! The OS user that runs embedded servers. `initdb` and `postgres` refuse to run as root, so when Understudy runs
//! as root (development machines, CI) the servers run as an unprivileged user (`postgres`, or
//! `$UNDERSTUDY_PG_USER`), through `runuser`, in directories that user owns. Otherwise they run as the current user.

use std::path::Path;
use std::process::Command as StdCommand;

use tokio::process::Command;

use super::PgError;

/// Who runs the server processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// The current (non-root) user.
    Current,
    /// Another user, reached with `runuser` (we are root).
    User { name: String, uid: u32, gid: u32 },
}

impl RunAs {
    /// Decides from the effective user: root runs servers as `$UNDERSTUDY_PG_USER` or `postgres`.
    pub fn detect() -> Result<Self, PgError> {
        if !running_as_root() {
            return Ok(RunAs::Current);
        }
        let name = std::env::var("UNDERSTUDY_PG_USER").unwrap_or_else(|_| "postgres".to_string());
        let uid = id_of(&name, "-u")?;
        let gid = id_of(&name, "-g")?;
        if uid == 0 {
            return Err(PgError::OsUser {
                user: name,
                detail: "it is root; PostgreSQL refuses to run as root. Set UNDERSTUDY_PG_USER to an unprivileged \
                         user"
                    .to_string(),
            });
        }
        Ok(RunAs::User { name, uid, gid })
    }

    /// A command for `program` that runs as this user.
    pub fn command(&self, program: &Path) -> Command {
        match self {
            RunAs::Current => Command::new(program),
            RunAs::User { name, .. } => {
                let mut cmd = Command::new("runuser");
                cmd.arg("-u").arg(name).arg("--").arg(program);
                cmd
            }
        }
    }

    /// Gives `path` to this user (a no-op for the current user).
    pub fn own(&self, path: &Path) -> Result<(), PgError> {
        match self {
            RunAs::Current => Ok(()),
            RunAs::User { uid, gid, .. } => std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .map_err(|e| PgError::io(format!("giving {} to uid {uid}", path.display()), e)),
        }
    }

    /// Checks that this user can reach and write `dir`, naming the fix when it cannot.
    pub fn check_writable(&self, dir: &Path) -> Result<(), PgError> {
        let RunAs::User { name, .. } = self else {
            return Ok(());
        };
        let status = StdCommand::new("runuser")
            .args(["-u", name, "--", "test", "-w"])
            .arg(dir)
            .status()
            .map_err(|e| PgError::io("running runuser", e))?;
        if status.success() {
            Ok(())
        } else {
            Err(PgError::OsUser {
                user: name.clone(),
                detail: format!(
                    "it cannot write {} (a parent directory may not be traversable, e.g. /root is mode 700). \
                     Use a state directory it can reach, such as --state-dir /var/lib/understudy",
                    dir.display()
                ),
            })
        }
    }
}

/// True when the effective user is root. Read from `/proc/self` (owned by the effective uid) so that no unsafe
/// code is needed.
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

fn id_of(user: &str, flag: &str) -> Result<u32, PgError> {
    let out = StdCommand::new("id")
        .arg(flag)
        .arg(user)
        .output()
        .map_err(|e| PgError::io("running id", e))?;
    if !out.status.success() {
        return Err(PgError::OsUser {
            user: user.to_string(),
            detail: "no such user. Install the PostgreSQL server package (it creates `postgres`) or set \
                     UNDERSTUDY_PG_USER to an existing unprivileged user"
                .to_string(),
        });
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| PgError::OsUser {
            user: user.to_string(),
            detail: "`id` printed no number".to_string(),
        })
}

//! The filesystems of one data size: loop-mounted btrfs and xfs, each with a sandbox following the source, made
//! by the fork measurement and reused by the others; removed by [`Rig::finish`].

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use understudy::fork::{self, Strategy};
use understudy::sandbox::{self, SandboxMeta, StateDir};
use understudy::source::SandboxName;

/// A loop-mounted filesystem; unmounted and its image removed when released or dropped.
pub(crate) struct Mount {
    kind: &'static str,
    dir: PathBuf,
    image: PathBuf,
    mounted: bool,
}

impl Mount {
    /// Makes a `kind` (btrfs or xfs with reflink) filesystem in a sparse image of `bytes` under `parent` and
    /// mounts it at `parent/<kind>-mnt`.
    pub(crate) fn new(parent: &Path, kind: &'static str, bytes: u64) -> Result<Self> {
        let mut mount = Mount {
            kind,
            dir: parent.join(format!("{kind}-mnt")),
            image: parent.join(format!("{kind}.img")),
            mounted: false,
        };
        std::fs::create_dir_all(&mount.dir).with_context(|| format!("creating {}", mount.dir.display()))?;
        let file =
            std::fs::File::create(&mount.image).with_context(|| format!("creating {}", mount.image.display()))?;
        file.set_len(bytes)
            .with_context(|| format!("sizing {}", mount.image.display()))?;
        drop(file);
        let mut mkfs = match kind {
            "btrfs" => {
                let mut c = std::process::Command::new("mkfs.btrfs");
                c.arg("-q");
                c
            }
            "xfs" => {
                let mut c = std::process::Command::new("mkfs.xfs");
                c.args(["-q", "-m", "reflink=1"]);
                c
            }
            other => bail!("unknown filesystem {other}"),
        };
        mkfs.arg(&mount.image);
        run_sync(
            mkfs,
            &format!("mkfs.{kind} (install btrfs-progs / xfsprogs: bash .ci/setup)"),
        )?;
        let mut cmd = std::process::Command::new("mount");
        cmd.args(["-o", "loop"]).arg(&mount.image).arg(&mount.dir);
        run_sync(cmd, &format!("mount -o loop ({kind})"))?;
        mount.mounted = true;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&mount.dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("setting the mode of {}", mount.dir.display()))?;
        Ok(mount)
    }

    pub(crate) fn state(&self) -> StateDir {
        StateDir::at(self.dir.join("state"))
    }

    /// Kills any server still running inside, unmounts (retrying while busy), removes the image.
    fn release(&mut self) -> Result<()> {
        let mut problems = Vec::new();
        kill_postmasters(&self.dir);
        if self.mounted {
            let mut unmounted = false;
            for _ in 0..50 {
                let out = std::process::Command::new("umount").arg(&self.dir).output();
                if out.map(|o| o.status.success()).unwrap_or(false) {
                    unmounted = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
                kill_postmasters(&self.dir);
            }
            if !unmounted {
                // Still busy after 10 s: detach it lazily so that the image can go, and say so.
                let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
                problems.push(format!(
                    "{} ({}) was busy for 10 s and was unmounted lazily (umount -l)",
                    self.dir.display(),
                    self.kind
                ));
            }
            self.mounted = false;
        }
        if let Err(e) = std::fs::remove_file(&self.image)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("removing {}: {e}", self.image.display()));
        }
        let _ = std::fs::remove_dir(&self.dir);
        if problems.is_empty() {
            Ok(())
        } else {
            bail!(problems.join("; "))
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if (self.mounted || self.image.exists())
            && let Err(e) = self.release()
        {
            eprintln!("error: {e:#}");
        }
    }
}

/// Kills (SIGKILL) every postmaster whose data directory is under `dir` and waits up to 5 s for them to go.
fn kill_postmasters(dir: &Path) {
    for _ in 0..50 {
        let pids = understudy::pg::cluster::postmasters_under(dir);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_sync(mut cmd: std::process::Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A sandbox on one of the filesystems and the strategies measured on it.
pub struct Target {
    pub fs: &'static str,
    pub name: SandboxName,
    pub state: StateDir,
    pub strategies: Vec<Strategy>,
    pub meta: Option<SandboxMeta>,
}

/// The mounts and sandboxes of one data size, removed by [`Rig::finish`] (or, for the mounts, when dropped).
#[derive(Default)]
pub struct Rig {
    pub(crate) mounts: Vec<Mount>,
    pub(crate) targets: Vec<Target>,
}

impl Rig {
    pub async fn finish(&mut self) -> Result<()> {
        let mut problems = Vec::new();
        for target in std::mem::take(&mut self.targets) {
            for f in fork::list(&target.state) {
                if let Err(e) = fork::delete(&target.state, &f.name).await {
                    problems.push(format!("deleting fork {}: {e}", f.name));
                }
            }
            if target.state.sandbox_dir(&target.name).exists()
                && let Err(e) = sandbox::delete(&target.state, &target.name, None, true).await
            {
                problems.push(format!("deleting sandbox {}: {e}", target.name));
            }
        }
        for mut mount in std::mem::take(&mut self.mounts) {
            if let Err(e) = mount.release() {
                problems.push(format!("{e:#}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!(problems.join("; "))
        }
    }

    pub fn target(&self, strategy: Strategy) -> Result<&Target> {
        self.targets
            .iter()
            .find(|t| t.strategies.contains(&strategy))
            .with_context(|| format!("no sandbox measures strategy {}", strategy.as_str()))
    }
}

//! Finding PostgreSQL's programs: `PG_BINDIR`, then `pg_config --bindir`, then Debian's standard location.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::PgError;

/// The directory of a PostgreSQL installation's programs, and its major version.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    bindir: PathBuf,
    major: u32,
}

const REQUIRED: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

impl PgBinaries {
    /// Finds the binaries: `$PG_BINDIR`, else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
    pub fn locate() -> Result<Self, PgError> {
        if let Some(dir) = std::env::var_os("PG_BINDIR") {
            return Self::at(PathBuf::from(dir)).map_err(|e| match e {
                PgError::BinariesMissing { detail } => PgError::BinariesMissing {
                    detail: format!("PG_BINDIR is set: {detail}"),
                },
                other => other,
            });
        }
        let mut tried = Vec::new();
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
            && out.status.success()
        {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            match Self::at(dir.clone()) {
                Ok(found) => return Ok(found),
                Err(_) => tried.push(format!("pg_config --bindir gave {}", dir.display())),
            }
        } else {
            tried.push("pg_config is not on PATH".to_string());
        }
        let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
                Some((major, entry.path().join("bin")))
            })
            .collect();
        candidates.sort();
        for (_, dir) in candidates.into_iter().rev() {
            if let Ok(found) = Self::at(dir) {
                return Ok(found);
            }
        }
        tried.push("nothing usable under /usr/lib/postgresql".to_string());
        Err(PgError::BinariesMissing {
            detail: tried.join("; "),
        })
    }

    /// Uses the binaries in `bindir`, checking that the server programs are there.
    pub fn at(bindir: PathBuf) -> Result<Self, PgError> {
        let missing: Vec<&str> = REQUIRED.iter().copied().filter(|p| !bindir.join(p).is_file()).collect();
        if !missing.is_empty() {
            return Err(PgError::BinariesMissing {
                detail: format!("{} lacks {}", bindir.display(), missing.join(", ")),
            });
        }
        let out = Command::new(bindir.join("postgres"))
            .arg("--version")
            .output()
            .map_err(|e| PgError::io(format!("running {}/postgres --version", bindir.display()), e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let major = parse_major(&text).ok_or_else(|| PgError::BinariesMissing {
            detail: format!("cannot read a version from {:?}", text.trim()),
        })?;
        Ok(PgBinaries { bindir, major })
    }

    /// The path of one program, such as `pg_dump`.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }

    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The major version (15 for 15.18).
    pub fn major(&self) -> u32 {
        self.major
    }
}

/// `postgres (PostgreSQL) 15.18 (Debian ...)` → 15.
fn parse_major(version_output: &str) -> Option<u32> {
    let version = version_output
        .split_whitespace()
        .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
    version.split(['.', 'b', 'r', 'd']).next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_from_version_lines() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(parse_major("postgres (PostgreSQL) 17beta1"), Some(17));
        assert_eq!(parse_major("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("garbage"), None);
    }

    #[test]
    fn missing_directory_names_the_fix() {
        let err = PgBinaries::at(PathBuf::from("/nonexistent/bin")).expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("apt-get install -y postgresql-15"), "{text}");
        assert!(text.contains("PG_BINDIR"), "{text}");
        assert!(text.contains("/nonexistent/bin lacks initdb"), "{text}");
    }
}

//! The team's thresholds, from a TOML file (`--config`, or `.understudy.toml` in the working directory), each
//! overridable on the command line.
//!
//! ```toml
//! [thresholds]
//! max_failed_writes = 0      # replayed writes that may fail on the new schema
//! max_blocked_writes = 0     # writes that may wait behind the migration before the verdict is warn
//! max_lock_wait = "1s"       # the longest a write may wait before the verdict is fail
//! max_duration = "10m"       # the longest the migration may run before the verdict is fail
//! rollback = "warn"          # "require" (an untested rollback fails), "warn", or "ignore"
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::Thresholds;

/// What an untested rollback does to the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackPolicy {
    Require,
    #[default]
    Warn,
    Ignore,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    thresholds: FileThresholds,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileThresholds {
    max_failed_writes: Option<usize>,
    max_blocked_writes: Option<usize>,
    max_lock_wait: Option<String>,
    max_duration: Option<String>,
    rollback: Option<RollbackPolicy>,
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {detail}")]
pub struct ConfigError {
    pub file: String,
    pub detail: String,
}

/// Parses `500ms`, `30s`, `10m`, `2h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 30s, 10m or 2h"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?} (use ms, s, m, h, d)"
            ));
        }
    })
}

/// Thresholds from `path` on top of the defaults.
pub fn load(path: &Path) -> Result<Thresholds, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        detail: e.to_string(),
    })?;
    parse(&text).map_err(|detail| ConfigError { file, detail })
}

/// Thresholds from TOML text on top of the defaults.
pub fn parse(text: &str) -> Result<Thresholds, String> {
    let f: File = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut t = Thresholds::default();
    let th = f.thresholds;
    if let Some(v) = th.max_failed_writes {
        t.max_failed_writes = v;
    }
    if let Some(v) = th.max_blocked_writes {
        t.max_blocked_writes = v;
    }
    if let Some(v) = th.max_lock_wait {
        t.max_lock_wait = parse_duration(&v).map_err(|e| format!("thresholds.max_lock_wait: {e}"))?;
    }
    if let Some(v) = th.max_duration {
        t.max_duration = Some(parse_duration(&v).map_err(|e| format!("thresholds.max_duration: {e}"))?);
    }
    if let Some(v) = th.rollback {
        t.rollback = v;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_threshold() {
        let t = parse("[thresholds]\nmax_failed_writes = 3\nmax_blocked_writes = 10\nmax_lock_wait = \"250ms\"\nmax_duration = \"10m\"\nrollback = \"require\"\n")
            .expect("valid");
        assert_eq!(t.max_failed_writes, 3);
        assert_eq!(t.max_blocked_writes, 10);
        assert_eq!(t.max_lock_wait, Duration::from_millis(250));
        assert_eq!(t.max_duration, Some(Duration::from_secs(600)));
        assert_eq!(t.rollback, RollbackPolicy::Require);
        assert_eq!(parse("").expect("empty").max_lock_wait, Duration::from_secs(1));
    }

    #[test]
    fn names_what_is_wrong() {
        assert!(
            parse("[thresholds]\nmax_lock_wait = \"soon\"")
                .expect_err("bad")
                .contains("thresholds.max_lock_wait")
        );
        assert!(
            parse("[thresholds]\nmax_blocked = 1")
                .expect_err("unknown")
                .contains("max_blocked")
        );
        assert!(parse("[thresholds]\nrollback = \"maybe\"").is_err());
    }
}

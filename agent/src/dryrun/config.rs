//! The team's thresholds, from a TOML file (`--config`, or `.understudy.toml` in the working directory), each
//! overridable on the command line or in an API request. Durations take the same grammar everywhere
//! ([`crate::units`]).
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

use serde::Deserialize;

use crate::report::verdict::ThresholdOverrides;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    thresholds: ThresholdOverrides,
}

/// A configuration file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {detail}")]
pub struct ConfigError {
    pub file: String,
    pub detail: String,
}

impl crate::error::Classify for ConfigError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Invalid
    }
}

/// The `[thresholds]` of the file at `path`.
pub fn load(path: &Path) -> Result<ThresholdOverrides, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        detail: e.to_string(),
    })?;
    parse(&text).map_err(|detail| ConfigError { file, detail })
}

/// The `[thresholds]` of TOML text; an error names the key at fault (`thresholds.max_lock_wait: ...`).
pub fn parse(text: &str) -> Result<ThresholdOverrides, String> {
    let de = toml::Deserializer::parse(text).map_err(|e| e.to_string())?;
    let f: File = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().to_string();
        if path.is_empty() || path == "." {
            inner.to_string()
        } else {
            format!("{path}: {message}")
        }
    })?;
    Ok(f.thresholds)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::report::{RollbackPolicy, Thresholds};

    #[test]
    fn reads_every_threshold() {
        let layer = parse(
            "[thresholds]\nmax_failed_writes = 3\nmax_blocked_writes = 10\nmax_lock_wait = \"250ms\"\nmax_duration = \
             \"10m\"\nrollback = \"require\"\n",
        )
        .expect("valid");
        let t = Thresholds::default().with(&layer);
        assert_eq!(t.max_failed_writes, 3);
        assert_eq!(t.max_blocked_writes, 10);
        assert_eq!(t.max_lock_wait.get(), Duration::from_millis(250));
        assert_eq!(t.max_duration.map(|d| d.get()), Some(Duration::from_secs(600)));
        assert_eq!(t.rollback, RollbackPolicy::Require);
        let empty = Thresholds::default().with(&parse("").expect("empty"));
        assert_eq!(empty.max_lock_wait.get(), Duration::from_secs(1));
    }

    #[test]
    fn names_what_is_wrong() {
        let bad = parse("[thresholds]\nmax_lock_wait = \"soon\"").expect_err("bad");
        assert!(
            bad.starts_with("thresholds.max_lock_wait: ") && bad.contains("soon"),
            "{bad}"
        );
        let bare = parse("[thresholds]\nmax_lock_wait = \"5\"").expect_err("no unit");
        assert!(bare.contains("no unit"), "{bare}");
        assert!(
            parse("[thresholds]\nmax_blocked = 1")
                .expect_err("unknown")
                .contains("max_blocked")
        );
        assert!(parse("[thresholds]\nrollback = \"maybe\"").is_err());
    }

    #[test]
    fn later_layers_win_and_gaps_keep_the_layer_below() {
        let file = parse("[thresholds]\nmax_blocked_writes = 10\nmax_lock_wait = \"2s\"").expect("file");
        let cli = ThresholdOverrides {
            max_lock_wait: Some("500ms".parse().expect("duration")),
            ..ThresholdOverrides::default()
        };
        let t = Thresholds::default().with(&file).with(&cli);
        assert_eq!(t.max_blocked_writes, 10);
        assert_eq!(t.max_lock_wait.get(), Duration::from_millis(500));
    }
}

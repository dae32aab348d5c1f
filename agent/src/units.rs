//! One grammar for durations and sizes, wherever they are written: the command line, `.understudy.toml` and the
//! agent's API. Durations are humantime's (`500ms`, `30s`, `10m`, `4h`, `2d`, `1h 30m`); sizes are bytesize's
//! (`512MiB`, `8GiB`; `KB`/`MB`/`GB` are powers of 1000). Both require a unit: a bare `5` is refused instead of
//! being read as seconds by one parser and hours by another.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

/// A size in bytes written with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Text that is not a duration or a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("{0:?} has no unit; write it with one, e.g. 500ms, 30s, 10m, 4h or 2d")]
    DurationWithoutUnit(String),
    #[error("{text:?} is not a duration ({detail}); use e.g. 500ms, 30s, 10m, 4h, 2d or 1h 30m")]
    BadDuration { text: String, detail: String },
    #[error("{0:?} has no unit; write it with one, e.g. 512MiB or 8GiB")]
    SizeWithoutUnit(String),
    #[error("{text:?} is not a size ({detail}); use e.g. 512MiB, 8GiB or 1TiB")]
    BadSize { text: String, detail: String },
}

fn is_bare_number(text: &str) -> bool {
    let t = text.trim();
    !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.')
}

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, UnitError> {
        if is_bare_number(text) {
            return Err(UnitError::DurationWithoutUnit(text.to_string()));
        }
        humantime::parse_duration(text.trim())
            .map(Duration)
            .map_err(|e| UnitError::BadDuration {
                text: text.to_string(),
                detail: e.to_string(),
            })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }

    pub const fn gib(n: u64) -> Self {
        ByteSize(n * 1024 * 1024 * 1024)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, UnitError> {
        if is_bare_number(text) {
            return Err(UnitError::SizeWithoutUnit(text.to_string()));
        }
        text.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| ByteSize(b.as_u64()))
            .map_err(|detail| UnitError::BadSize {
                text: text.to_string(),
                detail,
            })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Exact when the size is a whole number of a binary unit, so that the text parses back to the same bytes.
        const UNITS: [(&str, u64); 5] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
            ("B", 1),
        ];
        let (unit, size) = UNITS
            .iter()
            .find(|(_, size)| self.0 >= *size && self.0.is_multiple_of(*size))
            .copied()
            .unwrap_or(("B", 1));
        write!(f, "{}{unit}", self.0 / size)
    }
}

macro_rules! serde_as_text {
    ($t:ty, $expecting:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl utoipa::PartialSchema for $t {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some($expecting))
                    .into()
            }
        }

        impl utoipa::ToSchema for $t {}
    };
}

serde_as_text!(
    Duration,
    "A duration with a unit (humantime): 500ms, 30s, 10m, 4h, 2d, 1h 30m"
);
serde_as_text!(
    ByteSize,
    "A size with a unit: 512MiB, 8GiB (KiB/MiB/GiB/TiB are powers of 1024; KB/MB/GB of 1000)"
);

impl crate::error::Classify for UnitError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_and_mean_the_same_everywhere() {
        assert_eq!("500ms".parse::<Duration>(), Ok(Duration::from_millis(500)));
        assert_eq!("30s".parse::<Duration>(), Ok(Duration::from_secs(30)));
        assert_eq!("4h".parse::<Duration>(), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!("2d".parse::<Duration>(), Ok(Duration::from_secs(2 * 86400)));
        assert_eq!("1h 30m".parse::<Duration>(), Ok(Duration::from_secs(5400)));
        let bare = "5".parse::<Duration>().expect_err("a bare number is refused");
        assert!(bare.to_string().contains("no unit"), "{bare}");
        assert!("soon".parse::<Duration>().is_err());
        let from_toml: Duration = serde_json::from_str("\"500ms\"").expect("json");
        assert_eq!(from_toml, Duration::from_millis(500));
        assert!(serde_json::from_str::<Duration>("\"5\"").is_err());
    }

    #[test]
    fn durations_print_so_that_they_parse_back() {
        for d in [
            Duration::from_secs(0),
            Duration::from_millis(250),
            Duration::from_secs(5400),
            Duration::from_secs(2 * 86400),
        ] {
            assert_eq!(d.to_string().parse::<Duration>(), Ok(d), "{d}");
        }
    }

    #[test]
    fn sizes_need_a_unit_and_print_exactly() {
        assert_eq!("512MiB".parse::<ByteSize>(), Ok(ByteSize::mib(512)));
        assert_eq!("8GiB".parse::<ByteSize>(), Ok(ByteSize::gib(8)));
        assert_eq!("1KB".parse::<ByteSize>(), Ok(ByteSize(1000)));
        assert!("100".parse::<ByteSize>().is_err());
        assert!("3 parsecs".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize::gib(4).to_string(), "4GiB");
        assert_eq!(ByteSize(1500).to_string(), "1500B");
        for s in [ByteSize::gib(4), ByteSize(1500), ByteSize::mib(64)] {
            assert_eq!(s.to_string().parse::<ByteSize>(), Ok(s));
        }
    }
}

//! When a dry-run runs: now, at a time of day in a timezone (`--at 02:00 --tz Europe/Berlin`), or at the next
//! match of a cron expression (`--cron "0 2 * * 1-5"`, the same syntax the operator's resources use), so that the
//! rehearsal meets the same traffic as the real run.

use std::str::FromStr;

use croner::Cron;
use jiff::Zoned;
use jiff::civil::Time;
use jiff::tz::TimeZone;

/// A schedule that cannot be parsed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("--at {0:?} is not a time of day; use HH:MM (24-hour), e.g. 02:00")]
    BadTime(String),
    #[error("unknown timezone {0:?}; use an IANA name such as Europe/Berlin or UTC")]
    BadZone(String),
    #[error("invalid cron expression {expr:?}: {detail} (five fields: minute hour day-of-month month day-of-week)")]
    BadCron { expr: String, detail: String },
    #[error("cron expression {0:?} never matches")]
    NeverMatches(String),
}

/// When to start.
#[derive(Debug, Clone)]
pub enum Schedule {
    Now,
    At {
        time: Time,
        tz: TimeZone,
    },
    Cron {
        expr: String,
        cron: Box<Cron>,
        tz: TimeZone,
    },
}

fn zone(name: Option<&str>) -> Result<TimeZone, ScheduleError> {
    match name {
        None => Ok(TimeZone::system()),
        Some(n) => TimeZone::get(n).map_err(|_| ScheduleError::BadZone(n.to_string())),
    }
}

impl Schedule {
    /// `--at HH:MM` in `tz` (the system's zone when `None`).
    pub fn at(text: &str, tz: Option<&str>) -> Result<Self, ScheduleError> {
        let bad = || ScheduleError::BadTime(text.to_string());
        let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
        let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        let time = Time::new(h, m, 0, 0).map_err(|_| bad())?;
        Ok(Schedule::At { time, tz: zone(tz)? })
    }

    /// `--cron EXPR` in `tz`.
    pub fn cron(expr: &str, tz: Option<&str>) -> Result<Self, ScheduleError> {
        let cron = Cron::from_str(expr).map_err(|e| ScheduleError::BadCron {
            expr: expr.to_string(),
            detail: e.to_string(),
        })?;
        Ok(Schedule::Cron {
            expr: expr.to_string(),
            cron: Box::new(cron),
            tz: zone(tz)?,
        })
    }

    /// The first start strictly after `now` (now itself for `Now`).
    pub fn next_after(&self, now: &Zoned) -> Result<Zoned, ScheduleError> {
        match self {
            Schedule::Now => Ok(now.clone()),
            Schedule::At { time, tz } => {
                let local = now.with_time_zone(tz.clone());
                let today = local.date().to_datetime(*time);
                let mut candidate = today
                    .to_zoned(tz.clone())
                    .map_err(|_| ScheduleError::BadTime(time.to_string()))?;
                if candidate <= local {
                    let tomorrow = local
                        .date()
                        .tomorrow()
                        .map_err(|_| ScheduleError::BadTime(time.to_string()))?;
                    candidate = tomorrow
                        .to_datetime(*time)
                        .to_zoned(tz.clone())
                        .map_err(|_| ScheduleError::BadTime(time.to_string()))?;
                }
                Ok(candidate)
            }
            Schedule::Cron { expr, cron, tz } => cron
                .find_next_occurrence(&now.with_time_zone(tz.clone()), false)
                .map_err(|_| ScheduleError::NeverMatches(expr.clone())),
        }
    }

    /// The next `n` starts after `now` (shown to people, and in the operator's status).
    pub fn upcoming(&self, now: &Zoned, n: usize) -> Result<Vec<Zoned>, ScheduleError> {
        let mut out = Vec::new();
        let mut from = now.clone();
        for _ in 0..n {
            let next = self.next_after(&from)?;
            if matches!(self, Schedule::Now) {
                out.push(next);
                break;
            }
            from = next.clone();
            out.push(next);
        }
        Ok(out)
    }
}

/// Waits until `target` (checking the clock every second, so that a suspended machine or a changed clock does
/// not oversleep).
pub async fn wait_until(target: &Zoned) {
    loop {
        let now = jiff::Timestamp::now();
        if target.timestamp() <= now {
            return;
        }
        let left = target.timestamp().as_millisecond() - now.as_millisecond();
        let step = u64::try_from(left.clamp(1, 1000)).unwrap_or(1000);
        tokio::time::sleep(std::time::Duration::from_millis(step)).await;
    }
}

impl crate::error::Classify for ScheduleError {
    fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zoned(text: &str) -> Zoned {
        text.parse().expect("zoned")
    }

    #[test]
    fn at_today_or_tomorrow_in_its_zone() {
        let s = Schedule::at("02:00", Some("Europe/Berlin")).expect("ok");
        let now = zoned("2026-11-24T10:00:00+01:00[Europe/Berlin]");
        assert_eq!(
            s.next_after(&now).expect("next").to_string(),
            "2026-11-25T02:00:00+01:00[Europe/Berlin]"
        );
        let early = zoned("2026-11-24T01:00:00+01:00[Europe/Berlin]");
        assert_eq!(
            s.next_after(&early).expect("next").to_string(),
            "2026-11-24T02:00:00+01:00[Europe/Berlin]"
        );
        // Asked from another zone, the answer is in the schedule's zone.
        let utc = zoned("2026-11-24T00:30:00+00:00[UTC]");
        assert_eq!(
            s.next_after(&utc).expect("next").to_string(),
            "2026-11-24T02:00:00+01:00[Europe/Berlin]"
        );
    }

    #[test]
    fn cron_weekdays_at_two() {
        let s = Schedule::cron("0 2 * * 1-5", Some("UTC")).expect("ok");
        // 2026-11-27 is a Friday.
        let now = zoned("2026-11-27T03:00:00+00:00[UTC]");
        let next = s.upcoming(&now, 2).expect("upcoming");
        assert_eq!(next[0].to_string(), "2026-11-30T02:00:00+00:00[UTC]");
        assert_eq!(next[1].to_string(), "2026-12-01T02:00:00+00:00[UTC]");
    }

    #[test]
    fn bad_input_names_the_fix() {
        assert!(
            Schedule::at("25:00", None)
                .expect_err("bad")
                .to_string()
                .contains("HH:MM")
        );
        assert!(Schedule::at("2am", None).is_err());
        assert!(
            Schedule::at("02:00", Some("Mars/Olympus"))
                .expect_err("zone")
                .to_string()
                .contains("IANA")
        );
        assert!(
            Schedule::cron("0 2 * *", None)
                .expect_err("fields")
                .to_string()
                .contains("five fields")
        );
        assert!(Schedule::cron("61 * * * *", None).is_err());
    }
}

//! `--at`, `--cron` and `--tz`: when a dry-run or a recording starts.

use clap::Args;
use understudy::dryrun::ScheduleSpec;

#[derive(Args, Clone, Debug, Default)]
pub struct ScheduleArgs {
    /// Start at this time of day (HH:MM, 24-hour): when production has the traffic to meet
    #[arg(long, conflicts_with = "cron")]
    at: Option<String>,
    /// Start at the next match of this cron expression (minute hour day-of-month month day-of-week)
    #[arg(long)]
    cron: Option<String>,
    /// Timezone for --at and --cron (IANA name) [default: the system's]
    #[arg(long)]
    tz: Option<String>,
}

impl ScheduleArgs {
    /// The schedule as the library takes it (checked there).
    pub fn spec(&self) -> ScheduleSpec {
        ScheduleSpec {
            at: self.at.clone(),
            cron: self.cron.clone(),
            time_zone: self.tz.clone(),
        }
    }
}

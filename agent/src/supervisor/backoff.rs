//! Restart backoff: the first restart of a server is immediate; while it keeps failing (or crashing again soon
//! after a restart) each wait doubles, up to a limit; a server that stays up for a minute starts afresh.

use std::time::{Duration, Instant};

/// How long a restarted server must stay up before the backoff resets.
const STABLE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct Backoff {
    max: Duration,
    consecutive: u32,
    last_attempt: Option<Instant>,
}

impl Backoff {
    pub fn new(max: Duration) -> Self {
        Backoff {
            max,
            consecutive: 0,
            last_attempt: None,
        }
    }

    /// The wait before the next attempt, counted from the last one.
    pub fn delay(&self) -> Duration {
        if self.consecutive == 0 {
            return Duration::ZERO;
        }
        let secs = 1u64 << (self.consecutive - 1).min(16);
        Duration::from_secs(secs).min(self.max)
    }

    /// Whether an attempt may be made at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        match self.last_attempt {
            None => true,
            Some(at) => now.saturating_duration_since(at) >= self.delay(),
        }
    }

    /// An attempt is made at `now`.
    pub fn attempt(&mut self, now: Instant) {
        self.consecutive = self.consecutive.saturating_add(1);
        self.last_attempt = Some(now);
    }

    /// The server was seen running at `now`: after a stable minute the next failure is retried at once.
    pub fn running(&mut self, now: Instant) {
        if let Some(at) = self.last_attempt
            && now.saturating_duration_since(at) >= STABLE
        {
            self.consecutive = 0;
            self.last_attempt = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_limit_and_resets_when_stable() {
        let t0 = Instant::now();
        let mut b = Backoff::new(Duration::from_secs(10));
        assert!(b.ready(t0));
        b.attempt(t0);
        assert_eq!(b.delay(), Duration::from_secs(1));
        assert!(!b.ready(t0 + Duration::from_millis(500)));
        assert!(b.ready(t0 + Duration::from_secs(1)));
        for _ in 0..10 {
            b.attempt(t0);
        }
        assert_eq!(b.delay(), Duration::from_secs(10));
        b.running(t0 + Duration::from_secs(30));
        assert_eq!(b.delay(), Duration::from_secs(10), "not stable yet");
        b.running(t0 + Duration::from_secs(61));
        assert_eq!(b.delay(), Duration::ZERO);
        assert!(b.ready(t0 + Duration::from_secs(61)));
    }
}

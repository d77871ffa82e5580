//! A token bucket for log lines that a peer can trigger (failed logins, rejected
//! requests): an operator sees each kind of event, a flood cannot fill the disk or cost
//! the process its CPU in formatting. Lines that were held back are counted, and the next
//! line that passes says how many.

use std::sync::Mutex;
use std::time::Instant;

/// A token bucket: `burst` lines at once, then `per_sec` lines a second.
#[derive(Debug)]
pub struct LogLimit {
    per_sec: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// The limit of every log line a peer can trigger (failed logins, refused
    /// requests): a burst of 50, then 20 a second. An operator following one problem
    /// sees every line; a flood of thousands a second costs a few.
    #[must_use]
    pub fn operator_lines() -> LogLimit {
        LogLimit::new(20, 50)
    }

    /// A bucket of `burst` lines refilled at `per_sec` lines a second.
    #[must_use]
    pub fn new(per_sec: u32, burst: u32) -> LogLimit {
        LogLimit {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            state: Mutex::new(Bucket {
                tokens: f64::from(burst.max(1)),
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// A bucket of `burst` lines refilled at `per_min` lines a minute: for what repeats
    /// for as long as an outage lasts (a dependency down: one line every few seconds says
    /// so; every failed call saying it again hides everything else).
    #[must_use]
    pub fn per_minute(per_min: u32, burst: u32) -> LogLimit {
        let mut l = LogLimit::new(0, burst);
        l.per_sec = f64::from(per_min) / 60.0;
        l
    }

    /// May a line be logged at `now`? `Some(n)`: yes, and `n` lines were held back since
    /// the last one that passed (say so in the line). `None`: hold this one back.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere while holding it; the counts are
        // still usable.
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(last) = b.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            b.tokens = (b.tokens + dt * self.per_sec).min(self.burst);
        }
        b.last = Some(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate_and_a_count_of_what_was_held_back() {
        let l = LogLimit::new(2, 3);
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), Some(0));
        for _ in 0..100 {
            assert_eq!(l.allow(t0), None);
        }
        // Half a second refills one token at 2/s.
        assert_eq!(l.allow(t0 + Duration::from_millis(500)), Some(100));
        assert_eq!(l.allow(t0 + Duration::from_millis(500)), None);
        // A long pause refills at most the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(l.allow(later), Some(1));
        assert_eq!(l.allow(later), Some(0));
        assert_eq!(l.allow(later), Some(0));
        assert_eq!(l.allow(later), None);
    }

    #[test]
    fn per_minute_refills_slowly() {
        let l = LogLimit::per_minute(6, 2);
        let t0 = Instant::now();
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0), Some(0));
        for _ in 0..40 {
            assert_eq!(l.allow(t0 + Duration::from_secs(1)), None);
        }
        // One line every 10 s, saying how many were held back.
        assert_eq!(l.allow(t0 + Duration::from_secs(10)), Some(40));
        assert_eq!(l.allow(t0 + Duration::from_secs(11)), None);
    }
}

//! What a listener does when `accept` fails: wait, longer each time, and say so rarely.
//!
//! `accept` fails mostly for want of descriptors (`EMFILE`, `ENFILE`) or memory
//! (`ENOBUFS`, `ENOMEM`). None of these clears by retrying at once: the listener stays
//! readable (the connection waits in the backlog), so a retry loop spins, and a log line
//! per failure fills the disk exactly when the process is in trouble. The wait starts at
//! 10 ms and doubles up to 1 s; one line opens an episode and at most one more every 10 s
//! reports the count since, and the first success after it ends the episode with a line.

use std::io;
use std::time::{Duration, Instant};

/// The first wait after a failed accept.
const FIRST: Duration = Duration::from_millis(10);
/// The longest wait: the listener is retried at least this often.
const MAX: Duration = Duration::from_secs(1);
/// At most one line per this interval while accepts keep failing.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The state of one listener's accept loop.
#[derive(Debug)]
pub struct AcceptBackoff {
    what: &'static str,
    delay: Duration,
    /// Failures since the episode began.
    failures: u64,
    /// Failures not yet reported in a line.
    unreported: u64,
    last_line: Option<Instant>,
}

impl AcceptBackoff {
    /// The backoff of the listener named `what` (`"sip tcp"`, `"metrics http"`).
    #[must_use]
    pub fn new(what: &'static str) -> AcceptBackoff {
        AcceptBackoff {
            what,
            delay: FIRST,
            failures: 0,
            unreported: 0,
            last_line: None,
        }
    }

    /// An accept succeeded: the next failure waits the shortest time again.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                listener = self.what,
                failures = self.failures,
                "accepting connections again"
            );
        }
        self.delay = FIRST;
        self.failures = 0;
        self.unreported = 0;
        self.last_line = None;
    }

    /// An accept failed with `e`: log if due, then wait the current delay (doubled for
    /// next time). Returns the delay waited.
    pub async fn failed(&mut self, e: &io::Error) -> Duration {
        let wait = self.note_failure(e, Instant::now());
        tokio::time::sleep(wait).await;
        wait
    }

    /// The bookkeeping of [`failed`](Self::failed) at `now`, without the wait: the delay
    /// to wait.
    pub fn note_failure(&mut self, e: &io::Error, now: Instant) -> Duration {
        self.failures += 1;
        self.unreported += 1;
        let due = self
            .last_line
            .is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY);
        let wait = self.delay;
        if due {
            tracing::warn!(
                listener = self.what,
                error = %e,
                failures = self.unreported,
                retry_in_ms = wait.as_millis() as u64,
                "accept failed; backing off (out of file descriptors? see the connection limits)"
            );
            self.unreported = 0;
            self.last_line = Some(now);
        }
        self.delay = (self.delay * 2).min(MAX);
        wait
    }

    /// Failures since the episode began (0 after a success).
    #[must_use]
    pub fn failures(&self) -> u64 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_to_a_second_and_a_success_resets_it() {
        let mut b = AcceptBackoff::new("test");
        let e = io::Error::from_raw_os_error(24);
        let t0 = Instant::now();
        let waits: Vec<u128> = (0..10)
            .map(|_| b.note_failure(&e, t0).as_millis())
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        assert_eq!(b.failures(), 10);
        b.succeeded();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.note_failure(&e, t0).as_millis(), 10);
    }

    #[test]
    fn one_line_per_interval_with_the_count() {
        let mut b = AcceptBackoff::new("test");
        let e = io::Error::from_raw_os_error(24);
        let t0 = Instant::now();
        b.note_failure(&e, t0);
        assert_eq!(b.last_line, Some(t0));
        for i in 1..=50 {
            b.note_failure(&e, t0 + Duration::from_millis(100 * i));
        }
        // Held back since the first line; reported by the next one, 10 s later.
        assert_eq!((b.unreported, b.last_line), (50, Some(t0)));
        let later = t0 + LOG_EVERY;
        b.note_failure(&e, later);
        assert_eq!((b.unreported, b.last_line), (0, Some(later)));
    }
}

//! The cluster's bans as read from the location service (`ListBans`), on this process's
//! clock: what the edges apply to their guards and the dispatchers to their public
//! transports.

use std::time::{Duration, Instant};

use crate::pb;

/// The wall clock the service's ban ends are on (Unix ms).
pub use sip_registrar::unix_now_ms;

/// When `b` ends on the monotonic clock, given `now` and the wall clock's `now_unix_ms`
/// (the service keeps ends as Unix milliseconds; a ban already over ends at `now`).
pub fn ban_until(b: &pb::BanEvent, now: Instant, now_unix_ms: u64) -> Instant {
    now + Duration::from_millis(b.until_ms.saturating_sub(now_unix_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_on_the_monotonic_clock() {
        let now = Instant::now();
        let b = pb::BanEvent {
            subject: "source:192.0.2.1".into(),
            until_ms: 10_500,
        };
        assert_eq!(ban_until(&b, now, 10_000), now + Duration::from_millis(500));
        assert_eq!(ban_until(&b, now, 11_000), now, "already over");
    }
}

//! flood: pike-like flood detection where packets arrive, before they are parsed. Each
//! source's messages (UDP datagrams, stream messages) are counted in one-second windows;
//! the message that takes a source over `rate` in a window bans it for `ban` (it goes on
//! the transports' [`Blocklist`](crate::Blocklist), so the rest of the flood costs a hash
//! lookup each) and reports the ban once, so that the owner can share it (the
//! dispatcher: with every edge and dispatcher, through the location service).
//!
//! The edges' guard limits requests by a token bucket after parsing and bans sources it
//! had to shed too often; this meter is for the public entry point, which must not parse
//! and relay 50,000 requests a second before an edge can tell it is a flood.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::blocklist::source_key;

/// Sources counted at most; past it, finished windows are swept, then new sources go
/// uncounted until there is room (a flood of distinct sources is for the caps and the
/// edges' limits, not for one table).
const MAX_SOURCES: usize = 100_000;

/// The window messages are counted in.
const WINDOW: Duration = Duration::from_secs(1);

/// A source banned by the meter, and for how long.
pub type FloodBan = (IpAddr, Duration);

/// Counts each source's messages; see the module docs.
pub struct FloodMeter {
    rate: u32,
    ban: Duration,
    allowed: Box<dyn Fn(IpAddr) -> bool + Send + Sync>,
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    bans: mpsc::UnboundedSender<FloodBan>,
}

impl std::fmt::Debug for FloodMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FloodMeter")
            .field("rate", &self.rate)
            .field("ban", &self.ban)
            .finish_non_exhaustive()
    }
}

impl FloodMeter {
    /// A meter banning a source over `rate` messages a second for `ban`; `allowed`
    /// sources (trunks, gateways) are never counted. The receiver gets each ban once.
    pub fn new(
        rate: u32,
        ban: Duration,
        allowed: impl Fn(IpAddr) -> bool + Send + Sync + 'static,
    ) -> (FloodMeter, mpsc::UnboundedReceiver<FloodBan>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let meter = FloodMeter {
            rate,
            ban,
            allowed: Box::new(allowed),
            windows: Mutex::new(HashMap::new()),
            bans: tx,
        };
        (meter, rx)
    }

    /// How long a flooding source is banned.
    pub fn ban(&self) -> Duration {
        self.ban
    }

    /// Count one message from `ip` at `now`: true when the source is over its rate in
    /// this window (the message that takes it over reports the ban).
    pub fn over(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = source_key(ip);
        if (self.allowed)(ip) {
            return false;
        }
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if w.len() >= MAX_SOURCES && !w.contains_key(&ip) {
            w.retain(|_, (start, _)| now.saturating_duration_since(*start) < WINDOW);
            if w.len() >= MAX_SOURCES {
                return false;
            }
        }
        let (start, count) = w.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= WINDOW {
            *start = now;
            *count = 0;
        }
        *count = count.saturating_add(1);
        if *count == self.rate.saturating_add(1) {
            let _ = self.bans.send((ip, self.ban));
        }
        *count > self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn a_source_over_its_rate_is_reported_once_and_others_are_not() {
        let allow = ip("192.0.2.200");
        let (m, mut bans) = FloodMeter::new(10, Duration::from_secs(60), move |a| a == allow);
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(!m.over(ip("192.0.2.1"), t0 + Duration::from_millis(i)));
        }
        assert!(m.over(ip("192.0.2.1"), t0 + Duration::from_millis(10)));
        assert!(m.over(ip("192.0.2.1"), t0 + Duration::from_millis(11)));
        assert_eq!(
            bans.try_recv().ok(),
            Some((ip("192.0.2.1"), Duration::from_secs(60)))
        );
        assert!(bans.try_recv().is_err(), "reported once");
        assert!(!m.over(ip("192.0.2.2"), t0), "another source");
        for _ in 0..100 {
            assert!(!m.over(allow, t0), "allow-listed");
        }
        // A new window counts afresh.
        assert!(!m.over(ip("192.0.2.1"), t0 + WINDOW + Duration::from_millis(1)));
    }

    #[test]
    fn an_ipv6_host_is_one_source_per_64() {
        let (m, mut bans) = FloodMeter::new(3, Duration::from_secs(5), |_| false);
        let t0 = Instant::now();
        for i in 1..=3u16 {
            assert!(!m.over(IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, i]), t0));
        }
        assert!(m.over(ip("2001:db8:0:1::99"), t0));
        assert_eq!(
            bans.try_recv().ok().map(|b| b.0),
            Some(ip("2001:db8:0:1::"))
        );
    }

    #[test]
    fn the_table_stays_bounded() {
        let (m, _bans) = FloodMeter::new(1, Duration::from_secs(5), |_| false);
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 10) {
            m.over(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(m.windows.lock().map(|w| w.len()).unwrap_or(0) <= MAX_SOURCES);
        // Once their windows are over, new sources are counted again.
        m.over(ip("198.51.100.1"), t0 + WINDOW);
        assert!(m.over(ip("198.51.100.1"), t0 + WINDOW));
    }
}

//! Sources whose datagrams and connections are dropped before anything else is done with
//! them: the sources an edge has banned (a flood, failed logins; its own or learned from
//! the cluster). A flood of 50,000 requests a second from a banned source then costs a
//! hash lookup each, not a parse and a trip through the core.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// The banned sources, each until an instant. Shared by the transports (which read it
/// for every datagram and connection) and whoever bans (which writes it rarely).
#[derive(Debug, Default)]
pub struct Blocklist {
    until: RwLock<HashMap<IpAddr, Instant>>,
    /// Entries, read without the lock: no ban at all is the common case.
    len: AtomicUsize,
}

/// Entries held at most (bans are few; a flood of distinct sources is not banned source
/// by source but limited by rate). Past it, expired ones are swept, then new ones refused.
const MAX_ENTRIES: usize = 100_000;

impl Blocklist {
    /// Drop `ip`'s traffic until `until` (extends, never shortens, a ban in force).
    pub fn block(&self, ip: IpAddr, until: Instant) {
        let ip = source_key(ip);
        let mut m = self.until.write().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_ENTRIES && !m.contains_key(&ip) {
            let now = Instant::now();
            m.retain(|_, u| *u > now);
            if m.len() >= MAX_ENTRIES {
                return;
            }
        }
        let e = m.entry(ip).or_insert(until);
        if *e < until {
            *e = until;
        }
        self.len.store(m.len(), Ordering::Relaxed);
    }

    /// Is `ip`'s traffic dropped at `now`? An expired entry is removed on the way.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        if self.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let ip = source_key(ip);
        let until = {
            let m = self.until.read().unwrap_or_else(|p| p.into_inner());
            m.get(&ip).copied()
        };
        match until {
            Some(u) if u > now => true,
            Some(_) => {
                let mut m = self.until.write().unwrap_or_else(|p| p.into_inner());
                if m.get(&ip).is_some_and(|u| *u <= now) {
                    m.remove(&ip);
                }
                self.len.store(m.len(), Ordering::Relaxed);
                false
            }
            None => false,
        }
    }

    /// Sources blocked at `now`.
    pub fn count(&self, now: Instant) -> usize {
        if self.len.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let m = self.until.read().unwrap_or_else(|p| p.into_inner());
        m.values().filter(|u| **u > now).count()
    }
}

/// The prefix of a source ban's subject in the cluster's list (`source:<ip>`; a user's
/// lock is `user:<user@realm>`).
const SOURCE_SUBJECT: &str = "source:";

/// The cluster's name for a ban of `ip` (its [`source_key`]).
pub fn source_subject(ip: IpAddr) -> String {
    format!("{SOURCE_SUBJECT}{}", source_key(ip))
}

/// The address a ban subject names, when it is a source ban.
pub fn subject_source(subject: &str) -> Option<IpAddr> {
    subject.strip_prefix(SOURCE_SUBJECT)?.parse().ok()
}

/// The key a source is limited and banned by: its address, or for IPv6 its /64 (one host
/// gets a whole /64, so single addresses would give it endless fresh sources); an
/// IPv4-mapped address is its IPv4 address.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into())
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn blocks_until_then_forgets_and_v6_by_64() {
        let b = Blocklist::default();
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().unwrap_or_else(|_| unreachable!());
        assert!(!b.blocked(ip, t0));
        b.block(ip, t0 + Duration::from_secs(5));
        b.block(ip, t0 + Duration::from_secs(1)); // never shortened
        assert!(b.blocked(ip, t0 + Duration::from_secs(4)));
        assert_eq!(b.count(t0), 1);
        assert!(!b.blocked(ip, t0 + Duration::from_secs(5)));
        assert_eq!(b.count(t0), 0, "expired entry removed");
        let v6: IpAddr = "2001:db8:1:2::7".parse().unwrap_or_else(|_| unreachable!());
        b.block(v6, t0 + Duration::from_secs(5));
        let same64: IpAddr = "2001:db8:1:2:ffff::1"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        assert!(b.blocked(same64, t0));
        let mapped: IpAddr = "::ffff:192.0.2.7"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        b.block(ip, t0 + Duration::from_secs(5));
        assert!(b.blocked(mapped, t0));
    }

    #[test]
    fn source_subjects_round_trip() {
        let v6: IpAddr = "2001:db8:1:2::7".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(source_subject(v6), "source:2001:db8:1:2::");
        assert_eq!(
            subject_source(&source_subject(v6)),
            Some(source_key(v6)),
            "its /64"
        );
        assert_eq!(subject_source("user:alice@example.com"), None);
        assert_eq!(subject_source("source:not-an-address"), None);
    }
}

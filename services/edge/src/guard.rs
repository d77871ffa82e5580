//! The edge's own defences, sans-IO on the caller's clock: a per-source request rate
//! limit (a token bucket per IP address, so one flooding source is shed before its
//! requests cost a transaction), and the brute-force limits (failed logins per source and
//! per user within a window; past the limit the source is banned, or the user locked,
//! for a while), and flood bans (a source shed over its rate too many times in a row is
//! banned outright, pike-like). Every ban is mirrored into the transports' blocklist, so
//! a banned source's datagrams are dropped before they are parsed. In a cluster the bans
//! are shared through the location service (`crate::bans`): [`Guard::apply`] takes
//! the ones other edges started. Every table is bounded, so a flood of distinct sources
//! cannot grow it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sip_transport::Blocklist;
use sip_transport::blocklist::source_key;

use crate::config::SecurityConfig;

/// How many sources or users each table holds at most; past it, expired entries are
/// swept and, if still full, rate buckets are forgotten (a new bucket starts full, so
/// the worst case is a limit that forgets, never one that refuses an innocent client).
const MAX_ENTRIES: usize = 100_000;

/// The verdict on a new request from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go on.
    Yes,
    /// The source is banned for failed logins: drop without an answer.
    Banned,
    /// Over its request rate: drop without an answer.
    RateLimited,
    /// Over its rate so often that it is flooding: banned from now (`flood_ban_secs`).
    FloodBanned,
}

/// A ban or lock that has just started (for the log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lockout {
    /// The source address, for this long.
    Source(IpAddr, Duration),
    /// The user (`user@realm`), for this long.
    User(String, Duration),
    /// The source address, flooding, for this long.
    Flood(IpAddr, Duration),
}

impl Lockout {
    /// Every [`label`](Lockout::label): the `reason` of `sip_lockouts`, what was banned.
    pub const LABELS: [&'static str; 3] = ["source", "user", "flood"];

    /// The metric label: `source`, `user` or `flood`.
    pub fn label(&self) -> &'static str {
        let [source, user, flood] = Self::LABELS;
        match self {
            Lockout::Source(..) => source,
            Lockout::User(..) => user,
            Lockout::Flood(..) => flood,
        }
    }

    /// The cluster's name for what is banned (`source:<ip>`, `user:<user@realm>`) and
    /// for how long.
    pub fn subject(&self) -> (String, Duration) {
        match self {
            Lockout::Source(ip, d) | Lockout::Flood(ip, d) => {
                (sip_transport::blocklist::source_subject(*ip), *d)
            }
            Lockout::User(u, d) => (format!("user:{u}"), *d),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Requests dropped over the rate since `drops_since` (flood detection).
    drops: u32,
    drops_since: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    window_start: Instant,
    /// Banned or locked until then.
    until: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    buckets: HashMap<IpAddr, Bucket>,
    sources: HashMap<IpAddr, Failures>,
    users: HashMap<String, Failures>,
}

/// The limits and their tables.
#[derive(Debug)]
pub struct Guard {
    rate: f64,
    burst: f64,
    per_source: u32,
    per_user: u32,
    window: Duration,
    ban: Duration,
    lock: Duration,
    flood_drops: u32,
    flood_window: Duration,
    flood_ban: Duration,
    allowed: Vec<dispatch_core::Cidr>,
    /// Where source bans are mirrored for the transports.
    blocklist: Arc<Blocklist>,
    state: Mutex<State>,
}

impl Guard {
    /// From the configuration, with a blocklist of its own.
    pub fn new(cfg: &SecurityConfig) -> Guard {
        Guard::with_blocklist(cfg, Arc::default())
    }

    /// From the configuration, mirroring source bans into `blocklist` (the transports').
    pub fn with_blocklist(cfg: &SecurityConfig, blocklist: Arc<Blocklist>) -> Guard {
        Guard {
            flood_drops: cfg.flood_drops,
            flood_window: Duration::from_secs(cfg.flood_window_secs),
            flood_ban: Duration::from_secs(cfg.flood_ban_secs),
            allowed: cfg.allowed(),
            blocklist,
            rate: f64::from(cfg.source_rate),
            burst: f64::from(cfg.source_burst.max(cfg.source_rate)),
            per_source: cfg.auth_failures_per_source,
            per_user: cfg.auth_failures_per_user,
            window: Duration::from_secs(cfg.auth_failure_window_secs),
            ban: Duration::from_secs(cfg.source_ban_secs),
            lock: Duration::from_secs(cfg.user_lock_secs),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves counters, never broken
        // invariants: go on with them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new request from `ip` (not a trusted peer) at `now`.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Admit {
        let ip = source_key(ip);
        let mut st = self.state();
        if let Some(f) = st.sources.get(&ip)
            && f.until.is_some_and(|u| now < u)
        {
            return Admit::Banned;
        }
        if self.rate <= 0.0 {
            return Admit::Yes;
        }
        if st.buckets.len() >= MAX_ENTRIES && !st.buckets.contains_key(&ip) {
            let (rate, burst) = (self.rate, self.burst);
            // Full buckets hold no information: forget them first.
            st.buckets.retain(|_, b| {
                let refill = now.saturating_duration_since(b.at).as_secs_f64() * rate;
                b.tokens + refill < burst
            });
            if st.buckets.len() >= MAX_ENTRIES {
                st.buckets.clear();
            }
        }
        let b = st.buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
            drops: 0,
            drops_since: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Admit::Yes;
        }
        if self.flood_drops == 0 {
            return Admit::RateLimited;
        }
        if now.saturating_duration_since(b.drops_since) > self.flood_window {
            b.drops = 0;
            b.drops_since = now;
        }
        b.drops += 1;
        if b.drops < self.flood_drops {
            return Admit::RateLimited;
        }
        // Flooding: banned outright, its datagrams dropped before they are parsed.
        b.drops = 0;
        let until = now + self.flood_ban;
        st.sources.insert(
            ip,
            Failures {
                count: 0,
                window_start: now,
                until: Some(until),
            },
        );
        drop(st);
        self.blocklist.block(ip, until);
        Admit::FloodBanned
    }

    /// The flood ban that just started for `ip` ([`Admit::FloodBanned`]).
    pub fn flood_lockout(&self, ip: IpAddr) -> Lockout {
        Lockout::Flood(source_key(ip), self.flood_ban)
    }

    /// Never limited, banned or locked out (`security.allow_list`).
    pub fn allowed(&self, ip: IpAddr) -> bool {
        dispatch_core::security::any_contains(&self.allowed, ip)
    }

    /// A ban the cluster knows of (`source:<ip>` or `user:<user@realm>`), in force until
    /// `until`: applied here too. True when it is new or longer than the one in force
    /// (for the log line); an allow-listed source's is ignored.
    pub fn apply(&self, subject: &str, until: Instant, now: Instant) -> bool {
        if until <= now {
            return false;
        }
        if let Some(ip) = sip_transport::blocklist::subject_source(subject) {
            if self.allowed(ip) {
                return false;
            }
            self.blocklist.block(ip, until);
            let mut st = self.state();
            Self::sweep_if_full(&mut st.sources, now);
            return extend(st.sources.entry(source_key(ip)), until, now);
        }
        if let Some(user) = subject.strip_prefix("user:") {
            let mut st = self.state();
            Self::sweep_if_full(&mut st.users, now);
            return extend(st.users.entry(user.to_owned()), until, now);
        }
        false
    }

    /// Is this user (`user@realm`) locked for failed logins?
    pub fn user_locked(&self, user: &str, now: Instant) -> bool {
        self.state()
            .users
            .get(user)
            .is_some_and(|f| f.until.is_some_and(|u| now < u))
    }

    /// A failed login by `user` (`user@realm`, as claimed) from `ip`. Returns the bans
    /// that start now.
    pub fn auth_failed(&self, ip: IpAddr, user: &str, now: Instant) -> Vec<Lockout> {
        let ip = source_key(ip);
        let mut st = self.state();
        let mut out = Vec::new();
        if self.per_source > 0 && !self.allowed(ip) {
            let (window, ban) = (self.window, self.ban);
            Self::sweep_if_full(&mut st.sources, now);
            if count(st.sources.entry(ip), now, window, self.per_source, ban) {
                self.blocklist.block(ip, now + ban);
                out.push(Lockout::Source(ip, ban));
            }
        }
        if self.per_user > 0 && !user.is_empty() {
            let (window, lock) = (self.window, self.lock);
            Self::sweep_if_full(&mut st.users, now);
            if count(
                st.users.entry(user.to_owned()),
                now,
                window,
                self.per_user,
                lock,
            ) {
                out.push(Lockout::User(user.to_owned(), lock));
            }
        }
        out
    }

    /// A successful login clears the user's failures (a phone that had a wrong password
    /// and was fixed starts afresh).
    pub fn auth_succeeded(&self, user: &str) {
        let mut st = self.state();
        if st.users.get(user).is_some_and(|f| f.until.is_none()) {
            st.users.remove(user);
        }
    }

    fn sweep_if_full<K: std::hash::Hash + Eq>(m: &mut HashMap<K, Failures>, now: Instant) {
        if m.len() >= MAX_ENTRIES {
            m.retain(|_, f| f.until.is_some_and(|u| now < u));
        }
    }

    /// Sources banned and users locked now (for the gauges).
    pub fn counts(&self, now: Instant) -> (usize, usize) {
        let st = self.state();
        let live = |f: &Failures| f.until.is_some_and(|u| now < u);
        (
            st.sources.values().filter(|f| live(f)).count(),
            st.users.values().filter(|f| live(f)).count(),
        )
    }
}

/// Ban `entry` until `until` unless a longer ban is in force; true when it changed.
fn extend<K>(
    entry: std::collections::hash_map::Entry<'_, K, Failures>,
    until: Instant,
    now: Instant,
) -> bool {
    let f = entry.or_insert(Failures {
        count: 0,
        window_start: now,
        until: None,
    });
    if f.until.is_some_and(|u| u >= until) {
        return false;
    }
    f.until = Some(until);
    true
}

/// Count one failure into `entry`; true when this one starts a ban.
fn count<K>(
    entry: std::collections::hash_map::Entry<'_, K, Failures>,
    now: Instant,
    window: Duration,
    limit: u32,
    ban: Duration,
) -> bool {
    let f = entry.or_insert(Failures {
        count: 0,
        window_start: now,
        until: None,
    });
    if f.until.is_some_and(|u| now < u) {
        return false;
    }
    if f.until.is_some() || now.saturating_duration_since(f.window_start) > window {
        *f = Failures {
            count: 0,
            window_start: now,
            until: None,
        };
    }
    f.count += 1;
    if f.count >= limit {
        f.until = Some(now + ban);
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SecurityConfig {
        SecurityConfig {
            source_rate: 10,
            source_burst: 20,
            auth_failures_per_source: 5,
            auth_failures_per_user: 8,
            auth_failure_window_secs: 60,
            source_ban_secs: 300,
            user_lock_secs: 120,
            ..SecurityConfig::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn one_flooding_source_is_shed_and_others_are_not() {
        let g = Guard::new(&cfg());
        let t0 = Instant::now();
        let admitted = (0..1000)
            .filter(|_| g.admit(ip("192.0.2.1"), t0) == Admit::Yes)
            .count();
        assert_eq!(admitted, 20, "the burst, then nothing");
        assert_eq!(g.admit(ip("192.0.2.2"), t0), Admit::Yes);
        // Refilled at the rate: one second later, ten more.
        let later = t0 + Duration::from_secs(1);
        let again = (0..100)
            .filter(|_| g.admit(ip("192.0.2.1"), later) == Admit::Yes)
            .count();
        assert_eq!(again, 10);
    }

    #[test]
    fn failed_logins_ban_the_source_then_expire() {
        let g = Guard::new(&cfg());
        let t0 = Instant::now();
        let a = ip("198.51.100.9");
        for i in 0..4 {
            assert!(g.auth_failed(a, &format!("u{i}@d"), t0).is_empty());
        }
        assert_eq!(
            g.auth_failed(a, "u9@d", t0),
            vec![Lockout::Source(a, Duration::from_secs(300))]
        );
        assert_eq!(g.admit(a, t0), Admit::Banned);
        assert_eq!(g.admit(ip("198.51.100.10"), t0), Admit::Yes);
        assert_eq!(g.counts(t0), (1, 0));
        assert_eq!(g.admit(a, t0 + Duration::from_secs(301)), Admit::Yes);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let g = Guard::new(&cfg());
        let t0 = Instant::now();
        let a = ip("198.51.100.9");
        for i in 0..20u64 {
            assert!(
                g.auth_failed(a, "", t0 + Duration::from_secs(61 * i))
                    .is_empty()
            );
        }
    }

    #[test]
    fn a_user_guessed_from_many_sources_is_locked() {
        let g = Guard::new(&cfg());
        let t0 = Instant::now();
        let mut started = Vec::new();
        for i in 0..8u8 {
            started.extend(g.auth_failed(IpAddr::from([203, 0, 113, i]), "bob@d", t0));
        }
        assert_eq!(
            started,
            vec![Lockout::User("bob@d".into(), Duration::from_secs(120))]
        );
        assert!(g.user_locked("bob@d", t0));
        assert!(!g.user_locked("alice@d", t0));
        assert!(!g.user_locked("bob@d", t0 + Duration::from_secs(121)));
        // A success clears a count that did not reach the limit.
        g.auth_failed(ip("203.0.113.50"), "carol@d", t0);
        g.auth_succeeded("carol@d");
        assert!(!g.state().users.contains_key("carol@d"));
    }

    #[test]
    fn an_ipv6_host_is_one_source_per_64() {
        let g = Guard::new(&cfg());
        let t0 = Instant::now();
        let admitted = (0..100u16)
            .filter(|i| {
                let a: IpAddr = format!("2001:db8:1:2::{i:x}").parse().expect("ip");
                g.admit(a, t0) == Admit::Yes
            })
            .count();
        assert_eq!(admitted, 20, "one bucket for the /64");
        assert_eq!(g.admit(ip("2001:db8:1:3::1"), t0), Admit::Yes);
    }

    #[test]
    fn a_flooding_source_is_banned_on_arrival_and_the_ban_ends() {
        let mut c = cfg();
        c.flood_drops = 100;
        c.flood_window_secs = 10;
        c.flood_ban_secs = 5;
        c.allow_list = vec!["192.0.2.200/32".into()];
        let bl = Arc::new(Blocklist::default());
        let g = Guard::with_blocklist(&c, bl.clone());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let verdicts: Vec<Admit> = (0..200).map(|_| g.admit(a, t0)).collect();
        // The burst (20), 99 shed, the 100th shed starts the ban.
        assert_eq!(verdicts.iter().filter(|v| **v == Admit::Yes).count(), 20);
        assert_eq!(verdicts[119], Admit::FloodBanned);
        assert!(verdicts[120..].iter().all(|v| *v == Admit::Banned));
        assert!(bl.blocked(a, t0), "the transports drop it on arrival");
        assert_eq!(
            g.flood_lockout(a),
            Lockout::Flood(a, Duration::from_secs(5))
        );
        assert_eq!(
            g.flood_lockout(a).subject(),
            ("source:192.0.2.1".into(), Duration::from_secs(5))
        );
        let after = t0 + Duration::from_secs(6);
        assert!(!bl.blocked(a, after));
        assert_eq!(g.admit(a, after), Admit::Yes);
    }

    #[test]
    fn bans_from_the_cluster_apply_except_to_the_allow_list() {
        let mut c = cfg();
        c.allow_list = vec!["192.0.2.200/32".into()];
        let bl = Arc::new(Blocklist::default());
        let g = Guard::with_blocklist(&c, bl.clone());
        let t0 = Instant::now();
        let until = t0 + Duration::from_secs(30);
        assert!(g.apply("source:192.0.2.9", until, t0));
        assert!(!g.apply("source:192.0.2.9", until, t0), "not new");
        assert_eq!(g.admit(ip("192.0.2.9"), t0), Admit::Banned);
        assert!(bl.blocked(ip("192.0.2.9"), t0));
        assert!(g.apply("user:bob@d", until, t0));
        assert!(g.user_locked("bob@d", t0));
        assert!(!g.apply("source:192.0.2.200", until, t0), "allow-listed");
        assert!(!bl.blocked(ip("192.0.2.200"), t0));
        assert!(g.allowed(ip("192.0.2.200")));
        assert!(!g.apply("nonsense", until, t0));
        assert!(!g.apply("source:192.0.2.9", t0, t0), "already over");
        // Failed logins from an allow-listed source never ban it.
        for i in 0..50 {
            assert!(
                g.auth_failed(ip("192.0.2.200"), &format!("u{i}@d"), t0)
                    .is_empty()
            );
        }
    }

    #[test]
    fn tables_stay_bounded() {
        let mut c = cfg();
        c.source_rate = 1;
        c.source_burst = 1;
        let g = Guard::new(&c);
        let t0 = Instant::now();
        for i in 0..(MAX_ENTRIES as u32 + 10) {
            g.admit(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(g.state().buckets.len() <= MAX_ENTRIES);
    }
}

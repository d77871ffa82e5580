//! Call limits (the location service's `AcquireCall`, `RefreshCall`, `ReleaseCall`):
//! what is shared by the service and the edges, and [`SlotTable`], the limits in one
//! process's memory (the all-in-one, a standalone edge, tests) with the same semantics as
//! the location service's Redis scripts, the time passed in.

use std::collections::HashMap;

use crate::pb;

/// The answer to an admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The call holds a slot under every key.
    Granted,
    /// Refused, changing nothing: this key is at its limit.
    Refused {
        /// The key.
        key: String,
        /// `calls` or `cps`.
        by: &'static str,
    },
}

/// A call's name in the limits store: its Call-ID and the caller's tag (no CR or LF can
/// be in either, so the pair is unambiguous).
pub fn call_member(call_id: &str, from_tag: &str) -> String {
    format!("{call_id}\n{from_tag}")
}

/// The one-second window of a calls-per-second count.
pub fn cps_window(now_ms: u64) -> u64 {
    now_ms / 1000
}

/// Slots and per-second counts, keyed like the Redis backend's.
#[derive(Debug, Default)]
pub struct SlotTable {
    /// Per key: the calls holding a slot, each with its expiry (Unix ms).
    slots: HashMap<String, HashMap<String, u64>>,
    /// Per key: the window being counted and its count.
    cps: HashMap<String, (u64, u32)>,
    /// Per call: the keys it holds a slot under and their expiry.
    calls: HashMap<String, (Vec<String>, u64)>,
}

/// Keys tracked at most (each call holds a few): past it expired entries are swept, then
/// new calls are refused as if over a limit rather than growing without bound.
const MAX_CALLS: usize = 1_000_000;

impl SlotTable {
    /// Admit `member` against every limit at once, all or nothing, holding its slots
    /// `ttl_ms` from `now_ms`; a member holding its slots already is granted again.
    pub fn acquire(
        &mut self,
        member: &str,
        limits: &[pb::CallLimit],
        ttl_ms: u64,
        now_ms: u64,
    ) -> Admission {
        if self
            .calls
            .get(member)
            .is_some_and(|(_, until)| *until > now_ms)
        {
            return Admission::Granted;
        }
        if self.calls.len() >= MAX_CALLS {
            self.sweep(now_ms);
            if self.calls.len() >= MAX_CALLS {
                return Admission::Refused {
                    key: "table-full".into(),
                    by: "calls",
                };
            }
        }
        let window = cps_window(now_ms);
        for l in limits {
            if l.max_calls > 0 {
                let held = self.slots.get_mut(&l.key).map_or(0, |s| {
                    s.retain(|_, until| *until > now_ms);
                    s.len()
                });
                if held >= l.max_calls as usize {
                    return Admission::Refused {
                        key: l.key.clone(),
                        by: "calls",
                    };
                }
            }
            if l.max_cps > 0 {
                let n = match self.cps.get(&l.key) {
                    Some((w, n)) if *w == window => *n,
                    _ => 0,
                };
                if n >= l.max_cps {
                    return Admission::Refused {
                        key: l.key.clone(),
                        by: "cps",
                    };
                }
            }
        }
        let until = now_ms.saturating_add(ttl_ms);
        for l in limits {
            self.slots
                .entry(l.key.clone())
                .or_default()
                .insert(member.to_owned(), until);
            if l.max_cps > 0 {
                let c = self.cps.entry(l.key.clone()).or_insert((window, 0));
                if c.0 != window {
                    *c = (window, 0);
                }
                c.1 += 1;
            }
        }
        self.calls.insert(
            member.to_owned(),
            (limits.iter().map(|l| l.key.clone()).collect(), until),
        );
        Admission::Granted
    }

    /// Extend the slots of `member`; false when it holds none.
    pub fn refresh(&mut self, member: &str, ttl_ms: u64, now_ms: u64) -> bool {
        let until = now_ms.saturating_add(ttl_ms);
        let Some((keys, exp)) = self.calls.get_mut(member).filter(|(_, e)| *e > now_ms) else {
            return false;
        };
        *exp = until;
        for k in keys.iter() {
            if let Some(e) = self.slots.get_mut(k).and_then(|s| s.get_mut(member)) {
                *e = until;
            }
        }
        true
    }

    /// Release the slots of whichever of `members` holds some; true when one did.
    pub fn release(&mut self, members: &[String], now_ms: u64) -> bool {
        for m in members {
            if let Some((keys, until)) = self.calls.remove(m) {
                for k in &keys {
                    if let Some(s) = self.slots.get_mut(k) {
                        s.remove(m);
                        if s.is_empty() {
                            self.slots.remove(k);
                        }
                    }
                }
                if until > now_ms {
                    return true;
                }
            }
        }
        false
    }

    fn sweep(&mut self, now_ms: u64) {
        self.calls.retain(|_, (_, until)| *until > now_ms);
        self.slots.retain(|_, s| {
            s.retain(|_, until| *until > now_ms);
            !s.is_empty()
        });
        let window = cps_window(now_ms);
        self.cps.retain(|_, (w, _)| *w == window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(key: &str, calls: u32, cps: u32) -> pb::CallLimit {
        pb::CallLimit {
            key: key.into(),
            max_calls: calls,
            max_cps: cps,
        }
    }

    #[test]
    fn all_or_nothing_release_and_expiry() {
        let mut t = SlotTable::default();
        let l = [lim("account:a", 2, 0), lim("domain:d", 3, 0)];
        assert_eq!(t.acquire("c1", &l, 10_000, 0), Admission::Granted);
        assert_eq!(t.acquire("c1", &l, 10_000, 1), Admission::Granted, "again");
        assert_eq!(t.acquire("c2", &l, 10_000, 2), Admission::Granted);
        assert_eq!(
            t.acquire("c3", &l, 10_000, 3),
            Admission::Refused {
                key: "account:a".into(),
                by: "calls"
            }
        );
        // The refused call took nothing: the domain still has room for another account.
        let other = [lim("account:b", 2, 0), lim("domain:d", 3, 0)];
        assert_eq!(t.acquire("c4", &other, 10_000, 4), Admission::Granted);
        assert!(matches!(
            t.acquire("c5", &other, 10_000, 5),
            Admission::Refused { by: "calls", .. }
        ));
        // A BYE names the call by either tag: the release finds it.
        assert!(t.release(&["nope".into(), "c1".into()], 6));
        assert!(!t.release(&["c1".into()], 7), "once");
        assert_eq!(t.acquire("c3", &l, 10_000, 8), Admission::Granted);
        // Unrefreshed slots lapse at their time-to-live: a dead edge leaks nothing. c2
        // lives until 10_002; c3 is refreshed.
        assert!(t.refresh("c3", 100_000, 9));
        let full = Admission::Refused {
            key: "account:a".into(),
            by: "calls",
        };
        assert_eq!(t.acquire("c6", &l, 10_000, 10_001), full);
        assert_eq!(t.acquire("c6", &l, 10_000, 10_500), Admission::Granted);
        assert_eq!(t.acquire("c7", &l, 10_000, 20_000), full, "c3 and c6");
        assert!(!t.refresh("c2", 1000, 20_001));
    }

    #[test]
    fn calls_per_second_count_whole_windows() {
        let mut t = SlotTable::default();
        let l = [lim("trunk:pstn", 0, 3)];
        let granted = |t: &mut SlotTable, at: u64, n: usize| {
            (0..n)
                .filter(|i| t.acquire(&format!("c{at}-{i}"), &l, 1000, at) == Admission::Granted)
                .count()
        };
        assert_eq!(granted(&mut t, 5_000, 10), 3);
        assert_eq!(granted(&mut t, 5_999, 10), 0, "same window");
        assert_eq!(granted(&mut t, 6_000, 10), 3, "next window");
    }
}

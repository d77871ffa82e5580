//! The pod's media port range, handed out as RTP/RTCP pairs.
//!
//! RTP takes the even port and RTCP the odd one above it (RFC 3550 §11); a stream with
//! rtcp-mux uses only the even one but the pair stays whole, so the range never
//! fragments. A released pair sits in quarantine before anyone gets it again: packets
//! still in flight to an ended call (a phone that keeps sending for a few seconds after
//! BYE) must find a closed port, not the next caller's. Free pairs are handed out
//! least-recently-used first, which stretches that gap further.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Even/odd port pairs of `[min, max]`, with quarantine.
#[derive(Debug)]
pub struct PortPool {
    min: u16,
    max: u16,
    free: VecDeque<u16>,
    quarantine: VecDeque<(Instant, u16)>,
    hold: Duration,
    in_use: usize,
}

impl PortPool {
    /// The pairs of `[min, max]` (rounded in to whole even/odd pairs), each held for
    /// `quarantine` after release.
    #[must_use]
    pub fn new(min: u16, max: u16, quarantine: Duration) -> PortPool {
        let first = min.saturating_add(min % 2);
        let free = (first..max)
            .step_by(2)
            .filter(|p| p.checked_add(1).is_some_and(|o| o <= max))
            .collect();
        PortPool {
            min: first,
            max,
            free,
            quarantine: VecDeque::new(),
            hold: quarantine,
            in_use: 0,
        }
    }

    /// The lowest port of the range (even).
    #[must_use]
    pub fn min(&self) -> u16 {
        self.min
    }

    /// The highest port of the range.
    #[must_use]
    pub fn max(&self) -> u16 {
        self.max
    }

    /// Whether `port` belongs to the range.
    #[must_use]
    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }

    fn thaw(&mut self, now: Instant) {
        while let Some(&(until, p)) = self.quarantine.front() {
            if until > now {
                break;
            }
            self.quarantine.pop_front();
            self.free.push_back(p);
        }
    }

    /// An even port whose pair is free, or `None` when every pair is taken or in
    /// quarantine.
    pub fn allocate(&mut self, now: Instant) -> Option<u16> {
        self.thaw(now);
        let p = self.free.pop_front()?;
        self.in_use += 1;
        Some(p)
    }

    /// Give a pair back; it is reusable after the quarantine.
    pub fn release(&mut self, even: u16, now: Instant) {
        self.in_use = self.in_use.saturating_sub(1);
        self.quarantine.push_back((now + self.hold, even));
    }

    /// Take a pair out of circulation for good (its port could not be bound: another
    /// process holds it).
    pub fn retire(&mut self, _even: u16) {
        self.in_use = self.in_use.saturating_sub(1);
    }

    /// Pairs in use.
    #[must_use]
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Pairs in quarantine.
    #[must_use]
    pub fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    /// Pairs available now (free, not counting those still in quarantine).
    #[must_use]
    pub fn available(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_even_and_inside_the_range() {
        let now = Instant::now();
        let mut p = PortPool::new(30_001, 30_010, Duration::from_secs(10));
        let got: Vec<u16> = std::iter::from_fn(|| p.allocate(now)).collect();
        // 30001 rounds up to 30002; 30010 has no odd partner inside the range.
        assert_eq!(got, vec![30_002, 30_004, 30_006, 30_008]);
        assert_eq!((p.in_use(), p.available()), (4, 0));
    }

    #[test]
    fn released_pairs_wait_out_the_quarantine() {
        let t0 = Instant::now();
        let q = Duration::from_secs(10);
        let mut p = PortPool::new(40_000, 40_003, q);
        let a = p.allocate(t0).expect("a");
        let b = p.allocate(t0).expect("b");
        assert_eq!(p.allocate(t0), None);
        p.release(a, t0);
        assert_eq!(p.quarantined(), 1);
        // Still quarantined just before the end.
        assert_eq!(p.allocate(t0 + q - Duration::from_millis(1)), None);
        assert_eq!(p.allocate(t0 + q), Some(a));
        p.release(b, t0 + q);
        assert_eq!(p.in_use(), 1);
    }

    #[test]
    fn least_recently_used_first() {
        let t0 = Instant::now();
        let mut p = PortPool::new(50_000, 50_007, Duration::ZERO);
        let a = p.allocate(t0).expect("a");
        p.release(a, t0);
        // The three never-used pairs come before the one just released.
        let next: Vec<u16> = (0..4).filter_map(|_| p.allocate(t0)).collect();
        assert_eq!(next, vec![50_002, 50_004, 50_006, a]);
    }
}

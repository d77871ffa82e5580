//! Timer queues: one FIFO per delay.
//!
//! Every RFC 3261 timer is armed with one of a handful of delays (T1·2ⁿ, T2, T4, 64·T1,
//! zero), and entries armed with the same delay mostly arrive in deadline order. So a
//! deque per delay is kept sorted at O(1) per entry, where a binary heap over a few
//! hundred thousand live timers paid a cache-missing sift per push and pop. The next
//! timer is the earliest of the (few) queue fronts.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// One queue: `(deadline, arming sequence, entry)` in deadline order.
type Queue<E> = VecDeque<(Instant, u64, E)>;

/// Timer queues holding `E`, ordered by `(deadline, seq)`.
#[derive(Debug)]
pub(crate) struct Timers<E> {
    queues: Vec<(Duration, Queue<E>)>,
    seq: u64,
}

impl<E> Default for Timers<E> {
    fn default() -> Self {
        Timers {
            queues: Vec::new(),
            seq: 0,
        }
    }
}

impl<E> Timers<E> {
    /// Arm `entry` to fire `delay` after `base`.
    pub fn arm(&mut self, base: Instant, delay: Duration, entry: E) {
        let at = base + delay;
        self.seq += 1;
        let item = (at, self.seq, entry);
        let i = match self.queues.iter().position(|(d, _)| *d == delay) {
            Some(i) => i,
            None => {
                self.queues.push((delay, VecDeque::new()));
                self.queues.len() - 1
            }
        };
        let q = &mut self.queues[i].1;
        // Re-arms computed from an earlier deadline (Timer G/E/A doubling from the time
        // they were due, not from when they were handled) can land just before the tail.
        if q.back().is_none_or(|b| b.0 <= at) {
            q.push_back(item);
        } else {
            let pos = q.partition_point(|e| e.0 <= at);
            q.insert(pos, item);
        }
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queues
            .iter()
            .filter_map(|(_, q)| q.front())
            .map(|e| e.0)
            .min()
    }

    /// Take the earliest entry due at or before `now` (ties in arming order).
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, E)> {
        let (i, _) = self
            .queues
            .iter()
            .enumerate()
            .filter_map(|(i, (_, q))| q.front().map(|e| (i, (e.0, e.1))))
            .filter(|(_, (at, _))| *at <= now)
            .min_by_key(|(_, k)| *k)?;
        self.queues[i].1.pop_front().map(|(at, _, e)| (at, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_deadline_then_arming_order_across_delays() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut t = Timers::default();
        t.arm(t0, ms(500), "g1");
        t.arm(t0, ms(32_000), "j");
        t.arm(t0 + ms(10), ms(490), "tie-later");
        t.arm(t0, ms(0), "now");
        // Re-arm from an earlier deadline lands before the tail of its queue.
        t.arm(t0 + ms(100), ms(1000), "e2");
        t.arm(t0 + ms(50), ms(1000), "e1");
        assert_eq!(t.next_deadline(), Some(t0));
        let mut fired = vec![];
        while let Some((at, e)) = t.pop_due(t0 + ms(40_000)) {
            fired.push((at.duration_since(t0).as_millis(), e));
        }
        assert_eq!(
            fired,
            vec![
                (0, "now"),
                (500, "g1"),
                (500, "tie-later"),
                (1050, "e1"),
                (1100, "e2"),
                (32_000, "j")
            ]
        );
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn nothing_fires_early() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.arm(t0, Duration::from_secs(1), 1);
        assert!(t.pop_due(t0 + Duration::from_millis(999)).is_none());
        assert_eq!(
            t.pop_due(t0 + Duration::from_secs(1)),
            Some((t0 + Duration::from_secs(1), 1))
        );
    }
}

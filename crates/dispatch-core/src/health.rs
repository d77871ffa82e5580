//! The health of one target (an edge, a gateway), from active probes.
//!
//! The dispatcher sends a SIP OPTIONS to each target every `interval`; the answer (any
//! final response other than 503), its absence within `timeout`, or a transport error
//! feeds this machine. `fall` consecutive failures take an up target down; `rise`
//! consecutive successes bring a new or down target up. Draining is separate from
//! health: a draining target keeps being probed but takes no new dialogs.
//!
//! Sans-IO: the owner calls [`Health::poll_probe`] and [`Health::handle_timeout`] with the
//! current time, reports results with [`Health::on_response`] and
//! [`Health::on_failure`], and sleeps until [`Health::poll_timeout`].

use std::time::{Duration, Instant};

/// Probe settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Time between the start of two probes.
    pub interval: Duration,
    /// A probe not answered within this failed.
    pub timeout: Duration,
    /// Consecutive failures that take an up target down.
    pub fall: u32,
    /// Consecutive successes that bring a joining or down target up.
    pub rise: u32,
}

impl Default for HealthConfig {
    /// Probe every 2 s, 1 s timeout, down after 2 failures, up after 1 success: a dead
    /// edge leaves within ~3-5 s, a new one joins at its first answer.
    fn default() -> HealthConfig {
        HealthConfig {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            fall: 2,
            rise: 1,
        }
    }
}

/// Where a target stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Added, not yet answered `rise` probes: takes nothing.
    Joining,
    /// Answering: takes new dialogs (unless draining).
    Up,
    /// Failed `fall` probes in a row (or was marked failed): takes nothing.
    Down,
}

/// A change worth a log line and a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// Before.
    pub from: State,
    /// After.
    pub to: State,
}

/// A probe to send: its number, to match the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe(pub u64);

/// The health of one target.
#[derive(Debug, Clone)]
pub struct Health {
    cfg: HealthConfig,
    state: State,
    draining: bool,
    ok_run: u32,
    fail_run: u32,
    next_probe: Instant,
    outstanding: Option<(Probe, Instant)>,
    seq: u64,
}

impl Health {
    /// A joining target; its first probe is due at `now`.
    pub fn new(cfg: HealthConfig, now: Instant) -> Health {
        Health {
            cfg,
            state: State::Joining,
            draining: false,
            ok_run: 0,
            fail_run: 0,
            next_probe: now,
            outstanding: None,
            seq: 0,
        }
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// May this target take a new dialog?
    pub fn usable(&self) -> bool {
        self.state == State::Up && !self.draining
    }

    /// Draining (by the operator, or the target said so).
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Stop or resume giving this target new dialogs; in-dialog traffic is unaffected.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// Is a probe waiting for its answer?
    pub fn probe_outstanding(&self) -> bool {
        self.outstanding.is_some()
    }

    /// A probe to send now, if one is due and none is outstanding.
    pub fn poll_probe(&mut self, now: Instant) -> Option<Probe> {
        if self.outstanding.is_some() || now < self.next_probe {
            return None;
        }
        self.seq += 1;
        let p = Probe(self.seq);
        self.outstanding = Some((p, now));
        self.next_probe = now + self.cfg.interval;
        Some(p)
    }

    /// When the owner must call back: the next probe, or the outstanding one's timeout.
    pub fn poll_timeout(&self) -> Instant {
        match self.outstanding {
            Some((_, sent)) => (sent + self.cfg.timeout).min(self.next_probe),
            None => self.next_probe,
        }
    }

    /// Fail the outstanding probe if its time is up.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Transition> {
        match self.outstanding {
            Some((_, sent)) if now >= sent + self.cfg.timeout => {
                self.outstanding = None;
                self.failed()
            }
            _ => None,
        }
    }

    /// When probe `p` was sent, while it waits for its answer (for its round-trip time).
    pub fn probe_sent_at(&self, p: Probe) -> Option<Instant> {
        self.outstanding.filter(|(q, _)| *q == p).map(|(_, t)| t)
    }

    /// The final response to probe `p`. 503 counts as a failure (an overloaded or
    /// draining edge says so with 503), any other status as an answer. A late or
    /// foreign answer is ignored.
    pub fn on_response(&mut self, p: Probe, status: u16, _now: Instant) -> Option<Transition> {
        if self.outstanding.map(|(q, _)| q) != Some(p) || status < 200 {
            return None;
        }
        self.outstanding = None;
        if status == 503 {
            self.failed()
        } else {
            self.succeeded()
        }
    }

    /// A transport error toward the target (probe or real traffic): counts as a failed
    /// probe at once, so a dead edge is noticed by the traffic, not only by the timer.
    pub fn on_failure(&mut self, _now: Instant) -> Option<Transition> {
        self.outstanding = None;
        self.failed()
    }

    fn set(&mut self, to: State) -> Option<Transition> {
        let from = self.state;
        (from != to).then(|| {
            self.state = to;
            Transition { from, to }
        })
    }

    fn failed(&mut self) -> Option<Transition> {
        self.ok_run = 0;
        self.fail_run = self.fail_run.saturating_add(1);
        match self.state {
            State::Up if self.fail_run >= self.cfg.fall.max(1) => self.set(State::Down),
            _ => None,
        }
    }

    fn succeeded(&mut self) -> Option<Transition> {
        self.fail_run = 0;
        self.ok_run = self.ok_run.saturating_add(1);
        match self.state {
            State::Joining | State::Down if self.ok_run >= self.cfg.rise.max(1) => {
                self.set(State::Up)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(500),
            fall: 2,
            rise: 2,
        }
    }

    #[test]
    fn a_new_target_joins_after_rise_answers_and_leaves_after_fall_failures() {
        let t0 = Instant::now();
        let mut h = Health::new(cfg(), t0);
        assert_eq!(h.state(), State::Joining);
        assert!(!h.usable());
        let p = h.poll_probe(t0).expect("first probe at once");
        assert_eq!(h.poll_probe(t0), None, "one outstanding at a time");
        assert_eq!(h.on_response(p, 200, t0), None, "rise = 2: not yet");
        assert_eq!(h.poll_timeout(), t0 + Duration::from_secs(2));
        let t1 = t0 + Duration::from_secs(2);
        let p = h.poll_probe(t1).unwrap();
        assert_eq!(
            h.on_response(p, 200, t1),
            Some(Transition {
                from: State::Joining,
                to: State::Up
            })
        );
        assert!(h.usable());

        // One timeout: still up (fall = 2); the second takes it down.
        let t2 = t1 + Duration::from_secs(2);
        h.poll_probe(t2).unwrap();
        assert_eq!(h.poll_timeout(), t2 + Duration::from_millis(500));
        assert_eq!(h.handle_timeout(t2 + Duration::from_millis(499)), None);
        assert_eq!(h.handle_timeout(t2 + Duration::from_millis(500)), None);
        assert!(h.usable());
        let t3 = t2 + Duration::from_secs(2);
        let p = h.poll_probe(t3).unwrap();
        assert_eq!(
            h.on_response(p, 503, t3),
            Some(Transition {
                from: State::Up,
                to: State::Down
            }),
            "503 is a failure"
        );
        assert!(!h.usable());
        // Back after `rise` answers.
        for i in 0..2 {
            let t = t3 + Duration::from_secs(2 * (i + 1));
            let p = h.poll_probe(t).unwrap();
            let tr = h.on_response(p, 404, t);
            assert_eq!(tr.is_some(), i == 1, "any non-503 final answer counts");
        }
        assert_eq!(h.state(), State::Up);
    }

    #[test]
    fn late_and_provisional_answers_are_ignored_and_transport_errors_count() {
        let t0 = Instant::now();
        let mut h = Health::new(HealthConfig { rise: 1, ..cfg() }, t0);
        let p = h.poll_probe(t0).unwrap();
        assert_eq!(h.on_response(p, 100, t0), None);
        assert_eq!(h.on_response(Probe(99), 200, t0), None, "not ours");
        assert!(h.on_response(p, 200, t0).is_some());
        assert_eq!(h.on_response(p, 200, t0), None, "already answered");
        // Transport errors from real traffic: fall = 2 of them take it down at once,
        // without waiting for the probe timer.
        assert_eq!(h.on_failure(t0), None);
        assert_eq!(h.on_failure(t0).map(|t| t.to), Some(State::Down));
    }

    #[test]
    fn draining_is_not_health() {
        let t0 = Instant::now();
        let mut h = Health::new(HealthConfig { rise: 1, ..cfg() }, t0);
        let p = h.poll_probe(t0).unwrap();
        h.on_response(p, 200, t0);
        h.set_draining(true);
        assert!(!h.usable() && h.state() == State::Up && h.is_draining());
        // Still probed while draining.
        assert!(h.poll_probe(t0 + Duration::from_secs(2)).is_some());
        h.set_draining(false);
        assert!(h.usable());
    }
}

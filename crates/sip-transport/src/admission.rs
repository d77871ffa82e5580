//! Admission: refuse new work early and cheaply while the core has a standing queue.
//!
//! Under overload the costly mistake is to accept work that will be served too late: a
//! request that waits in the core's queue past its client's retransmission timer (T1,
//! 500 ms) is sent again, and serving both copies, or shedding it after it was parsed and
//! given a transaction, is work that yields nothing. So the queue is kept short, and the
//! excess is answered at the reader, before the message is fully parsed.
//!
//! The rule is CoDel's: a queue whose shortest wait stays above [`TARGET`] for a whole
//! [`INTERVAL`] is a standing queue (more offered than the core drains), not a burst.
//! The consumer (the core's driver) reports each message's wait ([`AdmissionControl`]).
//! At the end of an interval with a standing queue, new requests are admitted only while
//! the queue is shallower than what the core drained in that interval scaled to
//! `TARGET` (its measured rate × `TARGET`): what is admitted is served within about
//! `TARGET`. The queue's own capacity stays the hard limit for everything else.
//!
//! Favoured, admitted up to the hard limit: responses, ACK, CANCEL, BYE, requests within
//! a dialog (a To tag) and requests that carry credentials (the client already paid a
//! round trip for its challenge; refusing it wastes that and the digest's cost).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use sip_core::{ReplyContext, ResponseBuilder, SipMessage};
use tokio::sync::mpsc;

use crate::Inbound;

/// The default wait the core's queue may keep standing: well under T1 (500 ms), so
/// nothing admitted is retransmitted while it waits, and well above one batch of work.
pub const TARGET: Duration = Duration::from_millis(20);
/// How long the shortest wait must stay above [`TARGET`] to count as a standing queue.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// The admission depth never goes below this (a burst of a few dozen is always taken).
const FLOOR: usize = 64;
/// Admission open: any depth up to the queue's capacity.
const OPEN: usize = usize::MAX;

/// The depth the readers admit new requests to, shared with the consumer.
#[derive(Debug)]
pub(crate) struct Gate {
    depth: AtomicUsize,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            depth: AtomicUsize::new(OPEN),
        }
    }
}

impl Gate {
    /// Is the queue too deep for a new request that is not favoured?
    pub(crate) fn closed(&self, queue: &mpsc::Sender<Inbound>) -> bool {
        let depth = self.depth.load(Ordering::Relaxed);
        depth != OPEN && queue.max_capacity() - queue.capacity() >= depth
    }
}

/// The 503 + Retry-After for a new request that is not favoured, from its raw bytes
/// (no full parse); `None` when it is to be admitted (a response, an ACK, a favoured
/// request) or cannot be answered (no Via).
pub(crate) fn refuse_raw(raw: &[u8], max_len: usize, retry_after: u32) -> Option<Bytes> {
    let ctx = ReplyContext::salvage(raw, max_len)?;
    refusal(ctx, retry_after)
}

/// The same for a parsed message.
pub(crate) fn refuse(msg: &SipMessage, retry_after: u32) -> Option<Bytes> {
    let ctx = ReplyContext::from_message(msg)?;
    if ctx.method() == b"ACK" {
        return None;
    }
    refusal(ctx, retry_after)
}

fn refusal(ctx: ReplyContext<'_>, retry_after: u32) -> Option<Bytes> {
    let favoured = matches!(ctx.method(), b"CANCEL" | b"BYE" | b"PRACK")
        || ctx.in_dialog()
        || ctx.has_credentials();
    if favoured {
        return None;
    }
    Some(
        ResponseBuilder::from_context(ctx, 503)
            .header("Retry-After", retry_after.to_string().into_bytes())
            .build(),
    )
}

/// The consumer's side: fed every message's wait, sets the readers' admission depth.
#[derive(Debug)]
pub struct AdmissionControl {
    gate: Arc<Gate>,
    target: Duration,
    depth_gauge: Gauge,
    started: Option<Instant>,
    shortest: Duration,
    drained: u64,
    limited: bool,
}

impl AdmissionControl {
    pub(crate) fn new(gate: Arc<Gate>, depth_gauge: Gauge, target: Duration) -> AdmissionControl {
        AdmissionControl {
            gate,
            target,
            depth_gauge,
            started: None,
            shortest: Duration::MAX,
            drained: 0,
            limited: false,
        }
    }

    /// A message read at `received_at` is taken off the queue at `now`.
    pub fn observe(&mut self, now: Instant, received_at: Instant) {
        let wait = now.saturating_duration_since(received_at);
        self.shortest = self.shortest.min(wait);
        self.drained += 1;
        let started = *self.started.get_or_insert(now);
        let elapsed = now.saturating_duration_since(started);
        if elapsed < INTERVAL {
            return;
        }
        // Once limiting, the queue is held near TARGET: it must fall clearly below it
        // (half) before admission opens again, or it would flap every interval.
        let bar = if self.limited {
            self.target / 2
        } else {
            self.target
        };
        let depth = if self.shortest > bar {
            let rate = self.drained as f64 / elapsed.as_secs_f64();
            let depth = (rate * self.target.as_secs_f64()) as usize;
            if !self.limited {
                tracing::warn!(
                    standing_ms = self.shortest.as_millis() as u64,
                    depth = depth.max(FLOOR),
                    "overload: the core has a standing queue; new requests beyond the admission depth get 503 + Retry-After"
                );
            }
            self.limited = true;
            depth.max(FLOOR)
        } else {
            if self.limited {
                tracing::info!("overload over: every new request admitted again");
            }
            self.limited = false;
            OPEN
        };
        self.gate.depth.store(depth, Ordering::Relaxed);
        self.depth_gauge.set(if depth == OPEN {
            -1
        } else {
            i64::try_from(depth).unwrap_or(i64::MAX)
        });
        self.started = Some(now);
        self.shortest = Duration::MAX;
        self.drained = 0;
    }

    /// Limiting now (for tests and logs).
    #[must_use]
    pub fn limited(&self) -> bool {
        self.limited
    }

    /// The admission depth in force (`None` when open).
    #[must_use]
    pub fn depth(&self) -> Option<usize> {
        let d = self.gate.depth.load(Ordering::Relaxed);
        (d != OPEN).then_some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control() -> AdmissionControl {
        AdmissionControl::new(Arc::new(Gate::default()), Gauge::default(), TARGET)
    }

    /// `n` messages spread over `over`, each having waited `wait`.
    fn feed(c: &mut AdmissionControl, t: &mut Instant, n: u32, over: Duration, wait: Duration) {
        for _ in 0..n {
            *t += over / n;
            c.observe(*t, *t - wait);
        }
    }

    #[test]
    fn a_burst_is_not_a_standing_queue() {
        let mut c = control();
        let mut t = Instant::now();
        // A burst waits long, but some messages in each interval do not wait at all.
        for _ in 0..10 {
            feed(
                &mut c,
                &mut t,
                900,
                Duration::from_millis(90),
                Duration::from_millis(80),
            );
            feed(
                &mut c,
                &mut t,
                100,
                Duration::from_millis(10),
                Duration::ZERO,
            );
        }
        assert!(!c.limited());
        assert_eq!(c.depth(), None);
    }

    #[test]
    fn a_standing_queue_limits_depth_to_the_drain_rate_times_the_target_and_recovers() {
        let mut c = control();
        let mut t = Instant::now();
        // 10,000/s drained, every message waited 150 ms: limited to 10k × 20 ms = 200.
        feed(
            &mut c,
            &mut t,
            1010,
            Duration::from_millis(101),
            Duration::from_millis(150),
        );
        assert!(c.limited());
        let d = c.depth().expect("limited");
        assert!((195..=205).contains(&d), "{d}");
        // Held near the target: stays limited (above half of it).
        feed(
            &mut c,
            &mut t,
            1000,
            Duration::from_millis(100),
            Duration::from_millis(15),
        );
        assert!(c.limited());
        // Drained: open again.
        feed(
            &mut c,
            &mut t,
            1000,
            Duration::from_millis(100),
            Duration::from_millis(2),
        );
        assert!(!c.limited());
        assert_eq!(c.depth(), None);
    }

    #[test]
    fn a_slow_core_still_admits_the_floor() {
        let mut c = control();
        let mut t = Instant::now();
        feed(
            &mut c,
            &mut t,
            11,
            Duration::from_millis(110),
            Duration::from_secs(1),
        );
        assert_eq!(c.depth(), Some(FLOOR));
    }

    fn request(method: &str, to: &str, extra: &str) -> String {
        format!(
            "{method} sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
             From: <sip:b@example.com>;tag=f\r\nTo: {to}\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n\
             {extra}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn only_new_requests_without_credentials_are_refused() {
        let refused = |raw: &str| {
            let by_bytes = refuse_raw(raw.as_bytes(), 65_536, 5);
            let parsed = SipMessage::parse(raw.to_owned().into_bytes()).ok();
            let by_msg = parsed.as_ref().and_then(|m| refuse(m, 5));
            assert_eq!(by_bytes.is_some(), by_msg.is_some(), "{raw}");
            by_bytes
        };
        let r = refused(&request("REGISTER", "<sip:a@example.com>", "")).expect("refused");
        let text = String::from_utf8(r.to_vec()).unwrap_or_default();
        assert!(text.starts_with("SIP/2.0 503 "), "{text}");
        assert!(text.contains("Retry-After: 5\r\n"));
        assert!(refused(&request("INVITE", "<sip:a@example.com>", "")).is_some());
        assert!(refused(&request("OPTIONS", "<sip:a@example.com>", "")).is_some());
        // Favoured.
        assert!(refused(&request("INVITE", "<sip:a@example.com>;tag=x", "")).is_none());
        assert!(refused(&request("BYE", "<sip:a@example.com>", "")).is_none());
        assert!(refused(&request("CANCEL", "<sip:a@example.com>", "")).is_none());
        assert!(refused(&request("ACK", "<sip:a@example.com>", "")).is_none());
        let creds = "Authorization: Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"sip:r\", response=\"0\"\r\n";
        assert!(refused(&request("REGISTER", "<sip:a@example.com>", creds)).is_none());
        let proxy_creds = creds.replace("Authorization", "Proxy-Authorization");
        assert!(refused(&request("INVITE", "<sip:a@example.com>", &proxy_creds)).is_none());
        // Responses pass.
        assert!(
            refuse_raw(
                b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
                65_536,
                5
            )
            .is_none()
        );
    }
}

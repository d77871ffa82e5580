//! Health probes of edges and set members (SIP OPTIONS), and the relay's timers.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use sip_txn::{Target, Transport, TxnRef};

use super::{Listen, Notice, PROBE_BRANCH, Relay, Side, Transmit};
use crate::health::Probe;
use crate::pool::TargetSpec;

impl Relay {
    pub(super) fn probe_response(&mut self, rest: &str, status: u16, now: Instant) {
        let Some((slot, seq)) = rest.split_once('.').and_then(|(a, b)| {
            Some((
                u32::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        }) else {
            self.metrics.drop("bad_probe_branch");
            return;
        };
        for p in std::iter::once(&mut self.edges).chain(&mut self.sets) {
            let name = p.name.clone();
            for m in p.members_mut() {
                if m.slot != slot {
                    continue;
                }
                if status < 200 {
                    return;
                }
                if let Some(sent) = m.health.probe_sent_at(Probe(seq)) {
                    m.metrics
                        .probe_duration
                        .observe(now.saturating_duration_since(sent).as_secs_f64());
                }
                let t = m.health.on_response(Probe(seq), status, now);
                if status == 503 {
                    m.metrics.probe_failed.inc();
                } else {
                    m.metrics.probe_ok.inc();
                }
                // A 503 also means "draining or overloaded": no new dialogs at once,
                // without waiting for `fall` probes; in-dialog traffic goes on.
                let flags = self.drains.entry(slot).or_default();
                let reported = status == 503;
                if flags.reported != reported {
                    flags.reported = reported;
                    m.health.set_draining(flags.admin || flags.reported);
                    self.notices.push_back(Notice::Draining {
                        pool: name.clone(),
                        id: m.spec.id.clone(),
                        draining: reported,
                    });
                }
                if let Some(t) = t {
                    self.notices.push_back(Notice::state(&name, m, t));
                }
                m.publish();
                return;
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let probes = self
            .all_pools()
            .flat_map(|p| p.members().map(|m| m.health.poll_timeout()))
            .min();
        let expiry = self.expiry.front().map(|(t, _)| *t);
        match (probes, expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Probe timeouts, due probes, expired failover entries.
    pub fn handle_timeout(&mut self, now: Instant) {
        let cfg = &self.cfg;
        // Edges are probed from the internal side, set members from the public one.
        let edges = std::iter::once((&mut self.edges, Side::Internal, &cfg.internal));
        let sets = self.sets.iter_mut().map(|p| (p, Side::Public, &cfg.public));
        for (p, side, listen) in edges.chain(sets) {
            let name = p.name.clone();
            for m in p.members_mut() {
                let waiting = m.health.probe_outstanding();
                let t = m.health.handle_timeout(now);
                if waiting && !m.health.probe_outstanding() {
                    m.metrics.probe_timeout.inc();
                }
                if let Some(t) = t {
                    m.publish();
                    self.notices.push_back(Notice::state(&name, m, t));
                }
                if let Some(probe) = m.health.poll_probe(now) {
                    let bytes = probe_request(cfg.instance, listen, m.slot, probe, &m.spec);
                    self.out.push_back(Transmit {
                        parsed: None,
                        side,
                        target: Target {
                            transport: m.spec.transport,
                            addr: m.spec.addr,
                            flow: None,
                        },
                        bytes,
                        origin: TxnRef::Stateless,
                    });
                }
            }
        }
        while self.retired.front().is_some_and(|(t, _)| *t <= now) {
            self.retired.pop_front();
        }
        while let Some(&(t, h)) = self.expiry.front() {
            if t > now {
                break;
            }
            self.expiry.pop_front();
            self.failover.remove(&h);
            self.connecting.remove(&h);
        }
        self.metrics
            .failover_entries
            .set(self.failover.len() as i64);
    }
}

/// An OPTIONS probe for a target.
fn probe_request(
    instance: u32,
    listen: &Listen,
    slot: u32,
    probe: Probe,
    spec: &TargetSpec,
) -> Bytes {
    let t = spec.transport;
    let host = listen.host();
    let port = listen.port(t);
    let target = match spec.addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let tparam = if t == Transport::Udp {
        String::new()
    } else {
        format!(";transport={}", t.as_str().to_ascii_lowercase())
    };
    let seq = probe.0;
    Bytes::from(format!(
        "OPTIONS sip:{target}{tparam} SIP/2.0\r\n\
         Via: SIP/2.0/{} {host}:{port};branch={PROBE_BRANCH}{slot:x}.{seq:x}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:dispatcher@{host}>;tag=scp{instance:x}\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: scp-{instance:x}-{slot:x}-{seq:x}@{host}\r\n\
         CSeq: {} OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        t.as_str(),
        seq.min(u64::from(u32::MAX)),
    ))
}

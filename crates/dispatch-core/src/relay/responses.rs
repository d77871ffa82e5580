//! Responses, relayed back by Via: the dispatcher pops its own and sends to the next,
//! over the client's connection when the request came over one.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use sip_core::{Editor, SipMessage, Via};
use sip_txn::{Target, TxnRef};
use smallvec::SmallVec;

use super::stamps::{arrival_of, via_target};
use super::{Edited, PROBE_BRANCH, RELAY_BRANCH, Relay, Side};
use crate::health::State;

impl Relay {
    pub(super) fn response(&mut self, side: Side, msg: &SipMessage, source: Target, now: Instant) {
        let Ok(top) = msg.top_via() else {
            self.metrics.drop("bad_via");
            return;
        };
        let Some(status) = msg.status() else {
            return;
        };
        let branch = top.branch.unwrap_or("");
        if let Some(rest) = branch.strip_prefix(PROBE_BRANCH) {
            self.probe_response(rest, status, now);
            return;
        }
        let Some(h) = branch
            .strip_prefix(RELAY_BRANCH)
            .and_then(|x| u64::from_str_radix(x, 16).ok())
        else {
            self.metrics.drop("foreign_via");
            return;
        };
        let arrival = arrival_of(&top);
        let out_side = match side {
            Side::Internal => Side::Public,
            Side::Public => Side::Internal,
        };
        if side == Side::Public {
            self.connecting.remove(&h);
        }
        if !self.track_response(h, side, msg, status, source) {
            return;
        }
        let next = match msg.via().nth(1) {
            Some(Ok(v)) => v,
            _ => {
                self.metrics.drop("no_next_via");
                return;
            }
        };
        let Some(target) = via_target(&next, arrival) else {
            self.metrics.drop("bad_next_via");
            return;
        };
        if out_side == Side::Internal && !self.is_edge_ip(target.addr.ip()) {
            // Only edges (current, or removed within the failover window and maybe still
            // finishing transactions) sit below us: anything else would make us a
            // reflector.
            self.metrics.drop("next_via_not_an_edge");
            return;
        }
        if out_side == Side::Internal && self.edge_dead(target.addr) {
            // The edge that forwarded this request died. Its transaction is gone, but the
            // answer (a 200 for an INVITE above all) still matters to the client: relay it
            // past the dead hop, to the client our own Via below it names.
            self.relay_past_dead_edge(msg);
            return;
        }
        let mut ed = Editor::new(msg);
        if ed.remove_top_via().is_err() {
            self.metrics.drop("bad_via");
            return;
        }
        self.relayed[if side == Side::Public { 1 } else { 3 }].inc();
        self.send_edited(out_side, target, Edited::of(&ed), TxnRef::Stateless);
    }

    /// A current edge that stopped answering probes.
    pub(super) fn edge_dead(&self, addr: SocketAddr) -> bool {
        self.edges
            .members()
            .any(|m| m.spec.addr == addr && m.health.state() == State::Down)
    }

    /// Vias: ours (public), the dead edge's, ours (internal, from the client's request),
    /// the client's. Pop the first three and send to the client.
    pub(super) fn relay_past_dead_edge(&mut self, msg: &SipMessage) {
        let vias: SmallVec<[Via<'_>; 4]> = msg.via().take(4).flatten().collect();
        let ours = vias.get(2).filter(|v| {
            v.branch.is_some_and(|b| b.starts_with(RELAY_BRANCH))
                && v.sent_by.host.ip() == Some(self.cfg.internal.advertise)
        });
        let (Some(ours), Some(client)) = (ours, vias.get(3)) else {
            self.metrics.drop("next_via_dead_edge");
            return;
        };
        let arrival = arrival_of(ours);
        let Some(target) = via_target(client, arrival) else {
            self.metrics.drop("bad_next_via");
            return;
        };
        let mut ed = Editor::new(msg);
        for _ in 0..3 {
            if ed.remove_top_via().is_err() {
                self.metrics.drop("bad_via");
                return;
            }
        }
        let bytes = ed.finish();
        self.metrics.rescued.inc();
        self.send(Side::Public, target, bytes, TxnRef::Stateless);
    }

    pub(super) fn is_edge_ip(&self, ip: IpAddr) -> bool {
        self.edges.members().any(|m| m.spec.addr.ip() == ip)
            || self.retired.iter().any(|(_, a)| a.ip() == ip)
    }
}

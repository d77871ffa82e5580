//! Responses, relayed back by Via: the dispatcher pops its own and sends to the next,
//! over the client's connection when the request came over one.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use sip_core::{Editor, HeaderName, SipMessage, Uri, Via};
use sip_txn::{Target, TxnRef};
use smallvec::SmallVec;

use super::stamps::{arrival_of, via_target};
use super::{Edited, PROBE_BRANCH, RELAY_BRANCH, Relay, Side, hiding};
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
        // A client's response to a request whose Vias and Record-Routes we sealed: they go
        // back in, then it goes the usual way.
        if side == Side::Public
            && let Some(sealed) = hiding::hidden_param(top.raw)
        {
            match self.unseal_response(msg, top.raw, sealed) {
                Some(restored) => self.response(side, &restored, source, now),
                None => self.metrics.drop("bad_hidden"),
            }
            return;
        }
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
        if out_side == Side::Public && self.cfg.topology_hiding && !self.seal_routes(msg, &mut ed) {
            self.metrics.drop("hiding_failed");
            return;
        }
        self.relayed[if side == Side::Public { 1 } else { 3 }].inc();
        self.send_edited(out_side, target, Edited::of(&ed), TxnRef::Stateless);
    }

    /// `msg` with the Vias sealed in our top Via (`via`, its `sealed` parameter) back
    /// under it, and the Record-Routes sealed in ours back under ours. `None` when what
    /// is sealed does not open.
    fn unseal_response(&self, msg: &SipMessage, via: &[u8], sealed: &str) -> Option<SipMessage> {
        let vias = self.hider.open(sealed)?;
        let mut ed = Editor::new(msg);
        ed.remove_top_via().ok()?;
        for v in vias.into_iter().rev() {
            ed.prepend_via(v);
        }
        ed.prepend_via(hiding::without_hidden(via));
        let rrs: Vec<&[u8]> = msg.header_values(HeaderName::RecordRoute).collect();
        if rrs.iter().any(|r| hiding::hidden_param(r).is_some()) {
            let mut restored = Vec::with_capacity(rrs.len() + 4);
            for r in rrs {
                match hiding::hidden_param(r) {
                    Some(s) => {
                        restored.push(hiding::without_hidden(r));
                        restored.extend(self.hider.open(s)?);
                    }
                    None => restored.push(r.to_vec()),
                }
            }
            ed.remove_header(HeaderName::RecordRoute);
            for r in restored {
                ed.add_record_route(r);
            }
        }
        ed.finish_message().ok()
    }

    /// Topology hiding of a response going to a client: the Record-Routes above ours
    /// (the far side's hops, the edge's) sealed into ours, in the order the client's
    /// route set needs them after ours (reversed: a UAC's route set is the Record-Routes
    /// reversed). Ours is the lowest naming this dispatcher (the same dispatcher may be
    /// on both sides of a call). False when sealing failed.
    fn seal_routes(&self, msg: &SipMessage, ed: &mut Editor<'_, '_>) -> bool {
        let rrs: Vec<&[u8]> = msg.header_values(HeaderName::RecordRoute).collect();
        let ours = rrs.iter().rposition(|r| {
            matches!(
                sip_core::NameAddr::parse(r, "Record-Route").map(|n| n.parsed_uri()),
                Ok(Ok(Uri::Sip(u))) if self.is_me(&u)
            )
        });
        let Some(i) = ours.filter(|i| *i > 0) else {
            return true;
        };
        let Some(sealed) = self.hider.seal(rrs[..i].iter().rev().copied()) else {
            return false;
        };
        ed.remove_header(HeaderName::RecordRoute);
        ed.add_record_route(hiding::with_hidden(rrs[i], &sealed));
        for r in &rrs[i + 1..] {
            ed.add_record_route(r.to_vec());
        }
        true
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

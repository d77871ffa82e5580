//! Requests from clients and gateways (the public side), relayed to an edge.

use std::fmt::Write as _;
use std::time::Instant;

use sip_core::{Editor, Method, SipMessage, Uri};
use sip_txn::{ClientTxnId, Target, Transport, TxnRef};

use super::stamps::sip_transport;
use super::targets::PoolId;
use super::{
    DIALOG_PARAM, Edited, FLOW_PARAM, FLOW_TRANSPORT_PARAM, FlowTable, PEER_PARAM, RELAY_BRANCH,
    Relay, SOURCE_PARAM, Side, TRACE_HEADER, dialog_param,
};
use crate::pool::dialog_key;

impl Relay {
    pub(super) fn public_request(
        &mut self,
        msg: &SipMessage,
        source: Target,
        flows: &impl FlowTable,
        now: Instant,
    ) {
        if self.cfg.deny_user_agents.denies_message(msg) {
            self.metrics.drop("scanner");
            return;
        }
        let Some((method, top, call_id)) = self.precheck(Side::Public, msg, source) else {
            return;
        };
        // RFC 5630 §3.1.3: a SIPS request travels over TLS on every hop, the first
        // included; one that reached us in the clear was already downgraded, and is
        // refused rather than carried on as if it were secure.
        if source.transport != Transport::Tls && is_sips(msg) {
            self.reply(Side::Public, msg, source, 416, &[]);
            return;
        }
        // OPTIONS for the dispatcher's own address is a question about the service: an
        // edge answers it (with its Allow, Accept), so a client's keepalive or a load
        // balancer's check succeeds only while an edge can serve. The dispatcher answers
        // itself when draining (503, so traffic moves away) and when it cannot forward.
        if self.for_me(msg, method)
            && (self.draining || msg.max_forwards().ok().flatten() == Some(0))
        {
            let status = if self.draining { 503 } else { 200 };
            self.reply(Side::Public, msg, source, status, &[]);
            return;
        }
        // Our own Route is popped; its dialog token goes on to the edge in our Via.
        let (pop, dialog) = match msg.routes().next() {
            Some(Ok(r)) => match r.parsed_uri() {
                Ok(Uri::Sip(u)) if self.is_me(&u) => (true, dialog_param(&u)),
                _ => (false, None),
            },
            Some(Err(_)) => {
                self.reply(Side::Public, msg, source, 400, &[]);
                return;
            }
            None => (false, None),
        };
        let h = Self::branch_hash(msg, &top);
        let in_dialog = msg.to_tag().ok().flatten().is_some();
        let new_dialog = !in_dialog && !matches!(method, Method::Ack | Method::Cancel);
        let key = dialog_key(call_id);

        // A request we remember (retransmission, its CANCEL or the ACK of a failure)
        // follows the edge it went to; a retransmission whose edge died moves on.
        let remembered = match self.failover.get(&h) {
            Some(e) if e.pool == PoolId::Edges => {
                let retransmission =
                    msg.method() != Some(Method::Cancel) && msg.method() != Some(Method::Ack);
                let dead = !self
                    .edges
                    .get(&e.current)
                    .is_some_and(|m| m.alive() && (!retransmission || m.usable()));
                if dead && retransmission && !e.relayed {
                    if let Some(m) = self.edges.get(&e.current) {
                        m.metrics.failovers.inc();
                    }
                    self.fail_over(h);
                    return;
                }
                self.edges
                    .get(&e.current)
                    .map(|m| (m.spec.id.clone(), m.spec.addr, m.spec.transport))
            }
            _ => None,
        };
        let chosen = remembered.or_else(|| {
            self.edges
                .pick(key, |m| if new_dialog { m.usable() } else { m.alive() })
                .map(|m| (m.spec.id.clone(), m.spec.addr, m.spec.transport))
        });
        let Some((id, addr, transport)) = chosen else {
            if method == Method::Ack {
                self.metrics.drop("no_edge");
            } else {
                self.unavailable(Side::Public, msg, source);
            }
            return;
        };

        let int = &self.cfg.internal;
        let mut via = String::with_capacity(96);
        let _ = write!(
            via,
            "SIP/2.0/{} {}:{};branch={RELAY_BRANCH}{h:016x}",
            transport.as_str(),
            int.host(),
            int.port(transport)
        );
        if let Some(f) = source.flow {
            let _ = write!(via, ";{FLOW_PARAM}={:x}", f.0);
        }
        if sip_transport(&top) != Some(source.transport) {
            // The client's Via names another transport than the one it spoke on: its
            // answers still go back the way the request came (on its connection, or by
            // datagram to where it came from), as Kamailio and OpenSIPS answer.
            let _ = write!(via, ";{FLOW_TRANSPORT_PARAM}={}", source.transport.as_str());
        }
        let signed = self
            .key
            .sign_source(&format!("{RELAY_BRANCH}{h:016x}"), source.addr);
        let _ = write!(via, ";{SOURCE_PARAM}={signed}");
        // The identity the client's certificate proved, for trust rules by certificate.
        if source.transport == Transport::Tls
            && let Some(peer) = source.flow.and_then(|f| flows.peer(f))
            && let Some(signed) = self
                .key
                .sign_peer(&format!("{RELAY_BRANCH}{h:016x}"), &peer)
        {
            let _ = write!(via, ";{PEER_PARAM}={signed}");
        }
        // Only something shaped like a token is handed on (the edge verifies it).
        if let Some(d) = dialog
            .filter(|d| in_dialog && d.len() <= 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            let _ = write!(via, ";{DIALOG_PARAM}={d}");
        }
        let client_via = msg.top_via_seen_from(source.addr);
        let nat = top.sent_by.host.ip() != Some(source.addr.ip())
            || top.sent_by.port.unwrap_or(5060) != source.addr.port();
        let stamp = if method == Method::Register {
            Some(self.client_uri(source, nat, None))
        } else if !in_dialog && method.creates_dialog() {
            let token = self.dialog_token(msg, call_id);
            Some(self.client_uri(source, nat, token.as_deref()))
        } else {
            None
        };
        let mut ed = Editor::new(msg);
        if pop && ed.remove_top_route().is_err() {
            self.metrics.drop("bad_route");
            return;
        }
        // Our Route carries the route set topology hiding took out of the client's view:
        // it goes back in, in order, under ours.
        if pop
            && let Some(Ok(r)) = msg.routes().next()
            && let Some(sealed) = super::hiding::hidden_param(r.raw)
        {
            let Some(routes) = self.hider.open(sealed) else {
                self.metrics.drop("bad_hidden");
                return;
            };
            // Several prepends keep call order: the first ends up topmost.
            for r in routes {
                ed.prepend_route(r);
            }
        }
        if client_via.is_some() && ed.remove_top_via().is_err() {
            self.metrics.drop("bad_via");
            return;
        }
        // The client's Via (with received/rport) replaces its own; ours goes on top.
        if let Some(v) = &client_via {
            ed.prepend_via(v.as_bytes());
        }
        ed.prepend_via(via.as_bytes());
        if ed.decrement_max_forwards().is_err() {
            self.reply(Side::Public, msg, source, 483, &[]);
            return;
        }
        // Our trace context only: a client's is removed.
        ed.remove_header_named(TRACE_HEADER);
        if let Some(tp) = self.trace_context.and_then(|f| f()) {
            ed.add_header(TRACE_HEADER, tp.into_bytes());
        }
        if let Some(uri) = &stamp {
            if method == Method::Register {
                ed.add_path(uri.as_bytes());
            } else {
                ed.add_record_route(uri.as_bytes());
            }
        }
        let edited = Edited::of(&ed);
        let target = Target {
            transport,
            addr,
            flow: None,
        };
        if let Some(m) = self.edges.get(&id) {
            m.metrics.requests.inc();
        }
        self.relayed[0].inc();
        let remember = matches!(method, Method::Invite | Method::Register)
            && self.edges.members().count() > 1
            && !self.failover.contains_key(&h);
        if remember {
            self.remember(
                h,
                edited.bytes.clone(),
                PoolId::Edges,
                Side::Internal,
                key,
                &id,
                addr,
                method,
                now,
            );
        }
        self.send_edited(
            Side::Internal,
            target,
            edited,
            TxnRef::Client(ClientTxnId(h)),
        );
    }
}

/// Whether the Request-URI is a SIPS URI.
pub(super) fn is_sips(msg: &SipMessage) -> bool {
    matches!(msg.request_uri(), Ok(Uri::Sip(u)) if u.secure)
}

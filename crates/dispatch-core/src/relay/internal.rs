//! Requests from edges (the internal side): to a client named by a flow token, or to a
//! member of a destination set.

use std::net::SocketAddr;
use std::time::Instant;

use std::fmt::Write as _;

use sip_core::{Editor, HeaderName, Method, SipMessage, Uri};
use sip_txn::{ClientTxnId, FlowId, Target, Transport, TxnRef};

use super::targets::PoolId;
use super::{
    FlowTable, RELAY_BRANCH, Relay, SET_PREFIX, Side, TRACE_HEADER, hiding, with_dialog_param,
};
use crate::pool::dialog_key;
use crate::token::{FlowToken, PREFIX};

impl Relay {
    pub(super) fn internal_request(
        &mut self,
        msg: &SipMessage,
        source: Target,
        flows: &impl FlowTable,
        now: Instant,
    ) {
        // The internal side relays for edges only: a request from anyone else (the port
        // reached from outside) could name a destination set or a flow token and be
        // carried to a trunk or a client without any edge having checked it.
        if !self.is_edge_ip(source.addr.ip()) {
            self.metrics.drop("not_an_edge");
            return;
        }
        let Some((method, _top, call_id)) = self.precheck(Side::Internal, msg, source) else {
            return;
        };
        if self.for_me(msg, method) {
            self.reply(Side::Internal, msg, source, 200, &[]);
            return;
        }
        let first = match msg.routes().next() {
            Some(Ok(r)) => r,
            Some(Err(_)) => {
                self.reply(Side::Internal, msg, source, 400, &[]);
                return;
            }
            None => {
                self.reply(Side::Internal, msg, source, 404, &[]);
                return;
            }
        };
        let Ok(Uri::Sip(uri)) = first.parsed_uri() else {
            self.reply(Side::Internal, msg, source, 404, &[]);
            return;
        };
        let user = uri.user.unwrap_or("");
        let in_dialog = msg.to_tag().ok().flatten().is_some();
        let stamp = !in_dialog && method.creates_dialog();
        let sips = super::public::is_sips(msg);
        let (target, rr, pool) = if user.starts_with(PREFIX) {
            let Some(tok) = FlowToken::decode(&self.key, user) else {
                self.reply(Side::Internal, msg, source, 403, &[]);
                return;
            };
            // RFC 5630: a SIPS request is never carried to the client in the clear; a
            // client that registered over UDP or TCP cannot get one.
            if sips && !tok.secure {
                self.reply(Side::Internal, msg, source, 480, &[]);
                return;
            }
            let stream = match (tok.websocket, tok.secure) {
                (true, true) => Transport::Wss,
                (true, false) => Transport::Ws,
                (false, true) => Transport::Tls,
                (false, false) => Transport::Tcp,
            };
            let target = match tok.flow {
                Some(flow) if tok.instance == self.cfg.instance && flows.alive(FlowId(flow)) => {
                    Target {
                        transport: stream,
                        addr: tok.client,
                        flow: Some(FlowId(flow)),
                    }
                }
                // The connection is gone (or was on a dispatcher that restarted). A client
                // not behind a NAT listens at its Contact: open a new connection there
                // (RFC 3261 §18.1.1); behind a NAT nothing else reaches it (RFC 5626 §5.3).
                // The Request-URI only picks the port on the client's own host: a token
                // never carries a request to an address other than the client's.
                // A browser's WebSocket is gone: nothing listens on its side.
                Some(_) if tok.websocket => {
                    self.reply(Side::Internal, msg, source, 430, &[]);
                    return;
                }
                Some(_) => match ruri_addr(msg).filter(|a| !tok.nat && a.ip() == tok.client.ip()) {
                    Some(addr) => Target {
                        transport: stream,
                        addr,
                        flow: None,
                    },
                    None => {
                        self.reply(Side::Internal, msg, source, 430, &[]);
                        return;
                    }
                },
                // No connection of ours: a UDP client, or a set member (a trunk) reached
                // over the transport its Record-Route names (a TLS one's token is
                // secure: in-dialog requests to a TLS trunk never go in the clear).
                // Not behind a NAT: the Request-URI (the Contact) is where it listens.
                None => Target {
                    transport: if tok.secure {
                        Transport::Tls
                    } else {
                        match uri.transport().and_then(Transport::from_token) {
                            Some(Transport::Tcp) => Transport::Tcp,
                            _ => Transport::Udp,
                        }
                    },
                    addr: if tok.nat {
                        tok.client
                    } else {
                        ruri_addr(msg)
                            .filter(|a| a.ip() == tok.client.ip())
                            .unwrap_or(tok.client)
                    },
                    flow: None,
                },
            };
            // The same URI serves as this side's Record-Route: it names this client; the
            // dialog token is added.
            let rr = stamp.then(|| match self.dialog_token(msg, call_id) {
                Some(t) => with_dialog_param(first.raw, &t),
                None => first.raw.to_vec(),
            });
            (target, rr, None)
        } else if let Some(set) = user.strip_prefix(SET_PREFIX) {
            let Some(idx) = self.sets.iter().position(|p| p.name == set) else {
                self.reply(Side::Internal, msg, source, 404, &[]);
                return;
            };
            let key = dialog_key(call_id);
            // A SIPS request goes to members reached over TLS only.
            let Some(m) = self.sets[idx].pick(key, |m| {
                m.usable() && (!sips || m.spec.transport == Transport::Tls)
            }) else {
                if sips {
                    self.reply(Side::Internal, msg, source, 480, &[]);
                } else {
                    self.unavailable(Side::Internal, msg, source);
                }
                return;
            };
            let target = Target {
                transport: m.spec.transport,
                addr: m.spec.addr,
                flow: None,
            };
            m.metrics.requests.inc();
            let id = m.spec.id.clone();
            // In-dialog requests toward the set member go to its Contact (the
            // Request-URI), not to the member tried first: a failover may have moved the
            // dialog to another member.
            let rr = stamp.then(|| {
                let token = self.dialog_token(msg, call_id);
                self.client_uri(target, false, token.as_deref())
                    .into_bytes()
            });
            (target, rr, Some((PoolId::Set(idx), key, id)))
        } else {
            // Not ours to route: edges only send here with a token or a set.
            self.reply(Side::Internal, msg, source, 404, &[]);
            return;
        };

        let h = {
            let top = msg.top_via().ok();
            top.map(|t| Self::branch_hash(msg, &t)).unwrap_or(0)
        };
        let p = &self.cfg.public;
        let mut via = format!(
            "SIP/2.0/{} {}:{};branch={RELAY_BRANCH}{h:016x}",
            target.transport.as_str(),
            p.host(),
            p.port(target.transport)
        );
        let mut rr = rr;
        let mut ed = Editor::new(msg);
        if ed.remove_top_route().is_err() {
            self.metrics.drop("bad_route");
            return;
        }
        if self.cfg.topology_hiding {
            // Every Via below ours goes into ours (restored from the client's response);
            // every Record-Route below ours into ours (the client's route set names us
            // only; restored as Routes when its requests come back through us).
            let vias: Vec<&[u8]> = msg.via().filter_map(Result::ok).map(|v| v.raw).collect();
            let Some(sealed) = self.hider.seal(vias) else {
                self.metrics.drop("hiding_failed");
                return;
            };
            ed.remove_header(HeaderName::Via);
            let _ = write!(via, ";{}={sealed}", hiding::HIDDEN_PARAM);
            let below: Vec<&[u8]> = msg.header_values(HeaderName::RecordRoute).collect();
            if let Some(ours) = rr.take() {
                rr = Some(if below.is_empty() {
                    ours
                } else {
                    let Some(sealed) = self.hider.seal(below) else {
                        self.metrics.drop("hiding_failed");
                        return;
                    };
                    ed.remove_header(HeaderName::RecordRoute);
                    hiding::with_hidden(&ours, &sealed)
                });
            }
        }
        ed.prepend_via(via.as_bytes());
        if ed.decrement_max_forwards().is_err() {
            self.reply(Side::Internal, msg, source, 483, &[]);
            return;
        }
        // Nothing of our traces leaves the cluster (the edge removed it already).
        ed.remove_header_named(TRACE_HEADER);
        if let Some(rr) = &rr {
            ed.add_record_route(rr.as_slice());
        }
        let bytes = ed.finish();
        self.relayed[2].inc();
        if let Some((idx, key, id)) = pool
            && matches!(method, Method::Invite)
            && !self.failover.contains_key(&h)
        {
            self.remember(
                h,
                bytes.clone(),
                idx,
                Side::Public,
                key,
                &id,
                target.addr,
                method,
                now,
            );
        }
        if target.transport != Transport::Udp
            && target.flow.is_none()
            && method != Method::Ack
            && self.connecting.len() < self.cfg.max_failover_entries
        {
            self.connecting.insert(h, (msg.bytes().clone(), source));
            self.expiry.push_back((now + self.cfg.failover_window, h));
        }
        self.send(Side::Public, target, bytes, TxnRef::Client(ClientTxnId(h)));
    }
}

/// The Request-URI's address when it is a SIP URI with an IP literal host.
fn ruri_addr(msg: &SipMessage) -> Option<SocketAddr> {
    let Ok(Uri::Sip(u)) = msg.request_uri() else {
        return None;
    };
    let ip = u.host.ip()?;
    Some(SocketAddr::new(ip, u.port_or_default()))
}

//! Failover: INVITE and REGISTER are remembered until their first response (a
//! failed-over INVITE until it ends), so that a 503 or a transport error can be retried
//! on the next target in hash order while nothing but a 100 Trying has been relayed.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use sip_core::{HeaderName, Method, SipMessage};
use sip_txn::{ClientTxnId, Target, TxnRef};
use smallvec::SmallVec;

use super::targets::PoolId;
use super::{Notice, Relay, Side};

/// A remembered request.
pub(super) struct Entry {
    /// As relayed, to send again to the next target.
    pub(super) request: Bytes,
    /// The pool it was sent into.
    pub(super) pool: PoolId,
    /// The side it went out by.
    pub(super) side: Side,
    /// Its dialog key: the pool's order for it is the failover sequence.
    pub(super) key: u64,
    /// The target it is with now, and that target's address.
    pub(super) current: String,
    pub(super) current_addr: SocketAddr,
    /// The slots of the targets tried.
    pub(super) tried: SmallVec<[u32; 4]>,
    /// Something beyond 100 Trying was relayed back: too late to move it.
    pub(super) relayed: bool,
    pub(super) invite: bool,
}

impl Relay {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn remember(
        &mut self,
        h: u64,
        request: Bytes,
        pool: PoolId,
        side: Side,
        key: u64,
        id: &str,
        addr: SocketAddr,
        method: Method<'_>,
        now: Instant,
    ) {
        if self.failover.len() >= self.cfg.max_failover_entries {
            self.metrics.drop("failover_table_full");
            return;
        }
        let slot = self
            .pool(pool)
            .and_then(|p| p.get(id))
            .map_or(0, |m| m.slot);
        self.failover.insert(
            h,
            Entry {
                request,
                pool,
                side,
                key,
                current: id.to_owned(),
                current_addr: addr,
                tried: SmallVec::from_slice(&[slot]),
                relayed: false,
                invite: method == Method::Invite,
            },
        );
        self.expiry.push_back((now + self.cfg.failover_window, h));
        self.metrics
            .failover_entries
            .set(self.failover.len() as i64);
    }

    /// Move a remembered request to the next target in its pool's order. False when
    /// there is none left.
    pub(super) fn fail_over(&mut self, h: u64) -> bool {
        let Some(e) = self.failover.get(&h) else {
            return false;
        };
        let (pool_id, key) = (e.pool, e.key);
        let Some(order) = self.pool_mut(pool_id).map(|p| p.order(key)) else {
            return false;
        };
        let (Some(pool), Some(e)) = (self.pool(pool_id), self.failover.get(&h)) else {
            return false;
        };
        let next = order.iter().find_map(|id| {
            let m = pool.get(id)?;
            (m.usable() && !e.tried.contains(&m.slot)).then_some(m)
        });
        let Some(m) = next else {
            return false;
        };
        let (id, addr, transport, slot) =
            (m.spec.id.clone(), m.spec.addr, m.spec.transport, m.slot);
        m.metrics.requests.inc();
        let Some(e) = self.failover.get_mut(&h) else {
            return false;
        };
        e.current = id;
        e.current_addr = addr;
        e.tried.push(slot);
        let (side, bytes) = (e.side, e.request.clone());
        self.send(
            side,
            Target {
                transport,
                addr,
                flow: None,
            },
            bytes,
            TxnRef::Client(ClientTxnId(h)),
        );
        true
    }

    /// Failover bookkeeping for a response; false when the response is absorbed.
    pub(super) fn track_response(
        &mut self,
        h: u64,
        side: Side,
        msg: &SipMessage,
        status: u16,
        source: Target,
    ) -> bool {
        let Some(e) = self.failover.get_mut(&h) else {
            return true;
        };
        if e.side != side {
            return true;
        }
        if source.addr != e.current_addr {
            // A retransmitted failure from a target we already moved away from.
            if e.invite && status >= 300 {
                let ack = ack_for(&e.request, msg);
                if let Some(ack) = ack {
                    self.send(side, source, ack, TxnRef::Stateless);
                }
            }
            self.metrics.drop("response_from_previous_target");
            return false;
        }
        if status == 503 && !e.relayed {
            let (invite, request) = (e.invite, e.request.clone());
            let (pool, current) = (e.pool, e.current.clone());
            if self.fail_over(h) {
                if let Some(m) = self.pool(pool).and_then(|p| p.get(&current)) {
                    m.metrics.failovers.inc();
                }
                if invite && let Some(ack) = ack_for(&request, msg) {
                    self.send(side, source, ack, TxnRef::Stateless);
                }
                return false;
            }
        }
        let Some(e) = self.failover.get_mut(&h) else {
            return true;
        };
        if status > 100 {
            e.relayed = true;
        }
        // Keep a failed-over INVITE so its ACK and CANCEL find the edge that has it.
        if status >= 200 && (!e.invite || e.tried.len() == 1) {
            self.failover.remove(&h);
            self.metrics
                .failover_entries
                .set(self.failover.len() as i64);
        }
        true
    }

    /// A send toward `target` failed.
    pub fn handle_send_failed(&mut self, side: Side, target: Target, origin: TxnRef, now: Instant) {
        // Edges sit on the internal side, set members on the public one.
        let pools = match side {
            Side::Internal => std::slice::from_mut(&mut self.edges),
            Side::Public => self.sets.as_mut_slice(),
        };
        for pool in pools {
            let name = pool.name.clone();
            for m in pool.members_mut() {
                if m.spec.addr == target.addr {
                    m.metrics.probe_failed.inc();
                    if let Some(t) = m.health.on_failure(now) {
                        m.publish();
                        self.notices.push_back(Notice::state(&name, m, t));
                    }
                }
            }
        }
        if side == Side::Public
            && let TxnRef::Client(ClientTxnId(h)) = origin
            && let Some((request, edge)) = self.connecting.remove(&h)
        {
            // The client could not be reached: the edge hears it now, as 480 (what it
            // answers for an unreachable contact itself), not after its Timer B.
            if let Ok(req) = SipMessage::parse(request) {
                self.reply(Side::Internal, &req, edge, 480, &[]);
            }
            return;
        }
        if let TxnRef::Client(ClientTxnId(h)) = origin
            && let Some(e) = self.failover.get(&h)
            && e.current_addr == target.addr
            && !e.relayed
        {
            if let Some(m) = self.pool(e.pool).and_then(|p| p.get(&e.current)) {
                m.metrics.failovers.inc();
            }
            if self.fail_over(h) {
                return;
            }
        }
        self.metrics.drop("send_failed");
    }
}

/// The ACK for a non-2xx final response to a remembered INVITE (§17.1.1.3), which the
/// dispatcher sends itself when it absorbs that response to fail over.
fn ack_for(request: &Bytes, response: &SipMessage) -> Option<Bytes> {
    let req = SipMessage::parse(request.clone()).ok()?;
    let via = req.top_via().ok()?.raw;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"ACK ");
    out.extend_from_slice(req.request_uri_raw()?);
    out.extend_from_slice(b" SIP/2.0\r\nVia: ");
    out.extend_from_slice(via);
    out.extend_from_slice(b"\r\n");
    for r in req.headers_of(HeaderName::Route) {
        out.extend_from_slice(b"Route: ");
        out.extend_from_slice(r.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Max-Forwards: 70\r\nFrom: ");
    out.extend_from_slice(req.header(HeaderName::From)?);
    out.extend_from_slice(b"\r\nTo: ");
    out.extend_from_slice(response.header(HeaderName::To)?);
    out.extend_from_slice(b"\r\nCall-ID: ");
    out.extend_from_slice(req.call_id().ok()?.as_bytes());
    let _ = write!(
        StrBuf(&mut out),
        "\r\nCSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
        req.cseq().ok()?.seq
    );
    Some(Bytes::from(out))
}

struct StrBuf<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for StrBuf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

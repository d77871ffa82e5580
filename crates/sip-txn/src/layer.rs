//! The transaction layer: four state machines, their timers, and message matching.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::{Method, OwnedServerKey, RequestBuilder, SipMessage};

use crate::error::TxnError;
use crate::table::{Keyed, Table};
use crate::timers::Timers;
use crate::types::{ClientTxnId, Event, ServerTxnId, Target, TimerConfig, Transmit, TxnRef};

/// Server transaction states (RFC 3261 §17.2, RFC 6026 Accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE: nothing sent yet.
    Trying,
    /// A provisional response was sent (INVITE transactions start here).
    Proceeding,
    /// A final response was sent; retransmissions of the request get it again.
    Completed,
    /// INVITE answered with a 2xx (RFC 6026): request retransmissions absorbed.
    Accepted,
    /// INVITE: the ACK for the non-2xx final arrived.
    Confirmed,
}

/// Client transaction states (RFC 3261 §17.1, RFC 6026 Accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Request sent (Calling for INVITE, Trying for non-INVITE), no response yet.
    Calling,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived (for INVITE: a non-2xx, ACK sent).
    Completed,
    /// INVITE answered with a 2xx (RFC 6026): further 2xx still reach the TU.
    Accepted,
}

#[derive(Debug)]
struct ServerTxn {
    key: OwnedServerKey,
    invite: bool,
    state: ServerState,
    target: Target,
    last_response: Option<Bytes>,
    /// Timer G: next fire time and current interval.
    retransmit: Option<(Instant, Duration)>,
    /// Timers H, I, J, L.
    timeout: Option<Instant>,
}

/// Client transaction key: top Via branch and CSeq method (§17.1.3).
type ClientKey = (Bytes, Bytes);

#[derive(Debug)]
struct ClientTxn {
    key: ClientKey,
    invite: bool,
    state: ClientState,
    request: SipMessage,
    target: Target,
    ack: Option<Bytes>,
    /// Timers A and E.
    retransmit: Option<(Instant, Duration)>,
    /// Timers B, F, D, K, M.
    timeout: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Retransmit,
    Timeout,
}

/// A fired timer: which transaction and slot, and the deadline it was armed for (a
/// transaction re-armed or ended since ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimerEntry {
    at: Instant,
    txn: TxnKey,
    slot: Slot,
}

/// `TxnRef` with an order, for the timer heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TxnKey {
    Server(u64),
    Client(u64),
}

/// The RFC 3261 §17 transaction layer, sans-IO.
///
/// Feed it received messages ([`handle_request`](Self::handle_request),
/// [`handle_response`](Self::handle_response)), what the transaction user wants sent
/// ([`respond`](Self::respond), [`request`](Self::request)) and the time
/// ([`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout) is
/// due); then drain [`poll_transmit`](Self::poll_transmit) and
/// [`poll_event`](Self::poll_event). It never reads a clock and never touches a socket.
///
/// Requests handed in must already have passed `SipMessage::validate_request` (they need a
/// transaction key); the proxy answers invalid ones statelessly.
#[derive(Debug)]
pub struct TransactionLayer {
    cfg: TimerConfig,
    servers: Table<ServerTxn>,
    clients: Table<ClientTxn>,
    timers: Timers<(TxnKey, Slot)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

/// A copy of `key` in one small buffer of its own. The key as parsed slices the received
/// datagram, and a receive buffer is shared by hundreds of datagrams: a transaction kept
/// for 64·T1 would keep all of them alive (hundreds of MB at 20k REGISTER/s).
fn detach(key: OwnedServerKey) -> OwnedServerKey {
    let mut buf = Vec::with_capacity(key.id.len() + key.rest.len() + key.method.len());
    buf.extend_from_slice(&key.id);
    buf.extend_from_slice(&key.rest);
    buf.extend_from_slice(&key.method);
    let buf = Bytes::from(buf);
    let (a, b) = (key.id.len(), key.id.len() + key.rest.len());
    OwnedServerKey {
        id: buf.slice(..a),
        rest: buf.slice(a..b),
        method: buf.slice(b..),
        cseq: key.cseq,
    }
}

/// The method as an owned key; the common methods cost no allocation.
fn method_bytes(m: Method<'_>) -> Bytes {
    match m.known_name() {
        Some(s) => Bytes::from_static(s.as_bytes()),
        None => Bytes::copy_from_slice(m.as_str().as_bytes()),
    }
}

impl Keyed for ServerTxn {
    type Key = OwnedServerKey;
    fn key(&self) -> &OwnedServerKey {
        &self.key
    }
}

impl Keyed for ClientTxn {
    type Key = ClientKey;
    fn key(&self) -> &ClientKey {
        &self.key
    }
}

impl TransactionLayer {
    /// A layer with the given timers.
    pub fn new(cfg: TimerConfig) -> Self {
        TransactionLayer {
            cfg,
            servers: Table::default(),
            clients: Table::default(),
            timers: Timers::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The timer configuration.
    pub fn config(&self) -> &TimerConfig {
        &self.cfg
    }

    /// Live server transactions.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// Live client transactions.
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// State of a server transaction, `None` once it ended.
    pub fn server_state(&self, txn: ServerTxnId) -> Option<ServerState> {
        self.servers.get(txn.0).map(|t| t.state)
    }

    /// State of a client transaction, `None` once it ended.
    pub fn client_state(&self, txn: ClientTxnId) -> Option<ClientState> {
        self.clients.get(txn.0).map(|t| t.state)
    }

    /// Where a server transaction sends its responses.
    pub fn server_target(&self, txn: ServerTxnId) -> Option<Target> {
        self.servers.get(txn.0).map(|t| t.target)
    }

    /// The INVITE server transaction a CANCEL refers to (§9.2), if it is still alive.
    pub fn find_cancelled(&self, cancel: &SipMessage) -> Option<ServerTxnId> {
        let mut key = cancel.owned_server_key().ok()?;
        key.method = Bytes::from_static(b"INVITE");
        self.servers.find(&key).map(ServerTxnId)
    }

    fn arm(&mut self, txn: TxnKey, slot: Slot, base: Instant, delay: Duration) {
        self.timers.arm(base, delay, (txn, slot));
    }

    fn send(&mut self, target: Target, bytes: Bytes, origin: TxnRef) {
        self.transmits.push_back(Transmit {
            target,
            bytes,
            message: None,
            origin,
        });
    }

    /// A request arrived from `source`.
    ///
    /// Retransmissions are absorbed (and the last response re-sent where the state machine
    /// says so); a new request creates a server transaction and is reported as
    /// [`Event::Request`]; an ACK is absorbed by, or passed through, the INVITE transaction
    /// it acknowledges.
    pub fn handle_request(
        &mut self,
        now: Instant,
        msg: SipMessage,
        source: Target,
    ) -> Result<(), TxnError> {
        let key = msg.owned_server_key().map_err(TxnError::NoKey)?;
        let method = msg.method().ok_or(TxnError::NotARequest)?;
        if method == Method::Ack {
            // The ACK's key already names the INVITE (ACK folds into INVITE, §17.2.3).
            let Some(id) = self.servers.find(&key) else {
                self.events.push_back(Event::Request {
                    txn: None,
                    msg,
                    source,
                });
                return Ok(());
            };
            let Some(t) = self.servers.get_mut(id) else {
                return Ok(());
            };
            match t.state {
                ServerState::Completed => {
                    t.state = ServerState::Confirmed;
                    t.retransmit = None;
                    let delay = if t.target.transport.is_reliable() {
                        Duration::ZERO
                    } else {
                        self.cfg.t4
                    };
                    t.timeout = Some(now + delay);
                    self.arm(TxnKey::Server(id), Slot::Timeout, now, delay);
                }
                ServerState::Confirmed => {}
                // RFC 6026 §8.7: an ACK in Accepted goes to the TU (it is end to end).
                _ => self.events.push_back(Event::Request {
                    txn: None,
                    msg,
                    source,
                }),
            }
            return Ok(());
        }
        if let Some(id) = self.servers.find(&key) {
            if let Some(t) = self.servers.get(id) {
                let resend = match t.state {
                    ServerState::Proceeding | ServerState::Completed => t.last_response.clone(),
                    ServerState::Trying | ServerState::Accepted | ServerState::Confirmed => None,
                };
                if let Some(b) = resend {
                    let target = t.target;
                    self.send(target, b, TxnRef::Server(ServerTxnId(id)));
                }
            }
            return Ok(());
        }
        let invite = method == Method::Invite;
        let id = self.servers.insert(ServerTxn {
            key: detach(key),
            invite,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            target: source,
            last_response: None,
            retransmit: None,
            timeout: None,
        });
        self.events.push_back(Event::Request {
            txn: Some(ServerTxnId(id)),
            msg,
            source,
        });
        Ok(())
    }

    /// Send `response` (status `code`) on a server transaction.
    pub fn respond(
        &mut self,
        now: Instant,
        txn: ServerTxnId,
        code: u16,
        response: Bytes,
    ) -> Result<(), TxnError> {
        let t1 = self.cfg.t1;
        let t1x64 = self.cfg.t1x64();
        let t = self
            .servers
            .get_mut(txn.0)
            .ok_or(TxnError::UnknownTransaction)?;
        let reliable = t.target.transport.is_reliable();
        let provisional = code < 200;
        let mut arm = Vec::new();
        match (t.invite, t.state) {
            (true, ServerState::Proceeding) => {
                if provisional {
                    t.last_response = Some(response.clone());
                } else if code < 300 {
                    t.state = ServerState::Accepted;
                    t.last_response = None;
                    t.timeout = Some(now + t1x64);
                    arm.push((Slot::Timeout, t1x64));
                } else {
                    t.state = ServerState::Completed;
                    t.last_response = Some(response.clone());
                    if !reliable {
                        t.retransmit = Some((now + t1, t1));
                        arm.push((Slot::Retransmit, t1));
                    }
                    t.timeout = Some(now + t1x64);
                    arm.push((Slot::Timeout, t1x64));
                }
            }
            // Forked 2xx responses keep flowing upstream through the Accepted transaction.
            (true, ServerState::Accepted) if (200..300).contains(&code) => {}
            (false, ServerState::Trying | ServerState::Proceeding) => {
                if provisional {
                    t.state = ServerState::Proceeding;
                    t.last_response = Some(response.clone());
                } else {
                    t.state = ServerState::Completed;
                    t.last_response = Some(response.clone());
                    let delay = if reliable { Duration::ZERO } else { t1x64 };
                    t.timeout = Some(now + delay);
                    arm.push((Slot::Timeout, delay));
                }
            }
            (_, state) => {
                return Err(TxnError::InvalidState(format!(
                    "{state:?} cannot send {code}"
                )));
            }
        }
        let target = t.target;
        self.send(target, response, TxnRef::Server(txn));
        for (slot, delay) in arm {
            self.arm(TxnKey::Server(txn.0), slot, now, delay);
        }
        Ok(())
    }

    /// Start a client transaction sending `request` (which carries this element's Via with
    /// a unique branch on top) to `target`.
    pub fn request(
        &mut self,
        now: Instant,
        request: SipMessage,
        target: Target,
    ) -> Result<ClientTxnId, TxnError> {
        let via = request.top_via().map_err(TxnError::NoKey)?;
        let branch = via
            .branch
            .ok_or(TxnError::InvalidState("request without branch".into()))?;
        let method = request.method().ok_or(TxnError::NotARequest)?;
        if method == Method::Ack {
            return Err(TxnError::InvalidState(
                "ACK has no client transaction; use send_stateless".into(),
            ));
        }
        let key = (
            request.bytes().slice_ref(branch.as_bytes()),
            method_bytes(method),
        );
        if self.clients.find(&key).is_some() {
            return Err(TxnError::DuplicateBranch);
        }
        let invite = method == Method::Invite;
        let t1 = self.cfg.t1;
        let t1x64 = self.cfg.t1x64();
        let reliable = target.transport.is_reliable();
        let mut t = ClientTxn {
            key,
            invite,
            state: ClientState::Calling,
            request,
            target,
            ack: None,
            retransmit: None,
            timeout: Some(now + self.cfg.t1x64()),
        };
        if !reliable {
            t.retransmit = Some((now + t1, t1));
        }
        let message = t.request.clone();
        let id = self.clients.insert(t);
        if !reliable {
            self.arm(TxnKey::Client(id), Slot::Retransmit, now, t1);
        }
        self.arm(TxnKey::Client(id), Slot::Timeout, now, t1x64);
        self.transmits.push_back(Transmit {
            target,
            bytes: message.bytes().clone(),
            message: Some(message),
            origin: TxnRef::Client(ClientTxnId(id)),
        });
        Ok(ClientTxnId(id))
    }

    /// A CANCEL was sent for this INVITE client transaction: if no final response comes
    /// within 64·T1 it ends with [`Event::Timeout`] (RFC 3261 §9.1: "the client SHOULD
    /// consider the transaction cancelled and destroy it"). Without this a callee that
    /// never answers the CANCEL would hold the transaction, and the caller's, for ever:
    /// a provisional response stopped Timer B.
    pub fn cancelled(&mut self, now: Instant, txn: ClientTxnId) {
        let t1x64 = self.cfg.t1x64();
        let Some(t) = self.clients.get_mut(txn.0) else {
            return;
        };
        if !t.invite || !matches!(t.state, ClientState::Calling | ClientState::Proceeding) {
            return;
        }
        let at = now + t1x64;
        // An earlier deadline (Timer B, still running while Calling) stands.
        if t.timeout.is_some_and(|d| d <= at) {
            return;
        }
        t.timeout = Some(at);
        self.arm(TxnKey::Client(txn.0), Slot::Timeout, now, t1x64);
    }

    /// Send bytes outside any transaction (the ACK for a 2xx, stateless replies).
    pub fn send_stateless(&mut self, target: Target, bytes: Bytes) {
        self.transmits.push_back(Transmit {
            target,
            bytes,
            message: None,
            origin: TxnRef::Stateless,
        });
    }

    /// A response arrived.
    pub fn handle_response(
        &mut self,
        now: Instant,
        msg: SipMessage,
        source: Target,
    ) -> Result<(), TxnError> {
        let code = msg.status().ok_or(TxnError::NotAResponse)?;
        let key = match msg.client_key() {
            Ok(k) => (
                Bytes::copy_from_slice(k.branch.as_bytes()),
                method_bytes(k.method),
            ),
            Err(_) => {
                self.events.push_back(Event::StrayResponse { msg, source });
                return Ok(());
            }
        };
        let Some(id) = self.clients.find(&key) else {
            self.events.push_back(Event::StrayResponse { msg, source });
            return Ok(());
        };
        let cfg = self.cfg;
        let Some(t) = self.clients.get_mut(id) else {
            return Ok(());
        };
        let reliable = t.target.transport.is_reliable();
        let txn = ClientTxnId(id);
        let mut arm = None;
        let mut ack = None;
        let pass = match (t.invite, t.state, code) {
            (_, ClientState::Calling | ClientState::Proceeding, 100..=199) => {
                t.state = ClientState::Proceeding;
                if t.invite {
                    // Timer A stops; Timer B applies in Calling only (§17.1.1.2) — the proxy's
                    // Timer C covers a call that rings forever.
                    t.retransmit = None;
                    t.timeout = None;
                }
                true
            }
            (true, ClientState::Calling | ClientState::Proceeding, 200..=299) => {
                t.state = ClientState::Accepted;
                t.retransmit = None;
                t.timeout = Some(now + cfg.t1x64());
                arm = Some(cfg.t1x64());
                true
            }
            (true, ClientState::Calling | ClientState::Proceeding, _) => {
                t.state = ClientState::Completed;
                t.retransmit = None;
                let a = RequestBuilder::ack_non_2xx(&t.request, &msg).map_err(TxnError::NoKey)?;
                t.ack = Some(a.clone());
                ack = Some(a);
                let delay = if reliable {
                    Duration::ZERO
                } else {
                    cfg.timer_d
                };
                t.timeout = Some(now + delay);
                arm = Some(delay);
                true
            }
            (true, ClientState::Accepted, 200..=299) => true,
            (true, ClientState::Completed, 300..) => {
                ack = t.ack.clone();
                false
            }
            (false, ClientState::Calling | ClientState::Proceeding, _) => {
                t.state = ClientState::Completed;
                t.retransmit = None;
                let delay = if reliable { Duration::ZERO } else { cfg.t4 };
                t.timeout = Some(now + delay);
                arm = Some(delay);
                true
            }
            _ => false,
        };
        let target = t.target;
        if let Some(a) = ack {
            self.send(target, a, TxnRef::Client(txn));
        }
        if let Some(delay) = arm {
            self.arm(TxnKey::Client(id), Slot::Timeout, now, delay);
        }
        if pass {
            self.events.push_back(Event::Response { txn, msg });
        }
        Ok(())
    }

    /// The driver could not send a message of `origin` (connection refused, ICMP error...).
    pub fn transport_error(&mut self, _now: Instant, origin: TxnRef) {
        match origin {
            TxnRef::Client(txn) => {
                if self.remove_client(txn.0) {
                    self.events.push_back(Event::TransportError { txn });
                }
            }
            TxnRef::Server(txn) => {
                if self.remove_server(txn.0) {
                    self.events.push_back(Event::ServerFailed { txn });
                }
            }
            TxnRef::Stateless => {}
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Fire every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, (txn, slot))) = self.timers.pop_due(now) {
            let e = TimerEntry { at, txn, slot };
            match e.txn {
                TxnKey::Server(id) => self.server_timer(id, e),
                TxnKey::Client(id) => self.client_timer(id, e),
            }
        }
    }

    fn server_timer(&mut self, id: u64, e: TimerEntry) {
        let t2 = self.cfg.t2;
        let Some(t) = self.servers.get_mut(id) else {
            return;
        };
        match e.slot {
            Slot::Retransmit => {
                // Timer G; a stale entry (re-armed or cancelled since) is ignored.
                let Some((at, interval)) = t.retransmit else {
                    return;
                };
                if at != e.at || t.state != ServerState::Completed {
                    return;
                }
                let next = (interval * 2).min(t2);
                t.retransmit = Some((e.at + next, next));
                let (target, resp) = (t.target, t.last_response.clone());
                self.arm(TxnKey::Server(id), Slot::Retransmit, e.at, next);
                if let Some(r) = resp {
                    self.send(target, r, TxnRef::Server(ServerTxnId(id)));
                }
            }
            Slot::Timeout => {
                if t.timeout != Some(e.at) {
                    return;
                }
                // Timer H: the ACK never came.
                let failed = t.invite && t.state == ServerState::Completed;
                self.remove_server(id);
                if failed {
                    self.events.push_back(Event::ServerFailed {
                        txn: ServerTxnId(id),
                    });
                }
            }
        }
    }

    fn client_timer(&mut self, id: u64, e: TimerEntry) {
        let t2 = self.cfg.t2;
        let Some(t) = self.clients.get_mut(id) else {
            return;
        };
        match e.slot {
            Slot::Retransmit => {
                let Some((at, interval)) = t.retransmit else {
                    return;
                };
                if at != e.at {
                    return;
                }
                let next = match (t.invite, t.state) {
                    // Timer A doubles without a cap until Timer B ends it.
                    (true, ClientState::Calling) => interval * 2,
                    // Timer E: doubles up to T2 while Trying, T2 once Proceeding.
                    (false, ClientState::Calling) => (interval * 2).min(t2),
                    (false, ClientState::Proceeding) => t2,
                    _ => return,
                };
                t.retransmit = Some((e.at + next, next));
                let (target, bytes) = (t.target, t.request.bytes().clone());
                self.arm(TxnKey::Client(id), Slot::Retransmit, e.at, next);
                self.send(target, bytes, TxnRef::Client(ClientTxnId(id)));
            }
            Slot::Timeout => {
                if t.timeout != Some(e.at) {
                    return;
                }
                // B and F end a transaction still waiting for a final response; D, K and M
                // only end the wait for retransmissions.
                let timed_out = matches!(t.state, ClientState::Calling | ClientState::Proceeding);
                self.remove_client(id);
                if timed_out {
                    self.events.push_back(Event::Timeout {
                        txn: ClientTxnId(id),
                    });
                }
            }
        }
    }

    fn remove_server(&mut self, id: u64) -> bool {
        self.servers.remove(id).is_some()
    }

    fn remove_client(&mut self, id: u64) -> bool {
        self.clients.remove(id).is_some()
    }

    /// Next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event for the transaction user.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

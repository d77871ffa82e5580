//! The stateless relay (RFC 3261 §16.11) between clients and edges, sans-IO.
//!
//! Two sides: **public** (clients, gateways: the Internet) and **internal** (edges).
//!
//! * A request from a client goes to an edge: the one its Call-ID hashes to among those
//!   taking new dialogs (in-dialog requests, ACK and CANCEL may also use a draining
//!   edge, which still holds their transactions). The dispatcher adds its Via with a
//!   branch derived from the client's transaction (so retransmissions, CANCEL and the
//!   ACK of a failure get the same branch and the same edge), records the client's real
//!   source in the client's Via (§18.2.1, RFC 3581), adds a Path (REGISTER) or
//!   Record-Route (dialog-creating request) whose user part is a signed
//!   [`FlowToken`] naming the client, and pops its own Route.
//! * A request from an edge carries one of those URIs as its top Route: the dispatcher
//!   verifies the token and sends the request down the client's connection (430 Flow
//!   Failed when it closed) or to its UDP address; or a destination-set Route
//!   (`sip:set-NAME@dispatcher;lr`) and the set's algorithm picks a member.
//! * Responses go back by Via: the dispatcher pops its own and sends to the next one,
//!   over the client's connection when the request came over one (the connection id
//!   rides in the dispatcher's own Via, so no state is kept).
//!
//! The only memory beyond one message: INVITE and REGISTER requests are remembered
//! until their first response (and a failed-over INVITE until it ends) so that a 503 or
//! a transport error from an edge can be retried on the next edge in hash order while
//! nothing but a 100 Trying has been relayed. Bounded in count and time.
//!
//! One file per concern, along a message's path: `public.rs` (requests from clients),
//! `internal.rs` (requests from edges), `responses.rs`, `failover.rs`, `probes.rs` (health
//! probes and timers), `targets.rs` (the edge pool and the destination sets, as discovery,
//! configuration and the admin API change them) and `stamps.rs` (what the dispatcher
//! writes into the messages it relays and reads back: Via parameters, Path and
//! Record-Route URIs).

mod failover;
pub mod hiding;
mod internal;
mod probes;
mod public;
mod responses;
mod stamps;
mod targets;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::HashMap;
use sip_core::{Editor, Method, ResponseBuilder, SipMessage, Uri, Via};
use sip_txn::{FlowId, Target, Transport, TxnRef};

use crate::health::{HealthConfig, State};
use crate::metrics::{DirectionLabel, Metrics};
use crate::pool::{Algorithm, Pool};
use crate::token::{FlowToken, PREFIX, TokenKey};

use failover::Entry;
use targets::DrainFlags;

pub use stamps::{
    Relayed, dialog_param, is_dispatcher_via, relayed_by_dispatcher, with_dialog_param,
    without_edge_params,
};

/// The dispatcher's own Via branch prefix for relayed requests.
const RELAY_BRANCH: &str = "z9hG4bK-scd";

/// The branch prefix of health probes.
const PROBE_BRANCH: &str = "z9hG4bK-scp";

/// The Via parameter carrying the client connection a request came over.
const FLOW_PARAM: &str = "scflow";

/// The transport of that connection, when the client's Via names another one.
const FLOW_TRANSPORT_PARAM: &str = "scflowt";

/// The Via parameter carrying the client's address, signed ([`TokenKey::sign_source`]).
const SOURCE_PARAM: &str = "scsrc";

/// The Via parameter carrying the identity the client's TLS certificate proved, signed
/// ([`TokenKey::sign_peer`]).
const PEER_PARAM: &str = "scpeer";

/// The URI parameter of our Record-Route URIs carrying the dialog token
/// ([`TokenKey::dialog_token`]), and the Via parameter that hands it to the edge when the
/// dispatcher popped that Route.
pub const DIALOG_PARAM: &str = "dlg";

/// The Route user-part prefix naming a destination set.
pub const SET_PREFIX: &str = "set-";

/// The pool name of the edges.
pub const EDGE_POOL: &str = "edge";

/// Which side of the dispatcher a message arrived on or leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Clients, gateways.
    Public,
    /// Edges.
    Internal,
}

/// The addresses of one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Written into Via, Path and Record-Route.
    pub advertise: IpAddr,
    /// UDP port, when listening on UDP.
    pub udp: Option<u16>,
    /// TCP port, when listening on TCP.
    pub tcp: Option<u16>,
    /// TLS port, when listening on TLS.
    pub tls: Option<u16>,
    /// WebSocket port, when listening on WebSocket.
    pub ws: Option<u16>,
    /// Secure WebSocket port.
    pub wss: Option<u16>,
    /// Every address that means this side (advertise, listening addresses).
    pub addresses: Vec<IpAddr>,
}

impl Listen {
    fn host(&self) -> String {
        match self.advertise {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        }
    }

    fn port(&self, t: Transport) -> u16 {
        let p = match t {
            Transport::Udp => self.udp.or(self.tcp),
            Transport::Tls => self.tls.or(self.tcp).or(self.udp),
            Transport::Ws => self.ws.or(self.tcp).or(self.udp),
            Transport::Wss => self.wss.or(self.tls).or(self.tcp).or(self.udp),
            _ => self.tcp.or(self.udp),
        };
        p.unwrap_or(5060)
    }

    fn is_me(&self, ip: IpAddr, port: u16) -> bool {
        (self.addresses.contains(&ip) || self.advertise == ip)
            && [self.udp, self.tcp, self.tls, self.ws, self.wss].contains(&Some(port))
    }
}

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// This process (random per start): names its connections in flow tokens.
    pub instance: u32,
    /// Client-facing addresses.
    pub public: Listen,
    /// Edge-facing addresses.
    pub internal: Listen,
    /// How requests reach edges.
    pub edge_transport: Transport,
    /// Probing of edges and set members.
    pub health: HealthConfig,
    /// How long a request is remembered for failover (64·T1).
    pub failover_window: Duration,
    /// At most this many remembered requests; beyond, new ones are not retried.
    pub max_failover_entries: usize,
    /// `Retry-After` of the 503 sent when no edge can take a request.
    pub retry_after: u32,
    /// Scanners whose requests are dropped without an answer.
    pub deny_user_agents: crate::security::UserAgentDeny,
    /// Hide the inside of the cluster from clients ([`hiding`]): internal Vias and
    /// Record-Routes sealed into ours. What was sealed is restored whatever this says.
    pub topology_hiding: bool,
}

/// Liveness of the client connections (the public transports).
pub trait FlowTable {
    /// Is this connection still open?
    fn alive(&self, flow: FlowId) -> bool;

    /// The identity the peer of this connection proved with its TLS certificate.
    fn peer(&self, _flow: FlowId) -> Option<std::sync::Arc<str>> {
        None
    }
}

/// Bytes to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// Which transports.
    pub side: Side,
    /// Where.
    pub target: Target,
    /// The message.
    pub bytes: Bytes,
    /// The same message already parsed, when the relay edited one: a receiver in the
    /// same process takes it as is (`Transports::send_message`) instead of parsing
    /// `bytes` again.
    pub parsed: Option<SipMessage>,
    /// Reported back with a send failure.
    pub origin: TxnRef,
}

/// What an [`Editor`] wrote: the bytes, and the message parsed as it wrote them.
struct Edited {
    bytes: Bytes,
    parsed: Option<SipMessage>,
}

impl Edited {
    fn of(ed: &Editor<'_, '_>) -> Edited {
        match ed.finish_message() {
            Ok(m) => Edited {
                bytes: m.bytes().clone(),
                parsed: Some(m),
            },
            // Unparseable after our edits: sent as written, for the receiver to refuse.
            Err(_) => Edited {
                bytes: ed.finish(),
                parsed: None,
            },
        }
    }
}

/// `Notice::Rejected` queued at most between two polls of the driver.
const REJECTED_QUEUE: usize = 64;

/// Something the driver should log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A target's health changed.
    State {
        /// Pool name.
        pool: String,
        /// Target id.
        id: String,
        /// Before.
        from: State,
        /// After.
        to: State,
    },
    /// A target was added (joins after its first answered probe).
    Added {
        /// Pool name.
        pool: String,
        /// Target id.
        id: String,
        /// Its address.
        addr: SocketAddr,
    },
    /// A target was removed (discovery said so).
    Removed {
        /// Pool name.
        pool: String,
        /// Target id.
        id: String,
    },
    /// A target said it is draining (503 to a probe) or stopped saying so.
    Draining {
        /// Pool name.
        pool: String,
        /// Target id.
        id: String,
        /// Now draining?
        draining: bool,
    },
    /// The dispatcher refused a request itself (3xx-6xx): for the operator's log.
    Rejected(Box<Rejected>),
}

/// A request the dispatcher answered with a refusal, as the log line shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The status sent.
    pub status: u16,
    /// The request's method.
    pub method: String,
    /// Its Call-ID (empty when it had none).
    pub call_id: String,
    /// The From user (the caller), when there is one.
    pub user: String,
    /// Where it came from.
    pub source: Target,
    /// Refusals not reported before this one because the driver had not yet taken the
    /// earlier ones (a flood): the driver adds them to its own count of held-back lines.
    pub unreported: u64,
}

impl Notice {
    fn state(pool: &str, m: &crate::pool::Member, t: crate::health::Transition) -> Notice {
        Notice::State {
            pool: pool.to_owned(),
            id: m.spec.id.clone(),
            from: t.from,
            to: t.to,
        }
    }
}

/// A target as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// Pool (`edge` or a set's name).
    pub pool: String,
    /// Selection algorithm of the pool.
    pub algorithm: Algorithm,
    /// Id.
    pub id: String,
    /// Address.
    pub addr: SocketAddr,
    /// UDP / TCP.
    pub transport: Transport,
    /// Effective weight.
    pub weight: u32,
    /// Priority (priority pools).
    pub priority: u32,
    /// Health.
    pub state: State,
    /// Draining (by the operator or by its own 503).
    pub draining: bool,
    /// Requests sent to it.
    pub requests: u64,
}

/// The relay.
pub struct Relay {
    /// Seals and opens what topology hiding takes out of messages.
    hider: hiding::Hider,
    cfg: RelayConfig,
    key: TokenKey,
    /// The edges (pool [`EDGE_POOL`]).
    edges: Pool,
    /// The outbound destination sets, in configuration order.
    sets: Vec<Pool>,
    drains: HashMap<u32, DrainFlags>,
    next_slot: u32,
    failover: HashMap<u64, Entry>,
    /// Requests from edges sent over a connection being opened: answered 480 to the edge
    /// if it cannot be opened (the edge learns at once, as with its own transport error).
    connecting: HashMap<u64, (Bytes, Target)>,
    /// Edges removed by discovery, until the failover window passes: a draining pod
    /// still finishes its transactions, so responses toward it are still relayed.
    retired: VecDeque<(Instant, SocketAddr)>,
    expiry: VecDeque<(Instant, u64)>,
    out: VecDeque<Transmit>,
    notices: VecDeque<Notice>,
    /// `Notice::Rejected` waiting in `notices` (capped: a flood of refusals must not
    /// queue without bound between two polls), and those dropped at the cap.
    rejected_queued: usize,
    rejected_unreported: u64,
    metrics: Metrics,
    draining: bool,
    relayed: [prometheus_client::metrics::counter::Counter; 4],
    /// The trace context of the request being relayed, when traces are on (the driver's
    /// span: this core creates none).
    trace_context: Option<fn() -> Option<String>>,
}

/// The header carrying a request's trace context (W3C `traceparent`) from the
/// dispatcher to the edge: added on the internal side only, removed from whatever comes
/// from outside (a client does not choose our traces' parents) and by the edge from
/// everything it sends on.
pub const TRACE_HEADER: &str = "X-Sipcluster-Trace";

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("instance", &self.cfg.instance)
            .field("edges", &self.edges.members().count())
            .field("sets", &self.sets.len())
            .finish()
    }
}

impl Relay {
    /// A relay with no targets yet.
    pub fn new(cfg: RelayConfig, key: TokenKey, metrics: Metrics) -> Relay {
        let relayed = [
            ("inbound", "request"),
            ("inbound", "response"),
            ("outbound", "request"),
            ("outbound", "response"),
        ]
        .map(|(direction, kind)| {
            metrics
                .relayed
                .get_or_create(&DirectionLabel { direction, kind })
                .clone()
        });
        Relay {
            hider: hiding::Hider::new(key.derive(b"topology hiding")),
            cfg,
            key,
            edges: Pool::new(EDGE_POOL, Algorithm::Hash),
            sets: Vec::new(),
            drains: HashMap::default(),
            next_slot: 1,
            failover: HashMap::default(),
            connecting: HashMap::default(),
            retired: VecDeque::new(),
            expiry: VecDeque::new(),
            out: VecDeque::new(),
            notices: VecDeque::new(),
            rejected_queued: 0,
            rejected_unreported: 0,
            metrics,
            draining: false,
            relayed,
            trace_context: None,
        }
    }

    /// Where the trace context of a request from a client comes from (the `traceparent`
    /// of the driver's current span), carried to the edge in [`TRACE_HEADER`].
    pub fn set_trace_context(&mut self, f: fn() -> Option<String>) {
        self.trace_context = Some(f);
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// The next thing to log.
    pub fn poll_notice(&mut self) -> Option<Notice> {
        let n = self.notices.pop_front();
        if matches!(n, Some(Notice::Rejected(_))) {
            self.rejected_queued -= 1;
        }
        n
    }

    /// The dispatcher itself is draining: its OPTIONS answers say 503 (load balancers
    /// and clients move away) while relaying goes on.
    pub fn set_self_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// A message from `side`.
    pub fn handle_message(
        &mut self,
        side: Side,
        msg: SipMessage,
        source: Target,
        flows: &impl FlowTable,
        now: Instant,
    ) {
        if msg.is_response() {
            self.response(side, &msg, source, now);
        } else {
            match side {
                Side::Public => self.public_request(&msg, source, flows, now),
                Side::Internal => self.internal_request(&msg, source, flows, now),
            }
        }
    }

    fn send(&mut self, side: Side, target: Target, bytes: Bytes, origin: TxnRef) {
        self.out.push_back(Transmit {
            side,
            target,
            bytes,
            parsed: None,
            origin,
        });
    }

    /// Send an edited copy, parsed by the editor as it wrote it.
    fn send_edited(&mut self, side: Side, target: Target, edited: Edited, origin: TxnRef) {
        self.out.push_back(Transmit {
            side,
            target,
            bytes: edited.bytes,
            parsed: edited.parsed,
            origin,
        });
    }

    fn reply(
        &mut self,
        side: Side,
        msg: &SipMessage,
        source: Target,
        status: u16,
        extra: &[(&str, String)],
    ) {
        if msg.method() == Some(Method::Ack) {
            return;
        }
        let Some(mut b) = ResponseBuilder::new(msg, status) else {
            return;
        };
        for (n, v) in extra {
            b = b.header(*n, v.clone().into_bytes());
        }
        // The response goes where the request came from (with rport semantics: the source).
        self.metrics.reply(status);
        self.send(side, source, b.build(), TxnRef::Stateless);
        // A draining dispatcher's 503 to keepalives is the drain working, not a refusal.
        let keepalive = self.draining && msg.method() == Some(Method::Options);
        if status >= 300 && !keepalive {
            self.note_rejected(msg, source, status);
        }
    }

    /// Queue a `Notice::Rejected`, at most [`REJECTED_QUEUE`] at a time.
    fn note_rejected(&mut self, msg: &SipMessage, source: Target, status: u16) {
        if self.rejected_queued >= REJECTED_QUEUE {
            self.rejected_unreported += 1;
            return;
        }
        let user = msg.from_user().unwrap_or_default().to_owned();
        self.rejected_queued += 1;
        self.notices.push_back(Notice::Rejected(Box::new(Rejected {
            status,
            method: msg
                .method()
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default(),
            call_id: msg.call_id().unwrap_or_default().to_owned(),
            user,
            source,
            unreported: std::mem::take(&mut self.rejected_unreported),
        })));
    }

    /// 503 + Retry-After: no target can take the request now.
    fn unavailable(&mut self, side: Side, msg: &SipMessage, source: Target) {
        let retry = self.cfg.retry_after.to_string();
        self.reply(side, msg, source, 503, &[("Retry-After", retry)]);
    }

    fn is_me(&self, uri: &sip_core::SipUri<'_>) -> bool {
        if let Some(user) = uri.user
            && user.starts_with(PREFIX)
        {
            return FlowToken::decode(&self.key, user).is_some();
        }
        let Some(ip) = uri.host.ip() else {
            return false;
        };
        let port = uri.port_or_default();
        self.cfg.public.is_me(ip, port) || self.cfg.internal.is_me(ip, port)
    }

    /// An OPTIONS for the dispatcher itself (a keepalive, a load balancer's check).
    fn for_me(&self, msg: &SipMessage, method: Method<'_>) -> bool {
        method == Method::Options
            && msg.routes().next().is_none()
            && matches!(msg.request_uri(), Ok(Uri::Sip(u)) if u.user.is_none() && self.is_me(&u))
    }

    /// Checks every relayed request needs; answers 400/483 itself. `None`: handled.
    fn precheck<'m>(
        &mut self,
        side: Side,
        msg: &'m SipMessage,
        source: Target,
    ) -> Option<(Method<'m>, Via<'m>, &'m str)> {
        let method = msg.method()?;
        let top = match msg.top_via() {
            Ok(top) => top,
            Err(e) => {
                // A Via that cannot be read still gets its 400 (RFC 4475 §3.1.2.1), where
                // the request came from; only an ACK (or no Via at all) gets nothing.
                match sip_core::error_reply(Some(msg), msg.as_bytes(), &e) {
                    Some(bytes) => {
                        let status = e.status();
                        self.metrics.reply(status);
                        self.send(side, source, bytes, TxnRef::Stateless);
                        self.note_rejected(msg, source, status);
                    }
                    None => self.metrics.drop("bad_via"),
                }
                return None;
            }
        };
        let (Ok(call_id), Ok(_)) = (msg.call_id(), msg.cseq()) else {
            self.reply(side, msg, source, 400, &[]);
            return None;
        };
        match msg.max_forwards() {
            Err(_) => {
                self.reply(side, msg, source, 400, &[]);
                None
            }
            Ok(Some(0)) if !self.for_me(msg, method) => {
                self.reply(side, msg, source, 483, &[]);
                None
            }
            _ => Some((method, top, call_id)),
        }
    }
}

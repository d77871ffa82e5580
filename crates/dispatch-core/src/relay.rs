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

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foldhash::HashMap;
use sip_core::fnv::Fnv1a;
use sip_core::{Editor, HeaderName, Method, ResponseBuilder, SipMessage, Uri, Via};
use sip_txn::{ClientTxnId, FlowId, Target, Transport, TxnRef};
use smallvec::SmallVec;

use crate::health::{HealthConfig, Probe, State};
use crate::metrics::{DirectionLabel, Metrics};
use crate::pool::{Algorithm, Pool, TargetSpec, dialog_key};
use crate::token::{FlowToken, PREFIX, TokenKey};

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
/// The URI parameter of our Record-Route URIs carrying the dialog token
/// ([`TokenKey::dialog_token`]), and the Via parameter that hands it to the edge when the
/// dispatcher popped that Route.
pub const DIALOG_PARAM: &str = "dlg";
/// The Route user-part prefix naming a destination set.
pub const SET_PREFIX: &str = "set-";

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
            _ => self.tcp.or(self.udp),
        };
        p.unwrap_or(5060)
    }

    fn is_me(&self, ip: IpAddr, port: u16) -> bool {
        (self.addresses.contains(&ip) || self.advertise == ip)
            && (self.udp == Some(port) || self.tcp == Some(port))
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
}

/// Liveness of the client connections (the public transports).
pub trait FlowTable {
    /// Is this connection still open?
    fn alive(&self, flow: FlowId) -> bool;
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
    /// Reported back with a send failure.
    pub origin: TxnRef,
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

struct Entry {
    request: Bytes,
    pool: usize,
    side: Side,
    key: u64,
    current: String,
    current_addr: SocketAddr,
    tried: SmallVec<[u32; 4]>,
    relayed: bool,
    invite: bool,
}

/// Per-member flags the admin API and probes set.
#[derive(Debug, Clone, Copy, Default)]
struct DrainFlags {
    admin: bool,
    reported: bool,
}

/// The relay.
pub struct Relay {
    cfg: RelayConfig,
    key: TokenKey,
    /// `pools[0]` is the edge pool; destination sets follow.
    pools: Vec<Pool>,
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
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("instance", &self.cfg.instance)
            .field("pools", &self.pools.len())
            .finish()
    }
}

/// The pool name of the edges.
pub const EDGE_POOL: &str = "edge";

fn sip_transport(v: &Via<'_>) -> Option<Transport> {
    Transport::from_token(v.transport.as_str())
}

/// How the client's request came in, from our own Via: its connection (`;scflow=<id>`),
/// if any, and the transport it spoke when that differs from what its Via names
/// (`;scflowt=UDP`).
#[derive(Clone, Copy)]
struct Arrival {
    flow: Option<FlowId>,
    transport: Option<Transport>,
}

fn arrival_of(ours: &Via<'_>) -> Arrival {
    let flow = ours
        .params
        .get(FLOW_PARAM)
        .flatten()
        .and_then(|v| std::str::from_utf8(v.raw()).ok())
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .map(FlowId);
    let transport = ours
        .params
        .get(FLOW_TRANSPORT_PARAM)
        .flatten()
        .and_then(|t| Transport::from_token(std::str::from_utf8(t.raw()).ok()?));
    Arrival { flow, transport }
}

/// Where a response goes for this Via: back the way the request came. A request that came
/// in on a connection is answered on that connection, and one that came by datagram by
/// datagram, whatever transport its Via names (§18.2.2: "the server transport uses the
/// same connection"; Kamailio and OpenSIPS do the same), so a client whose Via says UDP
/// but that spoke TCP still hears back, and the other way round.
fn via_target(v: &Via<'_>, arrival: Arrival) -> Option<Target> {
    Target::for_response(v, arrival.transport, arrival.flow)
}

/// Is this a dispatcher's Via (its relay branch)? An edge behind a dispatcher reads the
/// client's own Via, the one below, for where a request really came from.
pub fn is_dispatcher_via(v: &Via<'_>) -> bool {
    v.branch.is_some_and(|b| b.starts_with(RELAY_BRANCH))
}

/// What an edge may believe of a request a dispatcher relayed: the client's address as
/// the dispatcher saw it, and the dialog token of the Record-Route the dispatcher popped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed<'m> {
    /// The client's address.
    pub client: SocketAddr,
    /// The `dlg` token of the dispatcher's own Route the request came through.
    pub dialog: Option<&'m str>,
}

/// Read and verify the top Via as a dispatcher's. `None` when it is not one, or when its
/// signature fails (a look-alike written by whoever reached the edge directly): then
/// nothing in it is believed and the packet's source stands.
pub fn relayed_by_dispatcher<'m>(key: &TokenKey, top: &Via<'m>) -> Option<Relayed<'m>> {
    let branch = top.branch.filter(|b| b.starts_with(RELAY_BRANCH))?;
    let param = |name: &str| {
        top.params
            .get(name)
            .flatten()
            .and_then(|v| std::str::from_utf8(v.raw()).ok())
    };
    let client = key.verify_source(branch, param(SOURCE_PARAM)?)?;
    Some(Relayed {
        client,
        dialog: param(DIALOG_PARAM),
    })
}

/// A dispatcher's Via without the parameters meant for the edge only (`scsrc`, `dlg`),
/// for the copy an edge forwards: a callee that saw a signed client address could
/// otherwise put that Via on its own request to an edge. `None` when there is nothing to
/// remove.
pub fn without_edge_params(via_raw: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(via_raw).ok()?;
    let mut parts = text.split(';');
    let head = parts.next()?;
    let mut removed = false;
    let mut out = String::with_capacity(text.len());
    out.push_str(head);
    for p in parts {
        let name = p.split('=').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case(SOURCE_PARAM) || name.eq_ignore_ascii_case(DIALOG_PARAM) {
            removed = true;
        } else {
            out.push(';');
            out.push_str(p);
        }
    }
    removed.then(|| out.into_bytes())
}

/// The `dlg` parameter of a Route/Record-Route URI.
pub fn dialog_param<'a>(uri: &sip_core::SipUri<'a>) -> Option<&'a str> {
    uri.params.get(DIALOG_PARAM).flatten()
}

/// `<sip:...;lr>` with `;dlg=token` added inside the URI (before its `?headers` or the
/// closing bracket).
pub fn with_dialog_param(name_addr: &[u8], token: &str) -> Vec<u8> {
    let param = format!(";{DIALOG_PARAM}={token}");
    let end = name_addr
        .iter()
        .position(|&b| b == b'?')
        .or_else(|| name_addr.iter().rposition(|&b| b == b'>'))
        .unwrap_or(name_addr.len());
    let mut out = Vec::with_capacity(name_addr.len() + param.len());
    out.extend_from_slice(&name_addr[..end]);
    out.extend_from_slice(param.as_bytes());
    out.extend_from_slice(&name_addr[end..]);
    out
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
            cfg,
            key,
            pools: vec![Pool::new(EDGE_POOL, Algorithm::Hash)],
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
        }
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

    // --- targets -------------------------------------------------------------------------

    /// Replace the edge set (a discovery snapshot). New edges join after a probe;
    /// edges missing from the snapshot leave at once.
    pub fn set_edges(&mut self, specs: Vec<TargetSpec>, now: Instant) {
        self.set_pool_members(0, specs, now);
    }

    /// Replace the destination sets (from configuration).
    pub fn set_sets(&mut self, sets: Vec<(String, Algorithm, Vec<TargetSpec>)>, now: Instant) {
        let keep: Vec<String> = sets.iter().map(|s| s.0.clone()).collect();
        let mut i = 1;
        while i < self.pools.len() {
            if keep.contains(&self.pools[i].name) {
                i += 1;
            } else {
                self.set_pool_members(i, Vec::new(), now);
                self.pools.remove(i);
            }
        }
        for (name, alg, specs) in sets {
            let idx = match self.pools.iter().position(|p| p.name == name) {
                Some(i) => {
                    self.pools[i].algorithm = alg;
                    i
                }
                None => {
                    self.pools.push(Pool::new(&name, alg));
                    self.pools.len() - 1
                }
            };
            self.set_pool_members(idx, specs, now);
        }
        // Failover entries point at pools by index.
        self.failover.retain(|_, e| e.pool == 0);
    }

    fn set_pool_members(&mut self, idx: usize, specs: Vec<TargetSpec>, now: Instant) {
        let pool = &mut self.pools[idx];
        let gone: Vec<String> = pool
            .members()
            .filter(|m| !specs.iter().any(|s| s.id == m.spec.id))
            .map(|m| m.spec.id.clone())
            .collect();
        for id in gone {
            if let Some(m) = pool.remove(&id, &self.metrics) {
                self.drains.remove(&m.slot);
                if idx == 0 {
                    self.retired
                        .push_back((now + self.cfg.failover_window, m.spec.addr));
                }
            }
            self.notices.push_back(Notice::Removed {
                pool: pool.name.clone(),
                id,
            });
        }
        for spec in specs {
            let new = pool.get(&spec.id).is_none();
            let (id, addr) = (spec.id.clone(), spec.addr);
            let slot = &mut self.next_slot;
            pool.upsert(
                spec,
                || {
                    *slot += 1;
                    *slot
                },
                self.cfg.health,
                &self.metrics,
                now,
            );
            if new {
                self.notices.push_back(Notice::Added {
                    pool: pool.name.clone(),
                    id,
                    addr,
                });
            }
        }
    }

    /// Is some edge up (answering its probes)? Until then every new request gets 503.
    pub fn has_edge_up(&self) -> bool {
        self.pools[0]
            .members()
            .any(|m| m.health.state() == State::Up)
    }

    /// Every target of every pool.
    pub fn targets(&self) -> Vec<TargetInfo> {
        self.pools
            .iter()
            .flat_map(|p| {
                p.members().map(|m| TargetInfo {
                    pool: p.name.clone(),
                    algorithm: p.algorithm,
                    id: m.spec.id.clone(),
                    addr: m.spec.addr,
                    transport: m.spec.transport,
                    weight: m.weight(),
                    priority: m.spec.priority,
                    state: m.health.state(),
                    draining: m.health.is_draining(),
                    requests: m.metrics.requests.get(),
                })
            })
            .collect()
    }

    /// The pools: (name, algorithm, member count).
    pub fn pools(&self) -> Vec<(String, Algorithm, usize)> {
        self.pools
            .iter()
            .map(|p| (p.name.clone(), p.algorithm, p.members().count()))
            .collect()
    }

    fn pool_index(&self, pool: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == pool)
    }

    /// Set a target's weight (admin); false when unknown.
    pub fn set_weight(&mut self, pool: &str, id: &str, weight: u32) -> bool {
        match self.pool_index(pool) {
            Some(i) => self.pools[i].set_weight(id, weight),
            None => false,
        }
    }

    /// Drain or undrain a target (admin); false when unknown.
    pub fn set_draining(&mut self, pool: &str, id: &str, draining: bool) -> bool {
        let Some(i) = self.pool_index(pool) else {
            return false;
        };
        let Some(m) = self.pools[i].get_mut(id) else {
            return false;
        };
        let flags = self.drains.entry(m.slot).or_default();
        flags.admin = draining;
        m.health.set_draining(flags.admin || flags.reported);
        m.publish();
        true
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

    // --- messages ------------------------------------------------------------------------

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
                Side::Public => self.public_request(&msg, source, now),
                Side::Internal => self.internal_request(&msg, source, flows, now),
            }
        }
    }

    fn send(&mut self, side: Side, target: Target, bytes: Bytes, origin: TxnRef) {
        self.out.push_back(Transmit {
            side,
            target,
            bytes,
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

    /// The branch of our Via for a request: a function of the sender's transaction, so a
    /// retransmission, its CANCEL and the ACK of a failure all get the same one (§16.11).
    fn branch_hash(msg: &SipMessage, top: &Via<'_>) -> u64 {
        let mut h = Fnv1a::new();
        h.field(top.sent_by.host.to_string().as_bytes());
        h.field(&top.sent_by.port.unwrap_or(0).to_le_bytes());
        match top.branch.filter(|_| top.is_rfc3261_branch()) {
            Some(b) => {
                h.field(b.as_bytes());
            }
            None => {
                h.field(msg.request_uri_raw().unwrap_or_default());
                h.field(msg.from_tag().ok().flatten().unwrap_or_default().as_bytes());
                h.field(msg.call_id().unwrap_or_default().as_bytes());
                h.field(&msg.cseq().map(|c| c.seq.to_le_bytes()).unwrap_or_default());
                h.field(top.raw);
            }
        }
        crate::hashing::mix(h.finish())
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

    /// An OPTIONS for the dispatcher itself (a keepalive, a load balancer's check).
    fn for_me(&self, msg: &SipMessage, method: Method<'_>) -> bool {
        method == Method::Options
            && msg.routes().next().is_none()
            && matches!(msg.request_uri(), Ok(Uri::Sip(u)) if u.user.is_none() && self.is_me(&u))
    }

    fn public_request(&mut self, msg: &SipMessage, source: Target, now: Instant) {
        if self.cfg.deny_user_agents.denies_message(msg) {
            self.metrics.drop("scanner");
            return;
        }
        let Some((method, top, call_id)) = self.precheck(Side::Public, msg, source) else {
            return;
        };
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
            Some(e) if e.pool == 0 => {
                let retransmission =
                    msg.method() != Some(Method::Cancel) && msg.method() != Some(Method::Ack);
                let dead = !self.pools[0]
                    .get(&e.current)
                    .is_some_and(|m| m.alive() && (!retransmission || m.usable()));
                if dead && retransmission && !e.relayed {
                    if let Some(m) = self.pools[0].get(&e.current) {
                        m.metrics.failovers.inc();
                    }
                    self.fail_over(h);
                    return;
                }
                self.pools[0]
                    .get(&e.current)
                    .map(|m| (m.spec.id.clone(), m.spec.addr, m.spec.transport))
            }
            _ => None,
        };
        let chosen = remembered.or_else(|| {
            self.pools[0]
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
        if let Some(uri) = &stamp {
            if method == Method::Register {
                ed.add_path(uri.as_bytes());
            } else {
                ed.add_record_route(uri.as_bytes());
            }
        }
        let bytes = ed.finish();
        let target = Target {
            transport,
            addr,
            flow: None,
        };
        if let Some(m) = self.pools[0].get(&id) {
            m.metrics.requests.inc();
        }
        self.relayed[0].inc();
        let remember = matches!(method, Method::Invite | Method::Register)
            && self.pools[0].members().count() > 1
            && !self.failover.contains_key(&h);
        if remember {
            self.remember(
                h,
                bytes.clone(),
                0,
                Side::Internal,
                key,
                &id,
                addr,
                method,
                now,
            );
        }
        self.send(
            Side::Internal,
            target,
            bytes,
            TxnRef::Client(ClientTxnId(h)),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn remember(
        &mut self,
        h: u64,
        request: Bytes,
        pool: usize,
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
        let slot = self.pools[pool].get(id).map_or(0, |m| m.slot);
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

    /// The dialog token of a dialog-creating request (`None` without a From tag, which
    /// RFC 3261 makes mandatory: such a dialog gets no in-dialog requests through us).
    fn dialog_token(&self, msg: &SipMessage, call_id: &str) -> Option<String> {
        let tag = msg.from_tag().ok().flatten()?;
        Some(self.key.dialog_token(call_id, tag))
    }

    /// The Path / Record-Route URI naming the client at `source` on this dispatcher;
    /// a Record-Route carries the dialog's token.
    fn client_uri(&self, source: Target, nat: bool, dialog: Option<&str>) -> String {
        let edge_tcp = self.cfg.edge_transport != Transport::Udp;
        let token = FlowToken {
            instance: self.cfg.instance,
            internal: SocketAddr::new(
                self.cfg.internal.advertise,
                self.cfg.internal.port(self.cfg.edge_transport),
            ),
            internal_tcp: edge_tcp,
            client: source.addr,
            nat,
            flow: source.flow.map(|f| f.0),
        }
        .encode(&self.key);
        let p = &self.cfg.public;
        let dlg = dialog
            .map(|d| format!(";{DIALOG_PARAM}={d}"))
            .unwrap_or_default();
        match source.transport {
            Transport::Udp => format!(
                "<sip:{token}@{}:{}{dlg};lr>",
                p.host(),
                p.port(Transport::Udp)
            ),
            t => format!(
                "<sip:{token}@{}:{};transport={}{dlg};lr>",
                p.host(),
                p.port(t),
                t.as_str().to_ascii_lowercase()
            ),
        }
    }

    /// Move a remembered request to the next target in its pool's order. False when
    /// there is none left.
    fn fail_over(&mut self, h: u64) -> bool {
        let Some(e) = self.failover.get(&h) else {
            return false;
        };
        let (pool_idx, key) = (e.pool, e.key);
        let order = self.pools[pool_idx].order(key);
        let pool = &self.pools[pool_idx];
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

    fn internal_request(
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
        let (target, rr, pool) = if user.starts_with(PREFIX) {
            let Some(tok) = FlowToken::decode(&self.key, user) else {
                self.reply(Side::Internal, msg, source, 403, &[]);
                return;
            };
            let target = match tok.flow {
                Some(flow) if tok.instance == self.cfg.instance && flows.alive(FlowId(flow)) => {
                    Target {
                        transport: Transport::Tcp,
                        addr: tok.client,
                        flow: Some(FlowId(flow)),
                    }
                }
                // The connection is gone (or was on a dispatcher that restarted). A client
                // not behind a NAT listens at its Contact: open a new connection there
                // (RFC 3261 §18.1.1); behind a NAT nothing else reaches it (RFC 5626 §5.3).
                // The Request-URI only picks the port on the client's own host: a token
                // never carries a request to an address other than the client's.
                Some(_) => match ruri_addr(msg).filter(|a| !tok.nat && a.ip() == tok.client.ip()) {
                    Some(addr) => Target {
                        transport: Transport::Tcp,
                        addr,
                        flow: None,
                    },
                    None => {
                        self.reply(Side::Internal, msg, source, 430, &[]);
                        return;
                    }
                },
                // Not behind a NAT: the Request-URI (the Contact) is where it listens.
                None => Target {
                    transport: Transport::Udp,
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
            let Some(idx) = self.pools.iter().skip(1).position(|p| p.name == set) else {
                self.reply(Side::Internal, msg, source, 404, &[]);
                return;
            };
            let idx = idx + 1;
            let key = dialog_key(call_id);
            let Some(m) = self.pools[idx].pick(key, |m| m.usable()) else {
                self.unavailable(Side::Internal, msg, source);
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
            (target, rr, Some((idx, key, id)))
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
        let via = format!(
            "SIP/2.0/{} {}:{};branch={RELAY_BRANCH}{h:016x}",
            target.transport.as_str(),
            p.host(),
            p.port(target.transport)
        );
        let mut ed = Editor::new(msg);
        if ed.remove_top_route().is_err() {
            self.metrics.drop("bad_route");
            return;
        }
        ed.prepend_via(via.as_bytes());
        if ed.decrement_max_forwards().is_err() {
            self.reply(Side::Internal, msg, source, 483, &[]);
            return;
        }
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

    fn response(&mut self, side: Side, msg: &SipMessage, source: Target, now: Instant) {
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
        let bytes = ed.finish();
        self.relayed[if side == Side::Public { 1 } else { 3 }].inc();
        self.send(out_side, target, bytes, TxnRef::Stateless);
    }

    /// A current edge that stopped answering probes.
    fn edge_dead(&self, addr: SocketAddr) -> bool {
        self.pools[0]
            .members()
            .any(|m| m.spec.addr == addr && m.health.state() == State::Down)
    }

    /// Vias: ours (public), the dead edge's, ours (internal, from the client's request),
    /// the client's. Pop the first three and send to the client.
    fn relay_past_dead_edge(&mut self, msg: &SipMessage) {
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

    fn is_edge_ip(&self, ip: IpAddr) -> bool {
        self.pools[0].members().any(|m| m.spec.addr.ip() == ip)
            || self.retired.iter().any(|(_, a)| a.ip() == ip)
    }

    /// Failover bookkeeping for a response; false when the response is absorbed.
    fn track_response(
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
                if let Some(m) = self.pools[pool].get(&current) {
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
        let pools = if side == Side::Internal {
            0..1
        } else {
            1..self.pools.len()
        };
        for i in pools {
            let name = self.pools[i].name.clone();
            for m in self.pools[i].members_mut() {
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
            if let Some(m) = self.pools[e.pool].get(&e.current) {
                m.metrics.failovers.inc();
            }
            if self.fail_over(h) {
                return;
            }
        }
        self.metrics.drop("send_failed");
    }

    // --- probes and timers ---------------------------------------------------------------

    fn probe_response(&mut self, rest: &str, status: u16, now: Instant) {
        let Some((slot, seq)) = rest.split_once('.').and_then(|(a, b)| {
            Some((
                u32::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        }) else {
            self.metrics.drop("bad_probe_branch");
            return;
        };
        for p in &mut self.pools {
            let name = p.name.clone();
            for m in p.members_mut() {
                if m.slot != slot {
                    continue;
                }
                if status < 200 {
                    return;
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
            .pools
            .iter()
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
        for (i, p) in self.pools.iter_mut().enumerate() {
            let side = if i == 0 { Side::Internal } else { Side::Public };
            let listen = if i == 0 { &cfg.internal } else { &cfg.public };
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

/// The Request-URI's address when it is a SIP URI with an IP literal host.
fn ruri_addr(msg: &SipMessage) -> Option<SocketAddr> {
    let Ok(Uri::Sip(u)) = msg.request_uri() else {
        return None;
    };
    let ip = u.host.ip()?;
    Some(SocketAddr::new(ip, u.port_or_default()))
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

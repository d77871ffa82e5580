//! # sip-transport: the socket drivers of sipcluster
//!
//! The thin I/O layer around the sans-IO cores: UDP sockets, TCP and TLS listeners/connections
//! on tokio, framing with `sip_core::{parse_datagram, StreamDecoder}`, and a flows table so
//! that a message can go back over the very connection a request arrived on (RFC 3261
//! §18.2.2, RFC 5626 flows).
//!
//! * Inbound messages are parsed here, on the transport tasks, so that parsing runs in
//!   parallel with the proxy core; what cannot be parsed is answered (400/505/513 via
//!   `sip_core::error_reply`) or dropped right here and never reaches the core.
//! * Overload: the core's inbound queue is bounded. When it is full, a new request is
//!   answered `503 Service Unavailable` with `Retry-After` on the spot, statelessly, instead
//!   of queueing without bound; responses, ACKs and CANCELs wait for room instead, as they
//!   finish work already admitted.
//! * Outbound: [`Transports::send`] never blocks the caller. UDP goes out of the listening
//!   socket of the same address family (so replies come from port 5060 through NATs);
//!   TCP goes over the flow named in the target, over an existing connection to the same
//!   peer, or over a new connection opened in the background. Failures come back as
//!   [`Inbound::SendFailed`] so the transaction layer can act (§8.1.3.1).
//! * TCP connections close after an idle timeout; CRLFCRLF pings are answered with a CRLF
//!   pong (RFC 5626 §4.4.1).
//! * TCP is bounded against clients that hold connections (slowloris): a message must be
//!   complete within `tcp_message_timeout` of its first byte (the idle timeout restarts
//!   on every byte, so alone it lets one byte every few seconds hold a connection
//!   forever), our writes must be taken within the same time, and inbound connections are
//!   capped per instance, per source and by the process's descriptor limit (see
//!   [`DescriptorBudget`]); one beyond a cap is closed at once and counted. Failed
//!   accepts back off (`telemetry::AcceptBackoff`).
//! * WebSocket and secure WebSocket connections (`ws`, RFC 7118) are flows once upgraded,
//!   one SIP message per WebSocket message; they are only ever inbound.
//! * TLS connections ([`tls`]) are flows like TCP's once their handshake is done; the
//!   certificate is reloaded from its files on change, and a verified client
//!   certificate names the flow's peer ([`Transports::flow_peer`]).
//! * Two transports of one process may be linked ([`link_in_process`]): UDP between them
//!   then goes through each other's inbound queue, not a loopback socket.

pub mod admission;
pub mod blocklist;
mod capture;
pub mod flood;
mod limits;
mod link;
mod metrics;
mod tcp;
pub mod tls;
mod trust;
mod udp;
mod ws;
pub mod x509;

use foldhash::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::{Limits, Method, ResponseBuilder, SipMessage};
use sip_txn::{FlowId, Target, Transport, TxnRef};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use admission::AdmissionControl;
pub use blocklist::Blocklist;
pub use flood::FloodMeter;
pub use limits::DescriptorBudget;
pub use link::{LinkError, link_in_process};
pub use metrics::{ErrorLabel, TransportMetrics};
pub use tls::{ClientAuth, TlsConfig, TlsError, TlsSettings};
pub use ws::WebSocketSettings;

/// Transport settings.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// UDP addresses to listen on (port 0 picks a free port).
    pub udp: Vec<SocketAddr>,
    /// TCP addresses to listen on.
    pub tcp: Vec<SocketAddr>,
    /// TLS: its listeners and certificate; `None`: no TLS, in or out. The TCP settings
    /// (timeouts, caps) apply to TLS connections too.
    pub tls: Option<TlsConfig>,
    /// WebSocket addresses to listen on (RFC 7118, `ws:`).
    pub ws: Vec<SocketAddr>,
    /// Secure WebSocket addresses (`wss:`: TLS with `tls`'s certificate, which is then
    /// required).
    pub wss: Vec<SocketAddr>,
    /// `Origin`s a WebSocket upgrade may come from; empty: any.
    pub ws_allowed_origins: Vec<String>,
    /// Sources whose datagrams and connections are dropped on arrival (banned).
    pub blocklist: Option<Arc<Blocklist>>,
    /// Flood detection before parsing: a source over its rate is put on `blocklist` (one
    /// of its own when none is given).
    pub flood: Option<Arc<FloodMeter>>,
    /// Parser caps for every inbound message.
    pub limits: Limits,
    /// A TCP connection with no inbound bytes for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// A message must arrive complete (head and body) within this time of its first
    /// byte, and each message we send must be taken by the peer within it; otherwise the
    /// connection is closed.
    pub tcp_message_timeout: Duration,
    /// Inbound TCP connections held at once; one more is closed at once. Lowered to what
    /// the process's `RLIMIT_NOFILE` leaves ([`DescriptorBudget`]).
    pub tcp_max_connections: usize,
    /// Inbound TCP connections held at once from one source address (IPv6: one /64).
    pub tcp_max_connections_per_source: usize,
    /// Outbound TCP connection attempts give up after this long.
    pub tcp_connect_timeout: Duration,
    /// Seconds announced in `Retry-After` of the 503 sent when the core is saturated.
    pub overload_retry_after: u32,
    /// Where a copy of each message read or written goes (HEP siptrace); disabled by
    /// default. In-process links and the stateless replies of the readers (overload 503s,
    /// parse errors) are not on it.
    pub capture: hep::HepSink,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            udp: vec![SocketAddr::from(([0, 0, 0, 0], 5060))],
            tcp: vec![SocketAddr::from(([0, 0, 0, 0], 5060))],
            tls: None,
            ws: Vec::new(),
            wss: Vec::new(),
            ws_allowed_origins: Vec::new(),
            blocklist: None,
            flood: None,
            limits: Limits::default(),
            tcp_idle_timeout: Duration::from_secs(600),
            tcp_message_timeout: Duration::from_secs(10),
            tcp_max_connections: 10_000,
            tcp_max_connections_per_source: 64,
            tcp_connect_timeout: Duration::from_secs(5),
            overload_retry_after: 5,
            capture: hep::HepSink::disabled(),
        }
    }
}

/// What the transports hand to the core.
// Messages are nearly every item and carry their header index inline; boxing them would
// add an allocation per message to save a few channel-slot bytes on the rare other kinds.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Inbound {
    /// A parsed message.
    Message {
        /// The message (framing-valid; semantic validation is the core's job).
        msg: SipMessage,
        /// Where it came from (with the flow for connection-oriented transports).
        source: Target,
        /// When the bytes were read, for latency metrics.
        received_at: Instant,
    },
    /// A send could not be completed.
    SendFailed {
        /// The transaction the bytes belonged to.
        origin: TxnRef,
        /// Where they were going.
        target: Target,
    },
    /// A connection closed; bindings that point at it are stale.
    FlowClosed {
        /// The flow.
        flow: FlowId,
    },
}

/// Errors binding the listeners.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A socket could not be bound.
    #[error("cannot listen on {transport} {addr}: {source}")]
    Bind {
        /// UDP or TCP.
        transport: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The TLS certificate, key or CA files cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Log lines a peer can trigger on TCP, each kind rate-limited on its own.
pub(crate) struct TcpLogLimits {
    /// A connection refused at a cap.
    pub refused: telemetry::LogLimit,
    /// A connection closed on a deadline.
    pub timeout: telemetry::LogLimit,
    /// A TLS handshake that failed.
    pub handshake: telemetry::LogLimit,
}

pub(crate) struct FlowEntry {
    pub tx: mpsc::Sender<Bytes>,
    pub transport: Transport,
    pub remote: SocketAddr,
    /// Who the peer's verified TLS certificate says it is.
    pub peer: Option<Arc<str>>,
}

#[derive(Default)]
pub(crate) struct Flows {
    pub by_id: HashMap<FlowId, FlowEntry>,
    pub by_remote: HashMap<(Transport, SocketAddr), FlowId>,
    /// Outbound connections being opened: bytes queued until they are up.
    pub connecting: HashMap<(Transport, SocketAddr), Vec<(Bytes, TxnRef)>>,
}

pub(crate) struct Inner {
    pub config: TransportConfig,
    /// TLS, when configured.
    pub tls: Option<tls::Tls>,
    /// Each socket with its bound address (looked up per send; `local_addr` is a syscall).
    pub udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    pub flows: Mutex<Flows>,
    pub events: mpsc::Sender<Inbound>,
    pub next_flow: AtomicU64,
    pub metrics: TransportMetrics,
    pub conn_limits: Arc<limits::ConnLimits>,
    pub log_limits: TcpLogLimits,
    /// In-process peers (see [`link_in_process`]), set once at start.
    pub links: std::sync::OnceLock<Vec<link::Link>>,
    /// How deep the core's queue may be for a new request that is not favoured.
    pub gate: Arc<admission::Gate>,
}

/// Handle on the running transports (cheap to clone).
#[derive(Clone)]
pub struct Transports {
    pub(crate) inner: Arc<Inner>,
    udp_local: Vec<SocketAddr>,
    tcp_local: Vec<SocketAddr>,
    tls_local: Vec<SocketAddr>,
    ws_local: Vec<SocketAddr>,
    wss_local: Vec<SocketAddr>,
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transports")
            .field("udp", &self.udp_local)
            .field("tcp", &self.tcp_local)
            .field("tls", &self.tls_local)
            .field("ws", &self.ws_local)
            .field("wss", &self.wss_local)
            .finish()
    }
}

impl Transports {
    /// Bind every listener and start the reader tasks; inbound traffic goes to `events`.
    pub async fn bind(
        config: TransportConfig,
        events: mpsc::Sender<Inbound>,
        metrics: TransportMetrics,
    ) -> Result<(Transports, Vec<JoinHandle<()>>), TransportError> {
        let mut config = config;
        if config.flood.is_some() && config.blocklist.is_none() {
            // Where the meter's bans are kept.
            config.blocklist = Some(Arc::default());
        }
        let mut udp = Vec::new();
        let mut udp_local = Vec::new();
        for &addr in &config.udp {
            let s = udp::bind(addr).map_err(|source| TransportError::Bind {
                transport: "UDP",
                addr,
                source,
            })?;
            let local = s.local_addr().map_err(|source| TransportError::Bind {
                transport: "UDP",
                addr,
                source,
            })?;
            udp_local.push(local);
            udp.push((local, Arc::new(s)));
        }
        let mut listeners = Vec::new();
        let mut tcp_local = Vec::new();
        for &addr in &config.tcp {
            let l = tcp::listen(addr).map_err(|source| TransportError::Bind {
                transport: "TCP",
                addr,
                source,
            })?;
            tcp_local.push(l.local_addr().map_err(|source| TransportError::Bind {
                transport: "TCP",
                addr,
                source,
            })?);
            listeners.push(l);
        }
        let tls = config.tls.as_ref().map(tls::Tls::new).transpose()?;
        let mut tls_listeners = Vec::new();
        let mut tls_local = Vec::new();
        for &addr in config.tls.iter().flat_map(|t| &t.listen) {
            let bind_err = |source| TransportError::Bind {
                transport: "TLS",
                addr,
                source,
            };
            let l = tcp::listen(addr).map_err(bind_err)?;
            tls_local.push(l.local_addr().map_err(bind_err)?);
            tls_listeners.push(l);
        }
        if !config.wss.is_empty() && tls.is_none() {
            return Err(TransportError::Tls(TlsError::File {
                path: "tls.cert_file".into(),
                why: "secure WebSocket listeners need the TLS certificate".into(),
            }));
        }
        let mut ws_listeners = Vec::new();
        let (mut ws_local, mut wss_local) = (Vec::new(), Vec::new());
        for (secure, &addr) in config
            .ws
            .iter()
            .map(|a| (false, a))
            .chain(config.wss.iter().map(|a| (true, a)))
        {
            let bind_err = |source| TransportError::Bind {
                transport: if secure { "WSS" } else { "WS" },
                addr,
                source,
            };
            let l = tcp::listen(addr).map_err(bind_err)?;
            let local = l.local_addr().map_err(bind_err)?;
            if secure {
                &mut wss_local
            } else {
                &mut ws_local
            }
            .push(local);
            ws_listeners.push((secure, l));
        }
        let conn_limits = Arc::new(limits::ConnLimits::new(
            config.tcp_max_connections,
            config.tcp_max_connections_per_source,
        ));
        if !listeners.is_empty() || !tls_listeners.is_empty() || !ws_listeners.is_empty() {
            let budget = DescriptorBudget::of_process();
            metrics
                .tcp_max_connections
                .set(i64::try_from(conn_limits.max).unwrap_or(i64::MAX));
            // The one line that says what the caps are, and why when lower than asked.
            if conn_limits.max < config.tcp_max_connections {
                tracing::warn!(
                    configured = config.tcp_max_connections,
                    max_connections = conn_limits.max,
                    rlimit_nofile = budget.soft_limit,
                    reserve = budget.reserve,
                    "tcp_max_connections lowered to fit the descriptor limit (RLIMIT_NOFILE less a reserve for everything else); raise the limit (ulimit -n, LimitNOFILE) for more"
                );
            }
            tracing::info!(
                listeners = ?tcp_local,
                tls_listeners = ?tls_local,
                ws_listeners = ?ws_local,
                wss_listeners = ?wss_local,
                max_connections = conn_limits.max,
                max_per_source = conn_limits.max_per_source,
                message_timeout_ms = config.tcp_message_timeout.as_millis() as u64,
                rlimit_nofile = budget.soft_limit,
                "tcp connection limits"
            );
        }
        let inner = Arc::new(Inner {
            conn_limits,
            log_limits: TcpLogLimits {
                refused: telemetry::LogLimit::new(1, 5),
                timeout: telemetry::LogLimit::new(1, 5),
                handshake: telemetry::LogLimit::new(1, 5),
            },
            tls: tls.clone(),
            config,
            udp,
            flows: Mutex::new(Flows::default()),
            events,
            next_flow: AtomicU64::new(1),
            metrics,
            links: std::sync::OnceLock::new(),
            gate: Arc::default(),
        });
        let mut tasks = Vec::new();
        for (local, s) in &inner.udp {
            tasks.push(tokio::spawn(udp::reader(inner.clone(), *local, s.clone())));
        }
        for l in listeners {
            tasks.push(tokio::spawn(tcp::acceptor(inner.clone(), l)));
        }
        for (secure, l) in ws_listeners {
            let tls = if secure { tls.clone() } else { None };
            tasks.push(tokio::spawn(ws::acceptor(inner.clone(), tls, l)));
        }
        if let Some(tls) = tls {
            tls.publish_expiry(&inner.metrics);
            for l in tls_listeners {
                tasks.push(tokio::spawn(tls::acceptor(inner.clone(), tls.clone(), l)));
            }
            tasks.push(tokio::spawn(tls.watch(inner.clone())));
        }
        Ok((
            Transports {
                inner,
                udp_local,
                tcp_local,
                tls_local,
                ws_local,
                wss_local,
            },
            tasks,
        ))
    }

    /// The consumer's side of admission control ([`admission`]) for a standing wait of
    /// `target`: the core's driver feeds it each message's wait in the queue. `None` for
    /// a zero target (off): the queue's capacity is then the only limit.
    pub fn admission_control(&self, target: std::time::Duration) -> Option<AdmissionControl> {
        (!target.is_zero()).then(|| {
            AdmissionControl::new(
                self.inner.gate.clone(),
                self.inner.metrics.admission_depth.clone(),
                target,
            )
        })
    }

    /// The bound UDP addresses (actual ports when 0 was asked for).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_local
    }

    /// The bound TCP addresses.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_local
    }

    /// The bound TLS addresses.
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_local
    }

    /// The bound WebSocket addresses.
    pub fn ws_addrs(&self) -> &[SocketAddr] {
        &self.ws_local
    }

    /// The bound secure WebSocket addresses.
    pub fn wss_addrs(&self) -> &[SocketAddr] {
        &self.wss_local
    }

    /// Send `bytes` to `target` without waiting. A failure is reported later as
    /// [`Inbound::SendFailed`] with `origin`.
    pub fn send(&self, target: Target, bytes: Bytes, origin: TxnRef) {
        match target.transport {
            Transport::Udp => match link::link_for(&self.inner, target.addr) {
                Some(l) => link::send(&self.inner, l, bytes, origin),
                None => udp::send(&self.inner, target, bytes, origin),
            },
            // WebSocket flows are only ever inbound (a browser connects; nothing listens
            // on its side): `tcp::send` fails a target that names no open one.
            Transport::Tcp | Transport::Tls | Transport::Ws | Transport::Wss => {
                tcp::send(&self.inner, target, bytes, origin)
            }
        }
    }

    /// Send a message already parsed (an edited copy): like [`send`](Self::send), except
    /// that a peer linked in process takes it without parsing it again.
    pub fn send_message(&self, target: Target, msg: SipMessage, origin: TxnRef) {
        if target.transport == Transport::Udp
            && let Some(l) = link::link_for(&self.inner, target.addr)
        {
            return link::send_message(&self.inner, l, msg, origin);
        }
        self.send(target, msg.into_bytes(), origin);
    }

    /// Whether a flow is still open.
    pub fn flow_alive(&self, flow: FlowId) -> bool {
        self.inner
            .flows
            .lock()
            .map(|f| f.by_id.contains_key(&flow))
            .unwrap_or(false)
    }

    /// The identity the peer of an open flow proved with its TLS certificate (the first
    /// DNS name of a client certificate that verified), or `None`.
    pub fn flow_peer(&self, flow: FlowId) -> Option<Arc<str>> {
        let flows = self.inner.flows.lock().ok()?;
        flows.by_id.get(&flow)?.peer.clone()
    }

    /// Where an open flow leads (its transport and peer), or `None` once it closed.
    pub fn flow_target(&self, flow: FlowId) -> Option<Target> {
        let flows = self.inner.flows.lock().ok()?;
        let e = flows.by_id.get(&flow)?;
        Some(Target {
            transport: e.transport,
            addr: e.remote,
            flow: Some(flow),
        })
    }

    /// Number of open TCP connections.
    pub fn connection_count(&self) -> usize {
        self.inner.flows.lock().map(|f| f.by_id.len()).unwrap_or(0)
    }

    /// Inbound TCP connections counted against the caps now (their descriptors included
    /// until both halves are closed).
    pub fn inbound_connections(&self) -> usize {
        self.inner.conn_limits.open()
    }

    /// The inbound TCP connection cap in force.
    pub fn max_connections(&self) -> usize {
        self.inner.conn_limits.max
    }
}

/// The address of the interface that carries the default route, found without sending
/// anything (connecting a UDP socket only selects the route); loopback when there is none.
/// What a process listening on 0.0.0.0 writes into Via and Record-Route by default.
pub fn primary_address() -> std::net::IpAddr {
    let probe = || -> io::Result<std::net::IpAddr> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect("192.0.2.1:9")?;
        Ok(s.local_addr()?.ip())
    };
    probe().unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// Who a process listening on these sockets is: the address it advertises (`advertise`, else
/// the first specific listening address, else [`primary_address`]) and every address that
/// means it (loopback standing for the unspecified address), sorted.
pub fn own_addresses(
    advertise: Option<std::net::IpAddr>,
    udp: &[SocketAddr],
    tcp: &[SocketAddr],
) -> (std::net::IpAddr, Vec<std::net::IpAddr>) {
    let specific = udp
        .iter()
        .chain(tcp)
        .map(|a| a.ip())
        .find(|ip| !ip.is_unspecified());
    let advertise = advertise.or(specific).unwrap_or_else(primary_address);
    let mut addresses = vec![advertise];
    for a in udp.iter().chain(tcp) {
        addresses.push(if a.ip().is_unspecified() {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            a.ip()
        });
    }
    addresses.sort();
    addresses.dedup();
    (advertise, addresses)
}

pub(crate) fn report_failure(inner: &Arc<Inner>, origin: TxnRef, target: Target) {
    inner.metrics.send_failures.inc();
    let events = inner.events.clone();
    // The core may be busy; the failure must not be lost, and this must not block.
    tokio::spawn(async move {
        let _ = events.send(Inbound::SendFailed { origin, target }).await;
    });
}

pub(crate) fn next_flow(inner: &Inner) -> FlowId {
    FlowId(inner.next_flow.fetch_add(1, Ordering::Relaxed))
}

/// Hand a parsed message to the core, applying overload control to new requests.
///
/// Returns the stateless 503 to send back when the core's queue is full.
/// Is a datagram or stream message from `ip` dropped on arrival: its source banned, or
/// flooding now (which bans it)?
pub(crate) fn dropped_on_arrival(inner: &Inner, ip: std::net::IpAddr, now: Instant) -> bool {
    let c = &inner.config;
    let Some(b) = &c.blocklist else {
        return false;
    };
    if b.blocked(ip, now) {
        inner.metrics.blocked.inc();
        return true;
    }
    if let Some(f) = &c.flood
        && f.over(ip, now)
    {
        b.block(ip, now + f.ban());
        inner.metrics.blocked.inc();
        return true;
    }
    false
}

pub(crate) async fn deliver(
    inner: &Inner,
    msg: SipMessage,
    source: Target,
    received_at: Instant,
) -> Option<Bytes> {
    let new_request = matches!(msg.method(), Some(m) if m != Method::Ack && m != Method::Cancel);
    if new_request
        && inner.gate.closed(&inner.events)
        && let Some(reply) = admission::refuse(&msg, inner.config.overload_retry_after)
    {
        inner.metrics.overload_rejections.inc();
        return Some(reply);
    }
    if new_request {
        match inner.events.try_send(Inbound::Message {
            msg,
            source,
            received_at,
        }) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(Inbound::Message { msg, .. })) => {
                inner.metrics.overload_rejections.inc();
                overload_reply(&msg, inner.config.overload_retry_after)
            }
            Err(_) => None,
        }
    } else {
        let _ = inner
            .events
            .send(Inbound::Message {
                msg,
                source,
                received_at,
            })
            .await;
        None
    }
}

fn overload_reply(msg: &SipMessage, retry_after: u32) -> Option<Bytes> {
    // No full validation here: under overload the cheapest possible answer is the point.
    msg.header(sip_core::HeaderName::Via)?;
    Some(
        ResponseBuilder::new(msg, 503)?
            .header("Retry-After", retry_after.to_string().into_bytes())
            .build(),
    )
}

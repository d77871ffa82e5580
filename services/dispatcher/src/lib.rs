//! # dispatcher: sipcluster's public SIP entry point
//!
//! A stateless, SIP-aware load balancer in front of the edge proxies. It terminates the
//! clients' UDP and TCP (holding their connections, so an edge restart is invisible to
//! them), relays each request to the edge its Call-ID hashes to, and relays requests from
//! edges back to clients through the connection or NAT binding named by the signed flow
//! token in their Route. Health comes from OPTIONS probes; edges come from a
//! [`discovery::Discovery`] source (static, DNS, Kubernetes Pods).
//!
//! This crate is the thin I/O driver: two [`sip_transport::Transports`] (public and
//! internal), one task owning the sans-IO [`dispatch_core::Relay`], the discovery
//! task, the gRPC admin API ([`admin`]) and `/metrics`.

pub mod admin;
pub mod bans;
pub mod config;
pub mod discovery;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dispatch_core::{
    FlowTable, Listen, Metrics, Notice, Relay, RelayConfig, Side, TargetInfo, TargetSpec, TokenKey,
};
use prometheus_client::registry::Registry;
use sip_transport::{Inbound, TransportConfig, TransportMetrics, Transports};
use sip_txn::{FlowId, Transport};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use config::{ConfigError, DispatcherConfig};
use discovery::Discovery;

/// Errors starting or running the dispatcher.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A SIP listener could not be bound.
    #[error(transparent)]
    Transport(#[from] sip_transport::TransportError),
    /// The admin or metrics listener could not be bound.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Discovery cannot run (bad kubeconfig, no credentials, the watch ended).
    #[error("edge discovery: {0}")]
    Discovery(String),
    /// No randomness for the instance id.
    #[error("no randomness available: {0}")]
    Random(String),
    /// The HEP exporter could not start.
    #[error("hep: {0}")]
    Hep(#[from] hep::HepError),
    /// The admin API's token is missing or unusable.
    #[error("admin API: {0}")]
    Auth(#[from] grpc_auth::AuthError),
}

/// What the admin API asks the relay task.
#[derive(Debug)]
pub enum Command {
    /// Every target.
    Targets(oneshot::Sender<Vec<TargetInfo>>),
    /// Set a weight; replies with the target, `None` when unknown.
    SetWeight {
        /// Pool.
        pool: String,
        /// Target id.
        id: String,
        /// Weight.
        weight: u32,
        /// Reply.
        reply: oneshot::Sender<Option<TargetInfo>>,
    },
    /// Drain or undrain.
    Drain {
        /// Pool.
        pool: String,
        /// Target id.
        id: String,
        /// Drain?
        draining: bool,
        /// Reply.
        reply: oneshot::Sender<Option<TargetInfo>>,
    },
}

/// A running dispatcher.
pub struct DispatcherHandle {
    /// Public UDP addresses (actual ports).
    pub public_udp: Vec<SocketAddr>,
    /// Public TCP addresses.
    pub public_tcp: Vec<SocketAddr>,
    /// Public TLS addresses.
    pub public_tls: Vec<SocketAddr>,
    /// Public WebSocket addresses.
    pub public_ws: Vec<SocketAddr>,
    /// Public secure WebSocket addresses.
    pub public_wss: Vec<SocketAddr>,
    /// Internal UDP addresses.
    pub internal_udp: Vec<SocketAddr>,
    /// Internal TCP addresses.
    pub internal_tcp: Vec<SocketAddr>,
    /// Admin gRPC address.
    pub admin: Option<SocketAddr>,
    /// `/metrics` address.
    pub metrics: Option<SocketAddr>,
    /// Readiness.
    pub ready: Arc<AtomicBool>,
    /// Some edge is up. Not part of a standalone dispatcher's readiness (while every edge
    /// is down, clients should still hear its 503s rather than nothing); the all-in-one,
    /// whose one edge is its own, is not ready before that edge has joined.
    pub edge_up: Arc<AtomicBool>,
    metric_set: MetricSet,
    /// Sends the HEP copies; stops when the handle drops.
    _hep: hep::HepExporter,
    internal: Transports,
    commands: mpsc::Sender<Command>,
    draining: watch::Sender<bool>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    drain: Duration,
}

/// Every dispatcher metric: the relay's, both transports' and the admin API's refusals.
#[derive(Clone)]
struct MetricSet {
    relay: Metrics,
    public: TransportMetrics,
    internal: TransportMetrics,
    auth: grpc_auth::AuthMetrics,
    hep: hep::HepMetrics,
    bans: bans::BanMetrics,
}

impl MetricSet {
    /// `sipcluster_*` (the relay's, the admin API's refusals) and `sipcluster_dispatcher_*`
    /// (the transports', with `side`) into the process's root registry.
    fn register(&self, root: &mut Registry) {
        self.hep.register(root);
        let root = root.sub_registry_with_prefix("sipcluster");
        self.relay.register(root);
        self.auth.register(root);
        let d = root.sub_registry_with_prefix("dispatcher");
        self.bans.register(d);
        self.public
            .register(d.sub_registry_with_label(("side".into(), "public".into())));
        self.internal
            .register(d.sub_registry_with_label(("side".into(), "internal".into())));
    }
}

impl DispatcherHandle {
    /// The edge-facing transports (for an in-process link to an edge in the same
    /// process: see `sip_transport::link_in_process`).
    pub fn internal_transports(&self) -> &Transports {
        &self.internal
    }

    /// Add every dispatcher metric to `registry` (a process serving several roles on
    /// one `/metrics`), the admin API's `grpc_auth_rejected` included.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metric_set.register(registry);
    }

    /// The admin command channel (for in-process callers).
    pub fn commands(&self) -> mpsc::Sender<Command> {
        self.commands.clone()
    }

    /// Every target, as the admin API shows it.
    pub async fn targets(&self) -> Vec<TargetInfo> {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Targets(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// SIGTERM: not ready (load balancers and clients' OPTIONS see it), keep relaying and
    /// holding connections for the drain time, then stop.
    pub async fn drain_and_stop(self) {
        self.ready.store(false, Ordering::Relaxed);
        let _ = self.draining.send(true);
        tracing::info!(secs = self.drain.as_secs(), "draining");
        tokio::time::sleep(self.drain).await;
        self.stop().await;
    }

    /// Stop at once.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

fn listen(advertise: Option<IpAddr>, t: &Transports) -> Listen {
    let (udp, tcp, tls) = (t.udp_addrs(), t.tcp_addrs(), t.tls_addrs());
    let (ws, wss) = (t.ws_addrs(), t.wss_addrs());
    let streams: Vec<SocketAddr> = tcp
        .iter()
        .chain(tls)
        .chain(ws)
        .chain(wss)
        .copied()
        .collect();
    let (advertise, addresses) = sip_transport::own_addresses(advertise, udp, &streams);
    Listen {
        advertise,
        udp: udp.first().map(|a| a.port()),
        tcp: tcp.first().map(|a| a.port()),
        tls: tls.first().map(|a| a.port()),
        ws: ws.first().map(|a| a.port()),
        wss: wss.first().map(|a| a.port()),
        addresses,
    }
}

/// The discovery source the configuration names.
pub fn discovery_from(cfg: &DispatcherConfig) -> Result<Box<dyn Discovery>, DispatcherError> {
    let d = &cfg.discovery;
    let transport = cfg.edge_transport()?;
    Ok(match d.kind.as_str() {
        "dns" => Box::new(discovery::Dns {
            name: d.dns_name.clone().unwrap_or_default(),
            port: d.port,
            interval: Duration::from_secs(d.dns_interval_secs),
            transport,
        }),
        "kubernetes" => Box::new(discovery::Kubernetes {
            namespace: d.namespace.clone(),
            label_selector: d.label_selector.clone(),
            port: d.port,
            kubeconfig: d.kubeconfig.clone(),
            transport,
        }),
        _ => Box::new(discovery::Static {
            edges: d.edges.clone(),
            transport,
        }),
    })
}

/// Start the dispatcher described by `cfg`.
pub async fn start(cfg: DispatcherConfig) -> Result<DispatcherHandle, DispatcherError> {
    cfg.validate()?;
    let d = discovery_from(&cfg)?;
    start_with(cfg, d).await
}

struct PublicFlows<'a>(&'a Transports);

impl FlowTable for PublicFlows<'_> {
    fn alive(&self, flow: FlowId) -> bool {
        self.0.flow_alive(flow)
    }

    fn peer(&self, flow: FlowId) -> Option<Arc<str>> {
        self.0.flow_peer(flow)
    }
}

fn no_admin_token() -> DispatcherError {
    DispatcherError::Config(ConfigError::new(
        "api.admin_token_file",
        "required while the admin API is served (admin_listen): it refuses anonymous \
         calls. Give the admin token's file (SIPCLUSTER_ADMIN_TOKEN_FILE, \
         --admin-token-file), or turn the API off (--admin off)",
    ))
}

/// The admin API's accepted tokens, from `cfg.api` (`None` when the API is off); a
/// served API without a token is refused: it is never anonymous.
pub fn admin_tokens(cfg: &DispatcherConfig) -> Result<Option<grpc_auth::Tokens>, DispatcherError> {
    if cfg.admin_listen.is_none() {
        return Ok(None);
    }
    let Some(file) = &cfg.api.admin_token_file else {
        return Err(no_admin_token());
    };
    let token = grpc_auth::Token::from_file(file).map_err(|e| grpc_auth::AuthError::Setting {
        setting: "api.admin_token_file",
        problem: Box::new(e),
    })?;
    Ok(Some(grpc_auth::Tokens::admin(token)))
}

/// Everything [`start`] checks and reads before it binds: the settings, the admin API's
/// token file and, for Kubernetes discovery, the kubeconfig file (which the discovery
/// task reads when it starts). `sipcluster check-config dispatcher` runs this alone, so
/// that a configuration it passes does not fail at start for a file.
pub fn check_before_start(cfg: &DispatcherConfig) -> Result<(), DispatcherError> {
    cfg.validate()?;
    discovery_from(cfg)?;
    admin_tokens(cfg)?;
    bans::settings(&cfg.bans)?;
    if let Some(tls) = cfg.tls.config() {
        sip_transport::tls::check_files(&tls)
            .map_err(|e| DispatcherError::Transport(sip_transport::TransportError::Tls(e)))?;
    }
    if let ("kubernetes", Some(path)) = (cfg.discovery.kind.as_str(), &cfg.discovery.kubeconfig) {
        kube::config::Kubeconfig::read_from(path).map_err(|e| {
            ConfigError::new("discovery.kubeconfig", format!("{}: {e}", path.display()))
        })?;
    }
    Ok(())
}

/// Start with an explicit discovery source, the admin API's token read from `cfg.api`.
pub async fn start_with(
    cfg: DispatcherConfig,
    discovery: Box<dyn Discovery>,
) -> Result<DispatcherHandle, DispatcherError> {
    cfg.validate()?;
    let tokens = admin_tokens(&cfg)?;
    start_authenticated(
        cfg,
        discovery,
        tokens,
        grpc_auth::AuthMetrics::default(),
        None,
    )
    .await
}

/// Start with the admin API's accepted tokens given (a process that made them itself,
/// the all-in-one; `None` is refused while the API is served) and the counter of its
/// refusals, which [`DispatcherHandle::register_metrics`] registers. `public_blocklist`:
/// sources the public side drops on arrival, kept by someone else (the all-in-one's
/// edge); else this dispatcher keeps its own when `[bans]` names the location service.
pub async fn start_authenticated(
    cfg: DispatcherConfig,
    discovery: Box<dyn Discovery>,
    admin_tokens: Option<grpc_auth::Tokens>,
    auth_metrics: grpc_auth::AuthMetrics,
    public_blocklist: Option<Arc<sip_transport::Blocklist>>,
) -> Result<DispatcherHandle, DispatcherError> {
    cfg.validate()?;
    // Before anything binds: a served admin API without its token is a start error.
    let admin_auth = match (cfg.admin_listen, admin_tokens) {
        (Some(_), None) => return Err(no_admin_token()),
        (_, tokens) => {
            tokens.map(|t| grpc_auth::AuthLayer::new(&admin::POLICY, t, auth_metrics.clone()))
        }
    };
    let edge_transport = cfg.edge_transport()?;
    let ban_client = bans::client(&cfg.bans)?;
    let flood = bans::flood_meter(&cfg);
    let blocklist =
        public_blocklist.or_else(|| (ban_client.is_some() || flood.is_some()).then(Arc::default));
    let flood_meter = flood.as_ref().map(|(m, _)| m.clone());
    let secret = cfg.secret.clone().unwrap_or_default();
    let mut rnd = [0u8; 4];
    getrandom::fill(&mut rnd).map_err(|e| DispatcherError::Random(e.to_string()))?;
    let instance = u32::from_be_bytes(rnd);

    let hep_metrics = hep::HepMetrics::default();
    let hep = hep::HepExporter::start(&cfg.hep, &hep_metrics)?;
    let transport_cfg = |side: &config::SideConfig, public: bool| TransportConfig {
        udp: side.udp.clone(),
        tcp: side.tcp.clone(),
        // TLS and WebSocket face clients: the internal side (edges, inside the
        // cluster) has neither.
        tls: if public { cfg.tls.config() } else { None },
        // The edges ban (they see floods and failed logins); the public side drops what
        // they banned, when this dispatcher reads their list.
        blocklist: if public { blocklist.clone() } else { None },
        flood: if public { flood_meter.clone() } else { None },
        ws: if public {
            cfg.websocket.listen.clone()
        } else {
            Vec::new()
        },
        wss: if public {
            cfg.websocket.tls_listen.clone()
        } else {
            Vec::new()
        },
        ws_allowed_origins: cfg.websocket.allowed_origins.clone(),
        limits: sip_core::Limits::default(),
        tcp_idle_timeout: Duration::from_secs(cfg.tcp_idle_timeout_secs),
        tcp_message_timeout: Duration::from_secs(cfg.tcp_message_timeout_secs),
        tcp_max_connections: cfg.tcp_max_connections,
        tcp_max_connections_per_source: cfg.tcp_max_connections_per_source,
        tcp_connect_timeout: Duration::from_secs(5),
        overload_retry_after: cfg.retry_after_secs,
        capture: hep.sink(),
    };
    let (pub_m, int_m) = (TransportMetrics::default(), TransportMetrics::default());
    // Deep queues: the relay task is fast and stateless; a burst should wait, not be
    // refused (the transports answer 503 themselves when a queue is full).
    let (pub_tx, mut pub_rx) = mpsc::channel(16_384);
    let (int_tx, mut int_rx) = mpsc::channel(16_384);
    let (public, mut tasks) =
        Transports::bind(transport_cfg(&cfg.public, true), pub_tx, pub_m.clone()).await?;
    let (internal, t2) =
        Transports::bind(transport_cfg(&cfg.internal, false), int_tx, int_m.clone()).await?;
    tasks.extend(t2);

    let relay_cfg = RelayConfig {
        instance,
        public: listen(cfg.public.advertise, &public),
        internal: listen(cfg.internal.advertise, &internal),
        edge_transport,
        health: cfg.health_config(),
        failover_window: Duration::from_secs(cfg.failover_window_secs),
        max_failover_entries: cfg.max_failover_entries,
        retry_after: cfg.retry_after_secs,
        deny_user_agents: dispatch_core::UserAgentDeny::new(&cfg.deny_user_agents),
        topology_hiding: cfg.topology_hiding,
    };
    let metrics = Metrics::default();
    let mut relay = Relay::new(
        relay_cfg.clone(),
        TokenKey::new(secret.as_bytes()),
        metrics.clone(),
    );
    relay.set_sets(cfg.relay_sets(), Instant::now());
    if telemetry::trace::enabled() {
        // The request's context when it is traced, else "not traced": the edge follows.
        relay.set_trace_context(|| {
            Some(
                telemetry::trace::traceparent(&tracing::Span::current())
                    .unwrap_or_else(|| telemetry::trace::UNSAMPLED.to_owned()),
            )
        });
    }

    let metric_set = MetricSet {
        relay: metrics.clone(),
        public: pub_m.clone(),
        internal: int_m.clone(),
        auth: auth_metrics,
        hep: hep_metrics,
        bans: bans::BanMetrics::default(),
    };
    let mut registry = Registry::default();
    metric_set.register(&mut registry);
    if let Some((_, flood_bans)) = flood {
        tasks.push(tokio::spawn(bans::report_floods(
            flood_bans,
            ban_client.clone(),
            metric_set.bans.clone(),
        )));
    }
    if let Some(client) = ban_client {
        let every = Duration::from_millis(cfg.bans.sync_ms);
        let list = blocklist.clone().unwrap_or_default();
        tasks.push(tokio::spawn(bans::sync_loop(
            client,
            list,
            bans::allowed(&cfg),
            every,
            metric_set.bans.clone(),
        )));
    }
    let banned_gauge = metric_set.bans.banned_sources.clone();

    let ready = Arc::new(AtomicBool::new(true));
    let metrics_addr = match cfg.metrics_listen {
        Some(addr) => {
            let (bound, task) = telemetry::spawn_endpoint(addr, registry, ready.clone())
                .await
                .map_err(|source| DispatcherError::Bind {
                    what: "metrics",
                    addr,
                    source,
                })?;
            tasks.push(task);
            Some(bound)
        }
        None => None,
    };

    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(64);
    let admin_addr = match (cfg.admin_listen, admin_auth) {
        (Some(addr), Some(auth)) => {
            let (bound, task) = admin::serve(addr, cmd_tx.clone(), auth).await?;
            tasks.push(task);
            Some(bound)
        }
        _ => None,
    };

    let (edges_tx, mut edges_rx) = watch::channel::<Vec<TargetSpec>>(Vec::new());
    let source = discovery.name();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = discovery.run(edges_tx).await {
            tracing::error!(source, error = %e, "edge discovery stopped; the edge set stays as it was");
        }
    }));

    let (drain_tx, mut drain_rx) = watch::channel(false);
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let (pub_t, int_t) = (public.clone(), internal.clone());
    let edge_up = Arc::new(AtomicBool::new(false));
    let edge_up_w = edge_up.clone();
    tasks.push(tokio::spawn(async move {
        // Refusals are logged like the edge's: rate-limited, with a count of what was held.
        let rejections = telemetry::LogLimit::operator_lines();
        let flush = |relay: &mut Relay| {
            while let Some(t) = relay.poll_transmit() {
                let transports = match t.side {
                    Side::Public => &pub_t,
                    Side::Internal => &int_t,
                };
                match t.parsed {
                    Some(msg) => transports.send_message(t.target, msg, t.origin),
                    None => transports.send(t.target, t.bytes, t.origin),
                }
            }
            let mut changed = false;
            while let Some(n) = relay.poll_notice() {
                changed |= !matches!(n, Notice::Rejected(_));
                log_notice(n, &rejections);
            }
            if changed {
                edge_up_w.store(relay.has_edge_up(), Ordering::Relaxed);
            }
        };
        let handle = |relay: &mut Relay, side: Side, ev: Inbound| match ev {
            Inbound::Message { msg, source, .. }
                if side == Side::Public && msg.is_request() && telemetry::trace::sample() =>
            {
                // Where a request enters the cluster: its trace starts here (sampled by
                // the configured ratio), and goes on to the edge in the relayed request.
                let span = request_span(&msg);
                let _in = span.enter();
                relay.handle_message(side, msg, source, &PublicFlows(&pub_t), Instant::now());
            }
            Inbound::Message { msg, source, .. } => {
                relay.handle_message(side, msg, source, &PublicFlows(&pub_t), Instant::now())
            }
            Inbound::SendFailed { origin, target } => {
                relay.handle_send_failed(side, target, origin, Instant::now())
            }
            Inbound::FlowClosed { .. } => {}
        };
        let mut next_gauge = Instant::now();
        loop {
            let now = Instant::now();
            if now >= next_gauge {
                metrics.flows.set(pub_t.connection_count() as i64);
                if let Some(b) = &blocklist {
                    banned_gauge.set(i64::try_from(b.count(now)).unwrap_or(i64::MAX));
                }
                next_gauge = now + Duration::from_secs(1);
            }
            let deadline = relay.poll_timeout().map_or(next_gauge, |d| d.min(next_gauge));
            tokio::select! {
                Some(ev) = pub_rx.recv() => {
                    handle(&mut relay, Side::Public, ev);
                    // Drain what else is queued before looking at timers again.
                    for _ in 0..64 {
                        match pub_rx.try_recv() {
                            Ok(ev) => handle(&mut relay, Side::Public, ev),
                            Err(_) => break,
                        }
                    }
                }
                Some(ev) = int_rx.recv() => {
                    handle(&mut relay, Side::Internal, ev);
                    for _ in 0..64 {
                        match int_rx.try_recv() {
                            Ok(ev) => handle(&mut relay, Side::Internal, ev),
                            Err(_) => break,
                        }
                    }
                }
                Ok(()) = edges_rx.changed() => {
                    let set = edges_rx.borrow_and_update().clone();
                    relay.set_edges(set, Instant::now());
                    relay.handle_timeout(Instant::now());
                }
                Some(cmd) = cmd_rx.recv() => command(&mut relay, cmd),
                Ok(()) = drain_rx.changed() => {
                    let d = *drain_rx.borrow_and_update();
                    relay.set_self_draining(d);
                }
                _ = tokio::time::sleep_until(deadline.into()) => relay.handle_timeout(Instant::now()),
                _ = shutdown_rx.changed() => break,
            }
            flush(&mut relay);
        }
    }));

    tracing::info!(
        instance = format_args!("{instance:08x}"),
        public_udp = ?public.udp_addrs(),
        public_tcp = ?public.tcp_addrs(),
        internal_udp = ?internal.udp_addrs(),
        internal_tcp = ?internal.tcp_addrs(),
        discovery = source,
        "dispatcher started"
    );
    Ok(DispatcherHandle {
        public_udp: public.udp_addrs().to_vec(),
        public_tcp: public.tcp_addrs().to_vec(),
        public_tls: public.tls_addrs().to_vec(),
        public_ws: public.ws_addrs().to_vec(),
        public_wss: public.wss_addrs().to_vec(),
        internal_udp: internal.udp_addrs().to_vec(),
        internal_tcp: internal.tcp_addrs().to_vec(),
        admin: admin_addr,
        metrics: metrics_addr,
        ready,
        edge_up,
        metric_set,
        _hep: hep,
        internal,
        commands: cmd_tx,
        draining: drain_tx,
        shutdown: shutdown_tx,
        tasks,
        drain: Duration::from_secs(cfg.drain_secs),
    })
}

fn command(relay: &mut Relay, cmd: Command) {
    let find = |relay: &Relay, pool: &str, id: &str| {
        relay
            .targets()
            .into_iter()
            .find(|t| t.pool == pool && t.id == id)
    };
    match cmd {
        Command::Targets(reply) => {
            let _ = reply.send(relay.targets());
        }
        Command::SetWeight {
            pool,
            id,
            weight,
            reply,
        } => {
            let ok = relay.set_weight(&pool, &id, weight);
            if ok {
                tracing::info!(pool, id, weight, "weight set by admin");
            }
            let _ = reply.send(ok.then(|| find(relay, &pool, &id)).flatten());
        }
        Command::Drain {
            pool,
            id,
            draining,
            reply,
        } => {
            let ok = relay.set_draining(&pool, &id, draining);
            if ok {
                tracing::info!(pool, id, draining, "drain set by admin");
            }
            let _ = reply.send(ok.then(|| find(relay, &pool, &id)).flatten());
        }
    }
}

fn log_notice(n: Notice, rejections: &telemetry::LogLimit) {
    match n {
        Notice::Rejected(r) => {
            if !tracing::enabled!(tracing::Level::INFO) {
                return;
            }
            let Some(held) = rejections.allow(Instant::now()) else {
                return;
            };
            tracing::info!(
                call_id = %r.call_id,
                method = %r.method,
                code = r.status,
                reason = sip_core::default_reason(r.status),
                src = %r.source.addr,
                transport = r.source.transport.as_str(),
                user = %r.user,
                suppressed = held + r.unreported,
                "request rejected"
            );
        }
        Notice::State { pool, id, from, to } => {
            if to == dispatch_core::State::Down {
                tracing::warn!(pool, id, ?from, ?to, "target down");
            } else {
                tracing::info!(pool, id, ?from, ?to, "target state");
            }
        }
        Notice::Added { pool, id, addr } => {
            tracing::info!(pool, id, %addr, "target added (joins after a probe)")
        }
        Notice::Removed { pool, id } => tracing::info!(pool, id, "target removed"),
        Notice::Draining { pool, id, draining } => {
            tracing::info!(
                pool,
                id,
                draining,
                "target reports draining (503 to OPTIONS)"
            )
        }
    }
}

/// Transport names for the admin API.
pub fn transport_name(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
        Transport::Ws => "ws",
        Transport::Wss => "wss",
    }
}

/// The span of a request from a client, relayed to an edge.
fn request_span(msg: &sip_core::SipMessage) -> tracing::Span {
    let method = msg.method().map_or("?", |m| m.as_str());
    let span = tracing::info_span!(
        "sip.relay",
        otel.name = %format_args!("relay {method}"),
        otel.kind = "server",
        sip.method = method,
        sip.call_id = msg.call_id().unwrap_or_default(),
        trace_id = tracing::field::Empty,
    );
    telemetry::trace::record_trace_id(&span);
    span
}

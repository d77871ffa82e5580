//! `sipcluster dispatcher`: the public SIP entry point and load balancer in front of the
//! edges.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::process::{listen_flag, read_config, runtime, shutdown_signal};

/// The dispatcher's flags.
#[derive(Args, Clone)]
pub struct DispatcherArgs {
    /// TOML configuration file (see deploy/dispatcher.toml).
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Public listening address for UDP and TCP (replaces the configured ones).
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address clients reach (Via, Path, Record-Route).
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_PUBLIC_ADVERTISE")]
    pub advertise: Option<IpAddr>,
    /// Edge-facing UDP address (replaces the configured one).
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_INTERNAL")]
    pub internal: Option<SocketAddr>,
    /// Edge-facing address written into flow tokens (the pod IP).
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_INTERNAL_ADVERTISE")]
    pub internal_advertise: Option<IpAddr>,
    /// Static edges (comma-separated host:port; implies discovery kind static).
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_EDGES", value_delimiter = ',')]
    pub edges: Vec<SocketAddr>,
    /// Discovery: static, dns or kubernetes.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_DISCOVERY")]
    pub discovery: Option<String>,
    /// Kubernetes: kubeconfig file.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes: namespace of the edge pods.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_NAMESPACE")]
    pub namespace: Option<String>,
    /// Kubernetes: label selector of the edge pods.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_SELECTOR")]
    pub selector: Option<String>,
    /// DNS and Kubernetes discovery: the edges' SIP port.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_EDGE_PORT")]
    pub edge_port: Option<u16>,
    /// The cluster secret (the edges' nonce secret).
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Admin gRPC address, or `off` (default 127.0.0.1:50052).
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_ADMIN")]
    pub admin: Option<String>,
    #[command(flatten)]
    pub admin_token: crate::tokens::AdminTokenArg,
    /// Metrics/health HTTP address, or `off`.
    #[arg(long, env = "SIPCLUSTER_METRICS")]
    pub metrics: Option<String>,
    /// Health probe interval, ms.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_PROBE_INTERVAL_MS")]
    pub probe_interval_ms: Option<u64>,
    /// Health probe timeout, ms.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_PROBE_TIMEOUT_MS")]
    pub probe_timeout_ms: Option<u64>,
    /// Topology hiding: no internal address reaches a client (true/false).
    #[arg(long, env = "SIPCLUSTER_TOPOLOGY_HIDING")]
    pub topology_hiding: Option<bool>,
    /// The location service whose ban list this dispatcher applies (e.g.
    /// http://location:50051): banned sources are dropped on arrival. With the edge token.
    #[arg(long, env = "SIPCLUSTER_LOCATION")]
    pub location: Option<String>,
    #[command(flatten)]
    pub edge_token: crate::tokens::EdgeTokenArg,
    /// Messages a second from one source above which it is banned as a flood (0: off;
    /// default 2000). Put big trunks on bans.allow_list instead of raising it.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_FLOOD_RATE")]
    pub flood_rate: Option<u32>,
    /// Seconds of drain on SIGTERM.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_DRAIN_SECS")]
    pub drain_secs: Option<u64>,
    #[command(flatten)]
    pub log: crate::process::LogArgs,
    /// Worker threads (0 = one per CPU).
    #[arg(long, env = "SIPCLUSTER_WORKERS")]
    pub workers: Option<usize>,
    #[command(flatten)]
    pub hep: crate::cmd::HepArgs,
    #[command(flatten)]
    pub tls: crate::cmd::TlsArgs,
    #[command(flatten)]
    pub ws: crate::cmd::WsArgs,
}

/// The file's settings, then the environment's and the flags', validated.
pub fn build_dispatcher_config(a: &DispatcherArgs) -> Result<dispatcher::DispatcherConfig> {
    let mut cfg = read_config(a.config.as_deref(), dispatcher::DispatcherConfig::from_toml)?;
    if let Some(l) = a.listen {
        cfg.public.udp = vec![l];
        cfg.public.tcp = vec![l];
    }
    if a.advertise.is_some() {
        cfg.public.advertise = a.advertise;
    }
    if let Some(i) = a.internal {
        cfg.internal.udp = vec![i];
    }
    if a.internal_advertise.is_some() {
        cfg.internal.advertise = a.internal_advertise;
    }
    if !a.edges.is_empty() {
        cfg.discovery.edges = a.edges.clone();
        if a.discovery.is_none() {
            cfg.discovery.kind = "static".into();
        }
    }
    if let Some(d) = &a.discovery {
        cfg.discovery.kind = d.clone();
    }
    if a.kubeconfig.is_some() {
        cfg.discovery.kubeconfig = a.kubeconfig.clone();
    }
    if a.namespace.is_some() {
        cfg.discovery.namespace = a.namespace.clone();
    }
    if let Some(s) = &a.selector {
        cfg.discovery.label_selector = s.clone();
    }
    if let Some(p) = a.edge_port {
        cfg.discovery.port = p;
    }
    if a.secret.is_some() {
        cfg.secret = a.secret.clone();
    }
    if let Some(m) = &a.admin {
        cfg.admin_listen = listen_flag("admin", m)?;
    }
    a.admin_token.apply(&mut cfg.api.admin_token_file);
    if let Some(m) = &a.metrics {
        cfg.metrics_listen = listen_flag("metrics", m)?;
    }
    if let Some(v) = a.probe_interval_ms {
        cfg.health.interval_ms = v;
    }
    if let Some(v) = a.probe_timeout_ms {
        cfg.health.timeout_ms = v;
    }
    if let Some(v) = a.drain_secs {
        cfg.drain_secs = v;
    }
    if let Some(w) = a.workers {
        cfg.workers = w;
    }
    if let Some(h) = a.topology_hiding {
        cfg.topology_hiding = h;
    }
    if a.location.is_some() {
        cfg.bans.location_endpoint.clone_from(&a.location);
    }
    a.edge_token.apply(&mut cfg.bans.token_file);
    if let Some(r) = a.flood_rate {
        cfg.bans.flood_rate = r;
    }
    a.hep.apply(&mut cfg.hep)?;
    a.tls.apply(&mut cfg.tls);
    a.ws.apply(&mut cfg.websocket);
    cfg.validate()?;
    Ok(cfg)
}

/// Run until SIGTERM, then drain.
pub fn run(a: &DispatcherArgs) -> Result<()> {
    let cfg = build_dispatcher_config(a)?;
    let _trace = a.log.init("sipcluster-dispatcher")?;
    runtime(cfg.workers)?.block_on(async {
        let handle = dispatcher::start(cfg).await?;
        shutdown_signal().await;
        tracing::info!("stopping");
        handle.drain_and_stop().await;
        Ok(())
    })
}

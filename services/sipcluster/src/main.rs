//! `sipcluster`: the command that runs sipcluster.
//!
//! * `sipcluster all-in-one` runs every role in one process with embedded defaults: the
//!   edge proxy and registrar over the location service's in-memory backend, used in
//!   process (optionally also served over gRPC for the admin commands).
//! * `sipcluster edge` runs an edge proxy in cluster mode (registrations and credentials
//!   in the location service).
//! * `sipcluster location` runs the location service (memory, Redis or Redis Cluster).
//! * `sipcluster dispatcher` runs the dispatcher, the public SIP entry point in front of
//!   the edges; `sipcluster dispatcher-admin` drives its admin API.
//! * `sipcluster users add|remove|list` provisions subscribers through the location
//!   service; only HA1 digests leave the command, never the password.
//!
//! Settings come from a TOML file (`--config`), then `SIPCLUSTER_*` environment
//! variables, then flags; the result is validated before anything binds.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use edge::EdgeConfig;
use location::LocationConfig;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sipcluster", version, about = "A cloud-native SIP cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every role in one process (edge proxy + registrar, in-memory location).
    AllInOne(AllInOneArgs),
    /// Run an edge proxy against a location service (cluster mode).
    Edge(RunArgs),
    /// Run the location service.
    Location(LocationArgs),
    /// Provision subscribers through the location service.
    Users(UsersArgs),
    /// Run the dispatcher (public SIP entry point and load balancer in front of edges).
    Dispatcher(DispatcherArgs),
    /// Inspect and steer a dispatcher: targets, weights, drain, destination sets.
    DispatcherAdmin(AdminArgs),
    /// Run a media relay (RTP/RTCP forwarding between call legs, controlled over gRPC).
    MediaRelay(MediaRelayArgs),
    /// Validate an edge configuration (file + environment + flags) and print the result.
    CheckConfig(RunArgs),
}

#[derive(Args, Clone)]
struct AllInOneArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Also serve the in-process location service's gRPC API here (for `sipcluster
    /// users`), e.g. 127.0.0.1:50051.
    #[arg(long, env = "SIPCLUSTER_LOCATION_LISTEN")]
    location_listen: Option<SocketAddr>,
}

#[derive(Args, Clone)]
struct LocationArgs {
    /// TOML configuration file (see deploy/location.toml).
    #[arg(long, env = "SIPCLUSTER_LOCATION_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listening address.
    #[arg(long, env = "SIPCLUSTER_LOCATION_LISTEN")]
    listen: Option<SocketAddr>,
    /// Backend: memory, redis or redis-cluster.
    #[arg(long, env = "SIPCLUSTER_LOCATION_BACKEND")]
    backend: Option<String>,
    /// Redis URLs (comma-separated; the seed nodes for a cluster).
    #[arg(long, env = "SIPCLUSTER_REDIS", value_delimiter = ',')]
    redis: Vec<String>,
    /// Key prefix in Redis.
    #[arg(long, env = "SIPCLUSTER_REDIS_PREFIX")]
    prefix: Option<String>,
    /// Metrics/health HTTP address, or `off`.
    #[arg(long, env = "SIPCLUSTER_METRICS")]
    metrics: Option<String>,
    /// Users file (TOML) provisioned at start.
    #[arg(long, env = "SIPCLUSTER_USERS")]
    users: Option<PathBuf>,
    /// Log format: plain or json.
    #[arg(long, env = "SIPCLUSTER_LOG_FORMAT", default_value = "plain")]
    log_format: String,
    /// Log filter.
    #[arg(long, env = "SIPCLUSTER_LOG", default_value = "info")]
    log_level: String,
    /// Worker threads (0 = one per CPU).
    #[arg(long, env = "SIPCLUSTER_WORKERS", default_value_t = 0)]
    workers: usize,
}

#[derive(Args, Clone)]
struct MediaRelayArgs {
    /// TOML configuration file (see deploy/media-relay.toml).
    #[arg(long, env = "SIPCLUSTER_MEDIA_CONFIG")]
    config: Option<PathBuf>,
    /// This relay's name (the pod name).
    #[arg(long, env = "SIPCLUSTER_MEDIA_INSTANCE")]
    instance: Option<String>,
    /// gRPC control address.
    #[arg(long, env = "SIPCLUSTER_MEDIA_CONTROL")]
    control: Option<SocketAddr>,
    /// Address the IPv4 media sockets bind, or `off`.
    #[arg(long, env = "SIPCLUSTER_MEDIA_BIND_V4")]
    bind_v4: Option<String>,
    /// Address the IPv6 media sockets bind, or `off`.
    #[arg(long, env = "SIPCLUSTER_MEDIA_BIND_V6")]
    bind_v6: Option<String>,
    /// IPv4 address put into SDP (the pod's reachable address; Downward API status.podIP
    /// or a node's public address).
    #[arg(long, env = "SIPCLUSTER_MEDIA_ADVERTISE_V4")]
    advertise_v4: Option<std::net::IpAddr>,
    /// IPv6 address put into SDP.
    #[arg(long, env = "SIPCLUSTER_MEDIA_ADVERTISE_V6")]
    advertise_v6: Option<std::net::IpAddr>,
    /// Media port range, e.g. 30000-39999.
    #[arg(long, env = "SIPCLUSTER_MEDIA_PORTS")]
    ports: Option<String>,
    /// Seconds without media before a session is ended.
    #[arg(long, env = "SIPCLUSTER_MEDIA_IDLE_TIMEOUT")]
    idle_timeout_secs: Option<u64>,
    /// Seconds after which any session is ended.
    #[arg(long, env = "SIPCLUSTER_MEDIA_MAX_DURATION")]
    max_duration_secs: Option<u64>,
    /// Seconds a released port pair stays unused.
    #[arg(long, env = "SIPCLUSTER_MEDIA_QUARANTINE")]
    quarantine_secs: Option<u64>,
    /// Forwarding threads.
    #[arg(long, env = "SIPCLUSTER_MEDIA_WORKERS")]
    workers: Option<usize>,
    /// On SIGTERM, keep existing sessions at most this long.
    #[arg(long, env = "SIPCLUSTER_MEDIA_DRAIN_SECS")]
    drain_secs: Option<u64>,
    /// Microseconds a worker lets packets gather after each wake-up (0: none).
    #[arg(long, env = "SIPCLUSTER_MEDIA_COALESCE_US")]
    coalesce_us: Option<u64>,
    /// Metrics/health HTTP address, or `off`.
    #[arg(long, env = "SIPCLUSTER_METRICS")]
    metrics: Option<String>,
    /// Log format: plain or json.
    #[arg(long, env = "SIPCLUSTER_LOG_FORMAT", default_value = "plain")]
    log_format: String,
    /// Log filter.
    #[arg(long, env = "SIPCLUSTER_LOG", default_value = "info")]
    log_level: String,
}

#[derive(Args, Clone)]
struct DispatcherArgs {
    /// TOML configuration file (see deploy/dispatcher.toml).
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_CONFIG")]
    config: Option<PathBuf>,
    /// Public listening address for UDP and TCP (replaces the configured ones).
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_LISTEN")]
    listen: Option<SocketAddr>,
    /// Address clients reach (Via, Path, Record-Route).
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_PUBLIC_ADVERTISE")]
    advertise: Option<IpAddr>,
    /// Edge-facing UDP address (replaces the configured one).
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_INTERNAL")]
    internal: Option<SocketAddr>,
    /// Edge-facing address written into flow tokens (the pod IP).
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_INTERNAL_ADVERTISE")]
    internal_advertise: Option<IpAddr>,
    /// Static edges (comma-separated host:port; implies discovery kind static).
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_EDGES", value_delimiter = ',')]
    edges: Vec<SocketAddr>,
    /// Discovery: static, dns or kubernetes.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_DISCOVERY")]
    discovery: Option<String>,
    /// Kubernetes: kubeconfig file.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes: namespace of the edge pods.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_NAMESPACE")]
    namespace: Option<String>,
    /// Kubernetes: label selector of the edge pods.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_SELECTOR")]
    selector: Option<String>,
    /// DNS and Kubernetes discovery: the edges' SIP port.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_EDGE_PORT")]
    edge_port: Option<u16>,
    /// The cluster secret (the edges' nonce secret).
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Admin gRPC address, or `off`.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_ADMIN")]
    admin: Option<String>,
    /// Metrics/health HTTP address, or `off`.
    #[arg(long, env = "SIPCLUSTER_METRICS")]
    metrics: Option<String>,
    /// Health probe interval, ms.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_PROBE_INTERVAL_MS")]
    probe_interval_ms: Option<u64>,
    /// Health probe timeout, ms.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_PROBE_TIMEOUT_MS")]
    probe_timeout_ms: Option<u64>,
    /// Seconds of drain on SIGTERM.
    #[arg(long, env = "SIPCLUSTER_DISPATCHER_DRAIN_SECS")]
    drain_secs: Option<u64>,
    /// Log format: plain or json.
    #[arg(long, env = "SIPCLUSTER_LOG_FORMAT", default_value = "plain")]
    log_format: String,
    /// Log filter.
    #[arg(long, env = "SIPCLUSTER_LOG", default_value = "info")]
    log_level: String,
    /// Worker threads (0 = one per CPU).
    #[arg(long, env = "SIPCLUSTER_WORKERS")]
    workers: Option<usize>,
}

#[derive(Args, Clone)]
struct AdminArgs {
    /// The dispatcher's admin API.
    #[arg(
        long,
        env = "SIPCLUSTER_DISPATCHER_ADMIN_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    admin: String,
    #[command(subcommand)]
    action: AdminAction,
}

#[derive(Subcommand, Clone)]
enum AdminAction {
    /// List targets (edges and destination-set members) with their health.
    Targets {
        /// Only this pool (`edge` or a set name).
        #[arg(long)]
        pool: Option<String>,
    },
    /// List the destination sets and the edge pool.
    Sets,
    /// Set a target's weight.
    Weight {
        /// Target id (as `targets` shows it).
        id: String,
        /// New weight (0: no new dialogs).
        weight: u32,
        /// Pool (default: edge).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Stop giving a target new dialogs.
    Drain {
        /// Target id.
        id: String,
        /// Pool (default: edge).
        #[arg(long)]
        pool: Option<String>,
    },
    /// Undo `drain`.
    Undrain {
        /// Target id.
        id: String,
        /// Pool (default: edge).
        #[arg(long)]
        pool: Option<String>,
    },
}

#[derive(Args, Clone)]
struct UsersArgs {
    /// The location service.
    #[arg(
        long,
        env = "SIPCLUSTER_LOCATION",
        default_value = "http://127.0.0.1:50051"
    )]
    location: String,
    #[command(subcommand)]
    action: UsersAction,
}

#[derive(Subcommand, Clone)]
enum UsersAction {
    /// Add or replace a user. The password is read from stdin (first line) unless HA1s are
    /// given; only its HA1 digests are sent.
    Add {
        /// Username.
        username: String,
        /// Realm (the SIP domain).
        #[arg(long)]
        realm: String,
        /// Precomputed MD5 HA1 (hex) instead of a password.
        #[arg(long)]
        ha1_md5: Option<String>,
        /// Precomputed SHA-256 HA1 (hex) instead of a password.
        #[arg(long)]
        ha1_sha256: Option<String>,
    },
    /// Remove a user.
    Remove {
        /// Username.
        username: String,
        /// Realm.
        #[arg(long)]
        realm: String,
    },
    /// List the users of a realm.
    List {
        /// Realm.
        #[arg(long)]
        realm: String,
    },
}

#[derive(Args, Clone)]
struct RunArgs {
    /// TOML configuration file (see deploy/all-in-one/sipcluster.toml).
    #[arg(long, env = "SIPCLUSTER_CONFIG")]
    config: Option<PathBuf>,
    /// Listen on this address for both UDP and TCP (e.g. 0.0.0.0:5060).
    #[arg(long, env = "SIPCLUSTER_LISTEN")]
    listen: Option<SocketAddr>,
    /// UDP listening addresses (repeatable; replaces the configured ones).
    #[arg(long, env = "SIPCLUSTER_UDP", value_delimiter = ',')]
    udp: Vec<SocketAddr>,
    /// TCP listening addresses (repeatable; replaces the configured ones).
    #[arg(long, env = "SIPCLUSTER_TCP", value_delimiter = ',')]
    tcp: Vec<SocketAddr>,
    /// Address written into Via and Record-Route.
    #[arg(long, env = "SIPCLUSTER_ADVERTISE")]
    advertise: Option<IpAddr>,
    /// Local SIP domains (comma-separated; the first is the default).
    #[arg(long = "domain", env = "SIPCLUSTER_DOMAINS", value_delimiter = ',')]
    domains: Vec<String>,
    /// Metrics/health HTTP address, or `off`.
    #[arg(long, env = "SIPCLUSTER_METRICS")]
    metrics: Option<String>,
    /// Users file (TOML).
    #[arg(long, env = "SIPCLUSTER_USERS")]
    users: Option<PathBuf>,
    /// Nonce secret shared by all edges.
    #[arg(long, env = "SIPCLUSTER_NONCE_SECRET", hide_env_values = true)]
    nonce_secret: Option<String>,
    /// Disable digest authentication (REGISTER and calls).
    #[arg(long, env = "SIPCLUSTER_NO_AUTH")]
    no_auth: bool,
    /// Do not Record-Route (edges behind a dispatcher: its Record-Route is enough, and
    /// any edge then takes in-dialog requests).
    #[arg(long, env = "SIPCLUSTER_NO_RECORD_ROUTE")]
    no_record_route: bool,
    /// Seconds of drain on SIGTERM (OPTIONS answered 503 meanwhile).
    #[arg(long, env = "SIPCLUSTER_DRAIN_SECS")]
    drain_secs: Option<u64>,
    /// Media relay control URLs (comma-separated), e.g. http://media-relay:50053: anchor
    /// calls' media there.
    #[arg(long, env = "SIPCLUSTER_MEDIA_RELAYS", value_delimiter = ',')]
    media_relay: Vec<String>,
    /// When to anchor media: always, nat (the offerer is behind a NAT) or never.
    #[arg(long, env = "SIPCLUSTER_ANCHOR")]
    anchor: Option<String>,
    /// Log format: plain or json.
    #[arg(long, env = "SIPCLUSTER_LOG_FORMAT")]
    log_format: Option<String>,
    /// Log filter, e.g. info or edge=debug.
    #[arg(long, env = "SIPCLUSTER_LOG")]
    log_level: Option<String>,
    /// Worker threads (0 = one per CPU).
    #[arg(long, env = "SIPCLUSTER_WORKERS")]
    workers: Option<usize>,
    /// Location service endpoint (cluster mode), e.g. http://location:50051.
    #[arg(long, env = "SIPCLUSTER_LOCATION")]
    location: Option<String>,
}

/// The configuration file's settings, or the defaults without a file.
fn read_config<T: Default, E: std::error::Error + Send + Sync + 'static>(
    path: Option<&std::path::Path>,
    parse: fn(&str) -> Result<T, E>,
) -> Result<T> {
    let Some(p) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    parse(&text).with_context(|| format!("in {}", p.display()))
}

fn build_config(a: &RunArgs) -> Result<EdgeConfig> {
    let mut cfg = read_config(a.config.as_deref(), EdgeConfig::from_toml)?;
    if let Some(l) = a.listen {
        cfg.sip.udp = vec![l];
        cfg.sip.tcp = vec![l];
    }
    if !a.udp.is_empty() {
        cfg.sip.udp = a.udp.clone();
    }
    if !a.tcp.is_empty() {
        cfg.sip.tcp = a.tcp.clone();
    }
    if a.advertise.is_some() {
        cfg.sip.advertise = a.advertise;
    }
    if !a.domains.is_empty() {
        cfg.sip.domains = a.domains.clone();
    }
    if let Some(m) = &a.metrics {
        cfg.metrics.listen = parse_metrics(m)?;
    }
    if a.users.is_some() {
        cfg.auth.users_file = a.users.clone();
    }
    if a.nonce_secret.is_some() {
        cfg.auth.nonce_secret = a.nonce_secret.clone();
    }
    if a.no_auth {
        cfg.auth.register = false;
        cfg.auth.invite = false;
    }
    if a.no_record_route {
        cfg.sip.record_route = false;
    }
    if let Some(d) = a.drain_secs {
        cfg.runtime.drain_secs = d;
    }
    if !a.media_relay.is_empty() {
        cfg.media.relays = a.media_relay.clone();
    }
    if let Some(p) = &a.anchor {
        cfg.media.anchor = match p.as_str() {
            "always" => edge::config::Anchor::Always,
            "nat" => edge::config::Anchor::Nat,
            "never" => edge::config::Anchor::Never,
            other => anyhow::bail!("--anchor: always, nat or never, not {other:?}"),
        };
    }
    if let Some(f) = &a.log_format {
        cfg.log.format = f.clone();
    }
    if let Some(l) = &a.log_level {
        cfg.log.level = l.clone();
    }
    if let Some(w) = a.workers {
        cfg.runtime.workers = w;
    }
    if a.location.is_some() {
        cfg.location.endpoint = a.location.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

fn build_location_config(a: &LocationArgs) -> Result<LocationConfig> {
    let mut cfg = read_config(a.config.as_deref(), LocationConfig::from_toml)?;
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    if let Some(b) = &a.backend {
        cfg.backend.kind = b.clone();
    }
    if !a.redis.is_empty() {
        cfg.backend.urls = a.redis.clone();
        if a.backend.is_none() && cfg.backend.kind == "memory" {
            cfg.backend.kind = if a.redis.len() > 1 {
                "redis-cluster".into()
            } else {
                "redis".into()
            };
        }
    }
    if let Some(p) = &a.prefix {
        cfg.backend.prefix = p.clone();
    }
    if let Some(m) = &a.metrics {
        cfg.metrics_listen = parse_metrics(m)?;
    }
    if a.users.is_some() {
        cfg.users_file = a.users.clone();
    }
    cfg.validate()?;
    Ok(cfg)
}

fn build_media_relay_config(a: &MediaRelayArgs) -> Result<media_relay::MediaRelayConfig> {
    let mut cfg = read_config(
        a.config.as_deref(),
        media_relay::MediaRelayConfig::from_toml,
    )?;
    let bind = |v: &str, what: &str| -> Result<Option<std::net::IpAddr>> {
        if v == "off" {
            return Ok(None);
        }
        Ok(Some(v.parse().map_err(|_| {
            anyhow::anyhow!("--{what}: an IP address or `off`, not {v:?}")
        })?))
    };
    if let Some(i) = &a.instance {
        cfg.instance = i.clone();
    }
    if let Some(c) = a.control {
        cfg.control_listen = c;
    }
    if let Some(b) = &a.bind_v4 {
        cfg.bind_v4 = bind(b, "bind-v4")?;
    }
    if let Some(b) = &a.bind_v6 {
        cfg.bind_v6 = bind(b, "bind-v6")?;
    }
    if a.advertise_v4.is_some() {
        cfg.advertise_v4 = a.advertise_v4;
    }
    if a.advertise_v6.is_some() {
        cfg.advertise_v6 = a.advertise_v6;
    }
    if let Some(r) = &a.ports {
        let (lo, hi) = r
            .split_once('-')
            .and_then(|(l, h)| Some((l.trim().parse().ok()?, h.trim().parse().ok()?)))
            .ok_or_else(|| anyhow::anyhow!("--ports: MIN-MAX, e.g. 30000-39999, not {r:?}"))?;
        (cfg.port_min, cfg.port_max) = (lo, hi);
    }
    if let Some(v) = a.idle_timeout_secs {
        cfg.idle_timeout_secs = v;
    }
    if let Some(v) = a.max_duration_secs {
        cfg.max_duration_secs = v;
    }
    if let Some(v) = a.quarantine_secs {
        cfg.quarantine_secs = v;
    }
    if let Some(v) = a.workers {
        cfg.workers = v;
    }
    if let Some(v) = a.drain_secs {
        cfg.drain_secs = v;
    }
    if let Some(v) = a.coalesce_us {
        cfg.coalesce_us = v;
    }
    if let Some(m) = &a.metrics {
        cfg.metrics_listen = parse_metrics(m)?;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn build_dispatcher_config(a: &DispatcherArgs) -> Result<dispatcher::DispatcherConfig> {
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
        cfg.admin_listen = parse_metrics(m).context("--admin")?;
    }
    if let Some(m) = &a.metrics {
        cfg.metrics_listen = parse_metrics(m)?;
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
    cfg.validate()?;
    Ok(cfg)
}

async fn dispatcher_admin(a: AdminArgs) -> Result<()> {
    use sipcluster_proto::dispatcher::v1 as pb;
    let mut client = pb::dispatcher_admin_client::DispatcherAdminClient::connect(a.admin.clone())
        .await
        .with_context(|| format!("connecting to the dispatcher admin API at {}", a.admin))?;
    let health = |h: i32| match pb::Health::try_from(h) {
        Ok(pb::Health::Up) => "up",
        Ok(pb::Health::Down) => "down",
        Ok(pb::Health::Joining) => "joining",
        _ => "?",
    };
    let print = |t: &pb::Target| {
        println!(
            "{:<10} {:<28} {:<24} {:<4} weight={:<4} prio={:<3} {:<8}{} requests={}",
            t.pool,
            t.id,
            t.address,
            t.transport,
            t.weight,
            t.priority,
            health(t.health),
            if t.draining { " draining" } else { "" },
            t.requests
        )
    };
    let drain = matches!(a.action, AdminAction::Drain { .. });
    match a.action {
        AdminAction::Targets { pool } => {
            let r = client
                .list_targets(pb::ListTargetsRequest {
                    pool: pool.unwrap_or_default(),
                })
                .await?
                .into_inner();
            for t in &r.targets {
                print(t);
            }
        }
        AdminAction::Sets => {
            for s in client
                .list_sets(pb::ListSetsRequest {})
                .await?
                .into_inner()
                .sets
            {
                println!(
                    "{:<16} {:<12} targets={} up={}",
                    s.name, s.algorithm, s.targets, s.up
                );
            }
        }
        AdminAction::Weight { id, weight, pool } => {
            let r = client
                .set_weight(pb::SetWeightRequest {
                    pool: pool.unwrap_or_default(),
                    id,
                    weight,
                })
                .await?
                .into_inner();
            if let Some(t) = &r.target {
                print(t);
            }
        }
        AdminAction::Drain { id, pool } | AdminAction::Undrain { id, pool } => {
            let req = pb::DrainRequest {
                pool: pool.unwrap_or_default(),
                id,
            };
            let r = if drain {
                client.drain(req).await?
            } else {
                client.undrain(req).await?
            }
            .into_inner();
            if let Some(t) = &r.target {
                print(t);
            }
        }
    }
    Ok(())
}

fn parse_metrics(m: &str) -> Result<Option<SocketAddr>> {
    if m == "off" {
        return Ok(None);
    }
    Ok(Some(m.parse().with_context(|| {
        format!("--metrics {m:?}: expected ADDR:PORT or off")
    })?))
}

fn init_logging(level: &str, format: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("log.level {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn runtime(workers: usize) -> Result<tokio::runtime::Runtime> {
    // The runtime is built from the configuration, so it cannot be `#[tokio::main]`.
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if workers > 0 {
        rt.worker_threads(workers);
    }
    rt.build().context("starting the runtime")
}

async fn all_in_one(cfg: EdgeConfig, location_listen: Option<SocketAddr>) -> Result<()> {
    let users = edge::load_users(&cfg)?.into_inner();
    let r = &cfg.registrar;
    let policy = sip_registrar::Policy {
        default_expires: r.default_expires,
        min_expires: r.min_expires,
        max_expires: r.max_expires,
        max_contacts: r.max_contacts,
    };
    let backend: std::sync::Arc<dyn location::Backend> =
        std::sync::Arc::new(location::MemoryBackend::new(policy, users));
    let loc = match location_listen {
        Some(listen) => {
            let lcfg = LocationConfig {
                listen,
                registrar: policy,
                metrics_listen: None,
                ..LocationConfig::default()
            };
            Some(location::start_with(lcfg, backend.clone()).await?)
        }
        None => None,
    };
    let store = std::sync::Arc::new(location::InProcess(backend));

    // The same path as a cluster: the dispatcher takes the public sockets and relays to
    // an edge on an internal loopback socket. They share the flow-token secret.
    let secret = match &cfg.auth.nonce_secret {
        Some(s) => s.clone(),
        None => random_secret()?,
    };
    let mut ecfg = cfg.clone();
    ecfg.sip.udp = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    ecfg.sip.tcp = Vec::new();
    ecfg.sip.advertise = Some(IpAddr::from([127, 0, 0, 1]));
    ecfg.sip.record_route = false;
    // Requests for the public address are for this edge (REGISTER sip:<public>, ...).
    let public = edge::local::Local::new(cfg.sip.advertise, &cfg.sip.udp, &cfg.sip.tcp, &[]);
    let ports: Vec<u16> = cfg
        .sip
        .udp
        .iter()
        .chain(&cfg.sip.tcp)
        .map(|a| a.port())
        .collect();
    ecfg.sip.aliases = public
        .addresses
        .iter()
        .flat_map(|ip| ports.iter().map(move |p| SocketAddr::new(*ip, *p)))
        .collect();
    ecfg.auth.nonce_secret = Some(secret.clone());
    ecfg.metrics.listen = None;
    // The edge answers requests for the public address as its own (the default domain).
    let edge = edge::start_with(ecfg, store.clone(), store).await?;
    let dcfg = dispatcher::DispatcherConfig {
        public: dispatcher::config::SideConfig {
            udp: cfg.sip.udp.clone(),
            tcp: cfg.sip.tcp.clone(),
            advertise: cfg.sip.advertise,
        },
        internal: dispatcher::config::SideConfig {
            udp: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            tcp: Vec::new(),
            advertise: Some(IpAddr::from([127, 0, 0, 1])),
        },
        secret: Some(secret),
        discovery: dispatcher::config::DiscoveryConfig {
            kind: "static".into(),
            edges: edge.udp.clone(),
            ..Default::default()
        },
        tcp_idle_timeout_secs: cfg.limits.tcp_idle_timeout_secs,
        retry_after_secs: cfg.limits.overload_retry_after,
        admin_listen: None,
        metrics_listen: None,
        drain_secs: cfg.runtime.drain_secs,
        ..Default::default()
    };
    let disp = dispatcher::start(dcfg).await?;
    let metrics_task = match cfg.metrics.listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics listener {addr}"))?;
            let mut registry = edge.registry();
            disp.register_metrics(&mut registry);
            let ready = edge.ready.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = telemetry::serve(l, registry, ready).await {
                    tracing::error!(error = %e, "metrics endpoint stopped");
                }
            }))
        }
        None => None,
    };
    tracing::info!(public_udp = ?disp.public_udp, public_tcp = ?disp.public_tcp, edge = ?edge.udp, "all-in-one started");
    shutdown_signal().await;
    tracing::info!("stopping");
    disp.drain_and_stop().await;
    edge.stop().await;
    if let Some(t) = metrics_task {
        t.abort();
    }
    if let Some(l) = loc {
        l.stop().await;
    }
    Ok(())
}

fn random_secret() -> Result<String> {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn read_password() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let p = line.trim_end_matches(['\r', '\n']).to_owned();
    if p.is_empty() {
        bail!("empty password (give it on stdin, or use --ha1-md5/--ha1-sha256)");
    }
    Ok(p)
}

async fn users(a: UsersArgs) -> Result<()> {
    let client = location_client::LocationClient::new(location_client::ClientConfig {
        endpoint: a.location.clone(),
        timeout: std::time::Duration::from_secs(5),
        connect_timeout: std::time::Duration::from_secs(3),
        retries: 2,
        credentials_ttl: std::time::Duration::ZERO,
    })?;
    match a.action {
        UsersAction::Add {
            username,
            realm,
            ha1_md5,
            ha1_sha256,
        } => {
            let creds = if ha1_md5.is_some() || ha1_sha256.is_some() {
                sip_auth::Credentials::from_ha1_hex(ha1_md5.as_deref(), ha1_sha256.as_deref())?
            } else {
                sip_auth::Credentials::from_password(&username, &realm, &read_password()?)
            };
            let replaced = client.put_user(&username, &realm, &creds).await?;
            println!(
                "{} {username}@{realm}",
                if replaced { "replaced" } else { "added" }
            );
        }
        UsersAction::Remove { username, realm } => {
            if client.remove_user(&username, &realm).await? {
                println!("removed {username}@{realm}");
            } else {
                bail!("no user {username}@{realm}");
            }
        }
        UsersAction::List { realm } => {
            for u in client.list_users(&realm).await? {
                println!("{u}");
            }
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig(a) => {
            let cfg = build_config(&a)?;
            edge::load_users(&cfg)?;
            println!("{cfg:#?}");
            Ok(())
        }
        Command::AllInOne(a) => {
            let cfg = build_config(&a.run)?;
            init_logging(&cfg.log.level, &cfg.log.format)?;
            runtime(cfg.runtime.workers)?.block_on(all_in_one(cfg, a.location_listen))
        }
        Command::Edge(a) => {
            let cfg = build_config(&a)?;
            if cfg.location.endpoint.is_none() {
                bail!(
                    "sipcluster edge needs a location service: set location.endpoint, SIPCLUSTER_LOCATION or --location"
                );
            }
            init_logging(&cfg.log.level, &cfg.log.format)?;
            runtime(cfg.runtime.workers)?.block_on(async {
                let handle = edge::start_cluster(cfg).await?;
                shutdown_signal().await;
                tracing::info!("stopping");
                handle.drain_and_stop().await;
                Ok(())
            })
        }
        Command::Location(a) => {
            let cfg = build_location_config(&a)?;
            init_logging(&a.log_level, &a.log_format)?;
            runtime(a.workers)?.block_on(async {
                let handle = location::start(cfg).await?;
                shutdown_signal().await;
                tracing::info!("stopping");
                handle.stop().await;
                Ok(())
            })
        }
        Command::Users(a) => runtime(1)?.block_on(users(a)),
        Command::Dispatcher(a) => {
            let cfg = build_dispatcher_config(&a)?;
            init_logging(&a.log_level, &a.log_format)?;
            runtime(cfg.workers)?.block_on(async {
                let handle = dispatcher::start(cfg).await?;
                shutdown_signal().await;
                tracing::info!("stopping");
                handle.drain_and_stop().await;
                Ok(())
            })
        }
        Command::DispatcherAdmin(a) => runtime(1)?.block_on(dispatcher_admin(a)),
        Command::MediaRelay(a) => {
            let cfg = build_media_relay_config(&a)?;
            init_logging(&a.log_level, &a.log_format)?;
            // The control plane is light; the forwarding threads are the relay's own.
            runtime(1)?.block_on(async {
                let handle = media_relay::start(cfg).await?;
                shutdown_signal().await;
                tracing::info!(sessions = handle.sessions(), "draining");
                handle.drain_and_stop().await;
                Ok(())
            })
        }
    }
}

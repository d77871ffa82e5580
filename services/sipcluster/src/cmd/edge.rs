//! `sipcluster edge`: an edge proxy and registrar in cluster mode (registrations and
//! credentials in the location service). Its flags are also the all-in-one's and
//! `check-config`'s: they read the same configuration.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use edge::EdgeConfig;

use crate::process::{init_logging, listen_flag, read_config, runtime, shutdown_signal};

/// The edge's flags (each overrides the configuration file and its environment variable).
#[derive(Args, Clone)]
pub struct EdgeArgs {
    /// TOML configuration file (see deploy/all-in-one/sipcluster.toml).
    #[arg(long, env = "SIPCLUSTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen on this address for both UDP and TCP (e.g. 0.0.0.0:5060).
    #[arg(long, env = "SIPCLUSTER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// UDP listening addresses (repeatable; replaces the configured ones).
    #[arg(long, env = "SIPCLUSTER_UDP", value_delimiter = ',')]
    pub udp: Vec<SocketAddr>,
    /// TCP listening addresses (repeatable; replaces the configured ones).
    #[arg(long, env = "SIPCLUSTER_TCP", value_delimiter = ',')]
    pub tcp: Vec<SocketAddr>,
    /// Address written into Via and Record-Route.
    #[arg(long, env = "SIPCLUSTER_ADVERTISE")]
    pub advertise: Option<IpAddr>,
    /// Local SIP domains (comma-separated; the first is the default).
    #[arg(long = "domain", env = "SIPCLUSTER_DOMAINS", value_delimiter = ',')]
    pub domains: Vec<String>,
    /// Metrics/health HTTP address, or `off`.
    #[arg(long, env = "SIPCLUSTER_METRICS")]
    pub metrics: Option<String>,
    /// Users file (TOML).
    #[arg(long, env = "SIPCLUSTER_USERS")]
    pub users: Option<PathBuf>,
    /// Nonce secret shared by all edges.
    #[arg(long, env = "SIPCLUSTER_NONCE_SECRET", hide_env_values = true)]
    pub nonce_secret: Option<String>,
    /// Disable digest authentication (REGISTER and calls).
    #[arg(long, env = "SIPCLUSTER_NO_AUTH")]
    pub no_auth: bool,
    /// Digest challenge algorithms, in order (comma-separated): MD5 (the default, what
    /// every phone answers) and/or SHA-256.
    #[arg(long, env = "SIPCLUSTER_AUTH_ALGORITHMS", value_delimiter = ',')]
    pub auth_algorithms: Vec<String>,
    /// Do not Record-Route (edges behind a dispatcher: its Record-Route is enough, and
    /// any edge then takes in-dialog requests).
    #[arg(long, env = "SIPCLUSTER_NO_RECORD_ROUTE")]
    pub no_record_route: bool,
    /// Seconds of drain on SIGTERM (not ready, OPTIONS answered 503 meanwhile).
    #[arg(long, env = "SIPCLUSTER_DRAIN_SECS")]
    pub drain_secs: Option<u64>,
    /// Media relay control URLs (comma-separated), e.g. http://media-relay:50053: anchor
    /// calls' media there.
    #[arg(long, env = "SIPCLUSTER_MEDIA_RELAYS", value_delimiter = ',')]
    pub media_relay: Vec<String>,
    /// When to anchor media: always, nat (the offerer is behind a NAT) or never.
    #[arg(long, env = "SIPCLUSTER_ANCHOR")]
    pub anchor: Option<String>,
    /// Log format: plain or json.
    #[arg(long, env = "SIPCLUSTER_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter: a level (error, warn, info, debug, trace) or target=level pairs, e.g.
    /// edge=debug,info.
    #[arg(long, env = "SIPCLUSTER_LOG")]
    pub log_level: Option<String>,
    /// Worker threads (0 = one per CPU).
    #[arg(long, env = "SIPCLUSTER_WORKERS")]
    pub workers: Option<usize>,
    /// Location service endpoint (cluster mode), e.g. http://location:50051.
    #[arg(long, env = "SIPCLUSTER_LOCATION")]
    pub location: Option<String>,
    /// Peers trusted by address (comma-separated blocks, e.g. 10.0.0.0/8,203.0.113.9):
    /// trunks and PBXs that need no digest and keep their P-Asserted-Identity.
    #[arg(long, env = "SIPCLUSTER_TRUSTED_PEERS", value_delimiter = ',')]
    pub trusted_peers: Vec<String>,
    /// New requests per second per source address before its requests are dropped (0 =
    /// no limit).
    #[arg(long, env = "SIPCLUSTER_SOURCE_RATE")]
    pub source_rate: Option<u32>,
    /// Where call events and CDRs go: off, jsonl or kafka (accounting.destination).
    #[arg(long, env = "SIPCLUSTER_ACCOUNTING")]
    pub accounting: Option<String>,
    /// Kafka bootstrap brokers, host:port[,...] (accounting.kafka.brokers; implies
    /// `--accounting kafka` unless that says otherwise).
    #[arg(long, env = "SIPCLUSTER_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// The JSON-lines file of call events and CDRs (accounting.jsonl_path; implies
    /// `--accounting jsonl` unless that says otherwise).
    #[arg(long, env = "SIPCLUSTER_CDR_FILE")]
    pub cdr_file: Option<PathBuf>,
    /// The accounting spool's directory (accounting.spool_dir): keep it on a volume
    /// that outlives the pod.
    #[arg(long, env = "SIPCLUSTER_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    // The token this edge presents to the location service and the media relays (sets
    // location.token_file and media.token_file).
    #[command(flatten)]
    pub edge_token: crate::tokens::EdgeTokenArg,
    #[command(flatten)]
    pub hep: crate::cmd::HepArgs,
    #[command(flatten)]
    pub trace: crate::process::TraceArgs,
}

/// The file's settings, then the environment's and the flags', validated.
pub fn build_config(a: &EdgeArgs) -> Result<EdgeConfig> {
    let cfg = resolve(a)?;
    cfg.validate()?;
    if cfg.tls.cert_file.is_some()
        || !cfg.tls.listen.is_empty()
        || !cfg.websocket.listen.is_empty()
        || !cfg.websocket.tls_listen.is_empty()
    {
        anyhow::bail!(
            "tls, websocket: a standalone edge does not end TLS or WebSocket (clients reach \
             edges through a dispatcher, inside the cluster in the clear); put the [tls] and \
             [websocket] sections in the dispatcher's configuration (or run the all-in-one)"
        );
    }
    Ok(cfg)
}

/// The file's settings, then the environment's and the flags', not yet validated.
pub fn resolve(a: &EdgeArgs) -> Result<EdgeConfig> {
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
        cfg.metrics.listen = listen_flag("metrics", m)?;
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
    if !a.auth_algorithms.is_empty() {
        cfg.auth.algorithms = a.auth_algorithms.clone();
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
            other => bail!("--anchor: always, nat or never, not {other:?}"),
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
    if !a.trusted_peers.is_empty() {
        cfg.security.trusted_peers = a.trusted_peers.clone();
    }
    if let Some(r) = a.source_rate {
        cfg.security.source_rate = r;
        cfg.security.source_burst = cfg.security.source_burst.max(r.saturating_mul(2));
    }
    if let Some(b) = &a.kafka_brokers {
        cfg.accounting.kafka.brokers = b.clone();
        cfg.accounting.destination = Some(accounting::Destination::Kafka);
    }
    if let Some(f) = &a.cdr_file {
        cfg.accounting.jsonl_path = f.clone();
        cfg.accounting.destination = Some(accounting::Destination::Jsonl);
    }
    if let Some(d) = &a.accounting {
        cfg.accounting.destination = Some(match d.as_str() {
            "off" => accounting::Destination::Off,
            "jsonl" => accounting::Destination::Jsonl,
            "kafka" => accounting::Destination::Kafka,
            other => bail!("--accounting: off, jsonl or kafka, not {other:?}"),
        });
    }
    if let Some(d) = &a.spool_dir {
        cfg.accounting.spool_dir = d.clone();
    }
    a.edge_token.apply(&mut cfg.location.token_file);
    a.edge_token.apply(&mut cfg.media.token_file);
    a.hep.apply(&mut cfg.hep)?;
    Ok(cfg)
}

/// The configuration of `sipcluster edge`: validated, with the location service it
/// needs (the all-in-one's does without one).
pub fn build_cluster_config(a: &EdgeArgs) -> Result<EdgeConfig> {
    let cfg = build_config(a)?;
    if cfg.location.endpoint.is_none() {
        bail!(
            "sipcluster edge needs a location service: set location.endpoint, SIPCLUSTER_LOCATION or --location"
        );
    }
    Ok(cfg)
}

/// Run until SIGTERM, then drain.
pub fn run(a: &EdgeArgs) -> Result<()> {
    let cfg = build_cluster_config(a)?;
    let _trace = init_logging(&cfg.log.level, &cfg.log.format, &a.trace, "sipcluster-edge")?;
    runtime(cfg.runtime.workers)?.block_on(async {
        let handle = edge::start_cluster(cfg).await?;
        shutdown_signal().await;
        tracing::info!("stopping");
        handle.drain_and_stop().await;
        Ok(())
    })
}

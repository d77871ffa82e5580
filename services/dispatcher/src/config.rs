//! The dispatcher's configuration: one typed struct from TOML, overridden by the binary's
//! `SIPCLUSTER_DISPATCHER_*` environment and flags, validated at start.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use dispatch_core::{Algorithm, HealthConfig, TargetSpec};
use serde::{Deserialize, Serialize};
use sip_txn::Transport;

pub use telemetry::ConfigError;

/// Everything the dispatcher needs. Serialized, it is the TOML file that reads back to
/// the same settings (`sipcluster check-config dispatcher`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Client-facing listeners.
    pub public: SideConfig,
    /// SIP over TLS on the client-facing side (`[tls]`): listeners, certificate (reloaded
    /// on change), client certificates; also used for connections to `tls` set members.
    pub tls: sip_transport::TlsSettings,
    /// SIP over WebSocket and secure WebSocket for browsers (`[websocket]`, RFC 7118).
    pub websocket: sip_transport::WebSocketSettings,
    /// Edge-facing listeners.
    pub internal: SideConfig,
    /// How requests reach edges: `udp` or `tcp`.
    pub edge_transport: String,
    /// The cluster secret (the edges' `auth.nonce_secret`): signs flow tokens. Never
    /// printed (`check-config` leaves it out, wherever it came from: a printed file gets
    /// copied, pasted and committed).
    #[serde(skip_serializing)]
    pub secret: Option<String>,
    /// Probing of edges and set members.
    pub health: HealthSettings,
    /// Where edges come from.
    pub discovery: DiscoveryConfig,
    /// Outbound destination sets.
    pub sets: Vec<SetConfig>,
    /// How long INVITE/REGISTER are remembered for failover, s (64·T1).
    pub failover_window_secs: u64,
    /// Cap on remembered requests.
    pub max_failover_entries: usize,
    /// `Retry-After` of the 503 when no edge can take a request.
    pub retry_after_secs: u32,
    /// Requests whose User-Agent contains one of these (case-insensitive) are dropped
    /// without an answer and counted (`sipcluster_dispatcher_dropped_total{reason="scanner"}`).
    /// Default: the SIPVicious family (`friendly-scanner`, `sipvicious`, ...); `[]` drops none.
    pub deny_user_agents: Vec<String>,
    /// A client TCP connection with no traffic for this long is closed, s. Clients keep
    /// theirs open with CRLF keepalives (RFC 5626) and re-REGISTERs.
    pub tcp_idle_timeout_secs: u64,
    /// A TCP message must be complete within this many seconds of its first byte, and
    /// the peer must take each of ours within it; else the connection closes (slow
    /// clients cannot hold connections by trickling bytes).
    pub tcp_message_timeout_secs: u64,
    /// Inbound TCP connections held at once per side (public, internal); more are
    /// closed at once. Lowered at start to fit RLIMIT_NOFILE less a reserve (logged).
    pub tcp_max_connections: usize,
    /// Inbound TCP connections held at once from one source address (IPv6: one /64).
    pub tcp_max_connections_per_source: usize,
    /// gRPC admin API, or `"off"`.
    #[serde(with = "telemetry::listen")]
    pub admin_listen: Option<SocketAddr>,
    /// The admin API's token (`[api]`): required while the API is served.
    pub api: ApiConfig,
    /// `/metrics`, `/healthz`, `/readyz`, or `"off"`.
    #[serde(with = "telemetry::listen")]
    pub metrics_listen: Option<SocketAddr>,
    /// On SIGTERM: seconds of not-ready (load balancers move away) during which relaying
    /// and held connections go on.
    pub drain_secs: u64,
    /// A copy of every SIP message, both sides, to a HEP collector (Homer,
    /// heplify-server, sngrep): off by default.
    pub hep: hep::HepConfig,
    /// Topology hiding: no address inside the cluster reaches a client (the Vias and
    /// Record-Routes of the edges and of this dispatcher's internal side are sealed into
    /// ours, and restored on the way back). Off by default.
    pub topology_hiding: bool,
    /// The cluster's bans (`[bans]`): sources the edges banned (a flood, failed logins),
    /// read from the location service and dropped here on arrival, before they cost a
    /// parse and a relay. Off without an endpoint (the edges still drop them).
    pub bans: BansConfig,
    /// Tokio worker threads; 0 = one per CPU. Default 1: the relay is one task, and a
    /// second worker mostly adds cross-thread wake-ups (~40 % more CPU per call measured at
    /// 2,000 calls/s); run more dispatcher instances to use more cores.
    pub workers: usize,
}

/// The admin API's token: where the operators' (admin) token is mounted. The API has no
/// call for edges, so it takes no edge token.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// File holding the admin token (`SIPCLUSTER_ADMIN_TOKEN_FILE`, `--admin-token-file`).
    pub admin_token_file: Option<PathBuf>,
}

/// Flood detection at the public side, and where the cluster's bans are shared.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BansConfig {
    /// A source sending more than this many messages (datagrams, stream messages) in a
    /// second is flooding: banned for `flood_ban_secs`, counted before parsing
    /// (pike-like), and the ban shared with the cluster when the location service is
    /// named. 0: no flood detection here.
    pub flood_rate: u32,
    /// How long a flooding source stays banned, s.
    pub flood_ban_secs: u64,
    /// Sources never counted or banned here (`10.0.0.0/8`, `203.0.113.9`): trunks and
    /// gateways that send a lot (the members of `sets` always are). Bans the cluster
    /// lists for them are ignored too.
    pub allow_list: Vec<String>,
    /// The location service (`http://location:50051`; `SIPCLUSTER_LOCATION`,
    /// `--location`). `None`: the dispatcher keeps no blocklist.
    pub location_endpoint: Option<String>,
    /// File holding the edge token, presented to the location service
    /// (`SIPCLUSTER_EDGE_TOKEN_FILE`, `--edge-token-file`): its ban list is not public.
    pub token_file: Option<PathBuf>,
    /// How often the list is read, ms: a ban an edge starts is in force here within this.
    pub sync_ms: u64,
    /// Deadline of each read, ms.
    pub timeout_ms: u64,
}

impl Default for BansConfig {
    fn default() -> BansConfig {
        BansConfig {
            // Well above what one phone, one NATed office or one trunk of a few hundred
            // calls a second sends (every request and response counts); a larger
            // source belongs on the allow-list.
            flood_rate: 2000,
            flood_ban_secs: 60,
            allow_list: Vec::new(),
            location_endpoint: None,
            token_file: None,
            sync_ms: 250,
            timeout_ms: 1000,
        }
    }
}

/// Listening addresses of one side.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SideConfig {
    /// UDP addresses.
    pub udp: Vec<SocketAddr>,
    /// TCP addresses.
    pub tcp: Vec<SocketAddr>,
    /// Written into Via / Path / Record-Route. Default: the listening address when
    /// specific, else the primary interface's.
    pub advertise: Option<IpAddr>,
}

/// Probe settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// Time between probes, ms.
    pub interval_ms: u64,
    /// A probe not answered within this failed, ms.
    pub timeout_ms: u64,
    /// Failures in a row that take a target down.
    pub fall: u32,
    /// Successes in a row that bring a target up.
    pub rise: u32,
}

/// Edge discovery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// `static`, `dns` or `kubernetes`.
    pub kind: String,
    /// `static`: edge addresses (`host:port`).
    pub edges: Vec<SocketAddr>,
    /// `dns`: the name whose A/AAAA records are the edges (a headless Service).
    pub dns_name: Option<String>,
    /// `dns` and `kubernetes`: the edges' SIP port.
    pub port: u16,
    /// `dns`: seconds between lookups.
    pub dns_interval_secs: u64,
    /// `kubernetes`: namespace of the edge pods (default: the client's namespace).
    pub namespace: Option<String>,
    /// `kubernetes`: label selector of the edge pods.
    pub label_selector: String,
    /// `kubernetes`: kubeconfig file; default: in-cluster config, then `KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
}

/// An outbound destination set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    /// Name (edges route to `sip:set-NAME@dispatcher;lr`).
    pub name: String,
    /// `hash`, `weighted`, `round-robin` or `priority`.
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// Members.
    pub targets: Vec<SetTarget>,
}

fn default_algorithm() -> String {
    "hash".into()
}

/// A member of a destination set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SetTarget {
    /// `ip:port`.
    pub address: SocketAddr,
    /// `udp`, `tcp` or `tls`.
    #[serde(default = "default_transport")]
    pub transport: String,
    /// Share.
    #[serde(default = "one")]
    pub weight: u32,
    /// Lower first (priority sets).
    #[serde(default)]
    pub priority: u32,
}

fn default_transport() -> String {
    "udp".into()
}

fn one() -> u32 {
    1
}

impl Default for DispatcherConfig {
    fn default() -> DispatcherConfig {
        DispatcherConfig {
            public: SideConfig {
                udp: vec![SocketAddr::from(([0, 0, 0, 0], 5060))],
                tcp: vec![SocketAddr::from(([0, 0, 0, 0], 5060))],
                advertise: None,
            },
            internal: SideConfig {
                udp: vec![SocketAddr::from(([0, 0, 0, 0], 5070))],
                tcp: Vec::new(),
                advertise: None,
            },
            tls: sip_transport::TlsSettings::default(),
            websocket: sip_transport::WebSocketSettings::default(),
            edge_transport: "udp".into(),
            secret: None,
            health: HealthSettings::default(),
            discovery: DiscoveryConfig::default(),
            sets: Vec::new(),
            failover_window_secs: 32,
            max_failover_entries: 200_000,
            retry_after_secs: 5,
            deny_user_agents: dispatch_core::security::DEFAULT_DENIED_USER_AGENTS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            tcp_idle_timeout_secs: 600,
            tcp_message_timeout_secs: 10,
            tcp_max_connections: 10_000,
            tcp_max_connections_per_source: 64,
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 50052))),
            api: ApiConfig::default(),
            // Loopback unless configured, as every control and metrics listener: a pod
            // config (deploy/dispatcher.toml) opens them deliberately.
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9092))),
            drain_secs: 30,
            hep: hep::HepConfig::default(),
            topology_hiding: false,
            bans: BansConfig::default(),
            workers: 1,
        }
    }
}

impl Default for HealthSettings {
    /// Probe every second, 500 ms timeout, down after 2 misses, up at the first answer:
    /// a dead edge stops getting new dialogs within ~2.5 s.
    fn default() -> HealthSettings {
        HealthSettings {
            interval_ms: 1000,
            timeout_ms: 500,
            fall: 2,
            rise: 1,
        }
    }
}

impl Default for DiscoveryConfig {
    fn default() -> DiscoveryConfig {
        DiscoveryConfig {
            kind: "static".into(),
            edges: Vec::new(),
            dns_name: None,
            port: 5060,
            dns_interval_secs: 5,
            namespace: None,
            label_selector: "app.kubernetes.io/component=edge".into(),
            kubeconfig: None,
        }
    }
}

fn bad(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::new(field, problem)
}

fn transport(field: &'static str, t: &str) -> Result<Transport, ConfigError> {
    match t.to_ascii_lowercase().as_str() {
        "udp" => Ok(Transport::Udp),
        "tcp" => Ok(Transport::Tcp),
        // Set members only: edges are inside the cluster (edge_transport refuses it).
        "tls" if field != "edge_transport" => Ok(Transport::Tls),
        other => Err(bad(
            field,
            format!("{other:?}: expected udp or tcp (or tls for a set member)"),
        )),
    }
}

impl DispatcherConfig {
    /// Parse TOML (unknown keys are errors).
    pub fn from_toml(text: &str) -> Result<DispatcherConfig, ConfigError> {
        toml::from_str(text).map_err(|e| bad("config", e.to_string()))
    }

    /// Check every value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.hep.validate()?;
        self.tls.validate()?;
        self.websocket.validate(&self.tls)?;
        if self.public.udp.is_empty()
            && self.public.tcp.is_empty()
            && self.tls.listen.is_empty()
            && self.websocket.listen.is_empty()
            && self.websocket.tls_listen.is_empty()
        {
            return Err(bad(
                "public",
                "at least one UDP, TCP, TLS or WebSocket listener",
            ));
        }
        if self.tls.cert_file.is_none()
            && self
                .sets
                .iter()
                .flat_map(|s| &s.targets)
                .any(|t| t.transport.eq_ignore_ascii_case("tls"))
        {
            return Err(bad(
                "tls.cert_file",
                "a set member is reached over TLS: give the certificate (and tls.ca_file for its CA)",
            ));
        }
        let et = self.edge_transport()?;
        let internal_has = match et {
            Transport::Udp => !self.internal.udp.is_empty(),
            _ => !self.internal.tcp.is_empty(),
        };
        if !internal_has {
            return Err(bad(
                "internal",
                format!(
                    "edge_transport = {:?} needs an internal {} listener",
                    self.edge_transport, self.edge_transport
                ),
            ));
        }
        match &self.secret {
            Some(s) if s.len() >= 16 => {}
            _ => {
                return Err(bad(
                    "secret",
                    "the cluster secret (the edges' auth.nonce_secret, at least 16 characters) is required: it signs the flow tokens edges use to reach clients",
                ));
            }
        }
        let b = &self.bans;
        for c in &b.allow_list {
            if let Err(e) = c.parse::<dispatch_core::Cidr>() {
                return Err(bad("bans.allow_list", e.to_string()));
            }
        }
        if b.flood_rate > 0 && b.flood_ban_secs == 0 {
            return Err(bad(
                "bans.flood_ban_secs",
                "at least 1 while flood_rate is set (0 turns flood detection off)",
            ));
        }
        if b.location_endpoint.is_some() {
            if b.token_file.is_none() {
                return Err(bad(
                    "bans.token_file",
                    "the edge token's file is required with bans.location_endpoint: the location service refuses anonymous calls",
                ));
            }
            if b.sync_ms < 50 || b.timeout_ms == 0 {
                return Err(bad("bans", "sync_ms at least 50 and timeout_ms positive"));
            }
        }
        let h = &self.health;
        if h.interval_ms == 0 || h.timeout_ms == 0 || h.timeout_ms > h.interval_ms {
            return Err(bad(
                "health",
                "interval_ms and timeout_ms positive, timeout_ms not above interval_ms",
            ));
        }
        if h.fall == 0 || h.rise == 0 {
            return Err(bad("health", "fall and rise at least 1"));
        }
        let d = &self.discovery;
        match d.kind.as_str() {
            "static" => {}
            "dns" => {
                if d.dns_name.as_deref().is_none_or(str::is_empty) {
                    return Err(bad("discovery.dns_name", "required for kind = \"dns\""));
                }
                if d.dns_interval_secs == 0 {
                    return Err(bad("discovery.dns_interval_secs", "must be positive"));
                }
            }
            "kubernetes" => {
                if d.label_selector.trim().is_empty() {
                    return Err(bad(
                        "discovery.label_selector",
                        "required for kind = \"kubernetes\"",
                    ));
                }
            }
            other => {
                return Err(bad(
                    "discovery.kind",
                    format!("{other:?}: expected static, dns or kubernetes"),
                ));
            }
        }
        if d.port == 0 {
            return Err(bad("discovery.port", "must be positive"));
        }
        let mut names = Vec::new();
        for s in &self.sets {
            if s.name.is_empty()
                || !s
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad(
                    "sets.name",
                    format!("{:?}: letters, digits, - and _ only", s.name),
                ));
            }
            if s.name == dispatch_core::relay::EDGE_POOL || names.contains(&&s.name) {
                return Err(bad(
                    "sets.name",
                    format!("{:?} is reserved or used twice", s.name),
                ));
            }
            names.push(&s.name);
            if Algorithm::parse(&s.algorithm).is_none() {
                return Err(bad(
                    "sets.algorithm",
                    format!(
                        "{:?}: expected hash, weighted, round-robin or priority",
                        s.algorithm
                    ),
                ));
            }
            if s.targets.is_empty() {
                return Err(bad(
                    "sets.targets",
                    format!("set {:?} has no targets", s.name),
                ));
            }
            for t in &s.targets {
                transport("sets.targets.transport", &t.transport)?;
            }
        }
        if self.failover_window_secs == 0 || self.max_failover_entries == 0 {
            return Err(bad(
                "failover_window_secs",
                "failover_window_secs and max_failover_entries must be positive",
            ));
        }
        if self.tcp_idle_timeout_secs == 0 {
            return Err(bad("tcp_idle_timeout_secs", "must be positive"));
        }
        if self.tcp_message_timeout_secs == 0
            || self.tcp_message_timeout_secs > self.tcp_idle_timeout_secs
        {
            return Err(bad(
                "tcp_message_timeout_secs",
                "positive and not above tcp_idle_timeout_secs",
            ));
        }
        if self.tcp_max_connections == 0
            || self.tcp_max_connections_per_source == 0
            || self.tcp_max_connections_per_source > self.tcp_max_connections
        {
            return Err(bad(
                "tcp_max_connections",
                "need 0 < tcp_max_connections_per_source <= tcp_max_connections",
            ));
        }
        Ok(())
    }

    /// The edge transport.
    pub fn edge_transport(&self) -> Result<Transport, ConfigError> {
        transport("edge_transport", &self.edge_transport)
    }

    /// The probe settings.
    pub fn health_config(&self) -> HealthConfig {
        HealthConfig {
            interval: Duration::from_millis(self.health.interval_ms),
            timeout: Duration::from_millis(self.health.timeout_ms),
            fall: self.health.fall,
            rise: self.health.rise,
        }
    }

    /// The destination sets as the relay takes them (validated config).
    pub fn relay_sets(&self) -> Vec<(String, Algorithm, Vec<TargetSpec>)> {
        self.sets
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    Algorithm::parse(&s.algorithm).unwrap_or_default(),
                    s.targets
                        .iter()
                        .map(|t| TargetSpec {
                            id: t.address.to_string(),
                            addr: t.address,
                            transport: transport("", &t.transport).unwrap_or(Transport::Udp),
                            weight: t.weight,
                            priority: t.priority,
                        })
                        .collect(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> DispatcherConfig {
        DispatcherConfig {
            secret: Some("0123456789abcdef0123".into()),
            ..DispatcherConfig::default()
        }
    }

    #[test]
    fn the_sample_file_parses_and_validates() {
        let text = include_str!("../../../deploy/dispatcher.toml");
        let cfg = DispatcherConfig::from_toml(text).expect("parses");
        cfg.validate().expect("valid");
        assert!(cfg.api.admin_token_file.is_some());
        assert_eq!(
            cfg.admin_listen,
            Some("0.0.0.0:50052".parse().expect("addr"))
        );
        let d = DispatcherConfig::default();
        assert!(d.admin_listen.is_some_and(|a| a.ip().is_loopback()));
        assert!(d.metrics_listen.is_some_and(|a| a.ip().is_loopback()));
        assert_eq!(
            cfg.metrics_listen,
            Some("0.0.0.0:9092".parse().expect("addr"))
        );
        assert_eq!(cfg.sets.len(), 1);
        assert_eq!(cfg.relay_sets()[0].1, Algorithm::Priority);
    }

    #[test]
    fn validation_names_the_field() {
        type Mutation = Box<dyn Fn(&mut DispatcherConfig)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("secret", Box::new(|c| c.secret = None)),
            ("secret", Box::new(|c| c.secret = Some("short".into()))),
            ("public", Box::new(|c| c.public = SideConfig::default())),
            ("internal", Box::new(|c| c.edge_transport = "tcp".into())),
            (
                "edge_transport",
                Box::new(|c| c.edge_transport = "sctp".into()),
            ),
            ("health", Box::new(|c| c.health.timeout_ms = 5000)),
            ("health", Box::new(|c| c.health.fall = 0)),
            (
                "tcp_message_timeout_secs",
                Box::new(|c| c.tcp_message_timeout_secs = 601),
            ),
            (
                "tcp_max_connections",
                Box::new(|c| c.tcp_max_connections_per_source = 0),
            ),
            (
                "discovery.kind",
                Box::new(|c| c.discovery.kind = "consul".into()),
            ),
            (
                "discovery.dns_name",
                Box::new(|c| c.discovery.kind = "dns".into()),
            ),
            (
                "sets.algorithm",
                Box::new(|c| {
                    c.sets = vec![SetConfig {
                        name: "gw".into(),
                        algorithm: "fastest".into(),
                        targets: vec![],
                    }]
                }),
            ),
            (
                "sets.name",
                Box::new(|c| {
                    c.sets = vec![SetConfig {
                        name: "edge".into(),
                        algorithm: "hash".into(),
                        targets: vec![],
                    }]
                }),
            ),
        ];
        for (field, f) in cases {
            let mut c = valid();
            f(&mut c);
            let e = c.validate().expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
        assert!(DispatcherConfig::from_toml("nonsense = 1").is_err());
        valid().validate().expect("defaults + secret are valid");
    }
}

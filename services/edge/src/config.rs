//! The edge's configuration: one typed struct, read from TOML, overridden by the binary's
//! environment variables and flags, validated once at start.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything the edge needs to run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
#[derive(Default)]
pub struct EdgeConfig {
    /// Listening sockets and identity.
    pub sip: SipConfig,
    /// Digest authentication.
    pub auth: AuthConfig,
    /// Registrar policy.
    pub registrar: RegistrarConfig,
    /// Protocol timers.
    pub timers: TimersConfig,
    /// Caps and queues.
    pub limits: LimitsConfig,
    /// Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// Logging.
    pub log: LogConfig,
    /// Threads.
    pub runtime: RuntimeConfig,
    /// The location service (cluster mode).
    pub location: LocationConfig,
    /// Calls sent to the dispatcher's destination sets (gateways, trunks, PBXs).
    pub outbound: OutboundConfig,
    /// Media anchoring through media relays.
    pub media: MediaConfig,
    /// The all-in-one's control APIs (`sipcluster edge` ignores this section).
    pub all_in_one: AllInOneConfig,
    /// Who is trusted, what is refused: trusted peers, identity headers, scanners,
    /// per-source rate limit, failed-login bans.
    pub security: SecurityConfig,
    /// Call events and CDRs: where they go, the durable spool, dialog records.
    pub accounting: accounting::AccountingSettings,
    /// A copy of every SIP message to a HEP collector (Homer, heplify-server, sngrep):
    /// off by default.
    pub hep: hep::HepConfig,
    /// SIP over TLS on the all-in-one's public side (its dispatcher ends TLS; a
    /// standalone edge is reached in the clear inside the cluster and refuses this
    /// section: put it in the dispatcher's configuration).
    pub tls: sip_transport::TlsSettings,
    /// SIP over WebSocket for browsers on the all-in-one's public side (as `[tls]`: a
    /// standalone edge refuses it).
    pub websocket: sip_transport::WebSocketSettings,
    /// Cluster-wide call limits: concurrent calls and calls per second per account,
    /// domain and trunk (`crate::limit`).
    pub call_limits: CallLimitsConfig,
}

/// Cluster-wide call limits (`[call_limits]`), exact across every edge: the location
/// service counts them atomically (the all-in-one in its memory). 0 is no limit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CallLimitsConfig {
    /// The status of a call over a limit. Default 486 (Busy Here): the caller's phone
    /// shows busy, and a gateway does not try elsewhere as it would after a 503.
    pub refuse_code: u16,
    /// Every account (an authenticated caller, `user@domain`), unless named in
    /// `accounts`.
    pub account: Limit,
    /// Every caller's domain, unless named in `domains`.
    pub domain: Limit,
    /// Accounts of their own (`"alice@example.com" = { calls = 2, cps = 1 }`).
    pub accounts: std::collections::BTreeMap<String, Limit>,
    /// Domains of their own.
    pub domains: std::collections::BTreeMap<String, Limit>,
    /// Trunks by name (their destination sets): the calls routed to them, and the calls
    /// from their peers (`trunk_peers`).
    pub trunks: std::collections::BTreeMap<String, Limit>,
    /// Where each trunk's calls come from (`pstn = ["192.0.2.0/24",
    /// "tls:carrier.example.net"]`: address blocks, as the dispatcher signed the client's
    /// address, or the name of a client certificate it verified). A call from one counts
    /// against that trunk's limits as a call to it does: a trunk's channels serve both
    /// directions.
    pub trunk_peers: std::collections::BTreeMap<String, Vec<String>>,
    /// How long a call holds its slots until it is answered, s (then the dialog's
    /// time-to-live, `accounting.dialog_ttl_secs` or its session interval, refreshed with
    /// the session). Above Timer C (180 s): a call still ringing keeps its slot.
    pub setup_ttl_secs: u32,
}

/// One key's limits.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limit {
    /// Calls at once (0: no limit).
    pub calls: u32,
    /// New calls per second (0: no limit).
    pub cps: u32,
}

impl Default for CallLimitsConfig {
    fn default() -> CallLimitsConfig {
        CallLimitsConfig {
            refuse_code: 486,
            account: Limit::default(),
            domain: Limit::default(),
            accounts: Default::default(),
            domains: Default::default(),
            trunks: Default::default(),
            trunk_peers: Default::default(),
            setup_ttl_secs: 200,
        }
    }
}

impl CallLimitsConfig {
    /// Whether any limit is set (else no call asks the store anything).
    pub fn any(&self) -> bool {
        let set = |l: &Limit| l.calls > 0 || l.cps > 0;
        set(&self.account)
            || set(&self.domain)
            || self.accounts.values().any(set)
            || self.domains.values().any(set)
            || self.trunks.values().any(set)
    }
}

/// Trust and refusal (see "Security" in ARCHITECTURE.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Peers trusted by address (`10.0.0.0/8`, `203.0.113.9`): trunks, PBXs, gateways.
    /// Their requests need no digest, may preload Routes and reach any destination, and
    /// keep their P-Asserted-Identity (RFC 3325). Behind a dispatcher the address is the
    /// client's as the dispatcher saw it (its signed Via), never the dispatcher's.
    /// `tls:NAME` trusts a peer by certificate instead: one whose client certificate the
    /// dispatcher verified (`tls.client_auth`) and whose first DNS name is NAME, from
    /// whatever address. Default: none.
    pub trusted_peers: Vec<String>,
    /// Put a `P-Asserted-Identity` naming the authenticated user on requests this edge
    /// forwards for it (RFC 3325 §9.1), so trusted gateways downstream see who called.
    pub assert_identity: bool,
    /// Requests whose User-Agent contains one of these (case-insensitive) are dropped
    /// without an answer and counted. Default: the SIPVicious family; `[]` drops none.
    pub deny_user_agents: Vec<String>,
    /// New requests per second per source address, past which its requests are
    /// dropped (a token bucket of `source_burst`); 0 = no limit. Trusted peers are exempt.
    pub source_rate: u32,
    /// The bucket's size: how many requests a source may send at once.
    pub source_burst: u32,
    /// Failed logins from one source within `auth_failure_window_secs` that ban it for
    /// `source_ban_secs` (its requests are then dropped); 0 = never.
    pub auth_failures_per_source: u32,
    /// Failed logins for one user (from anywhere) within the window that lock it for
    /// `user_lock_secs` (its logins are refused unchecked); 0 = never.
    pub auth_failures_per_user: u32,
    /// The window failed logins are counted in, s.
    pub auth_failure_window_secs: u64,
    /// How long a source stays banned, s.
    pub source_ban_secs: u64,
    /// How long a user stays locked, s.
    pub user_lock_secs: u64,
    /// A source whose requests are dropped over its rate this many times within
    /// `flood_window_secs` is flooding: it is banned for `flood_ban_secs`, on every edge
    /// of the cluster (pike-like); 0 = never.
    pub flood_drops: u32,
    /// The window flood drops are counted in, s.
    pub flood_window_secs: u64,
    /// How long a flooding source stays banned, s.
    pub flood_ban_secs: u64,
    /// Sources never rate-limited, banned or locked out (`10.0.0.0/8`, `203.0.113.9`):
    /// trunks and gateways that send a lot and must not be cut off, without being
    /// trusted (they still authenticate unless also in `trusted_peers`, which are exempt
    /// anyway). Bans the cluster learns for them are ignored.
    pub allow_list: Vec<String>,
    /// How often the cluster's bans are read from the location service, ms (a ban
    /// started on one edge is in force on every edge within about this).
    pub ban_sync_ms: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            trusted_peers: Vec::new(),
            assert_identity: false,
            deny_user_agents: dispatch_core::security::DEFAULT_DENIED_USER_AGENTS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            source_rate: 500,
            source_burst: 1000,
            auth_failures_per_source: 20,
            auth_failures_per_user: 50,
            auth_failure_window_secs: 60,
            source_ban_secs: 300,
            user_lock_secs: 120,
            flood_drops: 1000,
            flood_window_secs: 10,
            flood_ban_secs: 60,
            allow_list: Vec::new(),
            ban_sync_ms: 250,
        }
    }
}

/// The `trusted_peers` prefix of a peer trusted by its certificate's name.
pub const TLS_PEER: &str = "tls:";

impl SecurityConfig {
    /// The trusted blocks (validated at start, so a bad one here is skipped).
    pub fn trusted(&self) -> Vec<dispatch_core::Cidr> {
        self.trusted_peers
            .iter()
            .filter(|c| !c.starts_with(TLS_PEER))
            .filter_map(|c| c.parse().ok())
            .collect()
    }

    /// The allow-listed blocks (validated at start).
    pub fn allowed(&self) -> Vec<dispatch_core::Cidr> {
        self.allow_list
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }

    /// The peers trusted by certificate (`tls:NAME`), lower-cased.
    pub fn trusted_names(&self) -> Vec<String> {
        self.trusted_peers
            .iter()
            .filter_map(|c| c.strip_prefix(TLS_PEER))
            .map(str::to_ascii_lowercase)
            .collect()
    }
}

/// The control APIs the all-in-one serves for the `sipcluster users`, `registrations` and
/// `dispatcher-admin` commands. On loopback, where those commands look without a flag;
/// they take the admin token (generated at start unless a file is given) and carry it
/// without TLS, so they stay off other interfaces.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AllInOneConfig {
    /// The in-process location service's gRPC API, or `"off"`.
    #[serde(with = "telemetry::listen")]
    pub location_listen: Option<SocketAddr>,
    /// The in-process dispatcher's admin gRPC API, or `"off"`.
    #[serde(with = "telemetry::listen")]
    pub admin_listen: Option<SocketAddr>,
    /// File holding the admin token those APIs accept (`--admin-token-file`,
    /// `SIPCLUSTER_ADMIN_TOKEN_FILE`). Unset: a random token is generated at each start
    /// and written (mode 0600) to `$XDG_STATE_HOME/sipcluster/admin-token`, else
    /// `$HOME/.local/state/sipcluster/admin-token`, where the commands read it.
    pub admin_token_file: Option<PathBuf>,
    /// The dispatcher hands requests to the edge in process (true, the default: about
    /// 30 % less CPU per REGISTER, 15 % per call, and under overload every request's wait
    /// is seen by the edge's admission control), or over loopback UDP as two processes
    /// would (false: the internal hop is visible to tcpdump and sngrep on `lo`).
    pub in_process_hop: bool,
}

impl Default for AllInOneConfig {
    fn default() -> Self {
        AllInOneConfig {
            location_listen: Some(SocketAddr::from(([127, 0, 0, 1], 50051))),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 50052))),
            admin_token_file: None,
            in_process_hop: true,
        }
    }
}

/// When a call's media goes through a relay.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Anchor {
    /// Every call with SDP.
    #[default]
    Always,
    /// Only when the offering party is behind a NAT (its source differs from its Via, or
    /// it signals a private address).
    Nat,
    /// Never: SDP passes untouched.
    Never,
}

/// What a call gets when no relay can take it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnRelayFailure {
    /// 503 with Retry-After: the caller tries again or elsewhere.
    #[default]
    Reject,
    /// Forward with the SDP untouched (media may not flow across NATs).
    Pass,
}

/// Media anchoring: the relays' gRPC endpoints and when to use them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Media relay control URLs (`http://media-relay-0.media-relay:50053`). Empty: no
    /// anchoring.
    pub relays: Vec<String>,
    /// The default policy.
    pub anchor: Anchor,
    /// Per-domain policies (the Request-URI's host of the initial INVITE), first match.
    pub rules: Vec<AnchorRule>,
    /// When no relay answers.
    pub on_failure: OnRelayFailure,
    /// Per control call.
    pub timeout_ms: u64,
    /// Relays accept media only from the signalled addresses (no latching).
    pub strict: bool,
    /// File holding the edge token presented to the relays (a Secret mount;
    /// `SIPCLUSTER_EDGE_TOKEN_FILE`, `--edge-token-file`). Required with relays: their
    /// control API refuses anonymous calls.
    pub token_file: Option<PathBuf>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            relays: Vec::new(),
            anchor: Anchor::Always,
            rules: Vec::new(),
            on_failure: OnRelayFailure::Reject,
            timeout_ms: 1000,
            strict: false,
            token_file: None,
        }
    }
}

/// A per-domain anchoring policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnchorRule {
    /// The Request-URI host (case-insensitive).
    pub domain: String,
    /// The policy for it.
    pub anchor: Anchor,
}

impl MediaConfig {
    /// The policy for calls to `host`.
    #[must_use]
    pub fn policy_for(&self, host: &str) -> Anchor {
        if self.relays.is_empty() {
            return Anchor::Never;
        }
        self.rules
            .iter()
            .find(|r| r.domain.eq_ignore_ascii_case(host))
            .map_or(self.anchor, |r| r.anchor)
    }
}

/// Outbound routing to destination sets held by the dispatcher: the dispatcher picks a
/// member of the set (hash, weighted, round robin or priority) among those that answer
/// its probes, and fails over on 503 or a transport error.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// The dispatcher's internal SIP URI (`sip:dispatcher-internal:5070`, a Kubernetes
    /// Service name works). Required when `rules` are given.
    pub dispatcher: Option<String>,
    /// First match wins; only requests from local users (authenticated when
    /// `auth.invite` is on) are routed by these rules, so outsiders cannot use trunks.
    pub rules: Vec<OutboundRule>,
}

/// One rule: a Request-URI user prefix and/or domain, and the set to use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutboundRule {
    /// The Request-URI's user part starts with this (e.g. `+1`, `00`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// The Request-URI's host is this domain (case-insensitive).
    #[serde(default)]
    pub domain: Option<String>,
    /// The dispatcher's destination set.
    pub set: String,
}

impl OutboundConfig {
    /// The set for a Request-URI's user and host, by the first matching rule.
    pub fn set_for(&self, user: Option<&str>, host: &str) -> Option<&str> {
        self.rules
            .iter()
            .find(|r| {
                r.prefix
                    .as_deref()
                    .is_none_or(|p| user.is_some_and(|u| u.starts_with(p)))
                    && r.domain
                        .as_deref()
                        .is_none_or(|d| d.eq_ignore_ascii_case(host))
            })
            .map(|r| r.set.as_str())
    }
}

/// Where registrations and credentials live in cluster mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LocationConfig {
    /// gRPC endpoint of the location service (`http://location:50051`). Required by
    /// `sipcluster edge`; the all-in-one keeps its store in process and ignores it.
    pub endpoint: Option<String>,
    /// Deadline of every call, ms. A REGISTER or INVITE whose lookup misses it is
    /// answered 503 + Retry-After.
    pub timeout_ms: u64,
    /// Connect timeout, ms.
    pub connect_timeout_ms: u64,
    /// Extra attempts after UNAVAILABLE (bounded; each has its own deadline).
    pub retries: u32,
    /// How long fetched credentials are reused, s (0 disables the cache).
    pub credentials_cache_secs: u64,
    /// File holding the edge token presented to the location service (a Secret mount;
    /// `SIPCLUSTER_EDGE_TOKEN_FILE`, `--edge-token-file`). Required with an endpoint:
    /// the location API refuses anonymous calls.
    pub token_file: Option<PathBuf>,
}

impl Default for LocationConfig {
    fn default() -> Self {
        LocationConfig {
            endpoint: None,
            timeout_ms: 500,
            connect_timeout_ms: 500,
            retries: 1,
            credentials_cache_secs: 5,
            token_file: None,
        }
    }
}

/// The process's threads.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads; 0 = one per CPU. One worker spends less CPU per message (no
    /// cross-thread wake-ups: ~7-10 % per call measured) but parses and proxies on one
    /// core; scale out with more edges instead of more threads when that is the aim.
    pub workers: usize,
    /// On SIGTERM: seconds during which the edge answers OPTIONS with 503 and is not
    /// ready (dispatchers stop giving it new dialogs at once) while its transactions
    /// finish; then it stops.
    pub drain_secs: u64,
}

/// Listening sockets and the proxy's identity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// UDP listening addresses.
    pub udp: Vec<SocketAddr>,
    /// TCP listening addresses.
    pub tcp: Vec<SocketAddr>,
    /// Address written into Via and Record-Route (what peers use to reach this edge).
    /// `None`: the listening address when specific, else the primary interface's address.
    pub advertise: Option<IpAddr>,
    /// Domains this edge is the registrar and home proxy for; the first is the default.
    /// Requests for the edge's own addresses count as the default domain.
    pub domains: Vec<String>,
    /// Add Record-Route to dialog-creating requests. Behind a dispatcher set it to false:
    /// the dispatcher's Record-Route keeps in-dialog requests in the cluster, and any
    /// edge can take them (an edge's own address in the route set would pin the dialog
    /// to that edge and break it when the edge goes away).
    pub record_route: bool,
    /// Other `ip:port`s that mean this edge in Request-URIs (the dispatchers' public
    /// addresses: a client registering to `sip:203.0.113.7` reaches the edge through
    /// them).
    pub aliases: Vec<SocketAddr>,
}

/// Digest authentication.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Challenge REGISTER (401).
    pub register: bool,
    /// Challenge initial requests from local users (407).
    pub invite: bool,
    /// Secret shared by every edge so any of them verifies any nonce; generated at start
    /// when absent, which only suits a single edge. Never printed (`check-config` leaves
    /// it out).
    #[serde(skip_serializing)]
    pub nonce_secret: Option<String>,
    /// Nonce lifetime; older nonces get `stale=true`.
    pub nonce_lifetime_secs: u64,
    /// Users file (TOML); the embedded demo users when absent.
    pub users_file: Option<PathBuf>,
    /// Challenge algorithms, one challenge each, in this order (`MD5`, `SHA-256`).
    ///
    /// The default is MD5 alone, as Kamailio's and OpenSIPS's are: the phones operators
    /// have do not all survive a second challenge. libre (baresip 1.0.0, Debian 12)
    /// fails the whole REGISTER with "Function not implemented" when one of the
    /// challenges is SHA-256, and SIPp and sipsak answer only the first. Fleets whose
    /// phones all speak RFC 8760 can offer `["SHA-256", "MD5"]`.
    pub algorithms: Vec<String>,
}

/// Registrar policy (RFC 3261 §10.3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrarConfig {
    /// Expiry when the REGISTER gives none.
    pub default_expires: u32,
    /// Shorter requests get 423 with Min-Expires.
    pub min_expires: u32,
    /// Longer requests are capped.
    pub max_expires: u32,
    /// Bindings per address-of-record.
    pub max_contacts: usize,
}

/// Timers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TimersConfig {
    /// T1, ms.
    pub t1_ms: u64,
    /// T2, ms.
    pub t2_ms: u64,
    /// T4, ms.
    pub t4_ms: u64,
    /// Timer C (proxy INVITE), s.
    pub timer_c_secs: u64,
    /// RFC 4028 session timer: the `Session-Expires` put on initial INVITEs that carry
    /// none, s; 0 inserts none (calls whose phones ask for one are still timed). A call
    /// not refreshed within its interval is ended by the cluster with a CDR.
    pub session_expires_secs: u32,
    /// The smallest session interval accepted (`Min-SE`), s: an INVITE asking for less
    /// gets 422 (RFC 4028 §8.1); 0 accepts any. RFC 4028 forbids less than 90.
    pub min_se_secs: u32,
}

/// Caps and queues.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Bytes per message.
    pub max_message_size: usize,
    /// Header fields per message.
    pub max_headers: usize,
    /// Bytes per header field.
    pub max_line_len: usize,
    /// Idle TCP connections close after this many seconds.
    pub tcp_idle_timeout_secs: u64,
    /// A TCP message must be complete (head and body) within this many seconds of its
    /// first byte, and the peer must take each of ours within it; else the connection
    /// closes. The idle timeout restarts on every byte, so without this a client sending
    /// a byte every few seconds (slowloris) holds its connection for ever.
    pub tcp_message_timeout_secs: u64,
    /// Inbound TCP connections held at once; more are closed at once. Lowered at start
    /// to what RLIMIT_NOFILE leaves after a reserve for everything else (logged).
    pub tcp_max_connections: usize,
    /// Inbound TCP connections held at once from one source address (IPv6: one /64).
    pub tcp_max_connections_per_source: usize,
    /// Messages queued for the proxy core before new requests get 503.
    pub core_queue: usize,
    /// Retry-After of that 503, s.
    pub overload_retry_after: u32,
    /// A new request that waited longer than this in the queue is answered 503 instead of
    /// processed, ms. Below the client's T1 (500 ms) so that overload sheds excess work
    /// before retransmissions multiply it, instead of serving stale requests late.
    pub max_queue_delay_ms: u64,
    /// The wait the core's queue may keep standing, ms: when its shortest wait stays above
    /// this for 100 ms, new requests that are neither in a dialog nor carry credentials
    /// are admitted only up to the depth the core drains in this time, and the rest get
    /// 503 + Retry-After at the reader, before they are parsed. 0: off (only `core_queue`
    /// and `max_queue_delay_ms` limit).
    pub queue_target_ms: u64,
}

/// Prometheus endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// HTTP address for `/metrics`, `/healthz`, `/readyz`; `"off"` disables it.
    #[serde(with = "telemetry::listen")]
    pub listen: Option<SocketAddr>,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `plain` or `json`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `edge=debug,info`.
    pub level: String,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            udp: vec![SocketAddr::from(([0, 0, 0, 0], 5060))],
            tcp: vec![SocketAddr::from(([0, 0, 0, 0], 5060))],
            advertise: None,
            domains: vec!["sipcluster.local".into()],
            record_route: true,
            aliases: Vec::new(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            register: true,
            invite: true,
            nonce_secret: None,
            nonce_lifetime_secs: 300,
            users_file: None,
            algorithms: vec!["MD5".into()],
        }
    }
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            default_expires: 3600,
            min_expires: 60,
            max_expires: 7200,
            max_contacts: 10,
        }
    }
}

impl Default for TimersConfig {
    fn default() -> Self {
        TimersConfig {
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            timer_c_secs: 180,
            session_expires_secs: 0,
            min_se_secs: 90,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_message_size: 65_535,
            max_headers: 256,
            max_line_len: 8192,
            tcp_idle_timeout_secs: 600,
            tcp_message_timeout_secs: 10,
            tcp_max_connections: 10_000,
            tcp_max_connections_per_source: 64,
            core_queue: 16_384,
            overload_retry_after: 5,
            max_queue_delay_ms: 200,
            queue_target_ms: 20,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            // Loopback unless configured: metrics and health say what runs and how much;
            // a pod or a Prometheus on another host is given an address deliberately.
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "plain".into(),
            level: "info".into(),
        }
    }
}

pub use telemetry::ConfigError;

/// The token in the file of setting `field`, if one is set; a missing, empty or short
/// file is a configuration error naming the setting.
pub fn read_token(
    field: &'static str,
    path: Option<&std::path::Path>,
) -> Result<Option<grpc_auth::Token>, ConfigError> {
    path.map(grpc_auth::Token::from_file)
        .transpose()
        .map_err(|e| bad(field, e.to_string()))
}

fn bad(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::new(field, problem)
}

impl EdgeConfig {
    /// Parse TOML (unknown keys are errors, so typos do not pass silently).
    pub fn from_toml(text: &str) -> Result<EdgeConfig, ConfigError> {
        toml::from_str(text).map_err(|e| bad("config", e.to_string()))
    }

    /// Check every value; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.hep.validate()?;
        if let Some((field, problem)) = self.accounting.problem() {
            return Err(bad(field, problem));
        }
        let t = &self.timers;
        if t.min_se_secs != 0 && t.min_se_secs < 90 {
            return Err(bad(
                "timers.min_se_secs",
                "RFC 4028 forbids a Min-SE below 90 s; 90 or more, or 0 for none",
            ));
        }
        if t.session_expires_secs != 0 && t.session_expires_secs < t.min_se_secs.max(90) {
            return Err(bad(
                "timers.session_expires_secs",
                "at least timers.min_se_secs (and 90), or 0 to insert none",
            ));
        }
        for r in &self.media.relays {
            if !(r.starts_with("http://") || r.starts_with("https://")) {
                return Err(bad(
                    "media.relays",
                    format!("{r:?}: a gRPC URL, http://host:port"),
                ));
            }
        }
        if self.media.timeout_ms == 0 {
            return Err(bad("media.timeout_ms", "must be positive"));
        }
        if !self.media.relays.is_empty() && self.media.token_file.is_none() {
            return Err(bad(
                "media.token_file",
                "required with media relays: the file of the edge token their control API \
                 accepts (SIPCLUSTER_EDGE_TOKEN_FILE, --edge-token-file); it refuses \
                 anonymous calls",
            ));
        }
        let o = &self.outbound;
        if !o.rules.is_empty() {
            match o.dispatcher.as_deref() {
                Some(u) if u.starts_with("sip:") => {}
                _ => {
                    return Err(bad(
                        "outbound.dispatcher",
                        "outbound rules need the dispatcher's internal SIP URI (sip:host:port)",
                    ));
                }
            }
        }
        for r in &o.rules {
            if r.prefix.is_none() && r.domain.is_none() {
                return Err(bad(
                    "outbound.rules",
                    "each rule needs a prefix or a domain (a catch-all is a domain rule)",
                ));
            }
            if r.set.is_empty()
                || !r
                    .set
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(bad(
                    "outbound.rules.set",
                    format!("{:?}: letters, digits, - and _ only", r.set),
                ));
            }
        }
        if self.sip.udp.is_empty() && self.sip.tcp.is_empty() {
            return Err(bad("sip.udp/sip.tcp", "listen on at least one address"));
        }
        if self.sip.domains.is_empty() {
            return Err(bad("sip.domains", "give at least one domain"));
        }
        for d in &self.sip.domains {
            let ok = !d.is_empty()
                && d.len() <= 253
                && d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
                && !d.starts_with(['.', '-']);
            if !ok {
                return Err(bad("sip.domains", format!("{d:?} is not a domain name")));
            }
        }
        if let Some(a) = self.sip.advertise
            && a.is_unspecified()
        {
            return Err(bad(
                "sip.advertise",
                "must be an address peers can reach, not 0.0.0.0/::",
            ));
        }
        if let Some(e) = &self.location.endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(bad(
                    "location.endpoint",
                    format!("{e:?}: expected http://host:port"),
                ));
            }
            if self.auth.nonce_secret.is_none() {
                return Err(bad(
                    "auth.nonce_secret",
                    "required with a location service: every edge must verify the nonces and flow tokens of the others",
                ));
            }
            if self.location.token_file.is_none() {
                return Err(bad(
                    "location.token_file",
                    "required with a location service: the file of the edge token its API \
                     accepts (SIPCLUSTER_EDGE_TOKEN_FILE, --edge-token-file); it refuses \
                     anonymous calls",
                ));
            }
        }
        if self.location.timeout_ms == 0 || self.location.connect_timeout_ms == 0 {
            return Err(bad("location.*timeout_ms", "must be positive"));
        }
        if self.location.retries > 5 {
            return Err(bad("location.retries", "at most 5"));
        }
        if let Some(s) = &self.auth.nonce_secret
            && s.len() < 16
        {
            return Err(bad("auth.nonce_secret", "use at least 16 characters"));
        }
        if self.auth.algorithms.is_empty()
            || self
                .auth
                .algorithms
                .iter()
                .any(|a| sip_auth::Algorithm::from_name(a).is_none())
        {
            return Err(bad(
                "auth.algorithms",
                format!("{:?}: use MD5 and/or SHA-256", self.auth.algorithms),
            ));
        }
        for c in &self.security.trusted_peers {
            if let Some(name) = c.strip_prefix(TLS_PEER) {
                if name.is_empty() || name.len() > 253 || name.contains(char::is_whitespace) {
                    return Err(bad(
                        "security.trusted_peers",
                        format!(
                            "{c:?}: tls: takes a certificate's DNS name (tls:trunk.example.net)"
                        ),
                    ));
                }
            } else if let Err(e) = c.parse::<dispatch_core::Cidr>() {
                return Err(bad("security.trusted_peers", e.to_string()));
            }
        }
        self.tls.validate()?;
        for c in &self.security.allow_list {
            if let Err(e) = c.parse::<dispatch_core::Cidr>() {
                return Err(bad("security.allow_list", e.to_string()));
            }
        }
        if self.security.ban_sync_ms < 50 {
            return Err(bad("security.ban_sync_ms", "at least 50"));
        }
        if self.security.flood_drops > 0
            && (self.security.flood_window_secs == 0 || self.security.flood_ban_secs == 0)
        {
            return Err(bad(
                "security.flood_window_secs",
                "flood_window_secs and flood_ban_secs at least 1 while flood_drops is on",
            ));
        }
        let cl = &self.call_limits;
        if !(400..=699).contains(&cl.refuse_code) || matches!(cl.refuse_code, 401 | 407) {
            return Err(bad(
                "call_limits.refuse_code",
                format!(
                    "{}: a final failure status, 400 to 699, not a challenge (486, 403, 480, 503...)",
                    cl.refuse_code
                ),
            ));
        }
        if cl.setup_ttl_secs == 0 {
            return Err(bad("call_limits.setup_ttl_secs", "at least 1"));
        }
        for (trunk, peers) in &cl.trunk_peers {
            if !cl.trunks.contains_key(trunk) {
                return Err(bad(
                    "call_limits.trunk_peers",
                    format!("{trunk:?} has no limit in call_limits.trunks"),
                ));
            }
            for p in peers {
                if !p.starts_with(TLS_PEER)
                    && let Err(e) = p.parse::<dispatch_core::Cidr>()
                {
                    return Err(bad("call_limits.trunk_peers", e.to_string()));
                }
            }
        }
        self.websocket.validate(&self.tls)?;
        if self.security.auth_failure_window_secs == 0
            && (self.security.auth_failures_per_source > 0
                || self.security.auth_failures_per_user > 0)
        {
            return Err(bad(
                "security.auth_failure_window_secs",
                "must be positive while failed logins are limited",
            ));
        }
        if self.auth.nonce_lifetime_secs == 0 {
            return Err(bad("auth.nonce_lifetime_secs", "must be positive"));
        }
        let r = &self.registrar;
        if r.min_expires == 0
            || r.min_expires > r.default_expires
            || r.default_expires > r.max_expires
        {
            return Err(bad(
                "registrar",
                format!(
                    "need 0 < min_expires ({}) <= default_expires ({}) <= max_expires ({})",
                    r.min_expires, r.default_expires, r.max_expires
                ),
            ));
        }
        if r.max_contacts == 0 {
            return Err(bad("registrar.max_contacts", "must be positive"));
        }
        let t = &self.timers;
        if t.t1_ms == 0 || t.t2_ms < t.t1_ms || t.t4_ms == 0 {
            return Err(bad("timers", "need 0 < t1_ms <= t2_ms and t4_ms > 0"));
        }
        if t.timer_c_secs < 180 {
            // RFC 3261 §16.6 step 11: Timer C MUST be larger than 3 minutes.
            return Err(bad(
                "timers.timer_c_secs",
                "must be at least 180 (RFC 3261 §16.6)",
            ));
        }
        let l = &self.limits;
        if l.max_message_size < 1024
            || l.max_headers < 16
            || l.max_line_len < 256
            || l.max_line_len > 65_535
        {
            return Err(bad(
                "limits",
                "max_message_size >= 1024, max_headers >= 16, 256 <= max_line_len <= 65535",
            ));
        }
        if l.core_queue == 0 || l.tcp_idle_timeout_secs == 0 || l.max_queue_delay_ms == 0 {
            return Err(bad(
                "limits",
                "core_queue, tcp_idle_timeout_secs and max_queue_delay_ms must be positive",
            ));
        }
        if l.tcp_message_timeout_secs == 0 || l.tcp_message_timeout_secs > l.tcp_idle_timeout_secs {
            return Err(bad(
                "limits.tcp_message_timeout_secs",
                "positive and not above tcp_idle_timeout_secs",
            ));
        }
        if l.tcp_max_connections == 0
            || l.tcp_max_connections_per_source == 0
            || l.tcp_max_connections_per_source > l.tcp_max_connections
        {
            return Err(bad(
                "limits.tcp_max_connections",
                "need 0 < tcp_max_connections_per_source <= tcp_max_connections",
            ));
        }
        if self.log.format != "plain" && self.log.format != "json" {
            return Err(bad(
                "log.format",
                format!("{:?}: use plain or json", self.log.format),
            ));
        }
        telemetry::logging::check_level(&self.log.level)?;
        Ok(())
    }

    /// The configuration as TOML that `--config` reads back to the same settings. The
    /// nonce secret is left out (secrets are never printed): give it again by the
    /// environment or a file of its own.
    pub fn to_toml(&self) -> String {
        let secret = self.auth.nonce_secret.is_some().then_some(
            "auth.nonce_secret is set but not printed: pass it again (SIPCLUSTER_NONCE_SECRET).",
        );
        telemetry::config_file::to_toml("edge / all-in-one", self, secret.as_slice())
    }

    /// The challenge algorithms, in order (validated names).
    pub fn auth_algorithms(&self) -> Vec<sip_auth::Algorithm> {
        self.auth
            .algorithms
            .iter()
            .filter_map(|a| sip_auth::Algorithm::from_name(a))
            .collect()
    }

    /// The transaction timers.
    pub fn timer_config(&self) -> sip_txn::TimerConfig {
        let t = &self.timers;
        sip_txn::TimerConfig {
            t1: Duration::from_millis(t.t1_ms),
            t2: Duration::from_millis(t.t2_ms),
            t4: Duration::from_millis(t.t4_ms),
            timer_d: Duration::from_secs(32).max(Duration::from_millis(t.t1_ms * 64)),
        }
    }

    /// The location client's settings (cluster mode), when an endpoint is configured,
    /// with the edge token read from its file.
    pub fn location_client(&self) -> Result<Option<location_client::ClientConfig>, ConfigError> {
        let l = &self.location;
        let Some(endpoint) = l.endpoint.clone() else {
            return Ok(None);
        };
        Ok(Some(location_client::ClientConfig {
            endpoint,
            timeout: Duration::from_millis(l.timeout_ms),
            connect_timeout: Duration::from_millis(l.connect_timeout_ms),
            retries: l.retries,
            credentials_ttl: Duration::from_secs(l.credentials_cache_secs),
            token: read_token("location.token_file", l.token_file.as_deref())?,
        }))
    }

    /// The SIP transports' settings for these listening addresses.
    pub fn transport_config(
        &self,
        udp: Vec<SocketAddr>,
        tcp: Vec<SocketAddr>,
    ) -> sip_transport::TransportConfig {
        let l = &self.limits;
        sip_transport::TransportConfig {
            udp,
            tcp,
            // The edge is reached in the clear inside the cluster; TLS ends at the
            // dispatcher (the all-in-one's included: its `[tls]` is its dispatcher's).
            tls: None,
            ws: Vec::new(),
            wss: Vec::new(),
            ws_allowed_origins: Vec::new(),
            // The edge's runner puts its guard's blocklist here.
            blocklist: None,
            // The edge's guard counts requests after parsing (a token bucket per source,
            // flood bans when it sheds too often); it hears clients through dispatchers,
            // whose own meters count before parsing.
            flood: None,
            limits: self.parser_limits(),
            tcp_idle_timeout: Duration::from_secs(l.tcp_idle_timeout_secs),
            tcp_message_timeout: Duration::from_secs(l.tcp_message_timeout_secs),
            tcp_max_connections: l.tcp_max_connections,
            tcp_max_connections_per_source: l.tcp_max_connections_per_source,
            tcp_connect_timeout: Duration::from_secs(5),
            overload_retry_after: l.overload_retry_after,
            // The edge's runner puts its exporter's sink here.
            capture: hep::HepSink::disabled(),
        }
    }

    /// Parser limits.
    pub fn parser_limits(&self) -> sip_core::Limits {
        sip_core::Limits {
            max_message_size: self.limits.max_message_size,
            max_headers: self.limits.max_headers,
            max_line_len: self.limits.max_line_len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        EdgeConfig::default().validate().unwrap();
    }

    #[test]
    fn trunk_peers_name_a_limited_trunk_and_valid_peers() {
        let c = EdgeConfig::from_toml(
            "[call_limits]\ntrunks = { pstn = { calls = 30 } }\n\
             trunk_peers = { pstn = [\"192.0.2.0/24\", \"tls:carrier.example.net\"] }\n",
        )
        .unwrap();
        c.validate().unwrap();
        let no_limit =
            EdgeConfig::from_toml("[call_limits]\ntrunk_peers = { pstn = [\"192.0.2.0/24\"] }\n")
                .unwrap();
        assert_eq!(
            no_limit.validate().unwrap_err().field,
            "call_limits.trunk_peers"
        );
        let bad_block = EdgeConfig::from_toml(
            "[call_limits]\ntrunks = { pstn = { calls = 30 } }\ntrunk_peers = { pstn = [\"192.0.2.0/99\"] }\n",
        )
        .unwrap();
        assert_eq!(
            bad_block.validate().unwrap_err().field,
            "call_limits.trunk_peers"
        );
    }

    #[test]
    fn media_policy_per_domain() {
        let c = EdgeConfig::from_toml(
            "[media]\nrelays = [\"http://r:50053\"]\nanchor = \"nat\"\ntoken_file = \"/t\"\n\
             [[media.rules]]\ndomain = \"LAN.example.com\"\nanchor = \"never\"\n\
             [[media.rules]]\ndomain = \"pstn.example.com\"\nanchor = \"always\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.media.policy_for("lan.example.com"), Anchor::Never);
        assert_eq!(c.media.policy_for("pstn.example.com"), Anchor::Always);
        assert_eq!(c.media.policy_for("other.example.com"), Anchor::Nat);
        // No relay configured: nothing is anchored, whatever the policy says.
        assert_eq!(MediaConfig::default().policy_for("x"), Anchor::Never);
        let bad = EdgeConfig::from_toml("[media]\nrelays = [\"r:50053\"]\n").unwrap();
        assert_eq!(bad.validate().unwrap_err().field, "media.relays");
        let no_token = EdgeConfig::from_toml("[media]\nrelays = [\"http://r:50053\"]\n").unwrap();
        assert_eq!(no_token.validate().unwrap_err().field, "media.token_file");
        // The sample configuration parses to the defaults of this section.
        let sample = EdgeConfig::from_toml(crate::SAMPLE_CONFIG).unwrap();
        assert_eq!(sample.media, MediaConfig::default());
    }

    #[test]
    fn toml_overrides_and_rejects_unknown_keys() {
        let c = EdgeConfig::from_toml("[sip]\nudp = [\"127.0.0.1:5080\"]\ndomains = [\"example.com\"]\n[registrar]\nmin_expires = 30\n").unwrap();
        assert_eq!(
            c.sip.udp,
            vec!["127.0.0.1:5080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            c.sip.tcp,
            SipConfig::default().tcp,
            "untouched keys keep defaults"
        );
        assert_eq!(c.registrar.min_expires, 30);
        let e = EdgeConfig::from_toml("[sip]\nudpp = []\n").unwrap_err();
        assert!(e.problem.contains("unknown field"), "{e}");
    }

    #[test]
    fn check_config_output_reads_back_to_the_same_settings() {
        let mut c = EdgeConfig::from_toml(crate::SAMPLE_CONFIG).unwrap();
        assert_eq!(c, EdgeConfig::default(), "the sample states the defaults");
        c.sip.advertise = Some("192.0.2.10".parse().unwrap());
        c.metrics.listen = None;
        c.all_in_one.admin_listen = None;
        c.auth.algorithms = vec!["SHA-256".into(), "MD5".into()];
        c.outbound.dispatcher = Some("sip:d:5070".into());
        c.outbound.rules.push(OutboundRule {
            prefix: Some("+1".into()),
            domain: None,
            set: "carrier".into(),
        });
        c.media.rules.push(AnchorRule {
            domain: "lan".into(),
            anchor: Anchor::Never,
        });
        let text = c.to_toml();
        assert!(text.contains("listen = \"off\""), "{text}");
        assert_eq!(EdgeConfig::from_toml(&text).unwrap(), c, "{text}");
        // The secret is never printed, only said to be set.
        c.auth.nonce_secret = Some("a-secret-nobody-may-read-0123".into());
        let text = c.to_toml();
        assert!(!text.contains("a-secret-nobody"), "{text}");
        assert!(
            text.contains("nonce_secret is set but not printed"),
            "{text}"
        );
    }

    #[test]
    fn a_log_level_that_would_print_nothing_is_refused() {
        let mut c = EdgeConfig::default();
        c.log.level = "verbose".into();
        assert_eq!(c.validate().unwrap_err().field, "log.level");
        c.log.level = "edge=debug,info".into();
        c.validate().unwrap();
    }

    #[test]
    fn validation_errors_name_the_setting() {
        let mut c = EdgeConfig::default();
        c.location.endpoint = Some("http://location:50051".into());
        c.auth.nonce_secret = Some("0123456789abcdef0123".into());
        assert_eq!(c.validate().unwrap_err().field, "location.token_file");
        c.location.token_file = Some("/nonexistent/edge-token".into());
        c.validate().unwrap();
        assert_eq!(
            c.location_client().unwrap_err().field,
            "location.token_file"
        );
        let mut c = EdgeConfig::default();
        c.registrar.min_expires = 9000;
        assert_eq!(c.validate().unwrap_err().field, "registrar");
        let mut c = EdgeConfig::default();
        c.timers.timer_c_secs = 60;
        assert_eq!(c.validate().unwrap_err().field, "timers.timer_c_secs");
        let mut c = EdgeConfig::default();
        c.sip.domains = vec!["bad domain".into()];
        assert_eq!(c.validate().unwrap_err().field, "sip.domains");
        let mut c = EdgeConfig::default();
        c.sip.advertise = Some("0.0.0.0".parse().unwrap());
        assert_eq!(c.validate().unwrap_err().field, "sip.advertise");
        let mut c = EdgeConfig::default();
        c.auth.nonce_secret = Some("short".into());
        assert_eq!(c.validate().unwrap_err().field, "auth.nonce_secret");
        let mut c = EdgeConfig::default();
        c.auth.algorithms = vec!["SHA-512".into()];
        assert_eq!(c.validate().unwrap_err().field, "auth.algorithms");
        let mut c = EdgeConfig::default();
        c.limits.tcp_message_timeout_secs = 0;
        assert_eq!(
            c.validate().unwrap_err().field,
            "limits.tcp_message_timeout_secs"
        );
        let mut c = EdgeConfig::default();
        c.limits.tcp_max_connections_per_source = 20_000;
        assert_eq!(
            c.validate().unwrap_err().field,
            "limits.tcp_max_connections"
        );
        let mut c = EdgeConfig::default();
        c.log.format = "xml".into();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "invalid configuration: log.format: \"xml\": use plain or json"
        );
    }
}

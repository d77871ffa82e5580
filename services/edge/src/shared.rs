//! What every stage of the request path shares: configuration, identity, the stores,
//! the defences and the metrics of this edge.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use sip_auth::{NonceKey, NonceUses, SubscriberStore};
use sip_registrar::LocationStore;

use sip_txn::{FlowId, Target};

use crate::config::{ConfigError, EdgeConfig};
use crate::local::Local;
use crate::metrics::EdgeMetrics;

/// What the decision tasks share.
pub struct Shared {
    /// Configuration.
    pub cfg: EdgeConfig,
    /// Identity.
    pub local: Local,
    /// Location store (registrations).
    pub store: Arc<dyn LocationStore>,
    /// Subscriber credentials.
    pub users: Arc<dyn SubscriberStore>,
    /// Nonce key shared with the other edges.
    pub nonces: NonceKey,
    /// Metrics.
    pub metrics: EdgeMetrics,
    /// This edge's instance id (recorded with bindings for flow affinity).
    pub instance: String,
    /// The open connections (is a registered flow still there, where does it go).
    pub flows: Arc<dyn Flows>,
    /// Draining: OPTIONS to the edge say 503, so dispatchers send no new dialogs.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Media relays, when anchoring is configured.
    pub relays: Option<Arc<crate::media::Relays>>,
    /// The rate limits of the operator's log lines.
    pub audit: crate::audit::Audit,
    /// The cluster secret as the dispatchers use it: dialog tokens, signed Vias.
    pub tokens: dispatch_core::TokenKey,
    /// `security.trusted_peers`, parsed.
    pub trusted: Vec<dispatch_core::Cidr>,
    /// Peers trusted by the name their verified certificate proves (`tls:NAME`).
    pub trusted_names: Vec<String>,
    /// Which trunk a call comes from (`call_limits.trunk_peers`).
    pub trunk_peers: crate::limit::TrunkPeers,
    /// `security.deny_user_agents`.
    pub deny: dispatch_core::UserAgentDeny,
    /// Per-source rate limit, failed-login bans and locks.
    pub guard: crate::guard::Guard,
    /// The `(nonce, nc)` pairs already used (replay protection), shared by the edges.
    pub nonce_uses: Arc<dyn NonceUses>,
    /// Dialog records (accounting), shared by the edges.
    pub dialogs: Arc<dyn crate::dialogs::DialogStore>,
    /// Call events and CDRs, when accounting is on.
    pub accounting: Option<Arc<accounting::Accounting>>,
    /// The cluster-wide call limits' counts, when `[call_limits]` sets any.
    pub limits: Option<Arc<dyn crate::limit::CallLimits>>,
    /// The cluster's bans (none in the all-in-one and a standalone edge).
    pub bans: Option<Arc<dyn crate::bans::ClusterBans>>,
}

/// The stores an edge works over: in memory in the all-in-one, the location service's
/// in a cluster.
pub struct Stores {
    /// Subscriber credentials.
    pub users: Arc<dyn SubscriberStore>,
    /// Registrations.
    pub store: Arc<dyn LocationStore>,
    /// The `(nonce, nc)` pairs already used.
    pub nonce_uses: Arc<dyn NonceUses>,
    /// Dialog records.
    pub dialogs: Arc<dyn crate::dialogs::DialogStore>,
    /// Call-limit counts (used when `[call_limits]` sets any).
    pub limits: Arc<dyn crate::limit::CallLimits>,
    /// The cluster's bans, in a cluster.
    pub bans: Option<Arc<dyn crate::bans::ClusterBans>>,
    /// Where the guard's source bans are dropped on arrival when the clients' packets do
    /// not reach this edge's own transports first (the all-in-one: its dispatcher's
    /// public side). `None`: this edge's transports. Never both: in the all-in-one the
    /// edge's transport hears every client from the dispatcher's loopback address, so a
    /// banned client on that address would cut off everybody.
    pub blocklist: Option<Arc<sip_transport::Blocklist>>,
}

impl Shared {
    /// What the stages share, from the (validated) configuration, the stores, the open
    /// connections and the bound addresses. `secret` signs nonces, dialog tokens and
    /// flow tokens; `instance` names this edge. `accounting` is the started pipeline.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: EdgeConfig,
        stores: Stores,
        flows: Arc<dyn Flows>,
        bound: (&[SocketAddr], &[SocketAddr]),
        metrics: EdgeMetrics,
        secret: String,
        instance: String,
        accounting: Option<Arc<accounting::Accounting>>,
    ) -> Result<Shared, ConfigError> {
        let local = Local {
            aliases: cfg.sip.aliases.clone(),
            ..Local::new(cfg.sip.advertise, bound.0, bound.1, &cfg.sip.domains)
        };
        let tokens = dispatch_core::TokenKey::new(secret.as_bytes());
        let nonces = NonceKey::new(secret, Duration::from_secs(cfg.auth.nonce_lifetime_secs))
            .map_err(|e| ConfigError::new("auth.nonce_secret", e.to_string()))?;
        let relays = crate::media::Relays::new(&cfg.media)?;
        Ok(Shared {
            relays,
            draining: Arc::new(AtomicBool::new(false)),
            local,
            store: stores.store,
            users: stores.users,
            nonces,
            metrics,
            instance,
            flows,
            audit: crate::audit::Audit::new(tokens.clone()),
            tokens,
            trusted: cfg.security.trusted(),
            trusted_names: cfg.security.trusted_names(),
            trunk_peers: crate::limit::TrunkPeers::new(&cfg.call_limits),
            deny: dispatch_core::UserAgentDeny::new(&cfg.security.deny_user_agents),
            guard: crate::guard::Guard::new(&cfg.security),
            nonce_uses: stores.nonce_uses,
            dialogs: stores.dialogs,
            accounting,
            limits: cfg.call_limits.any().then_some(stores.limits),
            bans: stores.bans,
            cfg,
        })
    }
}

/// The connections the transports hold, as the stages see them: the only thing they ask
/// the transports (the core itself never touches a socket).
pub trait Flows: Send + Sync {
    /// Is this connection still open?
    fn alive(&self, flow: FlowId) -> bool;
    /// Where a request on this connection goes, while it is open.
    fn target(&self, flow: FlowId) -> Option<Target>;
}

impl Flows for sip_transport::Transports {
    fn alive(&self, flow: FlowId) -> bool {
        self.flow_alive(flow)
    }
    fn target(&self, flow: FlowId) -> Option<Target> {
        self.flow_target(flow)
    }
}

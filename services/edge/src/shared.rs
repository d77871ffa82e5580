//! What every stage of the request path shares: configuration, identity, the stores,
//! the defences and the metrics of this edge.

use std::sync::Arc;

use sip_auth::{NonceKey, NonceUses, SubscriberStore};
use sip_registrar::LocationStore;

use crate::config::EdgeConfig;
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
    /// The transports (to ask whether a registered connection is still open).
    pub transports: sip_transport::Transports,
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
    /// `security.deny_user_agents`.
    pub deny: dispatch_core::UserAgentDeny,
    /// Per-source rate limit, failed-login bans and locks.
    pub guard: crate::guard::Guard,
    /// The `(nonce, nc)` pairs already used (replay protection), shared by the edges.
    pub nonce_uses: Arc<dyn NonceUses>,
}

//! # edge: the sipcluster edge proxy and registrar
//!
//! A stateful RFC 3261 §16 proxy and §10 registrar with no state that outlives a
//! transaction: registrations live in a [`sip_registrar::LocationStore`], credentials in a
//! [`sip_auth::SubscriberStore`], nonces are stateless HMAC tokens any edge can verify.
//!
//! Data flow: [`sip_transport`] parses inbound bytes → the core task ([`core`]) validates,
//! runs the [`sip_txn`] transaction layer and the response contexts ([`forking`]) →
//! new requests go to decision tasks ([`decide`]: Route processing, digest auth,
//! registrar, location lookup) → forwarded copies are byte-edited with
//! [`sip_core::Editor`] and sent through the transaction layer.
//!
//! [`start`] runs an edge with in-memory stores and the demo users: the all-in-one.

pub mod account;
pub mod ack;
pub mod anchor;
pub mod audit;
pub mod authenticate;
pub mod bans;
pub mod config;
pub mod core;
pub mod decide;
pub mod decision;
pub mod dialogs;
pub mod driver;
pub mod for_me;
pub mod forking;
pub mod forward;
pub mod guard;
pub mod in_dialog;
pub mod limit;
pub mod local;
pub mod locate;
pub mod loose_route;
pub mod media;
pub mod metrics;
pub mod nat;
pub mod origin;
pub mod outbound;
pub mod register;
pub mod route;
pub mod session_timer;
pub mod shared;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sip_auth::{FileStore, MemoryNonceUses};
use sip_registrar::{MemoryStore, Policy};
use sip_transport::{TransportError, Transports};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use config::{ConfigError, EdgeConfig};

/// The demo users embedded in the binary (`deploy/all-in-one/users.toml`).
pub const DEMO_USERS: &str = include_str!("../../../deploy/all-in-one/users.toml");
/// The sample configuration (`deploy/all-in-one/sipcluster.toml`).
pub const SAMPLE_CONFIG: &str = include_str!("../../../deploy/all-in-one/sipcluster.toml");

/// Why an edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket could not be bound.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The users file is unusable.
    #[error("users: {0}")]
    Users(sip_auth::Error),
    /// The metrics endpoint could not be bound.
    #[error("metrics endpoint {addr}: {source}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No randomness for the nonce secret.
    #[error("random source: {0}")]
    Random(String),
    /// Accounting could not start (its spool, its destination).
    #[error(transparent)]
    Accounting(#[from] accounting::StartError),
    /// The HEP exporter could not start.
    #[error("hep: {0}")]
    Hep(#[from] hep::HepError),
}

/// A running edge.
#[derive(Debug)]
pub struct EdgeHandle {
    /// Bound UDP addresses.
    pub udp: Vec<SocketAddr>,
    /// Bound TCP addresses.
    pub tcp: Vec<SocketAddr>,
    /// Bound metrics address.
    pub metrics: Option<SocketAddr>,
    /// Instance id.
    pub instance: String,
    /// False while draining.
    pub ready: Arc<AtomicBool>,
    /// Some media relay answers (when calls need one: relays configured and
    /// `media.on_failure = "reject"`). Only a single-process deployment (the all-in-one)
    /// makes it a readiness condition: see [`EdgeHandle::readiness`].
    relays_available: Option<Arc<AtomicBool>>,
    metrics_set: metrics::EdgeMetrics,
    /// The HEP exporter (its task stops when the handle drops) and its metrics.
    hep_exporter: hep::HepExporter,
    hep_metrics: hep::HepMetrics,
    transports: Transports,
    draining: Arc<AtomicBool>,
    drain: Duration,
    shutdown: oneshot::Sender<()>,
    join: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    accounting: Option<Arc<accounting::Accounting>>,
    drain_accounting: Duration,
}

impl EdgeHandle {
    /// The SIP transports (for an in-process link to a dispatcher in the same process:
    /// see `sip_transport::link_in_process`).
    pub fn transports(&self) -> &Transports {
        &self.transports
    }

    /// Stop the edge and wait for the core to finish; then publish what accounting
    /// still holds, for up to `accounting.drain_secs` (what is left stays in the spool
    /// for the next start).
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.join.await;
        for t in self.tasks {
            t.abort();
        }
        if let Some(acc) = self.accounting {
            let timeout = self.drain_accounting;
            let left = tokio::task::spawn_blocking(move || acc.drain(timeout))
                .await
                .unwrap_or(0);
            if left > 0 {
                tracing::warn!(
                    events = left,
                    "accounting: events not yet published stay in the spool for the next start"
                );
            }
        }
    }

    /// What the all-in-one's `/readyz` checks for its edge: not draining, and a media
    /// relay answers when calls need one. An edge in a cluster serves only the first on
    /// its own `/readyz`: every edge shares the relays, so a relay outage would make
    /// them all unready at once and take REGISTERs and calls without media down with
    /// them; it shows in `sipcluster_media_relays_up` and the log instead.
    pub fn readiness(&self) -> telemetry::Readiness {
        let r = telemetry::Readiness::from(self.ready.clone());
        match &self.relays_available {
            Some(a) => r.and("no media relay answers", a.clone()),
            None => r,
        }
    }

    /// Register every edge metric (for a process that serves several roles on one
    /// `/metrics`).
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics_set.register(registry);
        // A process of several roles exports through one of them (the all-in-one: its
        // dispatcher); a disabled exporter's series would be a second family of the name.
        if self.hep_exporter.sink().is_enabled() {
            self.hep_metrics.register(registry);
        }
    }

    /// SIGTERM: not ready and 503 to OPTIONS (dispatchers stop sending new dialogs at
    /// once) for `runtime.drain_secs` while transactions finish; then stop.
    pub async fn drain_and_stop(self) {
        if !self.drain.is_zero() {
            self.ready.store(false, Ordering::Relaxed);
            self.draining.store(true, Ordering::Relaxed);
            tracing::info!(secs = self.drain.as_secs(), "draining");
            tokio::time::sleep(self.drain).await;
        }
        self.stop().await;
    }

    /// Wait until the core ends (it does not on its own; for `main`).
    pub async fn wait(&mut self) {
        let _ = (&mut self.join).await;
    }

    /// Ask the core to stop without waiting.
    pub fn shutdown(self) -> JoinHandle<()> {
        let _ = self.shutdown.send(());
        for t in self.tasks {
            t.abort();
        }
        self.join
    }
}

/// `bytes` random bytes in hex: generated secrets and instance ids.
pub fn random_hex(bytes: usize) -> Result<String, EdgeError> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| EdgeError::Random(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Load the subscriber store the configuration names (the demo users when none).
pub fn load_users(cfg: &EdgeConfig) -> Result<FileStore, EdgeError> {
    match &cfg.auth.users_file {
        Some(p) => FileStore::from_path(p).map_err(EdgeError::Users),
        None => FileStore::from_toml_str(DEMO_USERS).map_err(EdgeError::Users),
    }
}

/// Start an edge with in-memory registrations and the configured users (the all-in-one).
pub async fn start(cfg: EdgeConfig) -> Result<EdgeHandle, EdgeError> {
    let users = Arc::new(load_users(&cfg)?);
    let r = &cfg.registrar;
    let store = Arc::new(MemoryStore::new(Policy {
        default_expires: r.default_expires,
        min_expires: r.min_expires,
        max_expires: r.max_expires,
        max_contacts: r.max_contacts,
    }));
    start_with(
        cfg,
        shared::Stores {
            users,
            store,
            nonce_uses: Arc::new(MemoryNonceUses::default()),
            dialogs: Arc::new(dialogs::MemoryDialogs::default()),
            limits: Arc::new(limit::MemoryLimits::default()),
            bans: None,
            blocklist: None,
        },
        accounting::Destination::Off,
    )
    .await
}

/// Start an edge in cluster mode: registrations and credentials through the location
/// service named by `location.endpoint`.
pub async fn start_cluster(cfg: EdgeConfig) -> Result<EdgeHandle, EdgeError> {
    cfg.validate()?;
    let Some(client_cfg) = cfg.location_client()? else {
        return Err(EdgeError::Config(ConfigError {
            field: "location.endpoint",
            problem: "required in cluster mode".into(),
        }));
    };
    let client = Arc::new(
        location_client::LocationClient::new(client_cfg).map_err(|e| {
            EdgeError::Config(ConfigError {
                field: "location.endpoint",
                problem: e.to_string(),
            })
        })?,
    );
    // Replay tracking in the location service's shared set: a digest accepted by one
    // edge is refused when replayed to any other.
    start_with(
        cfg,
        shared::Stores {
            users: client.clone(),
            store: client.clone(),
            nonce_uses: client.clone(),
            dialogs: client.clone(),
            limits: client.clone(),
            bans: Some(client),
            blocklist: None,
        },
        accounting::Destination::Off,
    )
    .await
}

/// Start an edge over the given stores: credentials, registrations, the used
/// `(nonce, nc)` pairs (shared by every edge of a cluster, for replay protection) and
/// dialog records. Accounting goes where `[accounting]` says, else to `accounting`.
pub async fn start_with(
    cfg: EdgeConfig,
    stores: shared::Stores,
    accounting: accounting::Destination,
) -> Result<EdgeHandle, EdgeError> {
    cfg.validate()?;
    let metrics = metrics::EdgeMetrics::default();
    // Started first: the spool's replay of a previous run is published while this edge
    // takes new calls.
    let acc = cfg
        .accounting
        .start(accounting, metrics.accounting.clone())?
        .map(Arc::new);
    if acc.is_some() {
        tracing::info!(
            destination = ?cfg.accounting.destination_or(accounting),
            spool = %cfg.accounting.spool_dir.display(),
            "accounting on: call events and CDRs"
        );
    }
    let hep_metrics = hep::HepMetrics::default();
    let hep = hep::HepExporter::start(&cfg.hep, &hep_metrics)?;
    let (tx, rx) = mpsc::channel(cfg.limits.core_queue);
    let mut tcfg = cfg.transport_config(cfg.sip.udp.clone(), cfg.sip.tcp.clone());
    tcfg.capture = hep.sink();
    // The guard's bans are dropped by the transports on arrival: this edge's, or those
    // that receive the clients' packets before it.
    let blocklist = match &stores.blocklist {
        Some(outside) => outside.clone(),
        None => {
            let own = Arc::new(sip_transport::Blocklist::default());
            tcfg.blocklist = Some(own.clone());
            own
        }
    };
    let (transports, tasks) = Transports::bind(tcfg, tx, metrics.transport.clone()).await?;
    let secret = match &cfg.auth.nonce_secret {
        Some(s) => s.clone(),
        None => random_hex(32)?,
    };
    let instance = random_hex(6)?;
    let mut shared = shared::Shared::new(
        cfg,
        stores,
        Arc::new(transports.clone()),
        (transports.udp_addrs(), transports.tcp_addrs()),
        metrics.clone(),
        secret,
        instance.clone(),
        acc.clone(),
    )?;
    shared.guard = guard::Guard::with_blocklist(&shared.cfg.security, blocklist);
    let shared = Arc::new(shared);
    let (cfg, local) = (&shared.cfg, &shared.local);
    let ready = Arc::new(AtomicBool::new(true));
    let mut tasks = tasks;
    // With `on_failure = "pass"` calls go through without a relay: it is no condition.
    let relays_available = shared
        .relays
        .as_ref()
        .filter(|_| cfg.media.on_failure == config::OnRelayFailure::Reject)
        .map(|r| r.available());
    if let Some(r) = &shared.relays {
        tasks.push(r.spawn_monitor(metrics.media_relays_up.clone()));
        tracing::info!(relays = ?r, anchor = ?cfg.media.anchor, "media anchoring on");
    }
    let metrics_addr = match cfg.metrics.listen {
        Some(addr) => {
            let mut registry = prometheus_client::registry::Registry::default();
            metrics.register(&mut registry);
            hep_metrics.register(&mut registry);
            let (bound, task) = telemetry::spawn_endpoint(addr, registry, ready.clone())
                .await
                .map_err(|source| EdgeError::Metrics { addr, source })?;
            tasks.push(task);
            Some(bound)
        }
        None => None,
    };
    let (udp, tcp) = (
        transports.udp_addrs().to_vec(),
        transports.tcp_addrs().to_vec(),
    );
    tracing::info!(
        ?udp,
        ?tcp,
        advertise = %local.advertise,
        domains = ?local.domains,
        auth_register = cfg.auth.register,
        auth_calls = cfg.auth.invite,
        auth_algorithms = ?cfg.auth.algorithms,
        %instance,
        "edge started"
    );
    // Registration gauge: the store is the truth, refreshed every few seconds.
    {
        let (store, gauge) = (shared.store.clone(), metrics.registrations.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                if let Ok(s) = store.stats(sip_registrar::unix_now()).await {
                    gauge.set(i64::try_from(s.bindings).unwrap_or(i64::MAX));
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }));
    }
    // The cluster's bans in force here, and the gauges of the bans.
    tasks.push(tokio::spawn(bans::sync_loop(shared.clone())));
    if shared.accounting.is_some() {
        // Calls whose BYE never comes (or whose session timer lapses) end with a CDR.
        tasks.push(tokio::spawn(account::reap_loop(shared.clone())));
    }
    let draining = shared.draining.clone();
    let drain = Duration::from_secs(shared.cfg.runtime.drain_secs);
    let drain_accounting = Duration::from_secs(shared.cfg.accounting.drain_secs);
    let core = core::Core::new(shared.clone(), std::time::Instant::now());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let join = tokio::spawn(driver::run(
        core,
        shared,
        transports.clone(),
        rx,
        async move {
            let _ = stop_rx.await;
        },
    ));
    Ok(EdgeHandle {
        udp,
        tcp,
        metrics: metrics_addr,
        instance,
        ready,
        relays_available,
        metrics_set: metrics,
        hep_exporter: hep,
        hep_metrics,
        transports,
        draining,
        drain,
        shutdown: stop_tx,
        join,
        tasks,
        accounting: acc,
        drain_accounting,
    })
}

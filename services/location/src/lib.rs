//! # location: the sipcluster location service
//!
//! Registrations, digest credentials and dialog records, shared by every edge proxy over
//! gRPC (`proto/sipcluster/location/v1/location.proto`), so that a user registered
//! through one edge is reachable through every other, and no edge holds state that dies
//! with it.
//!
//! Data flow: edge ([`location_client::LocationClient`]) → tonic → the bearer-token check
//! (`grpc_auth`, [`server::POLICY`]: edge token for the edges' calls, admin token for the
//! operators') → [`server`] (converts and validates, counts, times) → a [`backend::Backend`]: Redis (standalone or Cluster;
//! optimistic compare-and-set per AOR around the shared registrar rules), or memory.
//! Binding changes are published (Redis pub/sub, or in process) to WatchBindings streams.
//!
//! The all-in-one runs the memory backend in process and hands the edge an
//! [`InProcess`] store (no gRPC hop on the hot path); it may still serve the gRPC API for
//! the `sipcluster users` admin commands.

pub mod backend;
pub mod config;
pub mod integrity;
pub mod metrics;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use location_client::pb::location_server::LocationServer;
use sip_registrar::{
    Aor, Binding, LocationStore, RegisterOutcome, RegisterRequest, StoreError, StoreStats,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use backend::{Backend, BackendError, MemoryBackend, RedisBackend};
pub use config::{ConfigError, LocationConfig};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The backend could not be set up.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The users file is unusable.
    #[error("users file: {0}")]
    Users(sip_auth::Error),
    /// The API's tokens are missing or unusable.
    #[error("location API: {0}")]
    Auth(#[from] grpc_auth::AuthError),
    /// A listening socket could not be bound.
    #[error("{what} {addr}: {source}")]
    Bind {
        /// gRPC or metrics.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A users file, parsed (HA1s only).
pub type Users = Arc<sip_auth::MemoryStore>;

/// Build the backend the configuration names (reading the Redis password file, if any),
/// and read its users file (provisioned when the service starts, and again after a data
/// loss with `on_data_loss = "reprovision"`).
pub fn backend_from(
    cfg: &LocationConfig,
) -> Result<(Arc<dyn Backend>, Option<Users>), LocationError> {
    cfg.validate()?;
    let users = read_users(cfg)?;
    let backend: Arc<dyn Backend> = match cfg.backend.kind.as_str() {
        "memory" => Arc::new(MemoryBackend::new(
            cfg.registrar,
            users.as_deref().cloned().unwrap_or_default(),
        )),
        _ => Arc::new(RedisBackend::new(cfg.redis_options()?, cfg.registrar)?),
    };
    Ok((backend, users))
}

/// The users file, parsed (`None` without one).
fn read_users(cfg: &LocationConfig) -> Result<Option<Users>, LocationError> {
    let Some(p) = &cfg.users_file else {
        return Ok(None);
    };
    Ok(Some(Arc::new(
        sip_auth::FileStore::from_path(p)
            .map_err(LocationError::Users)?
            .into_inner(),
    )))
}

/// Everything [`start`] checks and reads before it binds or connects: the settings, the
/// API's token files, the users file and the Redis password file. `sipcluster
/// check-config location` runs this alone, so that a configuration it passes does not
/// fail at start for a file.
pub fn check_before_start(cfg: &LocationConfig) -> Result<(), LocationError> {
    cfg.validate()?;
    cfg.api.load()?;
    read_users(cfg)?;
    if cfg.backend.kind != "memory" {
        cfg.redis_options()?;
    }
    Ok(())
}

/// A running location service.
#[derive(Debug)]
pub struct LocationHandle {
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The bound metrics address.
    pub metrics: Option<SocketAddr>,
    /// The backend (shared with in-process users such as the all-in-one's edge).
    pub backend: Arc<dyn Backend>,
    /// Readiness: the backend answers, is provisioned and whole, and the service is not
    /// draining.
    pub ready: Arc<AtomicBool>,
    /// Whether the store is known whole (see [`integrity`]).
    pub data: Arc<integrity::DataGuard>,
    shutdown: oneshot::Sender<()>,
    join: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    drain: Duration,
    not_draining: Arc<AtomicBool>,
}

impl LocationHandle {
    /// Stop taking calls, let in-flight ones finish (up to the drain time), and stop.
    pub async fn stop(self) {
        self.not_draining.store(false, Ordering::Relaxed);
        self.ready.store(false, Ordering::Relaxed);
        let _ = self.shutdown.send(());
        let _ = tokio::time::timeout(self.drain, self.join).await;
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Start the service described by `cfg`, accepting the tokens of its `[api]` files
/// (refused without any: the API is never anonymous). Refusals are counted in this
/// service's metrics.
pub async fn start(cfg: LocationConfig) -> Result<LocationHandle, LocationError> {
    cfg.validate()?;
    // Before anything binds or connects: a missing or empty token file is the first thing
    // an operator should hear about.
    let tokens = cfg.api.load()?;
    let (backend, users) = backend_from(&cfg)?;
    let auth = grpc_auth::AuthMetrics::default();
    start_serving(cfg, backend, users, tokens, auth).await
}

/// Serve an existing backend (its users already in; the provisioning marker is written
/// at start all the same), accepting `tokens` (the all-in-one passes the one it
/// generated; `cfg.api` is not read) and counting refusals in `auth_metrics`.
pub async fn start_with(
    cfg: LocationConfig,
    backend: Arc<dyn Backend>,
    tokens: grpc_auth::Tokens,
    auth_metrics: grpc_auth::AuthMetrics,
) -> Result<LocationHandle, LocationError> {
    start_serving(cfg, backend, None, tokens, auth_metrics).await
}

async fn start_serving(
    cfg: LocationConfig,
    backend: Arc<dyn Backend>,
    users: Option<Users>,
    tokens: grpc_auth::Tokens,
    auth_metrics: grpc_auth::AuthMetrics,
) -> Result<LocationHandle, LocationError> {
    cfg.validate()?;
    let roles = tokens.roles();
    let bind_err = |what, addr| move |source| LocationError::Bind { what, addr, source };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(bind_err("gRPC", cfg.listen))?;
    let addr = listener
        .local_addr()
        .map_err(bind_err("gRPC", cfg.listen))?;
    let ready = Arc::new(AtomicBool::new(false));
    let guard = Arc::new(integrity::DataGuard::default());
    let flags = Flags {
        not_draining: Arc::new(AtomicBool::new(true)),
        up: Arc::new(AtomicBool::new(false)),
        provisioned: Arc::new(AtomicBool::new(false)),
    };
    // What /readyz names when not ready.
    let readiness = telemetry::Readiness::new("draining", flags.not_draining.clone())
        .and("backend unreachable", flags.up.clone())
        .and(
            "not provisioned yet (users file, provisioning marker)",
            flags.provisioned.clone(),
        )
        .and(
            "the store lost its data (provisioning marker missing); see backend.on_data_loss",
            guard.intact_flag(),
        );
    let m = metrics::Metrics::default();
    let mut tasks = Vec::new();
    let metrics_addr = match cfg.metrics_listen {
        Some(maddr) => {
            let mut registry = prometheus_client::registry::Registry::default();
            m.register(&mut registry);
            backend.register_metrics(&mut registry);
            auth_metrics.register(registry.sub_registry_with_prefix("sipcluster"));
            let (bound, task) = telemetry::spawn_endpoint(maddr, registry, readiness)
                .await
                .map_err(bind_err("metrics", maddr))?;
            tasks.push(task);
            Some(bound)
        }
        None => None,
    };
    let (health, health_svc) = tonic_health::server::health_reporter();
    // Provisioning: the users file and the marker. Redis may not be up yet: keep trying
    // in the background; calls fail with UNAVAILABLE until Redis answers, and a "not
    // found" before the marker is written is UNAVAILABLE too (the file may not be in).
    {
        let (b, users, done) = (backend.clone(), users.clone(), flags.provisioned.clone());
        tasks.push(tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                match integrity::provision(&*b, users.as_deref()).await {
                    Ok(added) => {
                        if let Some(u) = &users {
                            tracing::info!(users = u.len(), added, "users file provisioned");
                        }
                        done.store(true, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "provisioning (users file, marker) failed; retrying")
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }));
    }
    // Readiness and gRPC health follow the backend: an instance whose Redis is gone, or
    // lost its data, should leave the Service's endpoints, not keep taking calls it must
    // fail.
    tasks.push(tokio::spawn(monitor(Monitor {
        backend: backend.clone(),
        guard: guard.clone(),
        flags: flags.clone(),
        ready: ready.clone(),
        metrics: m.clone(),
        on_data_loss: cfg.backend.on_data_loss,
        users,
        health: health.clone(),
    })));
    {
        let (b, m) = (backend.clone(), m.clone());
        let every = Duration::from_secs(cfg.stats_interval_secs);
        tasks.push(tokio::spawn(async move {
            loop {
                match b.counts(server::unix_now()).await {
                    Ok(c) => {
                        let g = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
                        m.aors.set(g(c.aors));
                        m.bindings.set(g(c.bindings));
                        m.users.set(g(c.users));
                        m.dialogs_active.set(g(c.dialogs));
                    }
                    Err(e) => tracing::debug!(error = %e, "counting bindings failed"),
                }
                tokio::time::sleep(every).await;
            }
        }));
    }
    let svc = server::LocationService::new(backend.clone(), cfg.dialogs.clone(), m.clone())
        .admin_only(cfg.admin_only)
        .data_guard(guard.clone());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    // `Server::tcp_nodelay` only applies to listeners tonic binds itself: set it on each
    // accepted connection, or Nagle + delayed ACK adds ~40 ms to every reply that does not
    // fill a segment.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            conn.inspect(|c| {
                let _ = c.set_nodelay(true);
            })
        },
    );
    let router = tonic::transport::Server::builder()
        .layer(grpc_auth::AuthLayer::new(
            &server::POLICY,
            tokens,
            auth_metrics,
        ))
        .tcp_nodelay(true)
        // Batched calls carry tens of kilobytes: the 64 KiB HTTP/2 default window would
        // stall them on WINDOW_UPDATE round trips.
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(4 << 20))
        .add_service(health_svc)
        .add_service(LocationServer::new(svc));
    let join = tokio::spawn(async move {
        let stop = async move {
            let _ = stop_rx.await;
            health
                .set_not_serving::<LocationServer<server::LocationService>>()
                .await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    });
    let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    tracing::info!(
        %addr,
        backend = %backend.summary(),
        on_data_loss = cfg.backend.on_data_loss.as_str(),
        token_roles = ?roles,
        "location service started"
    );
    Ok(LocationHandle {
        addr,
        metrics: metrics_addr,
        backend,
        ready,
        data: guard,
        shutdown: stop_tx,
        join,
        tasks,
        drain: Duration::from_secs(cfg.drain_secs),
        not_draining: flags.not_draining,
    })
}

/// The readiness conditions the monitor and the drain set.
#[derive(Debug, Clone)]
struct Flags {
    not_draining: Arc<AtomicBool>,
    /// The backend answers pings.
    up: Arc<AtomicBool>,
    /// The users file and the marker are in.
    provisioned: Arc<AtomicBool>,
}

struct Monitor {
    backend: Arc<dyn Backend>,
    guard: Arc<integrity::DataGuard>,
    flags: Flags,
    ready: Arc<AtomicBool>,
    metrics: metrics::Metrics,
    on_data_loss: config::OnDataLoss,
    users: Option<Users>,
    health: tonic_health::server::HealthReporter,
}

/// Every half second (or at once when a call met a data loss): ping the backend, check
/// the provisioning marker while it answers (so also right after a reconnect), act on a
/// loss per `on_data_loss`, and publish readiness and gRPC health.
async fn monitor(s: Monitor) {
    let m = &s.metrics;
    let mut was_serving = None;
    let mut was_up = None;
    loop {
        let b = &*s.backend;
        let ping = match tokio::time::timeout(Duration::from_secs(1), b.ping()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("no answer within 1 s".to_owned()),
        };
        let up = ping.is_ok();
        m.backend_up.set(i64::from(up));
        s.flags.up.store(up, Ordering::Relaxed);
        if was_up != Some(up) {
            match &ping {
                Ok(()) => tracing::info!("backend reachable"),
                // Why, once: a refused connection, a timeout and a NOAUTH / WRONGPASS (a
                // password missing or wrong) call for different fixes.
                Err(e) => tracing::warn!(error = %e, "backend unreachable; not serving"),
            }
            was_up = Some(up);
        }
        // Before provisioning is done the marker is not there yet, and that is no loss.
        if up && s.flags.provisioned.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_secs(1), b.marker_present()).await {
                Ok(Ok(true)) => on_marker_present(&s),
                Ok(Ok(false)) => on_loss(&s).await,
                // Unreachable or slow: the ping says so; nothing is known about the data.
                _ => {}
            }
        }
        let serving = up && !s.guard.is_lost();
        s.ready.store(
            serving
                && s.flags.provisioned.load(Ordering::Relaxed)
                && s.flags.not_draining.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        if was_serving != Some(serving) {
            if serving {
                s.health
                    .set_serving::<LocationServer<server::LocationService>>()
                    .await;
            } else {
                s.health
                    .set_not_serving::<LocationServer<server::LocationService>>()
                    .await;
            }
            was_serving = Some(serving);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = s.guard.suspected() => {}
        }
    }
}

/// The marker is there: serve again if a loss was known (restored from a backup, or
/// provisioned by another replica).
fn on_marker_present(s: &Monitor) {
    if s.guard.set_intact() {
        s.metrics.data_intact.set(1);
        tracing::info!("provisioning marker back; serving again");
    }
}

/// The marker is gone: stop answering from the store, say so once, and reprovision
/// when configured to.
async fn on_loss(s: &Monitor) {
    let m = &s.metrics;
    if s.guard.set_lost() {
        m.data_intact.set(0);
        m.data_losses.inc();
        match s.on_data_loss {
            config::OnDataLoss::Unready => tracing::error!(
                "the store lost its data (provisioning marker missing: Redis restarted empty \
                 or was flushed); answering UNAVAILABLE (edges: 503) and not ready until the \
                 marker is back: restore Redis from a backup, or restart a location replica \
                 (it provisions users_file and writes the marker)"
            ),
            config::OnDataLoss::Reprovision => tracing::error!(
                "the store lost its data (provisioning marker missing: Redis restarted empty \
                 or was flushed); answering UNAVAILABLE (edges: 503) while users_file is \
                 provisioned again"
            ),
        }
    }
    if s.on_data_loss == config::OnDataLoss::Reprovision {
        match integrity::provision(&*s.backend, s.users.as_deref()).await {
            Ok(added) => {
                s.guard.set_intact();
                m.data_intact.set(1);
                tracing::warn!(
                    added,
                    "reprovisioned from the users file after a data loss; serving again \
                     (registrations return as phones re-register)"
                );
            }
            Err(e) => tracing::warn!(error = %e, "reprovisioning failed; retrying"),
        }
    }
}

/// A backend used in process, as the edge's stores (the all-in-one: no gRPC hop).
#[derive(Debug, Clone)]
pub struct InProcess(pub Arc<dyn Backend>);

fn unavailable(e: BackendError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[async_trait]
impl LocationStore for InProcess {
    async fn register(
        &self,
        req: RegisterRequest,
        now: u64,
    ) -> Result<RegisterOutcome, StoreError> {
        match self.0.register(req, now).await {
            Ok(Ok(o)) => Ok(o),
            Ok(Err(rule)) => Err(StoreError::Rule(rule)),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn lookup(&self, aor: &Aor, now: u64) -> Result<Vec<Binding>, StoreError> {
        self.0.lookup(aor, now).await.map_err(unavailable)
    }

    async fn remove_all(&self, aor: &Aor) -> Result<(), StoreError> {
        self.0
            .remove(aor, None, server::unix_now())
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn stats(&self, now: u64) -> Result<StoreStats, StoreError> {
        let c = self.0.counts(now).await.map_err(unavailable)?;
        Ok(StoreStats {
            aors: usize::try_from(c.aors).unwrap_or(usize::MAX),
            bindings: usize::try_from(c.bindings).unwrap_or(usize::MAX),
        })
    }
}

#[async_trait]
impl sip_auth::NonceUses for InProcess {
    async fn first_use(
        &self,
        nonce: &str,
        nc: &str,
        ttl: Duration,
    ) -> Result<bool, sip_auth::Error> {
        self.0
            .use_nonce(nonce, nc, location_client::convert::ttl_secs(ttl))
            .await
            .map_err(|e| sip_auth::Error::Unavailable(e.to_string()))
    }
}

#[async_trait]
impl sip_auth::SubscriberStore for InProcess {
    async fn credentials(
        &self,
        username: &str,
        realm: &str,
    ) -> Result<Option<sip_auth::Credentials>, sip_auth::StoreError> {
        self.0
            .credentials(username, realm)
            .await
            .map_err(|e| sip_auth::Error::Unavailable(e.to_string()))
    }
}

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

/// Build the backend the configuration names, seeded with its users file: `seeded`
/// becomes true once every user of the file is in the store (at once for memory; in the
/// background for Redis, which may not be up yet). Users that already exist are left as
/// they are: the file bootstraps a deployment, `sipcluster users` manages it after that,
/// and a restarted replica must not undo a password change.
pub async fn backend_from(
    cfg: &LocationConfig,
    seeded: Arc<AtomicBool>,
) -> Result<Arc<dyn Backend>, LocationError> {
    cfg.validate()?;
    let users = match &cfg.users_file {
        Some(p) => Some(
            sip_auth::FileStore::from_path(p)
                .map_err(LocationError::Users)?
                .into_inner(),
        ),
        None => None,
    };
    let backend: Arc<dyn Backend> = match cfg.backend.kind.as_str() {
        "memory" => Arc::new(MemoryBackend::new(
            cfg.registrar,
            users.clone().unwrap_or_default(),
        )),
        _ => Arc::new(RedisBackend::new(cfg.redis_options(), cfg.registrar)?),
    };
    let Some(users) = users.filter(|_| cfg.backend.kind != "memory") else {
        seeded.store(true, Ordering::Relaxed);
        return Ok(backend);
    };
    {
        // Redis may not be up yet: keep trying in the background; the service is not
        // blocked on it (calls fail with UNAVAILABLE until Redis answers).
        let b = backend.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            loop {
                let mut added = 0;
                let mut failed = None;
                for (user, realm, creds) in users.iter() {
                    let r = match b.credentials(user, realm).await {
                        Ok(Some(_)) => Ok(false),
                        Ok(None) => b.put_user(user, realm, creds).await.map(|_| true),
                        Err(e) => Err(e),
                    };
                    match r {
                        Ok(new) => added += usize::from(new),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                match failed {
                    None => {
                        tracing::info!(users = users.len(), added, "users file provisioned");
                        seeded.store(true, Ordering::Relaxed);
                        return;
                    }
                    Some(e) => {
                        tracing::warn!(error = %e, "seeding users from the users file failed; retrying")
                    }
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        });
    }
    Ok(backend)
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
    /// Readiness: the backend answers and the service is not draining.
    pub ready: Arc<AtomicBool>,
    shutdown: oneshot::Sender<()>,
    join: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    drain: Duration,
    draining: Arc<AtomicBool>,
}

impl LocationHandle {
    /// Stop taking calls, let in-flight ones finish (up to the drain time), and stop.
    pub async fn stop(self) {
        self.draining.store(true, Ordering::Relaxed);
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
    let seeded = Arc::new(AtomicBool::new(false));
    let backend = backend_from(&cfg, seeded.clone()).await?;
    let auth = metrics::Metrics::global().auth.clone();
    start_serving(cfg, backend, seeded, tokens, auth).await
}

/// Serve an existing backend (already provisioned), accepting `tokens` (the all-in-one
/// passes the one it generated; `cfg.api` is not read) and counting refusals in
/// `auth_metrics`.
pub async fn start_with(
    cfg: LocationConfig,
    backend: Arc<dyn Backend>,
    tokens: grpc_auth::Tokens,
    auth_metrics: grpc_auth::AuthMetrics,
) -> Result<LocationHandle, LocationError> {
    start_serving(
        cfg,
        backend,
        Arc::new(AtomicBool::new(true)),
        tokens,
        auth_metrics,
    )
    .await
}

async fn start_serving(
    cfg: LocationConfig,
    backend: Arc<dyn Backend>,
    seeded: Arc<AtomicBool>,
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
    let m = metrics::Metrics::global();
    let mut tasks = Vec::new();
    let metrics_addr = match cfg.metrics_listen {
        Some(maddr) => {
            let (bound, task) = telemetry::spawn_endpoint(maddr, m.registry(), ready.clone())
                .await
                .map_err(bind_err("metrics", maddr))?;
            tasks.push(task);
            Some(bound)
        }
        None => None,
    };
    let (health, health_svc) = tonic_health::server::health_reporter();
    // Readiness and gRPC health follow the backend: an instance whose Redis is gone
    // should leave the Service's endpoints, not keep taking calls it must fail. Not ready
    // either before the users file is in, nor once draining.
    let draining = Arc::new(AtomicBool::new(false));
    {
        let (b, ready, health) = (backend.clone(), ready.clone(), health.clone());
        let (draining, seeded) = (draining.clone(), seeded.clone());
        tasks.push(tokio::spawn(async move {
            let mut was_up = None;
            loop {
                let up = tokio::time::timeout(Duration::from_secs(1), b.ping())
                    .await
                    .is_ok_and(|r| r.is_ok());
                metrics::Metrics::global().backend_up.set(i64::from(up));
                ready.store(
                    up && seeded.load(Ordering::Relaxed) && !draining.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                if was_up != Some(up) {
                    if up {
                        tracing::info!("backend reachable; serving");
                        health
                            .set_serving::<LocationServer<server::LocationService>>()
                            .await;
                    } else {
                        tracing::warn!("backend unreachable; not serving");
                        health
                            .set_not_serving::<LocationServer<server::LocationService>>()
                            .await;
                    }
                    was_up = Some(up);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }));
    }
    {
        let b = backend.clone();
        let every = Duration::from_secs(cfg.stats_interval_secs);
        tasks.push(tokio::spawn(async move {
            loop {
                match b.counts(server::unix_now()).await {
                    Ok(c) => {
                        let m = metrics::Metrics::global();
                        let g = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
                        m.aors.set(g(c.aors));
                        m.bindings.set(g(c.bindings));
                        m.users.set(g(c.users));
                    }
                    Err(e) => tracing::debug!(error = %e, "counting bindings failed"),
                }
                tokio::time::sleep(every).await;
            }
        }));
    }
    let svc = server::LocationService::new(backend.clone(), cfg.dialogs.clone())
        .admin_only(cfg.admin_only);
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
    tracing::info!(%addr, backend = %backend.summary(), token_roles = ?roles, "location service started");
    Ok(LocationHandle {
        addr,
        metrics: metrics_addr,
        backend,
        ready,
        shutdown: stop_tx,
        join,
        tasks,
        drain: Duration::from_secs(cfg.drain_secs),
        draining,
    })
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

//! # media_relay: the sipcluster media relay
//!
//! Forwards RTP and RTCP between the legs of anchored calls. The edges drive it over
//! gRPC (`proto/sipcluster/media/v1/relay.proto`): an offer's or answer's media go in,
//! the relay's address and ports for the rewritten SDP come out; BYE deletes.
//!
//! Data flow: edge → tonic → the bearer-token check (`grpc_auth`, [`control::POLICY`]:
//! the edge token for everything, the admin token to look and drain) → [`control`] (validates, picks the worker that holds the
//! session or the least-loaded one for a new call) → that worker's
//! [`media_core::Engine`], which allocates port pairs and has [`forward`] bind them.
//! Packets: socket → the worker's `mio` loop ([`forward`]) → `Engine::on_packet` (latch,
//! count, decide) → `send_to` out of the other leg's socket. Each worker owns a slice of
//! the port range and the sessions on it, so a packet never crosses threads and no
//! lock is contended but by the control plane. A 1 s sweep ends idle and over-long
//! sessions and reports every end (metrics, log) with its statistics.

pub mod batch;
pub mod config;
pub mod control;
pub mod descriptors;
pub mod forward;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use proto::media::v1::media_relay_server::MediaRelayServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::MediaRelayConfig;
pub use metrics::Metrics;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
pub enum MediaRelayError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] telemetry::ConfigError),
    /// A listener could not be bound.
    #[error("{what} {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// A forwarding thread could not be set up.
    #[error("forwarding worker: {0}")]
    Worker(std::io::Error),
    /// The control API's tokens are missing or unusable.
    #[error("control API: {0}")]
    Auth(#[from] grpc_auth::AuthError),
    /// `RLIMIT_NOFILE` leaves too few descriptors for any use of the port range.
    #[error(transparent)]
    Descriptors(#[from] descriptors::TooFewDescriptors),
}

/// A running relay.
#[derive(Debug)]
pub struct MediaRelayHandle {
    /// The bound gRPC control address.
    pub control: SocketAddr,
    /// The bound metrics address.
    pub metrics: Option<SocketAddr>,
    /// Readiness (`/readyz`): false while draining.
    pub ready: Arc<AtomicBool>,
    relay: Arc<control::Relay>,
    shutdown: oneshot::Sender<()>,
    join: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    workers: Vec<std::thread::JoinHandle<()>>,
    drain: Duration,
}

impl MediaRelayHandle {
    /// Sessions now, over all workers.
    #[must_use]
    pub fn sessions(&self) -> usize {
        self.relay.load().sessions
    }

    /// SIGTERM: not ready, refuse new sessions, wait until the existing ones have ended
    /// (or the drain deadline), then stop.
    pub async fn drain_and_stop(self) {
        self.ready.store(false, Ordering::Relaxed);
        self.relay.set_draining(true);
        let deadline = Instant::now() + self.drain;
        loop {
            let left = self.relay.load().sessions;
            if left == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(sessions = left, "drain deadline reached; ending sessions");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.stop().await;
    }

    /// Stop now.
    pub async fn stop(self) {
        self.ready.store(false, Ordering::Relaxed);
        let _ = self.shutdown.send(());
        let _ = tokio::time::timeout(Duration::from_secs(2), self.join).await;
        for t in self.tasks {
            t.abort();
        }
        self.relay.stop_workers();
        for w in self.workers {
            let _ = tokio::task::spawn_blocking(move || w.join()).await;
        }
    }
}

/// Start the relay: read the control API's tokens (refused without any: the API is
/// never anonymous), raise the process's descriptor limit to fit the port range (or
/// use the part of the range that fits: [`descriptors`]), bind the control and metrics
/// listeners, spawn the forwarding workers, and serve.
pub async fn start(cfg: MediaRelayConfig) -> Result<MediaRelayHandle, MediaRelayError> {
    cfg.validate()?;
    let tokens = cfg.api.load()?;
    let roles: Vec<&str> = tokens.roles().iter().map(|r| r.as_str()).collect();
    let metrics = Metrics::default();
    let cfg = descriptors::size_to_limit(&cfg, &metrics)?;
    let (relay, workers) =
        control::Relay::new(cfg.clone(), metrics.clone()).map_err(MediaRelayError::Worker)?;
    let relay = Arc::new(relay);
    let ready = Arc::new(AtomicBool::new(true));
    let mut tasks = Vec::new();
    let metrics_addr = match cfg.metrics_listen {
        Some(addr) => {
            let mut registry = Registry::default();
            metrics.register(&mut registry);
            let (bound, task) = telemetry::spawn_endpoint(addr, registry, ready.clone())
                .await
                .map_err(|source| MediaRelayError::Bind {
                    what: "metrics",
                    addr,
                    source,
                })?;
            tasks.push(task);
            Some(bound)
        }
        None => None,
    };
    {
        let relay = relay.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                relay.sweep(Instant::now());
            }
        }));
    }
    let listener = tokio::net::TcpListener::bind(cfg.control_listen)
        .await
        .map_err(|source| MediaRelayError::Bind {
            what: "control",
            addr: cfg.control_listen,
            source,
        })?;
    let control = listener.local_addr().unwrap_or(cfg.control_listen);
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            conn.inspect(|c| {
                // Offers sit on the call-setup path: no Nagle delay on small replies.
                let _ = c.set_nodelay(true);
            })
        },
    );
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<MediaRelayServer<control::Service>>()
        .await;
    let router = tonic::transport::Server::builder()
        .layer(grpc_auth::AuthLayer::new(
            &control::POLICY,
            tokens,
            metrics.auth.clone(),
        ))
        .tcp_nodelay(true)
        .add_service(health_svc)
        .add_service(MediaRelayServer::new(control::Service::new(relay.clone())));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let join = tokio::spawn(async move {
        let stop = async move {
            let _ = stop_rx.await;
            health
                .set_not_serving::<MediaRelayServer<control::Service>>()
                .await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    });
    let shown =
        |a: Option<std::net::IpAddr>| a.map_or_else(|| "none".to_owned(), |a| a.to_string());
    tracing::info!(
        %control,
        ports = %format!("{}-{}", cfg.port_min, cfg.port_max),
        max_sessions = cfg.max_sessions,
        fd_limit = metrics.fd_limit.get(),
        workers = cfg.workers,
        advertise_v4 = %shown(cfg.advertised(false)),
        advertise_v6 = %shown(cfg.advertised(true)),
        token_roles = ?roles,
        "media relay started"
    );
    Ok(MediaRelayHandle {
        control,
        metrics: metrics_addr,
        ready,
        relay,
        shutdown: stop_tx,
        join,
        tasks,
        workers,
        drain: Duration::from_secs(cfg.drain_secs),
    })
}

//! # telemetry: what every sipcluster service exposes the same way
//!
//! `/metrics` (OpenMetrics text from a `prometheus-client` registry), `/healthz` (the
//! process is alive) and `/readyz` (it takes new work; false while draining), served
//! the same way by the edge, the location service and the rest, so one Prometheus job
//! and one probe spec fit them all ([`Readiness`] joins the conditions of a process
//! that plays several roles); [`ConfigError`], the one shape of "this configuration
//! cannot run" every service reports at start, and [`config_file`], the one shape of the
//! resolved configuration `check-config` prints; [`logging`], the checked log set-up; and
//! [`LogLimit`], the rate limit on log lines a peer can trigger; [`AcceptBackoff`], what
//! every listener does when `accept` fails; [`nofile`], the process's descriptor limit
//! as every service reads and raises it; and [`process`], the build and process metrics
//! every endpoint adds (`sipcluster_build_info`, `process_*`).
//!
//! The HTTP endpoint has a budget of its own ([`HttpLimits`]): a few connections at once,
//! each closed after a short deadline whatever it sends. Probes and scrapes are short, and
//! this keeps `/healthz` answering while the SIP listeners are full or under a slow-client
//! attack, and keeps a slow client of this port from holding descriptors.

mod accept;
pub mod config_file;
pub mod exposition;
pub mod listen;
pub mod logging;
pub mod nofile;
pub mod process;
mod ratelimit;
pub mod trace;

pub use accept::AcceptBackoff;
pub use ratelimit::LogLimit;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

/// A configuration that cannot run, with what to fix.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid configuration: {field}: {problem}")]
pub struct ConfigError {
    /// The setting, as `section.key`.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl ConfigError {
    /// The error for `field`.
    pub fn new(field: &'static str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            field,
            problem: problem.into(),
        }
    }
}

/// What `/readyz` answers: ready when every named condition holds. A process that plays
/// several roles (the all-in-one) joins theirs, so that a drain, or a dependency that does
/// not answer, shows whichever role it concerns.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    /// (what is wrong when the flag is false, the flag).
    checks: Vec<(&'static str, Arc<AtomicBool>)>,
}

impl Readiness {
    /// One condition: `flag` true means ready; `problem` says what is wrong when it is
    /// false (`"draining"`, `"no media relay answers"`).
    #[must_use]
    pub fn new(problem: &'static str, flag: Arc<AtomicBool>) -> Readiness {
        Readiness {
            checks: vec![(problem, flag)],
        }
    }

    /// This and one more condition.
    #[must_use]
    pub fn and(mut self, problem: &'static str, flag: Arc<AtomicBool>) -> Readiness {
        self.checks.push((problem, flag));
        self
    }

    /// This and every condition of `other`.
    #[must_use]
    pub fn join(mut self, other: Readiness) -> Readiness {
        self.checks.extend(other.checks);
        self
    }

    /// The problems of the conditions that do not hold now (empty: ready).
    #[must_use]
    pub fn problems(&self) -> Vec<&'static str> {
        let mut p: Vec<&'static str> = self
            .checks
            .iter()
            .filter(|(_, f)| !f.load(Ordering::Relaxed))
            .map(|(n, _)| *n)
            .collect();
        p.dedup();
        p
    }

    /// Every condition holds.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|(_, f)| f.load(Ordering::Relaxed))
    }
}

impl From<Arc<AtomicBool>> for Readiness {
    /// A service whose only condition is not draining.
    fn from(flag: Arc<AtomicBool>) -> Readiness {
        Readiness::new("draining", flag)
    }
}

/// Bind `addr` and serve [`serve`] there in a task that logs if it ever stops: every
/// service's metrics endpoint. Returns the bound address (for port 0) and the task.
pub async fn spawn_endpoint(
    addr: std::net::SocketAddr,
    registry: Registry,
    ready: impl Into<Readiness>,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    // The one line that says where metrics and health are served, whichever role (or
    // process embedding several) serves them.
    tracing::info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    let ready = ready.into();
    let task = tokio::spawn(async move {
        if let Err(e) = serve(listener, registry, ready).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok((bound, task))
}

/// Label set: a method (SIP method or RPC name).
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct MethodLabel {
    /// Method; a bounded set of values, never taken from the wire unchecked.
    pub method: &'static str,
}

/// Label set: a reason (drops, failures, session ends).
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ReasonLabel {
    /// A stable reason label.
    pub reason: &'static str,
}

/// Label set: a kind (of transaction, of packet).
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct KindLabel {
    /// A stable kind label.
    pub kind: &'static str,
}

/// Label set: a gRPC call and its outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct CallLabel {
    /// RPC name.
    pub method: &'static str,
    /// Outcome: [`grpc_code_name`].
    pub code: &'static str,
}

/// Every value [`grpc_code_name`] returns: the `code` label's closed set, for services
/// that create their call series at start (at 0) rather than at the first call.
pub const GRPC_CODE_NAMES: [&str; 8] = [
    "ok",
    "invalid_argument",
    "unavailable",
    "not_found",
    "deadline_exceeded",
    "resource_exhausted",
    "aborted",
    "other",
];

/// The label value of a gRPC status code (`ok`, `not_found`, `unavailable`...): one of
/// [`GRPC_CODE_NAMES`].
#[must_use]
pub fn grpc_code_name(c: tonic::Code) -> &'static str {
    use tonic::Code;
    match c {
        Code::Ok => "ok",
        Code::InvalidArgument => "invalid_argument",
        Code::Unavailable => "unavailable",
        Code::NotFound => "not_found",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::ResourceExhausted => "resource_exhausted",
        Code::Aborted => "aborted",
        _ => "other",
    }
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    ready: Readiness,
}

/// The HTTP endpoint's own budget, apart from every other listener of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; a connection beyond them is closed at once (a probe
    /// fails fast and is retried, instead of waiting behind slow clients).
    pub max_connections: usize,
    /// A connection's whole life: request read, answered and closed within this, or cut.
    /// One request per connection (no keep-alive), so the deadline bounds the request.
    pub connection_deadline: Duration,
}

impl Default for HttpLimits {
    /// 32 connections, 5 s each: a scrape of every metric takes milliseconds, and
    /// Kubernetes probes time out after 1 s by default.
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 32,
            connection_deadline: Duration::from_secs(5),
        }
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped,
/// within [`HttpLimits::default`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Registry,
    ready: impl Into<Readiness>,
) -> std::io::Result<()> {
    serve_with_limits(listener, registry, ready, HttpLimits::default()).await
}

/// [`serve`] within `limits`.
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    registry: Registry,
    ready: impl Into<Readiness>,
    limits: HttpLimits,
) -> std::io::Result<()> {
    let mut registry = registry;
    // Whatever roles the process plays, its build and its resources once per endpoint.
    registry.register_collector(Box::new(process::ProcessCollector::default()));
    let state = HttpState {
        registry: Arc::new(registry),
        ready: ready.into(),
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state);
    // Our own accept loop rather than `axum::serve`: that one has no connection cap and
    // no deadline, so a few hundred clients sending one header byte at a time would hold
    // the endpoint (and descriptors) for as long as they liked.
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = AcceptBackoff::new("metrics http");
    let refused = LogLimit::new(1, 5);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(e) => {
                backoff.failed(&e).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if let Some(held_back) = refused.allow(std::time::Instant::now()) {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    held_back,
                    "metrics endpoint: too many connections; closing a new one"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let deadline = limits.connection_deadline;
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            // Past the deadline the connection is dropped, which closes it.
            let _ = tokio::time::timeout(deadline, conn).await;
        });
    }
}

async fn metrics(State(s): State<HttpState>, headers: axum::http::HeaderMap) -> impl IntoResponse {
    let mut body = String::new();
    if prometheus_client::encoding::text::encode(&mut body, &s.registry).is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        );
    }
    // Prometheus asks for OpenMetrics; curl and promtool get the classic text format.
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    if exposition::wants_openmetrics(accept) {
        (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            exposition::openmetrics(&body),
        )
    } else {
        (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            exposition::classic(&body),
        )
    }
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    let problems = s.ready.problems();
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join(", ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_code_name_is_listed() {
        let mut names: Vec<&str> = (0..=16)
            .map(|i| grpc_code_name(tonic::Code::from_i32(i)))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut listed = GRPC_CODE_NAMES.to_vec();
        listed.sort_unstable();
        assert_eq!(names, listed);
    }

    #[test]
    fn readiness_names_what_is_wrong() {
        let (a, b) = (
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicBool::new(true)),
        );
        let r =
            Readiness::from(a.clone()).join(Readiness::new("no media relay answers", b.clone()));
        assert!(r.is_ready() && r.problems().is_empty());
        b.store(false, Ordering::Relaxed);
        assert_eq!(r.problems(), ["no media relay answers"]);
        a.store(false, Ordering::Relaxed);
        assert!(!r.is_ready());
        assert_eq!(r.problems(), ["draining", "no media relay answers"]);
    }
}

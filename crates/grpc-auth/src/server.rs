//! The server side: a tower layer in front of a tonic server that checks each call's
//! bearer token against the service's table of methods and roles.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::{Either, Ready, ready};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use telemetry::{LogLimit, ReasonLabel};
use tonic::Status;
use tonic::transport::server::TcpConnectInfo;

use crate::{Role, Tokens};

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token: only the gRPC health check, which answers SERVING or
    /// NOT_SERVING and nothing else (Kubernetes' gRPC probes cannot send a header).
    Public,
    /// Callers holding a token of one of these roles.
    Roles(&'static [Role]),
}

/// Edge tokens only.
pub const EDGE: Access = Access::Roles(&[Role::Edge]);
/// Admin tokens only.
pub const ADMIN: Access = Access::Roles(&[Role::Admin]);
/// Edge or admin tokens.
pub const EDGE_OR_ADMIN: Access = Access::Roles(&[Role::Edge, Role::Admin]);

/// The health check's method path.
pub const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// The health watch's method path: a long-lived stream, so not for anonymous callers.
pub const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";

/// A service's table: full method path (`/package.Service/Method`) → who may call it.
/// A method missing from the table is refused to everyone, so an RPC added without a
/// decision about who may call it is closed, not open.
#[derive(Debug)]
pub struct Policy {
    /// The API's name in log lines (`location`, `media relay control`, ...).
    pub api: &'static str,
    /// The table.
    pub methods: &'static [(&'static str, Access)],
}

impl Policy {
    /// Who may call `path`; `None` when the method is not in the table.
    #[must_use]
    pub fn access(&self, path: &str) -> Option<Access> {
        self.methods
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, a)| *a)
    }
    /// The methods declared in `proto` (a `.proto` file's text) that the table does not
    /// list, as paths: for each service's tests, so that an RPC added without a decision
    /// about who may call it fails a test rather than every call in production.
    #[must_use]
    pub fn unlisted(&self, proto: &str) -> Vec<String> {
        let (mut package, mut service, mut missing) = ("", "", Vec::new());
        for line in proto.lines().map(str::trim) {
            let word = |prefix: &str, stop: &[char]| {
                line.strip_prefix(prefix)
                    .and_then(|rest| rest.split(stop).next())
                    .map(str::trim)
            };
            if let Some(p) = word("package ", &[';']) {
                package = p;
            } else if let Some(s) = word("service ", &['{', ' ']) {
                service = s;
            } else if let Some(m) = word("rpc ", &['(', ' ']) {
                let path = format!("/{package}.{service}/{m}");
                if self.access(&path).is_none() {
                    missing.push(path);
                }
            }
        }
        missing
    }
}

/// Why a call was refused: the `reason` label of `sipcluster_grpc_auth_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No `authorization` header (UNAUTHENTICATED).
    Missing,
    /// A header that is not `Bearer <token>` (UNAUTHENTICATED).
    Malformed,
    /// A token this server does not know (UNAUTHENTICATED).
    UnknownToken,
    /// A known token whose role may not call the method (PERMISSION_DENIED).
    WrongRole,
    /// A method not in the service's table (PERMISSION_DENIED).
    UnknownMethod,
}

impl Rejection {
    /// Every reason, for the counter's series created at start (at 0).
    pub const ALL: [Rejection; 5] = [
        Rejection::Missing,
        Rejection::Malformed,
        Rejection::UnknownToken,
        Rejection::WrongRole,
        Rejection::UnknownMethod,
    ];

    /// The metric label and log value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Missing => "missing_token",
            Rejection::Malformed => "malformed_header",
            Rejection::UnknownToken => "unknown_token",
            Rejection::WrongRole => "wrong_role",
            Rejection::UnknownMethod => "unknown_method",
        }
    }
}

/// The rejection counter, one per process serving authenticated APIs (a process serving
/// two, the all-in-one, shares one so the series exists once).
#[derive(Debug, Clone)]
pub struct AuthMetrics {
    /// Calls refused, by reason: every [`Rejection`] at 0 from the start (a family without
    /// a series is not exposed at all, and a first refusal would show up as 1 with no
    /// increase).
    pub rejected: Family<ReasonLabel, Counter>,
}

impl Default for AuthMetrics {
    fn default() -> Self {
        let rejected = Family::default();
        for r in Rejection::ALL {
            let _ = rejected.get_or_create(&ReasonLabel { reason: r.as_str() });
        }
        AuthMetrics { rejected }
    }
}

impl AuthMetrics {
    /// Register `grpc_auth_rejected` (exposed as `sipcluster_grpc_auth_rejected_total`:
    /// `r` carries the `sipcluster` prefix).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "grpc_auth_rejected",
            "gRPC calls refused by token authentication, by reason",
            self.rejected.clone(),
        );
    }

    /// The count for one reason.
    #[must_use]
    pub fn count(&self, reason: Rejection) -> u64 {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .get()
    }
}

struct Shared {
    policy: &'static Policy,
    tokens: Tokens,
    metrics: AuthMetrics,
    log: LogLimit,
}

/// The layer: `tonic::transport::Server::builder().layer(AuthLayer::new(...))`.
#[derive(Clone)]
pub struct AuthLayer(Arc<Shared>);

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("api", &self.0.policy.api)
            .field("roles", &self.0.tokens.roles())
            .finish()
    }
}

impl AuthLayer {
    /// Check calls against `policy` with the accepted `tokens`, counting refusals in
    /// `metrics`.
    #[must_use]
    pub fn new(policy: &'static Policy, tokens: Tokens, metrics: AuthMetrics) -> AuthLayer {
        AuthLayer(Arc::new(Shared {
            policy,
            tokens,
            metrics,
            log: LogLimit::operator_lines(),
        }))
    }

    /// The decision for a call to `path` with these headers: the caller's role (`None`
    /// for a public method), or the refusal.
    pub fn decide(&self, path: &str, headers: &http::HeaderMap) -> Result<Option<Role>, Rejection> {
        let access = self.0.policy.access(path);
        if access == Some(Access::Public) {
            return Ok(None);
        }
        // Authentication first: who the caller is does not depend on what it calls, and
        // an anonymous caller learns nothing about the table.
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(Rejection::Missing)?;
        let token = value
            .as_bytes()
            .strip_prefix(b"Bearer ")
            .ok_or(Rejection::Malformed)?;
        let role = self
            .0
            .tokens
            .role_of(token)
            .ok_or(Rejection::UnknownToken)?;
        match access {
            Some(Access::Roles(allowed)) if allowed.contains(&role) => Ok(Some(role)),
            Some(_) => Err(Rejection::WrongRole),
            None => Err(Rejection::UnknownMethod),
        }
    }

    /// Count and log a refusal and build its status.
    fn refuse(&self, path: &str, peer: Option<SocketAddr>, why: Rejection) -> Status {
        self.0
            .metrics
            .rejected
            .get_or_create(&ReasonLabel {
                reason: why.as_str(),
            })
            .inc();
        // The method path comes from the caller: bounded before it reaches the log. The
        // token is never logged, not even in part.
        let method: String = path.chars().take(120).collect();
        if let Some(held) = self.0.log.allow(Instant::now()) {
            let peer = peer.map_or_else(|| "-".to_owned(), |p| p.to_string());
            tracing::warn!(
                api = self.0.policy.api,
                method,
                reason = why.as_str(),
                peer,
                suppressed = held,
                "gRPC call refused"
            );
        }
        match why {
            Rejection::Missing => Status::unauthenticated(
                "this API needs a token: send `authorization: Bearer <token>`",
            ),
            Rejection::Malformed => {
                Status::unauthenticated("the authorization header is not `Bearer <token>`")
            }
            Rejection::UnknownToken => Status::unauthenticated("unknown token"),
            Rejection::WrongRole => {
                Status::permission_denied("this token's role may not call this method")
            }
            Rejection::UnknownMethod => Status::permission_denied("no role may call this method"),
        }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: AuthLayer,
}

impl<S, B> tower_service::Service<http::Request<B>> for AuthService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<
        Ready<Result<Self::Response, S::Error>>,
        tracing::instrument::Instrumented<S::Future>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        match self.auth.decide(path, req.headers()) {
            Ok(_) => {
                // A span for a call that carries a sampled trace (the caller's context is
                // its parent); none otherwise: whether to trace was decided where the
                // request entered the cluster.
                let span = match telemetry::trace::parent_from_http(req.headers()) {
                    Some(parent) if telemetry::trace::enabled() => {
                        let span = tracing::info_span!(
                            "grpc",
                            otel.name = %path,
                            otel.kind = "server",
                            rpc.system = "grpc",
                            rpc.method = %path,
                            api = self.auth.0.policy.api,
                            // Recorded by the handlers of calls about one call.
                            sip.call_id = tracing::field::Empty,
                            trace_id = tracing::field::Empty,
                        );
                        telemetry::trace::set_parent(&span, parent);
                        telemetry::trace::record_trace_id(&span);
                        span
                    }
                    _ => tracing::Span::none(),
                };
                // The instance that was polled ready takes the call; a clone waits for
                // the next poll_ready (tower's rule for services called after readiness).
                let clone = self.inner.clone();
                let mut ready_inner = std::mem::replace(&mut self.inner, clone);
                let call = {
                    let _in = span.enter();
                    ready_inner.call(req)
                };
                Either::Right(tracing::Instrument::instrument(call, span))
            }
            Err(why) => {
                let peer = req
                    .extensions()
                    .get::<TcpConnectInfo>()
                    .and_then(TcpConnectInfo::remote_addr);
                let status = self.auth.refuse(path, peer, why);
                Either::Left(ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Token;
    use std::convert::Infallible;
    use tower_layer::Layer;
    use tower_service::Service;

    static POLICY: Policy = Policy {
        api: "test",
        methods: &[
            ("/t.v1.T/EdgeCall", EDGE),
            ("/t.v1.T/AdminCall", ADMIN),
            ("/t.v1.T/Both", EDGE_OR_ADMIN),
            (HEALTH_CHECK, Access::Public),
        ],
    };

    #[test]
    fn every_reason_is_exposed_at_zero_from_the_start() {
        // A new reason breaks this match: add it to `Rejection::ALL`.
        let index = |r: Rejection| match r {
            Rejection::Missing => 0,
            Rejection::Malformed => 1,
            Rejection::UnknownToken => 2,
            Rejection::WrongRole => 3,
            Rejection::UnknownMethod => 4,
        };
        let mut seen = [false; Rejection::ALL.len()];
        for r in Rejection::ALL {
            seen[index(r)] = true;
        }
        assert!(seen.iter().all(|s| *s), "{seen:?}");
        let m = AuthMetrics::default();
        let mut reg = Registry::with_prefix("sipcluster");
        m.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for reason in [
            "missing_token",
            "malformed_header",
            "unknown_token",
            "wrong_role",
            "unknown_method",
        ] {
            let line = format!("sipcluster_grpc_auth_rejected_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }

    fn layer() -> (AuthLayer, AuthMetrics) {
        let m = AuthMetrics::default();
        let tokens = Tokens::new(
            Some(Token::new("edge-token-0123456789").unwrap()),
            Some(Token::new("admin-token-0123456789").unwrap()),
        )
        .unwrap();
        (AuthLayer::new(&POLICY, tokens, m.clone()), m)
    }

    fn headers(auth: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(a) = auth {
            h.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn rpcs_of_a_proto_missing_from_the_table_are_named() {
        let proto = "syntax = \"proto3\";\npackage t.v1;\nservice T {\n  // EdgeCall\n  rpc EdgeCall(A) returns (B);\n  rpc New (A) returns (stream B);\n}\n";
        assert_eq!(POLICY.unlisted(proto), ["/t.v1.T/New"]);
    }

    #[test]
    fn authentication_then_the_table() {
        let (l, m) = layer();
        let edge = headers(Some("Bearer edge-token-0123456789"));
        let admin = headers(Some("Bearer admin-token-0123456789"));
        assert_eq!(l.decide("/t.v1.T/EdgeCall", &edge), Ok(Some(Role::Edge)));
        assert_eq!(l.decide("/t.v1.T/Both", &admin), Ok(Some(Role::Admin)));
        assert_eq!(
            l.decide("/t.v1.T/AdminCall", &edge),
            Err(Rejection::WrongRole)
        );
        assert_eq!(
            l.decide("/t.v1.T/EdgeCall", &admin),
            Err(Rejection::WrongRole)
        );
        assert_eq!(
            l.decide("/t.v1.T/Other", &admin),
            Err(Rejection::UnknownMethod)
        );
        // Anonymous callers are told only that they need a token, whatever they call.
        for path in ["/t.v1.T/EdgeCall", "/t.v1.T/Other", HEALTH_WATCH] {
            assert_eq!(l.decide(path, &headers(None)), Err(Rejection::Missing));
        }
        assert_eq!(
            l.decide("/t.v1.T/EdgeCall", &headers(Some("edge-token-0123456789"))),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            l.decide("/t.v1.T/EdgeCall", &headers(Some("Basic ZWRnZTp4"))),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            l.decide(
                "/t.v1.T/EdgeCall",
                &headers(Some("Bearer edge-token-0123456780"))
            ),
            Err(Rejection::UnknownToken)
        );
        assert_eq!(l.decide(HEALTH_CHECK, &headers(None)), Ok(None));
        // decide() alone counts nothing: refusals are counted where they are answered.
        assert_eq!(m.count(Rejection::Missing), 0);
    }

    #[tokio::test]
    async fn refusals_are_answered_and_counted_and_the_rest_reach_the_service() {
        let (l, m) = layer();
        let inner = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::default()))
        });
        let mut svc = l.layer(inner);
        let call = |path: &str, auth: Option<&str>| {
            let mut b = http::Request::builder().uri(format!("http://x{path}"));
            if let Some(a) = auth {
                b = b.header("authorization", a);
            }
            b.body(()).unwrap()
        };
        let code = |r: &http::Response<tonic::body::Body>| {
            r.headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let ok = svc
            .call(call(
                "/t.v1.T/EdgeCall",
                Some("Bearer edge-token-0123456789"),
            ))
            .await
            .unwrap();
        assert_eq!(code(&ok), None, "reached the service");
        let anon = svc.call(call("/t.v1.T/EdgeCall", None)).await.unwrap();
        assert_eq!(code(&anon).as_deref(), Some("16"), "UNAUTHENTICATED");
        let wrong = svc
            .call(call(
                "/t.v1.T/EdgeCall",
                Some("Bearer admin-token-0123456789"),
            ))
            .await
            .unwrap();
        assert_eq!(code(&wrong).as_deref(), Some("7"), "PERMISSION_DENIED");
        assert_eq!(m.count(Rejection::Missing), 1);
        assert_eq!(m.count(Rejection::WrongRole), 1);
        let mut reg = Registry::with_prefix("sipcluster");
        m.register(&mut reg);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        assert!(
            text.contains("sipcluster_grpc_auth_rejected_total{reason=\"missing_token\"} 1"),
            "{text}"
        );
    }
}

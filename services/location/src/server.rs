//! The gRPC service: thin glue from `sipcluster.location.v1` to a [`Backend`].
//!
//! Rule refusals travel in the reply (the edge needs the exact status and Min-Expires);
//! backend failures become UNAVAILABLE (the edge answers 503 + Retry-After); malformed
//! messages become INVALID_ARGUMENT. Every call is counted and timed. Who may call what
//! is [`POLICY`], checked before a call reaches this code.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use grpc_auth::{ADMIN, Access, EDGE, EDGE_OR_ADMIN, HEALTH_CHECK, HEALTH_WATCH, Policy};
use location_client::{convert, pb};
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};

use crate::backend::{Backend, BackendError, DialogEnd, DialogKey};
use crate::config::DialogConfig;
use crate::integrity::DataGuard;
use crate::metrics::{CallLabel, MethodLabel, Metrics, ResultLabel};

/// Who may call each method (`grpc_auth` checks the caller's bearer token against it).
/// Edges (the service identity) make the calls of SIP processing; operators (the admin
/// token: `sipcluster users`, `sipcluster registrations`) provision users and inspect and
/// remove registrations. Credentials (HA1s) go to edges only, and an admin token cannot
/// write bindings or dialog records. `UseNonce` is listed ahead of the RPC (edge only):
/// a method missing from the table would be refused to every caller.
pub static POLICY: Policy = Policy {
    api: "location",
    methods: &[
        ("/sipcluster.location.v1.Location/Register", EDGE),
        ("/sipcluster.location.v1.Location/RegisterBatch", EDGE),
        // `sipcluster registrations show` reads one AOR with Lookup: no more than
        // ListBindings already shows an operator.
        ("/sipcluster.location.v1.Location/Lookup", EDGE_OR_ADMIN),
        (
            "/sipcluster.location.v1.Location/RemoveBindings",
            EDGE_OR_ADMIN,
        ),
        ("/sipcluster.location.v1.Location/ListBindings", ADMIN),
        (
            "/sipcluster.location.v1.Location/WatchBindings",
            EDGE_OR_ADMIN,
        ),
        ("/sipcluster.location.v1.Location/Stats", EDGE_OR_ADMIN),
        ("/sipcluster.location.v1.Location/GetCredentials", EDGE),
        ("/sipcluster.location.v1.Location/UseNonce", EDGE),
        ("/sipcluster.location.v1.Location/PutUser", ADMIN),
        ("/sipcluster.location.v1.Location/RemoveUser", ADMIN),
        ("/sipcluster.location.v1.Location/ListUsers", ADMIN),
        ("/sipcluster.location.v1.Location/PutDialog", EDGE),
        ("/sipcluster.location.v1.Location/EndDialog", EDGE),
        ("/sipcluster.location.v1.Location/GetDialog", EDGE),
        ("/sipcluster.location.v1.Location/ReapDialogs", EDGE),
        // `sipcluster calls`: operators see and end calls; edges have no use for either.
        ("/sipcluster.location.v1.Location/ListDialogs", ADMIN),
        ("/sipcluster.location.v1.Location/TerminateDialog", ADMIN),
        // Call limits: taken and given back by the edges as calls start and end.
        ("/sipcluster.location.v1.Location/AcquireCall", EDGE),
        ("/sipcluster.location.v1.Location/RefreshCall", EDGE),
        ("/sipcluster.location.v1.Location/ReleaseCall", EDGE),
        // Bans: started and read by the edges; operators read the list.
        ("/sipcluster.location.v1.Location/Ban", EDGE),
        ("/sipcluster.location.v1.Location/ListBans", EDGE_OR_ADMIN),
        ("/sipcluster.location.v1.Location/CountFailure", EDGE),
        (HEALTH_CHECK, Access::Public),
        (HEALTH_WATCH, EDGE_OR_ADMIN),
    ],
};

pub use sip_registrar::unix_now;

/// Every RPC counted in `grpc_calls` and timed in `grpc_call_duration_seconds` (the
/// `method` each `observed` call names; WatchBindings, a stream, is not one).
pub(crate) const METHODS: [&str; 23] = [
    "Register",
    "RegisterBatch",
    "Lookup",
    "RemoveBindings",
    "ListBindings",
    "Stats",
    "GetCredentials",
    "PutUser",
    "RemoveUser",
    "ListUsers",
    "UseNonce",
    "PutDialog",
    "EndDialog",
    "ReapDialogs",
    "GetDialog",
    "ListDialogs",
    "TerminateDialog",
    "AcquireCall",
    "RefreshCall",
    "ReleaseCall",
    "Ban",
    "ListBans",
    "CountFailure",
];

/// The longest ban or lock taken, s.
const MAX_BAN_SECS: u32 = 86_400;

/// A ban's subject, checked: `source:<ip>` or `user:<user@realm>`, bounded.
fn ban_subject(field: &str, s: &str) -> Result<(), Status> {
    let ok = s.len() <= MAX_LIMIT_KEY_LEN
        && (s
            .strip_prefix("source:")
            .is_some_and(|ip| ip.parse::<std::net::IpAddr>().is_ok())
            || s.strip_prefix("user:").is_some_and(|u| !u.is_empty()));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{field}: source:<ip> or user:<user@realm>, at most {MAX_LIMIT_KEY_LEN} bytes"
        )))
    }
}

/// Limits one AcquireCall may check (an account, a domain, a trunk, with room).
const MAX_CALL_LIMITS: usize = 16;
/// The longest limit key and call identifier taken.
const MAX_LIMIT_KEY_LEN: usize = 256;
/// The longest a call's slots live without a refresh, s.
const MAX_CALL_TTL_SECS: u32 = 86_400;

/// The call's identifier fields, checked.
fn call_fields(call_id: &str, tag: &str) -> Result<(), Status> {
    need("call_id", call_id)?;
    if call_id.len() + tag.len() > MAX_LIMIT_KEY_LEN || call_id.contains(['\r', '\n']) {
        return Err(Status::invalid_argument(format!(
            "call_id and tag at most {MAX_LIMIT_KEY_LEN} bytes together, no CR or LF"
        )));
    }
    Ok(())
}

/// Every `result` of `registers` (see `register_one`).
pub(crate) const REGISTER_RESULTS: [&str; 3] = ["ok", "refused", "unavailable"];

/// The refusal statuses of the registrar rules with their own `code` in
/// `register_refused`; any other is [`REFUSED_OTHER`].
pub(crate) const REFUSED_CODES: [(u16, &str); 5] = [
    (400, "400"),
    (403, "403"),
    (416, "416"),
    (423, "423"),
    (500, "500"),
];

/// The `code` of a refusal status not in [`REFUSED_CODES`].
pub(crate) const REFUSED_OTHER: &str = "other";

/// The `code` label of a refusal with `status`.
fn refused_code(status: u16) -> &'static str {
    REFUSED_CODES
        .iter()
        .find(|(s, _)| *s == status)
        .map_or(REFUSED_OTHER, |(_, code)| code)
}

/// The service.
#[derive(Debug, Clone)]
pub struct LocationService {
    backend: Arc<dyn Backend>,
    dialogs: DialogConfig,
    /// Refuse the edges' calls (see `LocationConfig::admin_only`).
    admin_only: bool,
    /// UNAVAILABLE for data calls while the store is known to have lost its data.
    guard: Arc<DataGuard>,
    metrics: Metrics,
}

impl LocationService {
    /// Serve `backend`, counting into `metrics`.
    pub fn new(
        backend: Arc<dyn Backend>,
        dialogs: DialogConfig,
        metrics: Metrics,
    ) -> LocationService {
        LocationService {
            backend,
            dialogs,
            admin_only: false,
            guard: Arc::new(DataGuard::default()),
            metrics,
        }
    }

    /// Answer data calls UNAVAILABLE while `guard` knows of a data loss, and tell it
    /// when a call meets one.
    #[must_use]
    pub fn data_guard(mut self, guard: Arc<DataGuard>) -> LocationService {
        self.guard = guard;
        self
    }

    /// The status for a backend failure; a data loss also wakes the guard's monitor.
    fn failed(&self, e: BackendError) -> Status {
        if matches!(e, BackendError::DataLoss) {
            self.guard.suspect();
        }
        backend_status(e)
    }

    /// Serve only the administrative calls.
    #[must_use]
    pub fn admin_only(mut self, on: bool) -> LocationService {
        self.admin_only = on;
        self
    }

    /// PERMISSION_DENIED for an edge's call on an admin-only API; UNAVAILABLE while the
    /// store is known to have lost its data (every edge call reads or writes data whose
    /// absence would be taken for the truth).
    fn edges_only(&self, method: &str) -> Result<(), Status> {
        if self.admin_only {
            return Err(Status::permission_denied(format!(
                "{method} is for edges; this API serves only administrative calls"
            )));
        }
        self.guard.check(method)
    }
}

fn backend_status(e: BackendError) -> Status {
    match e {
        BackendError::Contention(_) => Status::aborted(e.to_string()),
        BackendError::Corrupt { .. } => {
            tracing::error!(error = %e, "corrupt stored data");
            Status::internal(e.to_string())
        }
        BackendError::Redis(_) => {
            tracing::warn!(error = %e, "backend unavailable");
            Status::unavailable(e.to_string())
        }
        // Logged once by the data guard, not per call.
        BackendError::DataLoss => Status::unavailable(e.to_string()),
    }
}

/// The longest nonce UseNonce takes (ours are 40-odd base64 characters).
const MAX_NONCE_LEN: usize = 256;
/// The longest nonce count (RFC 7616: eight hex digits).
const MAX_NC_LEN: usize = 16;
/// The longest a use is remembered, s: far beyond any nonce lifetime, so a wrong ttl
/// cannot pin keys for ever.
const MAX_NONCE_TTL_SECS: u32 = 86_400;

fn invalid(e: convert::ConvertError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Count and time one call.
async fn observed<T>(
    m: &Metrics,
    method: &'static str,
    f: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    debug_assert!(METHODS.contains(&method), "{method} not in METHODS");
    let start = Instant::now();
    let r = f.await;
    // Inside the call's span (the auth layer's): a traced call is the exemplar.
    m.duration.get_or_create(&MethodLabel { method }).observe(
        start.elapsed().as_secs_f64(),
        telemetry::trace::exemplar(),
        None,
    );
    let code = match &r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    };
    m.calls
        .get_or_create(&CallLabel {
            method,
            code: telemetry::grpc_code_name(code),
        })
        .inc();
    r.map(Response::new)
}

fn need(field: &'static str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        Err(Status::invalid_argument(format!("{field} is empty")))
    } else {
        Ok(())
    }
}

impl LocationService {
    /// One REGISTER: the reply (outcome or refusal), or a backend error.
    async fn register_one(
        &self,
        msg: pb::RegisterRequest,
        now: u64,
    ) -> Result<pb::RegisterReply, Status> {
        let m = &self.metrics;
        let count = |result| {
            debug_assert!(REGISTER_RESULTS.contains(&result), "{result}");
            m.registers.get_or_create(&ResultLabel { result }).inc();
        };
        let req = convert::request_from(msg).map_err(invalid)?;
        let applied = self.backend.register(req, now).await.map_err(|e| {
            count("unavailable");
            self.failed(e)
        })?;
        match applied {
            Ok(o) => {
                count("ok");
                Ok(convert::outcome_to(&o, now))
            }
            Err(rule) => {
                count("refused");
                m.refused
                    .get_or_create(&CallLabel {
                        method: "Register",
                        code: refused_code(rule.status()),
                    })
                    .inc();
                Ok(pb::RegisterReply {
                    now,
                    refused: Some(convert::refused_to(&rule)),
                    ..pb::RegisterReply::default()
                })
            }
        }
    }
}

/// The caller's deadline from the `grpc-timeout` header (`<digits><unit>`, RFC-style
/// units H M S m u n), if any.
fn grpc_timeout(meta: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    use std::time::Duration;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::BindingEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::location_server::Location for LocationService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterReply>, Status> {
        self.edges_only("Register")?;
        observed(
            &self.metrics,
            "Register",
            self.register_one(request.into_inner(), unix_now()),
        )
        .await
    }

    async fn register_batch(
        &self,
        request: Request<pb::RegisterBatchRequest>,
    ) -> Result<Response<pb::RegisterBatchReply>, Status> {
        self.edges_only("RegisterBatch")?;
        // Each item gets most of the caller's deadline on its own, so that one slow item
        // (a hot AOR contended by other replicas) fails alone instead of holding up the
        // whole batch's reply until every caller in it has given up.
        let item_budget = grpc_timeout(request.metadata()).map(|t| t.mul_f64(0.9));
        observed(&self.metrics, "RegisterBatch", async {
            let now = unix_now();
            // Concurrently: the Redis connection pipelines the items' commands, and items
            // of one AOR still apply in order (the per-AOR queue is first come, first served).
            let items = request
                .into_inner()
                .requests
                .into_iter()
                .map(|r| async move {
                    match item_budget {
                        Some(b) => tokio::time::timeout(b, self.register_one(r, now))
                            .await
                            .unwrap_or_else(|_| {
                                Err(Status::unavailable(
                                    "REGISTER did not complete within its deadline",
                                ))
                            }),
                        None => self.register_one(r, now).await,
                    }
                });
            let results = futures_util::future::join_all(items)
                .await
                .into_iter()
                .map(|r| pb::RegisterResult {
                    result: Some(match r {
                        Ok(reply) => pb::register_result::Result::Reply(reply),
                        // A malformed item is the sending edge's bug: refuse it alone.
                        Err(s) if s.code() == Code::InvalidArgument => {
                            pb::register_result::Result::Reply(pb::RegisterReply {
                                now,
                                refused: Some(pb::Refused {
                                    status: 400,
                                    detail: s.message().to_owned(),
                                    ..pb::Refused::default()
                                }),
                                ..pb::RegisterReply::default()
                            })
                        }
                        Err(s) => pb::register_result::Result::Unavailable(s.message().to_owned()),
                    }),
                })
                .collect();
            Ok(pb::RegisterBatchReply { results })
        })
        .await
    }

    async fn lookup(
        &self,
        request: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::LookupReply>, Status> {
        // Not edge-only (`sipcluster registrations show` uses it), but an edge's INVITE
        // does: "no binding" must not come from a store that lost its data.
        self.guard.check("Lookup")?;
        observed(&self.metrics, "Lookup", async {
            let aor = convert::aor_from(&request.get_ref().aor).map_err(invalid)?;
            let now = unix_now();
            let b = self
                .backend
                .lookup(&aor, now)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::LookupReply {
                bindings: b.iter().map(convert::binding_to).collect(),
                now,
            })
        })
        .await
    }

    async fn remove_bindings(
        &self,
        request: Request<pb::RemoveBindingsRequest>,
    ) -> Result<Response<pb::RemoveBindingsReply>, Status> {
        observed(&self.metrics, "RemoveBindings", async {
            let r = request.into_inner();
            let aor = convert::aor_from(&r.aor).map_err(invalid)?;
            let contact = (!r.contact.is_empty()).then_some(r.contact.as_str());
            let removed = self
                .backend
                .remove(&aor, contact, unix_now())
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::RemoveBindingsReply { removed })
        })
        .await
    }

    async fn list_bindings(
        &self,
        request: Request<pb::ListBindingsRequest>,
    ) -> Result<Response<pb::ListBindingsReply>, Status> {
        observed(&self.metrics, "ListBindings", async {
            let r = request.into_inner();
            let limit = match r.limit {
                0 => 100,
                n => n.min(1000) as usize,
            };
            let now = unix_now();
            let (page, next) = self
                .backend
                .list(&r.page_token, limit, now)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::ListBindingsReply {
                aors: page
                    .into_iter()
                    .map(|(aor, b)| pb::AorBindings {
                        aor: aor.as_str().to_owned(),
                        bindings: b.iter().map(convert::binding_to).collect(),
                    })
                    .collect(),
                next_page_token: next,
                now,
            })
        })
        .await
    }

    type WatchBindingsStream = EventStream;

    async fn watch_bindings(
        &self,
        request: Request<pb::WatchBindingsRequest>,
    ) -> Result<Response<Self::WatchBindingsStream>, Status> {
        let filter = request.into_inner().aor;
        let mut rx = self.backend.events().await;
        let watchers = self.metrics.watchers.clone();
        let (tx, out) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            watchers.inc();
            loop {
                let got = tokio::select! {
                    // A watcher that went away is noticed at once, not at its next event
                    // (which, filtered on a quiet AOR, may never come).
                    _ = tx.closed() => break,
                    got = rx.recv() => got,
                };
                let item = match got {
                    Ok(e) if e.aor.is_empty() => Err(Status::data_loss(
                        "the change feed was interrupted; resynchronise with Lookup",
                    )),
                    Ok(e) if filter.is_empty() || e.aor == filter => Ok((*e).clone()),
                    Ok(_) => continue,
                    // The watcher fell behind: say so (it must resync with Lookup)
                    // rather than silently skip changes.
                    Err(RecvError::Lagged(n)) => Err(Status::data_loss(format!(
                        "{n} binding events were dropped"
                    ))),
                    Err(RecvError::Closed) => break,
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    break;
                }
            }
            watchers.dec();
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsReply>, Status> {
        // Served from the periodic count: a scan per call would let any client load Redis.
        observed(&self.metrics, "Stats", async {
            let m = &self.metrics;
            let g = |x: i64| u64::try_from(x).unwrap_or(0);
            Ok(pb::StatsReply {
                aors: g(m.aors.get()),
                bindings: g(m.bindings.get()),
                users: g(m.users.get()),
                dialogs: g(m.dialogs_active.get()),
            })
        })
        .await
    }

    async fn get_credentials(
        &self,
        request: Request<pb::GetCredentialsRequest>,
    ) -> Result<Response<pb::GetCredentialsReply>, Status> {
        self.edges_only("GetCredentials")?;
        observed(&self.metrics, "GetCredentials", async {
            let r = request.get_ref();
            need("username", &r.username)?;
            need("realm", &r.realm)?;
            let c = self
                .backend
                .credentials(&r.username, &r.realm)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::GetCredentialsReply {
                credentials: c.as_ref().map(convert::credentials_to),
            })
        })
        .await
    }

    async fn put_user(
        &self,
        request: Request<pb::PutUserRequest>,
    ) -> Result<Response<pb::PutUserReply>, Status> {
        observed(&self.metrics, "PutUser", async {
            let r = request.into_inner();
            need("username", &r.username)?;
            need("realm", &r.realm)?;
            let creds = r
                .credentials
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("credentials missing"))
                .and_then(|c| convert::credentials_from(c).map_err(invalid))?;
            let replaced = self
                .backend
                .put_user(&r.username, &r.realm, &creds)
                .await
                .map_err(|e| self.failed(e))?;
            tracing::info!(username = %r.username, realm = %r.realm, replaced, "user provisioned");
            Ok(pb::PutUserReply { replaced })
        })
        .await
    }

    async fn remove_user(
        &self,
        request: Request<pb::RemoveUserRequest>,
    ) -> Result<Response<pb::RemoveUserReply>, Status> {
        observed(&self.metrics, "RemoveUser", async {
            let r = request.into_inner();
            need("username", &r.username)?;
            need("realm", &r.realm)?;
            let removed = self
                .backend
                .remove_user(&r.username, &r.realm)
                .await
                .map_err(|e| self.failed(e))?;
            tracing::info!(username = %r.username, realm = %r.realm, removed, "user removed");
            Ok(pb::RemoveUserReply { removed })
        })
        .await
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersReply>, Status> {
        observed(&self.metrics, "ListUsers", async {
            let realm = &request.get_ref().realm;
            need("realm", realm)?;
            let usernames = self
                .backend
                .list_users(realm)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::ListUsersReply { usernames })
        })
        .await
    }

    async fn acquire_call(
        &self,
        request: Request<pb::AcquireCallRequest>,
    ) -> Result<Response<pb::AcquireCallReply>, Status> {
        self.edges_only("AcquireCall")?;
        observed(&self.metrics, "AcquireCall", async {
            let r = request.get_ref();
            call_fields(&r.call_id, &r.from_tag)?;
            if r.limits.len() > MAX_CALL_LIMITS
                || r.limits
                    .iter()
                    .any(|l| l.key.is_empty() || l.key.len() > MAX_LIMIT_KEY_LEN)
            {
                return Err(Status::invalid_argument(format!(
                    "at most {MAX_CALL_LIMITS} limits, keys of 1 to {MAX_LIMIT_KEY_LEN} bytes"
                )));
            }
            if r.ttl_secs == 0 {
                return Err(Status::invalid_argument("ttl_secs is 0"));
            }
            let member = crate::backend::call_member(&r.call_id, &r.from_tag);
            let admission = self
                .backend
                .acquire_call(
                    &member,
                    &r.limits,
                    r.ttl_secs.min(MAX_CALL_TTL_SECS),
                    sip_registrar::unix_now_ms(),
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(match admission {
                crate::backend::Admission::Granted => pb::AcquireCallReply {
                    granted: true,
                    ..Default::default()
                },
                crate::backend::Admission::Refused { key, by } => pb::AcquireCallReply {
                    granted: false,
                    refused_key: key,
                    refused_by: by.to_owned(),
                },
            })
        })
        .await
    }

    async fn refresh_call(
        &self,
        request: Request<pb::RefreshCallRequest>,
    ) -> Result<Response<pb::RefreshCallReply>, Status> {
        self.edges_only("RefreshCall")?;
        observed(&self.metrics, "RefreshCall", async {
            let r = request.get_ref();
            call_fields(&r.call_id, &r.from_tag)?;
            if r.ttl_secs == 0 {
                return Err(Status::invalid_argument("ttl_secs is 0"));
            }
            let found = self
                .backend
                .refresh_call(
                    &crate::backend::call_member(&r.call_id, &r.from_tag),
                    r.ttl_secs.min(MAX_CALL_TTL_SECS),
                    sip_registrar::unix_now_ms(),
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::RefreshCallReply { found })
        })
        .await
    }

    async fn release_call(
        &self,
        request: Request<pb::ReleaseCallRequest>,
    ) -> Result<Response<pb::ReleaseCallReply>, Status> {
        self.edges_only("ReleaseCall")?;
        observed(&self.metrics, "ReleaseCall", async {
            let r = request.get_ref();
            if r.tags.len() > 2 {
                return Err(Status::invalid_argument("at most 2 tags"));
            }
            let mut members = Vec::with_capacity(r.tags.len());
            for t in &r.tags {
                call_fields(&r.call_id, t)?;
                members.push(crate::backend::call_member(&r.call_id, t));
            }
            let released = self
                .backend
                .release_call(&members, sip_registrar::unix_now_ms())
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::ReleaseCallReply { released })
        })
        .await
    }

    async fn ban(
        &self,
        request: Request<pb::BanRequest>,
    ) -> Result<Response<pb::BanReply>, Status> {
        self.edges_only("Ban")?;
        observed(&self.metrics, "Ban", async {
            let r = request.get_ref();
            ban_subject("subject", &r.subject)?;
            if r.secs == 0 {
                return Err(Status::invalid_argument("secs is 0"));
            }
            let until = sip_registrar::unix_now_ms() + u64::from(r.secs.min(MAX_BAN_SECS)) * 1000;
            self.backend
                .ban(&r.subject, until)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::BanReply {})
        })
        .await
    }

    async fn list_bans(
        &self,
        _request: Request<pb::ListBansRequest>,
    ) -> Result<Response<pb::ListBansReply>, Status> {
        observed(&self.metrics, "ListBans", async {
            let bans = self
                .backend
                .list_bans(sip_registrar::unix_now_ms(), crate::backend::MAX_BANS)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::ListBansReply { bans })
        })
        .await
    }

    async fn count_failure(
        &self,
        request: Request<pb::CountFailureRequest>,
    ) -> Result<Response<pb::CountFailureReply>, Status> {
        self.edges_only("CountFailure")?;
        observed(&self.metrics, "CountFailure", async {
            let r = request.get_ref();
            if !r.source.is_empty() {
                ban_subject("source", &r.source)?;
            }
            if !r.user.is_empty() {
                ban_subject("user", &r.user)?;
            }
            let mut r = r.clone();
            r.window_secs = r.window_secs.clamp(1, MAX_BAN_SECS);
            r.source_ban_secs = r.source_ban_secs.min(MAX_BAN_SECS);
            r.user_lock_secs = r.user_lock_secs.min(MAX_BAN_SECS);
            let started = self
                .backend
                .count_failure(&r, sip_registrar::unix_now_ms())
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::CountFailureReply { started })
        })
        .await
    }

    async fn use_nonce(
        &self,
        request: Request<pb::UseNonceRequest>,
    ) -> Result<Response<pb::UseNonceReply>, Status> {
        self.edges_only("UseNonce")?;
        observed(&self.metrics, "UseNonce", async {
            let r = request.get_ref();
            need("nonce", &r.nonce)?;
            // Bounded key sizes: the edge sends what it verified, but this is an API.
            if r.nonce.len() > MAX_NONCE_LEN || r.nc.len() > MAX_NC_LEN {
                return Err(Status::invalid_argument(format!(
                    "nonce at most {MAX_NONCE_LEN} bytes, nc at most {MAX_NC_LEN}"
                )));
            }
            if r.ttl_secs == 0 {
                return Err(Status::invalid_argument("ttl_secs is 0"));
            }
            let first_use = self
                .backend
                .use_nonce(&r.nonce, &r.nc, r.ttl_secs.min(MAX_NONCE_TTL_SECS))
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::UseNonceReply { first_use })
        })
        .await
    }

    async fn put_dialog(
        &self,
        request: Request<pb::PutDialogRequest>,
    ) -> Result<Response<pb::PutDialogReply>, Status> {
        self.edges_only("PutDialog")?;
        observed(&self.metrics, "PutDialog", async {
            let r = request.into_inner();
            let d = r
                .dialog
                .ok_or_else(|| Status::invalid_argument("dialog missing"))?;
            need("dialog.call_id", &d.call_id)?;
            need("dialog.from_tag", &d.from_tag)?;
            telemetry::trace::record_call_id(&d.call_id);
            let ttl = if r.ttl_secs == 0 {
                self.dialogs.ttl_secs
            } else {
                r.ttl_secs
            };
            let dialog = self
                .backend
                .put_dialog(&d, ttl, r.touch_only)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::PutDialogReply { dialog })
        })
        .await
    }

    async fn end_dialog(
        &self,
        request: Request<pb::EndDialogRequest>,
    ) -> Result<Response<pb::EndDialogReply>, Status> {
        self.edges_only("EndDialog")?;
        observed(&self.metrics, "EndDialog", async {
            let r = request.into_inner();
            need("call_id", &r.call_id)?;
            need("from_tag", &r.from_tag)?;
            telemetry::trace::record_call_id(&r.call_id);
            let ttl = if r.ttl_secs == 0 {
                self.dialogs.ended_ttl_secs
            } else {
                r.ttl_secs
            };
            let dialog = self
                .backend
                .end_dialog(
                    &DialogKey {
                        call_id: r.call_id,
                        from_tag: r.from_tag,
                    },
                    &DialogEnd {
                        ended_at_ms: r.ended_at_ms,
                        reason: r.end_reason,
                        status: r.status,
                    },
                    ttl,
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::EndDialogReply { dialog })
        })
        .await
    }

    async fn reap_dialogs(
        &self,
        request: Request<pb::ReapDialogsRequest>,
    ) -> Result<Response<pb::ReapDialogsReply>, Status> {
        self.edges_only("ReapDialogs")?;
        observed(&self.metrics, "ReapDialogs", async {
            let r = request.into_inner();
            let limit = match r.limit {
                0 => 100,
                n => n.min(1000) as usize,
            };
            let dialogs = self
                .backend
                .reap_dialogs(
                    sip_registrar::unix_now_ms(),
                    limit,
                    self.dialogs.ended_ttl_secs,
                )
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::ReapDialogsReply { dialogs })
        })
        .await
    }

    async fn get_dialog(
        &self,
        request: Request<pb::GetDialogRequest>,
    ) -> Result<Response<pb::GetDialogReply>, Status> {
        self.edges_only("GetDialog")?;
        observed(&self.metrics, "GetDialog", async {
            let r = request.into_inner();
            need("call_id", &r.call_id)?;
            need("from_tag", &r.from_tag)?;
            telemetry::trace::record_call_id(&r.call_id);
            let dialog = self
                .backend
                .get_dialog(&DialogKey {
                    call_id: r.call_id,
                    from_tag: r.from_tag,
                })
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::GetDialogReply { dialog })
        })
        .await
    }

    async fn list_dialogs(
        &self,
        request: Request<pb::ListDialogsRequest>,
    ) -> Result<Response<pb::ListDialogsReply>, Status> {
        // "No calls" from a store that lost its data would be a wrong answer.
        self.guard.check("ListDialogs")?;
        observed(&self.metrics, "ListDialogs", async {
            let r = request.into_inner();
            let limit = match r.limit {
                0 => 100,
                n => n.min(1000) as usize,
            };
            let (dialogs, next_page_token) = self
                .backend
                .list_dialogs(&r.call_id, &r.page_token, limit)
                .await
                .map_err(|e| self.failed(e))?;
            Ok(pb::ListDialogsReply {
                dialogs,
                next_page_token,
                now_ms: sip_registrar::unix_now_ms(),
            })
        })
        .await
    }

    async fn terminate_dialog(
        &self,
        request: Request<pb::TerminateDialogRequest>,
    ) -> Result<Response<pb::TerminateDialogReply>, Status> {
        self.guard.check("TerminateDialog")?;
        observed(&self.metrics, "TerminateDialog", async {
            let r = request.into_inner();
            need("call_id", &r.call_id)?;
            need("from_tag", &r.from_tag)?;
            telemetry::trace::record_call_id(&r.call_id);
            let dialog = self
                .backend
                .terminate_dialog(
                    &DialogKey {
                        call_id: r.call_id,
                        from_tag: r.from_tag,
                    },
                    sip_registrar::unix_now_ms(),
                )
                .await
                .map_err(|e| self.failed(e))?;
            if let Some(d) = &dialog {
                tracing::info!(call_id = %d.call_id, ended = d.ended_at_ms != 0, "an operator asked to end a call");
            }
            Ok(pb::TerminateDialogReply { dialog })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use grpc_auth::Role;

    /// The metrics' lists (series created at start) are the values the service counts.
    #[test]
    fn metric_lists_are_what_the_service_uses() {
        let src = include_str!("server.rs");
        let mut observed: Vec<&str> = src
            .split(concat!("observed", "("))
            .skip(1)
            .filter_map(|rest| {
                let rest = rest
                    .trim_start()
                    .strip_prefix("&self.metrics,")?
                    .trim_start();
                let rest = rest.strip_prefix('"')?;
                Some(&rest[..rest.find('"')?])
            })
            .collect();
        observed.sort_unstable();
        let mut listed = METHODS.to_vec();
        listed.sort_unstable();
        assert_eq!(observed, listed, "each method observed once, and listed");
        for (status, code) in REFUSED_CODES {
            assert_eq!(refused_code(status), code);
        }
        assert_eq!(refused_code(401), REFUSED_OTHER);
    }

    fn roles(method: &str) -> Vec<Role> {
        match POLICY.access(&format!("/sipcluster.location.v1.Location/{method}")) {
            Some(Access::Roles(r)) => r.to_vec(),
            other => panic!("{method}: {other:?}"),
        }
    }

    #[test]
    fn every_rpc_of_the_proto_has_its_roles() {
        let proto = include_str!("../../../proto/sipcluster/location/v1/location.proto");
        assert_eq!(POLICY.unlisted(proto), Vec::<String>::new());
        assert!(proto.contains("rpc GetCredentials("), "the proto was read");
    }

    #[test]
    fn credentials_and_writes_of_sip_state_are_for_edges_and_users_for_operators() {
        use Role::{Admin, Edge};
        for m in [
            "GetCredentials",
            "UseNonce",
            "Register",
            "RegisterBatch",
            "PutDialog",
            "EndDialog",
            "GetDialog",
            "ReapDialogs",
            "AcquireCall",
            "RefreshCall",
            "ReleaseCall",
            "Ban",
            "CountFailure",
        ] {
            assert_eq!(roles(m), [Edge], "{m}");
        }
        for m in [
            "PutUser",
            "RemoveUser",
            "ListUsers",
            "ListBindings",
            "ListDialogs",
            "TerminateDialog",
        ] {
            assert_eq!(roles(m), [Admin], "{m}");
        }
        for m in [
            "Lookup",
            "RemoveBindings",
            "Stats",
            "WatchBindings",
            "ListBans",
        ] {
            assert_eq!(roles(m), [Edge, Admin], "{m}");
        }
    }
}

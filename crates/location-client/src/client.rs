//! The gRPC client of the location service, as the edge's stores.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use grpc_auth::{AuthChannel, Bearer, Token};
use sip_registrar::{
    Aor, Binding, LocationStore, RegisterOutcome, RegisterRequest, StoreError, StoreStats,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::transport::Endpoint;
use tonic::{Code, Request, Status};

use crate::convert;
use crate::pb;
use crate::pb::location_client::LocationClient as Grpc;

/// How the client reaches the location service.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `http://host:port` of the location service (a Kubernetes Service name in a cluster).
    pub endpoint: String,
    /// Deadline of each call, sent to the server as `grpc-timeout` too.
    pub timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Extra attempts after a call failed with UNAVAILABLE (connection refused or reset),
    /// within the caller's patience: each attempt has its own deadline.
    pub retries: u32,
    /// How long fetched credentials are reused; zero disables the cache. A password
    /// change therefore takes effect on every edge within this time.
    pub credentials_ttl: Duration,
    /// The bearer token sent with every call: the edge token for an edge, the admin
    /// token for the operator's commands. `None` sends none, and the service refuses
    /// every call (UNAUTHENTICATED).
    pub token: Option<Token>,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            endpoint: "http://127.0.0.1:50051".into(),
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(500),
            retries: 1,
            credentials_ttl: Duration::from_secs(5),
            token: None,
        }
    }
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not a valid URI.
    #[error("location endpoint {endpoint:?}: {source}")]
    Endpoint {
        /// The configured endpoint.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("location service: {0}")]
    Call(#[from] Status),
    /// The service answered with a value that does not convert.
    #[error("location service sent {0}")]
    Convert(#[from] convert::ConvertError),
}

/// Credentials cache entries; beyond this the cache is emptied and refilled (a bound,
/// not an LRU: the common case is a working set far below it).
const CACHE_LIMIT: usize = 100_000;

type CacheMap = HashMap<(String, String), (Option<sip_auth::Credentials>, Instant)>;

/// A REGISTER waiting for its batch, with where its result goes.
type Queued = (
    pb::RegisterRequest,
    oneshot::Sender<Result<pb::RegisterReply, Status>>,
    Instant,
);

/// Most REGISTERs in one RegisterBatch call.
const MAX_BATCH: usize = 128;
/// RegisterBatch calls in flight at once. While they are, new REGISTERs queue and leave
/// together in the next call: batching that costs no latency at low load (a lone REGISTER
/// leaves at once) and grows with the load. Measured: a unary call per REGISTER costs the
/// edge and the location service ~25 µs of CPU each; a batch of ten costs little more
/// than one call.
const IN_FLIGHT: usize = 2;

fn spawn_batcher(grpc: Grpc<AuthChannel>, timeout: Duration) -> mpsc::UnboundedSender<Queued> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Queued>();
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // Wait for a free call slot first: what arrives meanwhile joins this batch.
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(q) => batch.push(q),
                    Err(_) => break,
                }
            }
            // Callers whose deadline passed while queued have answered 503 already:
            // applying their REGISTER now would be work nobody waits for.
            batch.retain(|(_, waiter, _)| !waiter.is_closed());
            let Some(oldest) = batch.iter().map(|(_, _, at)| *at).min() else {
                continue;
            };
            // The call may last only as long as its most impatient caller still waits:
            // the service stops working on REGISTERs whose callers answered 503 already.
            let budget = timeout
                .saturating_sub(oldest.elapsed())
                .max(Duration::from_millis(1));
            let mut g = grpc.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let (requests, waiters): (Vec<_>, Vec<_>) =
                    batch.into_iter().map(|(r, w, _)| (r, w)).unzip();
                let mut r = Request::new(pb::RegisterBatchRequest { requests });
                r.set_timeout(budget);
                match g.register_batch(r).await {
                    Ok(reply) => {
                        let mut results = reply.into_inner().results.into_iter();
                        for w in waiters {
                            let item = match results.next().and_then(|r| r.result) {
                                Some(pb::register_result::Result::Reply(x)) => Ok(x),
                                Some(pb::register_result::Result::Unavailable(m)) => {
                                    Err(Status::unavailable(m))
                                }
                                None => Err(Status::internal("RegisterBatch: result missing")),
                            };
                            let _ = w.send(item);
                        }
                    }
                    Err(s) => {
                        for w in waiters {
                            let _ = w.send(Err(s.clone()));
                        }
                    }
                }
            });
        }
    });
    tx
}

/// A location-service client: one HTTP/2 connection (multiplexed, reconnected on demand)
/// shared by every task of the edge. Cheap to clone.
#[derive(Debug)]
pub struct LocationClient {
    grpc: Grpc<AuthChannel>,
    cfg: ClientConfig,
    cache: Mutex<CacheMap>,
    /// Started on first use (inside the runtime).
    batcher: OnceLock<mpsc::UnboundedSender<Queued>>,
    /// Failed calls' warnings: while the service is down every call fails, and one line
    /// every few seconds says so.
    failures_log: telemetry::LogLimit,
}

impl LocationClient {
    /// A client that connects lazily: building it never waits, and an unreachable
    /// service shows up as UNAVAILABLE on the first calls (the edge answers 503).
    pub fn new(cfg: ClientConfig) -> Result<LocationClient, ClientError> {
        let endpoint = LocationClient::check_endpoint(&cfg.endpoint)?
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(1 << 20))
            .initial_connection_window_size(Some(4 << 20))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = Bearer::new(cfg.token.as_ref()).channel(endpoint.connect_lazy());
        Ok(LocationClient {
            grpc: Grpc::new(channel),
            cfg,
            cache: Mutex::new(HashMap::new()),
            batcher: OnceLock::new(),
            failures_log: telemetry::LogLimit::per_minute(6, 3),
        })
    }

    /// The endpoint `url` names, checked without connecting (no runtime needed:
    /// `check-config`).
    pub fn check_endpoint(url: &str) -> Result<Endpoint, ClientError> {
        Endpoint::from_shared(url.to_owned()).map_err(|source| ClientError::Endpoint {
            endpoint: url.to_owned(),
            source,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    fn request<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(self.cfg.timeout);
        r
    }

    /// Run `call` with the retry policy: UNAVAILABLE is retried `retries` times after a
    /// short pause; every other status is final. Only for calls whose replay is harmless
    /// (reads, and writes that set a value rather than apply a change).
    async fn with_retries<T, F, Fut>(&self, what: &'static str, call: F) -> Result<T, Status>
    where
        F: FnMut(Grpc<AuthChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.with_retries_up_to(self.cfg.retries, what, call).await
    }

    /// [`with_retries`](Self::with_retries) with at most `retries` extra attempts.
    async fn with_retries_up_to<T, F, Fut>(
        &self,
        retries: u32,
        what: &'static str,
        mut call: F,
    ) -> Result<T, Status>
    where
        F: FnMut(Grpc<AuthChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut attempt = 0;
        loop {
            match call(self.grpc.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if s.code() == Code::Unavailable && attempt < retries => {
                    attempt += 1;
                    tracing::debug!(call = what, attempt, status = %s, "location service unavailable; retrying");
                    tokio::time::sleep(Duration::from_millis(5 << attempt.min(6))).await;
                }
                Err(s) => {
                    match self.failures_log.allow(std::time::Instant::now()) {
                        Some(held_back) => {
                            tracing::warn!(call = what, code = ?s.code(), message = s.message(), held_back, "location service call failed")
                        }
                        None => {
                            tracing::debug!(call = what, code = ?s.code(), message = s.message(), "location service call failed")
                        }
                    }
                    return Err(s);
                }
            }
        }
    }

    /// Apply a REGISTER; see [`LocationStore::register`].
    pub async fn register_request(
        &self,
        req: &RegisterRequest,
    ) -> Result<Result<RegisterOutcome, sip_registrar::RegisterError>, ClientError> {
        let msg = convert::request_to(req);
        let batcher = self
            .batcher
            .get_or_init(|| spawn_batcher(self.grpc.clone(), self.cfg.timeout));
        // Not retried: a REGISTER that reached the service may have been applied, and
        // its replay (same Call-ID and CSeq) would be refused as out of order (500).
        // UNAVAILABLE becomes 503 + Retry-After; the phone's retry has a new CSeq.
        let reply = self
            .with_retries_up_to(0, "Register", |_| {
                let (tx, rx) = oneshot::channel();
                let queued = batcher.send((msg.clone(), tx, Instant::now()));
                let deadline = self.cfg.timeout;
                async move {
                    queued.map_err(|_| Status::unavailable("register batcher stopped"))?;
                    // The deadline covers the wait for a batch slot too: under overload
                    // the REGISTER fails fast (503 + Retry-After) instead of queueing.
                    match tokio::time::timeout(deadline, rx).await {
                        Ok(Ok(r)) => r.map(tonic::Response::new),
                        Ok(Err(_)) => Err(Status::unavailable("register batch dropped")),
                        Err(_) => Err(Status::deadline_exceeded("register deadline exceeded")),
                    }
                }
            })
            .await?;
        Ok(convert::outcome_from(reply)?)
    }

    /// The live bindings of `aor`.
    pub async fn lookup_aor(&self, aor: &Aor) -> Result<Vec<Binding>, ClientError> {
        let msg = pb::LookupRequest {
            aor: aor.as_str().to_owned(),
        };
        let reply = self
            .with_retries("Lookup", |mut g| {
                let r = self.request(msg.clone());
                async move { g.lookup(r).await }
            })
            .await?;
        Ok(convert::bindings_from(reply.bindings)?)
    }

    /// Remove one contact (or all, with `None`) of `aor`; returns how many went.
    pub async fn remove_bindings(
        &self,
        aor: &Aor,
        contact: Option<&str>,
    ) -> Result<u32, ClientError> {
        let msg = pb::RemoveBindingsRequest {
            aor: aor.as_str().to_owned(),
            contact: contact.unwrap_or_default().to_owned(),
        };
        let reply = self
            .with_retries("RemoveBindings", |mut g| {
                let r = self.request(msg.clone());
                async move { g.remove_bindings(r).await }
            })
            .await?;
        Ok(reply.removed)
    }

    /// A page of the AORs with live bindings (see the `ListBindings` RPC): the AORs with
    /// their bindings, the next page's token (empty after the last), the service's clock.
    pub async fn list_bindings(
        &self,
        page_token: &str,
        limit: u32,
    ) -> Result<(Vec<(Aor, Vec<Binding>)>, String, u64), ClientError> {
        let msg = pb::ListBindingsRequest {
            limit,
            page_token: page_token.to_owned(),
        };
        let reply = self
            .with_retries("ListBindings", |mut g| {
                let r = self.request(msg.clone());
                async move { g.list_bindings(r).await }
            })
            .await?;
        let mut page = Vec::with_capacity(reply.aors.len());
        for a in reply.aors {
            page.push((
                convert::aor_from(&a.aor)?,
                convert::bindings_from(a.bindings)?,
            ));
        }
        Ok((page, reply.next_page_token, reply.now))
    }

    /// Registration and user counts.
    pub async fn stats_reply(&self) -> Result<pb::StatsReply, ClientError> {
        Ok(self
            .with_retries("Stats", |mut g| {
                let r = self.request(pb::StatsRequest {});
                async move { g.stats(r).await }
            })
            .await?)
    }

    /// Credentials of a user, from the service (bypassing the cache).
    pub async fn fetch_credentials(
        &self,
        username: &str,
        realm: &str,
    ) -> Result<Option<sip_auth::Credentials>, ClientError> {
        let msg = pb::GetCredentialsRequest {
            username: username.to_owned(),
            realm: realm.to_owned(),
        };
        let reply = self
            .with_retries("GetCredentials", |mut g| {
                let r = self.request(msg.clone());
                async move { g.get_credentials(r).await }
            })
            .await?;
        Ok(reply
            .credentials
            .as_ref()
            .map(convert::credentials_from)
            .transpose()?)
    }

    /// Add or replace a user; true when it replaced one. Only HA1s are sent.
    pub async fn put_user(
        &self,
        username: &str,
        realm: &str,
        creds: &sip_auth::Credentials,
    ) -> Result<bool, ClientError> {
        let msg = pb::PutUserRequest {
            username: username.to_owned(),
            realm: realm.to_owned(),
            credentials: Some(convert::credentials_to(creds)),
        };
        let reply = self
            .with_retries("PutUser", |mut g| {
                let r = self.request(msg.clone());
                async move { g.put_user(r).await }
            })
            .await?;
        Ok(reply.replaced)
    }

    /// Remove a user; true when it existed.
    pub async fn remove_user(&self, username: &str, realm: &str) -> Result<bool, ClientError> {
        let msg = pb::RemoveUserRequest {
            username: username.to_owned(),
            realm: realm.to_owned(),
        };
        let reply = self
            .with_retries("RemoveUser", |mut g| {
                let r = self.request(msg.clone());
                async move { g.remove_user(r).await }
            })
            .await?;
        Ok(reply.removed)
    }

    /// Usernames of a realm, sorted.
    pub async fn list_users(&self, realm: &str) -> Result<Vec<String>, ClientError> {
        let msg = pb::ListUsersRequest {
            realm: realm.to_owned(),
        };
        let reply = self
            .with_retries("ListUsers", |mut g| {
                let r = self.request(msg.clone());
                async move { g.list_users(r).await }
            })
            .await?;
        Ok(reply.usernames)
    }

    /// Record one use of a digest nonce with count `nc` (see the `UseNonce` RPC): true
    /// the first time. Not retried: a use that reached the service may have been
    /// recorded, and its replay would answer false, refusing a genuine request as a
    /// replay. A failure is the edge's 503, and the phone's retry has a fresh count.
    pub async fn use_nonce(
        &self,
        nonce: &str,
        nc: &str,
        ttl: Duration,
    ) -> Result<bool, ClientError> {
        let msg = pb::UseNonceRequest {
            nonce: nonce.to_owned(),
            nc: nc.to_owned(),
            ttl_secs: convert::ttl_secs(ttl),
        };
        let reply = self
            .with_retries_up_to(0, "UseNonce", |mut g| {
                let r = self.request(msg.clone());
                async move { g.use_nonce(r).await }
            })
            .await?;
        Ok(reply.first_use)
    }

    /// Admit a new call against `limits` (see the `AcquireCall` RPC). Retried: a call that
    /// holds its slots already is granted again, so a retry cannot take two.
    pub async fn acquire_call(
        &self,
        call_id: &str,
        from_tag: &str,
        limits: Vec<pb::CallLimit>,
        ttl: Duration,
    ) -> Result<pb::AcquireCallReply, ClientError> {
        let msg = pb::AcquireCallRequest {
            call_id: call_id.to_owned(),
            from_tag: from_tag.to_owned(),
            limits,
            ttl_secs: convert::ttl_secs(ttl),
        };
        Ok(self
            .with_retries("AcquireCall", |mut g| {
                let r = self.request(msg.clone());
                async move { g.acquire_call(r).await }
            })
            .await?)
    }

    /// Extend a call's slots (`RefreshCall`); false when it holds none. Retried.
    pub async fn refresh_call(
        &self,
        call_id: &str,
        from_tag: &str,
        ttl: Duration,
    ) -> Result<bool, ClientError> {
        let msg = pb::RefreshCallRequest {
            call_id: call_id.to_owned(),
            from_tag: from_tag.to_owned(),
            ttl_secs: convert::ttl_secs(ttl),
        };
        let reply = self
            .with_retries("RefreshCall", |mut g| {
                let r = self.request(msg.clone());
                async move { g.refresh_call(r).await }
            })
            .await?;
        Ok(reply.found)
    }

    /// Release a call's slots, named by the tags of the request ending it
    /// (`ReleaseCall`); true when it held some. Retried: a second release finds none.
    pub async fn release_call(&self, call_id: &str, tags: &[&str]) -> Result<bool, ClientError> {
        let msg = pb::ReleaseCallRequest {
            call_id: call_id.to_owned(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        };
        let reply = self
            .with_retries("ReleaseCall", |mut g| {
                let r = self.request(msg.clone());
                async move { g.release_call(r).await }
            })
            .await?;
        Ok(reply.released)
    }

    /// Ban `subject` (`source:<ip>`, `user:<user@realm>`) across the cluster for `secs`
    /// (`Ban`). Retried: a ban is idempotent.
    pub async fn ban(&self, subject: &str, secs: u32) -> Result<(), ClientError> {
        let msg = pb::BanRequest {
            subject: subject.to_owned(),
            secs,
        };
        self.with_retries("Ban", |mut g| {
            let r = self.request(msg.clone());
            async move { g.ban(r).await }
        })
        .await?;
        Ok(())
    }

    /// Every ban in force (`ListBans`). Not retried: the edges ask again a moment later.
    pub async fn list_bans(&self) -> Result<Vec<pb::BanEvent>, ClientError> {
        let reply = self
            .with_retries_up_to(0, "ListBans", |mut g| {
                let r = self.request(pb::ListBansRequest {});
                async move { g.list_bans(r).await }
            })
            .await?;
        Ok(reply.bans)
    }

    /// Count one failed login across the cluster (`CountFailure`): the bans it starts.
    /// Not retried: a count that reached the service may have been recorded.
    pub async fn count_failure(
        &self,
        req: pb::CountFailureRequest,
    ) -> Result<Vec<pb::BanEvent>, ClientError> {
        let reply = self
            .with_retries_up_to(0, "CountFailure", |mut g| {
                let r = self.request(req.clone());
                async move { g.count_failure(r).await }
            })
            .await?;
        Ok(reply.started)
    }

    /// Create or update a dialog record (fields left empty keep their stored value); with
    /// `touch_only`, only an existing one (`None` when there is none). Retried: a put is
    /// idempotent.
    pub async fn put_dialog(
        &self,
        dialog: pb::Dialog,
        ttl: Duration,
        touch_only: bool,
    ) -> Result<Option<pb::Dialog>, ClientError> {
        let msg = pb::PutDialogRequest {
            dialog: Some(dialog),
            ttl_secs: convert::ttl_secs(ttl),
            touch_only,
        };
        let reply = self
            .with_retries("PutDialog", |mut g| {
                let r = self.request(msg.clone());
                async move { g.put_dialog(r).await }
            })
            .await?;
        Ok(reply.dialog)
    }

    /// Claim up to `limit` dialog records past their deadline (see the `ReapDialogs`
    /// RPC). Not retried: a claim that reached the service is this caller's, and a retry
    /// would not return it again.
    pub async fn reap_dialogs(&self, limit: u32) -> Result<Vec<pb::Dialog>, ClientError> {
        let msg = pb::ReapDialogsRequest { limit };
        let reply = self
            .with_retries_up_to(0, "ReapDialogs", |mut g| {
                let r = self.request(msg);
                async move { g.reap_dialogs(r).await }
            })
            .await?;
        Ok(reply.dialogs)
    }

    /// End a dialog record: the record as ended, `None` when there was none. Retried:
    /// ending twice gives the same record.
    pub async fn end_dialog(
        &self,
        end: pb::EndDialogRequest,
    ) -> Result<Option<pb::Dialog>, ClientError> {
        let reply = self
            .with_retries("EndDialog", |mut g| {
                let r = self.request(end.clone());
                async move { g.end_dialog(r).await }
            })
            .await?;
        Ok(reply.dialog)
    }

    /// A page of the calls in progress (see the `ListDialogs` RPC), of one Call-ID when
    /// `call_id` is not empty: the records, the next page's token (empty after the
    /// last), the service's clock (Unix ms).
    pub async fn list_dialogs(
        &self,
        call_id: &str,
        page_token: &str,
        limit: u32,
    ) -> Result<(Vec<pb::Dialog>, String, u64), ClientError> {
        let msg = pb::ListDialogsRequest {
            limit,
            page_token: page_token.to_owned(),
            call_id: call_id.to_owned(),
        };
        let reply = self
            .with_retries("ListDialogs", |mut g| {
                let r = self.request(msg.clone());
                async move { g.list_dialogs(r).await }
            })
            .await?;
        Ok((reply.dialogs, reply.next_page_token, reply.now_ms))
    }

    /// Ask the cluster to end a call in progress (see the `TerminateDialog` RPC): the
    /// record as marked (`ended_at_ms` set: it had ended already), `None` when there is
    /// none. Retried: marking twice marks once.
    pub async fn terminate_dialog(
        &self,
        call_id: &str,
        from_tag: &str,
    ) -> Result<Option<pb::Dialog>, ClientError> {
        let msg = pb::TerminateDialogRequest {
            call_id: call_id.to_owned(),
            from_tag: from_tag.to_owned(),
        };
        let reply = self
            .with_retries("TerminateDialog", |mut g| {
                let r = self.request(msg.clone());
                async move { g.terminate_dialog(r).await }
            })
            .await?;
        Ok(reply.dialog)
    }

    /// The raw gRPC client (watch streams).
    pub fn grpc(&self) -> Grpc<AuthChannel> {
        self.grpc.clone()
    }

    fn cached(&self, key: &(String, String)) -> Option<Option<sip_auth::Credentials>> {
        if self.cfg.credentials_ttl.is_zero() {
            return None;
        }
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.cfg.credentials_ttl)
            .map(|(c, _)| c.clone())
    }

    fn remember(&self, key: (String, String), creds: Option<sip_auth::Credentials>) {
        if self.cfg.credentials_ttl.is_zero() {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, (creds, Instant::now()));
    }
}

fn unavailable(e: ClientError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[async_trait]
impl LocationStore for LocationClient {
    /// `now` is ignored: the location service stamps expiries with its own clock, so that
    /// every binding of an AOR is judged by one clock whichever edge wrote it.
    async fn register(
        &self,
        req: RegisterRequest,
        _now: u64,
    ) -> Result<RegisterOutcome, StoreError> {
        match self.register_request(&req).await {
            Ok(Ok(o)) => Ok(o),
            Ok(Err(rule)) => Err(StoreError::Rule(rule)),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn lookup(&self, aor: &Aor, _now: u64) -> Result<Vec<Binding>, StoreError> {
        self.lookup_aor(aor).await.map_err(unavailable)
    }

    async fn remove_all(&self, aor: &Aor) -> Result<(), StoreError> {
        self.remove_bindings(aor, None)
            .await
            .map(drop)
            .map_err(unavailable)
    }

    async fn stats(&self, _now: u64) -> Result<StoreStats, StoreError> {
        let s = self.stats_reply().await.map_err(unavailable)?;
        Ok(StoreStats {
            aors: usize::try_from(s.aors).unwrap_or(usize::MAX),
            bindings: usize::try_from(s.bindings).unwrap_or(usize::MAX),
        })
    }
}

#[async_trait]
impl sip_auth::NonceUses for LocationClient {
    /// Any failure (unreachable, deadline, UNAVAILABLE, or a refusal such as an
    /// admin-only API) means the shared set cannot answer: `Unavailable`, which the edge
    /// answers with 503 + Retry-After.
    async fn first_use(
        &self,
        nonce: &str,
        nc: &str,
        ttl: Duration,
    ) -> Result<bool, sip_auth::Error> {
        self.use_nonce(nonce, nc, ttl)
            .await
            .map_err(|e| sip_auth::Error::Unavailable(e.to_string()))
    }
}

#[async_trait]
impl sip_auth::SubscriberStore for LocationClient {
    async fn credentials(
        &self,
        username: &str,
        realm: &str,
    ) -> Result<Option<sip_auth::Credentials>, sip_auth::StoreError> {
        let key = (username.to_owned(), realm.to_owned());
        if let Some(c) = self.cached(&key) {
            return Ok(c);
        }
        match self.fetch_credentials(username, realm).await {
            Ok(c) => {
                self.remember(key, c.clone());
                Ok(c)
            }
            Err(e) => Err(sip_auth::Error::Unavailable(e.to_string())),
        }
    }
}

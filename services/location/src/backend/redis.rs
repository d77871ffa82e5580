//! The Redis backend, standalone or Cluster.
//!
//! Keys (prefix `P`, `sc` by default; the `{...}` part is the Redis Cluster hash tag, so
//! everything of one AOR, one user or one dialog lives in one slot):
//!
//! | key | type | content |
//! |---|---|---|
//! | `P:loc:{AOR}` | hash | `v`: version (random), `d`: the binding set (protobuf `BindingSet`) |
//! | `P:user:{USER@REALM}` | hash | `md5`, `sha256`: HA1 hex |
//! | `P:users:{REALM}` | set | usernames (for listing) |
//! | `P:dlg:{CALL-ID}:FROM-TAG` | hash | the dialog record's fields |
//! | `P:nc:{NONCE}:NC` | string | a digest nonce used with that nonce count (expires with the nonce) |
//! | `P:provisioned:{mN}` | string | the provisioning marker (Unix time it was written): one key standalone, 64 spread over the slots in a cluster |
//!
//! The marker tells a complete store from one that lost its data (a restart without
//! persistence, a FLUSHALL, a cluster master back empty): it is written after the users
//! file is in and never removed, so its absence means loss. A cluster has 64 of them, one
//! per block of 256 slots, so every master holding at least 256 contiguous slots holds
//! one and the loss of any such master shows. Whenever a read would answer "no such
//! user" or "no binding", the marker is checked first: a loss is [`BackendError::DataLoss`]
//! (UNAVAILABLE, the edge's 503), never a 403 or 404 the phones would take as final.
//!
//! A REGISTER is an optimistic transaction: read `v` and `d`, run the registrar rules in
//! Rust, then a Lua script writes the new set only if `v` is unchanged (compare-and-set
//! on a random version, so there is no ABA) and otherwise the attempt starts over.
//! Rules live in one place (Rust), writes are atomic, and two edges registering the same
//! AOR at once are serialized. The key expires (PEXPIREAT) a second after its longest
//! binding: lapsed data is removed by Redis itself, while every read still filters by
//! `expires_at`, so correctness never waits for a cleanup.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use location_client::{convert, pb};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prost::Message;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Script, Value,
};
use sip_auth::Credentials;
use sip_registrar::{
    Aor, Binding, Policy, RegisterError, RegisterOutcome, RegisterRequest, apply_register,
    contact_matches, live_bindings, sort_bindings, unix_now_ms,
};
use tokio::sync::broadcast;

use super::{
    Backend, BackendError, Counts, DialogEnd, DialogKey, Events, Page, REAP_GRACE_SECS, event,
    reaped_reason, removal_event,
};

/// Compare-and-set of an AOR's binding set, with the change event published in the same
/// atomic step (subscribers never see an event for a write that did not happen).
const CAS: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if (v or '') ~= ARGV[1] then return 0 end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', ARGV[3])
  redis.call('PEXPIREAT', KEYS[1], ARGV[4])
end
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[5]) end
return 1
";

/// Replace a user's credentials; returns 1 when the user existed.
const PUT_USER: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV))
return existed
";

/// Admit a call against several keys' limits, all or nothing (see `acquire_call`).
/// KEYS[1] = the call's index; then N slot sets; then N per-second counters.
/// ARGV[1] = member, ARGV[2] = now ms, ARGV[3] = ttl ms, then max_calls, max_cps per key.
/// Returns {1, 0, ''} granted, or {0, i, 'calls'|'cps'} for the i-th key (1-based).
const ACQUIRE_CALL: &str = r"
local n = (#KEYS - 1) / 2
local now = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, 0, ''} end
for i = 1, n do
  local maxc = tonumber(ARGV[2 + 2 * i])
  local maxr = tonumber(ARGV[3 + 2 * i])
  if maxc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1 + i], '-inf', now)
    if redis.call('ZCARD', KEYS[1 + i]) >= maxc then return {0, i, 'calls'} end
  end
  if maxr > 0 then
    local c = tonumber(redis.call('GET', KEYS[1 + n + i]) or '0')
    if c >= maxr then return {0, i, 'cps'} end
  end
end
local names = {}
for i = 1, n do
  local z = KEYS[1 + i]
  redis.call('ZADD', z, now + ttl, ARGV[1])
  if redis.call('PTTL', z) < ttl then redis.call('PEXPIRE', z, ttl) end
  if tonumber(ARGV[3 + 2 * i]) > 0 then
    redis.call('INCR', KEYS[1 + n + i])
    redis.call('PEXPIRE', KEYS[1 + n + i], 2000)
  end
  names[i] = z
end
redis.call('SET', KEYS[1], table.concat(names, '\n'), 'PX', ttl)
return {1, 0, ''}
";

/// Extend a call's slots: KEYS[1] = its index; ARGV[1] = member, ARGV[2] = now ms,
/// ARGV[3] = ttl ms. Returns 1 when the call held slots. The slot sets are named in the
/// index (all under the limits hash tag: one slot in a cluster).
const REFRESH_CALL: &str = r"
local keys = redis.call('GET', KEYS[1])
if not keys then return 0 end
local ttl = tonumber(ARGV[3])
for z in string.gmatch(keys, '[^\n]+') do
  redis.call('ZADD', z, 'XX', tonumber(ARGV[2]) + ttl, ARGV[1])
  if redis.call('PTTL', z) < ttl then redis.call('PEXPIRE', z, ttl) end
end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
";

/// Release the slots of the first of KEYS (call indexes) that exists; ARGV = the
/// members, in the same order. Returns 1 when one did.
const RELEASE_CALL: &str = r"
for i = 1, #KEYS do
  local keys = redis.call('GET', KEYS[i])
  if keys then
    for z in string.gmatch(keys, '[^\n]+') do redis.call('ZREM', z, ARGV[i]) end
    redis.call('DEL', KEYS[i])
    return 1
  end
end
return 0
";

/// Count one failed login: KEYS[1] = the subject's counter, ARGV[1] = the window, ms
/// (set when the count starts, so the window runs from the first failure). Returns the
/// count.
const COUNT_FAILURE: &str = r"
local c = redis.call('INCR', KEYS[1])
if c == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return c
";

/// Merge fields into a dialog record and set its TTL; ARGV[1] = ttl, ARGV[2] = '0' to
/// create or update, '1' to update only an existing record, '2' to end one or '3' to
/// mark one for ending (either only if not ended already: the first end stands), then
/// field/value pairs. Returns the record.
const PUT_DIALOG: &str = r"
if ARGV[2] ~= '0' and redis.call('EXISTS', KEYS[1]) == 0 then return {} end
if ARGV[2] == '2' or ARGV[2] == '3' then
  local e = redis.call('HGET', KEYS[1], 'ended_at_ms')
  if e and e ~= '0' then return redis.call('HGETALL', KEYS[1]) end
end
if #ARGV > 2 then redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return redis.call('HGETALL', KEYS[1])
";

/// How a dialog write treats the stored record.
#[derive(Debug, Clone, Copy)]
enum DialogWrite {
    /// Create or update.
    Upsert,
    /// Update only an existing record (a refresh).
    Touch,
    /// End an existing record, unless it has ended already (the first end stands).
    End,
    /// Update an existing record that has not ended (an operator's end request).
    Terminate,
}

/// Attempts of one optimistic write before giving up (each loses only to a write that
/// succeeded, so the system as a whole always progresses). Writers of one process are
/// queued per AOR first ([`RedisBackend::stripe`]), so only other replicas compete here.
const CAS_ATTEMPTS: usize = 64;

/// Per-AOR write queues in one process (striped: AORs sharing a stripe just queue).
const STRIPES: usize = 256;

/// Marker keys in a cluster: one per block of 16384 / 64 = 256 slots.
const CLUSTER_MARKERS: u16 = 64;

/// CRC16-XMODEM, Redis Cluster's key hash (`slot = crc16(tag) % 16384`).
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The marker keys: `P:provisioned:{m0}` alone for a standalone Redis; in a cluster, 64
/// keys whose hash tags are chosen so that key `i` lands in slots `256 i .. 256 (i + 1)`.
fn marker_keys(prefix: &str, cluster: bool) -> Vec<String> {
    if !cluster {
        return vec![format!("{prefix}:provisioned:{{m0}}")];
    }
    let mut tags: Vec<Option<String>> = vec![None; usize::from(CLUSTER_MARKERS)];
    let mut left = tags.len();
    // Each candidate fills a random block; a few hundred candidates fill all 64.
    for n in 0u32.. {
        let tag = format!("m{n}");
        let block = usize::from(crc16(tag.as_bytes()) % 16384 / (16384 / CLUSTER_MARKERS));
        if tags[block].is_none() {
            tags[block] = Some(tag);
            left -= 1;
            if left == 0 {
                break;
            }
        }
    }
    tags.into_iter()
        .flatten()
        .map(|t| format!("{prefix}:provisioned:{{{t}}}"))
        .collect()
}

/// A Redis password. Its `Debug` shows no more than that it is set, so that it never
/// reaches a log line or a panic message.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisPassword(String);

impl RedisPassword {
    /// The password `text`, as is.
    pub fn new(text: impl Into<String>) -> RedisPassword {
        RedisPassword(text.into())
    }

    /// The password itself, for `AUTH`. Never log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RedisPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisPassword(<redacted>)")
    }
}

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port` URLs: one for standalone, the seed nodes for a cluster. A
    /// password in them (`redis://:PASSWORD@host`) is used as `password` would be.
    pub urls: Vec<String>,
    /// The password of every connection (`AUTH`): the standalone server's, the cluster
    /// seeds' and their nodes'.
    pub password: Option<RedisPassword>,
    /// The ACL user of `password`; `None`: the `default` user.
    pub username: Option<String>,
    /// Cluster mode (MOVED/ASK, slot map) instead of a single server.
    pub cluster: bool,
    /// Key prefix (several deployments or tests may share a Redis).
    pub prefix: String,
    /// Multiplexed connections to spread commands over (standalone).
    pub pool_size: usize,
    /// Per-command response timeout.
    pub response_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Publish binding changes (for WatchBindings across replicas).
    pub publish_events: bool,
}

/// A connection of either kind, so the data code is written once.
#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A connection with the timing of every round trip through it: every command and
/// pipeline the backend sends passes here, so Redis's own latency and errors are
/// measured in one place, apart from the gRPC call around them.
#[derive(Clone)]
struct Conn {
    link: Link,
    timing: RedisTiming,
}

/// Round-trip times and errors of Redis commands (`op`: `command` or `pipeline`; a
/// script or a transaction is a pipeline).
#[derive(Clone, Debug)]
struct RedisTiming {
    duration: Family<OpLabel, Histogram>,
    errors: Family<OpLabel, prometheus_client::metrics::counter::Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

impl Default for RedisTiming {
    fn default() -> Self {
        RedisTiming {
            // 50 µs .. ~0.8 s: a Redis round trip on a LAN is ~100-500 µs.
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.00005, 2.0, 15))
            }),
            errors: Family::default(),
        }
    }
}

impl RedisTiming {
    fn timed<'a, T: Send + 'a>(
        &self,
        op: &'static str,
        f: RedisFuture<'a, T>,
    ) -> RedisFuture<'a, T> {
        let label = OpLabel { op };
        let duration = self.duration.get_or_create(&label).clone();
        let errors = self.errors.get_or_create(&label).clone();
        Box::pin(async move {
            let start = std::time::Instant::now();
            let r = f.await;
            duration.observe(start.elapsed().as_secs_f64());
            // NOSCRIPT is the script cache's normal miss (the client loads the script
            // and retries), not a failure.
            if let Err(e) = &r
                && e.kind() != redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
            {
                errors.inc();
            }
            r
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let f = match &mut self.link {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        };
        self.timing.timed("command", f)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let f = match &mut self.link {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        };
        self.timing.timed("pipeline", f)
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// The credentials every connection presents.
#[derive(Clone, Default)]
struct Auth {
    username: Option<String>,
    password: Option<RedisPassword>,
}

impl Auth {
    /// The configured credentials, else the first URL's: the nodes found through CLUSTER
    /// NODES come as bare `host:port`, and need the seeds' password as much as the seeds.
    fn of(opts: &RedisOptions) -> Auth {
        if opts.password.is_some() {
            return Auth {
                username: opts.username.clone(),
                password: opts.password.clone(),
            };
        }
        let Some(info) = opts
            .urls
            .first()
            .and_then(|u| u.as_str().into_connection_info().ok())
        else {
            return Auth::default();
        };
        let r = info.redis_settings();
        Auth {
            username: r.username().map(str::to_owned),
            password: r.password().map(RedisPassword::new),
        }
    }

    /// `url`'s connection, with these credentials unless it carries a password of its own.
    fn connection_info(&self, url: &str) -> Result<ConnectionInfo, RedisError> {
        let info = url.into_connection_info()?;
        let (Some(password), None) = (&self.password, info.redis_settings().password()) else {
            return Ok(info);
        };
        let mut r = info
            .redis_settings()
            .clone()
            .set_password(password.expose());
        if let Some(u) = &self.username {
            r = r.set_username(u);
        }
        Ok(info.set_redis_settings(r))
    }

    /// A client of `url` with these credentials.
    fn client(&self, url: &str) -> Result<redis::Client, RedisError> {
        redis::Client::open(self.connection_info(url)?)
    }
}

/// Whether a Redis URL carries a password (`redis://[user]:PASSWORD@host`).
pub fn url_has_password(url: &str) -> bool {
    url.into_connection_info()
        .is_ok_and(|i| i.redis_settings().password().is_some())
}

/// The Redis (or Redis Cluster) backend.
pub struct RedisBackend {
    opts: RedisOptions,
    /// What every connection presents (see [`Auth::of`]).
    auth: Auth,
    policy: Policy,
    pool: Vec<ConnectionManager>,
    next: AtomicUsize,
    /// Set by a background task once the cluster's slot map was loaded.
    cluster: Arc<OnceLock<ClusterConnection>>,
    cas: Script,
    put_user: Script,
    put_dialog: Script,
    acquire_call: Script,
    refresh_call: Script,
    release_call: Script,
    count_failure: Script,
    events: Events,
    channel: String,
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// The change channel is subscribed on the first watcher only: every REGISTER
    /// publishes, and a subscribed replica with nobody watching would receive (and Redis
    /// would send) every event for nothing.
    subscribed: std::sync::atomic::AtomicBool,
    /// True while the change channel is subscribed.
    subscription: Arc<tokio::sync::watch::Sender<bool>>,
    /// The provisioning marker's keys.
    markers: Vec<String>,
    /// Optimistic writes that lost to a concurrent writer and were retried.
    cas_conflicts: prometheus_client::metrics::counter::Counter,
    /// Every command's round trip.
    timing: RedisTiming,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field(
                "urls",
                &self
                    .opts
                    .urls
                    .iter()
                    .map(|u| redacted(u))
                    .collect::<Vec<_>>(),
            )
            .field("cluster", &self.opts.cluster)
            .field("prefix", &self.opts.prefix)
            .field("password", &self.auth.password)
            .finish_non_exhaustive()
    }
}

fn rerr(e: RedisError) -> BackendError {
    BackendError::Redis(e.to_string())
}

/// A fresh version tag: splitmix64 over a per-thread state seeded from the OS once (a
/// syscall per write showed up in profiles). Versions only need to differ from the one
/// they replace with overwhelming probability; they are not secrets.
fn random_version() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut b = [0u8; 8];
            // A failing random source leaves a thread-id-derived seed: still distinct
            // per thread and per write, which is all the compare-and-set needs.
            let _ = getrandom::fill(&mut b);
            u64::from_le_bytes(b) ^ (std::ptr::addr_of!(b) as u64)
        });
    }
    let x = STATE.with(|s| {
        let v = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(v);
        v
    });
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("{:016x}", z ^ (z >> 31))
}

impl RedisBackend {
    /// Compare-and-set writes lost to a concurrent writer so far (also a metric).
    pub fn cas_conflicts(&self) -> u64 {
        self.cas_conflicts.get()
    }

    /// Build the backend. Connections are made lazily and re-made with backoff, so the
    /// service starts (not ready) while Redis is down and recovers when it returns.
    pub fn new(opts: RedisOptions, policy: Policy) -> Result<RedisBackend, BackendError> {
        if opts.urls.is_empty() {
            return Err(BackendError::Redis("no Redis URL configured".into()));
        }
        let mut pool = Vec::new();
        let cluster = Arc::new(OnceLock::new());
        let auth = Auth::of(&opts);
        if opts.cluster {
            let mut builder = redis::cluster::ClusterClient::builder(opts.urls.clone())
                .connection_timeout(opts.connect_timeout)
                .response_timeout(opts.response_timeout)
                .retries(3)
                .min_retry_wait(10)
                .max_retry_wait(200);
            // For the seeds and every node the client finds through them (a password in
            // the seed URLs is taken from them by the client itself).
            if let Some(p) = &opts.password {
                builder = builder.password(p.expose());
                if let Some(u) = &opts.username {
                    builder = builder.username(u);
                }
            }
            let client = builder.build().map_err(rerr)?;
            let slot = cluster.clone();
            tokio::spawn(async move {
                let mut delay = Duration::from_millis(100);
                loop {
                    match client.get_async_connection().await {
                        Ok(c) => {
                            let _ = slot.set(c);
                            tracing::info!("connected to the Redis cluster");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?delay, "Redis cluster not reachable");
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            });
        } else {
            let client = auth.client(&opts.urls[0]).map_err(rerr)?;
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(opts.connect_timeout))
                .set_response_timeout(Some(opts.response_timeout))
                .set_number_of_retries(3)
                .set_min_delay(Duration::from_millis(10))
                .set_max_delay(Duration::from_secs(2));
            for _ in 0..opts.pool_size.max(1) {
                pool.push(
                    ConnectionManager::new_lazy_with_config(client.clone(), cfg.clone())
                        .map_err(rerr)?,
                );
            }
        }
        let channel = format!("{}:loc:events", opts.prefix);
        let events = broadcast::channel(1024).0;
        let markers = marker_keys(&opts.prefix, opts.cluster);
        Ok(RedisBackend {
            auth,
            markers,
            cas_conflicts: Default::default(),
            timing: RedisTiming::default(),
            opts,
            policy,
            pool,
            next: AtomicUsize::new(0),
            cluster,
            cas: Script::new(CAS),
            put_user: Script::new(PUT_USER),
            put_dialog: Script::new(PUT_DIALOG),
            acquire_call: Script::new(ACQUIRE_CALL),
            refresh_call: Script::new(REFRESH_CALL),
            release_call: Script::new(RELEASE_CALL),
            count_failure: Script::new(COUNT_FAILURE),
            events,
            channel,
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            subscribed: std::sync::atomic::AtomicBool::new(false),
            subscription: Arc::new(tokio::sync::watch::Sender::new(false)),
        })
    }

    /// The write queue of `key`: concurrent writers of one AOR in this process take turns
    /// instead of failing each other's compare-and-set (which costs two round trips per
    /// loss and, with hundreds of writers, would starve some of them).
    fn stripe(&self, key: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::BuildHasher;
        let h = foldhash::fast::FixedState::with_seed(0x5eed).hash_one(key);
        &self.stripes[(h as usize) % STRIPES]
    }

    /// A short random pause after a lost compare-and-set, so that two replicas that keep
    /// colliding on one AOR fall out of step.
    async fn backoff(attempt: usize) {
        let mut b = [0u8; 2];
        let _ = getrandom::fill(&mut b);
        let max_us = 200u64 << attempt.min(5);
        let us = u64::from(u16::from_le_bytes(b)) % max_us;
        tokio::time::sleep(Duration::from_micros(us)).await;
    }

    fn conn(&self) -> Result<Conn, BackendError> {
        if self.opts.cluster {
            return self
                .cluster
                .get()
                .cloned()
                .map(|c| Conn {
                    link: Link::Cluster(c),
                    timing: self.timing.clone(),
                })
                .ok_or_else(|| BackendError::Redis("not connected to the cluster yet".into()));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len();
        Ok(Conn {
            link: Link::Single(self.pool[i].clone()),
            timing: self.timing.clone(),
        })
    }

    fn loc_key(&self, aor: &Aor) -> String {
        format!("{}:loc:{{{}}}", self.opts.prefix, aor.as_str())
    }

    fn user_key(&self, username: &str, realm: &str) -> String {
        format!("{}:user:{{{username}@{realm}}}", self.opts.prefix)
    }

    fn users_key(&self, realm: &str) -> String {
        format!("{}:users:{{{realm}}}", self.opts.prefix)
    }

    /// Called before answering "not found": is that the truth, or did the store lose
    /// its data? [`BackendError::DataLoss`] when the marker is not whole.
    async fn not_found_is_true(&self, conn: &mut Conn) -> Result<(), BackendError> {
        if self.markers_whole(conn).await? {
            Ok(())
        } else {
            Err(BackendError::DataLoss)
        }
    }

    async fn markers_whole(&self, conn: &mut Conn) -> Result<bool, BackendError> {
        // One EXISTS; the cluster client splits it per master and sums the counts.
        let n: usize = redis::cmd("EXISTS")
            .arg(&self.markers)
            .query_async(conn)
            .await
            .map_err(rerr)?;
        Ok(n == self.markers.len())
    }

    fn nonce_key(&self, nonce: &str, nc: &str) -> String {
        format!("{}:nc:{{{nonce}}}:{nc}", self.opts.prefix)
    }

    /// The call limits' keys: every one under one hash tag, so that a call's check of
    /// its account, domain and trunk together is one script on one master (exact,
    /// atomic). The cost: the limits of a whole cluster live on one master.
    fn limit_key(&self, kind: &str, name: &str) -> String {
        format!("{}:{{lim}}:{kind}:{name}", self.opts.prefix)
    }

    /// The bans in force: one sorted set, subjects scored by when they end.
    fn bans_key(&self) -> String {
        format!("{}:bans", self.opts.prefix)
    }

    fn dialog_key(&self, call_id: &str, from_tag: &str) -> String {
        format!("{}:dlg:{{{call_id}}}:{from_tag}", self.opts.prefix)
    }

    /// The dialog records by reaping deadline (a sorted set of record keys, scored by
    /// `expires_at_ms`). One key, so in a cluster one master holds it: a few writes per
    /// call, where the records themselves spread by Call-ID.
    fn dialog_deadlines_key(&self) -> String {
        format!("{}:dlgexp", self.opts.prefix)
    }

    /// Read an AOR's version and binding set (all stored bindings, lapsed ones included).
    async fn read_set(
        &self,
        conn: &mut Conn,
        key: &str,
    ) -> Result<(String, Vec<Binding>), BackendError> {
        let (v, d): (Option<String>, Option<Vec<u8>>) = redis::cmd("HMGET")
            .arg(key)
            .arg("v")
            .arg("d")
            .query_async(conn)
            .await
            .map_err(rerr)?;
        let set = match d {
            None => Vec::new(),
            Some(bytes) => decode_set(key, &bytes)?,
        };
        Ok((v.unwrap_or_default(), set))
    }

    /// Write `set` in place of version `expected`; false when another writer came first.
    async fn write_set(
        &self,
        conn: &mut Conn,
        key: &str,
        expected: &str,
        new_version: &str,
        set: &[Binding],
        event: Option<pb::BindingEvent>,
    ) -> Result<bool, BackendError> {
        let data = if set.is_empty() {
            Vec::new()
        } else {
            pb::BindingSet {
                bindings: set.iter().map(convert::binding_to).collect(),
            }
            .encode_to_vec()
        };
        // One second past the longest binding: lapsed sets disappear on their own.
        let expire_at_ms = set
            .iter()
            .map(|b| b.expires_at)
            .max()
            .unwrap_or(0)
            .saturating_add(1)
            .saturating_mul(1000);
        let ev = match (event, self.opts.publish_events) {
            (Some(e), true) => e.encode_to_vec(),
            _ => Vec::new(),
        };
        let ok: i64 = self
            .cas
            .key(key)
            .arg(expected)
            .arg(new_version)
            .arg(data)
            .arg(expire_at_ms)
            .arg(ev)
            .arg(&self.channel)
            .invoke_async(conn)
            .await
            .map_err(rerr)?;
        Ok(ok == 1)
    }

    async fn dialog_script(
        &self,
        key: &str,
        ttl_secs: u32,
        write: DialogWrite,
        fields: &[(&str, Vec<u8>)],
    ) -> Result<Option<pb::Dialog>, BackendError> {
        let mut conn = self.conn()?;
        let mut inv = self.put_dialog.key(key);
        inv.arg(ttl_secs.max(1)).arg(match write {
            DialogWrite::Upsert => "0",
            DialogWrite::Touch => "1",
            DialogWrite::End => "2",
            DialogWrite::Terminate => "3",
        });
        for (k, v) in fields {
            inv.arg(*k).arg(v);
        }
        let flat: Vec<(String, Vec<u8>)> = inv.invoke_async(&mut conn).await.map_err(rerr)?;
        Ok((!flat.is_empty()).then(|| dialog_from_fields(&flat)))
    }

    /// The cluster's masters as `redis://host:port`, from CLUSTER NODES of the first seed
    /// that answers (the seeds may be a subset, or a Service name; masters move on
    /// failover). Replicas hold copies of their master's keys and are left out.
    async fn masters(&self) -> Result<Vec<String>, BackendError> {
        let mut last = BackendError::Redis("no seed answered".into());
        for seed in &self.opts.urls {
            let nodes: Result<String, BackendError> = async {
                let client = self.auth.client(seed).map_err(rerr)?;
                let mut c = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(rerr)?;
                redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut c)
                    .await
                    .map_err(rerr)
            }
            .await;
            match nodes {
                Ok(text) => return Ok(masters_of(&text)),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Count AORs and live bindings by scanning every master (pipelined reads per page).
    async fn scan_counts(&self, now: u64) -> Result<Counts, BackendError> {
        let mut counts = Counts::default();
        let loc_pattern = format!("{}:loc:*", self.opts.prefix);
        let user_pattern = format!("{}:user:*", self.opts.prefix);
        let nodes: Vec<String> = if self.opts.cluster {
            self.masters().await?
        } else {
            vec![self.opts.urls[0].clone()]
        };
        for url in nodes {
            let client = self.auth.client(&url).map_err(rerr)?;
            let mut c = client
                .get_multiplexed_async_connection()
                .await
                .map_err(rerr)?;
            let mut cursor: u64 = 0;
            loop {
                let (next, sets) = scan_sets(&mut c, cursor, &loc_pattern, 1000).await?;
                for (k, d) in &sets {
                    let live = decode_set(k, d)?.iter().filter(|b| b.is_live(now)).count() as u64;
                    if live > 0 {
                        counts.aors += 1;
                        counts.bindings += live;
                    }
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&user_pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut c)
                    .await
                    .map_err(rerr)?;
                counts.users += keys.len() as u64;
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        let mut conn = self.conn()?;
        counts.dialogs = redis::cmd("ZCARD")
            .arg(self.dialog_deadlines_key())
            .query_async(&mut conn)
            .await
            .map_err(rerr)?;
        Ok(counts)
    }

    /// One page of [`Backend::list_dialogs`]: ZSCAN over the deadlines set (it holds
    /// exactly the records not ended, and is one key even in a cluster), then the records
    /// read in one pipeline. The token is the ZSCAN cursor.
    async fn dialog_page(
        &self,
        call_id: &str,
        token: &str,
        limit: usize,
    ) -> Result<(Vec<pb::Dialog>, String), BackendError> {
        let mut cursor: u64 = match token {
            "" => 0,
            t => t
                .parse()
                .map_err(|_| BackendError::Redis(format!("bad page token {t:?}")))?,
        };
        let pattern = if call_id.is_empty() {
            "*".to_owned()
        } else {
            // Only this Call-ID's keys: `P:dlg:{CALL-ID}:TAG`, glob characters escaped.
            format!("{}*", glob_escaped(&self.dialog_key(call_id, "")))
        };
        let mut conn = self.conn()?;
        let mut keys: Vec<String> = Vec::new();
        for _ in 0..MAX_SCAN_STEPS {
            let (next, flat): (u64, Vec<String>) = redis::cmd("ZSCAN")
                .arg(self.dialog_deadlines_key())
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(limit.clamp(10, 1000))
                .query_async(&mut conn)
                .await
                .map_err(rerr)?;
            // Member, score, member, score...
            keys.extend(flat.into_iter().step_by(2));
            cursor = next;
            if cursor == 0 || keys.len() >= limit {
                break;
            }
        }
        let mut out = Vec::new();
        if !keys.is_empty() {
            // One command per key, all in flight at once: in a cluster the records live
            // on different masters (a pipeline would go to one).
            let reads = keys.iter().map(|k| {
                let mut c = conn.clone();
                async move {
                    redis::cmd("HGETALL")
                        .arg(k)
                        .query_async::<Vec<(String, Vec<u8>)>>(&mut c)
                        .await
                }
            });
            let records = futures_util::future::try_join_all(reads)
                .await
                .map_err(rerr)?;
            out.extend(
                records
                    .iter()
                    .filter(|f| !f.is_empty())
                    .map(|f| dialog_from_fields(f))
                    .filter(|d| d.ended_at_ms == 0),
            );
        }
        let next = if cursor == 0 {
            String::new()
        } else {
            cursor.to_string()
        };
        Ok((out, next))
    }
}

/// `s` with Redis glob characters (`* ? [ ] \`) escaped, for a MATCH pattern.
fn glob_escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisBackend {
    /// One page of [`Backend::list`]: SCAN over the location keys of each node in turn
    /// (every master of a cluster, sorted so that a token means the same on the next
    /// call), with the binding sets read in one pipeline per SCAN step. The token is
    /// `node-index:cursor`.
    async fn scan_page(&self, token: &str, limit: usize, now: u64) -> Result<Page, BackendError> {
        let mut nodes: Vec<String> = if self.opts.cluster {
            self.masters().await?
        } else {
            vec![self.opts.urls[0].clone()]
        };
        nodes.sort();
        let (mut node, mut cursor) = match token.split_once(':') {
            None if token.is_empty() => (0usize, 0u64),
            Some((n, c)) => match (n.parse(), c.parse()) {
                (Ok(n), Ok(c)) => (n, c),
                _ => return Err(BackendError::Redis(format!("bad page token {token:?}"))),
            },
            None => return Err(BackendError::Redis(format!("bad page token {token:?}"))),
        };
        let pattern = format!("{}:loc:*", self.opts.prefix);
        let key_prefix = format!("{}:loc:{{", self.opts.prefix);
        let mut out = Vec::new();
        let mut steps = 0;
        while node < nodes.len() && out.len() < limit {
            let client = self.auth.client(&nodes[node]).map_err(rerr)?;
            let mut c = client
                .get_multiplexed_async_connection()
                .await
                .map_err(rerr)?;
            loop {
                steps += 1;
                let (next, sets) =
                    scan_sets(&mut c, cursor, &pattern, limit.clamp(10, 1000)).await?;
                for (k, d) in &sets {
                    let Some(name) = k
                        .strip_prefix(&key_prefix)
                        .and_then(|r| r.strip_suffix('}'))
                    else {
                        continue;
                    };
                    let live = live_bindings(&decode_set(k, d)?, now);
                    if let (false, Ok(aor)) = (live.is_empty(), Aor::parse(name)) {
                        out.push((aor, live));
                    }
                }
                cursor = next;
                if cursor == 0 {
                    node += 1;
                    break;
                }
                if out.len() >= limit || steps >= MAX_SCAN_STEPS {
                    break;
                }
            }
            if steps >= MAX_SCAN_STEPS {
                break;
            }
        }
        let next = if node < nodes.len() {
            format!("{node}:{cursor}")
        } else {
            String::new()
        };
        Ok((out, next))
    }
}

/// SCAN steps one `list` call takes at most: a keyspace of mostly lapsed or foreign keys
/// yields a short (even empty) page and a token, never a call that runs past the
/// client's deadline.
const MAX_SCAN_STEPS: usize = 64;

/// One SCAN step over `pattern` from `cursor`, with the binding sets of the keys found
/// read in one pipeline: the next cursor and (key, stored set) of the keys that still
/// hold one.
async fn scan_sets(
    c: &mut redis::aio::MultiplexedConnection,
    cursor: u64,
    pattern: &str,
    count: usize,
) -> Result<(u64, Vec<(String, Vec<u8>)>), BackendError> {
    let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(count)
        .query_async(c)
        .await
        .map_err(rerr)?;
    if keys.is_empty() {
        return Ok((next, Vec::new()));
    }
    let mut p = redis::pipe();
    for k in &keys {
        p.cmd("HGET").arg(k).arg("d");
    }
    let sets: Vec<Option<Vec<u8>>> = p.query_async(c).await.map_err(rerr)?;
    Ok((
        next,
        keys.into_iter()
            .zip(sets)
            .filter_map(|(k, d)| d.map(|d| (k, d)))
            .collect(),
    ))
}

/// A Redis URL without its password (`redis://user:secret@host` → `redis://user:***@host`).
pub fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if at > scheme.len() + 3 => {
            let userinfo = &rest[..at - scheme.len() - 3];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{}", &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// `redis://host:port` of each healthy master in CLUSTER NODES output.
fn masters_of(nodes: &str) -> Vec<String> {
    nodes
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_, addr, flags) = (f.next()?, f.next()?, f.next()?);
            let flags: Vec<&str> = flags.split(',').collect();
            let usable = flags.contains(&"master")
                && !flags
                    .iter()
                    .any(|x| matches!(*x, "fail" | "noaddr" | "handshake"));
            let hostport = addr.split('@').next()?;
            usable.then(|| format!("redis://{hostport}"))
        })
        .collect()
}

fn decode_set(key: &str, bytes: &[u8]) -> Result<Vec<Binding>, BackendError> {
    let corrupt = |problem: String| BackendError::Corrupt {
        key: key.to_owned(),
        problem,
    };
    let set = pb::BindingSet::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    convert::bindings_from(set.bindings).map_err(|e| corrupt(e.to_string()))
}

fn dialog_fields(d: &pb::Dialog) -> Vec<(&'static str, Vec<u8>)> {
    let mut f = Vec::new();
    let mut s = |k: &'static str, v: &[u8]| {
        if !v.is_empty() {
            f.push((k, v.to_vec()));
        }
    };
    s("call_id", d.call_id.as_bytes());
    s("from_tag", d.from_tag.as_bytes());
    s("to_tag", d.to_tag.as_bytes());
    s("caller", d.caller.as_bytes());
    s("callee", d.callee.as_bytes());
    s("edge_id", d.edge_id.as_bytes());
    s("media_relay", d.media_relay.as_bytes());
    s("end_reason", d.end_reason.as_bytes());
    s("call", &d.call);
    for (k, v) in [
        ("started_at_ms", d.started_at_ms),
        ("answered_at_ms", d.answered_at_ms),
        ("ended_at_ms", d.ended_at_ms),
        ("status", u64::from(d.status)),
        ("session_expires_secs", u64::from(d.session_expires_secs)),
        ("expires_at_ms", d.expires_at_ms),
    ] {
        if v != 0 {
            f.push((k, v.to_string().into_bytes()));
        }
    }
    f
}

fn dialog_from_fields(flat: &[(String, Vec<u8>)]) -> pb::Dialog {
    let mut d = pb::Dialog::default();
    for (k, raw) in flat {
        if k == "call" {
            d.call.clone_from(raw);
            continue;
        }
        let v = &String::from_utf8_lossy(raw).into_owned();
        let n = || v.parse::<u64>().unwrap_or(0);
        match k.as_str() {
            "call_id" => d.call_id.clone_from(v),
            "from_tag" => d.from_tag.clone_from(v),
            "to_tag" => d.to_tag.clone_from(v),
            "caller" => d.caller.clone_from(v),
            "callee" => d.callee.clone_from(v),
            "edge_id" => d.edge_id.clone_from(v),
            "media_relay" => d.media_relay.clone_from(v),
            "end_reason" => d.end_reason.clone_from(v),
            "started_at_ms" => d.started_at_ms = n(),
            "answered_at_ms" => d.answered_at_ms = n(),
            "ended_at_ms" => d.ended_at_ms = n(),
            "status" => d.status = u32::try_from(n()).unwrap_or(0),
            "session_expires_secs" => {
                d.session_expires_secs = u32::try_from(n()).unwrap_or(0);
            }
            "expires_at_ms" => d.expires_at_ms = n(),
            _ => {}
        }
    }
    d
}

/// Relay the Redis change channel into the local broadcast, reconnecting with backoff
/// and trying each seed in turn. In a cluster PUBLISH reaches every node, so one node's
/// subscription sees all changes. Whenever the subscription (re)starts after the first
/// time, watchers get the resync marker: changes made while it was down are not replayed.
fn spawn_subscriber(
    urls: Vec<String>,
    auth: Auth,
    channel: String,
    events: Events,
    live: Arc<tokio::sync::watch::Sender<bool>>,
) {
    tokio::spawn(async move {
        let mut delay = Duration::from_millis(100);
        let mut first = true;
        for url in urls.iter().cycle() {
            let sub = async {
                let client = auth.client(url)?;
                let mut ps = client.get_async_pubsub().await?;
                ps.subscribe(&channel).await?;
                Ok::<_, RedisError>(ps)
            };
            match sub.await {
                Ok(mut ps) => {
                    delay = Duration::from_millis(100);
                    live.send_replace(true);
                    if !first {
                        let _ = events.send(super::resync_marker());
                    }
                    first = false;
                    use tokio_stream::StreamExt;
                    let mut stream = ps.on_message();
                    while let Some(msg) = stream.next().await {
                        if events.receiver_count() == 0 {
                            continue;
                        }
                        match pb::BindingEvent::decode(msg.get_payload_bytes()) {
                            Ok(e) => {
                                let _ = events.send(Arc::new(e));
                            }
                            Err(e) => tracing::warn!(error = %e, "undecodable binding event"),
                        }
                    }
                    live.send_replace(false);
                    let _ = events.send(super::resync_marker());
                    tracing::warn!(url = %redacted(url), "binding event subscription lost; resubscribing");
                }
                Err(e) => {
                    tracing::warn!(url = %redacted(url), error = %e, retry_in = ?delay, "binding event subscription failed");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    });
}

#[async_trait]
impl Backend for RedisBackend {
    async fn register(
        &self,
        req: RegisterRequest,
        now: u64,
    ) -> Result<Result<RegisterOutcome, RegisterError>, BackendError> {
        let req = &req;
        let key = self.loc_key(&req.aor);
        let mut conn = self.conn()?;
        let _turn = self.stripe(&key).lock().await;
        // The outcome of our last write attempt, with the version it wrote: if a write
        // that seemed to fail (a timeout after the script ran, or the cluster client
        // resending it after a reconnect) did land, the stored version is ours, and the
        // REGISTER succeeded. Re-running the rules instead would refuse our own binding
        // as out of order (500) for a registration that is in fact stored.
        let mut pending: Option<(String, RegisterOutcome)> = None;
        for attempt in 0..CAS_ATTEMPTS {
            let (version, set) = match self.read_set(&mut conn, &key).await {
                Ok(r) => r,
                Err(e) => return Err(e),
            };
            if let Some((written, outcome)) = pending.take()
                && written == version
            {
                return Ok(Ok(outcome));
            }
            let outcome = match apply_register(&set, req, &self.policy, now) {
                Ok(o) => o,
                Err(e) => return Ok(Err(e)),
            };
            if !outcome.changed() {
                return Ok(Ok(outcome));
            }
            let ev = event(&req.aor, &outcome, now);
            let new_version = random_version();
            let written = self
                .write_set(
                    &mut conn,
                    &key,
                    &version,
                    &new_version,
                    &outcome.bindings,
                    Some(ev),
                )
                .await;
            match written {
                Ok(true) => return Ok(Ok(outcome)),
                Ok(false) => {
                    self.cas_conflicts.inc();
                    pending = Some((new_version, outcome));
                    Self::backoff(attempt).await;
                }
                Err(e) => {
                    // Did it land? One read tells; if Redis cannot answer, neither can we.
                    let (now_stored, _) = self
                        .read_set(&mut conn, &key)
                        .await
                        .map_err(|_| e.clone())?;
                    if now_stored == new_version {
                        return Ok(Ok(outcome));
                    }
                    return Err(e);
                }
            }
        }
        Err(BackendError::Contention(req.aor.to_string()))
    }

    async fn lookup(&self, aor: &Aor, now: u64) -> Result<Vec<Binding>, BackendError> {
        let key = self.loc_key(aor);
        let mut conn = self.conn()?;
        let d: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&key)
            .arg("d")
            .query_async(&mut conn)
            .await
            .map_err(rerr)?;
        match d {
            Some(bytes) => Ok(live_bindings(&decode_set(&key, &bytes)?, now)),
            None => {
                self.not_found_is_true(&mut conn).await?;
                Ok(Vec::new())
            }
        }
    }

    async fn list(&self, page_token: &str, limit: usize, now: u64) -> Result<Page, BackendError> {
        self.scan_page(page_token, limit, now).await
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry
            .sub_registry_with_prefix(crate::metrics::Metrics::PREFIX)
            .register(
                "cas_conflicts",
                "Optimistic binding-set writes that lost to a concurrent writer and were retried",
                self.cas_conflicts.clone(),
            );
        let r = registry.sub_registry_with_prefix(crate::metrics::Metrics::PREFIX);
        r.register(
            "redis_duration_seconds",
            "Round-trip time of Redis commands and pipelines (scripts, transactions), errors included",
            self.timing.duration.clone(),
        );
        r.register(
            "redis_errors",
            "Redis commands and pipelines that failed (connection lost, timeout, error reply)",
            self.timing.errors.clone(),
        );
    }

    fn summary(&self) -> String {
        let urls: Vec<String> = self.opts.urls.iter().map(|u| redacted(u)).collect();
        // Whether a password is presented (never which): a NOAUTH or WRONGPASS in the log
        // then reads at once as a missing or a wrong password.
        let auth = match (&self.auth.password, &self.auth.username) {
            (None, _) => String::new(),
            (Some(_), None) => ", with a password".to_owned(),
            (Some(_), Some(u)) => format!(", as user {u:?} with a password"),
        };
        format!(
            "{} {} (prefix {:?}{auth})",
            if self.opts.cluster {
                "redis-cluster"
            } else {
                "redis"
            },
            urls.join(","),
            self.opts.prefix
        )
    }

    async fn remove(
        &self,
        aor: &Aor,
        contact: Option<&str>,
        now: u64,
    ) -> Result<u32, BackendError> {
        let key = self.loc_key(aor);
        let mut conn = self.conn()?;
        let _turn = self.stripe(&key).lock().await;
        for attempt in 0..CAS_ATTEMPTS {
            let (version, set) = self.read_set(&mut conn, &key).await?;
            let live: Vec<Binding> = set.into_iter().filter(|b| b.is_live(now)).collect();
            let mut keep: Vec<Binding> = live
                .iter()
                .filter(|b| contact.is_some_and(|c| !contact_matches(&b.contact, c)))
                .cloned()
                .collect();
            let removed = live.len() - keep.len();
            if removed == 0 {
                return Ok(0);
            }
            sort_bindings(&mut keep);
            let n = u32::try_from(removed).unwrap_or(u32::MAX);
            let ev = removal_event(aor, &keep, n, now);
            if self
                .write_set(
                    &mut conn,
                    &key,
                    &version,
                    &random_version(),
                    &keep,
                    Some(ev),
                )
                .await?
            {
                return Ok(n);
            }
            self.cas_conflicts.inc();
            Self::backoff(attempt).await;
        }
        Err(BackendError::Contention(aor.to_string()))
    }

    async fn credentials(
        &self,
        username: &str,
        realm: &str,
    ) -> Result<Option<Credentials>, BackendError> {
        let key = self.user_key(username, realm);
        let mut conn = self.conn()?;
        let (md5, sha): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&key)
            .arg("md5")
            .arg("sha256")
            .query_async(&mut conn)
            .await
            .map_err(rerr)?;
        if md5.is_none() && sha.is_none() {
            self.not_found_is_true(&mut conn).await?;
            return Ok(None);
        }
        Credentials::from_ha1_hex(md5.as_deref(), sha.as_deref())
            .map(Some)
            .map_err(|e| BackendError::Corrupt {
                key,
                problem: e.to_string(),
            })
    }

    async fn put_user(
        &self,
        username: &str,
        realm: &str,
        creds: &Credentials,
    ) -> Result<bool, BackendError> {
        let mut conn = self.conn()?;
        let c = convert::credentials_to(creds);
        let mut inv = self.put_user.key(self.user_key(username, realm));
        if !c.ha1_md5.is_empty() {
            inv.arg("md5").arg(&c.ha1_md5);
        }
        if !c.ha1_sha256.is_empty() {
            inv.arg("sha256").arg(&c.ha1_sha256);
        }
        let existed: i64 = inv.invoke_async(&mut conn).await.map_err(rerr)?;
        // The listing set lives in the realm's slot, not the user's: a second command.
        let _: i64 = redis::cmd("SADD")
            .arg(self.users_key(realm))
            .arg(username)
            .query_async(&mut conn)
            .await
            .map_err(rerr)?;
        Ok(existed == 1)
    }

    async fn remove_user(&self, username: &str, realm: &str) -> Result<bool, BackendError> {
        let mut conn = self.conn()?;
        let _: i64 = redis::cmd("SREM")
            .arg(self.users_key(realm))
            .arg(username)
            .query_async(&mut conn)
            .await
            .map_err(rerr)?;
        let n: i64 = redis::cmd("DEL")
            .arg(self.user_key(username, realm))
            .query_async(&mut conn)
            .await
            .map_err(rerr)?;
        Ok(n == 1)
    }

    async fn list_users(&self, realm: &str) -> Result<Vec<String>, BackendError> {
        let mut conn = self.conn()?;
        let mut v: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.users_key(realm))
            .query_async(&mut conn)
            .await
            .map_err(rerr)?;
        v.sort();
        Ok(v)
    }

    async fn put_dialog(
        &self,
        d: &pb::Dialog,
        ttl_secs: u32,
        touch_only: bool,
    ) -> Result<Option<pb::Dialog>, BackendError> {
        let key = self.dialog_key(&d.call_id, &d.from_tag);
        let deadline = unix_now_ms() + u64::from(ttl_secs) * 1000;
        let mut fields = dialog_fields(d);
        fields.push(("expires_at_ms", deadline.to_string().into_bytes()));
        // Readable past the deadline: the record is still there when a reaper claims it.
        let merged = self
            .dialog_script(
                &key,
                ttl_secs.saturating_add(REAP_GRACE_SECS),
                if touch_only {
                    DialogWrite::Touch
                } else {
                    DialogWrite::Upsert
                },
                &fields,
            )
            .await?;
        let Some(merged) = merged else {
            return Ok(None);
        };
        if merged.ended_at_ms == 0 {
            let mut conn = self.conn()?;
            let _: i64 = redis::cmd("ZADD")
                .arg(self.dialog_deadlines_key())
                .arg(deadline)
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(rerr)?;
        }
        Ok(Some(merged))
    }

    async fn reap_dialogs(
        &self,
        now_ms: u64,
        limit: usize,
        ended_ttl_secs: u32,
    ) -> Result<Vec<pb::Dialog>, BackendError> {
        let zkey = self.dialog_deadlines_key();
        let mut conn = self.conn()?;
        let due: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(&zkey)
            .arg("-inf")
            .arg(now_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(rerr)?;
        let mut out = Vec::new();
        for key in due {
            // The claim: of the edges reaping at once, only the one whose ZREM removed
            // the member ends the record.
            let claimed: i64 = redis::cmd("ZREM")
                .arg(&zkey)
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(rerr)?;
            if claimed != 1 {
                continue;
            }
            let flat: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(rerr)?;
            if flat.is_empty() {
                continue;
            }
            let d = dialog_from_fields(&flat);
            // Ended meanwhile (its BYE), or refreshed past now by a put that raced the
            // claim: not this reaper's.
            if d.ended_at_ms != 0 {
                continue;
            }
            if d.expires_at_ms > now_ms {
                let _: i64 = redis::cmd("ZADD")
                    .arg(&zkey)
                    .arg(d.expires_at_ms)
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .map_err(rerr)?;
                continue;
            }
            let end = pb::Dialog {
                ended_at_ms: d.expires_at_ms,
                end_reason: reaped_reason(&d).to_owned(),
                ..pb::Dialog::default()
            };
            // A BYE that ended it between the claim and now stands.
            if let Some(ended) = self
                .dialog_script(&key, ended_ttl_secs, DialogWrite::End, &dialog_fields(&end))
                .await?
                .filter(|e| e.end_reason == end.end_reason)
            {
                out.push(ended);
            }
        }
        Ok(out)
    }

    async fn end_dialog(
        &self,
        key: &DialogKey,
        end: &DialogEnd,
        ttl_secs: u32,
    ) -> Result<Option<pb::Dialog>, BackendError> {
        let k = self.dialog_key(&key.call_id, &key.from_tag);
        let fields = dialog_fields(&pb::Dialog {
            ended_at_ms: end.ended_at_ms,
            end_reason: end.reason.clone(),
            status: end.status,
            ..pb::Dialog::default()
        });
        let ended = self
            .dialog_script(&k, ttl_secs, DialogWrite::End, &fields)
            .await?;
        // Nothing left to reap. (A failure here only leaves a member whose record the
        // reaper finds ended.)
        let mut conn = self.conn()?;
        let _: Result<i64, _> = redis::cmd("ZREM")
            .arg(self.dialog_deadlines_key())
            .arg(&k)
            .query_async(&mut conn)
            .await;
        Ok(ended)
    }

    async fn get_dialog(&self, key: &DialogKey) -> Result<Option<pb::Dialog>, BackendError> {
        let mut conn = self.conn()?;
        let flat: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(self.dialog_key(&key.call_id, &key.from_tag))
            .query_async(&mut conn)
            .await
            .map_err(rerr)?;
        Ok((!flat.is_empty()).then(|| dialog_from_fields(&flat)))
    }

    async fn list_dialogs(
        &self,
        call_id: &str,
        page_token: &str,
        limit: usize,
    ) -> Result<(Vec<pb::Dialog>, String), BackendError> {
        self.dialog_page(call_id, page_token, limit).await
    }

    async fn terminate_dialog(
        &self,
        key: &DialogKey,
        now_ms: u64,
    ) -> Result<Option<pb::Dialog>, BackendError> {
        let k = self.dialog_key(&key.call_id, &key.from_tag);
        let fields = dialog_fields(&pb::Dialog {
            end_reason: super::TERMINATED.to_owned(),
            expires_at_ms: now_ms,
            ..pb::Dialog::default()
        });
        let marked = self
            .dialog_script(&k, REAP_GRACE_SECS, DialogWrite::Terminate, &fields)
            .await?;
        if marked.as_ref().is_some_and(|d| d.ended_at_ms == 0) {
            // Due now: the next reaping edge claims it.
            let mut conn = self.conn()?;
            let _: i64 = redis::cmd("ZADD")
                .arg(self.dialog_deadlines_key())
                .arg(now_ms)
                .arg(&k)
                .query_async(&mut conn)
                .await
                .map_err(rerr)?;
        }
        Ok(marked)
    }

    async fn use_nonce(&self, nonce: &str, nc: &str, ttl_secs: u32) -> Result<bool, BackendError> {
        // One command on one key: atomic on a standalone Redis and on a cluster alike, so
        // two edges seeing the same (nonce, nc) at once get one true between them.
        let mut conn = self.conn()?;
        let set: Option<String> = redis::cmd("SET")
            .arg(self.nonce_key(nonce, nc))
            .arg("1")
            .arg("NX")
            .arg("EX")
            .arg(ttl_secs.max(1))
            .query_async(&mut conn)
            .await
            .map_err(rerr)?;
        Ok(set.is_some())
    }

    async fn acquire_call(
        &self,
        member: &str,
        limits: &[pb::CallLimit],
        ttl_secs: u32,
        now_ms: u64,
    ) -> Result<super::Admission, BackendError> {
        let window = super::cps_window(now_ms);
        let mut inv = self.acquire_call.key(self.limit_key("call", member));
        for l in limits {
            inv.key(self.limit_key("slots", &l.key));
        }
        for l in limits {
            inv.key(self.limit_key("cps", &format!("{}:{window}", l.key)));
        }
        inv.arg(member)
            .arg(now_ms)
            .arg(u64::from(ttl_secs.max(1)) * 1000);
        for l in limits {
            inv.arg(l.max_calls).arg(l.max_cps);
        }
        let mut conn = self.conn()?;
        let reply: (i64, usize, String) = inv.invoke_async(&mut conn).await.map_err(rerr)?;
        Ok(match reply {
            (1, ..) => super::Admission::Granted,
            (0, i @ 1.., by) if i <= limits.len() => super::Admission::Refused {
                key: limits[i - 1].key.clone(),
                by: if by == "cps" { "cps" } else { "calls" },
            },
            other => {
                return Err(BackendError::Redis(format!(
                    "unexpected call admission reply {other:?}"
                )));
            }
        })
    }

    async fn refresh_call(
        &self,
        member: &str,
        ttl_secs: u32,
        now_ms: u64,
    ) -> Result<bool, BackendError> {
        let mut conn = self.conn()?;
        let found: i64 = self
            .refresh_call
            .key(self.limit_key("call", member))
            .arg(member)
            .arg(now_ms)
            .arg(u64::from(ttl_secs.max(1)) * 1000)
            .invoke_async(&mut conn)
            .await
            .map_err(rerr)?;
        Ok(found == 1)
    }

    async fn release_call(&self, members: &[String], _now_ms: u64) -> Result<bool, BackendError> {
        if members.is_empty() {
            return Ok(false);
        }
        let mut inv = self.release_call.prepare_invoke();
        for m in members {
            inv.key(self.limit_key("call", m));
        }
        for m in members {
            inv.arg(m);
        }
        let mut conn = self.conn()?;
        let released: i64 = inv.invoke_async(&mut conn).await.map_err(rerr)?;
        Ok(released == 1)
    }

    async fn ban(&self, subject: &str, until_ms: u64) -> Result<(), BackendError> {
        let mut conn = self.conn()?;
        let key = self.bans_key();
        // GT: a longer ban in force stays. Past the cap the soonest-ending go.
        let (_, n): (i64, i64) = redis::pipe()
            .cmd("ZADD")
            .arg(&key)
            .arg("GT")
            .arg(until_ms)
            .arg(subject)
            .cmd("ZCARD")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(rerr)?;
        let max = super::MAX_BANS as i64;
        if n > max {
            let _: i64 = redis::cmd("ZREMRANGEBYRANK")
                .arg(&key)
                .arg(0)
                .arg(n - max - 1)
                .query_async(&mut conn)
                .await
                .map_err(rerr)?;
        }
        Ok(())
    }

    async fn list_bans(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<pb::BanEvent>, BackendError> {
        let mut conn = self.conn()?;
        let key = self.bans_key();
        let (_, bans): (i64, Vec<(String, f64)>) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now_ms)
            .cmd("ZRANGE")
            .arg(&key)
            .arg("+inf")
            .arg(format!("({now_ms}"))
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(rerr)?;
        Ok(bans
            .into_iter()
            .map(|(subject, until)| pb::BanEvent {
                subject,
                until_ms: until as u64,
            })
            .collect())
    }

    async fn count_failure(
        &self,
        r: &pb::CountFailureRequest,
        now_ms: u64,
    ) -> Result<Vec<pb::BanEvent>, BackendError> {
        let window_ms = u64::from(r.window_secs.max(1)) * 1000;
        let mut started = Vec::new();
        for (subject, limit, secs) in super::failure_subjects(r) {
            let mut conn = self.conn()?;
            let count: u64 = self
                .count_failure
                .key(format!("{}:af:{{{subject}}}", self.opts.prefix))
                .arg(window_ms)
                .invoke_async(&mut conn)
                .await
                .map_err(rerr)?;
            if let Some(b) = super::ban_at_limit(subject, count, limit, secs, now_ms) {
                self.ban(&b.subject, b.until_ms).await?;
                started.push(b);
            }
        }
        Ok(started)
    }

    async fn counts(&self, now: u64) -> Result<Counts, BackendError> {
        self.scan_counts(now).await
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let mut conn = self.conn()?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(rerr)?;
        Ok(())
    }

    async fn write_marker(&self) -> Result<(), BackendError> {
        let mut conn = self.conn()?;
        let now = crate::server::unix_now();
        for key in &self.markers {
            let _: () = redis::cmd("SET")
                .arg(key)
                .arg(now)
                .query_async(&mut conn)
                .await
                .map_err(rerr)?;
        }
        Ok(())
    }

    async fn marker_present(&self) -> Result<bool, BackendError> {
        let mut conn = self.conn()?;
        self.markers_whole(&mut conn).await
    }

    async fn events(&self) -> broadcast::Receiver<Arc<pb::BindingEvent>> {
        let rx = self.events.subscribe();
        if !self.subscribed.swap(true, Ordering::Relaxed) {
            spawn_subscriber(
                self.opts.urls.clone(),
                self.auth.clone(),
                self.channel.clone(),
                self.events.clone(),
                self.subscription.clone(),
            );
        }
        // Return once the subscription is live, so that the stream covers every change
        // made after the call. If Redis is down, return anyway: the resync marker will
        // follow when the subscription comes up.
        let mut live = self.subscription.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(2), live.wait_for(|up| *up)).await;
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_are_read_from_cluster_nodes() {
        let nodes = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1 2 connected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
67ed 127.0.0.1:30002@40002 master - 0 1 2 connected 5461-10922
292f 127.0.0.1:30003@40003 master,fail - 0 1 3 disconnected 10923-16383
";
        assert_eq!(
            masters_of(nodes),
            ["redis://127.0.0.1:30001", "redis://127.0.0.1:30002"]
        );
        assert!(masters_of("garbage").is_empty());
    }

    #[test]
    fn passwords_never_reach_the_start_line() {
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redacted("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://:***@10.0.0.1:6379/0"
        );
        assert_eq!(
            redacted("rediss://app:s3cret@redis.example:6380"),
            "rediss://app:***@redis.example:6380"
        );
    }

    #[test]
    fn crc16_is_redis_clusters_key_hash() {
        // Values from `CLUSTER KEYSLOT` (and the Redis Cluster specification's example:
        // CRC16 of "123456789" is 0x31C3).
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(crc16(b"foo") % 16384, 12182);
        assert_eq!(crc16(b"somekey") % 16384, 11058);
    }

    #[test]
    fn cluster_markers_cover_every_block_of_256_slots() {
        let keys = marker_keys("sc", true);
        assert_eq!(keys.len(), 64);
        let mut blocks: Vec<u16> = keys
            .iter()
            .map(|k| {
                let tag = &k[k.find('{').unwrap() + 1..k.find('}').unwrap()];
                crc16(tag.as_bytes()) % 16384 / 256
            })
            .collect();
        blocks.sort_unstable();
        assert_eq!(blocks, (0..64).collect::<Vec<u16>>());
        assert_eq!(marker_keys("sc", false), ["sc:provisioned:{m0}"]);
    }

    #[test]
    fn versions_differ() {
        let a: std::collections::HashSet<String> = (0..10_000).map(|_| random_version()).collect();
        assert_eq!(a.len(), 10_000);
    }
}

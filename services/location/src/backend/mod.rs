//! Where the location service keeps its data: one trait, three backends.
//!
//! * [`MemoryBackend`]: in-process maps, for the all-in-one and tests;
//! * [`RedisBackend`] over a standalone Redis or a Redis Cluster.
//!
//! The registrar rules are never re-implemented here: every backend feeds the stored set
//! and the request to [`sip_registrar::apply_register`] and writes the outcome back
//! atomically per AOR.

mod memory;
mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use location_client::pb;
use sip_auth::Credentials;
use sip_registrar::{Aor, Binding, RegisterError, RegisterOutcome, RegisterRequest};
use tokio::sync::broadcast;

pub use self::memory::MemoryBackend;
pub use self::redis::{RedisBackend, RedisOptions, RedisPassword, redacted, url_has_password};

/// Why a backend call failed. Rule refusals are not errors (see [`Backend::register`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// Redis could not be reached, timed out, or refused the command.
    #[error("redis: {0}")]
    Redis(String),
    /// Stored data did not decode (written by an incompatible version, or corrupted).
    #[error("stored value for {key}: {problem}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// Too many concurrent writers on one AOR: every optimistic attempt lost.
    #[error("too much contention on {0}")]
    Contention(String),
    /// The store lost its data since it was provisioned (its provisioning marker is
    /// gone: Redis restarted empty, was flushed, or a cluster master came back empty).
    /// An answer of "not found" could be a loss of ours, not the truth, so none is given.
    #[error("the store lost its data (provisioning marker missing); not answering from it")]
    DataLoss,
}

/// A dialog record's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogKey {
    /// Call-ID.
    pub call_id: String,
    /// The caller's tag.
    pub from_tag: String,
}

/// How a dialog ends.
#[derive(Debug, Clone, Default)]
pub struct DialogEnd {
    /// Unix milliseconds.
    pub ended_at_ms: u64,
    /// Why (`bye`, `cancel`, `timeout`, a status...).
    pub reason: String,
    /// Final status of the INVITE, if known (0 keeps the stored one).
    pub status: u32,
}

/// A page of [`Backend::list`]: AORs with their live bindings, and the next page's token
/// (empty after the last page).
pub type Page = (Vec<(Aor, Vec<Binding>)>, String);

/// Counts for metrics and admin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// AORs with a stored binding set (a set may hold only lapsed bindings until TTL
    /// removes it in Redis).
    pub aors: u64,
    /// Live bindings.
    pub bindings: u64,
    /// Provisioned users.
    pub users: u64,
    /// Dialog records of calls in progress (not ended, not reaped).
    pub dialogs: u64,
}

/// Change notifications; lagging receivers lose the oldest events, never block writers.
pub type Events = broadcast::Sender<Arc<pb::BindingEvent>>;

/// The storage of the location service.
///
/// Times are Unix seconds chosen by the service (`now`), so that one clock stamps every
/// binding whichever edge sent the REGISTER.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Apply a REGISTER atomically for its AOR: the outcome, or the rule that refused it
    /// (nothing written then).
    async fn register(
        &self,
        req: RegisterRequest,
        now: u64,
    ) -> Result<Result<RegisterOutcome, RegisterError>, BackendError>;

    /// Live bindings of an AOR in lookup order.
    async fn lookup(&self, aor: &Aor, now: u64) -> Result<Vec<Binding>, BackendError>;

    /// Remove one contact (§19.1.4 comparison) or all; returns how many live ones went.
    async fn remove(&self, aor: &Aor, contact: Option<&str>, now: u64)
    -> Result<u32, BackendError>;

    /// A page of the AORs that have live bindings, about `limit` of them, after the
    /// position `page_token` names (empty: the start). The second value is the token of
    /// the next page, empty after the last. Bounded work per call: for admin tools.
    async fn list(&self, page_token: &str, limit: usize, now: u64) -> Result<Page, BackendError>;

    /// What the start line says about the backend: its kind and where it is, never a
    /// credential.
    fn summary(&self) -> String;

    /// Register the backend's own metrics (named like the service's) into `registry`.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}

    /// Digest credentials of a user.
    async fn credentials(
        &self,
        username: &str,
        realm: &str,
    ) -> Result<Option<Credentials>, BackendError>;

    /// Add or replace a user; true when replaced.
    async fn put_user(
        &self,
        username: &str,
        realm: &str,
        creds: &Credentials,
    ) -> Result<bool, BackendError>;

    /// Remove a user; true when it existed.
    async fn remove_user(&self, username: &str, realm: &str) -> Result<bool, BackendError>;

    /// Usernames of a realm, sorted.
    async fn list_users(&self, realm: &str) -> Result<Vec<String>, BackendError>;

    /// Create or update a dialog record: non-empty fields of `d` overwrite, the rest keep
    /// their stored value; the record is due to be reaped `ttl_secs` from now (its
    /// `expires_at_ms`) and stays readable [`REAP_GRACE_SECS`] beyond. With `touch_only`
    /// a record that does not exist is not created (`None`). Returns the merged record.
    async fn put_dialog(
        &self,
        d: &pb::Dialog,
        ttl_secs: u32,
        touch_only: bool,
    ) -> Result<Option<pb::Dialog>, BackendError>;

    /// Claim up to `limit` records past their `expires_at_ms` that have not ended: each is
    /// ended at its deadline ("ttl", or "session-expired" with a session interval), stays
    /// readable `ended_ttl_secs`, and is returned to this caller only.
    async fn reap_dialogs(
        &self,
        now_ms: u64,
        limit: usize,
        ended_ttl_secs: u32,
    ) -> Result<Vec<pb::Dialog>, BackendError>;

    /// End a dialog record if it exists and has not ended (the first end stands: the
    /// record comes back as it was); it stays readable `ttl_secs`.
    async fn end_dialog(
        &self,
        key: &DialogKey,
        end: &DialogEnd,
        ttl_secs: u32,
    ) -> Result<Option<pb::Dialog>, BackendError>;

    /// A dialog record.
    async fn get_dialog(&self, key: &DialogKey) -> Result<Option<pb::Dialog>, BackendError>;

    /// A page of the records of calls in progress (not ended), of one Call-ID when
    /// `call_id` is not empty: at most `limit` of them and the next page's token (empty
    /// after the last page; a page may be short with a token).
    async fn list_dialogs(
        &self,
        call_id: &str,
        page_token: &str,
        limit: usize,
    ) -> Result<(Vec<pb::Dialog>, String), BackendError>;

    /// Mark a call in progress for ending by the cluster: its `end_reason` becomes
    /// [`TERMINATED`] and its deadline `now_ms`, so the next reaper claims it (see
    /// [`reaped_reason`]). An ended record comes back unchanged; none: `None`.
    async fn terminate_dialog(
        &self,
        key: &DialogKey,
        now_ms: u64,
    ) -> Result<Option<pb::Dialog>, BackendError>;

    /// Record one use of a digest nonce with nonce count `nc`, remembered `ttl_secs`:
    /// true the first time the pair is used, false for a replay (see
    /// [`sip_auth::NonceUses`]). Atomic across every replica sharing the store.
    async fn use_nonce(&self, nonce: &str, nc: &str, ttl_secs: u32) -> Result<bool, BackendError>;

    /// Admit the call `member` ([`call_member`]) against every limit in `limits` at once,
    /// all or nothing, holding a slot under each key until `ttl_secs` after `now_ms`.
    /// A member holding its slots already is granted again, changing nothing.
    async fn acquire_call(
        &self,
        member: &str,
        limits: &[pb::CallLimit],
        ttl_secs: u32,
        now_ms: u64,
    ) -> Result<Admission, BackendError>;

    /// Extend the slots of `member` to `ttl_secs` from `now_ms`; false when it holds none.
    async fn refresh_call(
        &self,
        member: &str,
        ttl_secs: u32,
        now_ms: u64,
    ) -> Result<bool, BackendError>;

    /// Release the slots of whichever of `members` holds some; true when one did.
    async fn release_call(&self, members: &[String], now_ms: u64) -> Result<bool, BackendError>;

    /// Ban `subject` until `until_ms` (a longer ban in force stays).
    async fn ban(&self, subject: &str, until_ms: u64) -> Result<(), BackendError>;

    /// The bans in force at `now_ms` (at most `limit`).
    async fn list_bans(&self, now_ms: u64, limit: usize)
    -> Result<Vec<pb::BanEvent>, BackendError>;

    /// Count one failure for each non-empty subject within its window; a count reaching
    /// its limit (exactly: once per window) bans the subject. The bans started.
    async fn count_failure(
        &self,
        r: &pb::CountFailureRequest,
        now_ms: u64,
    ) -> Result<Vec<pb::BanEvent>, BackendError>;

    /// Counts (may be computed by a scan: call it from metrics, not per request).
    async fn counts(&self, now: u64) -> Result<Counts, BackendError>;

    /// Is the store reachable? (readiness)
    async fn ping(&self) -> Result<(), BackendError>;

    /// Record that the store is complete as of now (written after provisioning): the
    /// provisioning marker, which a store that loses its data loses with it.
    async fn write_marker(&self) -> Result<(), BackendError>;

    /// Is the provisioning marker whole? `false`: the store lost data since
    /// [`write_marker`](Self::write_marker) (Redis Cluster: on at least one master).
    async fn marker_present(&self) -> Result<bool, BackendError>;

    /// The stream of binding changes, from when this returns. An event with an empty
    /// `aor` ([`resync_marker`]) means changes may have been missed (the source was
    /// interrupted): the watcher must resynchronise with lookups.
    async fn events(&self) -> broadcast::Receiver<Arc<pb::BindingEvent>>;
}

pub use location_client::limits::{Admission, SlotTable, call_member, cps_window};

/// The marker telling watchers that events may have been lost.
pub fn resync_marker() -> Arc<pb::BindingEvent> {
    Arc::new(pb::BindingEvent::default())
}

/// The event describing an accepted REGISTER (or removal) that changed something.
pub fn event(aor: &Aor, o: &RegisterOutcome, now: u64) -> pb::BindingEvent {
    let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
    pb::BindingEvent {
        aor: aor.as_str().to_owned(),
        bindings: o
            .bindings
            .iter()
            .map(location_client::convert::binding_to)
            .collect(),
        added: n(o.added),
        updated: n(o.updated),
        removed: n(o.removed),
        at: now,
    }
}

/// The event for an administrative removal of `removed` bindings, `left` remaining.
pub fn removal_event(aor: &Aor, left: &[Binding], removed: u32, now: u64) -> pb::BindingEvent {
    pb::BindingEvent {
        aor: aor.as_str().to_owned(),
        bindings: left
            .iter()
            .map(location_client::convert::binding_to)
            .collect(),
        removed,
        at: now,
        ..pb::BindingEvent::default()
    }
}

pub use location_client::{TERMINATED, merge_dialog, reaped_reason};

/// What a failed login counts towards: (subject, limit, ban secs) for the source and the
/// user that are named and have a limit.
pub fn failure_subjects(r: &pb::CountFailureRequest) -> impl Iterator<Item = (&String, u32, u32)> {
    [
        (&r.source, r.per_source, r.source_ban_secs),
        (&r.user, r.per_user, r.user_lock_secs),
    ]
    .into_iter()
    .filter(|(subject, limit, _)| !subject.is_empty() && *limit > 0)
}

/// The ban a failed-login count starts: exactly when it reaches its subject's `limit`
/// (once per window, whichever edge counted it), for `secs` from `now_ms`.
pub fn ban_at_limit(
    subject: &str,
    count: u64,
    limit: u32,
    secs: u32,
    now_ms: u64,
) -> Option<pb::BanEvent> {
    (count == u64::from(limit)).then(|| pb::BanEvent {
        subject: subject.to_owned(),
        until_ms: now_ms + u64::from(secs) * 1000,
    })
}

/// Bans (and failure counters) held at most in memory, and listed at most.
pub const MAX_BANS: usize = 10_000;

/// How long a dialog record stays readable past its reaping deadline: the edges reap every
/// few seconds, so a record past it by this much had nobody to reap it.
pub const REAP_GRACE_SECS: u32 = 600;

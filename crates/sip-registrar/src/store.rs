//! The location store abstraction the edge registrar and proxy talk to, and its in-memory
//! implementation.

use foldhash::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use crate::aor::Aor;
use crate::binding::Binding;
use crate::error::StoreError;
use crate::request::RegisterRequest;
use crate::rules::{Policy, RegisterOutcome, apply_register, live_bindings};

/// Counts for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreStats {
    /// AORs with at least one live binding.
    pub aors: usize,
    /// Live bindings over all AORs.
    pub bindings: usize,
}

/// Where bindings live: in memory for the all-in-one, in the location service (over
/// gRPC, backed by Redis) in a cluster.
///
/// Every implementation applies [`apply_register`] atomically per AOR: the stored set is
/// read, the rules run, and the outcome's set replaces it, with no other REGISTER for the
/// same AOR in between. `now` is Unix seconds, passed in so that the rules stay sans-IO.
#[async_trait]
pub trait LocationStore: Send + Sync {
    /// Apply a REGISTER. On [`StoreError::Rule`] nothing changed.
    async fn register(&self, req: RegisterRequest, now: u64)
    -> Result<RegisterOutcome, StoreError>;

    /// The live bindings of an AOR, q descending, then most recently registered first.
    async fn lookup(&self, aor: &Aor, now: u64) -> Result<Vec<Binding>, StoreError>;

    /// Delete every binding of an AOR (administrative removal; no CSeq rule applies).
    async fn remove_all(&self, aor: &Aor) -> Result<(), StoreError>;

    /// Live AORs and bindings, for metrics.
    async fn stats(&self, now: u64) -> Result<StoreStats, StoreError>;
}

/// An in-memory [`LocationStore`]: one map from AOR to its binding set behind a mutex.
///
/// The rules run under the lock, so concurrent REGISTERs for an AOR are serialized exactly
/// as the Redis-backed service serializes them with a transaction. The lock is held only
/// for the pure computation, never across an await.
#[derive(Debug, Default)]
pub struct MemoryStore {
    policy: Policy,
    map: Mutex<HashMap<Aor, Vec<Binding>>>,
}

impl MemoryStore {
    /// An empty store applying `policy`.
    pub fn new(policy: Policy) -> MemoryStore {
        MemoryStore {
            policy,
            map: Mutex::new(HashMap::default()),
        }
    }

    /// Up to `limit` AORs with live bindings, in AOR order, after `after` (exclusive),
    /// with those bindings; and whether more follow. For admin listings: one pass over
    /// the AORs under the lock (a selection, not a sort of them all), so a page costs
    /// O(AORs + limit·log limit) however far into the listing it is.
    pub fn page(
        &self,
        after: Option<&str>,
        limit: usize,
        now: u64,
    ) -> (Vec<(Aor, Vec<Binding>)>, bool) {
        let limit = limit.max(1);
        let map = self.lock();
        let mut aors: Vec<&Aor> = map
            .iter()
            .filter(|(a, set)| {
                after.is_none_or(|x| a.as_str() > x) && set.iter().any(|b| b.is_live(now))
            })
            .map(|(a, _)| a)
            .collect();
        let by_name = |a: &&Aor, b: &&Aor| a.as_str().cmp(b.as_str());
        let more = aors.len() > limit;
        if more {
            aors.select_nth_unstable_by(limit, by_name);
            aors.truncate(limit);
        }
        aors.sort_unstable_by(by_name);
        let out = aors
            .into_iter()
            .map(|a| (a.clone(), live_bindings(&map[a], now)))
            .collect();
        (out, more)
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Remove the bindings of `aor` whose contact is equivalent (RFC 3261 §19.1.4) to
    /// `contact`, or all of them when `None`; returns the live bindings removed.
    pub fn remove(&self, aor: &Aor, contact: Option<&str>, now: u64) -> usize {
        let mut map = self.lock();
        let Some(set) = map.get_mut(aor) else {
            return 0;
        };
        let before = set.iter().filter(|b| b.is_live(now)).count();
        match contact {
            None => set.clear(),
            Some(c) => set.retain(|b| b.is_live(now) && !contact_matches(&b.contact, c)),
        }
        let removed = before - set.len();
        if set.is_empty() {
            map.remove(aor);
        }
        removed
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Aor, Vec<Binding>>> {
        // A panic while the lock was held cannot have left a half-applied REGISTER: sets
        // are replaced whole, after the pure rules returned. So a poisoned map is still
        // consistent and is used as is rather than turning one panic into many.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// True when two contact URIs name the same contact (§19.1.4; texts that do not parse are
/// compared as written).
pub fn contact_matches(a: &str, b: &str) -> bool {
    match (
        sip_core::Uri::parse(a.as_bytes()),
        sip_core::Uri::parse(b.as_bytes()),
    ) {
        (Ok(x), Ok(y)) => crate::uri_match::uris_equivalent(&x, &y),
        _ => a == b,
    }
}

#[async_trait]
impl LocationStore for MemoryStore {
    async fn register(
        &self,
        req: RegisterRequest,
        now: u64,
    ) -> Result<RegisterOutcome, StoreError> {
        let mut map = self.lock();
        let existing = map.get(&req.aor).map(Vec::as_slice).unwrap_or_default();
        let outcome = apply_register(existing, &req, &self.policy, now)?;
        if outcome.bindings.is_empty() {
            map.remove(&req.aor);
        } else if outcome.changed() {
            map.insert(req.aor, outcome.bindings.clone());
        }
        Ok(outcome)
    }

    async fn lookup(&self, aor: &Aor, now: u64) -> Result<Vec<Binding>, StoreError> {
        let mut map = self.lock();
        let Some(set) = map.get(aor) else {
            return Ok(Vec::new());
        };
        let live = live_bindings(set, now);
        // Drop what has lapsed while we hold the set anyway, so AORs that are looked up
        // but never re-register do not keep dead bindings in memory.
        if live.is_empty() {
            map.remove(aor);
        } else if live.len() != set.len() {
            map.insert(aor.clone(), live.clone());
        }
        Ok(live)
    }

    async fn remove_all(&self, aor: &Aor) -> Result<(), StoreError> {
        self.lock().remove(aor);
        Ok(())
    }

    /// Counts live bindings, and drops lapsed ones on the way: a periodic metrics scrape
    /// therefore also bounds the memory held by AORs nobody registers or looks up again.
    async fn stats(&self, now: u64) -> Result<StoreStats, StoreError> {
        let mut map = self.lock();
        map.retain(|_, set| {
            set.retain(|b| b.is_live(now));
            !set.is_empty()
        });
        Ok(StoreStats {
            aors: map.len(),
            bindings: map.values().map(Vec::len).sum(),
        })
    }
}

//! Replay protection: each `(nonce, nc)` pair is accepted once (RFC 7616 §3.4: the server
//! "should" track the nonce count). The set is shared by every edge, so the trait is
//! asynchronous (the location service implements it over Redis); [`MemoryNonceUses`] is
//! the one-process version (the all-in-one, tests).

use crate::error::Error;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Remembers the `(nonce, nc)` pairs that authenticated a request.
#[async_trait]
pub trait NonceUses: Send + Sync {
    /// Record one use of `nonce` with count `nc` (`""` for an answer without qop, which
    /// may then be used once). `Ok(true)` for the first use, `Ok(false)` for a replay.
    /// `ttl` is how long to remember it: the nonce's lifetime, after which the nonce is
    /// stale anyway. `Err` when the shared set cannot answer (the edge then says 503).
    async fn first_use(&self, nonce: &str, nc: &str, ttl: Duration) -> Result<bool, Error>;
}

#[async_trait]
impl<T: NonceUses + ?Sized> NonceUses for std::sync::Arc<T> {
    async fn first_use(&self, nonce: &str, nc: &str, ttl: Duration) -> Result<bool, Error> {
        (**self).first_use(nonce, nc, ttl).await
    }
}

/// The set in this process's memory, bounded: past `capacity` live entries the oldest
/// half is dropped (those nonces then answer as fresh once more, which a flood of valid
/// logins of this size would need to exploit; it never refuses a real user).
#[derive(Debug)]
pub struct MemoryNonceUses {
    inner: Mutex<Inner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    seen: HashMap<String, Instant>,
    next_sweep: Option<Instant>,
}

impl MemoryNonceUses {
    /// An empty set holding at most `capacity` pairs.
    pub fn new(capacity: usize) -> MemoryNonceUses {
        MemoryNonceUses {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(16),
        }
    }

    /// Record a use at `now` (the clock is the caller's, so tests run on a virtual one).
    pub fn first_use_at(&self, nonce: &str, nc: &str, ttl: Duration, now: Instant) -> bool {
        let key = format!("{nonce}:{nc}");
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.next_sweep.is_none_or(|t| now >= t) || g.seen.len() >= self.capacity {
            g.seen.retain(|_, exp| *exp > now);
            if g.seen.len() >= self.capacity {
                // Still full of live entries: drop those expiring soonest.
                let mut exps: Vec<Instant> = g.seen.values().copied().collect();
                exps.sort_unstable();
                let cut = exps[exps.len() / 2];
                g.seen.retain(|_, exp| *exp > cut);
            }
            g.next_sweep = Some(now + Duration::from_secs(1));
        }
        match g.seen.get(&key) {
            Some(exp) if *exp > now => false,
            _ => {
                g.seen.insert(key, now + ttl);
                true
            }
        }
    }

    /// Pairs held now (live or not yet swept).
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |g| g.seen.len())
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for MemoryNonceUses {
    fn default() -> MemoryNonceUses {
        MemoryNonceUses::new(1 << 20)
    }
}

#[async_trait]
impl NonceUses for MemoryNonceUses {
    async fn first_use(&self, nonce: &str, nc: &str, ttl: Duration) -> Result<bool, Error> {
        Ok(self.first_use_at(nonce, nc, ttl, Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_accepted_once_until_it_expires() {
        let m = MemoryNonceUses::new(100);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(300);
        assert!(m.first_use_at("n1", "00000001", ttl, t0));
        assert!(!m.first_use_at("n1", "00000001", ttl, t0 + Duration::from_secs(10)));
        // The next count of the same nonce is a new use; another nonce too.
        assert!(m.first_use_at("n1", "00000002", ttl, t0));
        assert!(m.first_use_at("n2", "00000001", ttl, t0));
        // No qop: the nonce alone, once.
        assert!(m.first_use_at("n3", "", ttl, t0));
        assert!(!m.first_use_at("n3", "", ttl, t0));
        // Forgotten after the ttl.
        assert!(m.first_use_at("n1", "00000001", ttl, t0 + Duration::from_secs(301)));
    }

    #[test]
    fn bounded() {
        let m = MemoryNonceUses::new(16);
        let t0 = Instant::now();
        for i in 0..1000 {
            assert!(m.first_use_at(&format!("n{i}"), "1", Duration::from_secs(60), t0));
        }
        assert!(m.len() <= 16, "{}", m.len());
    }
}

//! Weighted rendezvous (highest random weight) hashing.
//!
//! For a key and each target the score is `weight / -ln(u)`, with `u` in (0, 1] a
//! uniform hash of (key, target). The highest score wins. This is the weighted HRW of
//! Schindelhauer and Schomaker: the probability that a target wins is exactly its
//! weight over the total, and a change to one target only moves keys to or from it.

/// A stable 64-bit hash of `bytes` (FNV-1a, finalised with splitmix64 so that nearby
/// inputs spread over the whole range). Stable across builds and platforms.
pub fn key_hash(bytes: &[u8]) -> u64 {
    mix(sip_core::fnv::fnv1a(bytes))
}

/// The splitmix64 finaliser: spreads any 64-bit value over the whole range.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The score of a target (id hash, weight) for a key hash. Zero weight never wins.
fn score(key: u64, target: u64, weight: u32) -> f64 {
    if weight == 0 {
        return f64::NEG_INFINITY;
    }
    // 53 random bits → u in (0, 1]: never 0, so ln(u) is finite and ≤ 0.
    let bits = mix(key ^ target.rotate_left(17)) >> 11;
    let u = (bits as f64 + 1.0) / (1u64 << 53) as f64;
    let ln = u.ln();
    if ln == 0.0 {
        // u == 1: the best possible draw.
        return f64::INFINITY;
    }
    f64::from(weight) / -ln
}

/// A set of weighted targets to hash keys over. `T` is the caller's target handle
/// (an address, an index); targets are identified by the `id` given when added, which
/// must be stable (a pod name, an address), so that every dispatcher agrees.
#[derive(Debug, Clone)]
pub struct Rendezvous<T> {
    targets: Vec<Entry<T>>,
}

#[derive(Debug, Clone)]
struct Entry<T> {
    id: String,
    id_hash: u64,
    weight: u32,
    value: T,
}

impl<T> Default for Rendezvous<T> {
    fn default() -> Self {
        Rendezvous {
            targets: Vec::new(),
        }
    }
}

impl<T> Rendezvous<T> {
    /// An empty set.
    pub fn new() -> Rendezvous<T> {
        Rendezvous::default()
    }

    /// Add a target, or replace the one with the same id (value and weight).
    pub fn insert(&mut self, id: &str, weight: u32, value: T) {
        let id_hash = key_hash(id.as_bytes());
        match self.targets.iter_mut().find(|e| e.id == id) {
            Some(e) => {
                e.weight = weight;
                e.value = value;
            }
            None => self.targets.push(Entry {
                id: id.to_owned(),
                id_hash,
                weight,
                value,
            }),
        }
    }

    /// Remove a target; returns its value.
    pub fn remove(&mut self, id: &str) -> Option<T> {
        let i = self.targets.iter().position(|e| e.id == id)?;
        Some(self.targets.swap_remove(i).value)
    }

    /// Change a target's weight; false when there is no such target.
    pub fn set_weight(&mut self, id: &str, weight: u32) -> bool {
        match self.targets.iter_mut().find(|e| e.id == id) {
            Some(e) => {
                e.weight = weight;
                true
            }
            None => false,
        }
    }

    /// A target's value by id.
    pub fn get(&self, id: &str) -> Option<&T> {
        self.targets.iter().find(|e| e.id == id).map(|e| &e.value)
    }

    /// A target's value by id, mutable.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        self.targets
            .iter_mut()
            .find(|e| e.id == id)
            .map(|e| &mut e.value)
    }

    /// Every value, mutable.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.targets.iter_mut().map(|e| &mut e.value)
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True without targets.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// The targets as (id, weight, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32, &T)> {
        self.targets
            .iter()
            .map(|e| (e.id.as_str(), e.weight, &e.value))
    }

    /// The winning target for `key` among those `eligible` accepts (healthy, not
    /// draining), without allocating. `None` when none is eligible or all weigh 0.
    pub fn pick(&self, key: u64, eligible: impl Fn(&T) -> bool) -> Option<(&str, &T)> {
        self.targets
            .iter()
            .filter(|e| e.weight > 0 && eligible(&e.value))
            .map(|e| (score(key, e.id_hash, e.weight), e))
            .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.id.cmp(&a.1.id)))
            .map(|(_, e)| (e.id.as_str(), &e.value))
    }

    /// Every target with a weight, best first: the failover order for `key`.
    pub fn order(&self, key: u64) -> Vec<(&str, &T)> {
        let mut v: Vec<(f64, &Entry<T>)> = self
            .targets
            .iter()
            .filter(|e| e.weight > 0)
            .map(|e| (score(key, e.id_hash, e.weight), e))
            .collect();
        v.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        v.into_iter()
            .map(|(_, e)| (e.id.as_str(), &e.value))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u32) -> impl Iterator<Item = u64> {
        (0..n).map(|i| key_hash(format!("{i:08x}-call@192.0.2.{}", i % 250).as_bytes()))
    }

    fn shares(r: &Rendezvous<u32>, n: u32) -> Vec<f64> {
        let mut counts = vec![0u32; r.len()];
        for k in keys(n) {
            let (_, v) = r.pick(k, |_| true).expect("a target");
            counts[*v as usize] += 1;
        }
        counts
            .iter()
            .map(|c| f64::from(*c) / f64::from(n))
            .collect()
    }

    #[test]
    fn shares_follow_weights_within_ten_percent() {
        let mut r = Rendezvous::new();
        r.insert("edge-a", 1, 0);
        r.insert("edge-b", 2, 1);
        r.insert("edge-c", 3, 2);
        let s = shares(&r, 120_000);
        for (share, w) in s.iter().zip([1.0, 2.0, 3.0]) {
            let want = w / 6.0;
            assert!(
                (share - want).abs() <= 0.1 * want,
                "share {share:.4} for weight {w} (want {want:.4} ± 10 %): {s:?}"
            );
        }
        // Equal weights: equal shares.
        let mut eq = Rendezvous::new();
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            eq.insert(id, 100, i as u32);
        }
        for share in shares(&eq, 100_000) {
            assert!((share - 0.25).abs() <= 0.025, "{share}");
        }
    }

    #[test]
    fn changes_move_only_the_keys_that_must_move() {
        let mut r = Rendezvous::new();
        for (i, id) in ["edge-a", "edge-b", "edge-c"].iter().enumerate() {
            r.insert(id, 1, i as u32);
        }
        let before: Vec<String> = keys(30_000)
            .map(|k| r.pick(k, |_| true).unwrap().0.to_owned())
            .collect();

        // Add a fourth: a key either stays or moves to the new target, never elsewhere;
        // about a quarter move.
        let mut added = r.clone();
        added.insert("edge-d", 1, 3);
        let mut moved = 0;
        for (k, was) in keys(30_000).zip(&before) {
            let now = added.pick(k, |_| true).unwrap().0;
            if now != was {
                assert_eq!(now, "edge-d");
                moved += 1;
            }
        }
        assert!(
            (6_750..=8_250).contains(&moved),
            "{moved} of 30000 moved (want ~7500)"
        );

        // Remove one: only its keys move.
        let mut removed = r.clone();
        removed.remove("edge-b");
        for (k, was) in keys(30_000).zip(&before) {
            let now = removed.pick(k, |_| true).unwrap().0;
            if was != "edge-b" {
                assert_eq!(now, was, "a key of a remaining target moved");
            }
        }

        // Re-weight one up: keys only move to it.
        let mut heavier = r.clone();
        heavier.set_weight("edge-c", 3);
        for (k, was) in keys(30_000).zip(&before) {
            let now = heavier.pick(k, |_| true).unwrap().0;
            if now != was {
                assert_eq!(now, "edge-c");
            }
        }
    }

    #[test]
    fn eligibility_and_failover_order_agree() {
        let mut r = Rendezvous::new();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            r.insert(id, 1, i as u32);
        }
        for k in keys(2_000) {
            let order = r.order(k);
            assert_eq!(order.len(), 3);
            assert_eq!(order[0].0, r.pick(k, |_| true).unwrap().0);
            // Excluding the first choice yields the second: failover walks the order.
            let first = *order[0].1;
            assert_eq!(r.pick(k, |v| *v != first).unwrap().0, order[1].0);
        }
        assert!(r.pick(1, |_| false).is_none());
        let mut zero = Rendezvous::new();
        zero.insert("z", 0, 0u32);
        assert!(zero.pick(1, |_| true).is_none(), "weight 0 takes nothing");
        assert!(zero.order(1).is_empty());
    }

    #[test]
    fn the_hash_is_stable() {
        // Dispatchers of different builds must agree: pinned values.
        assert_eq!(key_hash(b""), 0xc381_7c01_6ba4_ff30);
        let a = key_hash(b"a84b4c76e66710@pc33.atlanta.com");
        assert_eq!(a, 0xf5cd_74fc_b90e_1ca0);
        assert_ne!(a, key_hash(b"a84b4c76e66711@pc33.atlanta.com"));
    }
}

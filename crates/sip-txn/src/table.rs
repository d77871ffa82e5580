//! Transaction storage: a generational slab with a hash index on the matching key.
//!
//! A busy registrar holds hundreds of thousands of transactions (Timer J keeps a UDP
//! non-INVITE server transaction for 64·T1). With the transactions themselves in a hash
//! map, every in-place rehash (insert/remove churn leaves tombstones) moved them all,
//! and every removal re-hashed and re-compared a key whose bytes had long left the
//! cache. Here transactions never move, the index holds only `(hash, slot)` pairs, and a
//! removal finds its index entry by slot number without touching the key.

use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

/// A value stored in a [`Table`], found by its key.
pub(crate) trait Keyed {
    type Key: Hash + Eq;
    fn key(&self) -> &Self::Key;
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    hash: u64,
    value: Option<T>,
}

/// Ids are `generation << 32 | slot`: a stale id (its transaction ended and the slot was
/// reused) never reaches the new occupant.
#[derive(Debug)]
pub(crate) struct Table<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    index: HashTable<(u64, u32)>,
    hasher: foldhash::fast::RandomState,
    len: usize,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            slots: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            len: 0,
        }
    }
}

fn split(id: u64) -> (u32, usize) {
    ((id >> 32) as u32, (id & 0xffff_ffff) as usize)
}

impl<T: Keyed> Table<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, id: u64) -> Option<&T> {
        let (generation, i) = split(id);
        let s = self.slots.get(i)?;
        if s.generation != generation {
            return None;
        }
        s.value.as_ref()
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut T> {
        let (generation, i) = split(id);
        let s = self.slots.get_mut(i)?;
        if s.generation != generation {
            return None;
        }
        s.value.as_mut()
    }

    /// The id of the value whose key equals `key`.
    pub fn find(&self, key: &T::Key) -> Option<u64> {
        let hash = self.hasher.hash_one(key);
        let slots = &self.slots;
        let &(_, i) = self.index.find(hash, |&(h, i)| {
            h == hash
                && slots[i as usize]
                    .value
                    .as_ref()
                    .is_some_and(|v| v.key() == key)
        })?;
        let s = &slots[i as usize];
        Some(u64::from(s.generation) << 32 | u64::from(i))
    }

    /// Store `value` (the caller has checked its key is not present) and return its id.
    pub fn insert(&mut self, value: T) -> u64 {
        let hash = self.hasher.hash_one(value.key());
        let i = match self.free.pop() {
            Some(i) => {
                let s = &mut self.slots[i as usize];
                s.generation = s.generation.wrapping_add(1);
                s.hash = hash;
                s.value = Some(value);
                i
            }
            None => {
                // Invariant: a slot index fits in u32. Each slot is a live transaction of
                // at least ~100 bytes; 2^32 of them would be 400 GiB, far beyond any
                // host this runs on, so the conversion cannot fail in practice.
                #[allow(clippy::expect_used)]
                let i = u32::try_from(self.slots.len()).expect("fewer than 2^32 transactions");
                self.slots.push(Slot {
                    generation: 0,
                    hash,
                    value: Some(value),
                });
                i
            }
        };
        self.index.insert_unique(hash, (hash, i), |&(h, _)| h);
        self.len += 1;
        u64::from(self.slots[i as usize].generation) << 32 | u64::from(i)
    }

    pub fn remove(&mut self, id: u64) -> Option<T> {
        let (generation, i) = split(id);
        let s = self.slots.get_mut(i)?;
        if s.generation != generation {
            return None;
        }
        let value = s.value.take()?;
        let hash = s.hash;
        let slot = i as u32;
        if let Ok(e) = self.index.find_entry(hash, |&(_, j)| j == slot) {
            e.remove();
        }
        self.free.push(slot);
        self.len -= 1;
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct V(String, u32);
    impl Keyed for V {
        type Key = String;
        fn key(&self) -> &String {
            &self.0
        }
    }

    #[test]
    fn insert_find_remove_and_stale_ids() {
        let mut t = Table::default();
        let a = t.insert(V("a".into(), 1));
        let b = t.insert(V("b".into(), 2));
        assert_eq!(t.len(), 2);
        assert_eq!(t.find(&"a".to_string()), Some(a));
        assert_eq!(t.find(&"b".to_string()), Some(b));
        assert_eq!(t.find(&"c".to_string()), None);
        assert_eq!(t.remove(a), Some(V("a".into(), 1)));
        assert_eq!(t.remove(a), None);
        assert_eq!(t.find(&"a".to_string()), None);
        // The slot is reused under a new generation: the old id stays dead.
        let c = t.insert(V("c".into(), 3));
        assert_ne!(c, a);
        assert!(t.get(a).is_none());
        assert_eq!(t.get(c).map(|v| v.1), Some(3));
        assert_eq!(t.find(&"c".to_string()), Some(c));
        if let Some(v) = t.get_mut(c) {
            v.1 = 4;
        }
        assert_eq!(t.get(c).map(|v| v.1), Some(4));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn churn_keeps_index_consistent() {
        let mut t = Table::default();
        let mut live = std::collections::VecDeque::new();
        for n in 0..20_000u32 {
            live.push_back((n, t.insert(V(format!("k{n}"), n))));
            if live.len() > 500 {
                let (m, id) = live.pop_front().unwrap();
                assert_eq!(t.remove(id).map(|v| v.1), Some(m));
            }
        }
        assert_eq!(t.len(), 500);
        for &(n, id) in &live {
            assert_eq!(t.find(&format!("k{n}")), Some(id));
        }
        assert_eq!(t.find(&"k0".to_string()), None);
    }
}

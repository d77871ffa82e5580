//! The pools the relay picks from (the edges, the destination sets) as discovery,
//! configuration and the admin API change them.

use std::time::Instant;

use super::{Notice, Relay, TargetInfo};
use crate::health::State;
use crate::pool::{Algorithm, Pool, TargetSpec};

/// Per-member flags the admin API and probes set.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct DrainFlags {
    /// Drained by the operator.
    pub(super) admin: bool,
    /// Draining by its own say (503 to a probe).
    pub(super) reported: bool,
}

/// One of the relay's pools, as a remembered request names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PoolId {
    /// The edges.
    Edges,
    /// A destination set, by its place in [`Relay::sets`].
    Set(usize),
}

impl Relay {
    /// A pool; `None` for a set no longer configured (its failover entries are dropped
    /// then, so this is a guard, not an expected case).
    pub(super) fn pool(&self, id: PoolId) -> Option<&Pool> {
        match id {
            PoolId::Edges => Some(&self.edges),
            PoolId::Set(i) => self.sets.get(i),
        }
    }

    /// A pool, to change.
    pub(super) fn pool_mut(&mut self, id: PoolId) -> Option<&mut Pool> {
        match id {
            PoolId::Edges => Some(&mut self.edges),
            PoolId::Set(i) => self.sets.get_mut(i),
        }
    }

    /// Every pool: the edges first, then the sets.
    pub(super) fn all_pools(&self) -> impl Iterator<Item = &Pool> {
        std::iter::once(&self.edges).chain(&self.sets)
    }

    /// Replace the edge set (a discovery snapshot). New edges join after a probe;
    /// edges missing from the snapshot leave at once.
    pub fn set_edges(&mut self, specs: Vec<TargetSpec>, now: Instant) {
        self.set_pool_members(PoolId::Edges, specs, now);
    }

    /// Replace the destination sets (from configuration).
    pub fn set_sets(&mut self, sets: Vec<(String, Algorithm, Vec<TargetSpec>)>, now: Instant) {
        let keep: Vec<String> = sets.iter().map(|s| s.0.clone()).collect();
        let mut i = 0;
        while i < self.sets.len() {
            if keep.contains(&self.sets[i].name) {
                i += 1;
            } else {
                self.set_pool_members(PoolId::Set(i), Vec::new(), now);
                self.sets.remove(i);
            }
        }
        for (name, alg, specs) in sets {
            let i = match self.sets.iter().position(|p| p.name == name) {
                Some(i) => {
                    self.sets[i].algorithm = alg;
                    i
                }
                None => {
                    self.sets.push(Pool::new(&name, alg));
                    self.sets.len() - 1
                }
            };
            self.set_pool_members(PoolId::Set(i), specs, now);
        }
        // Failover entries name sets by place, which may have changed.
        self.failover.retain(|_, e| e.pool == PoolId::Edges);
    }

    fn set_pool_members(&mut self, which: PoolId, specs: Vec<TargetSpec>, now: Instant) {
        let pool = match which {
            PoolId::Edges => &mut self.edges,
            PoolId::Set(i) => match self.sets.get_mut(i) {
                Some(p) => p,
                None => return,
            },
        };
        let gone: Vec<String> = pool
            .members()
            .filter(|m| !specs.iter().any(|s| s.id == m.spec.id))
            .map(|m| m.spec.id.clone())
            .collect();
        for id in gone {
            if let Some(m) = pool.remove(&id, &self.metrics) {
                self.drains.remove(&m.slot);
                if which == PoolId::Edges {
                    self.retired
                        .push_back((now + self.cfg.failover_window, m.spec.addr));
                }
            }
            self.notices.push_back(Notice::Removed {
                pool: pool.name.clone(),
                id,
            });
        }
        for spec in specs {
            let new = pool.get(&spec.id).is_none();
            let (id, addr) = (spec.id.clone(), spec.addr);
            let slot = &mut self.next_slot;
            pool.upsert(
                spec,
                || {
                    *slot += 1;
                    *slot
                },
                self.cfg.health,
                &self.metrics,
                now,
            );
            if new {
                self.notices.push_back(Notice::Added {
                    pool: pool.name.clone(),
                    id,
                    addr,
                });
            }
        }
    }

    /// Is some edge up (answering its probes)? Until then every new request gets 503.
    pub fn has_edge_up(&self) -> bool {
        self.edges.members().any(|m| m.health.state() == State::Up)
    }

    /// Every target of every pool.
    pub fn targets(&self) -> Vec<TargetInfo> {
        self.all_pools()
            .flat_map(|p| {
                p.members().map(|m| TargetInfo {
                    pool: p.name.clone(),
                    algorithm: p.algorithm,
                    id: m.spec.id.clone(),
                    addr: m.spec.addr,
                    transport: m.spec.transport,
                    weight: m.weight(),
                    priority: m.spec.priority,
                    state: m.health.state(),
                    draining: m.health.is_draining(),
                    requests: m.metrics.requests.get(),
                })
            })
            .collect()
    }

    /// The pools: (name, algorithm, member count).
    pub fn pools(&self) -> Vec<(String, Algorithm, usize)> {
        self.all_pools()
            .map(|p| (p.name.clone(), p.algorithm, p.members().count()))
            .collect()
    }

    /// A pool by the name the admin API uses.
    fn pool_named_mut(&mut self, name: &str) -> Option<&mut Pool> {
        std::iter::once(&mut self.edges)
            .chain(&mut self.sets)
            .find(|p| p.name == name)
    }

    /// Set a target's weight (admin); false when unknown.
    pub fn set_weight(&mut self, pool: &str, id: &str, weight: u32) -> bool {
        self.pool_named_mut(pool)
            .is_some_and(|p| p.set_weight(id, weight))
    }

    /// Drain or undrain a target (admin); false when unknown.
    pub fn set_draining(&mut self, pool: &str, id: &str, draining: bool) -> bool {
        // Field by field, so that the member and the drain flags can be borrowed at once.
        let Some(m) = std::iter::once(&mut self.edges)
            .chain(&mut self.sets)
            .find(|p| p.name == pool)
            .and_then(|p| p.get_mut(id))
        else {
            return false;
        };
        let flags = self.drains.entry(m.slot).or_default();
        flags.admin = draining;
        m.health.set_draining(flags.admin || flags.reported);
        m.publish();
        true
    }
}

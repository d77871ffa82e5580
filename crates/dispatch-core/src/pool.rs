//! A pool of probed targets with a selection algorithm: the edge pool (hash on Call-ID)
//! and the outbound destination sets (gateways, trunks, PBXs).

use std::net::SocketAddr;
use std::time::Instant;

use sip_txn::Transport;

use crate::hashing::{Rendezvous, key_hash, mix};
use crate::health::{Health, HealthConfig, State};
use crate::metrics::{Metrics, TargetMetrics};

/// How a pool picks a target; the rest of the order is the failover sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Weighted rendezvous hash of the Call-ID: a dialog's requests meet one target.
    #[default]
    Hash,
    /// Weighted random (independent of the Call-ID).
    Weighted,
    /// Round robin over targets with a non-zero weight.
    RoundRobin,
    /// Lowest priority value first; hash order among equal priorities.
    Priority,
}

impl Algorithm {
    /// From a config word.
    pub fn parse(s: &str) -> Option<Algorithm> {
        Some(match s.to_ascii_lowercase().as_str() {
            "hash" | "call-id" => Algorithm::Hash,
            "weighted" | "random" => Algorithm::Weighted,
            "round-robin" | "roundrobin" | "rr" => Algorithm::RoundRobin,
            "priority" | "failover" => Algorithm::Priority,
            _ => return None,
        })
    }

    /// The config word.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Hash => "hash",
            Algorithm::Weighted => "weighted",
            Algorithm::RoundRobin => "round-robin",
            Algorithm::Priority => "priority",
        }
    }
}

/// A target as configured or discovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// Stable id (pod name, `host:port`).
    pub id: String,
    /// Where to send.
    pub addr: SocketAddr,
    /// UDP or TCP.
    pub transport: Transport,
    /// Share of the traffic (0: none).
    pub weight: u32,
    /// For [`Algorithm::Priority`]: lower goes first.
    pub priority: u32,
}

/// One member of a pool.
#[derive(Debug, Clone)]
pub struct Member {
    /// Configured / discovered values.
    pub spec: TargetSpec,
    /// Unique across pools; names the member in probe branches.
    pub slot: u32,
    /// Probe state.
    pub health: Health,
    /// Weight set over the admin API (overrides the spec's).
    pub weight_override: Option<u32>,
    pub(crate) metrics: TargetMetrics,
}

impl Member {
    /// Takes new dialogs.
    pub fn usable(&self) -> bool {
        self.health.usable()
    }

    /// Answers probes (may be draining): takes in-dialog traffic.
    pub fn alive(&self) -> bool {
        self.health.state() == State::Up
    }

    /// The effective weight.
    pub fn weight(&self) -> u32 {
        self.weight_override.unwrap_or(self.spec.weight)
    }

    pub(crate) fn publish(&self) {
        self.metrics.up.set(i64::from(self.usable()));
        self.metrics
            .draining
            .set(i64::from(self.health.is_draining()));
    }
}

/// A named pool.
#[derive(Debug, Clone)]
pub struct Pool {
    /// `edge` for the edge pool, else the set's name.
    pub name: String,
    /// Selection.
    pub algorithm: Algorithm,
    pub(crate) members: Rendezvous<Member>,
    rr: u64,
}

impl Pool {
    /// An empty pool.
    pub fn new(name: &str, algorithm: Algorithm) -> Pool {
        Pool {
            name: name.to_owned(),
            algorithm,
            members: Rendezvous::new(),
            rr: 0,
        }
    }

    /// The members.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().map(|(_, _, m)| m)
    }

    pub(crate) fn members_mut(&mut self) -> impl Iterator<Item = &mut Member> {
        self.members.values_mut()
    }

    /// A member by id.
    pub fn get(&self, id: &str) -> Option<&Member> {
        self.members.get(id)
    }

    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut Member> {
        self.members.get_mut(id)
    }

    /// Add a member (joining: no traffic until a probe answers) or update it in place
    /// (keeping its health).
    pub(crate) fn upsert(
        &mut self,
        spec: TargetSpec,
        slot: impl FnOnce() -> u32,
        health: HealthConfig,
        metrics: &Metrics,
        now: Instant,
    ) {
        if let Some(m) = self.members.get_mut(&spec.id) {
            if m.spec != spec {
                let w = m.weight_override.unwrap_or(spec.weight);
                m.spec = spec;
                let id = m.spec.id.clone();
                self.members.set_weight(&id, w);
            }
            return;
        }
        let m = Member {
            metrics: TargetMetrics::new(metrics, &self.name, &spec.id),
            slot: slot(),
            health: Health::new(health, now),
            weight_override: None,
            spec,
        };
        m.publish();
        let (id, w) = (m.spec.id.clone(), m.spec.weight);
        self.members.insert(&id, w, m);
    }

    pub(crate) fn remove(&mut self, id: &str, metrics: &Metrics) -> Option<Member> {
        let m = self.members.remove(id)?;
        TargetMetrics::remove(metrics, &self.name, id);
        Some(m)
    }

    pub(crate) fn set_weight(&mut self, id: &str, weight: u32) -> bool {
        match self.members.get_mut(id) {
            Some(m) => {
                m.weight_override = Some(weight);
                self.members.set_weight(id, weight)
            }
            None => false,
        }
    }

    /// The member for a new request with dialog key `key` (the Call-ID's hash): the first
    /// in this pool's order that `eligible` accepts. Allocation-free for [`Algorithm::Hash`].
    pub fn pick(&mut self, key: u64, eligible: impl Fn(&Member) -> bool) -> Option<&Member> {
        match self.algorithm {
            Algorithm::Hash => self.members.pick(key, eligible).map(|(_, m)| m),
            _ => {
                let order = self.order(key);
                let id = order
                    .into_iter()
                    .find(|id| self.members.get(id).is_some_and(&eligible))?;
                self.members.get(&id)
            }
        }
    }

    /// Every member with a weight in this pool's preference order for `key`.
    pub fn order(&mut self, key: u64) -> Vec<String> {
        match self.algorithm {
            Algorithm::Hash => ids(self.members.order(key)),
            Algorithm::Weighted => {
                self.rr = self.rr.wrapping_add(1);
                ids(self.members.order(mix(self.rr ^ key)))
            }
            Algorithm::RoundRobin => {
                let mut v: Vec<(u32, String)> = self
                    .members
                    .iter()
                    .filter(|(_, w, _)| *w > 0)
                    .map(|(id, _, m)| (m.slot, id.to_owned()))
                    .collect();
                v.sort();
                if v.is_empty() {
                    return Vec::new();
                }
                let start = (self.rr % v.len() as u64) as usize;
                self.rr = self.rr.wrapping_add(1);
                v.rotate_left(start);
                v.into_iter().map(|(_, id)| id).collect()
            }
            Algorithm::Priority => {
                let hashed = self.members.order(key);
                let mut v: Vec<(u32, usize, String)> = hashed
                    .into_iter()
                    .enumerate()
                    .map(|(i, (id, m))| (m.spec.priority, i, id.to_owned()))
                    .collect();
                v.sort();
                v.into_iter().map(|(_, _, id)| id).collect()
            }
        }
    }
}

fn ids(v: Vec<(&str, &Member)>) -> Vec<String> {
    v.into_iter().map(|(id, _)| id.to_owned()).collect()
}

/// The dialog key of a Call-ID.
pub fn dialog_key(call_id: &str) -> u64 {
    key_hash(call_id.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(alg: Algorithm) -> Pool {
        let mut p = Pool::new("gw", alg);
        let m = Metrics::default();
        let now = Instant::now();
        for (slot, (i, prio)) in (1u32..).zip([(1u16, 2u32), (2, 1), (3, 1)]) {
            p.upsert(
                TargetSpec {
                    id: format!("gw{i}"),
                    addr: SocketAddr::from(([127, 0, 0, 1], 5000 + i)),
                    transport: Transport::Udp,
                    weight: 1,
                    priority: prio,
                },
                || slot,
                HealthConfig {
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_millis(500),
                    fall: 1,
                    rise: 1,
                },
                &m,
                now,
            );
        }
        p
    }

    #[test]
    fn round_robin_rotates_and_priority_prefers_low_values() {
        let mut p = pool(Algorithm::RoundRobin);
        let firsts: Vec<String> = (0..6).map(|_| p.order(7)[0].clone()).collect();
        assert_eq!(firsts, ["gw1", "gw2", "gw3", "gw1", "gw2", "gw3"]);

        let mut p = pool(Algorithm::Priority);
        for key in 0..50 {
            let o = p.order(key);
            assert_eq!(o[2], "gw1", "priority 2 always last");
            assert!(o[..2].contains(&"gw2".to_owned()) && o[..2].contains(&"gw3".to_owned()));
        }
        // Both priority-1 members get a share of the keys.
        let gw2 = (0..1000).filter(|k| p.order(*k)[0] == "gw2").count();
        assert!((400..600).contains(&gw2), "{gw2}");
    }

    #[test]
    fn weighted_spreads_independently_of_the_key() {
        let mut p = pool(Algorithm::Weighted);
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            let first = p.order(42)[0].clone();
            counts[first[2..].parse::<usize>().unwrap() - 1] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn pick_skips_ineligible_and_keeps_health_on_update() {
        let mut p = pool(Algorithm::Hash);
        assert!(
            p.pick(1, |m| m.usable()).is_none(),
            "joining members take nothing"
        );
        let first = p.order(1)[0].clone();
        let second = p.order(1)[1].clone();
        let got = p.pick(1, |m| m.spec.id != first).map(|m| m.spec.id.clone());
        assert_eq!(got, Some(second));
        // Re-announcing a member with a new weight keeps its slot and health.
        let slot = p.get("gw1").unwrap().slot;
        let mut spec = p.get("gw1").unwrap().spec.clone();
        spec.weight = 5;
        p.upsert(
            spec,
            || 99,
            HealthConfig::default(),
            &Metrics::default(),
            Instant::now(),
        );
        assert_eq!(p.get("gw1").unwrap().slot, slot);
        assert_eq!(p.members.iter().find(|e| e.0 == "gw1").unwrap().1, 5);
    }
}

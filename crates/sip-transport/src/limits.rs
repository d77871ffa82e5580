//! How many inbound TCP connections are held at once: per instance, per source, and what
//! the process's descriptor limit leaves for them.
//!
//! Every idle connection costs a descriptor. At the process's `RLIMIT_NOFILE` nothing can
//! be opened any more: not the next phone's connection, not a Redis or gRPC reconnect,
//! not the `/healthz` probe. So accepted connections are counted, and one beyond a cap is
//! closed at once:
//!
//! * the instance's `tcp_max_connections`;
//! * `tcp_max_connections_per_source` per source address (an IPv6 source counts per /64,
//!   the block one subscriber holds), so one host cannot take the whole budget;
//! * the process's ceiling, computed once from `RLIMIT_NOFILE`: the soft limit minus a
//!   reserve for everything else the process opens (listeners, outbound connections,
//!   the location service, Redis, the HTTP endpoint, files). It is shared by every
//!   transport of the process (the dispatcher's two sides, the all-in-one's roles).
//!
//! A slot is held as long as either half of the connection lives ([`Slot`] is dropped
//! with the last of the reader and the writer), so the counts are the descriptors held.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use foldhash::HashMap;

/// Why a new connection was refused (the metric's `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The instance's `tcp_max_connections`.
    Connections,
    /// `tcp_max_connections_per_source` for its source.
    Source,
    /// The process's descriptor ceiling.
    Descriptors,
}

impl Refusal {
    /// Every cap, for the metric's series created at start.
    pub(crate) const ALL: [Refusal; 3] =
        [Refusal::Connections, Refusal::Source, Refusal::Descriptors];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Connections => "connection_limit",
            Refusal::Source => "source_limit",
            Refusal::Descriptors => "descriptor_limit",
        }
    }
}

/// What `RLIMIT_NOFILE` leaves for inbound connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorBudget {
    /// The soft limit (`None`: unknown or unlimited).
    pub soft_limit: Option<u64>,
    /// Descriptors kept for everything but inbound connections.
    pub reserve: u64,
    /// Inbound connections the whole process may hold.
    pub ceiling: usize,
}

impl DescriptorBudget {
    /// The budget under a soft limit of `soft` descriptors: an eighth kept back, at least
    /// 256 and at most 8192 (what a busy edge opens besides its clients: a few hundred
    /// outbound connections, pools, files), but never more than half, so that a tiny
    /// limit still admits some clients.
    #[must_use]
    pub fn for_soft_limit(soft: Option<u64>) -> DescriptorBudget {
        match soft {
            None => DescriptorBudget {
                soft_limit: None,
                reserve: 0,
                ceiling: usize::MAX,
            },
            Some(soft) => {
                let reserve = (soft / 8).clamp(256, 8192).min(soft / 2);
                DescriptorBudget {
                    soft_limit: Some(soft),
                    reserve,
                    ceiling: usize::try_from(soft - reserve).unwrap_or(usize::MAX),
                }
            }
        }
    }

    /// The budget of this process, read once (the first transport that listens on TCP).
    pub fn of_process() -> DescriptorBudget {
        process().budget
    }
}

struct Process {
    budget: DescriptorBudget,
    open: AtomicUsize,
}

fn process() -> &'static Process {
    static P: OnceLock<Process> = OnceLock::new();
    P.get_or_init(|| {
        // Unreadable counts as unlimited: no cap is better than a made-up one.
        let soft = telemetry::nofile::NoFile::of_process()
            .ok()
            .and_then(|l| l.soft);
        Process {
            budget: DescriptorBudget::for_soft_limit(soft),
            open: AtomicUsize::new(0),
        }
    })
}

/// The counts of one transport instance.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    /// The instance's cap (already lowered to the process ceiling).
    pub max: usize,
    pub max_per_source: usize,
    open: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
}

/// The key a source is counted under: an IPv4 address, or the /64 of an IPv6 one (a
/// v4-mapped IPv6 address counts as its IPv4 address).
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl ConnLimits {
    pub(crate) fn new(max: usize, max_per_source: usize) -> ConnLimits {
        ConnLimits {
            max: max.min(process().budget.ceiling),
            max_per_source,
            open: AtomicUsize::new(0),
            per_source: Mutex::new(HashMap::default()),
        }
    }

    /// Take a slot for a connection from `ip`, or say which cap it hit.
    pub(crate) fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let key = source_key(ip);
        // The per-source map's lock also orders the two counters' checks, so that two
        // accepts racing for the last slot cannot both take it.
        let mut per = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if self.open.load(Ordering::Relaxed) >= self.max {
            return Err(Refusal::Connections);
        }
        let n = per.entry(key).or_insert(0);
        if *n >= self.max_per_source {
            if *n == 0 {
                per.remove(&key);
            }
            return Err(Refusal::Source);
        }
        let p = process();
        if p.open.fetch_add(1, Ordering::Relaxed) >= p.budget.ceiling {
            p.open.fetch_sub(1, Ordering::Relaxed);
            if *n == 0 {
                per.remove(&key);
            }
            return Err(Refusal::Descriptors);
        }
        *n += 1;
        self.open.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            limits: self.clone(),
            key,
        })
    }

    fn release(&self, key: IpAddr) {
        let mut per = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                per.remove(&key);
            }
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        process().open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Inbound connections held now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// One accepted connection's place in the counts, given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    limits: Arc<ConnLimits>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.release(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_leaves_descriptors_for_the_rest() {
        let b = |soft| DescriptorBudget::for_soft_limit(Some(soft));
        // Common limits: 1024 (systemd's soft default), 65536, 1M (containers).
        assert_eq!((b(1024).reserve, b(1024).ceiling), (256, 768));
        assert_eq!((b(65_536).reserve, b(65_536).ceiling), (8192, 57_344));
        assert_eq!(b(1 << 20).reserve, 8192);
        // A tiny limit still admits half.
        assert_eq!((b(100).reserve, b(100).ceiling), (50, 50));
        assert_eq!(DescriptorBudget::for_soft_limit(None).ceiling, usize::MAX);
    }

    #[test]
    fn ipv6_sources_count_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn caps_per_instance_and_per_source_and_slots_come_back() {
        let l = Arc::new(ConnLimits::new(3, 2));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let s1 = l.acquire(a).unwrap();
        let _s2 = l.acquire(a).unwrap();
        assert_eq!(l.acquire(a).unwrap_err(), Refusal::Source);
        let _s3 = l.acquire(b).unwrap();
        assert_eq!(l.acquire(b).unwrap_err(), Refusal::Connections);
        assert_eq!(l.open(), 3);
        drop(s1);
        assert_eq!(l.open(), 2);
        let _s4 = l.acquire(a).unwrap();
    }
}

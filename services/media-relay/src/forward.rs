//! The forwarding workers: one `mio` loop per worker over the sockets of its port slice.
//!
//! A wake-up drains every ready socket, asks the engine where each datagram goes and
//! sends it unchanged out of the other leg's socket. The receive buffer is reused; no
//! allocation per packet. The shard's lock is taken once per wake-up, not per packet;
//! only the control plane (offers, deletes, the sweep) competes for it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use media_core::packet::Kind;
use media_core::{Binding, DropReason, Engine, EngineConfig, Family, Forward};
use mio::net::UdpSocket;
use std::os::fd::AsRawFd;

use crate::batch::{BATCH, Receiver};
use mio::{Events, Interest, Poll, Registry, Token};

use prometheus_client::metrics::counter::Counter;

use crate::metrics::{KindLabel, Metrics, ReasonLabel};

/// One worker's sessions and sockets.
#[derive(Debug)]
pub struct ShardState {
    /// The session table of this port slice.
    pub engine: Engine,
    /// The sockets of its ports.
    pub sockets: Sockets,
}

/// The open media sockets of a port slice, by port and family.
#[derive(Debug)]
pub struct Sockets {
    v4: Vec<Option<UdpSocket>>,
    v6: Vec<Option<UdpSocket>>,
    base: u16,
}

impl Sockets {
    fn slot(&mut self, port: u16, family: Family) -> Option<&mut Option<UdpSocket>> {
        let i = usize::from(port.checked_sub(self.base)?);
        match family {
            Family::V4 => self.v4.get_mut(i),
            Family::V6 => self.v6.get_mut(i),
        }
    }

    fn get(&self, port: u16, family: Family) -> Option<&UdpSocket> {
        let i = usize::from(port.checked_sub(self.base)?);
        match family {
            Family::V4 => self.v4.get(i)?.as_ref(),
            Family::V6 => self.v6.get(i)?.as_ref(),
        }
    }
}

/// A worker's shared half: its state behind a lock, and the registry to add sockets to
/// its poll.
#[derive(Debug)]
pub struct Shard {
    state: Mutex<ShardState>,
    registry: Registry,
    bind_v4: Option<IpAddr>,
    bind_v6: Option<IpAddr>,
}

fn token(port: u16, family: Family) -> Token {
    Token(usize::from(port) << 1 | usize::from(family == Family::V6))
}

fn untoken(t: Token) -> (u16, Family) {
    let family = if t.0 & 1 == 1 { Family::V6 } else { Family::V4 };
    (u16::try_from(t.0 >> 1).unwrap_or(0), family)
}

impl Shard {
    /// A shard over `cfg`'s port slice, and the poll its worker runs.
    pub fn new(
        cfg: EngineConfig,
        bind_v4: Option<IpAddr>,
        bind_v6: Option<IpAddr>,
    ) -> io::Result<(Shard, Poll)> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let slots = usize::from(cfg.port_max - cfg.port_min) + 2;
        let base = cfg.port_min;
        Ok((
            Shard {
                state: Mutex::new(ShardState {
                    engine: Engine::new(cfg),
                    sockets: Sockets {
                        v4: (0..slots).map(|_| None).collect(),
                        v6: (0..slots).map(|_| None).collect(),
                        base,
                    },
                }),
                registry,
                bind_v4,
                bind_v6,
            },
            poll,
        ))
    }

    /// The state, even if a worker panicked while holding it (the engine stays
    /// consistent between calls).
    pub fn lock(&self) -> MutexGuard<'_, ShardState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Open the socket the engine asks for; false when the port is taken.
    pub fn open(&self, sockets: &mut Sockets, b: Binding) -> bool {
        let Some(ip) = (match b.family {
            Family::V4 => self.bind_v4,
            Family::V6 => self.bind_v6,
        }) else {
            return false;
        };
        let sock = match std::net::UdpSocket::bind(SocketAddr::new(ip, b.port)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(port = b.port, error = %e, "media port taken; skipping it");
                return false;
            }
        };
        if sock.set_nonblocking(true).is_err() {
            return false;
        }
        let mut sock = UdpSocket::from_std(sock);
        if let Err(e) =
            self.registry
                .register(&mut sock, token(b.port, b.family), Interest::READABLE)
        {
            tracing::warn!(port = b.port, error = %e, "cannot watch media socket");
            return false;
        }
        match sockets.slot(b.port, b.family) {
            Some(slot) => {
                *slot = Some(sock);
                true
            }
            None => false,
        }
    }

    /// Ask for a new readiness event on a socket that may still hold datagrams.
    fn rearm(&self, sockets: &mut Sockets, port: u16, family: Family) {
        if let Some(Some(s)) = sockets.slot(port, family) {
            let _ = self
                .registry
                .reregister(s, token(port, family), Interest::READABLE);
        }
    }

    /// Close the sockets of ended sessions.
    pub fn close_released(&self, st: &mut ShardState) {
        for b in st.engine.take_closed() {
            if let Some(mut s) = st.sockets.slot(b.port, b.family).and_then(Option::take) {
                let _ = self.registry.deregister(&mut s);
            }
        }
    }
}

/// Counts kept in locals between wake-ups, and the counters they are added to (looked
/// up once, not per wake-up).
struct Tally {
    kinds: [u64; 5],
    bytes: u64,
    drops: [u64; 6],
    kind_counters: [Counter; 5],
    drop_counters: [Counter; 6],
    bytes_counter: Counter,
}

const KINDS: [&str; 5] = ["rtp", "rtcp", "stun", "dtls", "other"];
const DROPS: [&str; 6] = [
    "unknown_port",
    "wrong_source",
    "unknown_fork",
    "no_destination",
    "send_failed",
    "oversize",
];

impl Tally {
    fn kind(&mut self, k: Kind) {
        let i = match k {
            Kind::Rtp => 0,
            Kind::Rtcp => 1,
            Kind::Stun => 2,
            Kind::Dtls => 3,
            Kind::Other => 4,
        };
        self.kinds[i] += 1;
    }

    fn drop(&mut self, r: DropReason) {
        let i = match r {
            DropReason::UnknownPort => 0,
            DropReason::WrongSource => 1,
            DropReason::UnknownFork => 2,
            DropReason::NoDestination => 3,
        };
        self.drops[i] += 1;
    }

    fn new(m: &Metrics) -> Tally {
        Tally {
            kinds: [0; 5],
            bytes: 0,
            drops: [0; 6],
            kind_counters: KINDS.map(|kind| m.packets.get_or_create(&KindLabel { kind }).clone()),
            drop_counters: DROPS
                .map(|reason| m.dropped.get_or_create(&ReasonLabel { reason }).clone()),
            bytes_counter: m.bytes.clone(),
        }
    }

    fn flush(&mut self) {
        for (n, c) in self.kinds.iter_mut().zip(&self.kind_counters) {
            if *n > 0 {
                c.inc_by(*n);
                *n = 0;
            }
        }
        if self.bytes > 0 {
            self.bytes_counter.inc_by(self.bytes);
            self.bytes = 0;
        }
        for (n, c) in self.drops.iter_mut().zip(&self.drop_counters) {
            if *n > 0 {
                c.inc_by(*n);
                *n = 0;
            }
        }
    }
}

/// A worker: forward until `stop`.
pub fn run(
    shard: Arc<Shard>,
    mut poll: Poll,
    stop: Arc<AtomicBool>,
    metrics: Metrics,
    coalesce: Option<Duration>,
) {
    let mut events = Events::with_capacity(1024);
    let mut rx = Receiver::default();
    let mut tally = Tally::new(&metrics);
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(200))) {
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(error = %e, "media poll failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        if events.is_empty() {
            continue;
        }
        let now = Instant::now();
        let mut st = shard.lock();
        for ev in &events {
            let (port, family) = untoken(ev.token());
            // Edge-triggered: drain the socket. A short batch means it is empty.
            let mut drained = false;
            for _ in 0..64 {
                let Some(fd) = st.sockets.get(port, family).map(|s| s.as_raw_fd()) else {
                    break;
                };
                let n = match rx.recv(fd) {
                    Ok(n) => n,
                    // ICMP errors of earlier sends surface here, once each; the socket
                    // goes on.
                    Err(_) => continue,
                };
                for i in 0..n {
                    let Some((meta, data)) = rx.get(i) else { break };
                    let Some(src) = meta.src.filter(|_| !meta.truncated) else {
                        tally.drops[5] += 1;
                        continue;
                    };
                    match st.engine.on_packet(port, family, src, data, now) {
                        Forward::Send {
                            port: out,
                            to,
                            kind,
                        } => match st.sockets.get(out, family).map(|s| s.send_to(data, to)) {
                            Some(Ok(_)) => {
                                tally.kind(kind);
                                tally.bytes += data.len() as u64;
                            }
                            _ => tally.drops[4] += 1,
                        },
                        Forward::Drop(r) => tally.drop(r),
                    }
                }
                if n < BATCH {
                    drained = true;
                    break;
                }
            }
            if !drained {
                // A flood on one socket: re-arm it so its rest is read after the others
                // had their turn, instead of waiting for a new packet's edge.
                shard.rearm(&mut st.sockets, port, family);
            }
        }
        drop(st);
        tally.flush();
        if let Some(c) = coalesce {
            // Let packets gather: one wake-up then carries many, instead of a context
            // switch every packet or two. Media tolerates far more delay than this.
            std::thread::sleep(c);
        }
    }
}

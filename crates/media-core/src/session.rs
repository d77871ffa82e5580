//! Sessions, latching and the forwarding decision.
//!
//! A session is one call as the relay sees it, keyed by Call-ID and the tag of the party
//! whose SDP created it (normally the caller's From tag). That party is the session's
//! *key party*; every party answering it (one per To tag: forked early dialogs each get
//! their own) is a *branch*. Each party has, per media section, the address it signalled
//! and the address the relay latched from its packets, and the relay has, per media
//! section, a port pair facing each party: the key party sends to its branch's
//! `key_facing` pair and the branches all send to the shared `branch_facing` pair (the
//! offer that announced it went to every fork alike; the source tells the forks apart).
//!
//! Offers and answers are one operation, [`Engine::update`]: "this party now receives on
//! these addresses; which ports does the other party send to". The tags say who is who,
//! so re-INVITEs from either side, late offers (SDP in the 2xx and the ACK) and
//! retransmissions (same ports again) need no extra state.
//!
//! # Latching
//!
//! Packets for a party go where its packets come from (symmetric RTP: a NAT rewrites the
//! address it signalled), so the relay *latches* each party's source, per media section
//! and separately for RTCP without rtcp-mux. Anyone who learns a relay port can send to
//! it, so the rule must not let a stranger who sends first own the call (the way
//! "first source wins" did: both phones then heard nothing for the whole call). Like
//! rtpengine's heuristic endpoint learning, a source is scored against the signalled
//! address: 2 when it is that address (IP and port), 1 when it has its IP, 0 otherwise.
//! A packet is the party's, and latches its source, when
//!
//! - nothing is latched yet (a NAT'd phone whose private address is never seen latches
//!   its public one, as before);
//! - it comes from the latched source;
//! - its source scores higher than the latched one: the signalled address displaces a
//!   stranger at once, even an active one, and a stranger never displaces it;
//! - or the latched source has been silent for [`EngineConfig::relatch_after`] (a NAT
//!   rebinding, a phone that changed network).
//!
//! Anything else is dropped ([`DropReason::WrongSource`]) and counted per party
//! ([`SideStats::foreign_packets`]). A stranger displaced by the signalled source, or
//! dropped while the latched source is active, is a hijack attempt: the engine reports
//! the first one of each party and media section as [`Event::ForeignSource`] (once, so a
//! flood costs no memory). An offer or answer that moves a party's media to another
//! address unlatches it: packets for it go to the new address, its old source is kept
//! only until any other shows up, and is never reported as a stranger. Strict mode
//! ([`MediaSpec::strict`], rtpengine's "strict source") accepts only the signalled
//! address.
//!
//! What the rule cannot do: a NAT'd phone signals a private address its packets never
//! come from, so a stranger that latches first scores as well as the phone and keeps the
//! latch while it sends; it is then reported, and the phone's packets are counted as
//! foreign, so the call's statistics show it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use crate::error::MediaError;
use crate::packet::{Kind, RtpHeader, classify, first_report_block};
use crate::ports::PortPool;
use crate::stats::StreamStats;

/// At most this many forked answers per session.
const MAX_BRANCHES: usize = 16;
/// At most this many media sections per session.
const MAX_MEDIA: usize = 16;

/// The address family of a port's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    #[must_use]
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// Limits and timers of the session table.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Lowest port of the range.
    pub port_min: u16,
    /// Highest port of the range.
    pub port_max: u16,
    /// How long a released pair stays unused.
    pub quarantine: Duration,
    /// A session with no packet for this long is ended.
    pub idle_timeout: Duration,
    /// A session older than this is ended.
    pub max_duration: Duration,
    /// At most this many sessions.
    pub max_sessions: usize,
    /// A latched source that has been silent this long may be replaced by any new one (a
    /// NAT rebinding, a phone that changed network). A source that matches the signalled
    /// address better than the latched one replaces it without waiting.
    pub relatch_after: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            port_min: 30_000,
            port_max: 39_999,
            quarantine: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_duration: Duration::from_secs(4 * 3600),
            max_sessions: 100_000,
            relatch_after: Duration::from_secs(2),
        }
    }
}

/// One media section of an SDP, as the party that sent it wants to receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSpec {
    /// The `c=` address; `None` (or unspecified, `0.0.0.0`) when the party sends only
    /// or holds.
    pub addr: Option<IpAddr>,
    /// The `m=` port; 0 disables the section.
    pub port: u16,
    /// `a=rtcp` port, when it is not `port + 1`.
    pub rtcp_port: Option<u16>,
    /// `a=rtcp-mux`.
    pub rtcp_mux: bool,
    /// RTP clock of the first format (8000 for G.711).
    pub clock_rate: u32,
    /// An SRTP profile: RTCP report blocks are encrypted and not read.
    pub secure: bool,
    /// Accept packets only from the signalled address (no latching).
    pub strict: bool,
    /// The family of the ports the other party is told about.
    pub reply_family: Family,
}

/// A port pair of the relay for one media section, to put into the SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMedia {
    /// Family of the sockets.
    pub family: Family,
    /// RTP port (0: the section is disabled).
    pub port: u16,
    /// RTCP port (`port + 1`, or `port` with rtcp-mux).
    pub rtcp_port: u16,
}

/// A socket the driver must open (true) or close (false).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// Port.
    pub port: u16,
    /// Family.
    pub family: Family,
}

/// Why a packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No session uses the port (ended, or a stray).
    UnknownPort,
    /// Strict mode, or a second source while the latched one is active and matches the
    /// signalled address at least as well.
    WrongSource,
    /// Several forks answered and the source matches none of them.
    UnknownFork,
    /// The other party has not told where it receives yet, or disabled the section.
    NoDestination,
}

impl DropReason {
    /// The label used in metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnknownPort => "unknown_port",
            DropReason::WrongSource => "wrong_source",
            DropReason::UnknownFork => "unknown_fork",
            DropReason::NoDestination => "no_destination",
        }
    }
}

/// What to do with a received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Send it, unchanged, from local `port` (same family as it came in) to `to`.
    Send {
        /// The local port to send from.
        port: u16,
        /// The destination.
        to: SocketAddr,
        /// What the datagram is.
        kind: Kind,
    },
    /// Drop it.
    Drop(DropReason),
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Deleted over the control API (BYE, CANCEL, failure).
    Deleted,
    /// No media for the idle timeout.
    Idle,
    /// Reached the maximum duration.
    MaxDuration,
}

impl EndReason {
    /// Every reason, for metrics that create their series at start (at 0).
    pub const ALL: [EndReason; 3] = [EndReason::Deleted, EndReason::Idle, EndReason::MaxDuration];

    /// The label used in metrics and events.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Deleted => "deleted",
            EndReason::Idle => "idle",
            EndReason::MaxDuration => "max_duration",
        }
    }
}

/// What one party sent on one media section.
#[derive(Debug, Clone, PartialEq)]
pub struct SideStats {
    /// The party's tag.
    pub tag: String,
    /// Media section index.
    pub media: usize,
    /// Where its packets come from (latched), if any came.
    pub source: Option<SocketAddr>,
    /// Datagrams dropped because of their source ([`DropReason::WrongSource`]): a
    /// stranger sending to this party's relay port, or the party itself when a stranger
    /// holds its latch.
    pub foreign_packets: u64,
    /// How often the latched source (RTP or RTCP) changed: a NAT rebinding, or the
    /// signalled source displacing a stranger.
    pub relatches: u64,
    /// The relay port it sends to (its first branch's, for the key party).
    pub local_port: Option<u16>,
    /// Datagrams received from it.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// RTP packets among them.
    pub rtp_packets: u64,
    /// RTCP packets among them.
    pub rtcp_packets: u64,
    /// Packets expected from the RTP sequence numbers.
    pub expected: u64,
    /// Sequence-gap loss on the way to the relay.
    pub lost: u64,
    /// RFC 3550 interarrival jitter at the relay, in ms.
    pub jitter_ms: f64,
    /// From the party's last RTCP report: fraction lost (0–1) of what it receives.
    pub reported_fraction_lost: Option<f64>,
    /// From the party's last RTCP report: cumulative loss of what it receives.
    pub reported_lost: Option<i64>,
    /// From the party's last RTCP report: jitter of what it receives, in ms.
    pub reported_jitter_ms: Option<f64>,
}

/// A session's identity and statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// Call-ID.
    pub call_id: String,
    /// The key party's tag.
    pub from_tag: String,
    /// The branches' tags.
    pub to_tags: Vec<String>,
    /// How long it has existed.
    pub age: Duration,
    /// How long since its last packet.
    pub idle: Duration,
    /// Every party's statistics, per media section.
    pub sides: Vec<SideStats>,
}

/// Something the driver reports (an ended session, for CDRs and metrics; a hijack
/// attempt, for the log).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A session ended; its final statistics.
    Ended {
        /// Why.
        reason: EndReason,
        /// Final statistics.
        info: SessionInfo,
    },
    /// A source other than the party's sent to its relay port: it was dropped while the
    /// latched source was active, or the signalled source displaced it. Reported once per
    /// party and media section; [`SideStats::foreign_packets`] counts every packet.
    ForeignSource {
        /// Call-ID.
        call_id: String,
        /// The tag of the party whose port it was.
        tag: String,
        /// Media section index.
        media: usize,
        /// The foreign source.
        source: SocketAddr,
        /// The source the relay kept for the party (none in strict mode before the
        /// signalled address sent).
        latched: Option<SocketAddr>,
        /// The foreign source now holds the party's latch: the party's signalled source
        /// fell silent for `relatch_after` (on hold, muted without comfort noise) and a
        /// source that matches its SDP less well took the port, so it receives what the
        /// other party sends until the party speaks again.
        holds_latch: bool,
    },
}

/// The load report an edge uses to pick a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Sessions.
    pub sessions: usize,
    /// Port pairs in use.
    pub pairs_in_use: usize,
    /// Port pairs available now.
    pub pairs_available: usize,
    /// Draining: no new sessions.
    pub draining: bool,
}

/// Where one stream of a party (its RTP, or its RTCP without rtcp-mux) comes from.
#[derive(Debug, Clone, Copy, Default)]
struct Latch {
    /// The address its SDP names.
    signalled: Option<SocketAddr>,
    /// The address its packets come from.
    latched: Option<SocketAddr>,
    /// When the latched source last sent.
    last: Option<Instant>,
    /// What was latched before the party moved its media (an offer or answer naming
    /// another address): its own old stream, not a stranger.
    retired: Option<SocketAddr>,
    /// The last address its SDP named: a hold (no address) does not forget it, so that
    /// resuming on another address is a move, not a hijack.
    named: Option<SocketAddr>,
}

/// How well `src` matches the signalled address: 2 the same address and port, 1 the
/// same IP, 0 neither (or nothing signalled). rtpengine's heuristic endpoint learning
/// ranks candidates the same way.
fn score(src: SocketAddr, signalled: Option<SocketAddr>) -> u8 {
    match signalled {
        Some(s) if s == src => 2,
        Some(s) if s.ip() == src.ip() => 1,
        _ => 0,
    }
}

/// What [`Latch::accept`] made of a packet's source. `hijack`: the source pushed out
/// or kept out was a stranger (not the party's own stream from before it moved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The party's: latched already, or the first source.
    Accept,
    /// The party's; it replaced the latched source `old`.
    Relatched { old: SocketAddr, hijack: bool },
    /// Taken as the party's (its signalled source fell silent), but it matches the SDP
    /// less well than the source it replaced: a stranger now holds the latch.
    TakenOver { old: SocketAddr },
    /// Not the party's: drop it. `latched` is the source kept.
    Foreign {
        latched: Option<SocketAddr>,
        hijack: bool,
    },
}

impl Latch {
    /// The SDP names `to`. When the party moved its media from one address to another,
    /// what was latched is its old stream: it must neither keep the new one out for
    /// `relatch_after` nor be reported as a stranger when the new one replaces it, and
    /// until the new one sends, packets for the party go to the new address. Holding (no
    /// address) and resuming keep the latch: a NAT'd phone's public source does not
    /// change with them.
    fn signal(&mut self, to: Option<SocketAddr>) {
        if let (Some(a), Some(b)) = (self.named, to)
            && a != b
        {
            self.retired = self.latched.take().or(self.retired);
            self.last = None;
        }
        if to.is_some() {
            self.named = to;
        }
        self.signalled = to;
    }

    /// Whether a packet from `src` is the party's, latching its source when it may (the
    /// rule is in the module documentation).
    fn accept(
        &mut self,
        src: SocketAddr,
        now: Instant,
        relatch: Duration,
        strict: bool,
    ) -> Verdict {
        let stranger = Some(src) != self.retired;
        let verdict = match self.latched {
            _ if strict && Some(src) != self.signalled => Verdict::Foreign {
                latched: self.latched,
                hijack: stranger,
            },
            None => Verdict::Accept,
            Some(a) if a == src => Verdict::Accept,
            // The party's old stream is kept only until anything else shows up.
            Some(a) if Some(a) == self.retired => Verdict::Relatched {
                old: a,
                hijack: false,
            },
            // The signalled address (or its host) wins over whatever got here first,
            // however busy: a stranger who sends first cannot keep the party out.
            Some(a) if score(src, self.signalled) > score(a, self.signalled) => {
                Verdict::Relatched {
                    old: a,
                    hijack: true,
                }
            }
            // The latched source stopped: a NAT rebinding, or a new network. When the new
            // source matches the SDP less well than the silent one did, it may as well be
            // a stranger who found the port while the party holds or is muted: taken
            // (the party might have moved) but reported.
            Some(a)
                if self
                    .last
                    .is_none_or(|t| now.saturating_duration_since(t) >= relatch) =>
            {
                if score(src, self.named) < score(a, self.named) {
                    Verdict::TakenOver { old: a }
                } else {
                    Verdict::Relatched {
                        old: a,
                        hijack: false,
                    }
                }
            }
            Some(a) => Verdict::Foreign {
                latched: Some(a),
                hijack: stranger,
            },
        };
        if !matches!(verdict, Verdict::Foreign { .. }) {
            self.latched = Some(src);
            self.last = Some(now);
        }
        verdict
    }
}

#[derive(Debug, Clone)]
struct Party {
    rtp: Latch,
    /// Unused with rtcp-mux (RTCP then rides `rtp`).
    rtcp: Latch,
    mux: bool,
    strict: bool,
    secure: bool,
    stats: StreamStats,
    foreign_packets: u64,
    relatches: u64,
    /// A hijack attempt was reported ([`Event::ForeignSource`]): at most one event per
    /// party and media section, so a flood cannot make the engine allocate per packet.
    reported: bool,
}

impl Party {
    fn new(spec: &MediaSpec) -> Party {
        let mut p = Party {
            rtp: Latch::default(),
            rtcp: Latch::default(),
            mux: false,
            strict: false,
            secure: false,
            stats: StreamStats::new(spec.clock_rate),
            foreign_packets: 0,
            relatches: 0,
            reported: false,
        };
        p.set(spec);
        p
    }

    fn set(&mut self, spec: &MediaSpec) {
        let ip = spec.addr.filter(|ip| !ip.is_unspecified());
        let ok = ip.filter(|_| spec.port != 0);
        self.rtp.signal(ok.map(|ip| SocketAddr::new(ip, spec.port)));
        self.rtcp.signal(
            ok.map(|ip| SocketAddr::new(ip, spec.rtcp_port.unwrap_or(spec.port.saturating_add(1)))),
        );
        self.mux = spec.rtcp_mux;
        self.strict = spec.strict;
        self.secure = spec.secure;
    }

    /// Whether a packet from `src` is this party's (see [`Latch::accept`]); counts what
    /// it drops and every change of source. Does not allocate.
    fn accept(&mut self, src: SocketAddr, rtcp: bool, now: Instant, relatch: Duration) -> Verdict {
        let latch = if rtcp && !self.mux {
            &mut self.rtcp
        } else {
            &mut self.rtp
        };
        let verdict = latch.accept(src, now, relatch, self.strict);
        match verdict {
            Verdict::Foreign { .. } => self.foreign_packets += 1,
            Verdict::Relatched { .. } | Verdict::TakenOver { .. } => self.relatches += 1,
            Verdict::Accept => {}
        }
        verdict
    }

    /// Where packets for this party go.
    fn target(&self, rtcp: bool) -> Option<SocketAddr> {
        if !rtcp || self.mux {
            return self.rtp.latched.or(self.rtp.signalled);
        }
        self.rtcp.latched.or(self.rtcp.signalled).or_else(|| {
            self.rtp
                .latched
                .map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)))
        })
    }

    /// Whether `src` is known as this party's: latched, or signalled (even when something
    /// else is latched: a stranger latched first must not hide the fork's own address).
    fn knows(&self, src: SocketAddr, rtcp: bool) -> bool {
        let l = if rtcp && !self.mux {
            &self.rtcp
        } else {
            &self.rtp
        };
        l.latched == Some(src) || l.signalled == Some(src)
    }

    fn side_stats(&self, tag: &str, media: usize, local_port: Option<u16>) -> SideStats {
        let s = &self.stats;
        let clock = f64::from(s.clock_rate_hz());
        SideStats {
            tag: tag.to_owned(),
            media,
            source: self.rtp.latched,
            foreign_packets: self.foreign_packets,
            relatches: self.relatches,
            local_port,
            packets: s.packets,
            bytes: s.bytes,
            rtp_packets: s.rtp_packets,
            rtcp_packets: s.rtcp_packets,
            expected: s.expected(),
            lost: s.lost(),
            jitter_ms: s.jitter_ms(),
            reported_fraction_lost: s.last_report.map(|r| f64::from(r.fraction_lost) / 256.0),
            reported_lost: s.last_report.map(|r| i64::from(r.cumulative_lost)),
            reported_jitter_ms: s.last_report.map(|r| f64::from(r.jitter) * 1000.0 / clock),
        }
    }
}

/// A pair of the relay: the even port, and its socket family.
#[derive(Debug, Clone, Copy)]
struct Pair {
    port: u16,
    family: Family,
}

#[derive(Debug, Clone)]
struct Media {
    /// Where the branches send (shared by every fork), if enabled.
    branch_facing: Option<Pair>,
    key: Party,
}

#[derive(Debug, Clone)]
struct Branch {
    tag: Box<str>,
    /// Where the key party sends for this branch, per media section.
    key_facing: SmallVec<[Option<Pair>; 2]>,
    parties: SmallVec<[Option<Party>; 2]>,
}

#[derive(Debug, Clone)]
struct Session {
    call_id: Box<str>,
    tag: Box<str>,
    created: Instant,
    last_packet: Instant,
    media: SmallVec<[Media; 2]>,
    branches: SmallVec<[Branch; 1]>,
}

impl Session {
    fn info(&self, now: Instant) -> SessionInfo {
        let mut sides = Vec::new();
        for (i, m) in self.media.iter().enumerate() {
            let key_port = self
                .branches
                .first()
                .and_then(|b| b.key_facing.get(i).copied().flatten())
                .map(|p| p.port);
            sides.push(m.key.side_stats(&self.tag, i, key_port));
            for b in &self.branches {
                if let Some(Some(p)) = b.parties.get(i) {
                    sides.push(p.side_stats(&b.tag, i, m.branch_facing.map(|p| p.port)));
                }
            }
        }
        SessionInfo {
            call_id: self.call_id.to_string(),
            from_tag: self.tag.to_string(),
            to_tags: self.branches.iter().map(|b| b.tag.to_string()).collect(),
            age: now.saturating_duration_since(self.created),
            idle: now.saturating_duration_since(self.last_packet),
            sides,
        }
    }

    fn pairs(&self) -> impl Iterator<Item = Pair> + '_ {
        self.media.iter().filter_map(|m| m.branch_facing).chain(
            self.branches
                .iter()
                .flat_map(|b| b.key_facing.iter().flatten().copied()),
        )
    }
}

/// Which party's packets arrive on a port.
#[derive(Debug, Clone, Copy)]
enum Facing {
    /// The key party's, for branch `.0`.
    Key(u8),
    /// The branches'.
    Branches,
}

#[derive(Debug, Clone, Copy)]
struct PortUse {
    session: u32,
    media: u8,
    facing: Facing,
    family: Family,
}

/// The session table and forwarding decisions of one relay.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    pool: PortPool,
    sessions: Vec<Option<Session>>,
    free_slots: Vec<u32>,
    by_tag: HashMap<String, u32, foldhash::fast::RandomState>,
    ports: Vec<Option<PortUse>>,
    count: usize,
    draining: bool,
    events: Vec<Event>,
    closed: Vec<Binding>,
}

fn tag_key(call_id: &str, tag: &str) -> String {
    let mut k = String::with_capacity(call_id.len() + tag.len() + 1);
    k.push_str(call_id);
    k.push('\0');
    k.push_str(tag);
    k
}

impl Engine {
    /// An empty table over the configured port range.
    #[must_use]
    pub fn new(cfg: EngineConfig) -> Engine {
        let pool = PortPool::new(cfg.port_min, cfg.port_max, cfg.quarantine);
        let slots = usize::from(pool.max().saturating_sub(pool.min())) / 2 + 1;
        Engine {
            pool,
            sessions: Vec::new(),
            free_slots: Vec::new(),
            by_tag: HashMap::default(),
            ports: vec![None; slots],
            count: 0,
            draining: false,
            events: Vec::new(),
            closed: Vec::new(),
            cfg,
        }
    }

    /// Configuration in use.
    #[must_use]
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Refuse (or accept again) new sessions.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// The load report.
    #[must_use]
    pub fn load(&self) -> Load {
        Load {
            sessions: self.count,
            pairs_in_use: self.pool.in_use(),
            pairs_available: self.pool.available() + self.pool.quarantined(),
            draining: self.draining,
        }
    }

    /// Pairs waiting out their quarantine.
    #[must_use]
    pub fn quarantined(&self) -> usize {
        self.pool.quarantined()
    }

    /// Ended sessions and hijack attempts since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Sockets to close since the last call (ports of ended sessions).
    pub fn take_closed(&mut self) -> Vec<Binding> {
        std::mem::take(&mut self.closed)
    }

    fn slot_of(&self, port: u16) -> Option<usize> {
        self.pool
            .contains(port)
            .then(|| usize::from(port - self.pool.min()) / 2)
    }

    /// A new pair, its sockets opened by `bind` (which returns false when the port is
    /// taken by someone else: that pair is retired and the next one tried).
    fn allocate(
        &mut self,
        family: Family,
        rtcp: bool,
        now: Instant,
        bind: &mut dyn FnMut(Binding) -> bool,
    ) -> Result<Pair, MediaError> {
        loop {
            let port = self.pool.allocate(now).ok_or(MediaError::NoPorts)?;
            let even = Binding { port, family };
            if !bind(even) {
                self.pool.retire(port);
                continue;
            }
            if rtcp
                && !bind(Binding {
                    port: port + 1,
                    family,
                })
            {
                self.closed.push(even);
                self.pool.retire(port);
                continue;
            }
            return Ok(Pair { port, family });
        }
    }

    /// The pair of media section `media` facing `facing`'s party: the one it has, or a
    /// new one for a new or re-enabled section (none for a disabled one); claimed for
    /// the session.
    #[allow(clippy::too_many_arguments)]
    fn pair_for(
        &mut self,
        existing: Option<Pair>,
        spec: &MediaSpec,
        rtcp: bool,
        session: u32,
        media: usize,
        facing: Facing,
        now: Instant,
        bind: &mut dyn FnMut(Binding) -> bool,
    ) -> Result<Option<Pair>, MediaError> {
        let pair = match existing {
            Some(p) => p,
            None if spec.port != 0 => self.allocate(spec.reply_family, rtcp, now, bind)?,
            None => return Ok(None),
        };
        if let Some(slot) = self.slot_of(pair.port) {
            self.ports[slot] = Some(PortUse {
                session,
                media: media as u8,
                facing,
                family: pair.family,
            });
        }
        Ok(Some(pair))
    }

    fn find(&self, call_id: &str, tag: &str) -> Option<u32> {
        self.by_tag.get(&tag_key(call_id, tag)).copied()
    }

    /// Party `sender` of call `call_id` now receives on `media` (its offer or answer);
    /// `peer` is the other party's tag when known (the To tag of an in-dialog request or
    /// of a response). Returns the relay's ports for the SDP sent on to the peer.
    ///
    /// Creates the session when `create` (an offer) and neither tag is known. Repeating
    /// a call returns the same ports.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        call_id: &str,
        sender: &str,
        peer: Option<&str>,
        media: &[MediaSpec],
        create: bool,
        now: Instant,
        bind: &mut dyn FnMut(Binding) -> bool,
    ) -> Result<Vec<LocalMedia>, MediaError> {
        if media.is_empty() || media.len() > MAX_MEDIA {
            return Err(MediaError::Invalid("between 1 and 16 media sections"));
        }
        if let Some(idx) = self.find(call_id, sender) {
            return self.update_key_party(idx, media, now, bind);
        }
        if let Some(peer) = peer
            && let Some(idx) = self.find(call_id, peer)
        {
            return self.update_branch(idx, sender, media, now, bind);
        }
        if !create {
            return Err(MediaError::NotFound);
        }
        if self.draining {
            return Err(MediaError::Draining);
        }
        if self.count >= self.cfg.max_sessions {
            return Err(MediaError::TooManySessions);
        }
        let session = Session {
            call_id: call_id.into(),
            tag: sender.into(),
            created: now,
            last_packet: now,
            media: SmallVec::new(),
            branches: SmallVec::new(),
        };
        let idx = match self.free_slots.pop() {
            Some(i) => {
                self.sessions[i as usize] = Some(session);
                i
            }
            None => {
                self.sessions.push(Some(session));
                u32::try_from(self.sessions.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.by_tag.insert(tag_key(call_id, sender), idx);
        self.count += 1;
        match self.update_key_party(idx, media, now, bind) {
            Ok(ports) => Ok(ports),
            Err(e) => {
                self.remove(idx, now, None);
                Err(e)
            }
        }
    }

    fn update_key_party(
        &mut self,
        idx: u32,
        media: &[MediaSpec],
        now: Instant,
        bind: &mut dyn FnMut(Binding) -> bool,
    ) -> Result<Vec<LocalMedia>, MediaError> {
        let mut out = Vec::with_capacity(media.len());
        for (i, spec) in media.iter().enumerate() {
            let existing = self
                .session(idx)
                .and_then(|s| s.media.get(i).map(|m| m.branch_facing));
            // The peer has not said whether it muxes: both ports are opened.
            let pair = self.pair_for(
                existing.flatten(),
                spec,
                true,
                idx,
                i,
                Facing::Branches,
                now,
                bind,
            )?;
            let s = self.session_mut(idx).ok_or(MediaError::NotFound)?;
            match s.media.get_mut(i) {
                Some(m) => {
                    m.branch_facing = pair;
                    m.key.set(spec);
                }
                None => s.media.push(Media {
                    branch_facing: pair,
                    key: Party::new(spec),
                }),
            }
            out.push(local(pair.filter(|_| spec.port != 0), spec));
        }
        Ok(out)
    }

    fn update_branch(
        &mut self,
        idx: u32,
        tag: &str,
        media: &[MediaSpec],
        now: Instant,
        bind: &mut dyn FnMut(Binding) -> bool,
    ) -> Result<Vec<LocalMedia>, MediaError> {
        let s = self.session_mut(idx).ok_or(MediaError::NotFound)?;
        let b = match s.branches.iter().position(|b| &*b.tag == tag) {
            Some(b) => b,
            None if s.branches.len() < MAX_BRANCHES => {
                s.branches.push(Branch {
                    tag: tag.into(),
                    key_facing: SmallVec::new(),
                    parties: SmallVec::new(),
                });
                s.branches.len() - 1
            }
            None => return Err(MediaError::Invalid("too many forked answers")),
        };
        let mut out = Vec::with_capacity(media.len());
        for (i, spec) in media.iter().enumerate() {
            let existing = self
                .session(idx)
                .and_then(|s| s.branches[b].key_facing.get(i).copied());
            let facing = Facing::Key(b as u8);
            let pair = self.pair_for(
                existing.flatten(),
                spec,
                !spec.rtcp_mux,
                idx,
                i,
                facing,
                now,
                bind,
            )?;
            let s = self.session_mut(idx).ok_or(MediaError::NotFound)?;
            let br = &mut s.branches[b];
            while br.key_facing.len() <= i {
                br.key_facing.push(None);
                br.parties.push(None);
            }
            br.key_facing[i] = pair;
            match &mut br.parties[i] {
                Some(p) => p.set(spec),
                slot => *slot = Some(Party::new(spec)),
            }
            out.push(local(pair.filter(|_| spec.port != 0), spec));
        }
        Ok(out)
    }

    fn session(&self, idx: u32) -> Option<&Session> {
        self.sessions.get(idx as usize)?.as_ref()
    }

    fn session_mut(&mut self, idx: u32) -> Option<&mut Session> {
        self.sessions.get_mut(idx as usize)?.as_mut()
    }

    /// End the session of `call_id` that either tag names; its final statistics.
    pub fn delete(
        &mut self,
        call_id: &str,
        tag: &str,
        other: Option<&str>,
        now: Instant,
    ) -> Result<SessionInfo, MediaError> {
        let idx = self
            .find(call_id, tag)
            .or_else(|| other.and_then(|t| self.find(call_id, t)))
            .ok_or(MediaError::NotFound)?;
        self.remove(idx, now, Some(EndReason::Deleted))
            .ok_or(MediaError::NotFound)
    }

    /// Statistics of the session of `call_id` that either tag names.
    #[must_use]
    pub fn query(
        &self,
        call_id: &str,
        tag: &str,
        other: Option<&str>,
        now: Instant,
    ) -> Option<SessionInfo> {
        let idx = self
            .find(call_id, tag)
            .or_else(|| other.and_then(|t| self.find(call_id, t)))?;
        Some(self.session(idx)?.info(now))
    }

    /// Every session, with statistics.
    #[must_use]
    pub fn list(&self, now: Instant) -> Vec<SessionInfo> {
        self.sessions
            .iter()
            .flatten()
            .map(|s| s.info(now))
            .collect()
    }

    fn remove(&mut self, idx: u32, now: Instant, reason: Option<EndReason>) -> Option<SessionInfo> {
        let s = self.sessions.get_mut(idx as usize)?.take()?;
        self.free_slots.push(idx);
        self.count -= 1;
        self.by_tag.remove(&tag_key(&s.call_id, &s.tag));
        for p in s.pairs() {
            if let Some(slot) = self.slot_of(p.port) {
                self.ports[slot] = None;
            }
            self.closed.push(Binding {
                port: p.port,
                family: p.family,
            });
            self.closed.push(Binding {
                port: p.port + 1,
                family: p.family,
            });
            self.pool.release(p.port, now);
        }
        let info = s.info(now);
        if let Some(reason) = reason {
            self.events.push(Event::Ended {
                reason,
                info: info.clone(),
            });
        }
        Some(info)
    }

    /// End idle and over-long sessions. Call it about once a second.
    pub fn sweep(&mut self, now: Instant) {
        for idx in 0..self.sessions.len() {
            let Some(s) = &self.sessions[idx] else {
                continue;
            };
            let reason = if now.saturating_duration_since(s.created) >= self.cfg.max_duration {
                EndReason::MaxDuration
            } else if now.saturating_duration_since(s.last_packet) >= self.cfg.idle_timeout {
                EndReason::Idle
            } else {
                continue;
            };
            self.remove(idx as u32, now, Some(reason));
        }
    }

    /// A datagram arrived on local `port` (family `family`) from `src`: where it goes.
    /// Does not allocate, but for the first hijack attempt on a party's media section
    /// ([`Event::ForeignSource`]; bounded by the session's parties and sections).
    pub fn on_packet(
        &mut self,
        port: u16,
        family: Family,
        src: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Forward {
        let Some(u) = self
            .slot_of(port)
            .and_then(|slot| self.ports[slot])
            .filter(|u| u.family == family)
        else {
            return Forward::Drop(DropReason::UnknownPort);
        };
        let relatch = self.cfg.relatch_after;
        let Some(s) = self
            .sessions
            .get_mut(u.session as usize)
            .and_then(Option::as_mut)
        else {
            return Forward::Drop(DropReason::UnknownPort);
        };
        let kind = classify(data);
        let rtcp = port % 2 == 1 || kind == Kind::Rtcp;
        let m = usize::from(u.media);
        let epoch = s.created;
        let Some(media) = s.media.get_mut(m) else {
            return Forward::Drop(DropReason::UnknownPort);
        };
        let (from, to, out_pair, tag) = match u.facing {
            Facing::Key(b) => {
                let Some(br) = s.branches.get_mut(usize::from(b)) else {
                    return Forward::Drop(DropReason::UnknownPort);
                };
                let Some(Some(to)) = br.parties.get(m) else {
                    return Forward::Drop(DropReason::NoDestination);
                };
                (&mut media.key, to as &Party, media.branch_facing, &s.tag)
            }
            Facing::Branches => {
                let matching = s
                    .branches
                    .iter()
                    .position(|br| {
                        br.parties
                            .get(m)
                            .and_then(Option::as_ref)
                            .is_some_and(|p| p.knows(src, rtcp))
                    })
                    .or_else(|| {
                        // One answer only: it is that party's, wherever it comes from
                        // (a NAT rewrote its address).
                        (s.branches.len() == 1).then_some(0)
                    })
                    .or_else(|| {
                        // Several forks, an unlatched one on the same host.
                        s.branches.iter().position(|br| {
                            br.parties.get(m).and_then(Option::as_ref).is_some_and(|p| {
                                p.rtp.latched.is_none()
                                    && p.rtp.signalled.is_some_and(|a| a.ip() == src.ip())
                            })
                        })
                    });
                let Some(b) = matching else {
                    return Forward::Drop(DropReason::UnknownFork);
                };
                let br = &mut s.branches[b];
                let out = br.key_facing.get(m).copied().flatten();
                let Some(Some(from)) = br.parties.get_mut(m) else {
                    return Forward::Drop(DropReason::NoDestination);
                };
                (from, &media.key, out, &br.tag)
            }
        };
        let verdict = from.accept(src, rtcp, now, relatch);
        // A hijack attempt: a stranger kept out, or pushed out by the signalled source.
        // The one allocation on this path, once per party and media section.
        let foreign = match verdict {
            Verdict::Foreign {
                latched,
                hijack: true,
            } => Some((src, latched, false)),
            Verdict::Relatched { old, hijack: true } => Some((old, Some(src), false)),
            Verdict::TakenOver { .. } => Some((src, Some(src), true)),
            _ => None,
        };
        if let Some((source, latched, holds_latch)) = foreign
            && !from.reported
        {
            from.reported = true;
            self.events.push(Event::ForeignSource {
                call_id: s.call_id.to_string(),
                tag: tag.to_string(),
                media: m,
                source,
                latched,
                holds_latch,
            });
        }
        if let Verdict::Foreign { .. } = verdict {
            return Forward::Drop(DropReason::WrongSource);
        }
        match kind {
            Kind::Rtp => match RtpHeader::parse(data) {
                Some(h) => from.stats.rtp(&h, data.len(), now, epoch),
                None => from.stats.count(data.len()),
            },
            Kind::Rtcp => {
                from.stats.count(data.len());
                from.stats.rtcp_packets += 1;
                if !from.secure
                    && let Some(r) = first_report_block(data)
                {
                    from.stats.last_report = Some(r);
                }
            }
            _ => from.stats.count(data.len()),
        }
        s.last_packet = now;
        let (Some(dst), Some(out)) = (to.target(rtcp), out_pair) else {
            return Forward::Drop(DropReason::NoDestination);
        };
        let port = if rtcp && !to.mux {
            out.port + 1
        } else {
            out.port
        };
        Forward::Send {
            port,
            to: dst,
            kind,
        }
    }
}

fn local(pair: Option<Pair>, spec: &MediaSpec) -> LocalMedia {
    match pair {
        Some(p) => LocalMedia {
            family: p.family,
            port: p.port,
            rtcp_port: if spec.rtcp_mux { p.port } else { p.port + 1 },
        },
        None => LocalMedia {
            family: spec.reply_family,
            port: 0,
            rtcp_port: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::EndReason;

    #[test]
    fn every_end_reason_is_listed() {
        // A new reason breaks this match: add it to `ALL`.
        let index = |r: EndReason| match r {
            EndReason::Deleted => 0,
            EndReason::Idle => 1,
            EndReason::MaxDuration => 2,
        };
        let mut seen = [false; EndReason::ALL.len()];
        for r in EndReason::ALL {
            seen[index(r)] = true;
        }
        assert!(seen.iter().all(|s| *s), "{seen:?}");
    }
}

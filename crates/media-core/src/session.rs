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
    /// A latched source that has been silent this long may be replaced by a new one (a
    /// NAT rebinding, a phone that changed network).
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
    /// Strict mode, or a second source while the latched one is active.
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

/// Something the driver reports (an ended session, for CDRs and metrics).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A session ended; its final statistics.
    Ended {
        /// Why.
        reason: EndReason,
        /// Final statistics.
        info: SessionInfo,
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

#[derive(Debug, Clone)]
struct Party {
    signalled: Option<SocketAddr>,
    signalled_rtcp: Option<SocketAddr>,
    mux: bool,
    strict: bool,
    secure: bool,
    latched: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    last_rtp: Option<Instant>,
    last_rtcp: Option<Instant>,
    stats: StreamStats,
}

impl Party {
    fn new(spec: &MediaSpec) -> Party {
        let mut p = Party {
            signalled: None,
            signalled_rtcp: None,
            mux: false,
            strict: false,
            secure: false,
            latched: None,
            latched_rtcp: None,
            last_rtp: None,
            last_rtcp: None,
            stats: StreamStats::new(spec.clock_rate),
        };
        p.set(spec);
        p
    }

    fn set(&mut self, spec: &MediaSpec) {
        let ip = spec.addr.filter(|ip| !ip.is_unspecified());
        let ok = ip.filter(|_| spec.port != 0);
        self.signalled = ok.map(|ip| SocketAddr::new(ip, spec.port));
        self.signalled_rtcp =
            ok.map(|ip| SocketAddr::new(ip, spec.rtcp_port.unwrap_or(spec.port.saturating_add(1))));
        self.mux = spec.rtcp_mux;
        self.strict = spec.strict;
        self.secure = spec.secure;
    }

    /// Whether a packet from `src` is this party's, latching it when it may.
    fn accept(&mut self, src: SocketAddr, rtcp: bool, now: Instant, relatch: Duration) -> bool {
        let rtcp = rtcp && !self.mux;
        let (latched, last, signalled) = if rtcp {
            (
                &mut self.latched_rtcp,
                &mut self.last_rtcp,
                self.signalled_rtcp,
            )
        } else {
            (&mut self.latched, &mut self.last_rtp, self.signalled)
        };
        if self.strict {
            if Some(src) != signalled {
                return false;
            }
        } else if let Some(a) = *latched
            && a != src
            && last.is_some_and(|t| now.saturating_duration_since(t) < relatch)
        {
            return false;
        }
        *latched = Some(src);
        *last = Some(now);
        true
    }

    /// Where packets for this party go.
    fn target(&self, rtcp: bool) -> Option<SocketAddr> {
        if !rtcp || self.mux {
            return self.latched.or(self.signalled);
        }
        self.latched_rtcp.or(self.signalled_rtcp).or_else(|| {
            self.latched
                .map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)))
        })
    }

    /// Whether `src` is known as this party's (latched, or signalled when nothing is
    /// latched yet).
    fn knows(&self, src: SocketAddr, rtcp: bool) -> bool {
        let (latched, signalled) = if rtcp && !self.mux {
            (self.latched_rtcp, self.signalled_rtcp)
        } else {
            (self.latched, self.signalled)
        };
        latched.map_or(signalled == Some(src), |a| a == src)
    }

    fn side_stats(&self, tag: &str, media: usize, local_port: Option<u16>) -> SideStats {
        let s = &self.stats;
        let clock = f64::from(s.clock_rate_hz());
        SideStats {
            tag: tag.to_owned(),
            media,
            source: self.latched,
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

    /// Ended sessions since the last call.
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
    /// Does not allocate.
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
        let (from, to, out_pair) = match u.facing {
            Facing::Key(b) => {
                let Some(br) = s.branches.get_mut(usize::from(b)) else {
                    return Forward::Drop(DropReason::UnknownPort);
                };
                let Some(Some(to)) = br.parties.get(m) else {
                    return Forward::Drop(DropReason::NoDestination);
                };
                (&mut media.key, to as &Party, media.branch_facing)
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
                                p.latched.is_none()
                                    && p.signalled.is_some_and(|a| a.ip() == src.ip())
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
                (from, &media.key, out)
            }
        };
        if !from.accept(src, rtcp, now, relatch) {
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

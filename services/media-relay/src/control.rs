//! The control plane: the gRPC service the edges call, over the workers' engines.
//!
//! A session lives on one worker. Offers and answers first look for it on every worker
//! (a lookup by tags, no allocation of ports); a new session goes to the worker with the
//! fewest sessions.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use grpc_auth::{Access, EDGE, EDGE_OR_ADMIN, HEALTH_CHECK, HEALTH_WATCH, Policy};
use media_core::{EndReason, Event, Family, Load, MediaError, MediaSpec, SessionInfo, SideStats};
use proto::media::v1 as pb;
use tonic::{Request, Response, Status};

use crate::config::MediaRelayConfig;
use crate::forward::{self, Shard, ShardState};
use crate::metrics::{CallLabel, Metrics, PortLabel, ReasonLabel, SideLabel};

/// The relay: its workers' shards and what the control plane needs.
#[derive(Debug)]
pub struct Relay {
    cfg: MediaRelayConfig,
    shards: Vec<Arc<Shard>>,
    metrics: Metrics,
    stop: Arc<AtomicBool>,
    draining: AtomicBool,
    /// Forwarded datagrams at the last sweep, and the rate since.
    last_packets: AtomicU64,
    pps: AtomicU64,
}

fn status(e: &MediaError) -> Status {
    match e {
        MediaError::Draining => Status::unavailable(e.to_string()),
        MediaError::NoPorts | MediaError::TooManySessions => {
            Status::resource_exhausted(e.to_string())
        }
        MediaError::NotFound => Status::not_found(e.to_string()),
        MediaError::Invalid(_) => Status::invalid_argument(e.to_string()),
    }
}

impl Relay {
    /// The shards and their running worker threads.
    pub fn new(
        cfg: MediaRelayConfig,
        metrics: Metrics,
    ) -> std::io::Result<(Relay, Vec<std::thread::JoinHandle<()>>)> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut shards = Vec::new();
        let mut threads = Vec::new();
        let coalesce =
            (cfg.coalesce_us > 0).then(|| std::time::Duration::from_micros(cfg.coalesce_us));
        for i in 0..cfg.workers {
            let (shard, poll) = Shard::new(cfg.engine(i, cfg.workers), cfg.bind_v4, cfg.bind_v6)?;
            let shard = Arc::new(shard);
            let (s, st, m) = (shard.clone(), stop.clone(), metrics.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("media-{i}"))
                    .spawn(move || forward::run(s, poll, st, m, coalesce))?,
            );
            shards.push(shard);
        }
        Ok((
            Relay {
                cfg,
                shards,
                metrics,
                stop,
                draining: AtomicBool::new(false),
                last_packets: AtomicU64::new(0),
                pps: AtomicU64::new(0),
            },
            threads,
        ))
    }

    /// Ask the workers to stop (they notice within their poll timeout).
    pub fn stop_workers(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Refuse or accept new sessions.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
        self.metrics.draining.set(i64::from(draining));
        for s in &self.shards {
            s.lock().engine.set_draining(draining);
        }
    }

    /// Over every worker.
    pub fn load(&self) -> Load {
        let mut total = Load {
            sessions: 0,
            pairs_in_use: 0,
            pairs_available: 0,
            draining: self.draining.load(Ordering::Relaxed),
        };
        for s in &self.shards {
            let l = s.lock().engine.load();
            total.sessions += l.sessions;
            total.pairs_in_use += l.pairs_in_use;
            total.pairs_available += l.pairs_available;
        }
        total
    }

    /// Report ended sessions and hijack attempts, and close the ended sessions' sockets.
    fn settle(&self, shard: &Shard, st: &mut ShardState) {
        self.settle_except(shard, st, None);
    }

    /// [`Relay::settle`], knowing that the call `unanswered` (deleted without the other
    /// party's tag: the edge's CANCEL or failure path) was never answered: its silence
    /// is no fault of the media.
    fn settle_except(&self, shard: &Shard, st: &mut ShardState, unanswered: Option<&str>) {
        for ev in st.engine.take_events() {
            match ev {
                Event::Ended { reason, info } => {
                    let answered = unanswered != Some(info.call_id.as_str());
                    self.ended(reason, &info, answered);
                }
                Event::ForeignSource {
                    call_id,
                    tag,
                    media,
                    source,
                    latched,
                    holds_latch,
                } => {
                    self.metrics.foreign_sources.inc();
                    let latched = latched.map_or_else(|| "none".to_owned(), |a| a.to_string());
                    if holds_latch {
                        tracing::warn!(
                            %call_id,
                            %tag,
                            media,
                            %source,
                            "foreign media source took a silent party's port (it gets the \
                             other party's media until the party sends again)"
                        );
                    } else {
                        tracing::warn!(
                            %call_id,
                            %tag,
                            media,
                            %source,
                            %latched,
                            "foreign media source (dropped, or displaced by the party's \
                             signalled address)"
                        );
                    }
                }
            }
        }
        shard.close_released(st);
    }

    fn ended(&self, reason: EndReason, info: &SessionInfo, answered: bool) {
        self.metrics
            .sessions_ended
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
        for side in &info.sides {
            if side.expected > 0 {
                self.metrics
                    .loss
                    .observe(side.lost as f64 / side.expected as f64);
                self.metrics.jitter.observe(side.jitter_ms / 1000.0);
            }
        }
        let sum = |f: fn(&SideStats) -> u64| info.sides.iter().map(f).sum::<u64>();
        let packets = sum(|s| s.packets);
        let lost = sum(|s| s.lost);
        let foreign_packets = sum(|s| s.foreign_packets);
        let relatches = sum(|s| s.relatches);
        // Per direction, over every media section: the offerer is the party whose SDP
        // created the session, the answerers every branch. A total and `lost=0` alone
        // look fine for a call that carried audio one way only, or none: packets that
        // never came, or that were dropped for their source, are not sequence loss.
        let offerer_packets: u64 = info
            .sides
            .iter()
            .filter(|s| s.tag == info.from_tag)
            .map(|s| s.packets)
            .sum();
        let answerer_packets = packets - offerer_packets;
        let silent = silent_side(info, offerer_packets, answerer_packets).filter(|_| answered);
        if let Some(side) = silent {
            self.metrics
                .sessions_without_media
                .get_or_create(&SideLabel { side })
                .inc();
        }
        macro_rules! log_end {
            ($level:ident, $msg:literal) => {
                tracing::$level!(
                    call_id = %info.call_id,
                    from_tag = %info.from_tag,
                    to_tags = %info.to_tags.join(","),
                    reason = reason.as_str(),
                    duration_ms = info.age.as_millis() as u64,
                    packets,
                    offerer_packets,
                    answerer_packets,
                    lost,
                    foreign_packets,
                    relatches,
                    silent = silent.unwrap_or("none"),
                    $msg
                )
            };
        }
        match silent {
            Some("both") => log_end!(warn, "media session ended without media"),
            Some(_) => log_end!(warn, "media session ended without media in one direction"),
            // A stranger that held a NAT'd party's latch is indistinguishable from the
            // party by its packets (they count as the party's); the phone's dropped ones
            // are the trace it leaves, so a call with drops is not ended quietly.
            None if foreign_packets > 0 => log_end!(
                warn,
                "media session ended with packets from foreign sources dropped"
            ),
            None => log_end!(info, "media session ended"),
        }
    }

    /// End idle and over-long sessions, refresh the gauges and the packet rate.
    pub fn sweep(&self, now: Instant) {
        for s in &self.shards {
            let mut st = s.lock();
            st.engine.sweep(now);
            self.settle(s, &mut st);
        }
        let l = self.load();
        let m = &self.metrics;
        m.sessions.set(l.sessions as i64);
        m.ports
            .get_or_create(&PortLabel { state: "in_use" })
            .set(l.pairs_in_use as i64);
        m.ports
            .get_or_create(&PortLabel { state: "available" })
            .set(l.pairs_available as i64);
        let total: u64 = ["rtp", "rtcp", "stun", "dtls", "other"]
            .into_iter()
            .map(|kind| {
                m.packets
                    .get_or_create(&crate::metrics::KindLabel { kind })
                    .get()
            })
            .sum();
        let before = self.last_packets.swap(total, Ordering::Relaxed);
        self.pps
            .store(total.saturating_sub(before), Ordering::Relaxed);
    }

    fn specs(&self, req: &pb::UpdateRequest) -> Result<Vec<MediaSpec>, Status> {
        if req.call_id.is_empty() || req.sender_tag.is_empty() {
            return Err(Status::invalid_argument(
                "call_id and sender_tag are required",
            ));
        }
        let mut out = Vec::with_capacity(req.media.len());
        let mut first_family = None;
        for m in &req.media {
            let addr = if m.address.is_empty() {
                None
            } else {
                Some(m.address.parse::<IpAddr>().map_err(|_| {
                    Status::invalid_argument(format!("media address {:?}", m.address))
                })?)
            };
            if first_family.is_none() {
                first_family = addr.map(Family::of);
            }
            let port = u16::try_from(m.port)
                .map_err(|_| Status::invalid_argument("media port above 65535"))?;
            let rtcp_port = m
                .rtcp_port
                .map(u16::try_from)
                .transpose()
                .map_err(|_| Status::invalid_argument("rtcp port above 65535"))?;
            out.push(MediaSpec {
                addr,
                port,
                rtcp_port,
                rtcp_mux: m.rtcp_mux,
                clock_rate: if m.clock_rate == 0 {
                    8000
                } else {
                    m.clock_rate
                },
                secure: m.secure,
                strict: req.strict,
                reply_family: Family::V4,
            });
        }
        let family = match pb::Family::try_from(req.reply_family) {
            Ok(pb::Family::Ipv4) => Family::V4,
            Ok(pb::Family::Ipv6) => Family::V6,
            _ => first_family.unwrap_or(if self.cfg.bind_v4.is_some() {
                Family::V4
            } else {
                Family::V6
            }),
        };
        if self.cfg.advertised(family == Family::V6).is_none() {
            return Err(Status::invalid_argument(format!(
                "this relay serves no {}",
                if family == Family::V6 { "IPv6" } else { "IPv4" }
            )));
        }
        for s in &mut out {
            s.reply_family = family;
        }
        Ok(out)
    }

    /// Offer (`create`) or answer.
    pub fn update(&self, req: &pb::UpdateRequest, create: bool) -> Result<pb::UpdateReply, Status> {
        let specs = self.specs(req)?;
        let peer = (!req.peer_tag.is_empty()).then_some(req.peer_tag.as_str());
        let now = Instant::now();
        let attempt = |shard: &Shard, create: bool| {
            let mut st = shard.lock();
            let before = st.engine.load().sessions;
            let st = &mut *st;
            let ShardState { engine, sockets } = st;
            let r = engine.update(
                &req.call_id,
                &req.sender_tag,
                peer,
                &specs,
                create,
                now,
                &mut |b| shard.open(sockets, b),
            );
            let created = st.engine.load().sessions > before;
            self.settle(shard, st);
            (r, created)
        };
        let mut found = None;
        for s in &self.shards {
            match attempt(s, false) {
                (Err(MediaError::NotFound), _) => continue,
                (r, _) => {
                    found = Some(r);
                    break;
                }
            }
        }
        let result = match found {
            Some(r) => r,
            None if !create => Err(MediaError::NotFound),
            None if self.draining.load(Ordering::Relaxed) => Err(MediaError::Draining),
            None => {
                let shard = self
                    .shards
                    .iter()
                    .min_by_key(|s| s.lock().engine.load().sessions)
                    .ok_or_else(|| status(&MediaError::NoPorts))?;
                let (r, created) = attempt(shard, true);
                if created {
                    self.metrics.sessions_started.inc();
                }
                r
            }
        };
        let ports = result.map_err(|e| status(&e))?;
        let family = specs.first().map_or(Family::V4, |s| s.reply_family);
        let address = self
            .cfg
            .advertised(family == Family::V6)
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        Ok(pb::UpdateReply {
            address,
            media: ports
                .iter()
                .map(|p| pb::LocalMedia {
                    port: u32::from(p.port),
                    rtcp_port: u32::from(p.rtcp_port),
                })
                .collect(),
            instance: self.cfg.instance.clone(),
        })
    }

    /// End a session.
    pub fn delete(&self, r: &pb::SessionRef) -> Result<SessionInfo, Status> {
        let other = (!r.other_tag.is_empty()).then_some(r.other_tag.as_str());
        let now = Instant::now();
        for s in &self.shards {
            let mut st = s.lock();
            match st.engine.delete(&r.call_id, &r.tag, other, now) {
                Ok(info) => {
                    // The edge names the other party only when it ends an established
                    // call (BYE); a CANCEL or failure deletes by the caller's tag alone.
                    let unanswered = other.is_none().then_some(r.call_id.as_str());
                    self.settle_except(s, &mut st, unanswered);
                    return Ok(info);
                }
                Err(MediaError::NotFound) => continue,
                Err(e) => return Err(status(&e)),
            }
        }
        Err(status(&MediaError::NotFound))
    }

    /// A session's statistics.
    pub fn query(&self, r: &pb::SessionRef) -> Option<SessionInfo> {
        let other = (!r.other_tag.is_empty()).then_some(r.other_tag.as_str());
        let now = Instant::now();
        self.shards
            .iter()
            .find_map(|s| s.lock().engine.query(&r.call_id, &r.tag, other, now))
    }

    fn load_report(&self) -> pb::LoadReport {
        let l = self.load();
        let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
        pb::LoadReport {
            instance: self.cfg.instance.clone(),
            sessions: n(l.sessions),
            pairs_in_use: n(l.pairs_in_use),
            pairs_available: n(l.pairs_available),
            draining: l.draining,
            packets_per_second: self.pps.load(Ordering::Relaxed) as f64,
            ipv6: self.cfg.advertised(true).is_some(),
        }
    }
}

/// Which side of an answered session sent nothing the relay took for its own:
/// `offerer`, `answerer` (every branch together) or `both`. `None` when both sent, or when
/// nobody answered (a failed or cancelled call has no media to miss).
/// Every side [`silent_side`] names (the `side` of `sessions_without_media`).
pub(crate) const SILENT_SIDES: [&str; 3] = ["offerer", "answerer", "both"];

fn silent_side(info: &SessionInfo, offerer: u64, answerer: u64) -> Option<&'static str> {
    if info.to_tags.is_empty() {
        return None;
    }
    let [offerer_side, answerer_side, both] = SILENT_SIDES;
    match (offerer, answerer) {
        (0, 0) => Some(both),
        (0, _) => Some(offerer_side),
        (_, 0) => Some(answerer_side),
        _ => None,
    }
}

fn to_pb(info: &SessionInfo) -> pb::SessionStats {
    pb::SessionStats {
        call_id: info.call_id.clone(),
        from_tag: info.from_tag.clone(),
        to_tags: info.to_tags.clone(),
        age_ms: info.age.as_millis() as u64,
        idle_ms: info.idle.as_millis() as u64,
        sides: info
            .sides
            .iter()
            .map(|s| pb::SideStats {
                tag: s.tag.clone(),
                media: s.media as u32,
                source: s.source.map(|a| a.to_string()).unwrap_or_default(),
                packets: s.packets,
                bytes: s.bytes,
                rtp_packets: s.rtp_packets,
                rtcp_packets: s.rtcp_packets,
                expected: s.expected,
                lost: s.lost,
                jitter_ms: s.jitter_ms,
                reported_fraction_lost: s.reported_fraction_lost,
                reported_lost: s.reported_lost,
                reported_jitter_ms: s.reported_jitter_ms,
                local_port: s.local_port.map_or(0, u32::from),
                foreign_packets: s.foreign_packets,
                relatches: s.relatches,
            })
            .collect(),
    }
}

/// Who may call each method (`grpc_auth` checks the caller's bearer token against it):
/// the edges (edge token) drive sessions; operators (admin token) may look at sessions
/// and load and drain a relay, never create, change or end a session (each one holds
/// relay ports).
pub static POLICY: Policy = Policy {
    api: "media relay control",
    methods: &[
        ("/sipcluster.media.v1.MediaRelay/Offer", EDGE),
        ("/sipcluster.media.v1.MediaRelay/Answer", EDGE),
        ("/sipcluster.media.v1.MediaRelay/Delete", EDGE),
        ("/sipcluster.media.v1.MediaRelay/Query", EDGE_OR_ADMIN),
        (
            "/sipcluster.media.v1.MediaRelay/ListSessions",
            EDGE_OR_ADMIN,
        ),
        ("/sipcluster.media.v1.MediaRelay/Drain", EDGE_OR_ADMIN),
        ("/sipcluster.media.v1.MediaRelay/Load", EDGE_OR_ADMIN),
        (HEALTH_CHECK, Access::Public),
        (HEALTH_WATCH, EDGE_OR_ADMIN),
    ],
};

/// Every call counted in `control_calls` (the `method` of each `count`).
pub(crate) const CONTROL_METHODS: [&str; 4] = ["offer", "answer", "delete", "query"];

/// The tonic service.
#[derive(Debug, Clone)]
pub struct Service {
    relay: Arc<Relay>,
}

impl Service {
    /// Serve `relay`.
    #[must_use]
    pub fn new(relay: Arc<Relay>) -> Service {
        Service { relay }
    }

    fn count<T>(&self, method: &'static str, r: &Result<T, Status>) {
        debug_assert!(
            CONTROL_METHODS.contains(&method),
            "{method} not in CONTROL_METHODS"
        );
        let code =
            telemetry::grpc_code_name(r.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok));
        self.relay
            .metrics
            .calls
            .get_or_create(&CallLabel { method, code })
            .inc();
    }
}

#[tonic::async_trait]
impl pb::media_relay_server::MediaRelay for Service {
    async fn offer(
        &self,
        req: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateReply>, Status> {
        telemetry::trace::record_call_id(&req.get_ref().call_id);
        let r = self.relay.update(req.get_ref(), true);
        self.count("offer", &r);
        r.map(Response::new)
    }

    async fn answer(
        &self,
        req: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateReply>, Status> {
        telemetry::trace::record_call_id(&req.get_ref().call_id);
        let r = self.relay.update(req.get_ref(), false);
        self.count("answer", &r);
        r.map(Response::new)
    }

    async fn delete(
        &self,
        req: Request<pb::SessionRef>,
    ) -> Result<Response<pb::SessionStats>, Status> {
        telemetry::trace::record_call_id(&req.get_ref().call_id);
        let r = self.relay.delete(req.get_ref()).map(|i| to_pb(&i));
        self.count("delete", &r);
        r.map(Response::new)
    }

    async fn query(
        &self,
        req: Request<pb::SessionRef>,
    ) -> Result<Response<pb::SessionStats>, Status> {
        telemetry::trace::record_call_id(&req.get_ref().call_id);
        let r = self
            .relay
            .query(req.get_ref())
            .map(|i| to_pb(&i))
            .ok_or_else(|| Status::not_found("no such session"));
        self.count("query", &r);
        r.map(Response::new)
    }

    async fn list_sessions(
        &self,
        _req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsReply>, Status> {
        let now = Instant::now();
        let sessions = self
            .relay
            .shards
            .iter()
            .flat_map(|s| s.lock().engine.list(now))
            .map(|i| to_pb(&i))
            .collect();
        Ok(Response::new(pb::ListSessionsReply { sessions }))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::LoadReport>, Status> {
        self.relay.set_draining(req.get_ref().draining);
        tracing::info!(draining = req.get_ref().draining, "drain set over the API");
        Ok(Response::new(self.relay.load_report()))
    }

    async fn load(
        &self,
        _req: Request<pb::LoadRequest>,
    ) -> Result<Response<pb::LoadReport>, Status> {
        Ok(Response::new(self.relay.load_report()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `CONTROL_METHODS` are the methods `count` is called with.
    #[test]
    fn control_methods_are_what_the_service_counts() {
        let src = include_str!("control.rs");
        let mut counted: Vec<&str> = src
            .split(concat!("self.count", "(\""))
            .skip(1)
            .map(|rest| &rest[..rest.find('"').unwrap()])
            .collect();
        counted.sort_unstable();
        let mut listed = CONTROL_METHODS.to_vec();
        listed.sort_unstable();
        assert_eq!(counted, listed);
    }

    #[test]
    fn every_rpc_of_the_proto_has_its_roles_and_only_edges_hold_ports() {
        let proto = include_str!("../../../proto/sipcluster/media/v1/relay.proto");
        assert_eq!(POLICY.unlisted(proto), Vec::<String>::new());
        for m in ["Offer", "Answer", "Delete"] {
            let path = format!("/sipcluster.media.v1.MediaRelay/{m}");
            assert_eq!(POLICY.access(&path), Some(EDGE), "{m}");
        }
    }
}

//! The session table without sockets: offers and answers, latching, forks, timeouts,
//! quarantine.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use media_core::packet::Kind;
use media_core::{
    Binding, DropReason, EndReason, Engine, EngineConfig, Event, Family, Forward, LocalMedia,
    MediaError, MediaSpec,
};

fn cfg() -> EngineConfig {
    EngineConfig {
        port_min: 40_000,
        port_max: 40_019, // 10 pairs
        quarantine: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        max_duration: Duration::from_secs(3600),
        max_sessions: 100,
        relatch_after: Duration::from_secs(2),
    }
}

fn spec(ip: &str, port: u16) -> MediaSpec {
    MediaSpec {
        addr: Some(ip.parse().expect("ip")),
        port,
        rtcp_port: None,
        rtcp_mux: false,
        clock_rate: 8000,
        secure: false,
        strict: false,
        reply_family: Family::V4,
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.resize(172, 0xd5);
    p
}

/// The engine plus the sockets a driver would hold.
struct Relay {
    e: Engine,
    open: HashSet<(u16, Family)>,
    refuse: HashSet<u16>,
}

impl Relay {
    fn new(cfg: EngineConfig) -> Relay {
        Relay {
            e: Engine::new(cfg),
            open: HashSet::new(),
            refuse: HashSet::new(),
        }
    }

    fn update(
        &mut self,
        call: &str,
        sender: &str,
        peer: Option<&str>,
        media: &[MediaSpec],
        create: bool,
        now: Instant,
    ) -> Result<Vec<LocalMedia>, MediaError> {
        let (open, refuse) = (&mut self.open, &self.refuse);
        let r = self
            .e
            .update(call, sender, peer, media, create, now, &mut |b: Binding| {
                if refuse.contains(&b.port) {
                    return false;
                }
                open.insert((b.port, b.family));
                true
            });
        self.sync();
        r
    }

    /// Close what the engine released, as the driver does after each call.
    fn sync(&mut self) {
        for b in self.e.take_closed() {
            self.open.remove(&(b.port, b.family));
        }
    }

    fn offer(&mut self, call: &str, from: &str, m: MediaSpec, now: Instant) -> LocalMedia {
        self.update(call, from, None, &[m], true, now)
            .expect("offer")[0]
    }

    fn answer(
        &mut self,
        call: &str,
        to: &str,
        from: &str,
        m: MediaSpec,
        now: Instant,
    ) -> LocalMedia {
        self.update(call, to, Some(from), &[m], false, now)
            .expect("answer")[0]
    }

    fn send(&mut self, port: u16, src: &str, now: Instant) -> Forward {
        assert!(
            self.open.contains(&(port, Family::V4)),
            "nobody would receive on {port}: the driver has no socket there"
        );
        self.e.on_packet(port, Family::V4, sa(src), &rtp(1), now)
    }
}

fn sent(port: u16, to: &str) -> Forward {
    Forward::Send {
        port,
        to: sa(to),
        kind: Kind::Rtp,
    }
}

#[test]
fn offer_answer_and_symmetric_latching() {
    let t = Instant::now();
    let mut r = Relay::new(cfg());
    // The caller (behind a NAT) says 10.0.0.1:4000; the callee says 192.0.2.9:5000.
    let to_callee = r.offer("c1", "ft", spec("10.0.0.1", 4000), t);
    let to_caller = r.answer("c1", "tt", "ft", spec("192.0.2.9", 5000), t);
    assert_ne!(to_callee.port, to_caller.port);
    assert_eq!(to_callee.rtcp_port, to_callee.port + 1);
    // The callee's packet goes to the caller's signalled address, from the caller's port.
    assert_eq!(
        r.send(to_callee.port, "192.0.2.9:5000", t),
        sent(to_caller.port, "10.0.0.1:4000")
    );
    // The caller's first packet comes from its NAT: latched, and from now on the callee's
    // packets go there.
    assert_eq!(
        r.send(to_caller.port, "203.0.113.7:61000", t),
        sent(to_callee.port, "192.0.2.9:5000")
    );
    assert_eq!(
        r.send(to_callee.port, "192.0.2.9:5000", t),
        sent(to_caller.port, "203.0.113.7:61000")
    );
    // A third party on the caller's port while the caller is active: dropped.
    assert_eq!(
        r.send(
            to_caller.port,
            "198.51.100.66:1234",
            t + Duration::from_millis(100)
        ),
        Forward::Drop(DropReason::WrongSource)
    );
    // After the latched source has been quiet for the relatch time, a new source takes
    // over (the NAT rebound).
    assert_eq!(
        r.send(
            to_caller.port,
            "203.0.113.7:62000",
            t + Duration::from_secs(3)
        ),
        sent(to_callee.port, "192.0.2.9:5000")
    );
    // Idempotent: the same offer and answer again return the same ports.
    assert_eq!(r.offer("c1", "ft", spec("10.0.0.1", 4000), t), to_callee);
    assert_eq!(
        r.answer("c1", "tt", "ft", spec("192.0.2.9", 5000), t),
        to_caller
    );
    assert_eq!(r.e.load().sessions, 1);
}

#[test]
fn strict_mode_accepts_only_the_signalled_address() {
    let t = Instant::now();
    let mut r = Relay::new(cfg());
    let mut a = spec("192.0.2.1", 4000);
    a.strict = true;
    let to_b = r.offer("c", "ft", a, t);
    let to_a = r.answer("c", "tt", "ft", spec("192.0.2.2", 6000), t);
    assert_eq!(
        r.send(to_a.port, "203.0.113.7:4000", t),
        Forward::Drop(DropReason::WrongSource)
    );
    assert_eq!(
        r.send(to_a.port, "192.0.2.1:4000", t),
        sent(to_b.port, "192.0.2.2:6000")
    );
}

#[test]
fn rtcp_goes_odd_to_odd_and_mux_stays_on_the_rtp_port() {
    let t = Instant::now();
    let mut r = Relay::new(cfg());
    let to_b = r.offer("c", "ft", spec("192.0.2.1", 4000), t);
    let to_a = r.answer("c", "tt", "ft", spec("192.0.2.2", 6000), t);
    let mut rr = vec![0x81, 201, 0, 7, 0, 0, 0, 1, 1, 2, 3, 4, 10];
    rr.extend_from_slice(&[0, 0, 5]); // 5 lost
    rr.extend_from_slice(&[0, 0, 0, 100, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0]);
    let f =
        r.e.on_packet(to_a.rtcp_port, Family::V4, sa("192.0.2.1:4001"), &rr, t);
    assert_eq!(
        f,
        Forward::Send {
            port: to_b.rtcp_port,
            to: sa("192.0.2.2:6001"),
            kind: Kind::Rtcp
        }
    );
    let info = r.e.query("c", "ft", None, t).expect("session");
    let a = &info.sides[0];
    assert_eq!((a.tag.as_str(), a.rtcp_packets), ("ft", 1));
    assert_eq!(a.reported_lost, Some(5));
    assert_eq!(a.reported_jitter_ms, Some(2.0)); // 16 units at 8 kHz

    // With rtcp-mux on both sides, RTCP rides the RTP ports.
    let mut m = spec("192.0.2.1", 4000);
    m.rtcp_mux = true;
    let to_b = r.offer("m", "ft", m.clone(), t);
    m.addr = Some("192.0.2.2".parse().expect("ip"));
    let to_a = r.answer("m", "tt", "ft", m, t);
    assert_eq!(to_a.rtcp_port, to_a.port);
    let f =
        r.e.on_packet(to_a.port, Family::V4, sa("192.0.2.1:4000"), &rr, t);
    assert_eq!(
        f,
        Forward::Send {
            port: to_b.port,
            to: sa("192.0.2.2:4000"),
            kind: Kind::Rtcp
        }
    );
    // The caller-facing pair of a muxed answer opened only its RTP port.
    assert!(!r.open.contains(&(to_a.port + 1, Family::V4)));
}

#[test]
fn forked_answers_each_get_their_own_ports() {
    let t = Instant::now();
    let mut r = Relay::new(cfg());
    let to_forks = r.offer("f", "ft", spec("192.0.2.1", 4000), t);
    let to_a_from_1 = r.answer("f", "fork1", "ft", spec("192.0.2.11", 5000), t);
    let to_a_from_2 = r.answer("f", "fork2", "ft", spec("192.0.2.12", 5000), t);
    assert_ne!(to_a_from_1.port, to_a_from_2.port);
    // Early media from each fork reaches the caller from that fork's port.
    assert_eq!(
        r.send(to_forks.port, "192.0.2.12:5000", t),
        sent(to_a_from_2.port, "192.0.2.1:4000")
    );
    assert_eq!(
        r.send(to_forks.port, "192.0.2.11:5000", t),
        sent(to_a_from_1.port, "192.0.2.1:4000")
    );
    // The caller's packets on fork 1's port go to fork 1.
    assert_eq!(
        r.send(to_a_from_1.port, "192.0.2.1:4000", t),
        sent(to_forks.port, "192.0.2.11:5000")
    );
    // A stranger on the shared port cannot be told apart: dropped.
    assert_eq!(
        r.send(to_forks.port, "198.51.100.1:7000", t),
        Forward::Drop(DropReason::UnknownFork)
    );
    let info = r.e.query("f", "ft", None, t).expect("session");
    assert_eq!(info.to_tags, vec!["fork1", "fork2"]);
}

#[test]
fn reinvite_from_the_callee_and_late_offer() {
    let t = Instant::now();
    let mut r = Relay::new(cfg());
    let to_b = r.offer("r", "ft", spec("192.0.2.1", 4000), t);
    let to_a = r.answer("r", "tt", "ft", spec("192.0.2.2", 6000), t);
    // The callee re-INVITEs (From = its tag, To = the caller's) moving its media: the
    // caller is told the same port; packets now go to the new address.
    let again = r
        .update("r", "tt", Some("ft"), &[spec("192.0.2.3", 7000)], true, t)
        .expect("reoffer")[0];
    assert_eq!(again, to_a);
    assert_eq!(
        r.send(to_a.port, "192.0.2.1:4000", t),
        sent(to_b.port, "192.0.2.3:7000")
    );
    // The caller's answer to it keeps the callee-facing port.
    let back = r
        .update("r", "ft", Some("tt"), &[spec("192.0.2.1", 4000)], false, t)
        .expect("answer")[0];
    assert_eq!(back, to_b);

    // Late offer: INVITE without SDP, the 200 carries the callee's offer, the ACK the
    // caller's answer.
    let to_caller = r.offer("late", "callee", spec("192.0.2.9", 8000), t);
    let to_callee = r.answer("late", "caller", "callee", spec("192.0.2.8", 9000), t);
    assert_eq!(
        r.send(to_callee.port, "192.0.2.9:8000", t),
        sent(to_caller.port, "192.0.2.8:9000")
    );
    // BYE names both tags either way round.
    assert!(r.e.delete("late", "caller", Some("callee"), t).is_ok());
    assert_eq!(
        r.e.delete("late", "callee", None, t),
        Err(MediaError::NotFound)
    );
}

#[test]
fn answers_for_unknown_calls_and_drain() {
    let t = Instant::now();
    let mut r = Relay::new(cfg());
    assert_eq!(
        r.update("x", "tt", Some("ft"), &[spec("192.0.2.1", 4000)], false, t),
        Err(MediaError::NotFound)
    );
    r.offer("kept", "ft", spec("192.0.2.1", 4000), t);
    r.e.set_draining(true);
    assert_eq!(
        r.update("new", "ft", None, &[spec("192.0.2.1", 4000)], true, t),
        Err(MediaError::Draining)
    );
    // An existing session still gets its answer while draining.
    assert!(
        r.update(
            "kept",
            "tt",
            Some("ft"),
            &[spec("192.0.2.2", 5000)],
            false,
            t
        )
        .is_ok()
    );
    assert!(r.e.load().draining);
}

#[test]
fn ports_are_quarantined_after_delete_and_late_packets_find_nothing() {
    let t = Instant::now();
    let mut r = Relay::new(cfg());
    let to_b = r.offer("q", "ft", spec("192.0.2.1", 4000), t);
    let to_a = r.answer("q", "tt", "ft", spec("192.0.2.2", 6000), t);
    let info = r.e.delete("q", "ft", Some("tt"), t).expect("deleted");
    r.sync();
    assert_eq!(info.call_id, "q");
    assert!(
        r.open.is_empty(),
        "every socket of the session is closed: {:?}",
        r.open
    );
    assert_eq!(r.e.quarantined(), 2);
    // A late packet of the old call finds no session.
    assert_eq!(
        r.e.on_packet(to_a.port, Family::V4, sa("192.0.2.1:4000"), &rtp(9), t),
        Forward::Drop(DropReason::UnknownPort)
    );
    // Eight other calls use the eight fresh pairs; the ninth finds none free until the
    // quarantine ends, then gets a quarantined one back.
    for i in 0..4 {
        r.offer(&format!("n{i}"), "ft", spec("192.0.2.1", 4000), t);
        r.answer(&format!("n{i}"), "tt", "ft", spec("192.0.2.2", 5000), t);
    }
    assert_eq!(
        r.update("late", "ft", None, &[spec("192.0.2.1", 4000)], true, t),
        Err(MediaError::NoPorts)
    );
    assert_eq!(
        r.e.load().sessions,
        4,
        "a failed offer leaves no session behind"
    );
    let reused = r.offer(
        "late",
        "ft",
        spec("192.0.2.1", 4000),
        t + Duration::from_secs(5),
    );
    assert!([to_a.port, to_b.port].contains(&reused.port));
}

#[test]
fn a_port_someone_else_holds_is_skipped() {
    let t = Instant::now();
    let mut r = Relay::new(cfg());
    r.refuse.insert(40_000);
    r.refuse.insert(40_003); // the odd half of the second pair
    let got = r.offer("c", "ft", spec("192.0.2.1", 4000), t);
    assert_eq!(got.port, 40_004);
    assert_eq!(r.open.len(), 2, "{:?}", r.open);
}

#[test]
fn idle_and_max_duration_end_sessions_with_an_event() {
    let t = Instant::now();
    let mut c = cfg();
    c.max_duration = Duration::from_secs(100);
    let mut r = Relay::new(c);
    let to_b = r.offer("idle", "ft", spec("192.0.2.1", 4000), t);
    r.answer("idle", "tt", "ft", spec("192.0.2.2", 6000), t);
    let to_a2 = {
        r.offer("busy", "ft", spec("192.0.2.1", 4002), t);
        r.answer("busy", "tt", "ft", spec("192.0.2.2", 6002), t)
    };
    // "busy" keeps sending; "idle" only sent at the start.
    r.send(to_b.port, "192.0.2.2:6000", t);
    let mut now = t;
    for _ in 0..40 {
        now += Duration::from_secs(1);
        r.send(to_a2.port, "192.0.2.1:4002", now);
        r.e.sweep(now);
    }
    let ended: Vec<(String, EndReason)> =
        r.e.take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Ended { reason, info } => Some((info.call_id, reason)),
                Event::ForeignSource { .. } => None,
            })
            .collect();
    assert_eq!(ended, vec![("idle".to_owned(), EndReason::Idle)]);
    // The busy one runs into the maximum duration.
    for _ in 0..70 {
        now += Duration::from_secs(1);
        r.send(to_a2.port, "192.0.2.1:4002", now);
        r.e.sweep(now);
    }
    let ended: Vec<EndReason> =
        r.e.take_events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Ended { reason, .. } => Some(reason),
                Event::ForeignSource { .. } => None,
            })
            .collect();
    assert_eq!(ended, vec![EndReason::MaxDuration]);
    assert_eq!(r.e.load().sessions, 0);
}

#[test]
fn stats_count_both_directions() {
    let t = Instant::now();
    let mut r = Relay::new(cfg());
    let to_b = r.offer("s", "ft", spec("192.0.2.1", 4000), t);
    let to_a = r.answer("s", "tt", "ft", spec("192.0.2.2", 6000), t);
    for seq in 0..100u16 {
        let at = t + Duration::from_millis(20 * u64::from(seq));
        if seq != 50 {
            r.e.on_packet(to_a.port, Family::V4, sa("192.0.2.1:4000"), &rtp(seq), at);
        }
        r.e.on_packet(to_b.port, Family::V4, sa("192.0.2.2:6000"), &rtp(seq), at);
    }
    let info =
        r.e.delete("s", "ft", None, t + Duration::from_secs(2))
            .expect("info");
    let by_tag = |tag: &str| {
        info.sides
            .iter()
            .find(|s| s.tag == tag)
            .cloned()
            .expect("side")
    };
    let a = by_tag("ft");
    let b = by_tag("tt");
    assert_eq!(
        (a.packets, a.bytes, a.expected, a.lost),
        (99, 99 * 172, 100, 1)
    );
    assert_eq!((b.packets, b.expected, b.lost), (100, 100, 0));
    assert!(b.jitter_ms < 0.01, "{}", b.jitter_ms);
    assert_eq!(a.source, Some(sa("192.0.2.1:4000")));
}

#[test]
fn ipv6_parties_get_ipv6_ports() {
    let t = Instant::now();
    let mut r = Relay::new(cfg());
    let mut a = spec("2001:db8::1", 4000);
    a.reply_family = Family::V6;
    let to_b = r.offer("v6", "ft", a, t);
    assert_eq!(to_b.family, Family::V6);
    let mut b = spec("2001:db8::2", 6000);
    b.reply_family = Family::V6;
    let to_a = r.answer("v6", "tt", "ft", b, t);
    let src: IpAddr = "2001:db8::1".parse().expect("ip");
    assert_eq!(
        r.e.on_packet(
            to_a.port,
            Family::V6,
            SocketAddr::new(src, 4000),
            &rtp(1),
            t
        ),
        sent(to_b.port, "[2001:db8::2]:6000")
    );
    // The same port number on IPv4 is not this session's.
    assert_eq!(
        r.e.on_packet(to_a.port, Family::V4, sa("192.0.2.1:4000"), &rtp(1), t),
        Forward::Drop(DropReason::UnknownPort)
    );
}

/// The hijack attempts reported so far: (tag, foreign source, source kept).
fn foreign_events(e: &mut Engine) -> Vec<(String, SocketAddr, Option<SocketAddr>)> {
    e.take_events()
        .into_iter()
        .filter_map(|ev| match ev {
            Event::ForeignSource {
                tag,
                source,
                latched,
                media,
                ..
            } => {
                assert_eq!(media, 0);
                Some((tag, source, latched))
            }
            Event::Ended { .. } => None,
        })
        .collect()
}

#[test]
fn a_foreign_sender_that_starts_first_is_displaced_by_the_signalled_parties() {
    let t = Instant::now();
    let ms = |n: u64| t + Duration::from_millis(n);
    let mut r = Relay::new(cfg());
    let to_callee = r.offer("h", "ft", spec("192.0.2.1", 4000), t);
    let to_caller = r.answer("h", "tt", "ft", spec("192.0.2.2", 6000), t);
    let stranger = "198.51.100.66:1234";
    // The stranger finds both relay ports before either phone sends, and keeps sending:
    // with nothing latched yet, it is taken for each party (latching cannot know better),
    // so for now it hears itself.
    assert_eq!(
        r.send(to_caller.port, stranger, t),
        sent(to_callee.port, "192.0.2.2:6000")
    );
    assert_eq!(
        r.send(to_callee.port, stranger, t),
        sent(to_caller.port, stranger)
    );
    // Then the phones speak from the addresses their SDP named, 20 ms apart, while the
    // stranger goes on between their packets. Each phone's first packet already latches
    // it; from the moment both have sent, each hears the other, never the stranger.
    let mut foreign = 0;
    for i in 1..=50u64 {
        let now = ms(20 * i);
        let callee = if i == 1 { stranger } else { "192.0.2.2:6000" };
        assert_eq!(
            r.send(to_caller.port, "192.0.2.1:4000", now),
            sent(to_callee.port, callee),
            "caller's packet {i}"
        );
        assert_eq!(
            r.send(to_callee.port, "192.0.2.2:6000", now),
            sent(to_caller.port, "192.0.2.1:4000"),
            "callee's packet {i}"
        );
        for port in [to_caller.port, to_callee.port] {
            assert_eq!(
                r.send(port, stranger, now + Duration::from_millis(5)),
                Forward::Drop(DropReason::WrongSource)
            );
        }
        foreign += 1;
    }
    // One report per party, however long the stranger goes on.
    let mut events = foreign_events(&mut r.e);
    events.sort();
    assert_eq!(
        events,
        vec![
            ("ft".to_owned(), sa(stranger), Some(sa("192.0.2.1:4000"))),
            ("tt".to_owned(), sa(stranger), Some(sa("192.0.2.2:6000"))),
        ]
    );
    let info = r.e.delete("h", "ft", None, ms(2000)).expect("info");
    for side in &info.sides {
        // The stranger's first packet was taken for the party's; its 50 others were not.
        assert_eq!(
            (side.packets, side.foreign_packets, side.relatches),
            (51, foreign, 1),
            "{side:?}"
        );
    }
    assert!(
        foreign_events(&mut r.e).is_empty(),
        "no more reports at the end"
    );
}

#[test]
fn a_natted_party_still_latches_and_relatches_after_silence() {
    let t = Instant::now();
    let mut r = Relay::new(cfg());
    // The caller signals a private address its packets never come from.
    let to_callee = r.offer("n", "ft", spec("10.0.0.1", 4000), t);
    let to_caller = r.answer("n", "tt", "ft", spec("192.0.2.9", 5000), t);
    assert_eq!(
        r.send(to_caller.port, "203.0.113.7:61000", t),
        sent(to_callee.port, "192.0.2.9:5000")
    );
    assert_eq!(
        r.send(to_callee.port, "192.0.2.9:5000", t),
        sent(to_caller.port, "203.0.113.7:61000")
    );
    // A stranger while the caller is active: dropped, reported once.
    for i in 1..=3 {
        assert_eq!(
            r.send(
                to_caller.port,
                "198.51.100.66:1234",
                t + Duration::from_millis(100 * i)
            ),
            Forward::Drop(DropReason::WrongSource)
        );
    }
    assert_eq!(
        foreign_events(&mut r.e),
        vec![(
            "ft".to_owned(),
            sa("198.51.100.66:1234"),
            Some(sa("203.0.113.7:61000"))
        )]
    );
    // The NAT rebinds: after the relatch time of silence the new mapping takes over.
    let later = t + Duration::from_secs(3);
    assert_eq!(
        r.send(to_caller.port, "203.0.113.7:62000", later),
        sent(to_callee.port, "192.0.2.9:5000")
    );
    assert_eq!(
        r.send(to_callee.port, "192.0.2.9:5000", later),
        sent(to_caller.port, "203.0.113.7:62000")
    );
    assert!(
        foreign_events(&mut r.e).is_empty(),
        "a rebinding is no hijack"
    );
    let info = r.e.query("n", "ft", None, later).expect("info");
    let caller = &info.sides[0];
    assert_eq!(caller.tag, "ft");
    assert_eq!(
        (caller.packets, caller.foreign_packets, caller.relatches),
        (2, 3, 1)
    );
    assert_eq!(caller.source, Some(sa("203.0.113.7:62000")));

    // What no rule can tell: a stranger first on a NAT'd party's port scores as well as
    // the phone. It keeps the latch while it sends, but it is reported and the phone's
    // dropped packets are counted; once it stops, the phone gets the port.
    let to_callee = r.offer("n2", "ft", spec("10.0.0.1", 4000), t);
    let to_caller = r.answer("n2", "tt", "ft", spec("192.0.2.9", 5000), t);
    r.send(to_caller.port, "198.51.100.66:1234", t);
    assert_eq!(
        r.send(to_caller.port, "203.0.113.7:61000", t),
        Forward::Drop(DropReason::WrongSource)
    );
    assert_eq!(
        foreign_events(&mut r.e),
        vec![(
            "ft".to_owned(),
            sa("203.0.113.7:61000"),
            Some(sa("198.51.100.66:1234"))
        )]
    );
    assert_eq!(
        r.send(
            to_caller.port,
            "203.0.113.7:61000",
            t + Duration::from_secs(2)
        ),
        sent(to_callee.port, "192.0.2.9:5000")
    );
}

#[test]
fn a_stranger_cannot_displace_an_active_signalled_source() {
    let t = Instant::now();
    let mut r = Relay::new(cfg());
    let to_callee = r.offer("s", "ft", spec("192.0.2.1", 4000), t);
    let to_caller = r.answer("s", "tt", "ft", spec("192.0.2.2", 6000), t);
    assert_eq!(
        r.send(to_caller.port, "192.0.2.1:4000", t),
        sent(to_callee.port, "192.0.2.2:6000")
    );
    // Neither another host nor another port of the caller's own host takes its place
    // while it sends.
    let mut now = t;
    for _ in 0..10 {
        now += Duration::from_millis(500);
        assert_eq!(
            r.send(to_caller.port, "192.0.2.1:4000", now),
            sent(to_callee.port, "192.0.2.2:6000")
        );
        for stranger in ["198.51.100.66:1234", "192.0.2.1:4444"] {
            assert_eq!(
                r.send(to_caller.port, stranger, now + Duration::from_millis(1)),
                Forward::Drop(DropReason::WrongSource)
            );
        }
    }
    assert_eq!(
        r.send(to_callee.port, "192.0.2.2:6000", now),
        sent(to_caller.port, "192.0.2.1:4000")
    );
    assert_eq!(
        foreign_events(&mut r.e),
        vec![(
            "ft".to_owned(),
            sa("198.51.100.66:1234"),
            Some(sa("192.0.2.1:4000"))
        )]
    );
    // The caller falls silent for the relatch time: a stranger may take the port (the
    // phone may have moved), but the caller's next packet wins it back at once.
    now += Duration::from_secs(3);
    assert_eq!(
        r.send(to_caller.port, "198.51.100.66:1234", now),
        sent(to_callee.port, "192.0.2.2:6000")
    );
    now += Duration::from_millis(20);
    assert_eq!(
        r.send(to_caller.port, "192.0.2.1:4000", now),
        sent(to_callee.port, "192.0.2.2:6000")
    );
    assert_eq!(
        r.send(to_callee.port, "192.0.2.2:6000", now),
        sent(to_caller.port, "192.0.2.1:4000")
    );
    // A source on the signalled host (a NAT that kept the IP but not the port) also
    // displaces a stranger from another host.
    let to_callee = r.offer("s2", "ft", spec("192.0.2.1", 4000), t);
    let to_caller = r.answer("s2", "tt", "ft", spec("192.0.2.2", 6000), t);
    r.send(to_caller.port, "198.51.100.66:1234", t);
    assert_eq!(
        r.send(to_caller.port, "192.0.2.1:4444", t),
        sent(to_callee.port, "192.0.2.2:6000")
    );
    assert_eq!(
        r.send(to_caller.port, "198.51.100.66:1234", t),
        Forward::Drop(DropReason::WrongSource)
    );
}

#[test]
fn strict_mode_drops_counts_and_reports_strangers() {
    let t = Instant::now();
    let mut r = Relay::new(cfg());
    let mut a = spec("192.0.2.1", 4000);
    a.strict = true;
    let to_b = r.offer("c", "ft", a, t);
    let to_a = r.answer("c", "tt", "ft", spec("192.0.2.2", 6000), t);
    // Before and after the signalled address sent, nothing else gets through.
    for src in ["203.0.113.7:4000", "192.0.2.1:4000", "203.0.113.7:4000"] {
        let want = if src == "192.0.2.1:4000" {
            sent(to_b.port, "192.0.2.2:6000")
        } else {
            Forward::Drop(DropReason::WrongSource)
        };
        assert_eq!(r.send(to_a.port, src, t), want, "{src}");
    }
    assert_eq!(
        foreign_events(&mut r.e),
        vec![("ft".to_owned(), sa("203.0.113.7:4000"), None)]
    );
    let info = r.e.query("c", "ft", None, t).expect("info");
    assert_eq!(
        (info.sides[0].foreign_packets, info.sides[0].relatches),
        (2, 0)
    );
}

#[test]
fn moving_media_latches_the_new_address_at_once_and_is_no_hijack() {
    let t = Instant::now();
    let ms = |n: u64| t + Duration::from_millis(n);
    let mut r = Relay::new(cfg());
    let to_b = r.offer("m", "ft", spec("192.0.2.1", 4000), t);
    let to_a = r.answer("m", "tt", "ft", spec("192.0.2.2", 6000), t);
    r.send(to_b.port, "192.0.2.2:6000", t);
    // The callee re-INVITEs to another address; its old stream runs on a little.
    r.update(
        "m",
        "tt",
        Some("ft"),
        &[spec("192.0.2.3", 7000)],
        true,
        ms(10),
    )
    .expect("reoffer");
    assert_eq!(
        r.send(to_a.port, "192.0.2.1:4000", ms(15)),
        sent(to_b.port, "192.0.2.3:7000"),
        "the callee is sent to where it moved"
    );
    assert_eq!(
        r.send(to_b.port, "192.0.2.2:6000", ms(20)),
        sent(to_a.port, "192.0.2.1:4000")
    );
    assert_eq!(
        r.send(to_b.port, "192.0.2.3:7000", ms(40)),
        sent(to_a.port, "192.0.2.1:4000"),
        "the new stream does not wait for the old one to fall silent"
    );
    assert_eq!(
        r.send(to_b.port, "192.0.2.2:6000", ms(45)),
        Forward::Drop(DropReason::WrongSource)
    );
    assert_eq!(
        r.send(to_a.port, "192.0.2.1:4000", ms(60)),
        sent(to_b.port, "192.0.2.3:7000")
    );

    // The same for a NAT'd caller whose private address changed: its new public source
    // takes over from the old one at once.
    r.update(
        "m",
        "ft",
        Some("tt"),
        &[spec("10.0.0.1", 4000)],
        false,
        ms(100),
    )
    .expect("answer");
    r.send(to_a.port, "203.0.113.7:61000", ms(110));
    r.update(
        "m",
        "ft",
        Some("tt"),
        &[spec("10.0.0.5", 4000)],
        false,
        ms(200),
    )
    .expect("answer");
    r.send(to_a.port, "203.0.113.7:61000", ms(210));
    assert_eq!(
        r.send(to_a.port, "203.0.113.8:50000", ms(220)),
        sent(to_b.port, "192.0.2.3:7000")
    );
    assert_eq!(
        r.send(to_b.port, "192.0.2.3:7000", ms(230)),
        sent(to_a.port, "203.0.113.8:50000")
    );
    assert!(
        foreign_events(&mut r.e).is_empty(),
        "a party's own old stream is no stranger"
    );
}

#[test]
fn a_fork_gets_its_signalled_address_back_from_a_stranger() {
    let t = Instant::now();
    let mut r = Relay::new(cfg());
    let to_forks = r.offer("f", "ft", spec("192.0.2.1", 4000), t);
    let to_a_from_1 = r.answer("f", "fork1", "ft", spec("192.0.2.11", 5000), t);
    r.answer("f", "fork2", "ft", spec("192.0.2.12", 5000), t);
    // Another port of fork 1's host sends first: taken for fork 1 (a NAT'd fork would).
    assert_eq!(
        r.send(to_forks.port, "192.0.2.11:9999", t),
        sent(to_a_from_1.port, "192.0.2.1:4000")
    );
    // Fork 1's signalled address still names it and wins its port back.
    assert_eq!(
        r.send(to_forks.port, "192.0.2.11:5000", t),
        sent(to_a_from_1.port, "192.0.2.1:4000")
    );
    assert_eq!(
        r.send(to_a_from_1.port, "192.0.2.1:4000", t),
        sent(to_forks.port, "192.0.2.11:5000")
    );
    assert_eq!(
        foreign_events(&mut r.e),
        vec![(
            "fork1".to_owned(),
            sa("192.0.2.11:9999"),
            Some(sa("192.0.2.11:5000"))
        )]
    );
}

fn held(port: u16) -> MediaSpec {
    MediaSpec {
        addr: Some("0.0.0.0".parse().expect("ip")),
        ..spec("0.0.0.0", port)
    }
}

#[test]
fn resuming_a_hold_on_another_address_is_a_move_not_a_hijack() {
    let t = Instant::now();
    let ms = |n: u64| t + Duration::from_millis(n);
    let mut r = Relay::new(cfg());
    let to_b = r.offer("hold", "ft", spec("192.0.2.1", 4000), t);
    let _to_a = r.answer("hold", "tt", "ft", spec("192.0.2.2", 6000), t);
    r.send(to_b.port, "192.0.2.2:6000", t);
    // The callee holds (c=0.0.0.0), then resumes from another address at once.
    r.update("hold", "tt", Some("ft"), &[held(6000)], true, ms(10))
        .expect("hold");
    r.update(
        "hold",
        "tt",
        Some("ft"),
        &[spec("192.0.2.3", 7000)],
        true,
        ms(20),
    )
    .expect("resume");
    assert_eq!(
        r.send(to_b.port, "192.0.2.3:7000", ms(30)),
        sent(_to_a.port, "192.0.2.1:4000"),
        "the resumed stream is the callee's"
    );
    assert_eq!(
        foreign_events(&mut r.e),
        vec![],
        "its own old stream is no stranger"
    );
}

#[test]
fn a_stranger_taking_a_silent_partys_port_is_reported() {
    let t = Instant::now();
    let ms = |n: u64| t + Duration::from_millis(n);
    let mut r = Relay::new(cfg());
    let to_b = r.offer("silent", "ft", spec("192.0.2.1", 4000), t);
    let to_a = r.answer("silent", "tt", "ft", spec("192.0.2.2", 6000), t);
    r.send(to_b.port, "192.0.2.2:6000", t);
    r.send(to_a.port, "192.0.2.1:4000", t);
    // The callee goes quiet (muted, no comfort noise) past relatch_after: a stranger's
    // packets are taken, as a NAT rebinding would be, but reported.
    let stranger = "198.51.100.66:1234";
    assert_eq!(
        r.send(to_b.port, stranger, ms(3000)),
        sent(to_a.port, "192.0.2.1:4000")
    );
    let events: Vec<_> =
        r.e.take_events()
            .into_iter()
            .filter_map(|ev| match ev {
                Event::ForeignSource {
                    tag,
                    source,
                    holds_latch,
                    ..
                } => Some((tag, source, holds_latch)),
                Event::Ended { .. } => None,
            })
            .collect();
    assert_eq!(events, vec![("tt".to_owned(), sa(stranger), true)]);
    // The callee speaks again: it takes its port back at once, the stranger is dropped.
    assert_eq!(
        r.send(to_b.port, "192.0.2.2:6000", ms(3100)),
        sent(to_a.port, "192.0.2.1:4000")
    );
    assert_eq!(
        r.send(to_b.port, stranger, ms(3120)),
        Forward::Drop(DropReason::WrongSource)
    );
    // A NAT'd party's rebinding (both sources unlike its private SDP) is not reported.
    let to_d = r.offer("nat", "fn", spec("10.0.0.1", 4000), t);
    let _to_c = r.answer("nat", "tn", "fn", spec("192.0.2.9", 6000), t);
    r.send(to_d.port, "192.0.2.9:6000", t);
    let _ = r.e.take_events();
    let to_c = _to_c;
    r.send(to_c.port, "203.0.113.7:61000", t);
    assert_eq!(
        r.send(to_c.port, "203.0.113.7:62000", ms(3000)),
        sent(to_d.port, "192.0.2.9:6000"),
        "the rebound source is the party's"
    );
    assert_eq!(foreign_events(&mut r.e), vec![]);
}

//! `sipcluster media-relay` as a process: sessions over its real gRPC API, RTP and RTCP
//! over real loopback sockets, statistics, the idle timeout, drain and SIGTERM, and its
//! descriptor limit sized to the port range under `prlimit`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{Server, workdir};
use proto::media::v1 as pb;
use proto::media::v1::media_relay_client::MediaRelayClient;

/// The control API's client as the edges have it (the edge token on every call).
type Control = MediaRelayClient<grpc_auth::AuthChannel>;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn client(relay: &Server) -> Control {
    common::media_client(relay.sip, Some(common::EDGE_TOKEN)).await
}

fn phone() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("phone socket");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    s
}

/// A G.711 packet: 12-byte header + 160 bytes, the sequence number in the payload too.
fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.resize(172, 0xd5);
    p
}

fn ports(reply: &pb::UpdateReply) -> SocketAddr {
    let ip = reply.address.parse().expect("relay address");
    SocketAddr::new(ip, u16::try_from(reply.media[0].port).expect("port"))
}

/// Datagrams a phone received, with their source.
type Heard = Vec<(Vec<u8>, SocketAddr)>;

/// Send the packets `seqs` from each phone to its relay port, 5 ms apart, and return what
/// each one received (packets, and where they came from).
fn exchange(
    a: &UdpSocket,
    a_to: SocketAddr,
    b: &UdpSocket,
    b_to: SocketAddr,
    seqs: std::ops::Range<u16>,
    skip_a: Option<u16>,
) -> (Heard, Heard) {
    let n = seqs.len() as u16;
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    let mut buf = [0u8; 2048];
    for seq in seqs {
        if skip_a != Some(seq) {
            a.send_to(&rtp(seq, 0xaaaa), a_to).expect("send a");
        }
        b.send_to(&rtp(seq, 0xbbbb), b_to).expect("send b");
        std::thread::sleep(Duration::from_millis(5));
    }
    for (sock, got, expect) in [
        (a, &mut got_a, n),
        (b, &mut got_b, n - u16::from(skip_a.is_some())),
    ] {
        while got.len() < usize::from(expect) {
            match sock.recv_from(&mut buf) {
                Ok((len, from)) => got.push((buf[..len].to_vec(), from)),
                Err(_) => break,
            }
        }
    }
    (got_a, got_b)
}

fn session_ref(call_id: &str, tag: &str, other: &str) -> pb::SessionRef {
    pb::SessionRef {
        call_id: call_id.into(),
        tag: tag.into(),
        other_tag: other.into(),
    }
}

/// Alice (tag `a`) offers, Bob (tag `b`) answers: the relay's ports for Bob, then
/// for Alice.
fn offer_answer(
    rt: &tokio::runtime::Runtime,
    c: &mut Control,
    call: &str,
    alice: &UdpSocket,
    bob: &UdpSocket,
) -> (pb::UpdateReply, pb::UpdateReply) {
    let a = alice.local_addr().expect("alice");
    let b = bob.local_addr().expect("bob");
    let to_bob = rt
        .block_on(c.offer(pb::UpdateRequest::audio(call, "a", "", a)))
        .expect("offer")
        .into_inner();
    let to_alice = rt
        .block_on(c.answer(pb::UpdateRequest::audio(call, "b", "a", b)))
        .expect("answer")
        .into_inner();
    (to_bob, to_alice)
}

fn side<'a>(s: &'a pb::SessionStats, tag: &str) -> &'a pb::SideStats {
    s.sides
        .iter()
        .find(|x| x.tag == tag)
        .unwrap_or_else(|| panic!("no side {tag}: {s:?}"))
}

#[test]
fn relays_rtp_both_ways_with_latching_stats_and_delete() {
    let dir = workdir("media_relay_basic");
    let relay = Server::media_relay(&dir, "relay", "42000-42099", &[]);
    let rt = rt();
    let mut c = rt.block_on(client(&relay));
    let (alice, bob) = (phone(), phone());
    let (alice_rtcp, bob_rtcp) = (phone(), phone());
    // Alice's SDP says a port nobody listens on (a NAT hides her real one): latching
    // must find her by her packets.
    let alice_sdp: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let bob_sdp = bob.local_addr().expect("bob");
    let to_bob = rt
        .block_on(c.offer(pb::UpdateRequest::audio(
            "call-1",
            "alice-tag",
            "",
            alice_sdp,
        )))
        .expect("offer")
        .into_inner();
    assert_eq!(to_bob.address, "127.0.0.1");
    assert_eq!(to_bob.media[0].rtcp_port, to_bob.media[0].port + 1);
    // A retransmitted offer gets the same ports.
    let again = rt
        .block_on(c.offer(pb::UpdateRequest::audio(
            "call-1",
            "alice-tag",
            "",
            alice_sdp,
        )))
        .expect("offer again")
        .into_inner();
    assert_eq!(again.media, to_bob.media);
    // Bob's answer names his RTCP port (a=rtcp).
    let mut answer = pb::UpdateRequest::audio("call-1", "bob-tag", "alice-tag", bob_sdp);
    answer.media[0].rtcp_port = Some(u32::from(bob_rtcp.local_addr().expect("r").port()));
    let to_alice = rt.block_on(c.answer(answer)).expect("answer").into_inner();
    let (alice_to, bob_to) = (ports(&to_alice), ports(&to_bob));

    // Alice speaks first (latching her), then both send packets 1..=100; Alice's
    // packet 40 is lost on her side of the relay.
    alice.send_to(&rtp(0, 0xaaaa), alice_to).expect("first");
    let mut buf = [0u8; 2048];
    let (_, from) = bob.recv_from(&mut buf).expect("bob hears alice");
    assert_eq!(from, bob_to, "bob hears the relay on the port he sends to");
    let (got_alice, got_bob) = exchange(&alice, alice_to, &bob, bob_to, 1..101, Some(40));
    assert_eq!(got_alice.len(), 100, "alice heard all of bob (latched)");
    assert_eq!(got_bob.len(), 99, "bob heard all alice sent");
    assert!(
        got_alice.iter().all(|(_, f)| *f == alice_to),
        "symmetric: alice hears the port she sends to"
    );
    // Untouched: byte for byte what was sent.
    for (i, (p, _)) in got_alice.iter().enumerate() {
        assert_eq!(p, &rtp(i as u16 + 1, 0xbbbb));
    }
    // RTCP between the odd ports: a receiver report from Alice reaches Bob's a=rtcp port
    // from the relay's RTCP port facing him.
    let rtcp_to_alice = SocketAddr::new(alice_to.ip(), alice_to.port() + 1);
    let rtcp_to_bob = SocketAddr::new(bob_to.ip(), bob_to.port() + 1);
    let mut rr = vec![0x81, 201, 0, 7, 0, 0, 0xaa, 0xaa, 0, 0, 0xbb, 0xbb, 3];
    rr.extend_from_slice(&[0, 0, 1, 0, 0, 0, 99, 0, 0, 0, 40, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(rr.len(), 32);
    alice_rtcp.send_to(&rr, rtcp_to_alice).expect("alice rtcp");
    let (n, from) = bob_rtcp.recv_from(&mut buf).expect("bob's RTCP");
    assert_eq!((&buf[..n], from), (&rr[..], rtcp_to_bob));
    bob.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");

    let stats = rt
        .block_on(c.query(session_ref("call-1", "bob-tag", "alice-tag")))
        .expect("query")
        .into_inner();
    let a = side(&stats, "alice-tag");
    let b = side(&stats, "bob-tag");
    assert_eq!((a.rtp_packets, a.expected, a.lost), (100, 101, 1), "{a:?}");
    assert_eq!(a.source, alice.local_addr().expect("a").to_string());
    assert_eq!((b.rtp_packets, b.lost), (100, 0), "{b:?}");
    assert_eq!(a.rtcp_packets, 1);
    assert_eq!(a.reported_lost, Some(1));
    assert_eq!(a.reported_jitter_ms, Some(5.0)); // 40 units at 8 kHz

    let ended = rt
        .block_on(c.delete(session_ref("call-1", "alice-tag", "bob-tag")))
        .expect("delete")
        .into_inner();
    assert_eq!(side(&ended, "bob-tag").rtp_packets, 100);
    let gone = rt.block_on(c.query(session_ref("call-1", "alice-tag", "")));
    assert_eq!(gone.expect_err("deleted").code(), tonic::Code::NotFound);
    // The ports are closed and quarantined: a late packet reaches nobody.
    alice.send_to(&rtp(500, 0xaaaa), alice_to).expect("late");
    assert!(
        bob.recv_from(&mut buf).is_err(),
        "a late packet was forwarded"
    );
    let load = rt
        .block_on(c.load(pb::LoadRequest {}))
        .expect("load")
        .into_inner();
    assert_eq!((load.sessions, load.pairs_in_use), (0, 0));
    let m = relay.scrape();
    assert!(
        common::metric_value(&m, "sipcluster_media_packets_total{kind=\"rtp\"}") >= 200.0,
        "{m}"
    );
    assert_eq!(
        common::metric_value(
            &m,
            "sipcluster_media_sessions_ended_total{reason=\"deleted\"}"
        ),
        1.0
    );
    // Unknown calls and bad input are refused with the right codes, not a crash.
    let e = rt
        .block_on(c.answer(pb::UpdateRequest::audio("nope", "b", "a", bob_sdp)))
        .expect_err("unknown");
    assert_eq!(e.code(), tonic::Code::NotFound);
    let mut bad = pb::UpdateRequest::audio("x", "a", "", bob_sdp);
    bad.media[0].address = "not-an-ip".into();
    assert_eq!(
        rt.block_on(c.offer(bad)).expect_err("bad").code(),
        tonic::Code::InvalidArgument
    );
}

#[test]
fn idle_sessions_end_and_drain_refuses_new_ones() {
    let dir = workdir("media_relay_idle");
    let relay = Server::media_relay(
        &dir,
        "relay",
        "42200-42299",
        &["--idle-timeout-secs", "2", "--drain-secs", "30"],
    );
    let rt = rt();
    let mut c = rt.block_on(client(&relay));
    let (alice, bob) = (phone(), phone());
    let (to_bob, to_alice) = offer_answer(&rt, &mut c, "idle", &alice, &bob);
    exchange(&alice, ports(&to_alice), &bob, ports(&to_bob), 0..20, None);
    // Media stops: the session is ended by the idle timeout (2 s + the 1 s sweep).
    let t0 = Instant::now();
    loop {
        let r = rt.block_on(c.query(session_ref("idle", "a", "")));
        if r.is_err() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(6),
            "idle session still there"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "ended too early: {waited:?}"
    );
    assert_eq!(
        relay.metric("sipcluster_media_sessions_ended_total{reason=\"idle\"}"),
        1.0
    );

    // Drain over the API: a new offer is refused, an existing session's answer is not.
    rt.block_on(c.offer(pb::UpdateRequest::audio(
        "kept",
        "a",
        "",
        alice.local_addr().expect("a"),
    )))
    .expect("offer before drain");
    let load = rt
        .block_on(c.drain(pb::DrainRequest { draining: true }))
        .expect("drain")
        .into_inner();
    assert!(load.draining);
    let e = rt
        .block_on(c.offer(pb::UpdateRequest::audio(
            "new",
            "a",
            "",
            alice.local_addr().expect("a"),
        )))
        .expect_err("draining");
    assert_eq!(e.code(), tonic::Code::Unavailable);
    rt.block_on(c.answer(pb::UpdateRequest::audio(
        "kept",
        "b",
        "a",
        bob.local_addr().expect("b"),
    )))
    .expect("answer while draining");

    // SIGTERM with a session left: not ready at once, exits when the session ends.
    let metrics = relay.metrics;
    let stopping = std::thread::spawn(move || relay.terminate());
    let t0 = Instant::now();
    while common::http_get(metrics, "/readyz").is_some_and(|(code, _)| code == 200) {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "still ready after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(!stopping.is_finished(), "exited with a session still up");
    rt.block_on(c.delete(session_ref("kept", "a", "")))
        .expect("delete");
    let status = stopping.join().expect("terminate");
    assert!(status.success(), "exit status {status}");
}

const DOMAIN: &str = "sipcluster.local";

/// The UAC scenario with `hold_ms` between ACK and BYE.
fn caller(to: SocketAddr, dir: &std::path::Path, name: &str, hold_ms: u32) -> common::Sipp {
    caller_with(to, dir, name, "uac_call.xml", hold_ms)
}

/// A UAC scenario of the uac_call.xml family (fields, auth, a pause before the BYE).
fn caller_with(
    to: SocketAddr,
    dir: &std::path::Path,
    name: &str,
    scenario: &str,
    hold_ms: u32,
) -> common::Sipp {
    common::Sipp::new(name, scenario, common::Proto::Udp)
        .inf(&format!("alice;{DOMAIN};alice-secret;bob"))
        .auth("alice", "alice-secret", &format!("bob@{DOMAIN}"))
        .to(to)
        .timeout(30)
        .hold(dir, hold_ms)
}

/// A relay on `ports` and an all-in-one anchoring calls there.
fn relay_and_proxy(dir: &std::path::Path, ports: &str, relay_args: &[&str]) -> (Server, Server) {
    let relay = Server::media_relay(dir, "relay", ports, relay_args);
    let sip = Server::start(dir, &["--media-relay", &format!("http://{}", relay.sip)]);
    (relay, sip)
}

/// SIPp `scenario` as `user`'s phone: registered through `sip`, then waiting for its call.
fn callee(
    sip: &Server,
    dir: &std::path::Path,
    name: &str,
    scenario: &str,
    user: &str,
) -> common::RunningSipp {
    let uas = common::Sipp::new(name, scenario, common::Proto::Udp)
        .calls(1)
        .timeout(20);
    register(sip, dir, user, &uas);
    let run = uas.spawn(dir);
    std::thread::sleep(Duration::from_millis(200));
    run
}

/// The `m=audio` ports of the SDP bodies in a SIPp message log whose first line
/// starts with `start`.
fn sdp_ports(log: &str, start: &str) -> Vec<u16> {
    log.split("----------------------------------------------- ")
        .filter(|m| m.lines().any(|l| l.trim_start().starts_with(start)))
        .flat_map(|m| {
            m.lines()
                .filter_map(|l| l.trim().strip_prefix("m=audio "))
                .filter_map(|r| r.split(' ').next()?.parse().ok())
                .collect::<Vec<u16>>()
        })
        .collect()
}

#[test]
fn sipp_call_through_the_edge_is_anchored_at_the_relay() {
    let dir = workdir("media_relay_sipp_call");
    let (relay, sip) = relay_and_proxy(&dir, "42400-42499", &["--idle-timeout-secs", "3"]);
    // Bob: SIPp echoing every RTP packet back to where it came from (the relay).
    let uas_media = common::free_port();
    let mut uas = common::Sipp::new("uas", "uas_answer.xml", common::Proto::Udp)
        .calls(2)
        .timeout(40);
    uas.extra.extend([
        "-rtp_echo".into(),
        "-mi".into(),
        "127.0.0.1".into(),
        "-mp".into(),
        uas_media.to_string(),
    ]);
    common::Sipp::new("register-bob", "register.xml", common::Proto::Udp)
        .inf(&format!("bob;{DOMAIN};;127.0.0.1:{};3600", uas.port))
        .auth("bob", "bob-secret", DOMAIN)
        .to(sip.sip)
        .run(&dir)
        .assert_ok(1, "REGISTER bob");
    let uas_run = uas.spawn(&dir);
    std::thread::sleep(Duration::from_millis(300));

    // Call 1: alice holds 4 s; meanwhile our own phone sends her RTP through the relay.
    let call = caller(sip.sip, &dir, "uac", 4000).spawn(&dir);
    let rt = rt();
    let mut c = rt.block_on(client(&relay));
    // The session has two sides once bob answered: SIPp's start, its INVITE, the 407 and
    // the answer can take seconds on a loaded CI machine (2 cores, tests in parallel).
    let deadline = Instant::now() + Duration::from_secs(15);
    let session = loop {
        let list = rt
            .block_on(c.list_sessions(pb::ListSessionsRequest {}))
            .expect("list")
            .into_inner();
        if let Some(s) = list.sessions.into_iter().find(|s| s.sides.len() == 2) {
            break s;
        }
        assert!(Instant::now() < deadline, "no anchored session appeared");
        std::thread::sleep(Duration::from_millis(50));
    };
    let alice_port = side(&session, &session.from_tag).local_port;
    assert!((42400..42500).contains(&alice_port), "{session:?}");
    let alice_to = SocketAddr::from(([127, 0, 0, 1], u16::try_from(alice_port).expect("port")));
    let alice = phone();
    let mut buf = [0u8; 2048];
    let mut echoed = 0;
    for seq in 0..50u16 {
        alice.send_to(&rtp(seq, 0xa11c), alice_to).expect("rtp");
        if let Ok((n, from)) = alice.recv_from(&mut buf) {
            assert_eq!(
                from, alice_to,
                "the echo comes back from the port alice sends to"
            );
            assert_eq!(&buf[..n], &rtp(seq, 0xa11c)[..], "untouched both ways");
            echoed += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(echoed, 50, "every packet crossed the relay to bob and back");
    let stats = rt
        .block_on(c.query(session_ref(&session.call_id, &session.from_tag, "")))
        .expect("query")
        .into_inner();
    let to_tag = stats.to_tags.first().cloned().expect("bob's tag");
    assert_eq!(side(&stats, &session.from_tag).rtp_packets, 50);
    assert_eq!(side(&stats, &to_tag).rtp_packets, 50, "{stats:?}");
    call.wait().assert_ok(1, "anchored call");
    // BYE deleted the session.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !rt
        .block_on(c.list_sessions(pb::ListSessionsRequest {}))
        .expect("list")
        .into_inner()
        .sessions
        .is_empty()
    {
        assert!(Instant::now() < deadline, "session still there after BYE");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        relay.metric("sipcluster_media_sessions_ended_total{reason=\"deleted\"}"),
        1.0
    );
    assert!(relay.metric("sipcluster_media_packets_total{kind=\"rtp\"}") >= 100.0);
    // The final statistics, as the BYE's Delete returned them, are in the relay's log.
    let ended = relay
        .log()
        .lines()
        .find(|l| l.contains("media session ended") && l.contains(&session.call_id))
        .map(str::to_owned)
        .unwrap_or_default();
    let plain = strip_ansi(&ended);
    assert!(
        plain.contains("reason=\"deleted\"") && plain.contains("packets=100 "),
        "{plain:?}"
    );

    // Call 2: no media at all; the relay ends the session after its 3 s idle timeout
    // while the call is still up, and the call still ends cleanly.
    caller(sip.sip, &dir, "uac-silent", 5000)
        .run(&dir)
        .assert_ok(1, "silent call");
    assert_eq!(
        relay.metric("sipcluster_media_sessions_ended_total{reason=\"idle\"}"),
        1.0
    );
    let uas_out = uas_run.wait_at_most(Duration::from_secs(5));
    assert_eq!(uas_out.successful, 2, "{}", uas_out.errors);
    // What each side was told: the relay's ports, not the other party's.
    let uas_log = std::fs::read_to_string(dir.join("uas.msg")).unwrap_or_default();
    let offered = sdp_ports(&uas_log, "INVITE sip:");
    assert!(
        !offered.is_empty() && offered.iter().all(|p| (42400..42500).contains(p)),
        "bob's INVITEs offered {offered:?}, not relay ports"
    );
    let uac_log = std::fs::read_to_string(dir.join("uac.msg")).unwrap_or_default();
    let answered = sdp_ports(&uac_log, "SIP/2.0 200 OK");
    assert!(
        !answered.is_empty() && answered.iter().all(|p| (42400..42500).contains(p)),
        "alice's 200 OK answered {answered:?}, not relay ports"
    );
    assert_eq!(
        sip.metric("sipcluster_media_anchored_total"),
        2.0,
        "{}",
        sip.scrape()
    );
}

/// A SIPp caller (alice) from `scenario`, whose authenticated INVITE carries an offer
/// (the scenarios of the other suites send none).
fn with_offer(
    dir: &std::path::Path,
    name: &str,
    scenario: &str,
    callee: &str,
    to: SocketAddr,
) -> common::Sipp {
    let mut uac = common::Sipp::new(name, scenario, common::Proto::Udp)
        .inf(&format!("alice;{DOMAIN};alice-secret;{callee}"))
        .auth("alice", "alice-secret", &format!("{callee}@{DOMAIN}"))
        .to(to)
        .timeout(20);
    let text = std::fs::read_to_string(&uac.scenario).expect("scenario");
    let with_sdp = text.replacen(
        "[authentication]\n      Max-Forwards: 70\n      Content-Length: 0\n",
        "[authentication]\n      Max-Forwards: 70\n      Content-Type: application/sdp\n      \
         Content-Length: [len]\n\n      v=0\n      o=a 1 1 IN IP4 [local_ip]\n      s=-\n      \
         c=IN IP4 [media_ip]\n      t=0 0\n      m=audio [media_port] RTP/AVP 0\n",
        1,
    );
    assert_ne!(with_sdp, text, "{scenario} changed shape");
    let path = dir.join(format!("{name}-offer.xml"));
    std::fs::write(&path, with_sdp).expect("write scenario");
    uac.scenario = path;
    uac
}

/// A log line without its terminal colours.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for ch in s.chars() {
        match (esc, ch) {
            (false, '\u{1b}') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}

/// Register `user` at the SIPp UAS `uas`.
fn register(sip: &Server, dir: &std::path::Path, user: &str, uas: &common::Sipp) {
    common::Sipp::new(
        &format!("register-{user}"),
        "register.xml",
        common::Proto::Udp,
    )
    .inf(&format!("{user};{DOMAIN};;127.0.0.1:{};3600", uas.port))
    .auth(user, &format!("{user}-secret"), DOMAIN)
    .to(sip.sip)
    .run(dir)
    .assert_ok(1, "REGISTER");
}

#[test]
fn busy_and_cancelled_calls_free_their_relay_sessions() {
    let dir = workdir("media_relay_failed_calls");
    let (relay, sip) = relay_and_proxy(&dir, "42600-42699", &[]);
    let rt = rt();
    let mut c = rt.block_on(client(&relay));
    let sessions = |c: &mut Control| {
        rt.block_on(c.list_sessions(pb::ListSessionsRequest {}))
            .expect("list")
            .into_inner()
            .sessions
            .len()
    };
    // Bob is busy: the 486 ends the session the INVITE's offer created.
    let busy_run = callee(&sip, &dir, "uas-busy", "uas_busy.xml", "bob");
    with_offer(&dir, "uac-busy", "uac_fail.xml", "bob", sip.sip)
        .expect_code(&dir, 486)
        .run(&dir)
        .assert_ok(1, "busy call");
    busy_run.wait_at_most(Duration::from_secs(5));
    // Carol rings and alice gives up: CANCEL ends it.
    let ring_run = callee(&sip, &dir, "uas-ring", "uas_ring_cancel.xml", "carol");
    with_offer(&dir, "uac-cancel", "uac_cancel.xml", "carol", sip.sip)
        .run(&dir)
        .assert_ok(1, "cancelled call");
    ring_run.wait_at_most(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(3);
    while sessions(&mut c) != 0
        || relay.metric("sipcluster_media_sessions_ended_total{reason=\"deleted\"}") < 2.0
    {
        assert!(
            Instant::now() < deadline,
            "sessions left: {}; {}",
            sessions(&mut c),
            relay.scrape()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(relay.metric("sipcluster_media_sessions_started_total"), 2.0);
    assert_eq!(sip.metric("sipcluster_media_anchored_total"), 2.0);
}

#[test]
fn a_call_gets_503_when_no_relay_answers() {
    let dir = workdir("media_relay_down");
    // A relay URL where nothing listens.
    let control = common::free_addr();
    let dead = format!("http://{control}");
    let sip = Server::start_unready(&dir, &["--media-relay", &dead]);
    // Calls would all fail: the all-in-one says it is not ready, and why. (Just after the
    // start it may also say its edge has not joined its dispatcher yet, on a loaded
    // machine: wait for the relay alone to be the reason.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let readyz = loop {
        let r = common::http_get(sip.metrics, "/readyz").expect("readyz answers");
        if (r.0 == 503 && !r.1.contains("not joined")) || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        (readyz.0, readyz.1.trim()),
        (503, "not ready: no media relay answers"),
        "readiness with no relay"
    );
    let uas = common::Sipp::new("uas", "uas_answer.xml", common::Proto::Udp)
        .calls(1)
        .timeout(10);
    common::Sipp::new("register-bob", "register.xml", common::Proto::Udp)
        .inf(&format!("bob;{DOMAIN};;127.0.0.1:{};3600", uas.port))
        .auth("bob", "bob-secret", DOMAIN)
        .to(sip.sip)
        .run(&dir)
        .assert_ok(1, "REGISTER bob");
    let _uas = uas.spawn(&dir);
    let t0 = Instant::now();
    let out = with_offer(&dir, "uac", "uac_fail.xml", "bob", sip.sip)
        .expect_code(&dir, 503)
        .run(&dir);
    out.assert_ok(1, "the call is refused with 503, not left hanging");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    assert!(sip.metric("sipcluster_media_relay_failures_total") >= 1.0);
    assert_eq!(
        common::http_get(sip.metrics, "/readyz").map(|r| r.0),
        Some(503),
        "still not ready"
    );
    // A relay comes up at that address: ready within a poll or two.
    let _relay = Server::media_relay_at(&dir, "relay", control, "43800-43899", &[]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::http_get(sip.metrics, "/readyz").map(|r| r.0) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "not ready after the relay came up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// uac_call.xml turned into a late offer: INVITEs without SDP, the answer in the ACK.
fn late_offer_caller(to: SocketAddr, dir: &std::path::Path) -> common::Sipp {
    let mut s = caller(to, dir, "uac-late", 200);
    let mut text = std::fs::read_to_string(&s.scenario).expect("scenario");
    let (start, end) = (
        "      Content-Type: application/sdp\n",
        "      a=rtpmap:0 PCMU/8000\n",
    );
    while let Some(a) = text.find(start) {
        let b = text[a..]
            .find(end)
            .map(|i| a + i + end.len())
            .expect("an SDP body ends with its rtpmap");
        text.replace_range(a..b, "      Content-Length: 0\n");
    }
    let ack =
        "      CSeq: 2 ACK\n      [routes]\n      Max-Forwards: 70\n      Content-Length: 0\n";
    assert!(text.contains(ack), "uac_call.xml changed shape");
    let text = text.replacen(
        ack,
        "      CSeq: 2 ACK\n      [routes]\n      Max-Forwards: 70\n      \
         Content-Type: application/sdp\n      Content-Length: [len]\n\n      v=0\n      \
         o=a 1 1 IN IP4 [local_ip]\n      s=-\n      c=IN IP4 [media_ip]\n      t=0 0\n      \
         m=audio [media_port] RTP/AVP 0\n",
        1,
    );
    let path = dir.join("uac-late-offer.xml");
    std::fs::write(&path, text).expect("write scenario");
    s.scenario = path;
    s
}

#[test]
fn late_offer_is_anchored_in_the_2xx_and_the_ack() {
    let dir = workdir("media_relay_late_offer");
    let (relay, sip) = relay_and_proxy(&dir, "42800-42899", &[]);
    let uas_run = callee(&sip, &dir, "uas", "uas_answer.xml", "bob");
    late_offer_caller(sip.sip, &dir)
        .run(&dir)
        .assert_ok(1, "late-offer call");
    uas_run.wait_at_most(Duration::from_secs(5));
    let relay_port = |p: &u16| (42800..42900).contains(p);
    // Bob's offer (in his 200) reached alice with the relay's port...
    let uac_log = std::fs::read_to_string(dir.join("uac-late.msg")).unwrap_or_default();
    let offered = sdp_ports(&uac_log, "SIP/2.0 200 OK");
    assert!(
        !offered.is_empty() && offered.iter().all(relay_port),
        "alice got {offered:?}"
    );
    // ... and alice's answer (in her ACK) reached bob with the relay's port.
    let uas_log = std::fs::read_to_string(dir.join("uas.msg")).unwrap_or_default();
    let answered = sdp_ports(&uas_log, "ACK sip:");
    assert!(
        !answered.is_empty() && answered.iter().all(relay_port),
        "bob got {answered:?} in the ACK"
    );
    assert_eq!(relay.metric("sipcluster_media_sessions_started_total"), 1.0);
    let deadline = Instant::now() + Duration::from_secs(3);
    while relay.metric("sipcluster_media_sessions_ended_total{reason=\"deleted\"}") < 1.0 {
        assert!(Instant::now() < deadline, "BYE did not end the session");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn anchoring_policy_never_and_pass_through_leave_sdp_untouched() {
    let dir = workdir("media_relay_policy");
    let relay = Server::media_relay(&dir, "relay", "43000-43099", &[]);
    // `--anchor never`: a relay is configured but not used.
    let never = Server::start(
        &dir,
        &[
            "--media-relay",
            &format!("http://{}", relay.sip),
            "--anchor",
            "never",
        ],
    );
    let uas_run = callee(&never, &dir, "uas", "uas_answer.xml", "bob");
    caller(never.sip, &dir, "uac-never", 200)
        .run(&dir)
        .assert_ok(1, "unanchored call");
    uas_run.wait_at_most(Duration::from_secs(5));
    assert_eq!(relay.metric("sipcluster_media_sessions_started_total"), 0.0);
    let uas_log = std::fs::read_to_string(dir.join("uas.msg")).unwrap_or_default();
    let offered = sdp_ports(&uas_log, "INVITE sip:");
    assert!(
        !offered.is_empty() && offered.iter().all(|p| !(43000..43100).contains(p)),
        "bob got {offered:?}: the caller's own port, untouched"
    );

    // `on_failure = "pass"` with no relay reachable: the call goes through, unanchored.
    let cfg = dir.join("pass.toml");
    std::fs::write(
        &cfg,
        format!(
            "[media]\nrelays = [\"http://{}\"]\non_failure = \"pass\"\ntimeout_ms = 300\n",
            common::free_addr()
        ),
    )
    .expect("config");
    let pass = Server::start(&dir, &["--config", &cfg.display().to_string()]);
    let uas_run = callee(&pass, &dir, "uas2", "uas_answer.xml", "bob");
    caller(pass.sip, &dir, "uac-pass", 200)
        .run(&dir)
        .assert_ok(1, "call passed through without a relay");
    uas_run.wait_at_most(Duration::from_secs(5));
    assert!(pass.metric("sipcluster_media_relay_failures_total") >= 1.0);
}

#[test]
fn ipv6_legs_are_relayed_on_ipv6_sockets() {
    let dir = workdir("media_relay_ipv6");
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        panic!("no IPv6 loopback on this machine: the relay's IPv6 path cannot be tested");
    }
    let relay = Server::media_relay(&dir, "relay", "43200-43299", &["--bind-v6", "::1"]);
    let rt = rt();
    let mut c = rt.block_on(client(&relay));
    let bind6 = || {
        let s = UdpSocket::bind("[::1]:0").expect("v6 phone");
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        s
    };
    let (alice, bob) = (bind6(), bind6());
    let (to_bob, to_alice) = offer_answer(&rt, &mut c, "v6", &alice, &bob);
    assert_eq!(to_bob.address, "::1");
    let (got_a, got_b) = exchange(&alice, ports(&to_alice), &bob, ports(&to_bob), 0..20, None);
    assert_eq!((got_a.len(), got_b.len()), (20, 20));
    assert!(got_a.iter().all(|(_, f)| *f == ports(&to_alice)));
}

#[test]
fn reinvite_through_the_edge_keeps_the_same_relay_session_and_ports() {
    let dir = workdir("media_relay_reinvite");
    let (relay, sip) = relay_and_proxy(&dir, "43400-43499", &[]);
    let uas_run = callee(&sip, &dir, "uas", "uas_reinvite.xml", "bob");
    caller_with(sip.sip, &dir, "uac", "uac_reinvite.xml", 200)
        .run(&dir)
        .assert_ok(1, "call with a re-INVITE");
    uas_run.wait_at_most(Duration::from_secs(5));
    let relay_port = |p: &u16| (43400..43500).contains(p);
    // Bob saw both offers (INVITE and re-INVITE) with the same relay port.
    let uas_log = std::fs::read_to_string(dir.join("uas.msg")).unwrap_or_default();
    let offers = sdp_ports(&uas_log, "INVITE sip:");
    assert!(
        offers.len() == 2 && offers.iter().all(relay_port) && offers[0] == offers[1],
        "bob's offers: {offers:?}"
    );
    // Alice saw both answers with the same relay port.
    let uac_log = std::fs::read_to_string(dir.join("uac.msg")).unwrap_or_default();
    let answers = sdp_ports(&uac_log, "SIP/2.0 200 OK");
    assert!(
        answers.len() == 2 && answers.iter().all(relay_port) && answers[0] == answers[1],
        "alice's answers: {answers:?}"
    );
    // One session, updated in place, ended by the BYE.
    assert_eq!(relay.metric("sipcluster_media_sessions_started_total"), 1.0);
    let deadline = Instant::now() + Duration::from_secs(3);
    while relay.metric("sipcluster_media_sessions_ended_total{reason=\"deleted\"}") < 1.0 {
        assert!(Instant::now() < deadline, "BYE did not end the session");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The SSRCs of every datagram `sock` receives until it has been quiet for its read
/// timeout.
fn ssrcs_heard(sock: &UdpSocket) -> Vec<u32> {
    let mut buf = [0u8; 2048];
    let mut out = Vec::new();
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        if let Some(b) = buf[..n].get(8..12) {
            out.push(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        }
    }
    out
}

fn count(heard: &[u32], ssrc: u32) -> usize {
    heard.iter().filter(|s| **s == ssrc).count()
}

/// The relay's log lines (without colours) that contain every one of `parts`, waiting a
/// little for the log to be written.
fn log_lines(relay: &Server, parts: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let found: Vec<String> = relay
            .log()
            .lines()
            .map(strip_ansi)
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .collect();
        if !found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_foreign_sender_that_starts_first_cannot_take_the_call() {
    let dir = workdir("media_relay_foreign_source");
    let relay = Server::media_relay(&dir, "relay", "43600-43699", &[]);
    let rt = rt();
    let mut c = rt.block_on(client(&relay));
    let (alice, bob, stranger) = (phone(), phone(), phone());
    for s in [&alice, &bob, &stranger] {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
    }
    // Alice and Bob signal the addresses they send from. (On loopback the stranger shares
    // their IP, so it scores as "same host", still below their exact addresses.)
    let (to_bob, to_alice) = offer_answer(&rt, &mut c, "hijack", &alice, &bob);
    let (alice_to, bob_to) = (ports(&to_alice), ports(&to_bob));
    const ALICE: u32 = 0xaaaa;
    const BOB: u32 = 0xbbbb;
    const STRANGER: u32 = 0x5555;

    // The stranger finds both relay ports before either phone says a word: with nothing
    // latched it is taken for each of them (its first packet reaches Bob's signalled
    // address, the others come back to itself). The old rule (first source wins) then
    // dropped both phones' packets for the whole call.
    for seq in 0..5 {
        stranger
            .send_to(&rtp(seq, STRANGER), alice_to)
            .expect("stranger");
        // Apart, so that the relay takes them in this order (two sockets read in one
        // wake-up may come in either): the counts below depend on it.
        std::thread::sleep(Duration::from_millis(5));
        stranger
            .send_to(&rtp(seq, STRANGER), bob_to)
            .expect("stranger");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Bob speaks first: his port is his at once. His first packet still goes where
    // Alice's port is latched, to the stranger, until Alice speaks and takes hers back.
    bob.send_to(&rtp(0, BOB), bob_to).expect("bob");
    std::thread::sleep(Duration::from_millis(20));
    alice.send_to(&rtp(0, ALICE), alice_to).expect("alice");
    // Then both talk while the stranger keeps sending to both ports.
    for seq in 1..=50 {
        alice.send_to(&rtp(seq, ALICE), alice_to).expect("alice");
        bob.send_to(&rtp(seq, BOB), bob_to).expect("bob");
        stranger
            .send_to(&rtp(100 + seq, STRANGER), alice_to)
            .expect("stranger");
        stranger
            .send_to(&rtp(100 + seq, STRANGER), bob_to)
            .expect("stranger");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (heard_alice, heard_bob, heard_stranger) = (
        ssrcs_heard(&alice),
        ssrcs_heard(&bob),
        ssrcs_heard(&stranger),
    );
    assert_eq!(
        (count(&heard_alice, BOB), count(&heard_alice, STRANGER)),
        (50, 0),
        "alice hears all of bob after her first packet, never the stranger"
    );
    assert_eq!(
        (count(&heard_bob, ALICE), count(&heard_bob, STRANGER)),
        (51, 1),
        "bob hears all of alice; the stranger only before anyone spoke"
    );
    assert_eq!(
        (
            count(&heard_stranger, ALICE),
            count(&heard_stranger, BOB),
            count(&heard_stranger, STRANGER)
        ),
        (0, 1, 9),
        "the stranger hears nothing once both phones spoke"
    );

    let ended = rt
        .block_on(c.delete(session_ref("hijack", "a", "b")))
        .expect("delete")
        .into_inner();
    for (tag, packets) in [("a", 5 + 51), ("b", 5 + 51)] {
        let s = side(&ended, tag);
        // The stranger's 5 packets before anyone spoke count as the party's: latching
        // cannot tell them apart then.
        assert_eq!(
            (s.packets, s.foreign_packets, s.relatches),
            (packets, 50, 1),
            "{s:?}"
        );
    }
    assert_eq!(
        side(&ended, "a").source,
        alice.local_addr().expect("a").to_string()
    );
    assert_eq!(
        side(&ended, "b").source,
        bob.local_addr().expect("b").to_string()
    );
    let stranger_at = format!("source={}", stranger.local_addr().expect("s"));
    for tag in ["tag=a ", "tag=b "] {
        let warned = log_lines(&relay, &["WARN", "foreign media source", "hijack", tag]);
        assert!(
            warned.len() == 1 && warned[0].contains(&stranger_at),
            "one warning per party: {warned:?}\n{}",
            relay.log()
        );
    }
    let end = log_lines(
        &relay,
        &[
            "WARN",
            "media session ended with packets from foreign sources dropped",
            "call_id=hijack",
        ],
    );
    assert!(
        end.len() == 1
            && end[0].contains("offerer_packets=56 ")
            && end[0].contains("answerer_packets=56 ")
            && end[0].contains("foreign_packets=100 "),
        "{end:?}"
    );
    assert_eq!(relay.metric("sipcluster_media_foreign_sources_total"), 2.0);
    assert!(
        relay.metric("sipcluster_media_dropped_total{reason=\"wrong_source\"}") >= 100.0,
        "{}",
        relay.scrape()
    );

    // One-way audio: Bob never sends. The end is a warning naming the silent side, and
    // the statistics show 0 packets from him.
    let (carol, dave) = (phone(), phone());
    let (_, to_carol) = offer_answer(&rt, &mut c, "one-way", &carol, &dave);
    for seq in 0..20 {
        carol
            .send_to(&rtp(seq, ALICE), ports(&to_carol))
            .expect("carol");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(count(&ssrcs_heard(&dave), ALICE), 20);
    let ended = rt
        .block_on(c.delete(session_ref("one-way", "a", "b")))
        .expect("delete")
        .into_inner();
    assert_eq!(side(&ended, "a").packets, 20);
    assert_eq!(
        (side(&ended, "b").packets, side(&ended, "b").source.as_str()),
        (0, "")
    );
    let warned = log_lines(
        &relay,
        &[
            "WARN",
            "media session ended without media in one direction",
            "call_id=one-way",
        ],
    );
    assert!(
        warned.len() == 1
            && warned[0].contains("silent=\"answerer\"")
            && warned[0].contains("offerer_packets=20 ")
            && warned[0].contains("answerer_packets=0 "),
        "{warned:?}\n{}",
        relay.log()
    );
    assert_eq!(
        relay.metric("sipcluster_media_sessions_without_media_total{side=\"answerer\"}"),
        1.0
    );
    assert!(
        log_lines(&relay, &["without media", "call_id=hijack"]).is_empty(),
        "the hijacked call carried audio both ways in the end"
    );

    // A call with early media that is cancelled: the edge deletes it by the caller's tag
    // alone. Nobody answered, so a silent callee is no media fault.
    let (erin, frank) = (phone(), phone());
    let (_, to_erin) = offer_answer(&rt, &mut c, "cancelled", &erin, &frank);
    for seq in 0..5 {
        erin.send_to(&rtp(seq, ALICE), ports(&to_erin))
            .expect("erin");
    }
    std::thread::sleep(Duration::from_millis(50));
    rt.block_on(c.delete(session_ref("cancelled", "a", "")))
        .expect("delete");
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        log_lines(&relay, &["without media", "call_id=cancelled"]).is_empty(),
        "{}",
        relay.log()
    );
    assert_eq!(
        relay.metric("sipcluster_media_sessions_without_media_total{side=\"answerer\"}"),
        1.0,
        "only the one-way call counts"
    );
}

/// The soft and hard `RLIMIT_NOFILE` of process `pid` (`self`: this one).
fn nofile(pid: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("the nofile line");
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (v[0], v[1])
}

/// Descriptors process `pid` holds now.
fn open_fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd directory")
        .count()
}

/// Offer and answer `call` with SDP addresses nobody listens on: a session holding a
/// pair facing each party (four sockets).
fn answered(
    rt: &tokio::runtime::Runtime,
    c: &mut Control,
    call: &str,
) -> Result<(), tonic::Status> {
    let nowhere: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    rt.block_on(c.offer(pb::UpdateRequest::audio(call, "a", "", nowhere)))?;
    rt.block_on(c.answer(pb::UpdateRequest::audio(call, "b", "a", nowhere)))?;
    Ok(())
}

/// Started with a soft limit of 256 (below even the 1024 systemd and many container
/// runtimes give) under a hard one of 65,536, a relay with 10,000 ports raises its soft
/// limit to what the range needs (10,000 + a reserve of 128 + 2 for its worker) and
/// holds more sockets than it started with.
#[test]
fn a_low_soft_descriptor_limit_is_raised_to_fit_the_port_range() {
    const NEEDED: u64 = 10_130;
    let dir = workdir("media_relay_nofile_soft");
    // A process cannot raise its hard limit: where this one's is below 65,536, the test
    // keeps it.
    let hard = nofile("self").1.min(65_536);
    assert!(
        hard >= NEEDED,
        "the test needs a hard RLIMIT_NOFILE of at least {NEEDED}, not {hard}"
    );
    let limit = format!("--nofile=256:{hard}");
    let relay = Server::media_relay_under(
        &dir,
        "relay",
        common::free_addr(),
        "15000-24999",
        &[],
        &["prlimit", &limit],
    );
    let pid = relay.pid().to_string();
    assert_eq!(nofile(&pid), (NEEDED, hard), "{}", relay.log());
    let raised = log_lines(
        &relay,
        &[
            "INFO",
            "RLIMIT_NOFILE soft limit raised",
            "needed=10130 ",
            "soft_before=256 ",
            "soft=10130 ",
        ],
    );
    assert_eq!(raised.len(), 1, "{}", relay.log());
    assert!(!relay.log().contains("too low"), "{}", relay.log());
    let m = relay.scrape();
    assert_eq!(
        common::metric_value(&m, "sipcluster_media_fd_limit"),
        10_130.0
    );
    assert_eq!(
        common::metric_value(&m, "sipcluster_media_fd_needed"),
        10_130.0
    );
    assert_eq!(
        common::metric_value(&m, "sipcluster_media_max_sessions"),
        100_000.0
    );

    // 100 answered calls: 400 sockets, past the 256 it started with.
    let rt = rt();
    let mut c = rt.block_on(client(&relay));
    for i in 0..100 {
        answered(&rt, &mut c, &format!("call-{i}"))
            .unwrap_or_else(|e| panic!("session {i}: {e:?}\n{}", relay.log()));
    }
    let (alice, bob) = (phone(), phone());
    let (to_bob, to_alice) = offer_answer(&rt, &mut c, "talk", &alice, &bob);
    let fds = open_fds(&pid);
    assert!(fds > 404, "{fds} descriptors");
    // The last call's sockets, above the old limit, carry media both ways.
    let (heard_a, heard_b) = exchange(&alice, ports(&to_alice), &bob, ports(&to_bob), 0..20, None);
    assert_eq!((heard_a.len(), heard_b.len()), (20, 20), "{}", relay.log());
}

/// Under a hard limit of 256 the soft one cannot be raised: the relay uses the ports
/// that fit (256 less the reserve of 130: 126 ports, 25000-25125, 63 pairs) and caps
/// sessions at 31 (an answered call holds two pairs), says so loudly and in its metrics,
/// and refuses the 32nd call with its usual RESOURCE_EXHAUSTED, not by running out of
/// descriptors.
#[test]
fn a_hard_descriptor_limit_short_of_the_range_lowers_the_session_cap() {
    const CAP: usize = 31;
    let dir = workdir("media_relay_nofile_hard");
    let mut relay = Server::media_relay_under(
        &dir,
        "relay",
        common::free_addr(),
        "25000-29999",
        // Ports come back at once, so that a deleted call makes room for the next.
        &["--quarantine-secs", "0"],
        &["prlimit", "--nofile=256:256"],
    );
    let pid = relay.pid().to_string();
    assert_eq!(nofile(&pid), (256, 256));
    let warned = log_lines(&relay, &["WARN", "RLIMIT_NOFILE hard limit too low"]);
    assert!(
        warned.len() == 1
            && [
                "needed=5130 ",
                "soft=256 ",
                "hard=256 ",
                "ports=25000-25125 ",
                "max_sessions=31 ",
                "configured_max_sessions=100000",
            ]
            .iter()
            .all(|p| warned[0].contains(p)),
        "{warned:?}\n{}",
        relay.log()
    );
    let m = relay.scrape();
    assert_eq!(common::metric_value(&m, "sipcluster_media_fd_limit"), 256.0);
    assert_eq!(
        common::metric_value(&m, "sipcluster_media_fd_needed"),
        5130.0
    );
    assert_eq!(
        common::metric_value(&m, "sipcluster_media_max_sessions"),
        CAP as f64
    );

    let rt = rt();
    let mut c = rt.block_on(client(&relay));
    for i in 0..CAP {
        answered(&rt, &mut c, &format!("call-{i}"))
            .unwrap_or_else(|e| panic!("session {i}: {e:?}\n{}", relay.log()));
    }
    let e = answered(&rt, &mut c, "one-too-many").expect_err("over the cap");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("session limit reached"), "{e:?}");
    relay.assert_alive();
    assert_eq!(
        common::http_get(relay.metrics, "/healthz").map(|r| r.0),
        Some(200)
    );
    let load = rt
        .block_on(c.load(pb::LoadRequest {}))
        .expect("load")
        .into_inner();
    assert_eq!(
        (load.sessions, load.pairs_in_use),
        (CAP as u32, 2 * CAP as u32)
    );
    let fds = open_fds(&pid);
    assert!(fds < 256, "{fds} descriptors under a limit of 256");

    // A call that ends makes room for the next, whose sockets carry media.
    rt.block_on(c.delete(session_ref("call-0", "a", "b")))
        .expect("delete");
    let (alice, bob) = (phone(), phone());
    let (to_bob, to_alice) = offer_answer(&rt, &mut c, "talk", &alice, &bob);
    let (heard_a, heard_b) = exchange(&alice, ports(&to_alice), &bob, ports(&to_bob), 0..20, None);
    assert_eq!((heard_a.len(), heard_b.len()), (20, 20), "{}", relay.log());
    relay.assert_alive();
}

//! A flood against a cluster: `sipcluster location` over a real Redis, two `sipcluster
//! edge` processes. One source (127.0.0.2) floods edge A with 50,000 unauthenticated
//! REGISTERs a second for 2 s (bounded, loopback only) while SIPp (127.0.0.1) registers
//! and calls through both edges:
//!
//! * the legitimate calls succeed (at least 99 %);
//! * the flooder is banned on every edge within 1 s (edge B never saw it: it learns the
//!   ban from the cluster) and its datagrams are dropped on arrival there;
//! * the ban ends after `flood_ban_secs`, and the source is answered again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::redis::{Redis, prefix};
use common::{Proto, Server, Sipp, workdir};

const DOMAIN: &str = "sipcluster.local";
const FLOOD_RATE: u64 = 50_000;
const FLOOD_SECS: u64 = 2;
const BAN_SECS: u64 = 6;

fn register(dir: &Path, name: &str, edge: &Server, port: u16) {
    Sipp::new(name, "register.xml", Proto::Udp)
        .inf(&format!("bob;{DOMAIN};;127.0.0.1:{port};3600"))
        .auth("bob", "bob-secret", DOMAIN)
        .to(edge.sip)
        .run(dir)
        .assert_ok(1, name);
}

fn alice(name: &str, edge: &Server, calls: u32) -> Sipp {
    Sipp::new(name, "uac_call.xml", Proto::Udp)
        .inf(&format!("alice;{DOMAIN};alice-secret;bob"))
        .auth("alice", "alice-secret", &format!("bob@{DOMAIN}"))
        .to(edge.sip)
        .calls(calls)
        .rate(20)
        .timeout(40)
}

/// An unauthenticated REGISTER, new each time (its own Call-ID and branch).
fn flood_register(local: SocketAddr, i: u64) -> Vec<u8> {
    format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-fl{i}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:user{n}@{DOMAIN}>;tag=f{i}\r\nTo: <sip:user{n}@{DOMAIN}>\r\n\
         Call-ID: flood-{i}@127.0.0.2\r\nCSeq: 1 REGISTER\r\nContact: <sip:user{n}@{local}>\r\n\
         Content-Length: 0\r\n\r\n",
        n = i % 1000
    )
    .into_bytes()
}

/// `FLOOD_RATE` datagrams a second for `FLOOD_SECS` from 127.0.0.2 to `target`; returns
/// how many were sent.
fn flood(target: SocketAddr) -> u64 {
    let s = UdpSocket::bind("127.0.0.2:0").expect("127.0.0.2 (loopback)");
    let local = s.local_addr().unwrap();
    let start = Instant::now();
    let total = FLOOD_RATE * FLOOD_SECS;
    let mut sent = 0;
    while sent < total && start.elapsed() < Duration::from_secs(FLOOD_SECS + 2) {
        // Paced by the millisecond: 50 datagrams each.
        let due = (start.elapsed().as_micros() as u64 * FLOOD_RATE / 1_000_000).min(total);
        while sent < due {
            let _ = s.send_to(&flood_register(local, sent), target);
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    sent
}

/// Does `target` answer a REGISTER from 127.0.0.2 within `wait`?
fn answers_flooder(target: SocketAddr, wait: Duration) -> bool {
    let s = UdpSocket::bind("127.0.0.2:0").unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let local = s.local_addr().unwrap();
    s.send_to(&flood_register(local, 9_999_999), target)
        .unwrap();
    let mut buf = [0u8; 2048];
    s.recv(&mut buf).is_ok()
}

#[test]
fn a_flooder_is_banned_on_every_edge_within_a_second_while_calls_go_on() {
    let dir = workdir("flood_cluster");
    let test = "flood_cluster";
    let redis = Redis::standalone(&dir);
    let args = redis.location_args(&prefix(test));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let loc = Server::location(&dir, "location", &args);
    let cfg = dir.join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[security]\nflood_drops = 1000\nflood_window_secs = 10\nflood_ban_secs = {BAN_SECS}\n\
             ban_sync_ms = 200\n"
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let a = Server::edge(&dir, "edge-a", loc.sip, &["--config", &cfg]);
    let b = Server::edge(&dir, "edge-b", loc.sip, &["--config", &cfg]);
    assert!(
        answers_flooder(b.sip, Duration::from_secs(2)),
        "before: answered"
    );

    // bob answers through A; alice calls through A and through B, during the flood.
    let uas = Sipp::new("uas", "uas_answer.xml", Proto::Udp)
        .calls(200)
        .timeout(60);
    register(&dir, "register-a", &a, uas.port);
    register(&dir, "register-b", &b, uas.port);
    let callee = uas.spawn(&dir);
    std::thread::sleep(Duration::from_millis(300));
    let via_a = alice("alice-a", &a, 100).spawn(&dir);
    let via_b = alice("alice-b", &b, 100).spawn(&dir);
    std::thread::sleep(Duration::from_millis(500));

    let flood_started = Instant::now();
    let target = a.sip;
    let flooder = std::thread::spawn(move || flood(target));
    // When each edge shows the ban (its gauge of banned sources).
    let mut banned_at: [Option<Duration>; 2] = [None, None];
    while banned_at.iter().any(Option::is_none) && flood_started.elapsed() < Duration::from_secs(5)
    {
        for (i, e) in [&a, &b].iter().enumerate() {
            if banned_at[i].is_none() && e.metric("sipcluster_sip_banned_sources") >= 1.0 {
                banned_at[i] = Some(flood_started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = flooder.join().unwrap();
    let flood_secs = flood_started.elapsed().as_secs_f64();
    eprintln!(
        "flood: {sent} datagrams in {flood_secs:.2} s; banned on A after {:?}, on B after {:?}",
        banned_at[0], banned_at[1]
    );
    for (i, at) in banned_at.iter().enumerate() {
        let at = at.unwrap_or_else(|| panic!("edge {i} never banned the flooder"));
        assert!(
            at <= Duration::from_secs(1),
            "edge {i} banned it after {at:?}"
        );
    }
    assert!(sent >= FLOOD_RATE * FLOOD_SECS * 9 / 10, "{sent} sent");
    // Edge A dropped most of the flood on arrival; B drops the flooder too, never having
    // seen it flood.
    let blocked_a = a.metric("sipcluster_sip_transport_blocked_total");
    assert!(
        blocked_a >= (sent / 2) as f64,
        "{blocked_a} blocked at A of {sent}"
    );
    assert!(
        !answers_flooder(b.sip, Duration::from_millis(500)),
        "B answers the flooder"
    );
    assert!(b.metric("sipcluster_sip_transport_blocked_total") >= 1.0);
    assert_eq!(
        a.metric("sipcluster_sip_lockouts_total{reason=\"flood\"}"),
        1.0,
        "one ban at A"
    );
    assert_eq!(
        b.metric("sipcluster_sip_lockouts_total{reason=\"flood\"}"),
        0.0
    );

    // The legitimate calls: at least 99 % answered.
    let (oa, ob) = (via_a.wait(), via_b.wait());
    let ok = oa.successful + ob.successful;
    eprintln!("legitimate calls: {ok} of 200 answered; A: {oa:?}; B: {ob:?}");
    assert!(ok * 100 >= 200 * 99, "{ok} of 200 calls answered");
    drop(callee);

    // The ban ends: both edges answer the source again.
    let deadline = flood_started + Duration::from_secs(BAN_SECS + 5);
    while !(answers_flooder(a.sip, Duration::from_millis(300))
        && answers_flooder(b.sip, Duration::from_millis(300)))
    {
        assert!(Instant::now() < deadline, "the ban never ended");
    }
    let ended = flood_started.elapsed();
    eprintln!("ban over after {ended:?} (flood_ban_secs = {BAN_SECS})");
    assert!(
        ended >= Duration::from_secs(BAN_SECS - 1),
        "ended early: {ended:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while a.metric("sipcluster_sip_banned_sources") + b.metric("sipcluster_sip_banned_sources")
        > 0.0
    {
        assert!(Instant::now() < deadline, "gauges still show a ban");
        std::thread::sleep(Duration::from_millis(50));
    }
}

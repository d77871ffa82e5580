//! A flood against a cluster: `sipcluster location` over a real Redis, two `sipcluster
//! edge` processes. One source (127.0.0.2) floods edge A with 50,000 unauthenticated
//! REGISTERs a second for 2 s (bounded, loopback only) while SIPp (127.0.0.1) registers
//! and calls through both edges:
//!
//! * the legitimate calls succeed (at least 99 %);
//! * the flooder is banned on every edge within 1 s (edge B never saw it: it learns the
//!   ban from the cluster) and its datagrams are dropped on arrival there;
//! * the ban ends after `flood_ban_secs`, and the source is answered again.
//!
//! Then the same flood at a dispatcher in front of two edges (the dispatcher applies the
//! cluster's bans at its public side), and at an all-in-one (a banned client on the
//! dispatcher's own loopback address cuts nobody else off).
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

/// One flood at a time: each saturates the machine's two cores for its timing claims.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

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
    flood_from("127.0.0.2", target, FLOOD_RATE, FLOOD_SECS)
}

/// `rate` datagrams a second for `secs` from `source` (a loopback address) to `target`;
/// returns how many were sent.
fn flood_from(source: &str, target: SocketAddr, rate: u64, secs: u64) -> u64 {
    let s = UdpSocket::bind((source, 0)).expect("a loopback source");
    let local = s.local_addr().unwrap();
    let start = Instant::now();
    let total = rate * secs;
    let mut sent = 0;
    while sent < total && start.elapsed() < Duration::from_secs(secs + 2) {
        // Paced by the millisecond (50 datagrams each at 50,000/s).
        let due = (start.elapsed().as_micros() as u64 * rate / 1_000_000).min(total);
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
    answers("127.0.0.2", target, wait)
}

/// Does `target` answer a REGISTER from `source` within `wait`?
fn answers(source: &str, target: SocketAddr, wait: Duration) -> bool {
    let s = UdpSocket::bind((source, 0)).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    let local = s.local_addr().unwrap();
    s.send_to(&flood_register(local, 9_999_999), target)
        .unwrap();
    let mut buf = [0u8; 2048];
    s.recv(&mut buf).is_ok()
}

/// A private Redis and a location service over it (the cluster's shared state).
fn location_over_redis(dir: &Path, test: &str) -> (Redis, Server) {
    let redis = Redis::standalone(dir);
    let args = redis.location_args(&prefix(test));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let loc = Server::location(dir, "location", &args);
    (redis, loc)
}

/// The flood ban (`BAN_SECS`) ends: each of `entries` answers the flooder again, not
/// early, and the `edges`' gauges go back to 0.
fn ban_ends(flood_started: Instant, entries: &[SocketAddr], edges: [&Server; 2]) {
    let deadline = flood_started + Duration::from_secs(BAN_SECS + 5);
    while !entries
        .iter()
        .all(|e| answers_flooder(*e, Duration::from_millis(300)))
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
    while edges
        .iter()
        .map(|e| e.metric("sipcluster_sip_banned_sources"))
        .sum::<f64>()
        > 0.0
    {
        assert!(
            Instant::now() < deadline,
            "the edges' gauges still show a ban"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_flooder_is_banned_on_every_edge_within_a_second_while_calls_go_on() {
    let _serial = one_at_a_time();
    let dir = workdir("flood_cluster");
    let (_redis, loc) = location_over_redis(&dir, "flood_cluster");
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
    ban_ends(flood_started, &[a.sip, b.sip], [&a, &b]);
}

/// The same flood at a dispatcher in front of two edges, all sharing the location
/// service. The dispatcher counts each source's datagrams before parsing them: the
/// flooder goes over `bans.flood_rate`, is banned there at once and the ban is shared, so
/// both edges (which see next to none of the flood) ban it too within a second; the
/// calls through the dispatcher go on; the ban ends everywhere. Before the flood, a ban
/// an edge starts (put in the location service with the edge token, as an edge does) is
/// applied at the dispatcher's public side within its `bans.sync_ms`.
#[test]
fn a_flooder_is_banned_at_the_dispatcher_and_on_every_edge() {
    let _serial = one_at_a_time();
    let dir = workdir("flood_dispatcher");
    let (_redis, loc) = location_over_redis(&dir, "flood_dispatcher");
    let cfg = dir.join("edge.toml");
    std::fs::write(&cfg, "[security]\nban_sync_ms = 200\n").unwrap();
    let cfg = cfg.display().to_string();
    let ea = SocketAddr::from(([127, 0, 0, 1], common::free_low_port()));
    let eb = SocketAddr::from(([127, 0, 0, 1], common::free_low_port()));
    let a = Server::edge_at(&dir, "edge-a", ea, loc.sip, &["--config", &cfg]);
    let b = Server::edge_at(&dir, "edge-b", eb, loc.sip, &["--config", &cfg]);
    let location = format!("http://{}", loc.sip);
    let token = common::token_files(&dir).edge_str();
    let dcfg = dir.join("dispatcher.toml");
    std::fs::write(
        &dcfg,
        format!("[bans]\nflood_rate = 2000\nflood_ban_secs = {BAN_SECS}\nsync_ms = 100\n"),
    )
    .unwrap();
    let dcfg = dcfg.display().to_string();
    let (disp, _admin) = Server::dispatcher(
        &dir,
        "dispatcher",
        &[a.sip, b.sip],
        &[
            "--config",
            &dcfg,
            "--location",
            &location,
            "--edge-token-file",
            &token,
        ],
    );
    let blocked = "sipcluster_dispatcher_sip_transport_blocked_total{side=\"public\"}";
    assert!(
        answers_flooder(disp.sip, Duration::from_secs(2)),
        "before: answered"
    );

    // 1. A ban an edge started reaches the dispatcher through the location service.
    assert!(answers("127.0.0.4", disp.sip, Duration::from_secs(2)));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let edge_client = {
        let _in = rt.enter();
        common::location_client(&location, Some(common::EDGE_TOKEN))
    };
    let put = Instant::now();
    rt.block_on(edge_client.ban("source:127.0.0.4", 2)).unwrap();
    // In force when the dispatcher drops the source's datagrams on arrival.
    loop {
        let _ = answers("127.0.0.4", disp.sip, Duration::from_millis(50));
        if disp.metric(blocked) >= 1.0 {
            break;
        }
        assert!(
            put.elapsed() < Duration::from_secs(2),
            "the cluster's ban never applied"
        );
    }
    let applied = put.elapsed();
    eprintln!("a ban from the cluster dropped at the dispatcher after {applied:?}");
    assert!(applied <= Duration::from_secs(1), "{applied:?}");
    assert!(!answers("127.0.0.4", disp.sip, Duration::from_millis(500)));
    assert!(
        answers("127.0.0.1", disp.sip, Duration::from_secs(2)),
        "others served"
    );
    assert_eq!(disp.metric("sipcluster_dispatcher_flood_bans_total"), 0.0);
    // It ends (2 s), here and on the edges, before the flood.
    while !answers("127.0.0.4", disp.sip, Duration::from_millis(300)) {
        assert!(
            put.elapsed() < Duration::from_secs(5),
            "the cluster's ban never ended"
        );
    }
    while a.metric("sipcluster_sip_banned_sources") + b.metric("sipcluster_sip_banned_sources")
        > 0.0
    {
        assert!(
            put.elapsed() < Duration::from_secs(5),
            "the edges' ban never ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // 2. The flood, while bob answers and alice calls through the dispatcher.
    let uas = Sipp::new("uas", "uas_answer.xml", Proto::Udp)
        .calls(100)
        .timeout(60);
    register(&dir, "register", &disp, uas.port);
    let callee = uas.spawn(&dir);
    std::thread::sleep(Duration::from_millis(300));
    let caller = alice("alice", &disp, 100).spawn(&dir);
    std::thread::sleep(Duration::from_millis(500));

    let before = disp.metric(blocked);
    let flood_started = Instant::now();
    let target = disp.sip;
    let flooder = std::thread::spawn(move || flood(target));
    // When each shows the ban: the dispatcher drops the flood, the edges' gauges.
    let mut banned_at: [Option<Duration>; 3] = [None, None, None];
    while banned_at.iter().any(Option::is_none) && flood_started.elapsed() < Duration::from_secs(5)
    {
        let shown = [
            disp.metric("sipcluster_dispatcher_flood_bans_total") >= 1.0,
            a.metric("sipcluster_sip_banned_sources") >= 1.0,
            b.metric("sipcluster_sip_banned_sources") >= 1.0,
        ];
        for (at, shown) in banned_at.iter_mut().zip(shown) {
            if at.is_none() && shown {
                *at = Some(flood_started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = flooder.join().unwrap();
    let dropped = disp.metric(blocked) - before;
    let reached = a.metric("sipcluster_sip_requests_total{method=\"REGISTER\"}")
        + b.metric("sipcluster_sip_requests_total{method=\"REGISTER\"}");
    eprintln!(
        "flood: {sent} datagrams; banned at the dispatcher after {:?}, on edge A after {:?}, \
         on B after {:?}; {dropped} dropped on arrival at the dispatcher; REGISTERs that \
         reached the edges: {reached}",
        banned_at[0], banned_at[1], banned_at[2]
    );
    for (who, at) in ["the dispatcher", "edge A", "edge B"].iter().zip(banned_at) {
        let at = at.unwrap_or_else(|| panic!("{who} never banned the flooder"));
        assert!(at <= Duration::from_secs(1), "{who} banned it after {at:?}");
    }
    assert!(sent >= FLOOD_RATE * FLOOD_SECS * 9 / 10, "{sent} sent");
    // Of the flood, about one window's worth (the rate) was relayed; most of the rest was
    // dropped before parsing (the kernel drops some when the socket's buffer is full).
    assert!(
        dropped >= (sent / 2) as f64,
        "{dropped} dropped at the dispatcher of {sent}"
    );
    assert!(
        reached <= 2.0 * 2000.0 + 100.0,
        "{reached} flood REGISTERs reached the edges"
    );
    assert_eq!(disp.metric("sipcluster_dispatcher_flood_bans_total"), 1.0);
    assert!(
        !answers_flooder(disp.sip, Duration::from_millis(500)),
        "the dispatcher relays the banned source"
    );
    assert_eq!(disp.metric("sipcluster_dispatcher_banned_sources"), 1.0);

    let out = caller.wait();
    eprintln!(
        "legitimate calls: {} of 100 answered; {out:?}",
        out.successful
    );
    assert!(
        out.successful >= 99,
        "{} of 100 calls answered",
        out.successful
    );
    drop(callee);

    // 3. The ban ends at the dispatcher and on the edges.
    ban_ends(flood_started, &[disp.sip], [&a, &b]);
}

/// The all-in-one: its edge hears every client from its dispatcher's loopback address,
/// so its bans are dropped at the dispatcher's public side, never at the edge's socket.
/// A client on 127.0.0.1 (the dispatcher's own internal address) floods and is banned;
/// a client on 127.0.0.3 is still served, and the banned one is dropped on arrival.
#[test]
fn an_all_in_one_drops_a_banned_client_without_cutting_off_the_others() {
    let _serial = one_at_a_time();
    let dir = workdir("flood_all_in_one");
    let cfg = dir.join("sipcluster.toml");
    std::fs::write(
        &cfg,
        "[security]\nflood_drops = 200\nflood_window_secs = 10\nflood_ban_secs = 4\n",
    )
    .unwrap();
    let srv = Server::start(&dir, &["--config", &cfg.display().to_string()]);
    assert!(answers("127.0.0.1", srv.sip, Duration::from_secs(2)));
    assert!(answers("127.0.0.3", srv.sip, Duration::from_secs(2)));

    let sent = flood_from("127.0.0.1", srv.sip, 10_000, 1);
    let deadline = Instant::now() + Duration::from_secs(3);
    while srv.metric("sipcluster_sip_banned_sources") < 1.0 {
        assert!(Instant::now() < deadline, "no ban after {sent} datagrams");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !answers("127.0.0.1", srv.sip, Duration::from_millis(500)),
        "the banned client is answered"
    );
    assert!(
        answers("127.0.0.3", srv.sip, Duration::from_secs(2)),
        "another client is cut off by a ban of 127.0.0.1"
    );
    let blocked = srv.metric("sipcluster_dispatcher_sip_transport_blocked_total{side=\"public\"}");
    assert!(blocked >= 1.0, "dropped at the public side: {blocked}");
    assert_eq!(
        srv.metric("sipcluster_sip_transport_blocked_total"),
        0.0,
        "nothing dropped at the edge's own socket"
    );
    assert_eq!(srv.metric("sipcluster_dispatcher_banned_sources"), 1.0);
    eprintln!(
        "all-in-one: {sent} datagrams from 127.0.0.1, banned; {blocked} dropped on arrival; 127.0.0.3 served"
    );
}

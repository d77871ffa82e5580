//! SIP over TCP against clients that hold connections, through the all-in-one process:
//!
//! * at its connection caps (a low configured cap: 4 per source, 8 in all) a new
//!   connection is closed at once and counted, while `/healthz` and `/readyz` answer and a
//!   client from another source address (127.0.0.2) is still served;
//! * a slowloris client (one header byte every 250 ms: the idle timer never fires) is
//!   closed at the message deadline (1 s), counted and logged;
//! * under a low `RLIMIT_NOFILE` (256) the default cap (10,000) is lowered to leave a
//!   reserve, so with every connection slot taken the process still has descriptors for
//!   `/healthz` and UDP SIP.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, free_addr, free_low_port, http_get, status, workdir};

fn options(server: SocketAddr, local: SocketAddr, branch: &str, transport: &str) -> String {
    format!(
        "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag={branch}\r\nTo: <sip:{server}>\r\n\
         Call-ID: {branch}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let src: SocketAddr = format!("{from}:0").parse().expect("address");
    s.bind(&src.into()).expect("bind source");
    s.connect_timeout(&to.into(), Duration::from_secs(2))
        .expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s
}

/// An OPTIONS over `s`, answered 200 on the same connection.
fn served(s: &mut TcpStream, server: SocketAddr, branch: &str) -> bool {
    let local = s.local_addr().expect("local");
    if s.write_all(options(server, local, branch, "TCP").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut buf = vec![0u8; 4096];
    match s.read(&mut buf) {
        Ok(n) if n > 0 => status(&String::from_utf8_lossy(&buf[..n])) == 200,
        _ => false,
    }
}

/// The server closed `s` (EOF or reset) within `within`, without sending anything.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0) | Err(_)) && {
        // A timeout is an error too: tell it apart from a close.
        let mut again = [0u8; 1];
        s.set_nonblocking(true).expect("nonblocking");
        let r = s.read(&mut again);
        !matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// The sum of every sample of `name` whose labels include `label` (label order varies
/// with the registry nesting).
fn sample_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn write_config(dir: &Path, limits: &str) -> String {
    let p = dir.join("limits.toml");
    std::fs::write(&p, format!("[limits]\n{limits}")).expect("config file");
    p.display().to_string()
}

#[test]
fn at_the_tcp_caps_healthz_and_another_source_are_still_served() {
    let dir = workdir("tcp_caps");
    let cfg = write_config(
        &dir,
        "tcp_max_connections = 8\ntcp_max_connections_per_source = 4\n",
    );
    let mut srv = Server::start(&dir, &["--config", &cfg]);
    let sip = srv.sip;
    let mut held = Vec::new();
    for i in 0..4 {
        let mut c = connect_from("127.0.0.1", sip);
        assert!(
            served(&mut c, sip, &format!("a{i}")),
            "client {i} of 127.0.0.1"
        );
        held.push(c);
    }
    // The fifth from the same address: closed at once.
    let mut over = connect_from("127.0.0.1", sip);
    assert!(
        closed_within(&mut over, Duration::from_secs(1)),
        "fifth from 127.0.0.1"
    );
    // Another source is served all the same.
    for i in 0..4 {
        let mut c = connect_from("127.0.0.2", sip);
        assert!(
            served(&mut c, sip, &format!("b{i}")),
            "client {i} of 127.0.0.2"
        );
        held.push(c);
    }
    // 8 in all: a third source is closed at once too.
    let mut over = connect_from("127.0.0.3", sip);
    assert!(
        closed_within(&mut over, Duration::from_secs(1)),
        "ninth connection"
    );
    // Health and metrics answer on their own budget meanwhile.
    assert_eq!(http_get(srv.metrics, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(srv.metrics, "/readyz").map(|r| r.0), Some(200));
    let text = srv.scrape();
    let refused = "sipcluster_dispatcher_sip_transport_tcp_refused_total";
    assert_eq!(
        sample_sum(&text, refused, "reason=\"source_limit\""),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample_sum(&text, refused, "reason=\"connection_limit\""),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample_sum(
            &text,
            "sipcluster_dispatcher_sip_transport_tcp_max_connections",
            "public"
        ),
        8.0
    );
    assert!(
        srv.log().contains("tcp connection refused"),
        "{}",
        srv.log()
    );
    // A slot frees up when a client leaves.
    drop(held.remove(0));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = connect_from("127.0.0.3", sip);
        if served(&mut c, sip, "c0") {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came back");
        std::thread::sleep(Duration::from_millis(100));
    }
    srv.assert_alive();
}

#[test]
fn a_slowloris_client_is_closed_at_the_message_deadline() {
    let dir = workdir("tcp_slowloris");
    let cfg = write_config(
        &dir,
        "tcp_message_timeout_secs = 1\ntcp_idle_timeout_secs = 600\n",
    );
    let srv = Server::start(&dir, &["--config", &cfg]);
    let mut c = TcpStream::connect(srv.sip).expect("connect");
    let local = c.local_addr().expect("local");
    let msg = options(srv.sip, local, "slow", "TCP");
    c.set_read_timeout(Some(Duration::from_millis(250)))
        .expect("timeout");
    // One byte every 250 ms, bounded by the message's length; stop once closed.
    let start = Instant::now();
    let mut closed = None;
    for b in msg.as_bytes() {
        if c.write_all(&[*b]).is_err() {
            closed = Some(start.elapsed());
            break;
        }
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(0) => {
                closed = Some(start.elapsed());
                break;
            }
            Ok(_) => panic!("answered a message it never got whole"),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = Some(start.elapsed());
                break;
            }
        }
    }
    let closed = closed.expect("the slow client kept its connection");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
        "closed {closed:?} after the first byte; deadline 1 s"
    );
    let text = srv.scrape();
    assert_eq!(
        sample_sum(
            &text,
            "sipcluster_dispatcher_sip_transport_tcp_timeouts_total",
            "reason=\"message_timeout\""
        ),
        1.0,
        "{text}"
    );
    assert!(srv.log().contains("peer too slow"), "{}", srv.log());
}

/// `RLIMIT_NOFILE` 256 and the default cap: the cap in force is lowered to 128, leaving
/// the rest for everything else, so with every slot taken `/healthz` and SIP over UDP
/// still work.
#[test]
fn under_a_low_descriptor_limit_the_cap_leaves_a_reserve() {
    let dir = workdir("tcp_rlimit");
    let sip = SocketAddr::from(([127, 0, 0, 1], free_low_port()));
    let (metrics, loc, admin) = (free_addr(), free_addr(), free_addr());
    let log = std::fs::File::create(dir.join("sipcluster.log")).expect("log file");
    // The limit is set by the shell the process is exec'd from: it starts with it.
    let mut child = KillOnDrop(
        Command::new("sh")
            .args(["-c", "ulimit -n 256 && exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_sipcluster"))
            .args(["all-in-one", "--listen", &sip.to_string()])
            .args(["--metrics", &metrics.to_string()])
            .args([
                "--location-listen",
                &loc.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args(["--nonce-secret", common::NONCE_SECRET])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start sipcluster"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(metrics, "/readyz").is_none_or(|(c, _)| c != 200) {
        assert!(Instant::now() < deadline, "not ready in 20 s");
        assert!(
            child.0.try_wait().ok().flatten().is_none(),
            "exited at start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log_text = || std::fs::read_to_string(dir.join("sipcluster.log")).unwrap_or_default();
    assert!(
        log_text().contains("tcp_max_connections lowered"),
        "{}",
        log_text()
    );
    let scrape = || {
        http_get(metrics, "/metrics")
            .map(|r| r.1)
            .unwrap_or_default()
    };
    assert_eq!(
        sample_sum(
            &scrape(),
            "sipcluster_dispatcher_sip_transport_tcp_max_connections",
            "public"
        ),
        128.0
    );
    // Take every slot (bounded: 140 attempts), each from its own source address so the
    // per-source cap (64) is not what stops them.
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..140u32 {
        let from = format!("127.0.{}.{}", 1 + i / 200, 1 + i % 200);
        let mut c = connect_from(&from, sip);
        if served(&mut c, sip, &format!("r{i}")) {
            held.push(c);
        } else {
            refused += 1;
        }
    }
    assert_eq!((held.len(), refused), (128, 12));
    assert_eq!(http_get(metrics, "/healthz").map(|r| r.0), Some(200));
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let local = udp.local_addr().expect("local");
    udp.send_to(options(sip, local, "u1", "UDP").as_bytes(), sip)
        .expect("send");
    let mut buf = [0u8; 4096];
    let (n, _) = udp.recv_from(&mut buf).expect("UDP answer");
    assert_eq!(status(&String::from_utf8_lossy(&buf[..n])), 200);
    assert!(
        !log_text().contains("accept failed"),
        "the cap kept accept from running out of descriptors: {}",
        log_text()
    );
}

/// The process, killed (by its PID) and reaped however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

//! The drivers over real loopback sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sip_core::SipMessage;
use sip_transport::{Inbound, TransportConfig, TransportMetrics, Transports};
use sip_txn::{ClientTxnId, Target, Transport, TxnRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn options(branch: &str) -> String {
    format!(
        "OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:t@x>;tag=1\r\nTo: <sip:edge@127.0.0.1>\r\nCall-ID: {branch}@t\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

async fn start(queue: usize, idle: Duration) -> (Transports, mpsc::Receiver<Inbound>) {
    let (tx, rx) = mpsc::channel(queue);
    let cfg = TransportConfig {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp_idle_timeout: idle,
        ..TransportConfig::default()
    };
    let (t, _tasks) = Transports::bind(cfg, tx, TransportMetrics::default())
        .await
        .unwrap();
    (t, rx)
}

async fn next_message(rx: &mut mpsc::Receiver<Inbound>) -> (SipMessage, Target) {
    loop {
        match timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            Inbound::Message { msg, source, .. } => return (msg, source),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn udp_in_and_out() {
    let (t, mut rx) = start(16, Duration::from_secs(60)).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    peer.send_to(options("z9hG4bKu1").as_bytes(), t.udp_addrs()[0])
        .await
        .unwrap();
    let (msg, source) = next_message(&mut rx).await;
    assert_eq!(msg.call_id(), Ok("z9hG4bKu1@t"));
    assert_eq!(source.transport, Transport::Udp);
    assert_eq!(source.addr, peer.local_addr().unwrap());
    // Out of the listening socket, to the peer.
    t.send(source, Bytes::from_static(b"hello"), TxnRef::Stateless);
    let mut buf = [0u8; 64];
    let (n, from) = timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(
        from,
        t.udp_addrs()[0],
        "replies leave from the listening port"
    );
}

#[tokio::test]
async fn udp_garbage_is_answered_or_dropped() {
    let (t, mut rx) = start(16, Duration::from_secs(60)).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let bad = options("z9hG4bKu2").replace("OPTIONS sip", "OPTIONS  sip");
    peer.send_to(bad.as_bytes(), t.udp_addrs()[0])
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let reply = SipMessage::parse(buf[..n].to_vec()).unwrap();
    assert_eq!(reply.status(), Some(400));
    // Garbage without a Via is dropped; the socket keeps serving.
    for _ in 0..100 {
        peer.send_to(b"\x16\x03\x01garbage", t.udp_addrs()[0])
            .await
            .unwrap();
    }
    peer.send_to(options("z9hG4bKu3").as_bytes(), t.udp_addrs()[0])
        .await
        .unwrap();
    let (msg, _) = next_message(&mut rx).await;
    assert_eq!(msg.call_id(), Ok("z9hG4bKu3@t"));
    assert!(
        timeout(Duration::from_millis(200), peer.recv_from(&mut buf))
            .await
            .is_err(),
        "nothing else came back"
    );
}

#[tokio::test]
async fn tcp_flow_framing_keepalive_and_reply() {
    let (t, mut rx) = start(16, Duration::from_secs(60)).await;
    let mut c = TcpStream::connect(t.tcp_addrs()[0]).await.unwrap();
    // Two pipelined messages and a ping, one byte at a time.
    let mut stream = options("z9hG4bKt1").replace("UDP", "TCP").into_bytes();
    stream.extend_from_slice(b"\r\n\r\n");
    stream.extend_from_slice(options("z9hG4bKt2").replace("UDP", "TCP").as_bytes());
    for b in &stream {
        c.write_all(&[*b]).await.unwrap();
    }
    let (m1, s1) = next_message(&mut rx).await;
    let (m2, s2) = next_message(&mut rx).await;
    assert_eq!(
        (m1.call_id(), m2.call_id()),
        (Ok("z9hG4bKt1@t"), Ok("z9hG4bKt2@t"))
    );
    assert_eq!(s1.flow, s2.flow);
    assert!(s1.flow.is_some());
    // The pong, then a reply sent over the flow.
    let mut pong = [0u8; 2];
    timeout(WAIT, c.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pong, b"\r\n");
    t.send(
        s1,
        Bytes::from_static(b"SIP/2.0 200 OK\r\n"),
        TxnRef::Stateless,
    );
    let mut got = [0u8; 16];
    timeout(WAIT, c.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"SIP/2.0 200 OK\r\n");
    assert_eq!(t.connection_count(), 1);
}

#[tokio::test]
async fn tcp_bad_framing_gets_400_and_close() {
    let (t, mut rx) = start(16, Duration::from_secs(60)).await;
    let mut c = TcpStream::connect(t.tcp_addrs()[0]).await.unwrap();
    let no_cl = options("z9hG4bKt3").replace("Content-Length: 0\r\n", "");
    c.write_all(no_cl.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    timeout(WAIT, c.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let reply = SipMessage::parse(out).unwrap();
    assert_eq!(reply.status(), Some(400));
    assert_eq!(
        reply.reason(),
        Some(&b"Missing Content-Length on stream transport"[..])
    );
    loop {
        match timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            Inbound::FlowClosed { .. } => break,
            Inbound::Message { .. } => panic!("nothing was delivered"),
            _ => {}
        }
    }
    assert_eq!(t.connection_count(), 0);
}

#[tokio::test]
async fn tcp_idle_timeout_closes() {
    let (t, mut rx) = start(16, Duration::from_millis(200)).await;
    let mut c = TcpStream::connect(t.tcp_addrs()[0]).await.unwrap();
    let mut out = Vec::new();
    timeout(WAIT, c.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.is_empty());
    assert!(matches!(
        timeout(WAIT, rx.recv()).await.unwrap(),
        Some(Inbound::FlowClosed { .. })
    ));
}

#[tokio::test]
async fn tcp_outbound_connect_reuse_and_failure() {
    let (t, mut rx) = start(16, Duration::from_secs(60)).await;
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = Target {
        transport: Transport::Tcp,
        addr: server.local_addr().unwrap(),
        flow: None,
    };
    t.send(target, Bytes::from_static(b"one"), TxnRef::Stateless);
    t.send(target, Bytes::from_static(b"two"), TxnRef::Stateless);
    let (mut conn, _) = timeout(WAIT, server.accept()).await.unwrap().unwrap();
    let mut got = [0u8; 6];
    timeout(WAIT, conn.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"onetwo", "both sends share one connection");
    t.send(target, Bytes::from_static(b"3"), TxnRef::Stateless);
    let mut one = [0u8; 1];
    timeout(WAIT, conn.read_exact(&mut one))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(t.connection_count(), 1, "reused");
    // Nobody listens here: the failure comes back with its origin.
    let closed: SocketAddr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let origin = TxnRef::Client(ClientTxnId(42));
    t.send(
        Target {
            transport: Transport::Tcp,
            addr: closed,
            flow: None,
        },
        Bytes::from_static(b"x"),
        origin,
    );
    loop {
        match timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            Inbound::SendFailed { origin: o, target } => {
                assert_eq!(o, origin);
                assert_eq!(target.addr, closed);
                break;
            }
            _ => continue,
        }
    }
}

#[tokio::test]
async fn overload_answers_503_with_retry_after() {
    // A queue of one that nobody drains: the second new request is refused.
    let (t, _rx) = start(1, Duration::from_secs(60)).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    peer.send_to(options("z9hG4bKo1").as_bytes(), t.udp_addrs()[0])
        .await
        .unwrap();
    peer.send_to(options("z9hG4bKo2").as_bytes(), t.udp_addrs()[0])
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    let (n, _) = timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let reply = SipMessage::parse(buf[..n].to_vec()).unwrap();
    assert_eq!(reply.status(), Some(503));
    assert_eq!(reply.call_id(), Ok("z9hG4bKo2@t"));
    assert_eq!(reply.retry_after(), Ok(Some(5)));
}

#[tokio::test]
async fn a_standing_queue_refuses_new_requests_before_parsing_but_admits_favoured_ones() {
    let (t, mut rx) = start(1024, Duration::from_secs(60)).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = t.udp_addrs()[0];
    let mut ctl = t
        .admission_control(sip_transport::admission::TARGET)
        .expect("on");
    // 70 requests queued, nobody draining yet: a queue, but not yet known to be standing.
    for i in 0..70 {
        peer.send_to(options(&format!("z9hG4bKq{i}")).as_bytes(), to)
            .await
            .unwrap();
    }
    let mut queued = Vec::new();
    for _ in 0..70 {
        queued.push(next_message(&mut rx).await);
    }
    // The core reports 100 ms of messages that each waited 300 ms: a standing queue, drained
    // at 100/s, so new requests are admitted only to the floor depth of 64.
    let now = std::time::Instant::now();
    for i in 0..=100u32 {
        let at = now + Duration::from_millis(u64::from(i));
        ctl.observe(at, at - Duration::from_millis(300));
    }
    assert_eq!(ctl.depth(), Some(64));
    // Refill past the depth, then one more of each kind.
    for i in 0..64 {
        peer.send_to(options(&format!("z9hG4bKr{i}")).as_bytes(), to)
            .await
            .unwrap();
    }
    let mut ready = 0;
    for _ in 0..200 {
        ready = 1024 - rx.capacity();
        if ready >= 64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(ready, 64, "admitted up to the depth");
    let new = options("z9hG4bKnew");
    let with_creds = options("z9hG4bKcreds").replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nAuthorization: Digest username=\"t\", realm=\"x\", nonce=\"n\", uri=\"sip:x\", response=\"0\"\r\n",
    );
    let in_dialog =
        options("z9hG4bKdlg").replace("To: <sip:edge@127.0.0.1>", "To: <sip:edge@127.0.0.1>;tag=9");
    for m in [&new, &with_creds, &in_dialog] {
        peer.send_to(m.as_bytes(), to).await.unwrap();
    }
    let mut buf = [0u8; 2048];
    let (n, _) = timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let reply = SipMessage::parse(buf[..n].to_vec()).unwrap();
    assert_eq!(reply.status(), Some(503));
    assert_eq!(reply.call_id(), Ok("z9hG4bKnew@t"), "only the new request");
    assert_eq!(reply.retry_after(), Ok(Some(5)));
    let mut favoured = Vec::new();
    for _ in 0..66 {
        favoured.push(next_message(&mut rx).await.0.call_id().unwrap().to_owned());
    }
    assert_eq!(
        &favoured[64..],
        ["z9hG4bKcreds@t", "z9hG4bKdlg@t"],
        "credentials and dialogs get in past the depth"
    );
    assert!(
        timeout(Duration::from_millis(200), peer.recv_from(&mut buf))
            .await
            .is_err(),
        "one refusal only"
    );
}

/// A second process (or instance) must not silently share a port: with SO_REUSEADDR on
/// UDP, Linux lets both bind and delivers the first one's traffic to the newer socket.
#[tokio::test]
async fn a_busy_port_is_an_error_for_udp_and_tcp() {
    let (first, _rx) = start(16, Duration::from_secs(60)).await;
    for (udp, tcp) in [
        (vec![first.udp_addrs()[0]], vec![]),
        (vec![], vec![first.tcp_addrs()[0]]),
    ] {
        let (tx, _rx2) = mpsc::channel(16);
        let cfg = TransportConfig {
            udp,
            tcp,
            ..TransportConfig::default()
        };
        let err = Transports::bind(cfg, tx, TransportMetrics::default())
            .await
            .map(|_| ())
            .expect_err("a port in use must not bind");
        let text = err.to_string();
        assert!(
            text.contains("cannot listen on") && text.contains("in use"),
            "{text}"
        );
    }
    // The first instance still gets its traffic.
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut rx = _rx;
    peer.send_to(options("z9hG4bKbusy").as_bytes(), first.udp_addrs()[0])
        .await
        .unwrap();
    let (msg, _) = next_message(&mut rx).await;
    assert_eq!(msg.call_id(), Ok("z9hG4bKbusy@t"));
}

async fn start_with(
    cfg: TransportConfig,
) -> (Transports, mpsc::Receiver<Inbound>, TransportMetrics) {
    let (tx, rx) = mpsc::channel(64);
    let m = TransportMetrics::default();
    let cfg = TransportConfig {
        udp: vec![],
        tcp: vec!["127.0.0.1:0".parse().unwrap()],
        ..cfg
    };
    let (t, _tasks) = Transports::bind(cfg, tx, m.clone()).await.unwrap();
    (t, rx, m)
}

fn reason(
    family: &prometheus_client::metrics::family::Family<
        telemetry::ReasonLabel,
        prometheus_client::metrics::counter::Counter,
    >,
    reason: &'static str,
) -> u64 {
    family
        .get_or_create(&telemetry::ReasonLabel { reason })
        .get()
}

/// How long until the server closes `c` (EOF or reset), at most `within`.
async fn closed_within(c: &mut TcpStream, within: Duration) -> Option<Duration> {
    let t = std::time::Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match timeout(within.saturating_sub(t.elapsed()), c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

async fn send_options(c: &mut TcpStream, branch: &str) -> bool {
    let msg = options(branch).replace("UDP", "TCP");
    c.write_all(msg.as_bytes()).await.is_ok()
}

/// A connection from `ip` (a loopback address other than 127.0.0.1 is a second source).
async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// Slowloris: one header byte every 50 ms keeps the idle timer (60 s) from ever firing,
/// but the message is not complete within its deadline (500 ms) of its first byte, so
/// the connection is closed, counted, and nothing reaches the core.
#[tokio::test]
async fn tcp_message_incomplete_at_its_deadline_closes_the_connection() {
    let (t, mut rx, m) = start_with(TransportConfig {
        tcp_idle_timeout: Duration::from_secs(60),
        tcp_message_timeout: Duration::from_millis(500),
        ..TransportConfig::default()
    })
    .await;
    // First a whole message sent slowly but in time, then keep-alives: neither counts.
    let mut c = TcpStream::connect(t.tcp_addrs()[0]).await.unwrap();
    let msg = options("z9hG4bKs0").replace("UDP", "TCP");
    let (a, b) = msg.split_at(msg.len() / 2);
    c.write_all(a.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.write_all(b.as_bytes()).await.unwrap();
    let (m0, _) = next_message(&mut rx).await;
    assert_eq!(m0.call_id(), Ok("z9hG4bKs0@t"));
    for _ in 0..4 {
        c.write_all(b"\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut pongs = [0u8; 8];
    timeout(WAIT, c.read_exact(&mut pongs))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason(&m.tcp_timeouts, "message_timeout"), 0);

    // Now the slow one: bounded by the message's length (~13 s at 50 ms a byte).
    let slow = options("z9hG4bKs1").replace("UDP", "TCP").into_bytes();
    let start = std::time::Instant::now();
    let mut closed = None;
    for b in &slow {
        if c.write_all(&[*b]).await.is_err() {
            closed = Some(start.elapsed());
            break;
        }
        if closed_within(&mut c, Duration::from_millis(50))
            .await
            .is_some()
        {
            closed = Some(start.elapsed());
            break;
        }
    }
    let closed = closed.expect("the slow connection was never closed");
    assert!(
        closed >= Duration::from_millis(450) && closed < Duration::from_millis(2500),
        "closed {closed:?} after the first byte; deadline 500 ms"
    );
    assert_eq!(reason(&m.tcp_timeouts, "message_timeout"), 1);
    loop {
        match timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            Inbound::FlowClosed { .. } => break,
            Inbound::Message { msg, .. } => panic!("delivered: {:?}", msg.call_id()),
            _ => {}
        }
    }
}

/// The caps: 2 per source, 4 in all. The third connection from one address is closed at
/// once while another address is still served; at 4 a third address is closed at once;
/// a closed connection gives its slot back.
#[tokio::test]
async fn tcp_connection_caps_per_source_and_in_all() {
    let (t, mut rx, m) = start_with(TransportConfig {
        tcp_max_connections: 4,
        tcp_max_connections_per_source: 2,
        ..TransportConfig::default()
    })
    .await;
    let addr = t.tcp_addrs()[0];
    assert_eq!(t.max_connections(), 4);
    assert_eq!(m.tcp_max_connections.get(), 4);
    let mut held = Vec::new();
    for n in 0..2 {
        let mut c = connect_from("127.0.0.1", addr).await;
        assert!(send_options(&mut c, &format!("z9hG4bKcap{n}")).await);
        assert_eq!(
            next_message(&mut rx).await.0.call_id(),
            Ok(format!("z9hG4bKcap{n}@t").as_str())
        );
        held.push(c);
    }
    let mut third = connect_from("127.0.0.1", addr).await;
    let took = closed_within(&mut third, WAIT).await.expect("closed");
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    assert_eq!(reason(&m.tcp_refused, "source_limit"), 1);

    // Another source is served meanwhile.
    for n in 2..4 {
        let mut c = connect_from("127.0.0.2", addr).await;
        assert!(send_options(&mut c, &format!("z9hG4bKcap{n}")).await);
        assert_eq!(
            next_message(&mut rx).await.0.call_id(),
            Ok(format!("z9hG4bKcap{n}@t").as_str())
        );
        held.push(c);
    }
    assert_eq!(t.inbound_connections(), 4);
    let mut fifth = connect_from("127.0.0.3", addr).await;
    assert!(closed_within(&mut fifth, WAIT).await.is_some());
    assert_eq!(reason(&m.tcp_refused, "connection_limit"), 1);

    // One goes away: its slot comes back once the server has seen it close.
    drop(held.remove(0));
    let deadline = std::time::Instant::now() + WAIT;
    while t.inbound_connections() != 3 {
        assert!(std::time::Instant::now() < deadline, "slot not released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c = connect_from("127.0.0.3", addr).await;
    assert!(send_options(&mut c, "z9hG4bKcap9").await);
    assert_eq!(next_message(&mut rx).await.0.call_id(), Ok("z9hG4bKcap9@t"));
}

/// A peer that never reads: our writes stall once its window and our buffers are full,
/// and the connection is closed at the deadline instead of holding its queue and
/// descriptor for ever.
#[tokio::test]
async fn tcp_peer_that_does_not_read_is_closed_at_the_write_deadline() {
    let (t, mut rx, m) = start_with(TransportConfig {
        tcp_message_timeout: Duration::from_millis(500),
        ..TransportConfig::default()
    })
    .await;
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    let mut c = s.connect(t.tcp_addrs()[0]).await.unwrap();
    c.write_all(options("z9hG4bKw1").replace("UDP", "TCP").as_bytes())
        .await
        .unwrap();
    let (_, source) = next_message(&mut rx).await;
    // 1000 × 60 KB, far beyond any socket buffer, within the 1024-message write queue.
    let big = Bytes::from(vec![b'x'; 60_000]);
    for _ in 0..1000 {
        t.send(source, big.clone(), TxnRef::Stateless);
    }
    loop {
        if let Inbound::FlowClosed { flow } = timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            assert_eq!(Some(flow), source.flow);
            break;
        }
    }
    assert_eq!(reason(&m.tcp_timeouts, "write_timeout"), 1);
    let deadline = std::time::Instant::now() + WAIT;
    while t.inbound_connections() != 0 {
        assert!(std::time::Instant::now() < deadline, "slot not released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(c);
}

async fn start_udp(queue: usize) -> (Transports, mpsc::Receiver<Inbound>, TransportMetrics) {
    let (tx, rx) = mpsc::channel(queue);
    let m = TransportMetrics::default();
    let cfg = TransportConfig {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp: vec![],
        ..TransportConfig::default()
    };
    let (t, _tasks) = Transports::bind(cfg, tx, m.clone()).await.unwrap();
    (t, rx, m)
}

fn udp_to(t: &Transports) -> Target {
    Target {
        transport: Transport::Udp,
        addr: t.udp_addrs()[0],
        flow: None,
    }
}

/// Linked transports hand datagrams over in process: the receiver sees the message
/// from the sender's UDP address, as a datagram would have it, and no socket carries it.
#[tokio::test]
async fn linked_transports_deliver_in_process_as_from_the_senders_socket() {
    let (a, mut a_rx, am) = start_udp(64).await;
    let (b, mut b_rx, bm) = start_udp(64).await;
    sip_transport::link_in_process(&a, &b).unwrap();
    assert!(
        sip_transport::link_in_process(&a, &b).is_err(),
        "a link is set once"
    );

    a.send(
        udp_to(&b),
        Bytes::from(options("z9hG4bKlink1")),
        TxnRef::Stateless,
    );
    let (msg, source) = next_message(&mut b_rx).await;
    assert_eq!(msg.call_id(), Ok("z9hG4bKlink1@t"));
    assert_eq!(source, udp_to(&a), "seen as from A's UDP socket");

    // And back: B's answer reaches A the same way.
    let reply = sip_core::ResponseBuilder::new(&msg, 200).unwrap().build();
    b.send(udp_to(&a), reply, TxnRef::Stateless);
    let (resp, source) = next_message(&mut a_rx).await;
    assert_eq!(resp.status(), Some(200));
    assert_eq!(source, udp_to(&b));

    assert_eq!(am.in_process.sent.get(), 1);
    assert_eq!(bm.in_process.received.get(), 1);
    assert_eq!(
        am.udp.sent.get() + bm.udp.received.get(),
        0,
        "no socket used"
    );

    // Anyone else is still reached by socket.
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to_other = Target {
        transport: Transport::Udp,
        addr: other.local_addr().unwrap(),
        flow: None,
    };
    a.send(
        to_other,
        Bytes::from(options("z9hG4bKsock")),
        TxnRef::Stateless,
    );
    let mut buf = [0u8; 2048];
    let (n, _) = timeout(WAIT, other.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        std::str::from_utf8(&buf[..n])
            .unwrap()
            .contains("z9hG4bKsock@t")
    );
    assert_eq!(am.udp.sent.get(), 1);
}

/// A message the sender already holds parsed (an edited copy) crosses the link as it
/// is, seen from the sender's socket like any datagram; one beyond the receiver's limits
/// is parsed by them instead and refused as a datagram would be.
#[tokio::test]
async fn linked_transports_take_a_parsed_message_within_the_receivers_limits() {
    let (a, mut a_rx, am) = start_udp(64).await;
    let (tx, mut b_rx) = mpsc::channel(64);
    let bm = TransportMetrics::default();
    let cfg = TransportConfig {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp: vec![],
        limits: sip_core::Limits {
            max_headers: 12,
            ..sip_core::Limits::default()
        },
        ..TransportConfig::default()
    };
    let (b, _tasks) = Transports::bind(cfg, tx, bm.clone()).await.unwrap();
    sip_transport::link_in_process(&a, &b).unwrap();

    let original = sip_core::SipMessage::parse(options("z9hG4bKparsed")).unwrap();
    let mut ed = sip_core::Editor::new(&original);
    ed.prepend_via(&b"SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKhop"[..]);
    let edited = ed.finish_message().unwrap();
    a.send_message(udp_to(&b), edited.clone(), TxnRef::Stateless);
    let (msg, source) = next_message(&mut b_rx).await;
    assert_eq!(msg.as_bytes(), edited.as_bytes());
    assert_eq!(msg.top_via().unwrap().branch, Some("z9hG4bKhop"));
    assert_eq!(source, udp_to(&a));
    assert_eq!(am.in_process.sent.get(), 1);
    assert_eq!(bm.in_process.received.get(), 1);

    let mut ed = sip_core::Editor::new(&original);
    for i in 0..12 {
        ed.add_header(format!("X-Pad-{i}"), &b"1"[..]);
    }
    a.send_message(udp_to(&b), ed.finish_message().unwrap(), TxnRef::Stateless);
    let (resp, _) = next_message(&mut a_rx).await;
    assert!(
        matches!(resp.status(), Some(400 | 513)),
        "{:?}",
        resp.status()
    );
    let limit = sip_transport::ErrorLabel { kind: "limit" };
    assert_eq!(bm.parse_errors.get_or_create(&limit).get(), 1);
}

/// A receiver whose queue is full answers a new request 503 + Retry-After at once, over
/// the link as over a socket; bytes that do not parse get their 400 back.
#[tokio::test]
async fn a_full_linked_receiver_answers_503_and_garbage_gets_400() {
    let (a, mut a_rx, _) = start_udp(64).await;
    let (b, mut b_rx, bm) = start_udp(1).await;
    sip_transport::link_in_process(&a, &b).unwrap();
    for branch in ["z9hG4bKfill", "z9hG4bKover"] {
        a.send(udp_to(&b), Bytes::from(options(branch)), TxnRef::Stateless);
    }
    let (resp, source) = next_message(&mut a_rx).await;
    assert_eq!(resp.status(), Some(503));
    assert!(resp.header(sip_core::HeaderName::RetryAfter).is_some());
    assert_eq!(source, udp_to(&b));
    assert_eq!(bm.overload_rejections.get(), 1);
    let (first, _) = next_message(&mut b_rx).await;
    assert_eq!(first.call_id(), Ok("z9hG4bKfill@t"));

    let bad = options("z9hG4bKbad").replace("Max-Forwards: 70", "Max-Forwards 70");
    a.send(udp_to(&b), Bytes::from(bad), TxnRef::Stateless);
    let (resp, _) = next_message(&mut a_rx).await;
    assert_eq!(resp.status(), Some(400));
}

/// The flood meter, before parsing: over UDP the datagrams past the rate are dropped and
/// the source is banned (reported once); a TCP connection opened before its ban is
/// closed at its next message, which is not delivered; another source is served.
#[tokio::test]
async fn a_flooding_source_is_banned_before_parsing_over_udp_and_tcp() {
    let (meter, mut bans) = sip_transport::FloodMeter::new(20, Duration::from_secs(30), |_| false);
    let (tx, mut rx) = mpsc::channel(1024);
    let metrics = TransportMetrics::default();
    let cfg = TransportConfig {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp: vec!["127.0.0.1:0".parse().unwrap()],
        flood: Some(std::sync::Arc::new(meter)),
        ..TransportConfig::default()
    };
    let (t, _tasks) = Transports::bind(cfg, tx, metrics.clone()).await.unwrap();
    let (udp, tcp) = (t.udp_addrs()[0], t.tcp_addrs()[0]);

    // A TCP connection from 127.0.0.12, opened before the flood from that address.
    let mut conn = connect_from("127.0.0.12", tcp).await;
    assert!(send_options(&mut conn, "z9hG4bKtcp-before").await);
    let (msg, _) = next_message(&mut rx).await;
    assert_eq!(msg.call_id(), Ok("z9hG4bKtcp-before@t"));

    // 100 datagrams from 127.0.0.12 within the second: 19 more get through, then none.
    let flooder = UdpSocket::bind("127.0.0.12:0").await.unwrap();
    for i in 0..100 {
        flooder
            .send_to(options(&format!("z9hG4bKfl{i}")).as_bytes(), udp)
            .await
            .unwrap();
    }
    let banned = timeout(WAIT, bans.recv()).await.unwrap().unwrap();
    assert_eq!(
        banned,
        ("127.0.0.12".parse().unwrap(), Duration::from_secs(30))
    );
    let mut through = 0;
    while let Ok(Some(ev)) = timeout(Duration::from_millis(300), rx.recv()).await {
        if let Inbound::Message { msg, .. } = ev {
            assert!(msg.call_id().unwrap().starts_with("z9hG4bKfl"), "{msg:?}");
            through += 1;
        }
    }
    assert_eq!(
        through, 19,
        "the rate (20) less the TCP message counted before"
    );
    let exposition = |m: &TransportMetrics| {
        let mut r = prometheus_client::registry::Registry::default();
        m.register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    };
    let text = exposition(&metrics);
    assert!(text.contains("sip_transport_blocked_total 81"), "{text}");

    // The connection opened before the ban: its next message is dropped and the
    // connection closed (its keep-alives would hold it for ever).
    assert!(send_options(&mut conn, "z9hG4bKtcp-after").await);
    assert!(
        closed_within(&mut conn, Duration::from_secs(2))
            .await
            .is_some(),
        "a banned source's connection stays open"
    );
    match timeout(Duration::from_secs(2), rx.recv()).await {
        Ok(Some(Inbound::FlowClosed { .. })) => {}
        other => panic!("the flow's end, not {other:?}"),
    }
    // Another source is served.
    let other = UdpSocket::bind("127.0.0.13:0").await.unwrap();
    other
        .send_to(options("z9hG4bKother").as_bytes(), udp)
        .await
        .unwrap();
    let (msg, _) = next_message(&mut rx).await;
    assert_eq!(msg.call_id(), Ok("z9hG4bKother@t"));
    assert!(bans.try_recv().is_err(), "one ban reported");
}

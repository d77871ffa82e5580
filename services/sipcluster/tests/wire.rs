//! Bad input over the wire against a real `sipcluster all-in-one`: malformed requests get
//! the right error (or are dropped where the RFC says so), the proxy keeps answering
//! OPTIONS (checked with sipsak, a real SIP peer), loops and exhausted Max-Forwards are
//! refused, and a bounded flood of garbage datagrams does not stop a digest REGISTER.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Proto, RawSip, Server, Sipp, status, which, workdir};

fn options(server: SocketAddr, local: SocketAddr, branch: &str, mf: u32) -> String {
    format!(
        "OPTIONS sip:{server} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{branch}\r\n\
         Max-Forwards: {mf}\r\nFrom: <sip:probe@example.org>;tag=p{branch}\r\nTo: <sip:{server}>\r\n\
         Call-ID: {branch}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A request from a foreign domain (no proxy authentication asked) with the given parts.
fn request(method: &str, ruri: &str, local: SocketAddr, branch: &str, extra: &str) -> String {
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@example.org>;tag=t{branch}\r\nTo: <{ruri}>\r\n\
         Call-ID: {branch}@test\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

/// sipsak's OPTIONS ping: exit code 0 means a 200 came back.
fn sipsak_ping(srv: &Server) {
    let sipsak = which("sipsak").expect("sipsak is not installed: run ./scripts/test.sh");
    let out = Command::new("timeout")
        .arg("20")
        .arg(sipsak)
        .args(["-vv", "-s", &format!("sip:{}", srv.sip)])
        .output()
        .expect("run sipsak");
    assert_eq!(
        out.status.code(),
        Some(0),
        "sipsak OPTIONS ping must get a 200:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_status(resp: Option<String>, code: u16, what: &str) -> String {
    let r = resp.unwrap_or_else(|| panic!("{what}: no response"));
    assert_eq!(status(&r), code, "{what}: {r}");
    r
}

#[test]
fn malformed_requests_get_errors_and_service_continues() {
    let dir = workdir("malformed");
    let mut srv = Server::start(&dir, &[]);
    let c = RawSip::new(srv.sip);
    let l = c.local();

    let r = assert_status(
        c.request(options(srv.sip, l, "ok1", 70).as_bytes()),
        200,
        "OPTIONS to the proxy",
    );
    assert!(r.contains("Allow: "), "{r}");

    // Missing Call-ID: 400 naming the problem, with the request's Via so it reaches us.
    let no_call_id = request("MESSAGE", "sip:bob@sipcluster.local", l, "m1", "")
        .replace("Call-ID: m1@test\r\n", "");
    let r = assert_status(c.request(no_call_id.as_bytes()), 400, "missing Call-ID");
    assert!(r.contains("branch=z9hG4bKm1"), "{r}");
    // CSeq method not matching the request method.
    let bad_cseq = request("MESSAGE", "sip:bob@sipcluster.local", l, "m2", "")
        .replace("CSeq: 1 MESSAGE", "CSeq: 1 INVITE");
    assert_status(c.request(bad_cseq.as_bytes()), 400, "CSeq method mismatch");
    // Non-numeric CSeq.
    let nan = request("MESSAGE", "sip:bob@sipcluster.local", l, "m3", "")
        .replace("CSeq: 1 MESSAGE", "CSeq: one MESSAGE");
    assert_status(c.request(nan.as_bytes()), 400, "non-numeric CSeq");
    // A SIP version we do not speak.
    let v3 = request("OPTIONS", &format!("sip:{}", srv.sip), l, "m4", "")
        .replace("SIP/2.0\r\nVia", "SIP/3.0\r\nVia");
    assert_status(c.request(v3.as_bytes()), 505, "SIP/3.0");
    // Content-Length beyond the datagram (§18.3): refused.
    let long = request("MESSAGE", "sip:bob@sipcluster.local", l, "m5", "")
        .replace("Content-Length: 0", "Content-Length: 500");
    assert_status(
        c.request(long.as_bytes()),
        400,
        "Content-Length past the datagram",
    );
    // Unknown method addressed to the proxy itself: 501; a known one it does not serve: 405.
    let foo = request("FOO", &format!("sip:{}", srv.sip), l, "m6", "");
    assert_status(
        c.request(foo.as_bytes()),
        501,
        "unknown method to the proxy",
    );
    let inv = request("INVITE", &format!("sip:{}", srv.sip), l, "m7", "");
    let r = assert_status(c.request(inv.as_bytes()), 405, "INVITE to the proxy itself");
    assert!(r.contains("Allow: OPTIONS, REGISTER"), "{r}");
    // The ACK for it (same branch) stops the 405's retransmissions (Timer G).
    let to = r.lines().find(|x| x.starts_with("To:")).unwrap_or_default();
    let ack = inv
        .replacen("INVITE ", "ACK ", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK");
    let ack = ack
        .lines()
        .map(|x| if x.starts_with("To:") { to } else { x })
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n";
    c.send(ack.as_bytes());
    // Proxy-Require with an extension we do not support: 420 with Unsupported.
    let pr = request(
        "MESSAGE",
        "sip:bob@sipcluster.local",
        l,
        "m8",
        "Proxy-Require: x-teleport\r\n",
    );
    let r = assert_status(c.request(pr.as_bytes()), 420, "Proxy-Require");
    assert!(r.contains("Unsupported: x-teleport"), "{r}");

    // Not SIP at all, a stray response, a lone header block: dropped, no answer (§18.1.2).
    for junk in [
        &b"hello world\r\n\r\n"[..],
        b"SIP/2.0 200 OK\r\n\r\n",
        b"\x00\x01\x02\xff\xfe",
        b"Via: x\r\n\r\n",
    ] {
        c.send(junk);
    }
    assert_eq!(c.recv(), None, "garbage must not be answered");

    // Still serving, for us and for a real peer; and the refusals were counted.
    assert_status(
        c.request(options(srv.sip, l, "ok2", 70).as_bytes()),
        200,
        "OPTIONS after bad input",
    );
    sipsak_ping(&srv);
    srv.assert_alive();
    let m = srv.scrape();
    let invalid: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("sipcluster_sip_invalid_requests_total")
                || l.starts_with("sipcluster_dispatcher_replies_total{status=\"400\"}")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let parse: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("sipcluster_sip_transport_parse_errors_total")
                || l.starts_with("sipcluster_dispatcher_sip_transport_parse_errors_total")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(invalid >= 3.0, "invalid requests counted: {m}");
    assert!(parse >= 4.0, "parse errors counted: {m}");
}

#[test]
fn max_forwards_and_received_rport() {
    let dir = workdir("max_forwards");
    let srv = Server::start(&dir, &[]);
    let c = RawSip::new(srv.sip);
    let l = c.local();
    // Zero Max-Forwards: OPTIONS for the proxy itself is answered (§16.3 step 3) ...
    assert_status(
        c.request(options(srv.sip, l, "z1", 0).as_bytes()),
        200,
        "OPTIONS, Max-Forwards 0, to the proxy",
    );
    // ... anything that would be forwarded gets 483.
    let msg = request("MESSAGE", "sip:bob@sipcluster.local", l, "z2", "")
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    assert_status(
        c.request(msg.as_bytes()),
        483,
        "MESSAGE with Max-Forwards 0",
    );
    let opt = request("OPTIONS", "sip:bob@sipcluster.local", l, "z3", "")
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    assert_status(
        c.request(opt.as_bytes()),
        483,
        "OPTIONS to a user with Max-Forwards 0",
    );

    // A client whose Via names another address (a NAT) gets received and rport back.
    let natted = options(
        srv.sip,
        "192.0.2.7:5062".parse().expect("address"),
        "n1",
        70,
    )
    .replace(";branch", ";rport;branch");
    let r = assert_status(
        c.request(natted.as_bytes()),
        200,
        "OPTIONS from behind a NAT",
    );
    let via = r
        .lines()
        .find(|x| x.starts_with("Via:"))
        .unwrap_or_default();
    assert!(
        via.contains("received=127.0.0.1") && via.contains(&format!("rport={}", l.port())),
        "{via}"
    );
}

#[test]
fn a_forwarding_loop_is_refused_with_482() {
    let dir = workdir("loop");
    let srv = Server::start(&dir, &[]);
    // alice registers the proxy's own address as her contact: requests for her spiral
    // back (new Request-URI: a spiral, allowed) and then loop (same one: 482, §16.3 step 4).
    Sipp::new("register-self", "register.xml", Proto::Udp)
        .inf(&format!("alice;sipcluster.local;;{};3600", srv.sip))
        .auth("alice", "alice-secret", "sipcluster.local")
        .to(srv.sip)
        .run(&dir)
        .assert_ok(1, "REGISTER a contact at the proxy");
    let c = RawSip::new(srv.sip);
    let msg = request("MESSAGE", "sip:alice@sipcluster.local", c.local(), "l1", "");
    assert_status(c.request(msg.as_bytes()), 482, "looping MESSAGE");
}

#[test]
fn forged_or_stale_flow_tokens_are_refused() {
    let dir = workdir("flow_token");
    // Edge flow tokens are how edges reach each other's connections: test an edge in
    // cluster mode directly (in the all-in-one, the dispatcher holds the connections).
    let loc = Server::location(&dir, "location", &[]);
    let srv = Server::edge(&dir, "edge", loc.sip, &["--no-auth"]);
    let c = RawSip::new(srv.sip);
    // Our token form with a MAC the cluster's secret did not make: 403, never an
    // ordinary Route (a flow token must not let anyone write into a client connection).
    let forged = format!(
        "Route: <sip:scf-1-0123456789ab-0000000000000000@{};lr>\r\n",
        srv.sip
    );
    let msg = request(
        "MESSAGE",
        "sip:bob@sipcluster.local",
        c.local(),
        "ft1",
        &forged,
    );
    assert_status(c.request(msg.as_bytes()), 403, "forged flow token");
    let junk = format!("Route: <sip:scf-zz@{};lr>\r\n", srv.sip);
    let msg = request(
        "MESSAGE",
        "sip:bob@sipcluster.local",
        c.local(),
        "ft2",
        &junk,
    );
    assert_status(c.request(msg.as_bytes()), 403, "malformed flow token");
}

#[test]
fn tcp_keepalive_and_bad_stream() {
    let dir = workdir("tcp_stream");
    let mut srv = Server::start(&dir, &[]);
    let mut s = TcpStream::connect(srv.sip).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    // RFC 5626 §4.4.1: a CRLFCRLF ping gets a CRLF pong.
    s.write_all(b"\r\n\r\n").expect("ping");
    let mut pong = [0u8; 2];
    s.read_exact(&mut pong).expect("pong");
    assert_eq!(&pong, b"\r\n");
    // A request on the stream, answered on the same connection.
    let local = s.local_addr().expect("local");
    let opt = options(srv.sip, local, "t1", 70).replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    s.write_all(opt.as_bytes()).expect("send");
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).expect("response");
    assert_eq!(status(&String::from_utf8_lossy(&buf[..n])), 200);
    // A stream without Content-Length cannot be framed: answered 400 and closed.
    let mut bad = TcpStream::connect(srv.sip).expect("connect");
    bad.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let no_len = options(srv.sip, local, "t2", 70)
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP")
        .replace("Content-Length: 0\r\n", "");
    bad.write_all(no_len.as_bytes()).expect("send");
    let mut all = Vec::new();
    let _ = bad.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert_eq!(status(&text), 400, "{text}");
    srv.assert_alive();
    sipsak_ping(&srv);
}

#[test]
fn garbage_flood_does_not_stop_a_register() {
    let dir = workdir("flood");
    let mut srv = Server::start(&dir, &[]);
    // Bounded: 30 000 datagrams or 15 s, whichever comes first, from four sockets.
    let started = Instant::now();
    let senders: Vec<_> = (0..4u32)
        .map(|t| {
            let server = srv.sip;
            std::thread::spawn(move || {
                let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
                let mut x: u32 = 0x9e37_79b9 ^ t;
                let mut sent = 0u32;
                for i in 0..7_500u32 {
                    if started.elapsed() > Duration::from_secs(15) {
                        break;
                    }
                    // Random bytes, truncated requests and header soup, in turn.
                    let pkt: Vec<u8> = match i % 3 {
                        0 => (0..200)
                            .map(|_| {
                                x ^= x << 13;
                                x ^= x >> 17;
                                x ^= x << 5;
                                x as u8
                            })
                            .collect(),
                        1 => format!("INVITE sip:bob@sipcluster.local SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.{t}:5060;branch=z9hG4bK{i}\r\nCSeq: ").into_bytes(),
                        _ => b"REGISTER sip:x SIP/2.0\r\nTo: ::::\r\nFrom: <<<\r\nVia: ;;;\r\n\r\n".to_vec(),
                    };
                    if sock.send_to(&pkt, server).is_ok() {
                        sent += 1;
                    }
                }
                sent
            })
        })
        .collect();
    // sipsak's random-mutation mode as a second, real source of broken messages (bounded).
    let sipsak = which("sipsak").expect("sipsak is not installed: run ./scripts/test.sh");
    let _ = Command::new("timeout")
        .arg("10")
        .arg(&sipsak)
        .args(["-R", "-t", "200", "-s", &format!("sip:{}", srv.sip)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    // While the flood is still running, a digest REGISTER must succeed.
    Sipp::new("register", "register.xml", Proto::Udp)
        .inf(&format!(
            "bob;sipcluster.local;;127.0.0.1:{};3600",
            common::free_port()
        ))
        .auth("bob", "bob-secret", "sipcluster.local")
        .to(srv.sip)
        .run(&dir)
        .assert_ok(1, "REGISTER during a garbage flood");
    let sent: u32 = senders.into_iter().map(|h| h.join().expect("sender")).sum();
    assert!(sent > 1000, "the flood sent only {sent} datagrams");
    srv.assert_alive();
    sipsak_ping(&srv);
    let m = srv.scrape();
    let parse: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("sipcluster_sip_transport_parse_errors_total")
                || l.starts_with("sipcluster_dispatcher_sip_transport_parse_errors_total")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        parse > 100.0,
        "parse errors counted ({parse} of {sent} sent): {m}"
    );
}

/// A burst far above what the core serves within `max_queue_delay` is answered: every
/// REGISTER gets exactly one final response, 200 if it was served in time, else 503 with
/// Retry-After (no silent drop, no late 200 after the client would have retransmitted).
#[test]
fn overload_is_shed_with_503_and_retry_after() {
    let dir = workdir("overload");
    let cfg = dir.join("overload.toml");
    std::fs::write(
        &cfg,
        // The core's shedding by age is what is tested here: the reader's standing-queue
        // rule (stateless 503s, `sip_transport::admission`) is off.
        // 10 ms, not less: the first requests of the burst must still be served when
        // the core's first turn comes a scheduler slice (a few ms) after they were read,
        // as it can on two busy cores (with the in-process hop a request's wait is
        // counted from the dispatcher's read, with the UDP hop from the edge's).
        "[limits]\nmax_queue_delay_ms = 10\noverload_retry_after = 7\nqueue_target_ms = 0\n",
    )
    .expect("config");
    let mut srv = Server::start(
        &dir,
        // One source sends all: its rate limit is off so the queue's shedding is seen.
        &[
            "--no-auth",
            "--source-rate",
            "0",
            "--config",
            cfg.to_str().expect("path"),
        ],
    );
    let raw = RawSip::new(srv.sip);
    let local = raw.local();
    const N: usize = 4000;
    // Responses are read by their own thread so the client's socket buffer never fills.
    let rx = raw.sock.try_clone().expect("clone socket");
    rx.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while got.len() < N {
            match rx.recv_from(&mut buf) {
                Ok((n, _)) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(_) => break,
            }
        }
        got
    });
    // Bursts of 100 every 1 ms: ~100k requests/s, several times what the core serves, so
    // the queue in front of it grows well past 10 ms, while the edge's reader (much cheaper
    // than the core) keeps the kernel buffer from overflowing even at its default size.
    let register = |i: usize| {
        format!(
            "REGISTER sip:sipcluster.local SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKshed{i}\r\nMax-Forwards: 70\r\nFrom: <sip:u{i}@sipcluster.local>;tag=f{i}\r\nTo: <sip:u{i}@sipcluster.local>\r\nCall-ID: shed-{i}\r\nCSeq: 1 REGISTER\r\nContact: <sip:u{i}@{local}>\r\nExpires: 60\r\nContent-Length: 0\r\n\r\n"
        )
    };
    for i in 0..N {
        raw.send(register(i).as_bytes());
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let mut finals = std::collections::HashMap::new();
    let (mut ok, mut shed) = (0, 0);
    for r in reader.join().expect("reader") {
        let code = status(&r);
        let branch = r
            .split("branch=z9hG4bKshed")
            .nth(1)
            .and_then(|b| b.split([';', '\r']).next())
            .map(str::to_owned)
            .expect("our branch in the response");
        assert!(
            finals.insert(branch.clone(), code).is_none(),
            "two final responses for request {branch}"
        );
        match code {
            200 => ok += 1,
            503 => {
                assert!(
                    r.contains("\r\nRetry-After: 7\r\n"),
                    "503 without Retry-After:\n{r}"
                );
                shed += 1;
            }
            other => panic!("unexpected {other}:\n{r}"),
        }
    }
    // The server answered every request exactly once (the client's own socket buffer may
    // still overflow on a busy machine, so the count comes from the server's side too).
    // (The all-in-one's public socket is the dispatcher's; the edge behind it also
    // answers the dispatcher's OPTIONS probes, which are taken out of its 2xx count.)
    let m = srv.scrape();
    let v = |sample: &str| common::metric_value(&m, sample);
    let received = v(
        "sipcluster_dispatcher_sip_transport_messages_received_total{side=\"public\",transport=\"udp\"}",
    );
    let sent = v(
        "sipcluster_dispatcher_sip_transport_messages_sent_total{side=\"public\",transport=\"udp\"}",
    );
    let rejected = v("sipcluster_sip_overload_rejections_total")
        + v("sipcluster_dispatcher_sip_overload_rejections_total{side=\"public\"}");
    let probes = v("sipcluster_sip_requests_total{method=\"OPTIONS\"}");
    let ok_sent = v("sipcluster_sip_responses_total{class=\"2xx\",code=\"200\"}");
    assert_eq!(received, N as f64, "server received");
    assert_eq!(sent, N as f64, "one response per request");
    // A probe may be between its request and its 200 at the scrape.
    let answered = ok_sent - probes + rejected;
    assert!(
        (answered - N as f64).abs() <= 1.0,
        "every request got 200 or 503: {ok_sent} 2xx - {probes} probes + {rejected} shed"
    );
    assert!(
        finals.len() >= N * 9 / 10,
        "client saw only {ok} × 200 + {shed} × 503 of {N}"
    );
    assert!(
        shed > 0,
        "nothing was shed: the burst never queued past 10 ms"
    );
    assert!(ok > 0, "nothing was served");
    assert!(rejected >= shed as f64);
    // The 503 was sent by a server transaction: a retransmission of a shed request gets
    // the same 503 again, never a late 200 (and the binding was not stored).
    let (branch, _) = finals
        .iter()
        .find(|(_, code)| **code == 503)
        .expect("a shed request");
    let i: usize = branch.parse().expect("branch number");
    let again = raw
        .request(register(i).as_bytes())
        .expect("answer to the retransmission");
    assert_eq!(
        status(&again),
        503,
        "retransmission of a shed request:\n{again}"
    );
    assert_eq!(
        srv.metric("sipcluster_sip_overload_rejections_total"),
        rejected,
        "a retransmission is absorbed, not shed again"
    );
    // And the edge is healthy right after.
    srv.assert_alive();
    sipsak_ping(&srv);
}

/// `in_process_hop = true`: the all-in-one's dispatcher hands requests to its edge through
/// the edge's queue, not loopback UDP; requests are served the same, and the transport
/// counters say which way they went.
#[test]
fn the_in_process_hop_serves_the_same_and_is_counted() {
    let dir = workdir("in-process-hop");
    let mut srv = Server::start(&dir, &["--no-auth", "--in-process-hop", "true"]);
    let c = RawSip::new(srv.sip);
    let l = c.local();
    let r = assert_status(
        c.request(options(srv.sip, l, "hop1", 70).as_bytes()),
        200,
        "OPTIONS answered by the edge behind the dispatcher",
    );
    assert!(r.contains("Allow: "), "{r}");
    let reg = request(
        "REGISTER",
        "sip:sipcluster.local",
        l,
        "hop2",
        &format!("Contact: <sip:hop@{l}>\r\nExpires: 60\r\n"),
    )
    .replace(
        "From: <sip:probe@example.org>",
        "From: <sip:hop@sipcluster.local>",
    )
    .replace(
        "To: <sip:sipcluster.local>",
        "To: <sip:hop@sipcluster.local>",
    );
    let r = assert_status(c.request(reg.as_bytes()), 200, "REGISTER");
    assert!(r.contains(&format!("<sip:hop@{l}>")), "binding echoed: {r}");
    let m = srv.scrape();
    let v = |sample: &str| common::metric_value(&m, sample);
    let handed = v(
        "sipcluster_dispatcher_sip_transport_messages_sent_total{side=\"internal\",transport=\"in_process\"}",
    );
    let taken = v("sipcluster_sip_transport_messages_received_total{transport=\"in_process\"}");
    assert!(
        handed >= 2.0,
        "OPTIONS and REGISTER handed over in process: {handed}\n{m}"
    );
    assert!(taken >= 2.0, "and taken by the edge: {taken}");
    let answered = v("sipcluster_sip_transport_messages_sent_total{transport=\"in_process\"}");
    assert!(answered >= 2.0, "answers back in process: {answered}");
    srv.assert_alive();
}

/// `--workers N` sets the runtime's worker threads (and the edge serves with one).
#[test]
fn worker_threads_follow_the_configuration() {
    let workers = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("task list")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.trim() == "tokio-rt-worker")
            .count()
    };
    for n in [1usize, 3] {
        let dir = workdir(&format!("workers{n}"));
        let mut srv = Server::start(&dir, &["--workers", &n.to_string()]);
        sipsak_ping(&srv);
        assert_eq!(workers(srv.pid()), n, "worker threads with --workers {n}");
        srv.assert_alive();
    }
}

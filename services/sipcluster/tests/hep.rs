//! HEP siptrace through the running all-in-one: every message on its client-facing
//! socket, both directions, reaches the collector with the right addresses and the
//! Call-ID; a dead collector costs SIP nothing (the packets are dropped and counted).
//! A SIPp call through the all-in-one reaches a real sngrep, read back by tshark. The
//! encoding itself is checked against sngrep in crates/hep/tests/sngrep.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;
#[path = "../../../crates/hep/tests/driver/sngrep.rs"]
mod sngrep;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{RawSip, Server, status, workdir};

fn options(c: &RawSip, srv: SocketAddr, i: u32) -> String {
    let l = c.local();
    format!(
        "OPTIONS sip:{srv} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKhep{i}\r\nMax-Forwards: 70\r\n\
         From: <sip:p@example.org>;tag={i}\r\nTo: <sip:{srv}>\r\nCall-ID: hep-{i}@test\r\nCSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

#[test]
fn every_message_of_the_client_socket_goes_to_the_collector_both_ways() {
    let dir = workdir("hep_collector");
    let collector = UdpSocket::bind("127.0.0.1:0").unwrap();
    collector
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let at = collector.local_addr().unwrap().to_string();
    let srv = Server::start(&dir, &["--hep", &at]);
    let c = RawSip::new(srv.sip);
    for i in 0..3 {
        let r = c.request(options(&c, srv.sip, i).as_bytes());
        assert_eq!(r.as_deref().map(status), Some(200));
    }
    // Collect until each request and its answer are there (bounded).
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        if let Ok(n) = collector.recv(&mut buf) {
            let d = hep::decode(&buf[..n]).expect("a valid HEP3 packet");
            seen.push(d);
        }
        let client = |d: &&hep::Decoded, to_srv: bool| {
            if to_srv {
                d.src == c.local() && d.dst.port() == srv.sip.port()
            } else {
                d.dst == c.local() && d.src.port() == srv.sip.port()
            }
        };
        let both = (0..3).all(|i| {
            let id = format!("hep-{i}@test");
            let has = |to_srv: bool| {
                seen.iter()
                    .any(|d| client(&d, to_srv) && d.call_id.as_deref() == Some(id.as_str()))
            };
            has(true) && has(false)
        });
        if both {
            break;
        }
    }
    for i in 0..3 {
        let id = format!("hep-{i}@test");
        let of_call: Vec<_> = seen
            .iter()
            .filter(|d| d.call_id.as_deref() == Some(id.as_str()))
            .collect();
        let req = of_call
            .iter()
            .find(|d| d.src == c.local())
            .unwrap_or_else(|| panic!("request {id} not exported: {seen:#?}"));
        assert_eq!(req.dst.port(), srv.sip.port());
        assert_eq!(req.ip_proto, 17, "UDP");
        assert!(req.payload.starts_with(b"OPTIONS "));
        let resp = of_call
            .iter()
            .find(|d| d.dst == c.local())
            .unwrap_or_else(|| panic!("response to {id} not exported: {seen:#?}"));
        assert!(resp.payload.starts_with(b"SIP/2.0 200"));
    }
    assert!(
        srv.metric("sipcluster_hep_packets_total") >= 6.0,
        "{}",
        srv.scrape()
    );
}

#[test]
fn a_dead_tcp_collector_costs_sip_nothing() {
    let dir = workdir("hep_dead_collector");
    // A port where nothing listens: every connection attempt is refused.
    let dead = common::free_addr().to_string();
    let srv = Server::start(&dir, &["--hep", &dead, "--hep-transport", "tcp"]);
    let c = RawSip::new(srv.sip);
    let started = Instant::now();
    for i in 0..200 {
        let r = c.request(options(&c, srv.sip, i).as_bytes());
        assert_eq!(r.as_deref().map(status), Some(200), "request {i}");
    }
    // 200 round trips on loopback take well under a second; a send waiting on the
    // collector (2 s connect timeout) would show here at once.
    assert!(started.elapsed() < Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(5);
    while srv.metric("sipcluster_hep_dropped_total{reason=\"disconnected\"}") < 1.0 {
        assert!(Instant::now() < deadline, "{}", srv.scrape());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(srv.metric("sipcluster_hep_packets_total"), 0.0);
}

/// The messages of a SIPp run as tshark rows would show them: (sent?, method or
/// status), from its `-trace_msg` log.
fn sipp_log(dir: &std::path::Path, name: &str) -> Vec<(bool, String)> {
    let log = std::fs::read_to_string(dir.join(format!("{name}.msg"))).unwrap();
    log.split("----------------------------------------------- ")
        .filter_map(|m| {
            let mut lines = m.lines().skip(1).filter(|l| !l.trim().is_empty());
            let how = lines.next()?;
            let first = lines.next()?;
            let sent = how.contains("message sent");
            let what = match first.strip_prefix("SIP/2.0 ") {
                Some(rest) => rest.split(' ').next()?.to_owned(),
                None => first.split(' ').next()?.to_owned(),
            };
            Some((sent, what))
        })
        .collect()
}

/// A SIPp call through the all-in-one, captured by a real sngrep (HEP3 over UDP) and read
/// back by tshark: every message either phone sent or received is in the pcap, in its
/// direction, between the phone's address and the service's.
#[test]
fn every_message_of_a_sipp_call_reaches_a_real_sngrep_with_its_addresses() {
    sngrep::require("sngrep", "-V");
    sngrep::require("tshark", "--version");
    let dir = workdir("hep_sngrep_call");
    let port = common::free_port();
    let mut capture = sngrep::Sngrep::start(port, None);
    let srv = Server::start(&dir, &["--hep", &format!("127.0.0.1:{port}")]);
    // sngrep says nothing when it listens: an OPTIONS until its pcap grows.
    let c = RawSip::new(srv.sip);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut i = 100;
    while capture.pcap_len() <= 24 {
        assert!(Instant::now() < deadline, "sngrep wrote nothing");
        let _ = c.request(options(&c, srv.sip, i).as_bytes());
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }

    const DOMAIN: &str = "sipcluster.local";
    let uas = common::Sipp::new("uas", "uas_answer.xml", common::Proto::Udp)
        .calls(1)
        .timeout(20);
    common::Sipp::new("register-bob", "register.xml", common::Proto::Udp)
        .inf(&format!("bob;{DOMAIN};;127.0.0.1:{};3600", uas.port))
        .auth("bob", "bob-secret", DOMAIN)
        .to(srv.sip)
        .run(&dir)
        .assert_ok(1, "REGISTER");
    let callee = uas.spawn(&dir);
    std::thread::sleep(Duration::from_millis(200));
    let uac = common::Sipp::new("uac", "uac_call.xml", common::Proto::Udp)
        .inf(&format!("alice;{DOMAIN};alice-secret;bob"))
        .auth("alice", "alice-secret", &format!("bob@{DOMAIN}"))
        .to(srv.sip)
        .timeout(20);
    uac.run(&dir).assert_ok(1, "the call");
    callee.wait().assert_ok(1, "the callee");

    // What each phone saw, as (source, destination, method or status).
    let phone_rows = |name: &str, phone_port: u16| -> Vec<(String, String, String)> {
        let phone = format!("127.0.0.1:{phone_port}");
        let service = srv.sip.to_string();
        let mut v: Vec<_> = sipp_log(&dir, name)
            .into_iter()
            .map(|(sent, what)| {
                if sent {
                    (phone.clone(), service.clone(), what)
                } else {
                    (service.clone(), phone.clone(), what)
                }
            })
            .collect();
        v.sort();
        v
    };
    let want_uac = phone_rows("uac", uac.port);
    let want_uas = phone_rows("uas", uas.port);
    assert!(want_uac.len() >= 10, "SIPp logged the call: {want_uac:?}");
    let pcap = capture.pcap.clone();
    let captured = |phone_port: u16| -> Vec<(String, String, String)> {
        let mut v: Vec<_> = sngrep::tshark_rows(&pcap)
            .into_iter()
            .filter(|r| r.src_port == phone_port || r.dst_port == phone_port)
            .map(|r| {
                let what = if r.method.is_empty() {
                    r.status
                } else {
                    r.method
                };
                (
                    format!("{}:{}", r.src, r.src_port),
                    format!("{}:{}", r.dst, r.dst_port),
                    what,
                )
            })
            .collect();
        v.sort();
        v
    };
    // Export is asynchronous: bounded wait for the last messages.
    let deadline = Instant::now() + Duration::from_secs(15);
    while (captured(uac.port).len() < want_uac.len() || captured(uas.port).len() < want_uas.len())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    capture.stop();
    assert_eq!(
        captured(uac.port),
        want_uac,
        "the caller's messages in sngrep's pcap"
    );
    assert_eq!(
        captured(uas.port),
        want_uas,
        "the callee's messages in sngrep's pcap"
    );
}

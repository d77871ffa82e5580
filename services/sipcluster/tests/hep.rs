//! HEP siptrace through the running all-in-one: every message on its client-facing
//! socket, both directions, reaches the collector with the right addresses and the
//! Call-ID; a dead collector costs SIP nothing (the packets are dropped and counted).
//! The encoding itself is checked against a real sngrep in crates/hep/tests/sngrep.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

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

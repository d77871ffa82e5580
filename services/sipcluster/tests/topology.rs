//! Topology hiding at the dispatcher: SIPp phones call each other through a dispatcher
//! (public 127.0.0.1, internal 127.0.0.20) and an edge (127.0.0.30), in cluster mode.
//! Everything either phone receives (SIPp's own message log) names no internal address
//! or port, not even hex-encoded inside a flow token, and the call (INVITE, 180, 200,
//! ACK, BYE) completes. With topology hiding off
//! the same call shows them: the capture can fail.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::redis::{Redis, prefix};
use common::{Proto, Server, Sipp, free_low_port, workdir};

const DOMAIN: &str = "sipcluster.local";

/// The messages SIPp received, from its `-trace_msg` log.
fn received(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(format!("{name}.msg"))).unwrap_or_default();
    text.split("-----------------------------------------------")
        .filter(|s| s.contains("message received"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One call through the cluster; what the two phones received, and the internal
/// addresses to look for.
fn call_through(test: &str, hiding: bool) -> (String, Vec<String>) {
    let dir = workdir(test);
    let redis = Redis::standalone(&dir);
    let args = redis.location_args(&prefix(test));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let loc = Server::location(&dir, "location", &args);
    let edge_addr = SocketAddr::from(([127, 0, 0, 30], free_low_port()));
    let internal = SocketAddr::from(([127, 0, 0, 20], free_low_port()));
    let _edge = Server::edge_at(&dir, "edge", edge_addr, loc.sip, &["--drain-secs", "1"]);
    let (disp, _admin) = Server::dispatcher_at(
        &dir,
        "dispatcher",
        internal,
        &[edge_addr],
        &["--topology-hiding", if hiding { "true" } else { "false" }],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !disp
        .scrape()
        .lines()
        .any(|l| l.starts_with("sipcluster_dispatcher_target_up{") && l.ends_with(" 1"))
    {
        assert!(Instant::now() < deadline, "the edge never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let uas = Sipp::new("uas", "uas_answer.xml", Proto::Udp);
    Sipp::new("register-bob", "register.xml", Proto::Udp)
        .inf(&format!("bob;{DOMAIN};;127.0.0.1:{};3600", uas.port))
        .auth("bob", "bob-secret", DOMAIN)
        .to(disp.sip)
        .run(&dir)
        .assert_ok(1, "bob registers through the dispatcher");
    let callee = uas.spawn(&dir);
    std::thread::sleep(Duration::from_millis(300));
    Sipp::new("alice", "uac_call.xml", Proto::Udp)
        .inf(&format!("alice;{DOMAIN};alice-secret;bob"))
        .auth("alice", "alice-secret", &format!("bob@{DOMAIN}"))
        .to(disp.sip)
        .run(&dir)
        .assert_ok(1, "alice calls bob through the dispatcher");
    callee.wait().assert_ok(1, "bob answers");
    let seen = ["register-bob", "uas", "alice"]
        .iter()
        .map(|n| received(&dir, n))
        .collect::<Vec<_>>()
        .join("\n");
    // As text, and as the flow tokens would carry them (hex: 127.0.0.20 is 7f000014).
    let inside = vec![
        "127.0.0.20".to_owned(),
        "127.0.0.30".to_owned(),
        format!(":{}", internal.port()),
        format!(":{}", edge_addr.port()),
        "7f000014".to_owned(),
        "7f00001e".to_owned(),
    ];
    (seen, inside)
}

#[test]
fn with_topology_hiding_no_internal_address_reaches_a_phone() {
    let (seen, inside) = call_through("topology_hidden", true);
    assert!(
        seen.contains("INVITE sip:bob@") && seen.contains("SIP/2.0 200"),
        "{seen}"
    );
    for a in &inside {
        assert!(!seen.contains(a.as_str()), "{a} reached a phone:\n{seen}");
    }
    assert!(seen.contains(";sth="), "the sealed Vias and routes: {seen}");
}

#[test]
fn without_it_the_capture_shows_them() {
    let (seen, inside) = call_through("topology_shown", false);
    assert!(
        inside.iter().any(|a| seen.contains(a.as_str())),
        "no internal address seen without hiding: the capture could not fail"
    );
}

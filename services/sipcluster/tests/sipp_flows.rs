//! End-to-end SIP flows through a real `sipcluster all-in-one`, driven by SIPp: digest
//! REGISTER, calls answered, cancelled, busy, to unregistered and unknown users, refresh and
//! unregister, each over UDP and over TCP. Every case asserts SIPp's exit code and its
//! successful/failed call counts on both sides.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use common::{Proto, Server, Sipp, workdir};

const DOMAIN: &str = "sipcluster.local";

/// Register `user` with its contact on `contact_port` (digest auth, 401 → 200).
fn register(srv: &Server, dir: &std::path::Path, user: &str, contact_port: u16, proto: Proto) {
    Sipp::new(&format!("register-{user}"), "register.xml", proto)
        .inf(&format!("{user};{DOMAIN};;127.0.0.1:{contact_port};3600"))
        .auth(user, &format!("{user}-secret"), DOMAIN)
        .to(srv.sip)
        .run(dir)
        .assert_ok(1, "REGISTER with digest auth");
}

/// alice calls `callee` (proxy-authenticated) with the given UAC scenario.
fn caller(name: &str, scenario: &str, proto: Proto, srv: &Server, callee: &str) -> Sipp {
    Sipp::new(name, scenario, proto)
        .inf(&format!("alice;{DOMAIN};alice-secret;{callee}"))
        .auth("alice", "alice-secret", &format!("{callee}@{DOMAIN}"))
        .to(srv.sip)
}

fn register_flow(proto: Proto, test: &str) {
    let dir = workdir(test);
    let srv = Server::start(&dir, &[]);
    register(&srv, &dir, "bob", 6001, proto);
    // A wrong password is challenged again, never accepted: SIPp's expected 200 never comes.
    let bad = Sipp::new("register-bad", "register.xml", proto)
        .inf(&format!("bob;{DOMAIN};;127.0.0.1:6001;3600"))
        .auth("bob", "not-the-password", DOMAIN)
        .to(srv.sip)
        .timeout(5)
        .run(&dir);
    assert_eq!(
        (bad.successful, bad.failed),
        (0, 1),
        "wrong password must fail: {bad:?}"
    );
    assert!(
        srv.metric("sipcluster_sip_auth_failures_total{reason=\"wrong_response\"}") >= 1.0,
        "{}",
        srv.scrape()
    );
    assert!(srv.metric("sipcluster_sip_requests_total{method=\"REGISTER\"}") >= 4.0);
}

#[test]
fn register_with_digest_auth_udp() {
    register_flow(Proto::Udp, "register_udp");
}

#[test]
fn register_with_digest_auth_tcp() {
    register_flow(Proto::Tcp, "register_tcp");
}

/// Register bob's UAS, start it with `uas`, run alice's `uac` against it; both must pass.
fn call_flow(proto: Proto, test: &str, uas: &str, uac: &str, code: Option<u16>) {
    let dir = workdir(test);
    let srv = Server::start(&dir, &[]);
    let uas_sipp = Sipp::new("uas", uas, proto);
    register(&srv, &dir, "bob", uas_sipp.port, proto);
    let callee = uas_sipp.spawn(&dir);
    // SIPp binds at once; a short pause keeps the first INVITE from racing its start.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut c = caller("uac", uac, proto, &srv, "bob");
    if let Some(code) = code {
        c = c.expect_code(&dir, code);
    }
    let out = c.run(&dir);
    let uas_out = callee.wait();
    out.assert_ok(1, &format!("{test}: caller"));
    uas_out.assert_ok(1, &format!("{test}: callee"));
}

#[test]
fn call_answered_and_hung_up_udp() {
    call_flow(
        Proto::Udp,
        "call_udp",
        "uas_answer.xml",
        "uac_call.xml",
        None,
    );
}

#[test]
fn call_answered_and_hung_up_tcp() {
    call_flow(
        Proto::Tcp,
        "call_tcp",
        "uas_answer.xml",
        "uac_call.xml",
        None,
    );
}

#[test]
fn call_cancelled_before_answer_udp() {
    call_flow(
        Proto::Udp,
        "cancel_udp",
        "uas_ring_cancel.xml",
        "uac_cancel.xml",
        None,
    );
}

#[test]
fn call_cancelled_before_answer_tcp() {
    call_flow(
        Proto::Tcp,
        "cancel_tcp",
        "uas_ring_cancel.xml",
        "uac_cancel.xml",
        None,
    );
}

#[test]
fn busy_486_passed_back_udp() {
    call_flow(
        Proto::Udp,
        "busy_udp",
        "uas_busy.xml",
        "uac_fail.xml",
        Some(486),
    );
}

#[test]
fn busy_486_passed_back_tcp() {
    call_flow(
        Proto::Tcp,
        "busy_tcp",
        "uas_busy.xml",
        "uac_fail.xml",
        Some(486),
    );
}

/// Calls that the proxy itself must fail: carol exists but is not registered, nobody does
/// not exist: 480 both, so a caller cannot tell which users exist.
fn failing_calls(proto: Proto, test: &str) {
    let dir = workdir(test);
    let srv = Server::start(&dir, &[]);
    caller("unregistered", "uac_fail.xml", proto, &srv, "carol")
        .expect_code(&dir, 480)
        .run(&dir)
        .assert_ok(1, "call to an unregistered user");
    caller("unknown", "uac_fail.xml", proto, &srv, "nobody")
        .expect_code(&dir, 480)
        .run(&dir)
        .assert_ok(1, "call to an unknown user");
    // A registered contact that refuses the connection (or an ICMP-silent one on TCP) is
    // the callee being unavailable: 480, not a 503 about the proxy.
    if proto == Proto::Tcp {
        let dead = common::free_port();
        register(&srv, &dir, "dave", dead, proto);
        caller("unreachable", "uac_fail.xml", proto, &srv, "dave")
            .expect_code(&dir, 480)
            .run(&dir)
            .assert_ok(1, "call to a registered but unreachable contact");
    }
}

#[test]
fn unregistered_and_unknown_alike_480_udp() {
    failing_calls(Proto::Udp, "failing_udp");
}

#[test]
fn unregistered_and_unknown_alike_480_tcp() {
    failing_calls(Proto::Tcp, "failing_tcp");
}

/// REGISTER, refresh, unregister (the scenario checks the bindings listed in each 200);
/// afterwards the user is unregistered, so a call to it gets 480.
fn refresh_flow(proto: Proto, test: &str) {
    let dir = workdir(test);
    let srv = Server::start(&dir, &[]);
    Sipp::new("refresh", "refresh_unregister.xml", proto)
        .inf(&format!("carol;{DOMAIN};;127.0.0.1:6002"))
        .auth("carol", "carol-secret", DOMAIN)
        .to(srv.sip)
        .run(&dir)
        .assert_ok(1, "register, refresh, unregister");
    caller("after-unregister", "uac_fail.xml", proto, &srv, "carol")
        .expect_code(&dir, 480)
        .run(&dir)
        .assert_ok(1, "call after unregister");
}

#[test]
fn refresh_and_unregister_udp() {
    refresh_flow(Proto::Udp, "refresh_udp");
}

#[test]
fn refresh_and_unregister_tcp() {
    refresh_flow(Proto::Tcp, "refresh_tcp");
}

/// Forty calls at 20 per second with the same UAS: the proxy keeps no state between them.
#[test]
fn forty_calls_in_a_row_udp() {
    let dir = workdir("many_calls_udp");
    let srv = Server::start(&dir, &[]);
    let uas = Sipp::new("uas", "uas_answer.xml", Proto::Udp)
        .calls(40)
        .timeout(40);
    register(&srv, &dir, "bob", uas.port, Proto::Udp);
    let callee = uas.spawn(&dir);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = caller("uac", "uac_call.xml", Proto::Udp, &srv, "bob")
        .calls(40)
        .rate(20)
        .timeout(40)
        .run(&dir);
    let uas_out = callee.wait();
    out.assert_ok(40, "forty calls: caller");
    uas_out.assert_ok(40, "forty calls: callee");
    assert!(
        srv.metric("sipcluster_sip_requests_total{method=\"INVITE\"}") >= 80.0,
        "{}",
        srv.scrape()
    );
}

/// The all-in-one's CDRs (JSON lines in its state directory, by default): one complete
/// CDR per call. The file is their durable copy, written at once: a `kill -9` right after
/// the calls loses none, and nothing went through the spool.
#[test]
fn each_call_has_its_cdr_line_and_a_kill_9_loses_none_written() {
    let dir = workdir("cdr_lines_kill9");
    let srv = Server::start(&dir, &[]);
    let uas = Sipp::new("uas", "uas_answer.xml", Proto::Udp)
        .calls(30)
        .timeout(40);
    register(&srv, &dir, "bob", uas.port, Proto::Udp);
    let callee = uas.spawn(&dir);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = caller("uac", "uac_call.xml", Proto::Udp, &srv, "bob")
        .calls(30)
        .rate(30)
        .timeout(40)
        .run(&dir);
    callee.wait().assert_ok(30, "callee");
    out.assert_ok(30, "caller");
    // The last BYE's CDR is queued, then written at the accounting thread's next turn
    // (every 5 ms while busy): well within this.
    std::thread::sleep(std::time::Duration::from_millis(200));
    srv.kill();

    let state = common::state_home(&dir).join("sipcluster");
    let files: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let file = files
        .iter()
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .unwrap_or_else(|| panic!("a CDR file in {files:?}"));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let cdrs: Vec<&serde_json::Value> = lines.iter().filter_map(|l| l.get("cdr")).collect();
    assert_eq!(cdrs.len(), 30, "one CDR per call; lines: {}", lines.len());
    let mut ids: Vec<&str> = lines
        .iter()
        .filter(|l| l.get("cdr").is_some())
        .map(|l| l["eventId"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 30, "distinct calls");
    for c in &cdrs {
        assert_eq!(c["sipCode"], 200, "{c}");
        assert_eq!(c["endCause"], "END_CAUSE_BYE", "{c}");
    }
    // Events too (attempt, ringing, answered, ended): five records a call.
    assert_eq!(lines.len(), 150, "every event of every call");
    // The spool beside it holds nothing: the file is the durable copy.
    let spooled: u64 = files
        .iter()
        .filter(|p| p.is_dir())
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(spooled, 0, "nothing written to the spool");
}

//! The holes a probe found, each closed, through real processes: the all-in-one (every
//! request crosses its dispatcher first) and an edge of a cluster reached directly.
//! Each test fails without its fix: an open relay through preloaded Routes or fake
//! in-dialog requests, identity headers believed from anyone, replayed digests, brute
//! force and user enumeration, keepalive floods holding transactions, `sips:` carried in
//! the clear, scanners answered.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::{Server, status, workdir};
use sip_auth::{Algorithm, ClientAuthorization, Credentials, QopAuth};

const DOMAIN: &str = "sipcluster.local";

/// A SIP client on a chosen loopback address (127.0.0.0/8 all reaches this host, so
/// each "source" of a test is its own address).
struct Ua {
    sock: UdpSocket,
    server: SocketAddr,
}

impl Ua {
    fn on(ip: &str, server: SocketAddr) -> Ua {
        let sock = UdpSocket::bind((ip, 0)).expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        Ua { sock, server }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("address")
    }

    fn send(&self, msg: &str) {
        self.sock
            .send_to(msg.as_bytes(), self.server)
            .expect("send");
    }

    /// The first final response to `msg` (matched by Call-ID and CSeq) within `wait`.
    fn ask_within(&self, msg: &str, wait: Duration) -> Option<String> {
        self.send(msg);
        let (call_id, cseq) = (header(msg, "Call-ID"), header(msg, "CSeq"));
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            let Ok(n) = self.sock.recv(&mut buf) else {
                continue;
            };
            let r = String::from_utf8_lossy(&buf[..n]).into_owned();
            if r.starts_with("SIP/2.0 1") || header(&r, "Call-ID") != call_id {
                continue;
            }
            if header(&r, "CSeq") == cseq {
                return Some(r);
            }
        }
        None
    }

    fn ask(&self, msg: &str) -> Option<String> {
        self.ask_within(msg, Duration::from_secs(3))
    }

    /// The next request that reaches this UA (as a callee), within `wait`.
    fn next_request(&self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let r = String::from_utf8_lossy(&buf[..n]).into_owned();
                if !r.starts_with("SIP/2.0") {
                    return Some(r);
                }
            }
        }
        None
    }
}

/// The first value of header `name` (case-insensitive), or "".
fn header(msg: &str, name: &str) -> String {
    headers(msg, name).into_iter().next().unwrap_or_default()
}

fn has_header(msg: &str, name: &str) -> bool {
    msg.split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .any(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        })
}

/// A request from `ua`; `extra` holds more header lines (each ending in CRLF).
fn request(
    ua: &Ua,
    method: &str,
    ruri: &str,
    from: &str,
    to: &str,
    call_id: &str,
    extra: &str,
) -> String {
    let a = ua.addr();
    let contact = if extra.contains("Contact:") {
        String::new()
    } else {
        format!("Contact: <sip:u@{a}>\r\n")
    };
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {a};rport;branch=z9hG4bK-{call_id}-{n}\r\n\
         Max-Forwards: 70\r\nFrom: {from};tag=f-{call_id}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
         CSeq: {n} {method}\r\n{contact}{extra}Content-Length: 0\r\n\r\n",
        n = cseq_for(extra),
    )
}

/// A distinct CSeq (and branch) for a retry carrying credentials.
fn cseq_for(extra: &str) -> u32 {
    if extra.contains("Authorization:") {
        2
    } else {
        1
    }
}

/// The `(realm, nonce)` of a 401/407.
fn challenge(resp: &str) -> (String, String) {
    let h = match status(resp) {
        401 => header(resp, "WWW-Authenticate"),
        _ => header(resp, "Proxy-Authenticate"),
    };
    let param = |name: &str| {
        h.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default()
            .to_owned()
    };
    (param("realm"), param("nonce"))
}

/// The credentials header line answering `resp`'s challenge for `method ruri`.
fn answer(resp: &str, user: &str, password: &str, method: &str, ruri: &str, nc: u32) -> String {
    let (realm, nonce) = challenge(resp);
    let creds = Credentials::from_password(user, &realm, password);
    let value = ClientAuthorization {
        algorithm: Algorithm::Md5,
        username: user,
        realm: &realm,
        nonce: &nonce,
        uri: ruri,
        method,
        qop: Some(QopAuth {
            nc,
            cnonce: "0a4f113b",
        }),
        opaque: None,
    }
    .header_value(&creds)
    .expect("an MD5 HA1");
    let name = if status(resp) == 401 {
        "Authorization"
    } else {
        "Proxy-Authorization"
    };
    format!("{name}: {value}\r\n")
}

/// Send `method` from `ua` as `user`, answering the challenge; the final response.
#[allow(clippy::too_many_arguments)]
fn authed(
    ua: &Ua,
    method: &str,
    ruri: &str,
    user: &str,
    password: &str,
    to: &str,
    call_id: &str,
    extra: &str,
) -> String {
    let from = format!("<sip:{user}@{DOMAIN}>");
    let first = ua
        .ask(&request(ua, method, ruri, &from, to, call_id, extra))
        .expect("a challenge");
    assert!(matches!(status(&first), 401 | 407), "{first}");
    let creds = answer(&first, user, password, method, ruri, 1);
    ua.ask(&request(
        ua,
        method,
        ruri,
        &from,
        to,
        call_id,
        &format!("{extra}{creds}"),
    ))
    .expect("a final answer")
}

/// Register `user`'s contact at `ua` (or `contact`).
fn register(ua: &Ua, user: &str, password: &str, contact: Option<&str>, call_id: &str) -> String {
    let aor = format!("<sip:{user}@{DOMAIN}>");
    let extra = contact
        .map(|c| format!("Expires: 300\r\nContact: {c}\r\n"))
        .unwrap_or_else(|| "Expires: 300\r\n".into());
    let ruri = format!("sip:{DOMAIN}");
    let first = ua
        .ask(&request(ua, "REGISTER", &ruri, &aor, &aor, call_id, &extra))
        .expect("a challenge");
    assert_eq!(status(&first), 401, "{first}");
    let creds = answer(&first, user, password, "REGISTER", &ruri, 1);
    ua.ask(&request(
        ua,
        "REGISTER",
        &ruri,
        &aor,
        &aor,
        call_id,
        &format!("{extra}{creds}"),
    ))
    .expect("an answer")
}

/// An all-in-one, and an edge of a cluster (its own location service) reached directly,
/// each with Record-Route on.
fn targets(dir: &std::path::Path, extra: &[&str]) -> (Server, Server, Server) {
    let aio = Server::start(dir, extra);
    let loc = Server::location(dir, "location", &[]);
    let edge = Server::edge(dir, "edge", loc.sip, extra);
    (aio, loc, edge)
}

#[test]
fn no_request_is_relayed_for_an_unauthenticated_sender() {
    let dir = workdir("security_relay");
    let (aio, loc, edge) = targets(&dir, &[]);
    let alice = format!("<sip:alice@{DOMAIN}>");
    let mallory = "<sip:mallory@evil.example>";
    let number = "<sip:+15551234567@example.com>";
    for (name, target) in [("all-in-one", aio.sip), ("edge", edge.sip)] {
        // The "gateway" an attacker wants to reach through us, on another loopback
        // address (one per target: the control call's retransmissions stay with it).
        let gw = Ua::on("127.0.0.2", "127.0.0.1:9".parse().expect("addr"));
        let g = gw.addr();
        let ua = Ua::on("127.0.0.1", target);
        let id = |n: &str| format!("{name}-{n}");
        let attempts: Vec<(String, Vec<u16>)> = vec![
            // A preloaded Route toward the gateway, no credentials.
            (
                request(
                    &ua,
                    "INVITE",
                    "sip:+15551234567@example.com",
                    &alice,
                    number,
                    &id("route-alice"),
                    &format!("Route: <sip:{g};lr>\r\n"),
                ),
                vec![407],
            ),
            (
                request(
                    &ua,
                    "INVITE",
                    "sip:+15551234567@example.com",
                    mallory,
                    number,
                    &id("route-mallory"),
                    &format!("Route: <sip:{g};lr>\r\n"),
                ),
                vec![403],
            ),
            // A fake in-dialog request (a To tag) straight at the gateway.
            (
                request(
                    &ua,
                    "INVITE",
                    &format!("sip:+15551234567@{g}"),
                    &alice,
                    &format!("{number};tag=x1"),
                    &id("dialog"),
                    "",
                ),
                vec![404],
            ),
            // ... loose-routing through us, without a dialog token and with a forged one.
            (
                request(
                    &ua,
                    "INVITE",
                    &format!("sip:+15551234567@{g}"),
                    &alice,
                    &format!("{number};tag=x2"),
                    &id("dialog-route"),
                    &format!("Route: <sip:{target};lr>\r\n"),
                ),
                vec![404],
            ),
            (
                request(
                    &ua,
                    "BYE",
                    &format!("sip:+15551234567@{g}"),
                    &alice,
                    &format!("{number};tag=x3"),
                    &id("dialog-forged"),
                    &format!("Route: <sip:{target};lr;dlg=00112233445566778899>\r\n"),
                ),
                vec![404],
            ),
            // An initial request for a foreign destination, no credentials.
            (
                request(
                    &ua,
                    "INVITE",
                    &format!("sip:+15551234567@{g}"),
                    &alice,
                    number,
                    &id("foreign-alice"),
                    "",
                ),
                vec![407],
            ),
            (
                request(
                    &ua,
                    "MESSAGE",
                    &format!("sip:+15551234567@{g}"),
                    mallory,
                    number,
                    &id("foreign-mallory"),
                    "",
                ),
                vec![403],
            ),
        ];
        for (msg, want) in attempts {
            let r = ua
                .ask(&msg)
                .unwrap_or_else(|| panic!("{name}: no answer to\n{msg}"));
            assert!(want.contains(&status(&r)), "{name}: got\n{r}\nfor\n{msg}");
        }
        // An in-dialog ACK gets no answer; it must not be relayed either.
        ua.send(&request(
            &ua,
            "ACK",
            &format!("sip:+15551234567@{g}"),
            &alice,
            &format!("{number};tag=x4"),
            &id("ack"),
            &format!("Route: <sip:{target};lr>\r\n"),
        ));
        assert_eq!(
            gw.next_request(Duration::from_secs(1)),
            None,
            "{name}: the gateway was reached"
        );

        // The control: the same preloaded Route for alice who proves who she is reaches
        // the gateway (so the silence above is the fix, not a deaf gateway).
        let ruri = "sip:+15551234567@example.com";
        let first = ua
            .ask(&request(
                &ua,
                "INVITE",
                ruri,
                &alice,
                number,
                &id("route-ok"),
                &format!("Route: <sip:{g};lr>\r\n"),
            ))
            .expect("challenge");
        let creds = answer(&first, "alice", "alice-secret", "INVITE", ruri, 1);
        ua.send(&request(
            &ua,
            "INVITE",
            ruri,
            &alice,
            number,
            &id("route-ok"),
            &format!("Route: <sip:{g};lr>\r\n{creds}"),
        ));
        let got = gw
            .next_request(Duration::from_secs(3))
            .unwrap_or_else(|| panic!("{name}: authenticated INVITE not forwarded"));
        assert!(
            got.starts_with("INVITE sip:+15551234567@example.com"),
            "{got}"
        );
    }
    drop(loc);
}

#[test]
fn identity_headers_are_believed_only_from_trusted_peers() {
    let dir = workdir("security_identity");
    let cfg = dir.join("edge.toml");
    std::fs::write(
        &cfg,
        "[security]\nassert_identity = true\ntrusted_peers = [\"127.0.0.3\"]\n",
    )
    .expect("config");
    let aio = Server::start(&dir, &["--config", cfg.to_str().expect("path")]);
    let bob = Ua::on("127.0.0.1", aio.sip);
    assert_eq!(
        status(&register(&bob, "bob", "bob-secret", None, "id-reg")),
        200
    );
    let forged = "P-Asserted-Identity: <sip:ceo@bank.example>\r\n\
                  Remote-Party-ID: <sip:ceo@bank.example>;party=calling\r\n\
                  P-Preferred-Identity: <sip:ceo@bank.example>\r\n";
    let to = format!("<sip:bob@{DOMAIN}>");
    let ruri = format!("sip:bob@{DOMAIN}");

    // alice, authenticated: her forged headers go, the asserted identity is hers.
    let alice = Ua::on("127.0.0.1", aio.sip);
    let first = alice
        .ask(&request(
            &alice,
            "INVITE",
            &ruri,
            &format!("<sip:alice@{DOMAIN}>"),
            &to,
            "id-alice",
            forged,
        ))
        .expect("challenge");
    let creds = answer(&first, "alice", "alice-secret", "INVITE", &ruri, 1);
    alice.send(&request(
        &alice,
        "INVITE",
        &ruri,
        &format!("<sip:alice@{DOMAIN}>"),
        &to,
        "id-alice",
        &format!("{forged}{creds}"),
    ));
    let inv = bob
        .next_request(Duration::from_secs(3))
        .expect("bob is called");
    assert!(
        !has_header(&inv, "Remote-Party-ID") && !has_header(&inv, "P-Preferred-Identity"),
        "{inv}"
    );
    assert_eq!(
        header(&inv, "P-Asserted-Identity"),
        format!("<sip:alice@{DOMAIN}>"),
        "{inv}"
    );

    // Anyone else (no digest needed to call a local user): stripped.
    let stranger = Ua::on("127.0.0.4", aio.sip);
    stranger.send(&request(
        &stranger,
        "INVITE",
        &ruri,
        "<sip:x@carrier.example>",
        &to,
        "id-stranger",
        forged,
    ));
    let inv = bob
        .next_request(Duration::from_secs(3))
        .expect("bob is called");
    assert!(header(&inv, "Call-ID").contains("id-stranger"), "{inv}");
    for h in [
        "P-Asserted-Identity",
        "Remote-Party-ID",
        "P-Preferred-Identity",
    ] {
        assert!(
            !has_header(&inv, h),
            "{h} kept from an untrusted source:\n{inv}"
        );
    }

    // A trusted peer (behind the dispatcher: its address, not the dispatcher's): kept.
    let trunk = Ua::on("127.0.0.3", aio.sip);
    trunk.send(&request(
        &trunk,
        "INVITE",
        &ruri,
        "<sip:+15550001111@carrier.example>",
        &to,
        "id-trunk",
        "P-Asserted-Identity: <sip:+15550001111@carrier.example>\r\n",
    ));
    let inv = bob
        .next_request(Duration::from_secs(3))
        .expect("bob is called");
    assert!(header(&inv, "Call-ID").contains("id-trunk"), "{inv}");
    assert_eq!(
        header(&inv, "P-Asserted-Identity"),
        "<sip:+15550001111@carrier.example>"
    );
}

#[test]
fn replayed_digests_brute_force_and_enumeration_get_nowhere() {
    let dir = workdir("security_auth");
    let aio = Server::start(&dir, &[]);
    let ruri = format!("sip:{DOMAIN}");
    let aor = format!("<sip:alice@{DOMAIN}>");

    // 1. A captured Authorization, sent again from elsewhere with a new Call-ID and the
    //    attacker's Contact: challenged again (stale), never 200.
    let alice = Ua::on("127.0.0.1", aio.sip);
    let first = alice
        .ask(&request(
            &alice, "REGISTER", &ruri, &aor, &aor, "replay-1", "",
        ))
        .expect("challenge");
    let creds = answer(&first, "alice", "alice-secret", "REGISTER", &ruri, 1);
    let ok = alice
        .ask(&request(
            &alice, "REGISTER", &ruri, &aor, &aor, "replay-1", &creds,
        ))
        .expect("200");
    assert_eq!(status(&ok), 200, "{ok}");
    let attacker = Ua::on("127.0.0.5", aio.sip);
    let replay = attacker
        .ask(&request(
            &attacker, "REGISTER", &ruri, &aor, &aor, "replay-2", &creds,
        ))
        .expect("an answer");
    assert_eq!(status(&replay), 401, "{replay}");
    assert!(
        header(&replay, "WWW-Authenticate").contains("stale=true"),
        "{replay}"
    );
    assert_eq!(
        aio.metric("sipcluster_sip_auth_failures_total{reason=\"replay\"}"),
        1.0
    );

    // 2. Unknown and known users look alike: the same challenge for a wrong login, the
    //    same 480 for a call.
    let probe = Ua::on("127.0.0.8", aio.sip);
    for user in ["nosuchuser", "bob"] {
        let r = register(&probe, user, "guess", None, &format!("enum-{user}"));
        assert_eq!(status(&r), 401, "{user}: {r}");
        assert!(has_header(&r, "WWW-Authenticate"), "{r}");
    }
    for user in ["nosuchuser", "carol"] {
        let r = authed(
            &alice,
            "INVITE",
            &format!("sip:{user}@{DOMAIN}"),
            "alice",
            "alice-secret",
            &format!("<sip:{user}@{DOMAIN}>"),
            &format!("enum-call-{user}"),
            "",
        );
        assert_eq!(status(&r), 480, "{user}: {r}");
    }

    // 3. Brute force from one source: past the limit (20 failures a minute by default)
    //    the source is banned and hears nothing more; another source still logs in.
    let brute = Ua::on("127.0.0.6", aio.sip);
    let bob = format!("<sip:bob@{DOMAIN}>");
    let challenge = brute
        .ask(&request(
            &brute, "REGISTER", &ruri, &bob, &bob, "brute-0", "",
        ))
        .expect("challenge");
    let mut answered = 0;
    for i in 1..=30u32 {
        let creds = answer(
            &challenge,
            "bob",
            &format!("guess-{i}"),
            "REGISTER",
            &ruri,
            i,
        );
        let r = brute.ask_within(
            &request(
                &brute,
                "REGISTER",
                &ruri,
                &bob,
                &bob,
                &format!("brute-{i}"),
                &creds,
            ),
            Duration::from_millis(500),
        );
        if let Some(r) = r {
            assert_eq!(status(&r), 401, "{r}");
            answered += 1;
        }
    }
    assert_eq!(answered, 20, "the 20th failure bans the source");
    assert_eq!(
        aio.metric("sipcluster_sip_lockouts_total{reason=\"source\"}"),
        1.0
    );
    // The rest dropped unanswered: on arrival at the all-in-one's dispatcher (the ban is
    // on the public side's blocklist), or by the edge for one already relayed.
    let dropped = aio.metric("sipcluster_sip_dropped_requests_total{reason=\"banned\"}")
        + aio.metric("sipcluster_dispatcher_sip_transport_blocked_total{side=\"public\"}");
    assert!(dropped >= 10.0, "{dropped} dropped");
    assert!(
        aio.log()
            .contains("source banned after repeated failed logins"),
        "{}",
        aio.log()
    );
    assert!(!aio.log().contains("guess-"), "no secret in the log");
    let fine = Ua::on("127.0.0.7", aio.sip);
    assert_eq!(
        status(&register(&fine, "bob", "bob-secret", None, "brute-ok")),
        200
    );
}

#[test]
fn keepalive_floods_hold_no_transactions_and_a_flooding_source_is_shed() {
    let dir = workdir("security_flood");
    let aio = Server::start(&dir, &[]);
    let flood = Ua::on("127.0.0.9", aio.sip);
    let t = aio.sip;
    // A bounded burst: 3,000 OPTIONS keepalives as fast as one socket sends them.
    for i in 0..3000u32 {
        flood.send(&format!(
            "OPTIONS sip:{t} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-fl{i}\r\nMax-Forwards: 70\r\n\
             From: <sip:ka@{a}>;tag=k{i}\r\nTo: <sip:{t}>\r\nCall-ID: flood-{i}\r\nCSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            a = flood.addr()
        ));
    }
    // An innocent client, meanwhile, is served.
    let bob = Ua::on("127.0.0.1", aio.sip);
    assert_eq!(
        status(&register(&bob, "bob", "bob-secret", None, "flood-innocent")),
        200
    );
    std::thread::sleep(Duration::from_millis(500));
    let stateless = aio.metric("sipcluster_sip_options_stateless_total");
    let shed = aio.metric("sipcluster_sip_dropped_requests_total{reason=\"rate_limited\"}");
    assert!(
        stateless >= 1000.0,
        "answered without a transaction: {stateless}"
    );
    assert!(shed >= 1.0, "the flooding source was shed: {shed}");
    // 1,000 shed in a row make it a flood (`flood_drops`): banned, the rest dropped (by
    // the all-in-one's dispatcher on arrival, or by its edge those already relayed).
    let blocked = aio.metric("sipcluster_sip_dropped_requests_total{reason=\"banned\"}")
        + aio.metric("sipcluster_dispatcher_sip_transport_blocked_total{side=\"public\"}");
    assert_eq!(
        aio.metric("sipcluster_sip_lockouts_total{reason=\"flood\"}"),
        1.0
    );
    // Each keepalive answered, shed or blocked (a few may be lost by the kernel on
    // loopback; the dispatcher's health probes are answered statelessly too).
    assert!(
        stateless + shed + blocked >= 2950.0,
        "{stateless} + {shed} + {blocked}"
    );
    // Keepalives hold no server transaction (was one for 32 s each).
    let m = aio.scrape();
    assert!(
        m.contains("sipcluster_sip_transactions_active{kind=\"server\"}"),
        "{m}"
    );
    let held = common::metric_value(&m, "sipcluster_sip_transactions_active{kind=\"server\"}");
    assert!(held < 10.0, "{held} server transactions held");
}

#[test]
fn sips_is_never_carried_in_the_clear_and_tls_contacts_fail_fast() {
    let dir = workdir("security_sips");
    let aio = Server::start(&dir, &[]);
    let alice = Ua::on("127.0.0.1", aio.sip);
    let r = alice
        .ask(&request(
            &alice,
            "INVITE",
            &format!("sips:bob@{DOMAIN}"),
            &format!("<sip:alice@{DOMAIN}>"),
            &format!("<sips:bob@{DOMAIN}>"),
            "sips-1",
            "",
        ))
        .expect("answer");
    assert_eq!(status(&r), 416, "{r}");
    // A contact only TLS reaches: 503 at once, not a 32 s timeout.
    let carol = Ua::on("127.0.0.1", aio.sip);
    let reg = register(
        &carol,
        "carol",
        "carol-secret",
        Some("<sip:carol@127.0.0.1:5999;transport=tls>"),
        "sips-reg",
    );
    assert_eq!(status(&reg), 200, "{reg}");
    let t0 = Instant::now();
    let r = authed(
        &alice,
        "INVITE",
        &format!("sip:carol@{DOMAIN}"),
        "alice",
        "alice-secret",
        &format!("<sip:carol@{DOMAIN}>"),
        "sips-2",
        "",
    );
    assert_eq!(status(&r), 503, "{r}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[test]
fn scanners_get_no_answer() {
    let dir = workdir("security_scanner");
    let (aio, _loc, edge) = targets(&dir, &[]);
    for (name, target, metric) in [
        (
            "all-in-one",
            &aio,
            "sipcluster_dispatcher_dropped_total{reason=\"scanner\"}",
        ),
        (
            "edge",
            &edge,
            "sipcluster_sip_dropped_requests_total{reason=\"scanner\"}",
        ),
    ] {
        let ua = Ua::on("127.0.0.1", target.sip);
        let t = target.sip;
        let options = |ua_header: &str, id: &str| {
            format!(
                "OPTIONS sip:100@{t} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-{id}\r\nMax-Forwards: 70\r\n\
                 From: <sip:100@{t}>;tag={id}\r\nTo: <sip:100@{t}>\r\nCall-ID: {id}\r\nCSeq: 1 OPTIONS\r\n\
                 User-Agent: {ua_header}\r\nContent-Length: 0\r\n\r\n",
                a = ua.addr()
            )
        };
        assert_eq!(
            ua.ask_within(
                &options("friendly-scanner", &format!("{name}-scan")),
                Duration::from_secs(1)
            ),
            None,
            "{name}"
        );
        assert!(
            ua.ask(&options("baresip v1.0.0", &format!("{name}-phone")))
                .is_some(),
            "{name}: a phone is answered"
        );
        assert_eq!(target.metric(metric), 1.0, "{name}");
    }
}

#[test]
fn a_digest_replayed_to_another_edge_of_the_cluster_is_refused() {
    let dir = workdir("security_replay_cluster");
    let loc = Server::location(&dir, "location", &[]);
    let a = Server::edge(&dir, "edge-a", loc.sip, &[]);
    let b = Server::edge(&dir, "edge-b", loc.sip, &[]);
    let ruri = format!("sip:{DOMAIN}");
    let aor = format!("<sip:alice@{DOMAIN}>");
    let alice = Ua::on("127.0.0.1", a.sip);
    let first = alice
        .ask(&request(
            &alice,
            "REGISTER",
            &ruri,
            &aor,
            &aor,
            "xreplay-1",
            "",
        ))
        .expect("challenge");
    let creds = answer(&first, "alice", "alice-secret", "REGISTER", &ruri, 1);
    let ok = alice
        .ask(&request(
            &alice,
            "REGISTER",
            &ruri,
            &aor,
            &aor,
            "xreplay-1",
            &creds,
        ))
        .expect("200");
    assert_eq!(status(&ok), 200, "{ok}");
    // Edge b verifies the nonce (same secret) but the pair was used on edge a.
    let attacker = Ua::on("127.0.0.5", b.sip);
    let replay = attacker
        .ask(&request(
            &attacker,
            "REGISTER",
            &ruri,
            &aor,
            &aor,
            "xreplay-2",
            &creds,
        ))
        .expect("an answer");
    assert_eq!(status(&replay), 401, "{replay}");
    assert!(
        header(&replay, "WWW-Authenticate").contains("stale=true"),
        "{replay}"
    );
    assert_eq!(
        b.metric("sipcluster_sip_auth_failures_total{reason=\"replay\"}"),
        1.0
    );
}

/// The headers `name` of `msg`, in order.
fn headers(msg: &str, name: &str) -> Vec<String> {
    msg.split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
        .collect()
}

#[test]
fn a_callers_own_dialog_is_no_relay_pass() {
    let dir = workdir("security_dialog_pass");
    let (aio, _loc, edge) = targets(&dir, &[]);
    for (name, target) in [("all-in-one", aio.sip), ("edge", edge.sip)] {
        let gw = Ua::on("127.0.0.2", "127.0.0.1:9".parse().expect("addr"));
        let g = gw.addr();
        let bob = Ua::on("127.0.0.1", target);
        let reg = register(&bob, "bob", "bob-secret", None, &format!("{name}-pass-reg"));
        assert_eq!(status(&reg), 200, "{reg}");
        // mallory, from a foreign domain (no digest needed to call a local user), with
        // the gateway as her Contact, calls bob; bob answers.
        let mallory = Ua::on("127.0.0.13", target);
        let call_id = format!("{name}-pass");
        let m = mallory.addr();
        mallory.send(&format!(
            "INVITE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {m};rport;branch=z9hG4bK-{call_id}-1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:mallory@evil.example>;tag=m1\r\nTo: <sip:bob@{DOMAIN}>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:mallory@{g}>\r\nContent-Length: 0\r\n\r\n"
        ));
        let inv = bob
            .next_request(Duration::from_secs(3))
            .expect("bob is called");
        // The dispatcher's signed client address is for the edge only: bob never sees it
        // (he could put it on his own request to an edge and pass for mallory's address).
        assert!(!inv.contains("scsrc="), "{inv}");
        let mut ok = String::from("SIP/2.0 200 OK\r\n");
        for v in headers(&inv, "Via") {
            ok += &format!("Via: {v}\r\n");
        }
        for v in headers(&inv, "Record-Route") {
            ok += &format!("Record-Route: {v}\r\n");
        }
        ok += &format!(
            "From: {}\r\nTo: {};tag=b1\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@{}>\r\nContent-Length: 0\r\n\r\n",
            header(&inv, "From"),
            header(&inv, "To"),
            bob.addr()
        );
        bob.sock.send_to(ok.as_bytes(), target).expect("send 200");
        // mallory's route set: the Record-Routes bob returned, in reverse.
        let mut buf = vec![0u8; 65536];
        let mut rr = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && rr.is_empty() {
            if let Ok(n) = mallory.sock.recv(&mut buf) {
                let r = String::from_utf8_lossy(&buf[..n]).into_owned();
                if r.starts_with("SIP/2.0 200") && r.contains(&call_id) {
                    rr = headers(&r, "Record-Route");
                }
            }
        }
        assert!(
            !rr.is_empty(),
            "{name}: mallory got the 200 with our Record-Route"
        );
        let route: Vec<String> = rr.iter().rev().cloned().collect();
        // Now she reuses her dialog to reach the gateway: a re-INVITE with the dialog's
        // tags and our Route (with its valid token), addressed to the gateway.
        for (i, ruri) in [format!("sip:+15551234567@{g}"), format!("sip:mallory@{g}")]
            .iter()
            .enumerate()
        {
            let r = mallory
                .ask(&format!(
                    "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {m};rport;branch=z9hG4bK-{call_id}-re{i}\r\n\
                     Max-Forwards: 70\r\nFrom: <sip:mallory@evil.example>;tag=m1\r\nTo: <sip:bob@{DOMAIN}>;tag=b1\r\n\
                     Call-ID: {call_id}\r\nCSeq: {} INVITE\r\nRoute: {}\r\nContact: <sip:mallory@{g}>\r\n\
                     Content-Length: 0\r\n\r\n",
                    10 + i,
                    route.join(", ")
                ))
                .unwrap_or_default();
            // Through the dispatcher the only party her token reaches is herself;
            // straight at an edge she must authenticate, and cannot.
            assert!(!r.starts_with("SIP/2.0 2"), "{name}: {r}");
        }
        assert_eq!(
            gw.next_request(Duration::from_secs(1)),
            None,
            "{name}: the gateway was reached through a caller's own dialog"
        );
    }
}

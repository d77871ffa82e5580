//! The stateless relay driven with bytes and times, no sockets: what a client's request
//! looks like at the edge, how responses find their way back, flow tokens, failover,
//! probes and drain.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dispatch_core::{
    Algorithm, FlowTable, FlowToken, HealthConfig, Listen, Metrics, Relay, RelayConfig, Side,
    State, TargetSpec, TokenKey, Transmit,
};
use sip_core::SipMessage;
use sip_txn::{FlowId, Target, Transport, TxnRef};

struct Flows(Vec<u64>);
impl FlowTable for Flows {
    fn alive(&self, flow: FlowId) -> bool {
        self.0.contains(&flow.0)
    }
}

const SECRET: &[u8] = b"0123456789abcdef0123";
const PUBLIC: &str = "198.51.100.7";
const INTERNAL: &str = "10.0.0.9";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn relay() -> Relay {
    Relay::new(relay_config(), TokenKey::new(SECRET), Metrics::default())
}

fn relay_config() -> RelayConfig {
    RelayConfig {
        instance: 0x1234,
        public: Listen {
            advertise: ip(PUBLIC),
            udp: Some(5060),
            tcp: Some(5060),
            tls: None,
            ws: None,
            wss: None,
            addresses: vec![ip(PUBLIC)],
        },
        internal: Listen {
            advertise: ip(INTERNAL),
            udp: Some(5070),
            tcp: None,
            tls: None,
            ws: None,
            wss: None,
            addresses: vec![ip(INTERNAL)],
        },
        edge_transport: Transport::Udp,
        health: HealthConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            fall: 2,
            rise: 1,
        },
        failover_window: Duration::from_secs(32),
        max_failover_entries: 1000,
        retry_after: 5,
        deny_user_agents: dispatch_core::UserAgentDeny::new(
            dispatch_core::security::DEFAULT_DENIED_USER_AGENTS,
        ),
        topology_hiding: false,
    }
}

fn edge(n: u8) -> TargetSpec {
    TargetSpec {
        id: format!("edge-{n}"),
        addr: SocketAddr::new(ip(&format!("10.0.1.{n}")), 5060),
        transport: Transport::Udp,
        weight: 1,
        priority: 0,
    }
}

fn udp(addr: &str) -> Target {
    Target {
        transport: Transport::Udp,
        addr: addr.parse().unwrap(),
        flow: None,
    }
}

fn all(r: &mut Relay) -> Vec<Transmit> {
    std::iter::from_fn(|| r.poll_transmit()).collect()
}

fn parse(b: &Bytes) -> SipMessage {
    SipMessage::parse(b.clone()).expect("valid SIP")
}

/// Add edges and answer their first probes so they are up.
fn with_edges(r: &mut Relay, n: u8, now: Instant) {
    r.set_edges((1..=n).map(edge).collect(), now);
    r.handle_timeout(now);
    for t in all(r) {
        let probe = parse(&t.bytes);
        assert_eq!(probe.method(), Some(sip_core::Method::Options));
        assert_eq!(t.side, Side::Internal);
        let resp = respond(&probe, 200);
        r.handle_message(
            Side::Internal,
            parse(&resp),
            udp(&t.target.addr.to_string()),
            &Flows(vec![]),
            now,
        );
    }
    assert!(r.targets().iter().all(|t| t.state == State::Up));
}

/// Three probe rounds in which every edge but `dead` answers: `dead` goes down. Returns
/// the time after them.
fn silence(r: &mut Relay, dead: Target, now: Instant) -> Instant {
    let mut t = now;
    for _ in 0..3 {
        t += Duration::from_millis(1100);
        r.handle_timeout(t);
        for p in all(r) {
            if p.target != dead {
                let req = parse(&p.bytes);
                answer(r, Side::Internal, &req, 200, p.target, t);
            }
        }
        t += Duration::from_millis(600);
        r.handle_timeout(t);
        all(r);
    }
    t
}

/// The next hop at `from` answers `req` with `code`; what it sends reaches the relay on `side`.
fn answer(r: &mut Relay, side: Side, req: &SipMessage, code: u16, from: Target, now: Instant) {
    r.handle_message(side, parse(&respond(req, code)), from, &Flows(vec![]), now);
}

/// A response to `req` as the next hop would send it (its Vias, To tag added).
fn respond(req: &SipMessage, status: u16) -> Bytes {
    sip_core::ResponseBuilder::new(req, status)
        .unwrap()
        .to_tag("uas1")
        .build()
}

const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.1.20:5060;rport;branch=z9hG4bKclient1\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@example.com>;tag=a1\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: call-1@192.168.1.20\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@192.168.1.20:5060>\r\n\
Content-Length: 0\r\n\r\n";

/// Another call (new Call-ID and branch).
fn fresh(i: usize) -> String {
    INVITE
        .replace("call-1@", &format!("call-{i}@"))
        .replace("z9hG4bKclient1", &format!("z9hG4bKclient1x{i}"))
}

fn client_sends(r: &mut Relay, text: &str, from: Target, now: Instant) -> Vec<Transmit> {
    r.handle_message(
        Side::Public,
        SipMessage::parse(Bytes::from(text.to_owned())).unwrap(),
        from,
        &Flows(vec![]),
        now,
    );
    all(r)
}

#[test]
fn client_request_reaches_an_edge_with_our_via_token_and_nat_fix() {
    let now = Instant::now();
    let mut r = relay();
    with_edges(&mut r, 3, now);
    let out = client_sends(&mut r, INVITE, udp("203.0.113.5:40000"), now);
    assert_eq!(out.len(), 1);
    let t = &out[0];
    assert_eq!(t.side, Side::Internal);
    assert!(t.target.addr.ip().to_string().starts_with("10.0.1."));
    let fwd = parse(&t.bytes);
    let vias: Vec<String> = fwd
        .via()
        .flatten()
        .map(|v| String::from_utf8_lossy(v.raw).into_owned())
        .collect();
    assert!(
        vias[0].starts_with("SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bK-scd"),
        "{vias:?}"
    );
    assert_eq!(
        vias[1],
        "SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKclient1;received=203.0.113.5;rport=40000"
    );
    assert_eq!(fwd.max_forwards().unwrap(), Some(69));
    // A Record-Route naming this client on this dispatcher, at the public address.
    let rr = fwd.header(sip_core::HeaderName::RecordRoute).expect("RR");
    let rr = std::str::from_utf8(rr).unwrap();
    // With the dialog's token, which any edge checks on in-dialog requests.
    let key = TokenKey::new(SECRET);
    let dlg = rr
        .split(";dlg=")
        .nth(1)
        .and_then(|r| r.strip_suffix(";lr>"))
        .expect("dialog token");
    let call_id = fwd.call_id().unwrap();
    assert!(key.dialog_ok(dlg, call_id, [fwd.from_tag().unwrap(), None]));
    assert!(
        rr.starts_with("<sip:scd-") && rr.contains("@198.51.100.7:5060;dlg="),
        "{rr}"
    );
    // Our Via signs the client's address for the edge.
    let relayed = dispatch_core::relay::relayed_by_dispatcher(&key, &fwd.top_via().unwrap())
        .expect("a verified dispatcher Via");
    assert_eq!(relayed.client, "203.0.113.5:40000".parse().unwrap());
    assert_eq!(relayed.dialog, None);
    // Nothing is believed from a look-alike signed with another secret.
    let other = TokenKey::new(b"not-the-cluster-secret!!");
    assert!(dispatch_core::relay::relayed_by_dispatcher(&other, &fwd.top_via().unwrap()).is_none());
    let user = &rr[5..rr.find('@').unwrap()];
    let tok = FlowToken::decode(&TokenKey::new(SECRET), user).expect("signed");
    assert_eq!(tok.client, "203.0.113.5:40000".parse().unwrap());
    assert_eq!(tok.internal, "10.0.0.9:5070".parse().unwrap());
    assert_eq!(tok.flow, None);
    assert!(
        tok.nat,
        "the Via said 192.168.1.20:5060, the packet came from elsewhere"
    );
    // The rest is byte-identical.
    let text = std::str::from_utf8(&t.bytes).unwrap();
    let kept = "From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n\
Call-ID: call-1@192.168.1.20\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@192.168.1.20:5060>\r\n";
    assert!(text.contains(kept), "{text}");

    // Same Call-ID → same edge; a retransmission gets the same branch.
    let again = client_sends(&mut r, INVITE, udp("203.0.113.5:40000"), now);
    assert_eq!(again[0].target, t.target);
    assert_eq!(again[0].bytes, t.bytes);

    // The edge's 180 goes back to the client's NAT address, our Via removed.
    let ringing = respond(&fwd, 180);
    r.handle_message(
        Side::Internal,
        parse(&ringing),
        t.target,
        &Flows(vec![]),
        now,
    );
    let back = all(&mut r);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].side, Side::Public);
    assert_eq!(back[0].target, udp("203.0.113.5:40000"));
    let resp = parse(&back[0].bytes);
    assert_eq!(resp.via().count(), 1);
    assert_eq!(resp.status(), Some(180));
}

#[test]
fn calls_spread_over_edges_and_skip_joining_ones() {
    let now = Instant::now();
    let mut r = relay();
    // Joining edges take nothing: 503 with Retry-After.
    r.set_edges(vec![edge(1)], now);
    let out = client_sends(&mut r, INVITE, udp("203.0.113.5:40000"), now);
    assert_eq!(out[0].side, Side::Public);
    let resp = parse(&out[0].bytes);
    assert_eq!(resp.status(), Some(503));
    assert_eq!(
        resp.header(sip_core::HeaderName::RetryAfter),
        Some(&b"5"[..])
    );

    let mut r = relay();
    with_edges(&mut r, 3, now);
    let mut seen = std::collections::HashMap::new();
    for i in 0..300 {
        let inv = fresh(i);
        let out = client_sends(&mut r, &inv, udp("203.0.113.5:40000"), now);
        *seen.entry(out[0].target.addr).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3);
    assert!(seen.values().all(|n| *n > 60), "{seen:?}");
}

#[test]
fn edge_503_fails_over_to_the_next_edge_and_is_acked() {
    let now = Instant::now();
    let mut r = relay();
    with_edges(&mut r, 3, now);
    let out = client_sends(&mut r, INVITE, udp("203.0.113.5:40000"), now);
    let first = out[0].target;
    let fwd = parse(&out[0].bytes);
    // 100 Trying is relayed and does not stop failover.
    answer(&mut r, Side::Internal, &fwd, 100, first, now);
    assert_eq!(all(&mut r).len(), 1);
    answer(&mut r, Side::Internal, &fwd, 503, first, now);
    let out = all(&mut r);
    assert_eq!(out.len(), 2, "{out:?}");
    let resent = out
        .iter()
        .find(|t| t.target != first)
        .expect("to another edge");
    assert_eq!(
        resent.bytes,
        fwd.bytes().clone(),
        "the same request, same branch"
    );
    let ack = out
        .iter()
        .find(|t| t.target == first)
        .expect("ACK to the first edge");
    let ack = parse(&ack.bytes);
    assert_eq!(ack.method(), Some(sip_core::Method::Ack));
    assert_eq!(ack.top_via().unwrap().branch, fwd.top_via().unwrap().branch);
    assert_eq!(ack.to_tag().unwrap(), Some("uas1"));

    // The CANCEL follows the request to the second edge, whatever the hash says.
    let cancel = INVITE
        .replace("INVITE sip:bob@example.com", "CANCEL sip:bob@example.com")
        .replace("1 INVITE", "1 CANCEL");
    let out = client_sends(&mut r, &cancel, udp("203.0.113.5:40000"), now);
    assert_eq!(out[0].target, resent.target);
    // A retransmitted 503 from the first edge is ACKed again, not relayed.
    answer(&mut r, Side::Internal, &fwd, 503, first, now);
    let out = all(&mut r);
    assert_eq!(out.len(), 1);
    assert_eq!(parse(&out[0].bytes).method(), Some(sip_core::Method::Ack));

    // A 503 from the second and third edge: the last one is relayed to the client.
    answer(&mut r, Side::Internal, &fwd, 503, resent.target, now);
    let third = all(&mut r)
        .into_iter()
        .find(|t| t.bytes == fwd.bytes().clone())
        .expect("third edge")
        .target;
    answer(&mut r, Side::Internal, &fwd, 503, third, now);
    let out = all(&mut r);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].side, Side::Public);
    assert_eq!(parse(&out[0].bytes).status(), Some(503));
}

#[test]
fn no_failover_once_a_response_was_relayed() {
    let now = Instant::now();
    let mut r = relay();
    with_edges(&mut r, 2, now);
    let out = client_sends(&mut r, INVITE, udp("203.0.113.5:40000"), now);
    let (first, fwd) = (out[0].target, parse(&out[0].bytes));
    answer(&mut r, Side::Internal, &fwd, 180, first, now);
    all(&mut r);
    answer(&mut r, Side::Internal, &fwd, 503, first, now);
    let out = all(&mut r);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].side, Side::Public, "relayed, not retried");
}

#[test]
fn transport_error_fails_over_and_marks_the_edge() {
    let now = Instant::now();
    let mut r = relay();
    with_edges(&mut r, 2, now);
    let out = client_sends(&mut r, INVITE, udp("203.0.113.5:40000"), now);
    r.handle_send_failed(Side::Internal, out[0].target, out[0].origin, now);
    let again = all(&mut r);
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].target, out[0].target);
    assert_eq!(again[0].bytes, out[0].bytes);
}

#[test]
fn edge_requests_reach_clients_by_token() {
    let now = Instant::now();
    let mut r = relay();
    with_edges(&mut r, 1, now);
    // A TCP client registers: the Path names its connection.
    let reg = "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP 192.168.1.30:5060;branch=z9hG4bKreg1\r\n\
Max-Forwards: 70\r\nFrom: <sip:carol@example.com>;tag=c1\r\nTo: <sip:carol@example.com>\r\n\
Call-ID: reg-1\r\nCSeq: 1 REGISTER\r\nContact: <sip:carol@192.168.1.30:5060;transport=tcp>\r\n\
Content-Length: 0\r\n\r\n";
    let client = Target {
        transport: Transport::Tcp,
        addr: "203.0.113.9:50000".parse().unwrap(),
        flow: Some(FlowId(77)),
    };
    let out = client_sends(&mut r, reg, client, now);
    let fwd = parse(&out[0].bytes);
    let path = std::str::from_utf8(fwd.header(sip_core::HeaderName::Path).unwrap())
        .unwrap()
        .to_owned();
    assert!(path.contains(";transport=tcp;lr>"), "{path}");
    assert!(
        std::str::from_utf8(fwd.top_via().unwrap().raw)
            .unwrap()
            .contains(";scflow=4d;"),
        "connection id in our Via"
    );
    // The 200 goes back over the connection.
    answer(&mut r, Side::Internal, &fwd, 200, out[0].target, now);
    let back = all(&mut r);
    assert_eq!(back[0].target, client);

    // An edge sends an INVITE for carol with the Path as Route.
    let invite = format!(
        "INVITE sip:carol@192.168.1.30:5060;transport=tcp SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.1.1:5060;branch=z9hG4bKedge1\r\nRoute: {path}\r\nMax-Forwards: 69\r\n\
From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:carol@example.com>\r\nCall-ID: call-9\r\n\
CSeq: 1 INVITE\r\nX-Sipcluster-Trace: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\
Content-Length: 0\r\n\r\n"
    );
    let from_edge = udp("10.0.1.1:5060");
    r.handle_message(
        Side::Internal,
        SipMessage::parse(Bytes::from(invite.clone())).unwrap(),
        from_edge,
        &Flows(vec![77]),
        now,
    );
    let out = all(&mut r);
    assert_eq!(out[0].side, Side::Public);
    assert_eq!(out[0].target, client);
    let sent = parse(&out[0].bytes);
    assert_eq!(
        sent.header(sip_core::HeaderName::Route),
        None,
        "our Route popped"
    );
    assert!(
        header_values(&sent, dispatch_core::TRACE_HEADER).is_empty(),
        "nothing of our traces leaves the cluster"
    );
    assert_eq!(
        sent.header(sip_core::HeaderName::RecordRoute)
            .map(|v| v.to_vec()),
        // The Path URI as this side's Record-Route, with the dialog's token.
        Some(dispatch_core::relay::with_dialog_param(
            path.as_bytes(),
            &TokenKey::new(SECRET).dialog_token("call-9", "a1")
        ))
    );
    assert!(
        sent.top_via()
            .unwrap()
            .raw
            .starts_with(b"SIP/2.0/TCP 198.51.100.7:5060;branch=z9hG4bK-scd")
    );
    // carol's answer goes back to the edge.
    r.handle_message(
        Side::Public,
        parse(&respond(&sent, 200)),
        client,
        &Flows(vec![77]),
        now,
    );
    let back = all(&mut r);
    assert_eq!(back[0].side, Side::Internal);
    assert_eq!(back[0].target, from_edge);

    // Connection gone: 430 Flow Failed to the edge.
    r.handle_message(
        Side::Internal,
        SipMessage::parse(Bytes::from(invite.clone())).unwrap(),
        from_edge,
        &Flows(vec![]),
        now,
    );
    let out = all(&mut r);
    assert_eq!(parse(&out[0].bytes).status(), Some(430));
    // A TCP client that is not behind a NAT gets a new connection to its Contact instead.
    let direct = Target {
        transport: Transport::Tcp,
        addr: "192.168.1.30:5060".parse().unwrap(),
        flow: Some(FlowId(78)),
    };
    let reg_direct = reg
        .replace("Call-ID: reg-1", "Call-ID: reg-2")
        .replace("z9hG4bKreg1", "z9hG4bKreg2");
    let out = client_sends(&mut r, &reg_direct, direct, now);
    let fwd2 = parse(&out[0].bytes);
    let path2 = std::str::from_utf8(fwd2.header(sip_core::HeaderName::Path).unwrap())
        .unwrap()
        .to_owned();
    let invite2 = invite.replace(&path, &path2);
    r.handle_message(
        Side::Internal,
        SipMessage::parse(Bytes::from(invite2)).unwrap(),
        from_edge,
        &Flows(vec![]),
        now,
    );
    let out = all(&mut r);
    assert_eq!(out[0].side, Side::Public);
    assert_eq!(
        out[0].target,
        Target {
            transport: Transport::Tcp,
            addr: "192.168.1.30:5060".parse().unwrap(),
            flow: None
        }
    );
    // That connection cannot be opened: the edge gets 480 at once.
    r.handle_send_failed(Side::Public, out[0].target, out[0].origin, now);
    let answer = all(&mut r);
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].side, Side::Internal);
    assert_eq!(answer[0].target, from_edge);
    assert_eq!(parse(&answer[0].bytes).status(), Some(480));
    // Forged token: 403.
    let forged = invite.replace("scd-", "scd-0");
    r.handle_message(
        Side::Internal,
        SipMessage::parse(Bytes::from(forged)).unwrap(),
        from_edge,
        &Flows(vec![77]),
        now,
    );
    let out = all(&mut r);
    assert_eq!(parse(&out[0].bytes).status(), Some(403));
}

#[test]
fn responses_to_unknown_hops_are_dropped() {
    let now = Instant::now();
    let mut r = relay();
    with_edges(&mut r, 1, now);
    // A "response" from outside whose second Via points at a non-edge: not reflected.
    let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-scd0000000000000001\r\n\
Via: SIP/2.0/UDP 192.0.2.66:5060;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\n\
Call-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    r.handle_message(
        Side::Public,
        SipMessage::parse(Bytes::from(resp)).unwrap(),
        udp("192.0.2.66:5060"),
        &Flows(vec![]),
        now,
    );
    assert!(all(&mut r).is_empty());
    // A response with a foreign top Via.
    let foreign = resp.replace("z9hG4bK-scd", "z9hG4bKzz");
    r.handle_message(
        Side::Internal,
        SipMessage::parse(Bytes::from(foreign)).unwrap(),
        udp("10.0.1.1:5060"),
        &Flows(vec![]),
        now,
    );
    assert!(all(&mut r).is_empty());
}

#[test]
fn in_dialog_requests_use_any_live_edge_and_bye_survives_an_edge_loss() {
    let now = Instant::now();
    let mut r = relay();
    with_edges(&mut r, 3, now);
    let bye = INVITE
        .replace("INVITE sip:bob@example.com", "BYE sip:bob@192.168.1.40")
        .replace(
            "To: <sip:bob@example.com>",
            "To: <sip:bob@example.com>;tag=b1",
        )
        .replace("1 INVITE", "2 BYE");
    let first = client_sends(&mut r, &bye, udp("203.0.113.5:40000"), now)[0].target;
    // That edge stops answering probes: after `fall` failures BYEs go elsewhere.
    let t = silence(&mut r, first, now);
    let down: Vec<_> = r
        .targets()
        .into_iter()
        .filter(|x| x.state == State::Down)
        .collect();
    assert_eq!(down.len(), 1, "{:?}", r.targets());
    let second = client_sends(&mut r, &bye, udp("203.0.113.5:40000"), t)[0].target;
    assert_ne!(second, first);
}

#[test]
fn probe_503_drains_at_once_and_admin_drain_and_weight_work() {
    let now = Instant::now();
    let mut r = relay();
    with_edges(&mut r, 2, now);
    let t = now + Duration::from_millis(1001);
    r.handle_timeout(t);
    let probes = all(&mut r);
    let draining = probes[0].target;
    r.handle_message(
        Side::Internal,
        parse(&respond(&parse(&probes[0].bytes), 503)),
        draining,
        &Flows(vec![]),
        t,
    );
    let info = r.targets();
    let d = info.iter().find(|x| x.addr == draining.addr).unwrap();
    assert!(d.draining && d.state == State::Up);
    for i in 0..50 {
        let inv = fresh(i);
        let out = client_sends(&mut r, &inv, udp("203.0.113.5:40000"), t);
        assert_ne!(out[0].target, draining, "no new dialogs to a draining edge");
    }
    // Admin: weight 0 on the other one leaves nothing for new dialogs.
    let other = info
        .iter()
        .find(|x| x.addr != draining.addr)
        .unwrap()
        .id
        .clone();
    assert!(r.set_weight("edge", &other, 0));
    let out = client_sends(&mut r, &fresh(1000), udp("203.0.113.5:40000"), t);
    assert_eq!(parse(&out[0].bytes).status(), Some(503));
    assert!(r.set_weight("edge", &other, 1));
    assert!(r.set_draining("edge", &other, true));
    let out = client_sends(&mut r, &fresh(1001), udp("203.0.113.5:40000"), t);
    assert_eq!(parse(&out[0].bytes).status(), Some(503));
    assert!(!r.set_draining("edge", "nope", true));
}

#[test]
fn destination_sets_pick_members_and_fail_over() {
    let now = Instant::now();
    let mut r = relay();
    with_edges(&mut r, 1, now);
    let gw = |n: u8, prio: u32| TargetSpec {
        id: format!("gw{n}"),
        addr: SocketAddr::new(ip(&format!("192.0.2.{n}")), 5060),
        transport: Transport::Udp,
        weight: 1,
        priority: prio,
    };
    r.set_sets(
        vec![(
            "carrier".into(),
            Algorithm::Priority,
            vec![gw(1, 1), gw(2, 2)],
        )],
        now,
    );
    r.handle_timeout(now);
    for p in all(&mut r) {
        assert_eq!(
            p.side,
            Side::Public,
            "set members are probed on the public side"
        );
        let req = parse(&p.bytes);
        answer(&mut r, Side::Public, &req, 200, p.target, now);
    }
    let invite = "INVITE sip:+15551234@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.1.1:5060;branch=z9hG4bKedge7\r\nRoute: <sip:set-carrier@10.0.0.9:5070;lr>\r\n\
Max-Forwards: 69\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:+15551234@example.com>\r\n\
Call-ID: pstn-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    r.handle_message(
        Side::Internal,
        SipMessage::parse(Bytes::from(invite)).unwrap(),
        udp("10.0.1.1:5060"),
        &Flows(vec![]),
        now,
    );
    let out = all(&mut r);
    assert_eq!(
        out[0].target.addr,
        "192.0.2.1:5060".parse().unwrap(),
        "priority 1 first"
    );
    let sent = parse(&out[0].bytes);
    assert!(sent.header(sip_core::HeaderName::RecordRoute).is_some());
    answer(&mut r, Side::Public, &sent, 503, out[0].target, now);
    let out = all(&mut r);
    let resent = out
        .iter()
        .find(|t| t.bytes == sent.bytes().clone())
        .expect("failover");
    assert_eq!(resent.target.addr, "192.0.2.2:5060".parse().unwrap());
    // Unknown set: 404.
    let bad = invite.replace("set-carrier", "set-nope");
    r.handle_message(
        Side::Internal,
        SipMessage::parse(Bytes::from(bad)).unwrap(),
        udp("10.0.1.1:5060"),
        &Flows(vec![]),
        now,
    );
    assert_eq!(parse(&all(&mut r)[0].bytes).status(), Some(404));
    let _ = TxnRef::Stateless;
}

/// A dialog with a trunk reached over TCP or TLS: the edge's in-dialog requests (routed
/// by our Record-Route) go to the trunk over that transport again, never over UDP (a
/// TLS trunk's BYE was once sent in the clear, over UDP, and never answered).
#[test]
fn in_dialog_requests_reach_a_set_member_over_its_transport() {
    for transport in [Transport::Tcp, Transport::Tls] {
        let now = Instant::now();
        let mut r = relay();
        with_edges(&mut r, 1, now);
        let member = SocketAddr::new(ip("192.0.2.1"), 5061);
        r.set_sets(
            vec![(
                "carrier".into(),
                Algorithm::Priority,
                vec![TargetSpec {
                    id: "gw1".into(),
                    addr: member,
                    transport,
                    weight: 1,
                    priority: 1,
                }],
            )],
            now,
        );
        r.handle_timeout(now);
        for p in all(&mut r) {
            let req = parse(&p.bytes);
            answer(&mut r, Side::Public, &req, 200, p.target, now);
        }
        let invite = "INVITE sip:+15551234@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.1.1:5060;branch=z9hG4bKedge8\r\nRoute: <sip:set-carrier@10.0.0.9:5070;lr>\r\n\
Max-Forwards: 69\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:+15551234@example.com>\r\n\
Call-ID: pstn-2\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let edge = udp("10.0.1.1:5060");
        r.handle_message(
            Side::Internal,
            SipMessage::parse(Bytes::from(invite)).unwrap(),
            edge,
            &Flows(vec![]),
            now,
        );
        let out = all(&mut r);
        assert_eq!(out[0].target.transport, transport);
        let rr = parse(&out[0].bytes)
            .header(sip_core::HeaderName::RecordRoute)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap();
        // The BYE the edge sends toward the trunk's Contact, routed by our Record-Route.
        let bye = format!(
            "BYE sip:gw@192.0.2.1:5061;transport={t} SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.1.1:5060;branch=z9hG4bKedge9\r\nRoute: {rr}\r\n\
Max-Forwards: 69\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:+15551234@example.com>;tag=g1\r\n\
Call-ID: pstn-2\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            t = transport.as_str().to_ascii_lowercase()
        );
        r.handle_message(
            Side::Internal,
            SipMessage::parse(Bytes::from(bye)).unwrap(),
            edge,
            &Flows(vec![]),
            now,
        );
        let out = all(&mut r);
        assert_eq!(out.len(), 1, "{transport:?}");
        assert_eq!(out[0].target.addr, member, "{transport:?}");
        assert_eq!(
            out[0].target.transport, transport,
            "the BYE over {transport:?}"
        );
    }
}

#[test]
fn options_to_the_dispatcher_and_hostile_input() {
    let now = Instant::now();
    let mut r = relay();
    let opts = "OPTIONS sip:198.51.100.7:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKo\r\n\
Max-Forwards: 70\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:198.51.100.7>\r\nCall-ID: o\r\nCSeq: 1 OPTIONS\r\n\r\n";
    // No edge: the dispatcher says 503 itself.
    let out = client_sends(&mut r, opts, udp("192.0.2.1:5060"), now);
    assert_eq!(parse(&out[0].bytes).status(), Some(503));
    // Max-Forwards 0: it cannot forward, so it answers.
    let mf0_opts = opts.replace("Max-Forwards: 70", "Max-Forwards: 0");
    let out = client_sends(&mut r, &mf0_opts, udp("192.0.2.1:5060"), now);
    assert_eq!(parse(&out[0].bytes).status(), Some(200));
    r.set_self_draining(true);
    let out = client_sends(&mut r, opts, udp("192.0.2.1:5060"), now);
    assert_eq!(parse(&out[0].bytes).status(), Some(503));
    // With an edge and not draining, the edge answers OPTIONS for the service.
    r.set_self_draining(false);
    with_edges(&mut r, 1, now);
    let out = client_sends(&mut r, opts, udp("192.0.2.1:5060"), now);
    assert_eq!(out[0].side, Side::Internal);
    // Max-Forwards 0 to someone else: 483.
    let mf0 = INVITE.replace("Max-Forwards: 70", "Max-Forwards: 0");
    let out = client_sends(&mut r, &mf0, udp("192.0.2.1:5060"), now);
    assert_eq!(parse(&out[0].bytes).status(), Some(483));
    // No Call-ID: 400.
    let bad = INVITE.replace("Call-ID: call-1@192.168.1.20\r\n", "");
    let out = client_sends(&mut r, &bad, udp("192.0.2.1:5060"), now);
    assert_eq!(parse(&out[0].bytes).status(), Some(400));
}

#[test]
fn a_200_past_a_dead_edge_still_reaches_the_caller() {
    let now = Instant::now();
    let mut r = relay();
    with_edges(&mut r, 2, now);
    let caller = udp("203.0.113.5:40000");
    let out = client_sends(&mut r, INVITE, caller, now);
    let (edge_t, fwd) = (out[0].target, parse(&out[0].bytes));
    // The edge forwards to the callee through us (Route: a token naming the callee).
    let token_uri = fwd
        .header(sip_core::HeaderName::RecordRoute)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap();
    let text = String::from_utf8_lossy(fwd.as_bytes()).into_owned();
    let edge_req = text.replacen(
        "Via: ",
        &format!(
            "Route: {token_uri}\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKedgeX\r\nVia: ",
            edge_t.addr
        ),
        1,
    );
    r.handle_message(
        Side::Internal,
        SipMessage::parse(Bytes::from(edge_req)).unwrap(),
        edge_t,
        &Flows(vec![]),
        now,
    );
    let to_callee = all(&mut r);
    assert_eq!(to_callee.len(), 1);
    let callee_req = parse(&to_callee[0].bytes);
    assert_eq!(callee_req.via().count(), 4);
    // The edge dies; probes find out.
    let t = silence(&mut r, edge_t, now);
    // The callee's 200 goes straight to the caller, past the dead edge and our own hop.
    answer(
        &mut r,
        Side::Public,
        &callee_req,
        200,
        to_callee[0].target,
        t,
    );
    let out = all(&mut r);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].side, Side::Public);
    assert_eq!(out[0].target, caller);
    let resp = parse(&out[0].bytes);
    assert_eq!(resp.via().count(), 1);
    assert_eq!(resp.status(), Some(200));
    assert_eq!(r.metrics().rescued.get(), 1);

    // An edge removed by discovery still gets the responses of its transactions for a
    // while (it is draining, not dead).
    let alive: Vec<TargetSpec> = r
        .targets()
        .into_iter()
        .filter(|x| x.addr != edge_t.addr)
        .map(|x| TargetSpec {
            id: x.id,
            addr: x.addr,
            transport: x.transport,
            weight: 1,
            priority: 0,
        })
        .collect();
    let other = alive[0].addr;
    r.set_edges(vec![], t);
    let resp_for_other = String::from_utf8_lossy(&respond(&callee_req, 180))
        .replace(&edge_t.addr.to_string(), &other.to_string());
    r.handle_message(
        Side::Public,
        SipMessage::parse(Bytes::from(resp_for_other)).unwrap(),
        to_callee[0].target,
        &Flows(vec![]),
        t,
    );
    let out = all(&mut r);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].target.addr, other);
}

#[test]
fn the_internal_side_takes_requests_from_edges_only() {
    let mut r = relay();
    let now = Instant::now();
    with_edges(&mut r, 1, now);
    r.set_sets(
        vec![(
            "trunk".into(),
            dispatch_core::Algorithm::Priority,
            vec![TargetSpec {
                id: "gw".into(),
                addr: "198.51.100.50:5060".parse().unwrap(),
                transport: Transport::Udp,
                weight: 1,
                priority: 0,
            }],
        )],
        now,
    );
    let _ = all(&mut r);
    let invite = |via: &str| {
        format!(
            "INVITE sip:+15551234567@example.com SIP/2.0\r\nVia: SIP/2.0/UDP {via};branch=z9hG4bKint1\r\n\
             Route: <sip:set-trunk@10.0.0.9:5070;lr>\r\nMax-Forwards: 69\r\nFrom: <sip:a@example.com>;tag=a1\r\n\
             To: <sip:+15551234567@example.com>\r\nCall-ID: int-1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // From an address that is no edge (the internal port reached from outside): dropped.
    let outsider = udp("203.0.113.66:5060");
    r.handle_message(
        Side::Internal,
        SipMessage::parse(Bytes::from(invite("203.0.113.66:5060"))).unwrap(),
        outsider,
        &Flows(vec![]),
        now,
    );
    assert!(all(&mut r).is_empty(), "nothing relayed for a non-edge");
    // From the edge: handled (the member has not answered a probe yet, so the edge is
    // told 503: the point is that it is answered, not dropped).
    let from_edge = udp(&edge(1).addr.to_string());
    r.handle_message(
        Side::Internal,
        SipMessage::parse(Bytes::from(invite(&edge(1).addr.to_string()))).unwrap(),
        from_edge,
        &Flows(vec![]),
        now,
    );
    let out = all(&mut r);
    assert!(out.iter().any(|t| t.target == from_edge), "{out:?}");
}

/// RFC 3261 §18.2.2: a request that came in on a connection is answered on that
/// connection. A client whose Via says UDP (the RFC 4475 messages do) but that spoke TCP
/// must hear back on its TCP connection, not by UDP to its Via's port.
#[test]
fn a_request_on_a_connection_is_answered_on_it_whatever_its_via_says() {
    let now = Instant::now();
    let mut r = relay();
    with_edges(&mut r, 1, now);
    let client = Target {
        transport: Transport::Tcp,
        addr: "203.0.113.9:50000".parse().unwrap(),
        flow: Some(FlowId(0x4e)),
    };
    let opts = "OPTIONS sip:carol@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.1.30:5060;branch=z9hG4bKudpvia1\r\n\
Max-Forwards: 70\r\nFrom: <sip:dave@example.com>;tag=d1\r\nTo: <sip:carol@example.com>\r\n\
Call-ID: via-says-udp\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let out = client_sends(&mut r, opts, client, now);
    let fwd = parse(&out[0].bytes);
    answer(&mut r, Side::Internal, &fwd, 404, out[0].target, now);
    let back = all(&mut r);
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].side, Side::Public);
    assert_eq!(
        back[0].target, client,
        "on the connection the request came in on"
    );

    // A UDP client is still answered by UDP at its received/rport.
    let client = udp("203.0.113.10:40000");
    let opts = opts.replace("z9hG4bKudpvia1", "z9hG4bKudpvia2");
    let out = client_sends(&mut r, &opts, client, now);
    let fwd = parse(&out[0].bytes);
    answer(&mut r, Side::Internal, &fwd, 404, out[0].target, now);
    let back = all(&mut r);
    assert_eq!(back[0].target, client);
}

#[test]
fn probe_round_trip_times_are_observed_per_target() {
    let now = Instant::now();
    let mut r = relay();
    with_edges(&mut r, 2, now);
    let t = now + Duration::from_millis(1001);
    r.handle_timeout(t);
    let probes = all(&mut r);
    assert_eq!(probes.len(), 2, "one probe per edge");
    // The first edge answers 3 ms later; the second not yet.
    r.handle_message(
        Side::Internal,
        parse(&respond(&parse(&probes[0].bytes), 200)),
        probes[0].target,
        &Flows(vec![]),
        t + Duration::from_millis(3),
    );
    let mut reg = prometheus_client::registry::Registry::default();
    r.metrics()
        .register(reg.sub_registry_with_prefix("sipcluster"));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    let samples = |suffix: &str| -> Vec<f64> {
        text.lines()
            .filter(|l| {
                l.starts_with(&format!(
                    "sipcluster_dispatcher_probe_duration_seconds_{suffix}{{"
                ))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    let mut counts = samples("count");
    counts.sort_by(f64::total_cmp);
    // `with_edges` brought both up by answering a first probe each at once (0 s).
    assert_eq!(counts, [1.0, 2.0], "{text}");
    let sum: f64 = samples("sum").iter().sum();
    assert!((sum - 0.003).abs() < 1e-9, "{text}");
    // The 3 ms answer is in the 3.2 ms bucket, not in the 1.6 ms one.
    assert!(text.contains("le=\"0.0032\""), "{text}");
}

/// The values of `name` in a relayed message.
fn header_values(m: &SipMessage, name: &str) -> Vec<String> {
    m.headers_named(name)
        .map(|h| String::from_utf8_lossy(h.value).into_owned())
        .collect()
}

#[test]
fn the_trace_header_is_ours_toward_the_edge_and_never_a_clients() {
    const OURS: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let spoofed = INVITE.replace(
        "Content-Length: 0\r\n",
        "X-Sipcluster-Trace: 00-11111111111111111111111111111111-2222222222222222-01\r\nContent-Length: 0\r\n",
    );
    let now = Instant::now();
    // Traces off: the client's header is removed, none added.
    let mut r = relay();
    with_edges(&mut r, 1, now);
    let out = client_sends(&mut r, &spoofed, udp("203.0.113.5:40000"), now);
    assert_eq!(out.len(), 1);
    assert!(header_values(&parse(&out[0].bytes), dispatch_core::TRACE_HEADER).is_empty());
    // Traces on: ours, only.
    let mut r = relay();
    r.set_trace_context(|| Some(OURS.to_owned()));
    with_edges(&mut r, 1, now);
    let out = client_sends(&mut r, &spoofed, udp("203.0.113.5:40000"), now);
    assert_eq!(
        header_values(&parse(&out[0].bytes), dispatch_core::TRACE_HEADER),
        [OURS]
    );
}

/// A flow table whose connections are TLS with a verified client certificate.
struct TlsFlows(Vec<u64>, &'static str);
impl FlowTable for TlsFlows {
    fn alive(&self, flow: FlowId) -> bool {
        self.0.contains(&flow.0)
    }
    fn peer(&self, flow: FlowId) -> Option<std::sync::Arc<str>> {
        self.alive(flow).then(|| std::sync::Arc::from(self.1))
    }
}

fn relay_with_tls() -> Relay {
    let mut r = relay_cfg(|c| c.public.tls = Some(5061));
    with_edges(&mut r, 1, Instant::now());
    r
}

fn relay_cfg(f: impl FnOnce(&mut RelayConfig)) -> Relay {
    let mut cfg = relay_config();
    f(&mut cfg);
    Relay::new(cfg, TokenKey::new(SECRET), Metrics::default())
}

#[test]
fn a_tls_client_is_reached_over_its_tls_connection_and_named_by_its_certificate() {
    let now = Instant::now();
    let mut r = relay_with_tls();
    let reg = "REGISTER sips:example.com SIP/2.0\r\n\
Via: SIP/2.0/TLS 203.0.113.9:50001;branch=z9hG4bKtls1\r\n\
Max-Forwards: 70\r\nFrom: <sips:carol@example.com>;tag=c1\r\nTo: <sips:carol@example.com>\r\n\
Call-ID: reg-tls\r\nCSeq: 1 REGISTER\r\nContact: <sips:carol@203.0.113.9:5061>\r\n\
Content-Length: 0\r\n\r\n";
    let client = Target {
        transport: Transport::Tls,
        addr: "203.0.113.9:50001".parse().unwrap(),
        flow: Some(FlowId(78)),
    };
    r.handle_message(
        Side::Public,
        SipMessage::parse(Bytes::from(reg)).unwrap(),
        client,
        &TlsFlows(vec![78], "trunk.example.net"),
        now,
    );
    let out = all(&mut r);
    assert_eq!(out.len(), 1, "a SIPS REGISTER over TLS is relayed");
    let fwd = parse(&out[0].bytes);
    let path = std::str::from_utf8(fwd.header(sip_core::HeaderName::Path).unwrap())
        .unwrap()
        .to_owned();
    // The Path names the TLS side of the dispatcher: clients come back over TLS.
    assert!(path.contains(":5061;transport=tls;lr>"), "{path}");
    let tok = path
        .split(['<', '@'])
        .nth(1)
        .and_then(|u| u.strip_prefix("sip:"))
        .unwrap();
    assert!(
        FlowToken::decode(&TokenKey::new(SECRET), tok)
            .unwrap()
            .secure
    );
    // The edge reads the certificate's name from our Via, signed; a forged one is not
    // believed.
    let top = fwd.top_via().unwrap();
    let relayed =
        dispatch_core::relay::relayed_by_dispatcher(&TokenKey::new(SECRET), &top).unwrap();
    assert_eq!(relayed.peer.as_deref(), Some("trunk.example.net"));
    let forged = String::from_utf8_lossy(top.raw)
        .replace(&hex_of("trunk.example.net"), &hex_of("trunk.example.neu"));
    let forged_msg = SipMessage::parse(Bytes::from(format!(
        "OPTIONS sip:x SIP/2.0\r\nVia: {forged}\r\nMax-Forwards: 70\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x>\r\nCall-ID: f\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )))
    .unwrap();
    let relayed = dispatch_core::relay::relayed_by_dispatcher(
        &TokenKey::new(SECRET),
        &forged_msg.top_via().unwrap(),
    )
    .unwrap();
    assert_eq!(relayed.peer, None, "a peer whose MAC fails is dropped");
    // The edge's copy forwarded onwards carries none of it.
    let stripped = dispatch_core::relay::without_edge_params(top.raw).unwrap();
    assert!(!String::from_utf8_lossy(&stripped).contains("scpeer"));
    answer(&mut r, Side::Internal, &fwd, 200, out[0].target, now);
    assert_eq!(all(&mut r)[0].target, client, "the 200 over the TLS flow");

    // A SIPS INVITE for carol from an edge goes over her TLS connection.
    let invite = |ruri: &str, call: &str| {
        format!(
            "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.1:5060;branch=z9hG4bK{call}\r\n\
Route: {path}\r\nMax-Forwards: 69\r\nFrom: <sip:alice@example.com>;tag=a1\r\n\
To: <sips:carol@example.com>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let from_edge = udp("10.0.1.1:5060");
    r.handle_message(
        Side::Internal,
        SipMessage::parse(Bytes::from(invite(
            "sips:carol@203.0.113.9:5061",
            "tls-call",
        )))
        .unwrap(),
        from_edge,
        &TlsFlows(vec![78], "trunk.example.net"),
        now,
    );
    let out = all(&mut r);
    assert_eq!(out[0].target, client);
    assert!(
        String::from_utf8_lossy(parse(&out[0].bytes).top_via().unwrap().raw)
            .starts_with("SIP/2.0/TLS 198.51.100.7:5061;"),
        "our Via names the TLS side"
    );
    // Her connection is gone and she is not behind a NAT (her Via was her source): a
    // new connection, to her Contact, is TLS too.
    r.handle_message(
        Side::Internal,
        SipMessage::parse(Bytes::from(invite(
            "sips:carol@203.0.113.9:5061",
            "tls-call-2",
        )))
        .unwrap(),
        from_edge,
        &TlsFlows(vec![], ""),
        now,
    );
    let out = all(&mut r);
    assert_eq!(out[0].side, Side::Public);
    assert_eq!(
        out[0].target,
        Target {
            transport: Transport::Tls,
            addr: "203.0.113.9:5061".parse().unwrap(),
            flow: None,
        }
    );
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn sips_is_never_downgraded() {
    let now = Instant::now();
    let mut r = relay_with_tls();
    // A SIPS request that reached us in the clear: 416, not relayed.
    let sips = INVITE.replace("INVITE sip:bob@", "INVITE sips:bob@");
    for transport in [Transport::Udp, Transport::Tcp] {
        let from = Target {
            transport,
            addr: "203.0.113.5:40000".parse().unwrap(),
            flow: (transport == Transport::Tcp).then_some(FlowId(5)),
        };
        let out = client_sends(&mut r, &sips, from, now);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].side,
            Side::Public,
            "{transport:?}: answered, not relayed"
        );
        assert_eq!(parse(&out[0].bytes).status(), Some(416));
    }
    // Over TLS it goes on.
    let tls = Target {
        transport: Transport::Tls,
        addr: "203.0.113.5:40001".parse().unwrap(),
        flow: Some(FlowId(6)),
    };
    let out = client_sends(&mut r, &sips, tls, now);
    assert_eq!(out[0].side, Side::Internal);

    // A SIPS request from an edge for a client on TCP: 480, never sent in the clear.
    let reg = "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/TCP 192.168.1.30:5060;branch=z9hG4bKreg2\r\n\
Max-Forwards: 70\r\nFrom: <sip:dave@example.com>;tag=d1\r\nTo: <sip:dave@example.com>\r\n\
Call-ID: reg-2\r\nCSeq: 1 REGISTER\r\nContact: <sip:dave@192.168.1.30:5060;transport=tcp>\r\n\
Content-Length: 0\r\n\r\n";
    let tcp = Target {
        transport: Transport::Tcp,
        addr: "203.0.113.9:50002".parse().unwrap(),
        flow: Some(FlowId(79)),
    };
    let out = client_sends(&mut r, reg, tcp, now);
    let path = std::str::from_utf8(
        parse(&out[0].bytes)
            .header(sip_core::HeaderName::Path)
            .unwrap(),
    )
    .unwrap()
    .to_owned();
    let invite = format!(
        "INVITE sips:dave@192.168.1.30:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.1:5060;branch=z9hG4bKsipsdave\r\n\
Route: {path}\r\nMax-Forwards: 69\r\nFrom: <sip:alice@example.com>;tag=a1\r\n\
To: <sips:dave@example.com>\r\nCall-ID: sips-dave\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    r.handle_message(
        Side::Internal,
        SipMessage::parse(Bytes::from(invite)).unwrap(),
        udp("10.0.1.1:5060"),
        &Flows(vec![79]),
        now,
    );
    let out = all(&mut r);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].side, Side::Internal, "answered to the edge");
    assert_eq!(parse(&out[0].bytes).status(), Some(480));
}

#[test]
fn a_browser_on_a_websocket_is_reached_over_it_and_only_over_it() {
    let now = Instant::now();
    let mut r = relay_cfg(|c| {
        c.public.ws = Some(8080);
        c.public.wss = Some(8443);
    });
    with_edges(&mut r, 1, now);
    let reg = "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKws1\r\n\
Max-Forwards: 70\r\nFrom: <sip:erin@example.com>;tag=e1\r\nTo: <sip:erin@example.com>\r\n\
Call-ID: reg-ws\r\nCSeq: 1 REGISTER\r\nContact: <sip:erin@df7jal23ls0d.invalid;transport=ws>\r\n\
Content-Length: 0\r\n\r\n";
    let browser = Target {
        transport: Transport::Wss,
        addr: "203.0.113.9:50003".parse().unwrap(),
        flow: Some(FlowId(80)),
    };
    let out = client_sends(&mut r, reg, browser, now);
    let fwd = parse(&out[0].bytes);
    let path = std::str::from_utf8(fwd.header(sip_core::HeaderName::Path).unwrap())
        .unwrap()
        .to_owned();
    assert!(path.contains(":8443;transport=wss;lr>"), "{path}");
    let invite = format!(
        "INVITE sip:erin@df7jal23ls0d.invalid;transport=ws SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.1.1:5060;branch=z9hG4bKtoerin\r\nRoute: {path}\r\nMax-Forwards: 69\r\n\
From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:erin@example.com>\r\nCall-ID: call-ws\r\n\
CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    let send = |r: &mut Relay, alive: Vec<u64>| {
        r.handle_message(
            Side::Internal,
            SipMessage::parse(Bytes::from(invite.clone())).unwrap(),
            udp("10.0.1.1:5060"),
            &Flows(alive),
            now,
        );
        all(r)
    };
    let out = send(&mut r, vec![80]);
    assert_eq!(out[0].target, browser, "over the browser's own connection");
    assert!(
        String::from_utf8_lossy(parse(&out[0].bytes).top_via().unwrap().raw)
            .starts_with("SIP/2.0/WSS 198.51.100.7:8443;")
    );
    // Gone: nothing listens on a browser's side; 430 (RFC 5626 §5.3), no connection.
    let out = send(&mut r, vec![]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].side, Side::Internal);
    assert_eq!(parse(&out[0].bytes).status(), Some(430));
}

fn values(m: &SipMessage, name: sip_core::HeaderName) -> Vec<String> {
    m.header_values(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[test]
fn topology_hiding_keeps_every_internal_address_inside_and_restores_it_on_the_way_back() {
    use sip_core::HeaderName::{RecordRoute, Route, Via};
    let now = Instant::now();
    let mut r = relay_cfg(|c| c.topology_hiding = true);
    with_edges(&mut r, 1, now);
    let edge_addr = udp("10.0.1.1:5060");
    let flows = Flows(vec![]);
    let leaks = |b: &Bytes| {
        let t = String::from_utf8_lossy(b);
        assert!(
            !t.contains("10.0."),
            "an internal address reached a client:\n{t}"
        );
    };

    // carol registers (over UDP, not behind a NAT): her Path names her at our public side.
    let reg = "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bKcr1\r\n\
Max-Forwards: 70\r\nFrom: <sip:carol@example.com>;tag=c1\r\nTo: <sip:carol@example.com>\r\n\
Call-ID: reg-carol\r\nCSeq: 1 REGISTER\r\nContact: <sip:carol@203.0.113.9:5060>\r\nContent-Length: 0\r\n\r\n";
    let out = client_sends(&mut r, reg, udp("203.0.113.9:5060"), now);
    let path = values(&parse(&out[0].bytes), sip_core::HeaderName::Path)[0].clone();

    // alice calls: her INVITE reaches the edge with our Via and Record-Route.
    let out = client_sends(&mut r, INVITE, udp("192.0.2.10:5060"), now);
    let at_edge = parse(&out[0].bytes);
    let caller_rr = values(&at_edge, RecordRoute)[0].clone();
    // The edge sends it on to carol through us: its Via and Record-Route on top.
    let mut fwd = String::from(
        "INVITE sip:carol@203.0.113.9:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.1.1:5060;branch=z9hG4bKedge1\r\n",
    );
    for v in values(&at_edge, Via) {
        fwd += &format!("Via: {v}\r\n");
    }
    fwd += &format!(
        "Route: {path}\r\nRecord-Route: <sip:10.0.1.1:5060;lr>\r\nRecord-Route: {caller_rr}\r\n\
Max-Forwards: 68\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\n\
Call-ID: call-1@192.168.1.20\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@192.168.1.20:5060>\r\nContent-Length: 0\r\n\r\n"
    );
    r.handle_message(
        Side::Internal,
        parse(&Bytes::from(fwd)),
        edge_addr,
        &flows,
        now,
    );
    let out = all(&mut r);
    assert_eq!(out[0].target, udp("203.0.113.9:5060"));
    leaks(&out[0].bytes);
    let to_carol = parse(&out[0].bytes);
    let vias = values(&to_carol, Via);
    let rrs = values(&to_carol, RecordRoute);
    assert_eq!((vias.len(), rrs.len()), (1, 1), "{vias:?} {rrs:?}");
    assert!(vias[0].contains(";sth=") && rrs[0].contains(";sth="));

    // carol answers: the Vias and Record-Routes are back for the edge, in order.
    let mut ok = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nRecord-Route: {}\r\n",
        vias[0], rrs[0]
    );
    ok += "From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=c9\r\n\
Call-ID: call-1@192.168.1.20\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@203.0.113.9:5060>\r\nContent-Length: 0\r\n\r\n";
    r.handle_message(
        Side::Public,
        parse(&Bytes::from(ok)),
        udp("203.0.113.9:5060"),
        &flows,
        now,
    );
    let out = all(&mut r);
    assert_eq!(out[0].target, edge_addr);
    let at_edge = parse(&out[0].bytes);
    let restored_vias = values(&at_edge, Via);
    assert_eq!(restored_vias.len(), 3, "{restored_vias:?}");
    assert!(restored_vias[0].starts_with("SIP/2.0/UDP 10.0.1.1:5060;branch=z9hG4bKedge1"));
    let restored_rr = values(&at_edge, RecordRoute);
    assert_eq!(restored_rr.len(), 3, "{restored_rr:?}");
    assert!(!restored_rr[0].contains("sth="));
    assert_eq!(restored_rr[1], "<sip:10.0.1.1:5060;lr>");
    assert_eq!(restored_rr[2], caller_rr);

    // The edge relays it back to alice through us: her route set names only us.
    let mut back = String::from("SIP/2.0 200 OK\r\n");
    for v in &restored_vias[1..] {
        back += &format!("Via: {v}\r\n");
    }
    for rr in &restored_rr {
        back += &format!("Record-Route: {rr}\r\n");
    }
    back += "From: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>;tag=c9\r\n\
Call-ID: call-1@192.168.1.20\r\nCSeq: 1 INVITE\r\nContact: <sip:carol@203.0.113.9:5060>\r\nContent-Length: 0\r\n\r\n";
    r.handle_message(
        Side::Internal,
        parse(&Bytes::from(back)),
        edge_addr,
        &flows,
        now,
    );
    let out = all(&mut r);
    assert_eq!(out[0].target, udp("192.0.2.10:5060"));
    leaks(&out[0].bytes);
    let at_alice = values(&parse(&out[0].bytes), RecordRoute);
    assert_eq!(at_alice.len(), 1, "{at_alice:?}");
    assert!(
        at_alice[0].starts_with(&caller_rr[..caller_rr.len() - 1]) && at_alice[0].contains(";sth=")
    );

    // In-dialog requests through us get the route set back: carol's (RR order) ...
    let bye = |route: &str, from: &str, to: &str, branch: &str, via: &str| {
        format!(
            "BYE sip:x@198.51.100.7 SIP/2.0\r\nVia: {via};branch={branch}\r\nRoute: {route}\r\n\
Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: call-1@192.168.1.20\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let b = bye(
        &rrs[0],
        "<sip:bob@example.com>;tag=c9",
        "<sip:alice@example.com>;tag=a1",
        "z9hG4bKbye1",
        "SIP/2.0/UDP 203.0.113.9:5060",
    );
    let out = client_sends(&mut r, &b, udp("203.0.113.9:5060"), now);
    assert_eq!(out[0].side, Side::Internal);
    assert_eq!(
        values(&parse(&out[0].bytes), Route),
        ["<sip:10.0.1.1:5060;lr>".to_owned(), caller_rr.clone()]
    );
    // ... and alice's (her Record-Routes reversed: the edge, then carol's side).
    let b = bye(
        &at_alice[0],
        "<sip:alice@example.com>;tag=a1",
        "<sip:bob@example.com>;tag=c9",
        "z9hG4bKbye2",
        "SIP/2.0/UDP 192.168.1.20:5060",
    );
    let out = client_sends(&mut r, &b, udp("192.0.2.10:5060"), now);
    let routes = values(&parse(&out[0].bytes), Route);
    assert_eq!(routes.len(), 2, "{routes:?}");
    assert_eq!(routes[0], "<sip:10.0.1.1:5060;lr>");
    assert!(routes[1].starts_with("<sip:scd-") && !routes[1].contains("sth="));
    // A sealed value changed by the client: nothing is relayed.
    let forged = at_alice[0].replacen(";sth=", ";sth=A", 1);
    let b = bye(
        &forged,
        "<sip:alice@example.com>;tag=a1",
        "<sip:bob@example.com>;tag=c9",
        "z9hG4bKbye3",
        "SIP/2.0/UDP 192.168.1.20:5060",
    );
    assert!(client_sends(&mut r, &b, udp("192.0.2.10:5060"), now).is_empty());
}

//! The four transaction state machines driven with a virtual clock: every timer, every
//! retransmission rule and every matching rule of RFC 3261 §17 (with RFC 6026), no sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::{Method, ResponseBuilder, SipMessage};
use sip_txn::{
    ClientState, Event, FlowId, ServerState, Target, TimerConfig, TransactionLayer, Transport,
    TxnRef,
};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const T4: Duration = Duration::from_secs(5);

fn udp(port: u16) -> Target {
    Target {
        transport: Transport::Udp,
        addr: SocketAddr::from(([192, 0, 2, 1], port)),
        flow: None,
    }
}

fn tcp(port: u16) -> Target {
    Target {
        transport: Transport::Tcp,
        addr: SocketAddr::from(([192, 0, 2, 1], port)),
        flow: Some(FlowId(7)),
    }
}

fn request(method: &str, branch: &str) -> SipMessage {
    let cseq_method = if method == "ACK" { "INVITE" } else { method };
    let cseq_method = if method == "CANCEL" {
        "CANCEL"
    } else {
        cseq_method
    };
    let m = format!(
        "{method} sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=a1\r\nTo: <sip:bob@example.com>\r\nCall-ID: call-1@192.0.2.1\r\nCSeq: 1 {}\r\nContent-Length: 0\r\n\r\n",
        if method == "ACK" { "ACK" } else { cseq_method }
    );
    SipMessage::parse(m.into_bytes()).unwrap()
}

fn response_to(req: &SipMessage, code: u16) -> (Bytes, SipMessage) {
    let b = ResponseBuilder::new(req, code)
        .unwrap()
        .to_tag("b1")
        .build();
    (b.clone(), SipMessage::parse(b).unwrap())
}

fn drain_events(l: &mut TransactionLayer) -> Vec<Event> {
    std::iter::from_fn(|| l.poll_event()).collect()
}

fn drain_tx(l: &mut TransactionLayer) -> Vec<Bytes> {
    std::iter::from_fn(|| l.poll_transmit())
        .map(|t| t.bytes)
        .collect()
}

/// Advance the virtual clock to `to`, firing timers at their exact deadlines; returns the
/// instants at which something was transmitted.
fn run_until(l: &mut TransactionLayer, now: &mut Instant, to: Instant) -> Vec<Duration> {
    let start = *now;
    let mut sent = vec![];
    while let Some(at) = l.poll_timeout() {
        if at > to {
            break;
        }
        *now = at.max(*now);
        l.handle_timeout(*now);
        for _ in std::iter::from_fn(|| l.poll_transmit()) {
            sent.push(*now - start);
        }
    }
    *now = to;
    sent
}

fn advance(l: &mut TransactionLayer, now: &mut Instant, by: Duration) -> Vec<Duration> {
    let to = *now + by;
    run_until(l, now, to)
}

// ------------------------------------------------------------------ client non-INVITE

#[test]
fn client_non_invite_timer_e_doubles_to_t2_then_f_times_out() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let t0 = Instant::now();
    let mut now = t0;
    let txn = l
        .request(now, request("OPTIONS", "z9hG4bKc1"), udp(5060))
        .unwrap();
    assert_eq!(drain_tx(&mut l).len(), 1, "sent at once");
    let sent = run_until(&mut l, &mut now, t0 + T1 * 64);
    // E: 0.5, 1.5, 3.5, 7.5, then every T2, until F at 32 s.
    let expect: Vec<Duration> = [
        500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500,
    ]
    .iter()
    .map(|&ms| Duration::from_millis(ms))
    .collect();
    assert_eq!(sent, expect);
    assert!(sent.windows(2).skip(3).all(|w| w[1] - w[0] == T2));
    let ev = drain_events(&mut l);
    assert!(
        matches!(ev.as_slice(), [Event::Timeout { txn: t }] if *t == txn),
        "{ev:?}"
    );
    assert_eq!(l.client_count(), 0);
}

#[test]
fn client_non_invite_provisional_then_final_then_k() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let t0 = Instant::now();
    let mut now = t0;
    let req = request("REGISTER", "z9hG4bKc2");
    let txn = l.request(now, req.clone(), udp(5060)).unwrap();
    drain_tx(&mut l);
    now += Duration::from_millis(100);
    let (_, trying) = response_to(&req, 100);
    l.handle_response(now, trying.clone(), udp(5060)).unwrap();
    assert_eq!(l.client_state(txn), Some(ClientState::Proceeding));
    // In Proceeding, E fires every T2 from the previously scheduled time.
    let sent = run_until(&mut l, &mut now, t0 + Duration::from_millis(9000));
    assert_eq!(
        sent,
        [
            Duration::from_millis(400),
            Duration::from_millis(4400),
            Duration::from_millis(8400)
        ]
    );
    let (_, ok) = response_to(&req, 200);
    l.handle_response(now, ok.clone(), udp(5060)).unwrap();
    l.handle_response(now, ok, udp(5060)).unwrap();
    let ev = drain_events(&mut l);
    assert_eq!(
        ev.len(),
        2,
        "100 and one 200: the retransmitted 200 is absorbed: {ev:?}"
    );
    assert!(matches!(&ev[1], Event::Response { msg, .. } if msg.status() == Some(200)));
    assert_eq!(l.client_state(txn), Some(ClientState::Completed));
    // Timer K = T4 on UDP.
    advance(&mut l, &mut now, T4 - Duration::from_millis(1));
    assert_eq!(l.client_state(txn), Some(ClientState::Completed));
    advance(&mut l, &mut now, Duration::from_millis(1));
    assert_eq!(l.client_state(txn), None);
    assert!(drain_events(&mut l).is_empty(), "K ends silently");
}

#[test]
fn client_over_tcp_never_retransmits_and_ends_at_once() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let mut now = Instant::now();
    let req = request("OPTIONS", "z9hG4bKc3");
    let txn = l.request(now, req.clone(), tcp(5060)).unwrap();
    assert_eq!(drain_tx(&mut l).len(), 1);
    let sent = advance(&mut l, &mut now, Duration::from_secs(10));
    assert!(sent.is_empty());
    let (_, ok) = response_to(&req, 200);
    l.handle_response(now, ok, tcp(5060)).unwrap();
    l.handle_timeout(now);
    assert_eq!(l.client_state(txn), None, "K = 0 on reliable transports");
}

// ---------------------------------------------------------------------- client INVITE

#[test]
fn client_invite_timer_a_doubles_and_b_times_out() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let t0 = Instant::now();
    let mut now = t0;
    let txn = l
        .request(now, request("INVITE", "z9hG4bKi1"), udp(5060))
        .unwrap();
    drain_tx(&mut l);
    let sent = run_until(&mut l, &mut now, t0 + T1 * 64);
    let expect: Vec<Duration> = [500u64, 1500, 3500, 7500, 15500, 31500]
        .iter()
        .map(|&ms| Duration::from_millis(ms))
        .collect();
    assert_eq!(sent, expect, "A: 1, 2, 4, 8, 16, 32 T1 apart, uncapped");
    assert!(matches!(drain_events(&mut l).as_slice(), [Event::Timeout { txn: t }] if *t == txn));
}

#[test]
fn client_invite_provisional_stops_a_and_b() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let mut now = Instant::now();
    let req = request("INVITE", "z9hG4bKi2");
    let txn = l.request(now, req.clone(), udp(5060)).unwrap();
    drain_tx(&mut l);
    let (_, ringing) = response_to(&req, 180);
    l.handle_response(now, ringing, udp(5060)).unwrap();
    let sent = advance(&mut l, &mut now, Duration::from_secs(120));
    assert!(sent.is_empty(), "no retransmission after a 1xx");
    assert_eq!(
        l.client_state(txn),
        Some(ClientState::Proceeding),
        "no Timer B in Proceeding"
    );
    assert_eq!(drain_events(&mut l).len(), 1);
}

#[test]
fn a_cancelled_invite_without_a_final_response_ends_64_t1_after_the_cancel() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let mut now = Instant::now();
    let req = request("INVITE", "z9hG4bKi3");
    let txn = l.request(now, req.clone(), udp(5060)).unwrap();
    drain_tx(&mut l);
    let (_, ringing) = response_to(&req, 180);
    l.handle_response(now, ringing, udp(5060)).unwrap();
    drain_events(&mut l);
    advance(&mut l, &mut now, Duration::from_secs(100));
    // RFC 3261 §9.1: the CANCEL went out; no final response follows.
    l.cancelled(now, txn);
    advance(&mut l, &mut now, Duration::from_millis(31_900));
    assert_eq!(l.client_state(txn), Some(ClientState::Proceeding));
    assert!(drain_events(&mut l).is_empty());
    advance(&mut l, &mut now, Duration::from_millis(200));
    assert_eq!(l.client_state(txn), None, "destroyed");
    assert!(matches!(
        drain_events(&mut l).as_slice(),
        [Event::Timeout { txn: t }] if *t == txn
    ));

    // Before any provisional response Timer B (already running) is what ends it.
    let req = request("INVITE", "z9hG4bKi4");
    let started = now;
    let txn = l.request(now, req, udp(5060)).unwrap();
    advance(&mut l, &mut now, Duration::from_secs(10));
    l.cancelled(now, txn);
    advance(&mut l, &mut now, Duration::from_millis(21_900));
    assert!(l.client_state(txn).is_some());
    advance(&mut l, &mut now, Duration::from_millis(200));
    assert_eq!(l.client_state(txn), None);
    assert_eq!(now - started, Duration::from_millis(32_100));
}

#[test]
fn client_invite_non_2xx_is_acked_hop_by_hop() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let mut now = Instant::now();
    let req = request("INVITE", "z9hG4bKi3");
    let txn = l.request(now, req.clone(), udp(5060)).unwrap();
    drain_tx(&mut l);
    let (_, busy) = response_to(&req, 486);
    l.handle_response(now, busy.clone(), udp(5060)).unwrap();
    let acks = drain_tx(&mut l);
    assert_eq!(acks.len(), 1);
    let ack = SipMessage::parse(acks[0].clone()).unwrap();
    assert_eq!(ack.method(), Some(Method::Ack));
    assert_eq!(
        ack.top_via().unwrap().branch,
        Some("z9hG4bKi3"),
        "same branch as the INVITE"
    );
    assert_eq!(ack.to_tag().unwrap(), Some("b1"), "To of the response");
    assert_eq!(ack.cseq().unwrap().seq, 1);
    // A retransmitted 486 gets the ACK again and does not reach the TU twice.
    l.handle_response(now, busy, udp(5060)).unwrap();
    assert_eq!(drain_tx(&mut l).len(), 1);
    assert_eq!(drain_events(&mut l).len(), 1);
    assert_eq!(l.client_state(txn), Some(ClientState::Completed));
    advance(&mut l, &mut now, Duration::from_secs(32));
    assert_eq!(l.client_state(txn), None, "Timer D");
}

#[test]
fn client_invite_accepted_passes_every_2xx() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let mut now = Instant::now();
    let req = request("INVITE", "z9hG4bKi4");
    let txn = l.request(now, req.clone(), udp(5060)).unwrap();
    drain_tx(&mut l);
    let (_, ok) = response_to(&req, 200);
    l.handle_response(now, ok.clone(), udp(5060)).unwrap();
    l.handle_response(now, ok, udp(5060)).unwrap();
    assert_eq!(
        drain_tx(&mut l).len(),
        0,
        "the 2xx ACK is end to end, not ours"
    );
    assert_eq!(
        drain_events(&mut l).len(),
        2,
        "RFC 6026: both 2xx reach the TU"
    );
    assert_eq!(l.client_state(txn), Some(ClientState::Accepted));
    advance(&mut l, &mut now, T1 * 64);
    assert_eq!(l.client_state(txn), None, "Timer M");
    assert!(drain_events(&mut l).is_empty());
}

// --------------------------------------------------------------------- server non-INVITE

#[test]
fn server_non_invite_absorbs_and_replays() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let mut now = Instant::now();
    let req = request("OPTIONS", "z9hG4bKs1");
    l.handle_request(now, req.clone(), udp(5070)).unwrap();
    let Some(Event::Request { txn: Some(txn), .. }) = l.poll_event() else {
        panic!()
    };
    // Retransmission while Trying: absorbed silently.
    l.handle_request(now, req.clone(), udp(5070)).unwrap();
    assert!(l.poll_event().is_none());
    assert!(l.poll_transmit().is_none());
    let (ok, _) = response_to(&req, 200);
    l.respond(now, txn, 200, ok.clone()).unwrap();
    let t = l.poll_transmit().unwrap();
    assert_eq!(t.target, udp(5070));
    assert_eq!(t.origin, TxnRef::Server(txn));
    // Retransmission while Completed: the final is sent again.
    l.handle_request(now, req.clone(), udp(5070)).unwrap();
    assert_eq!(drain_tx(&mut l), [ok]);
    assert!(
        l.respond(now, txn, 200, Bytes::new()).is_err(),
        "one final response only"
    );
    advance(&mut l, &mut now, T1 * 64);
    assert_eq!(l.server_state(txn), None, "Timer J");
    // After J the same request is a new transaction.
    l.handle_request(now, req, udp(5070)).unwrap();
    assert!(matches!(l.poll_event(), Some(Event::Request { txn: Some(t2), .. }) if t2 != txn));
}

#[test]
fn server_non_invite_over_tcp_ends_with_its_final() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let now = Instant::now();
    let req = request("REGISTER", "z9hG4bKs2");
    l.handle_request(now, req.clone(), tcp(5070)).unwrap();
    let Some(Event::Request { txn: Some(txn), .. }) = l.poll_event() else {
        panic!()
    };
    let (ok, _) = response_to(&req, 200);
    l.respond(now, txn, 200, ok).unwrap();
    assert_eq!(
        l.poll_transmit().unwrap().target.flow,
        Some(FlowId(7)),
        "back over the same connection"
    );
    l.handle_timeout(now);
    assert_eq!(l.server_state(txn), None);
}

// ------------------------------------------------------------------------ server INVITE

#[test]
fn server_invite_failure_retransmits_with_g_until_ack() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let t0 = Instant::now();
    let mut now = t0;
    let inv = request("INVITE", "z9hG4bKs3");
    l.handle_request(now, inv.clone(), udp(5070)).unwrap();
    let Some(Event::Request { txn: Some(txn), .. }) = l.poll_event() else {
        panic!()
    };
    let (ringing, _) = response_to(&inv, 180);
    l.respond(now, txn, 180, ringing.clone()).unwrap();
    drain_tx(&mut l);
    l.handle_request(now, inv.clone(), udp(5070)).unwrap();
    assert_eq!(
        drain_tx(&mut l),
        [ringing],
        "a retransmitted INVITE gets the last 1xx"
    );
    let (busy, _) = response_to(&inv, 486);
    l.respond(now, txn, 486, busy).unwrap();
    drain_tx(&mut l);
    let sent = run_until(&mut l, &mut now, t0 + Duration::from_millis(8000));
    // G: T1, 2T1, 4T1 then capped at T2.
    assert_eq!(sent, [500u64, 1500, 3500, 7500].map(Duration::from_millis));
    let ack = request("ACK", "z9hG4bKs3");
    l.handle_request(now, ack.clone(), udp(5070)).unwrap();
    assert!(
        l.poll_event().is_none(),
        "the ACK for a non-2xx is absorbed"
    );
    assert_eq!(l.server_state(txn), Some(ServerState::Confirmed));
    let sent = advance(&mut l, &mut now, Duration::from_secs(10));
    assert!(sent.is_empty(), "no retransmission once confirmed");
    assert_eq!(l.server_state(txn), None, "Timer I");
}

#[test]
fn server_invite_without_ack_fails_at_h() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let mut now = Instant::now();
    let inv = request("INVITE", "z9hG4bKs4");
    l.handle_request(now, inv.clone(), udp(5070)).unwrap();
    let Some(Event::Request { txn: Some(txn), .. }) = l.poll_event() else {
        panic!()
    };
    let (nf, _) = response_to(&inv, 404);
    l.respond(now, txn, 404, nf).unwrap();
    advance(&mut l, &mut now, T1 * 64);
    assert!(
        matches!(drain_events(&mut l).as_slice(), [Event::ServerFailed { txn: t }] if *t == txn)
    );
}

#[test]
fn server_invite_2xx_goes_accepted_and_passes_acks() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let mut now = Instant::now();
    let inv = request("INVITE", "z9hG4bKs5");
    l.handle_request(now, inv.clone(), udp(5070)).unwrap();
    let Some(Event::Request { txn: Some(txn), .. }) = l.poll_event() else {
        panic!()
    };
    let (ok, _) = response_to(&inv, 200);
    l.respond(now, txn, 200, ok.clone()).unwrap();
    assert_eq!(l.server_state(txn), Some(ServerState::Accepted));
    // Forked/retransmitted 2xx from downstream keep flowing upstream.
    l.respond(now, txn, 200, ok).unwrap();
    assert_eq!(drain_tx(&mut l).len(), 2);
    // INVITE retransmissions are absorbed (the UAS core retransmits its 2xx).
    l.handle_request(now, inv, udp(5070)).unwrap();
    assert!(l.poll_transmit().is_none() && l.poll_event().is_none());
    let ack = request("ACK", "z9hG4bKs5");
    l.handle_request(now, ack, udp(5070)).unwrap();
    assert!(
        matches!(l.poll_event(), Some(Event::Request { txn: None, .. })),
        "ACK to the TU"
    );
    advance(&mut l, &mut now, T1 * 64);
    assert_eq!(l.server_state(txn), None, "Timer L");
}

// ------------------------------------------------------------------------------ matching

#[test]
fn acks_cancels_and_strays() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let now = Instant::now();
    // An ACK matching nothing is end to end: passed on without a transaction.
    l.handle_request(now, request("ACK", "z9hG4bKnew"), udp(5070))
        .unwrap();
    assert!(matches!(
        l.poll_event(),
        Some(Event::Request { txn: None, .. })
    ));
    assert_eq!(l.server_count(), 0);
    // CANCEL has its own transaction and finds its INVITE.
    let inv = request("INVITE", "z9hG4bKm1");
    l.handle_request(now, inv, udp(5070)).unwrap();
    let Some(Event::Request { txn: Some(itx), .. }) = l.poll_event() else {
        panic!()
    };
    let cancel = request("CANCEL", "z9hG4bKm1");
    l.handle_request(now, cancel.clone(), udp(5070)).unwrap();
    let Some(Event::Request { txn: Some(ctx), .. }) = l.poll_event() else {
        panic!()
    };
    assert_ne!(itx, ctx);
    assert_eq!(l.find_cancelled(&cancel), Some(itx));
    assert_eq!(l.find_cancelled(&request("CANCEL", "z9hG4bKother")), None);
    // A response for no client transaction is stray; a CANCEL's 200 does not reach the
    // INVITE client transaction with the same branch.
    let out = request("INVITE", "z9hG4bKout");
    let itxn = l.request(now, out.clone(), udp(5060)).unwrap();
    let cancel_out = request("CANCEL", "z9hG4bKout");
    let (_, cancel_ok) = response_to(&cancel_out, 200);
    l.handle_response(now, cancel_ok, udp(5060)).unwrap();
    assert!(matches!(l.poll_event(), Some(Event::StrayResponse { .. })));
    assert_eq!(l.client_state(itxn), Some(ClientState::Calling));
    assert!(l.request(now, out, udp(5060)).is_err(), "duplicate branch");
}

#[test]
fn rfc2543_requests_match_without_branch() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let now = Instant::now();
    let old = |m: &str| {
        let s = String::from_utf8(request(m, "x").as_bytes().to_vec())
            .unwrap()
            .replace(";branch=x", "");
        SipMessage::parse(s.into_bytes()).unwrap()
    };
    l.handle_request(now, old("INVITE"), udp(5070)).unwrap();
    let Some(Event::Request { txn: Some(txn), .. }) = l.poll_event() else {
        panic!()
    };
    l.handle_request(now, old("INVITE"), udp(5070)).unwrap();
    assert!(
        l.poll_event().is_none(),
        "retransmission recognised by the RFC 2543 key"
    );
    let (nf, _) = response_to(&old("INVITE"), 404);
    l.respond(now, txn, 404, nf).unwrap();
    l.handle_request(now, old("ACK"), udp(5070)).unwrap();
    assert_eq!(l.server_state(txn), Some(ServerState::Confirmed));
}

#[test]
fn transport_errors_surface() {
    let mut l = TransactionLayer::new(TimerConfig::default());
    let now = Instant::now();
    let txn = l
        .request(now, request("INVITE", "z9hG4bKe1"), tcp(5060))
        .unwrap();
    let t = l.poll_transmit().unwrap();
    l.transport_error(now, t.origin);
    assert!(matches!(l.poll_event(), Some(Event::TransportError { txn: x }) if x == txn));
    assert_eq!(l.client_count(), 0);
    let req = request("OPTIONS", "z9hG4bKe2");
    l.handle_request(now, req.clone(), tcp(5070)).unwrap();
    let Some(Event::Request { txn: Some(stx), .. }) = l.poll_event() else {
        panic!()
    };
    let (ok, _) = response_to(&req, 200);
    l.respond(now, stx, 200, ok).unwrap();
    let t = l.poll_transmit().unwrap();
    l.transport_error(now, t.origin);
    assert!(matches!(
        l.poll_event(),
        Some(Event::ServerFailed { .. }) | None
    ));
}

#[test]
fn custom_timers_scale_everything() {
    let cfg = TimerConfig {
        t1: Duration::from_millis(100),
        t2: Duration::from_millis(400),
        t4: Duration::from_secs(1),
        timer_d: Duration::from_secs(2),
    };
    let mut l = TransactionLayer::new(cfg);
    let t0 = Instant::now();
    let mut now = t0;
    l.request(now, request("OPTIONS", "z9hG4bKt1"), udp(5060))
        .unwrap();
    drain_tx(&mut l);
    let sent = run_until(&mut l, &mut now, t0 + Duration::from_millis(6400));
    // E: 0.1, 0.3, 0.7 (interval capped at T2 = 0.4 s from there), then every 0.4 s to 6.3;
    // F at 64 * T1 = 6.4 s.
    let mut expect = vec![Duration::from_millis(100), Duration::from_millis(300)];
    expect.extend((0..15).map(|i| Duration::from_millis(700 + 400 * i)));
    assert_eq!(sent, expect);
    assert!(matches!(
        drain_events(&mut l).as_slice(),
        [Event::Timeout { .. }]
    ));
}

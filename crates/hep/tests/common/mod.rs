//! What the HEP integration tests share: one call's messages, free loopback ports, and
//! waiting on a counter.
#![allow(dead_code)] // each test file uses some of these

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_txn::Transport;

/// The caller's side of the test call.
pub const A: &str = "127.0.0.1:5060";
/// The callee's side.
pub const B: &str = "127.0.0.2:5070";

/// One SIP message of a call, as a transport would hand it to the sink.
#[derive(Debug, Clone)]
pub struct Message {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// The request method, or "" for a response.
    pub method: &'static str,
    /// The status code, or 0 for a request.
    pub status: u16,
    pub text: String,
}

/// A free port on `ip` for `kind` ("udp" or "tcp"): bound to port 0, then released.
pub fn free_port(ip: &str, kind: &str) -> u16 {
    let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
    match kind {
        "udp" => std::net::UdpSocket::bind(addr)
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
        _ => std::net::TcpListener::bind(addr)
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    }
}

/// A Call-ID no other run shares.
pub fn unique_call_id(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{}-{nanos}@127.0.0.1", std::process::id())
}

fn request(method: &'static str, cseq: u32, call_id: &str, branch: &str) -> String {
    let body = if method == "INVITE" { SDP } else { "" };
    let ctype = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "{method} sip:bob@127.0.0.2:5070 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@127.0.0.1>;tag=a1\r\n\
         To: <sip:bob@127.0.0.2>{to_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:alice@127.0.0.1:5060>\r\n\
         {ctype}Content-Length: {len}\r\n\r\n{body}",
        to_tag = if method == "INVITE" { "" } else { ";tag=b1" },
        len = body.len(),
    )
}

fn response(
    code: u16,
    reason: &str,
    method: &str,
    cseq: u32,
    call_id: &str,
    branch: &str,
) -> String {
    format!(
        "SIP/2.0 {code} {reason}\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK{branch}\r\n\
         From: <sip:alice@127.0.0.1>;tag=a1\r\n\
         To: <sip:bob@127.0.0.2>{to_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n",
        to_tag = if code == 100 { "" } else { ";tag=b1" },
    )
}

const SDP: &str = "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";

/// INVITE / 100 / 180 / 200 / ACK / BYE / 200 between [`A`] and [`B`], in order.
pub fn call(call_id: &str) -> Vec<Message> {
    let (a, b): (SocketAddr, SocketAddr) = (A.parse().unwrap(), B.parse().unwrap());
    let req = |method, cseq, branch: &str| Message {
        src: a,
        dst: b,
        method,
        status: 0,
        text: request(method, cseq, call_id, branch),
    };
    let resp = |code, reason: &str, method: &str, cseq, branch: &str| Message {
        src: b,
        dst: a,
        method: "",
        status: code,
        text: response(code, reason, method, cseq, call_id, branch),
    };
    vec![
        req("INVITE", 1, "inv1"),
        resp(100, "Trying", "INVITE", 1, "inv1"),
        resp(180, "Ringing", "INVITE", 1, "inv1"),
        resp(200, "OK", "INVITE", 1, "inv1"),
        req("ACK", 1, "ack1"),
        req("BYE", 2, "bye1"),
        resp(200, "OK", "BYE", 2, "bye1"),
    ]
}

/// Export `messages` through `sink` over UDP.
pub fn export(sink: &hep::HepSink, call_id: &str, messages: &[Message]) {
    for m in messages {
        sink.capture(m.src, m.dst, Transport::Udp, m.text.as_bytes(), call_id);
    }
}

/// Wait until `done` holds, polling; panics with `what` after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

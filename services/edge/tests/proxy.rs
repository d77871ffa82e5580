//! The proxy's routing behaviour, end to end over loopback UDP against an in-process edge
//! (authentication off, fast timers): parallel and q-ordered sequential forking, 2xx and
//! 6xx ending the other branches, 408 when nobody answers, Record-Route and in-dialog
//! requests by Route, strict-routing compatibility both ways, Path, and NATed contacts.
//!
//! The phones here are deliberately tiny UAs built from raw text so the test sees exactly
//! the bytes the proxy produced.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use edge::EdgeConfig;
use sip_registrar::{LocationStore, MemoryStore, Policy};
use tokio::net::UdpSocket;
use tokio::time::timeout;

struct Edge {
    handle: edge::EdgeHandle,
    addr: SocketAddr,
    store: std::sync::Arc<MemoryStore>,
}

/// The cluster secret: tests forge what only a holder of it could (dialog tokens).
const SECRET: &str = "proxy-test-secret-0123456789";

/// The `;dlg=` parameter our Record-Route gives the dialog `call_id` whose caller's tag
/// is `tag`.
fn dlg(call_id: &str, tag: &str) -> String {
    format!(
        ";dlg={}",
        dispatch_core::TokenKey::new(SECRET.as_bytes()).dialog_token(call_id, tag)
    )
}

/// The same for a dialog an authenticated or trusted sender set up (its in-dialog
/// requests may go anywhere).
fn dlg_proven(call_id: &str, tag: &str) -> String {
    format!(
        ";dlg={}",
        dispatch_core::TokenKey::new(SECRET.as_bytes()).dialog_token_for(call_id, tag, true)
    )
}

async fn start_edge() -> Edge {
    start_edge_with_tcp(false).await
}

async fn start_edge_with_tcp(tcp: bool) -> Edge {
    let mut cfg = EdgeConfig::default();
    cfg.sip.udp = vec!["127.0.0.1:0".parse().expect("address")];
    cfg.sip.tcp = if tcp {
        vec!["127.0.0.1:0".parse().expect("address")]
    } else {
        vec![]
    };
    cfg.sip.domains = vec!["sipcluster.local".into()];
    cfg.auth.nonce_secret = Some(SECRET.into());
    cfg.auth.register = false;
    cfg.auth.invite = false;
    cfg.metrics.listen = None;
    // T1 = 50 ms: Timer B (64·T1) fires after 3.2 s instead of 32 s.
    cfg.timers.t1_ms = 50;
    cfg.timers.t2_ms = 400;
    cfg.timers.t4_ms = 500;
    let store = std::sync::Arc::new(MemoryStore::new(Policy::default()));
    let users = std::sync::Arc::new(edge::load_users(&cfg).expect("demo users"));
    let handle = edge::start_with(
        cfg,
        edge::shared::Stores {
            users,
            store: store.clone(),
            nonce_uses: std::sync::Arc::new(sip_auth::MemoryNonceUses::default()),
            dialogs: std::sync::Arc::new(edge::dialogs::MemoryDialogs::default()),
            limits: std::sync::Arc::new(edge::limit::MemoryLimits::default()),
            bans: None,
            blocklist: None,
        },
        accounting::Destination::Off,
    )
    .await
    .expect("edge starts");
    let addr = handle.udp[0];
    Edge {
        handle,
        addr,
        store,
    }
}

/// A received SIP message as text with a few accessors.
#[derive(Clone, Debug)]
struct Msg(String);

impl Msg {
    fn first_line(&self) -> &str {
        self.0.lines().next().unwrap_or_default()
    }
    fn status(&self) -> u16 {
        self.first_line()
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
    fn method(&self) -> &str {
        self.first_line().split(' ').next().unwrap_or_default()
    }
    fn request_uri(&self) -> &str {
        self.first_line().split(' ').nth(1).unwrap_or_default()
    }
    fn headers(&self, name: &str) -> Vec<&str> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.0
            .split("\r\n")
            .take_while(|l| !l.is_empty())
            .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].trim())
            .collect()
    }
    fn header(&self, name: &str) -> &str {
        self.headers(name).first().copied().unwrap_or_default()
    }
}

struct Phone {
    sock: UdpSocket,
    edge: SocketAddr,
}

impl Phone {
    async fn new(edge: SocketAddr) -> Phone {
        Phone {
            sock: UdpSocket::bind("127.0.0.1:0").await.expect("bind"),
            edge,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().expect("address")
    }

    async fn send(&self, text: &str) {
        self.sock
            .send_to(text.as_bytes(), self.edge)
            .await
            .expect("send");
    }

    /// The next message, skipping retransmissions of what `skip` says; panics after 5 s.
    async fn recv_where(&self, what: &str, pred: impl Fn(&Msg) -> bool) -> Msg {
        let mut buf = vec![0u8; 65536];
        let r = timeout(Duration::from_secs(5), async {
            loop {
                let (n, _) = self.sock.recv_from(&mut buf).await.expect("recv");
                let m = Msg(String::from_utf8_lossy(&buf[..n]).into_owned());
                if pred(&m) {
                    return m;
                }
            }
        })
        .await;
        r.unwrap_or_else(|_| panic!("{} waited 5 s for {what}", self.addr()))
    }

    async fn request(&self, method: &str) -> Msg {
        self.recv_where(method, |m| m.method() == method).await
    }

    async fn final_response(&self) -> Msg {
        self.recv_where("a final response", |m| {
            m.first_line().starts_with("SIP/2.0 ") && m.status() >= 200
        })
        .await
    }

    async fn response(&self, code: u16) -> Msg {
        self.recv_where(&format!("a {code}"), |m| {
            m.first_line().starts_with("SIP/2.0 ") && m.status() == code
        })
        .await
    }

    /// Nothing arrives for `ms` (other than what `ignore` accepts).
    async fn silent(&self, ms: u64, ignore: impl Fn(&Msg) -> bool) {
        let mut buf = vec![0u8; 65536];
        let end = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            match tokio::time::timeout_at(end, self.sock.recv_from(&mut buf)).await {
                Err(_) => return,
                Ok(Ok((n, _))) => {
                    let m = Msg(String::from_utf8_lossy(&buf[..n]).into_owned());
                    assert!(
                        ignore(&m),
                        "{} expected silence, got:\n{}",
                        self.addr(),
                        m.0
                    );
                }
                Ok(Err(e)) => panic!("recv: {e}"),
            }
        }
    }

    /// Answer `req` with `code` (To-tag `tag`; Contact and Record-Route on 18x/2xx).
    async fn reply(&self, req: &Msg, code: u16, tag: &str) {
        let mut r = format!("SIP/2.0 {code} Whatever\r\n");
        for v in req.headers("via") {
            r.push_str(&format!("Via: {v}\r\n"));
        }
        r.push_str(&format!("From: {}\r\n", req.header("from")));
        let to = req.header("to");
        if to.contains("tag=") || code == 100 {
            r.push_str(&format!("To: {to}\r\n"));
        } else {
            r.push_str(&format!("To: {to};tag={tag}\r\n"));
        }
        r.push_str(&format!(
            "Call-ID: {}\r\nCSeq: {}\r\n",
            req.header("call-id"),
            req.header("cseq")
        ));
        if (101..300).contains(&code) && req.method() == "INVITE" {
            for rr in req.headers("record-route") {
                r.push_str(&format!("Record-Route: {rr}\r\n"));
            }
            r.push_str(&format!("Contact: <sip:phone@{}>\r\n", self.addr()));
        }
        r.push_str("Content-Length: 0\r\n\r\n");
        self.send(&r).await;
    }
}

/// Register `phone` for `user` with the given Contact parameters (auth is off).
async fn register(edge: &Edge, phone: &Phone, user: &str, contact: &str, extra: &str) {
    let a = phone.addr();
    let msg = format!(
        "REGISTER sip:sipcluster.local SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKreg{p}\r\nMax-Forwards: 70\r\n\
         From: <sip:{user}@sipcluster.local>;tag=r{p}\r\nTo: <sip:{user}@sipcluster.local>\r\nCall-ID: reg-{p}\r\n\
         CSeq: 1 REGISTER\r\nContact: {contact}\r\n{extra}Expires: 300\r\nContent-Length: 0\r\n\r\n",
        p = a.port()
    );
    phone.send(&msg).await;
    let r = phone.final_response().await;
    assert_eq!(r.status(), 200, "REGISTER: {}", r.0);
    let _ = edge;
}

fn invite(caller: &Phone, ruri: &str, call: &str) -> String {
    let a = caller.addr();
    format!(
        "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{call}\r\nMax-Forwards: 70\r\n\
         From: <sip:zoe@elsewhere.test>;tag=c{call}\r\nTo: <{ruri}>\r\nCall-ID: {call}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:carol@{a}>\r\nContent-Length: 0\r\n\r\n"
    )
}

/// An ACK or BYE in the dialog a 2xx established: Route set = the 2xx's Record-Route
/// (reversed: we are the caller), Request-URI = its Contact.
fn in_dialog(caller: &Phone, ok: &Msg, method: &str, cseq: u32, branch: &str) -> String {
    let a = caller.addr();
    let contact = ok
        .header("contact")
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned();
    let mut routes: Vec<&str> = ok
        .headers("record-route")
        .into_iter()
        .flat_map(|h| h.split(", "))
        .collect();
    routes.reverse();
    let mut m = format!(
        "{method} {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{branch}\r\nMax-Forwards: 70\r\n"
    );
    for r in routes {
        m.push_str(&format!("Route: {r}\r\n"));
    }
    m.push_str(&format!(
        "From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        ok.header("from"),
        ok.header("to"),
        ok.header("call-id")
    ));
    m
}

#[tokio::test]
async fn parallel_fork_2xx_cancels_the_rest_and_the_dialog_follows_record_route() {
    let edge = start_edge().await;
    let (a, b, caller) = (
        Phone::new(edge.addr).await,
        Phone::new(edge.addr).await,
        Phone::new(edge.addr).await,
    );
    register(&edge, &a, "bob", &format!("<sip:bob@{}>", a.addr()), "").await;
    register(&edge, &b, "bob", &format!("<sip:bob@{}>", b.addr()), "").await;

    caller
        .send(&invite(&caller, "sip:bob@sipcluster.local", "fork1"))
        .await;
    assert_eq!(
        caller
            .recv_where("100", |m| m.status() == 100)
            .await
            .status(),
        100
    );
    let ia = a.request("INVITE").await;
    let ib = b.request("INVITE").await;
    // Both copies: Request-URI = the contact, our Via on top, Record-Route, Max-Forwards 69.
    assert_eq!(ia.request_uri(), format!("sip:bob@{}", a.addr()));
    assert_eq!(ib.request_uri(), format!("sip:bob@{}", b.addr()));
    assert!(
        ia.headers("via")[0].contains(&edge.addr.to_string()),
        "{}",
        ia.0
    );
    assert_eq!(ia.headers("via").len(), 2);
    assert_eq!(ia.header("max-forwards"), "69");
    // Our Record-Route, with the dialog's token (Call-ID and the caller's tag).
    let call_id = ia.header("call-id").to_owned();
    let from_tag = ia
        .header("from")
        .split("tag=")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        ia.header("record-route"),
        format!("<sip:{};lr{}>", edge.addr, dlg(&call_id, &from_tag))
    );

    a.reply(&ia, 180, "ta").await;
    assert!(caller.response(180).await.header("to").contains("tag=ta"));
    a.reply(&ia, 200, "ta").await;
    let ok = caller.response(200).await;
    assert_eq!(ok.headers("via").len(), 1, "our Via is removed: {}", ok.0);
    // The other branch is cancelled, but not before it sent a provisional response (§9.1):
    // its 100 triggers the CANCEL; it answers that and 487s its INVITE.
    b.silent(300, |m| m.method() == "INVITE").await;
    b.reply(&ib, 100, "").await;
    let cb = b.request("CANCEL").await;
    assert_eq!(
        cb.headers("via")[0],
        ib.headers("via")[0],
        "the CANCEL has the INVITE's branch"
    );
    b.reply(&cb, 200, "tb").await;
    b.reply(&ib, 487, "tb").await;
    // The proxy ACKs the 487 itself (hop by hop); the caller never sees it.
    let ack_b = b.request("ACK").await;
    assert!(ack_b.header("to").contains("tag=tb"));

    // ACK and BYE go by the Route set (loose routing through the edge) to phone a.
    caller
        .send(&in_dialog(&caller, &ok, "ACK", 1, "ack1"))
        .await;
    let ack = a.request("ACK").await;
    assert_eq!(ack.request_uri(), format!("sip:phone@{}", a.addr()));
    assert!(
        ack.headers("route").is_empty(),
        "our Route is popped: {}",
        ack.0
    );
    caller
        .send(&in_dialog(&caller, &ok, "BYE", 2, "bye1"))
        .await;
    let bye = a.request("BYE").await;
    assert!(bye.headers("route").is_empty());
    a.reply(&bye, 200, "ta").await;
    assert_eq!(caller.final_response().await.status(), 200);
    caller
        .silent(300, |m| {
            m.status() == 200 && m.header("cseq").contains("INVITE")
        })
        .await;
    edge.handle.stop().await;
}

#[tokio::test]
async fn sequential_fork_follows_q_and_a_6xx_ends_it() {
    let edge = start_edge().await;
    let (hi, lo, caller) = (
        Phone::new(edge.addr).await,
        Phone::new(edge.addr).await,
        Phone::new(edge.addr).await,
    );
    register(
        &edge,
        &hi,
        "bob",
        &format!("<sip:bob@{}>;q=1.0", hi.addr()),
        "",
    )
    .await;
    register(
        &edge,
        &lo,
        "bob",
        &format!("<sip:bob@{}>;q=0.5", lo.addr()),
        "",
    )
    .await;

    // q=1.0 first; its 486 moves on to q=0.5, whose 200 is the answer.
    caller
        .send(&invite(&caller, "sip:bob@sipcluster.local", "seq1"))
        .await;
    let i1 = hi.request("INVITE").await;
    lo.silent(200, |_| false).await;
    hi.reply(&i1, 486, "h").await;
    hi.request("ACK").await;
    let i2 = lo.request("INVITE").await;
    lo.reply(&i2, 200, "l").await;
    let ok = caller.response(200).await;
    assert!(ok.header("to").contains("tag=l"));

    // Same again, but a 603 from the first group ends the search (§16.7 step 5).
    caller
        .send(&invite(&caller, "sip:bob@sipcluster.local", "seq2"))
        .await;
    let i1 = hi.request("INVITE").await;
    hi.reply(&i1, 603, "h2").await;
    hi.request("ACK").await;
    let fin = caller.recv_where("603", |m| m.status() == 603).await;
    assert!(fin.header("cseq").contains("INVITE"));
    lo.silent(300, |m| {
        m.method() == "INVITE" && m.header("call-id") == "seq1"
    })
    .await;
    edge.handle.stop().await;
}

#[tokio::test]
async fn a_6xx_on_one_parallel_branch_cancels_the_others() {
    let edge = start_edge().await;
    let (a, b, caller) = (
        Phone::new(edge.addr).await,
        Phone::new(edge.addr).await,
        Phone::new(edge.addr).await,
    );
    register(&edge, &a, "bob", &format!("<sip:bob@{}>", a.addr()), "").await;
    register(&edge, &b, "bob", &format!("<sip:bob@{}>", b.addr()), "").await;
    caller
        .send(&invite(&caller, "sip:bob@sipcluster.local", "six1"))
        .await;
    let ia = a.request("INVITE").await;
    let ib = b.request("INVITE").await;
    b.reply(&ib, 180, "b").await;
    a.reply(&ia, 603, "a").await;
    let cb = b.request("CANCEL").await;
    b.reply(&cb, 200, "b").await;
    b.reply(&ib, 487, "b").await;
    let fin = caller.final_response().await;
    assert_eq!(fin.status(), 603, "the 6xx wins over the 487: {}", fin.0);
    edge.handle.stop().await;
}

#[tokio::test]
async fn nobody_answering_gives_408() {
    let edge = start_edge().await;
    let (a, caller) = (Phone::new(edge.addr).await, Phone::new(edge.addr).await);
    register(&edge, &a, "bob", &format!("<sip:bob@{}>", a.addr()), "").await;
    caller
        .send(&invite(&caller, "sip:bob@sipcluster.local", "tmo1"))
        .await;
    let _ = a.request("INVITE").await;
    // Timer B = 64·T1 = 3.2 s with T1 = 50 ms; the phone stays silent.
    let fin = caller.final_response().await;
    assert_eq!(fin.status(), 408, "{}", fin.0);
    edge.handle.stop().await;
}

#[tokio::test]
async fn strict_routing_both_ways() {
    let edge = start_edge().await;
    let (next, caller) = (Phone::new(edge.addr).await, Phone::new(edge.addr).await);
    let a = caller.addr();
    // 1. The previous hop strict-routed to us: the Request-URI is our (Record-Route) URI and
    //    the real target is the last Route value (§16.4).
    let msg = format!(
        "BYE sip:{e};lr{d} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKsr1\r\nMax-Forwards: 70\r\n\
         Route: <sip:bob@{n}>\r\nFrom: <sip:zoe@elsewhere.test>;tag=1\r\nTo: <sip:bob@sipcluster.local>;tag=2\r\n\
         Call-ID: sr1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        e = edge.addr,
        d = dlg_proven("sr1", "2"),
        n = next.addr()
    );
    caller.send(&msg).await;
    let bye = next.request("BYE").await;
    assert_eq!(bye.request_uri(), format!("sip:bob@{}", next.addr()));
    assert!(bye.headers("route").is_empty(), "{}", bye.0);
    next.reply(&bye, 200, "2").await;
    assert_eq!(caller.final_response().await.status(), 200);

    // 2. The next hop is a strict router (no ;lr): it gets its URI as Request-URI and the
    //    original Request-URI moves to the end of the Route set (§16.6 step 6).
    let msg = format!(
        "BYE sip:bob@192.0.2.55:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKsr2\r\nMax-Forwards: 70\r\n\
         Route: <sip:{e};lr{d}>, <sip:{n}>\r\nFrom: <sip:zoe@elsewhere.test>;tag=1\r\n\
         To: <sip:bob@sipcluster.local>;tag=2\r\nCall-ID: sr2\r\nCSeq: 3 BYE\r\nContent-Length: 0\r\n\r\n",
        e = edge.addr,
        d = dlg_proven("sr2", "1"),
        n = next.addr()
    );
    caller.send(&msg).await;
    let bye = next.request("BYE").await;
    assert_eq!(bye.request_uri(), format!("sip:{}", next.addr()));
    assert_eq!(
        bye.headers("route"),
        vec!["<sip:bob@192.0.2.55:5070>"],
        "{}",
        bye.0
    );
    next.reply(&bye, 200, "2").await;
    assert_eq!(caller.final_response().await.status(), 200);
    edge.handle.stop().await;
}

#[tokio::test]
async fn path_and_nat_are_followed() {
    let edge = start_edge().await;
    let (ua, outbound, caller) = (
        Phone::new(edge.addr).await,
        Phone::new(edge.addr).await,
        Phone::new(edge.addr).await,
    );
    // A UA behind a NAT: its Contact and Via name a private address it cannot be reached at.
    let p = ua.addr().port();
    let reg = format!(
        "REGISTER sip:sipcluster.local SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.8.7:5060;rport;branch=z9hG4bKnat1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:dave@sipcluster.local>;tag=n{p}\r\nTo: <sip:dave@sipcluster.local>\r\n\
         Call-ID: nat-{p}\r\nCSeq: 1 REGISTER\r\nContact: <sip:dave@10.9.8.7:5060>\r\nExpires: 300\r\n\
         Content-Length: 0\r\n\r\n"
    );
    ua.send(&reg).await;
    let ok = ua.final_response().await;
    assert_eq!(ok.status(), 200);
    let via = ok.header("via");
    assert!(
        via.contains("received=127.0.0.1") && via.contains(&format!("rport={p}")),
        "{via}"
    );
    caller
        .send(&invite(&caller, "sip:dave@sipcluster.local", "nat1"))
        .await;
    let inv = ua.request("INVITE").await;
    assert_eq!(
        inv.request_uri(),
        "sip:dave@10.9.8.7:5060",
        "the contact stays the Request-URI"
    );
    ua.reply(&inv, 486, "d").await;
    assert_eq!(caller.final_response().await.status(), 486);

    // Path (RFC 3327): requests for carol go through the recorded outbound proxy first.
    let path = format!("Path: <sip:{};lr>\r\n", outbound.addr());
    register(
        &edge,
        &ua,
        "carol",
        &format!("<sip:carol@{}>", ua.addr()),
        &path,
    )
    .await;
    let b = edge
        .store
        .lookup(
            &sip_registrar::Aor::parse("sip:carol@sipcluster.local").expect("aor"),
            sip_registrar::unix_now(),
        )
        .await;
    assert_eq!(
        b.expect("lookup")[0].path,
        vec![format!("<sip:{};lr>", outbound.addr())]
    );
    caller
        .send(&invite(&caller, "sip:carol@sipcluster.local", "path1"))
        .await;
    let inv = outbound.request("INVITE").await;
    assert_eq!(inv.request_uri(), format!("sip:carol@{}", ua.addr()));
    assert_eq!(inv.header("route"), format!("<sip:{};lr>", outbound.addr()));
    outbound.reply(&inv, 480, "o").await;
    assert_eq!(caller.final_response().await.status(), 480);
    edge.handle.stop().await;
}

#[tokio::test]
async fn a_natted_tcp_client_is_reached_over_its_own_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let edge = start_edge_with_tcp(true).await;
    let tcp_addr = edge.handle.tcp[0];
    let caller = Phone::new(edge.addr).await;
    let mut conn = tokio::net::TcpStream::connect(tcp_addr)
        .await
        .expect("connect");
    let local = conn.local_addr().expect("local");
    // Contact on a private address nobody can connect to: only this connection reaches it.
    let reg = "REGISTER sip:sipcluster.local SIP/2.0\r\nVia: SIP/2.0/TCP 10.1.1.1:5060;branch=z9hG4bKtcp1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:dave@sipcluster.local>;tag=t1\r\nTo: <sip:dave@sipcluster.local>\r\n\
         Call-ID: tcp-reg\r\nCSeq: 1 REGISTER\r\nContact: <sip:dave@10.1.1.1:5060;transport=tcp>\r\n\
         Expires: 300\r\nContent-Length: 0\r\n\r\n".to_string();
    conn.write_all(reg.as_bytes()).await.expect("send");
    let mut buf = vec![0u8; 8192];
    let n = timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("200 in time")
        .expect("read");
    let ok = Msg(String::from_utf8_lossy(&buf[..n]).into_owned());
    assert_eq!(ok.status(), 200, "{}", ok.0);
    assert!(
        ok.header("via")
            .contains(&format!("rport={}", local.port())),
        "{}",
        ok.0
    );

    caller
        .send(&invite(&caller, "sip:dave@sipcluster.local", "tcpcall"))
        .await;
    let n = timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("INVITE in time")
        .expect("read");
    let inv = Msg(String::from_utf8_lossy(&buf[..n]).into_owned());
    assert_eq!(inv.method(), "INVITE", "{}", inv.0);
    assert_eq!(inv.request_uri(), "sip:dave@10.1.1.1:5060;transport=tcp");
    // UDP in, TCP out: two Record-Routes, one per side (RFC 3261 §16.6 step 4, RFC 5658).
    assert_eq!(inv.headers("record-route").len(), 2, "{}", inv.0);
    assert!(
        inv.headers("via")[0].starts_with("SIP/2.0/TCP"),
        "{}",
        inv.0
    );
    // Answer busy over the same connection; the caller gets it.
    let mut r = String::from("SIP/2.0 486 Busy Here\r\n");
    for v in inv.headers("via") {
        r.push_str(&format!("Via: {v}\r\n"));
    }
    r.push_str(&format!(
        "From: {}\r\nTo: {};tag=busy\r\nCall-ID: {}\r\nCSeq: {}\r\nContent-Length: 0\r\n\r\n",
        inv.header("from"),
        inv.header("to"),
        inv.header("call-id"),
        inv.header("cseq")
    ));
    conn.write_all(r.as_bytes()).await.expect("send");
    assert_eq!(caller.final_response().await.status(), 486);
    edge.handle.stop().await;
}

//! The edge core driven with messages and times, no sockets and no runtime: REGISTER,
//! digest auth, INVITE forking, CANCEL, in-dialog routing by Record-Route, media
//! anchoring, shedding, and every timer on a virtual clock (Timer A/B/E/F, Timer C, the
//! clean-up of finished transactions).
//!
//! The harness plays the driver: it takes the core's actions, keeps what it was asked to
//! send, and executes its asks with the real request stages over in-memory stores. Those
//! answer on their first poll (nothing here waits on a socket or DNS: every address is an
//! IP literal), so the tests are plain synchronous functions. Asks that would reach a
//! media relay are held for the test to answer by hand.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edge::EdgeConfig;
use edge::core::{Action, Answer, Ask, Core};
use edge::decision::Decision;
use edge::shared::{Flows, Shared, Stores};
use futures_util::FutureExt;
use sip_auth::{Algorithm, ClientAuthorization, Credentials, QopAuth};
use sip_core::{HeaderName, Method, ResponseBuilder, SipMessage};
use sip_registrar::{MemoryStore, Policy};
use sip_transport::Inbound;
use sip_txn::{FlowId, Target, Transport};

const SECRET: &str = "core-test-secret-0123456789abcdef";
const DOMAIN: &str = "sipcluster.local";
/// The edge's own address (nothing is bound: the core never touches a socket).
const EDGE: &str = "10.0.0.1:5060";
const ALICE_1: &str = "192.0.2.10:5070";
const ALICE_2: &str = "192.0.2.11:5070";
const BOB: &str = "192.0.2.20:5060";
const STRANGER: &str = "192.0.2.99:5060";

/// The SDP a media relay would have put in the forwarded offer.
const RELAY_SDP: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.50\r\ns=-\r\nc=IN IP4 10.0.0.50\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
const PHONE_SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n";

struct NoConnections;
impl Flows for NoConnections {
    fn alive(&self, _: FlowId) -> bool {
        false
    }
    fn target(&self, _: FlowId) -> Option<Target> {
        None
    }
}

fn udp(addr: &str) -> Target {
    Target {
        transport: Transport::Udp,
        addr: addr.parse().unwrap(),
        flow: None,
    }
}

fn parse(b: impl Into<Bytes>) -> SipMessage {
    SipMessage::parse(b.into()).expect("valid SIP")
}

struct Harness {
    core: Core,
    sh: Arc<Shared>,
    now: Instant,
    /// Everything the core sent and the test has not looked at yet, in order.
    sent: VecDeque<(Target, SipMessage)>,
    /// Asks held for the test: media relay work, and decisions while `hold` is set.
    held: Vec<Ask>,
    /// Hold the decisions instead of executing them (a store that has not answered yet).
    hold: bool,
    /// Anchor new INVITEs as if a relay had answered `RELAY_SDP` (relay 0).
    anchor: bool,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(|_| {})
    }

    fn with(tweak: impl FnOnce(&mut EdgeConfig)) -> Harness {
        Harness::build(tweak, None)
    }

    /// With accounting on: JSON lines in `dir` (`cdrs.jsonl`), the spool beside it.
    fn accounted(dir: &std::path::Path) -> Harness {
        Harness::accounted_with(dir, |_| {})
    }

    fn accounted_with(dir: &std::path::Path, tweak: impl FnOnce(&mut EdgeConfig)) -> Harness {
        let settings = accounting::AccountingSettings {
            jsonl_path: dir.join("cdrs.jsonl"),
            spool_dir: dir.join("spool"),
            sync_interval_ms: 1,
            ..Default::default()
        };
        let acc = settings
            .start(
                accounting::Destination::Jsonl,
                accounting::Metrics::default(),
            )
            .expect("accounting starts")
            .expect("on");
        Harness::build(tweak, Some(Arc::new(acc)))
    }

    /// Every record the accounting published so far (after draining it), decoded from
    /// the JSON lines.
    fn accounted_lines(&self, dir: &std::path::Path) -> Vec<serde_json::Value> {
        let left = self
            .sh
            .accounting
            .as_ref()
            .unwrap()
            .drain(Duration::from_secs(5));
        assert_eq!(left, 0, "everything published");
        std::fs::read_to_string(dir.join("cdrs.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    fn build(
        tweak: impl FnOnce(&mut EdgeConfig),
        acc: Option<Arc<accounting::Accounting>>,
    ) -> Harness {
        let mut cfg = EdgeConfig::default();
        cfg.sip.domains = vec![DOMAIN.into()];
        cfg.sip.advertise = Some("10.0.0.1".parse().unwrap());
        cfg.auth.nonce_secret = Some(SECRET.into());
        cfg.auth.register = false;
        cfg.auth.invite = false;
        cfg.metrics.listen = None;
        tweak(&mut cfg);
        let users = Arc::new(edge::load_users(&cfg).expect("demo users"));
        let sh = Shared::new(
            cfg,
            Stores {
                users,
                store: Arc::new(MemoryStore::new(Policy::default())),
                nonce_uses: Arc::new(sip_auth::MemoryNonceUses::default()),
                dialogs: Arc::new(edge::dialogs::MemoryDialogs::default()),
                limits: Arc::new(edge::limit::MemoryLimits::default()),
                bans: None,
                blocklist: None,
            },
            Arc::new(NoConnections),
            (&[EDGE.parse().unwrap()], &[]),
            edge::metrics::EdgeMetrics::default(),
            SECRET.into(),
            "core-test".into(),
            acc,
        )
        .expect("shared state");
        let sh = Arc::new(sh);
        let now = Instant::now();
        Harness {
            core: Core::new(sh.clone(), now),
            sh,
            now,
            sent: VecDeque::new(),
            held: Vec::new(),
            hold: false,
            anchor: false,
        }
    }

    /// `text` arrives from `from` now.
    fn deliver(&mut self, from: &str, text: &str) {
        self.deliver_read_at(from, text, self.now);
    }

    /// `text` arrives from `from`, read off the socket at `received_at`.
    fn deliver_read_at(&mut self, from: &str, text: &str, received_at: Instant) {
        let m = Inbound::Message {
            msg: parse(text.to_owned()),
            source: udp(from),
            received_at,
        };
        self.core.handle_inbound(self.now, m);
        self.settle();
    }

    /// A response from the next hop `from`.
    fn reply(&mut self, from: &str, resp: Bytes) {
        let s = String::from_utf8(resp.to_vec()).unwrap();
        self.deliver(from, &s);
    }

    /// Take the core's actions until it has none: sends are kept, asks executed.
    fn settle(&mut self) {
        while let Some(a) = self.core.poll_action() {
            match a {
                Action::Send { target, bytes, .. } => self.sent.push_back((target, parse(bytes))),
                Action::Ask(ask) => self.execute(*ask),
            }
        }
    }

    fn execute(&mut self, ask: Ask) {
        let answer = match ask {
            Ask::Decide { .. } if self.hold => {
                self.held.push(ask);
                return;
            }
            Ask::Decide {
                txn,
                ref msg,
                source,
            } if self.anchor
                && msg.method() == Some(Method::Invite)
                && msg.to_tag().unwrap().is_none() =>
            {
                let d = edge::decide::decide(&self.sh, txn, msg, source)
                    .now_or_never()
                    .expect("in-memory stores answer at once");
                Some(Answer::Decided(match d {
                    Decision::Forward { txn, mut plan } => {
                        plan.anchor = Some(0);
                        plan.body = Some(Bytes::from_static(RELAY_SDP.as_bytes()));
                        Decision::Forward { txn, plan }
                    }
                    d => d,
                }))
            }
            Ask::Decide { .. } | Ask::RouteAck { .. } | Ask::Account(_) | Ask::Limit(_) => {
                edge::driver::execute(self.sh.clone(), ask)
                    .now_or_never()
                    .expect("in-memory stores answer at once")
            }
            Ask::AnchorResponse { .. } | Ask::EndMedia { .. } => {
                self.held.push(ask);
                return;
            }
        };
        if let Some(a) = answer {
            self.core.handle_answer(self.now, a);
        }
    }

    /// Release the held decisions.
    fn release(&mut self) {
        self.hold = false;
        for ask in std::mem::take(&mut self.held) {
            self.execute(ask);
        }
        self.settle();
    }

    /// Move the virtual clock on by `d`, firing every timer due on the way at its time.
    /// The edge's metrics as `/metrics` shows them.
    fn metrics_text(&self) -> String {
        let mut reg = prometheus_client::registry::Registry::default();
        self.sh.metrics.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        out
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..10_000 {
            match self.core.poll_timeout() {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.core.handle_timeout(self.now);
                    self.settle();
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
        panic!("timers keep firing without the clock moving");
    }

    /// Everything sent to `to` since last asked, in order.
    fn to(&mut self, to: &str) -> Vec<SipMessage> {
        let t = udp(to);
        let (mine, rest): (Vec<_>, Vec<_>) = self.sent.drain(..).partition(|(at, _)| *at == t);
        self.sent = rest.into();
        mine.into_iter().map(|(_, m)| m).collect()
    }

    /// The one message sent to `to` since last asked.
    fn one(&mut self, to: &str) -> SipMessage {
        let mut got = self.to(to);
        assert_eq!(got.len(), 1, "one message to {to}: {got:?}");
        got.remove(0)
    }

    /// Nothing was sent anywhere since last asked.
    fn quiet(&mut self) {
        assert!(self.sent.is_empty(), "nothing sent: {:?}", self.sent);
    }
}

fn header<'a>(m: &'a SipMessage, name: &'a str) -> Option<&'a str> {
    m.headers_named(name)
        .next()
        .map(|h| std::str::from_utf8(h.value).unwrap())
}

fn register(h: &mut Harness, phone: &str, n: u32, extra: &str) -> SipMessage {
    h.deliver(
        phone,
        &format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {phone};branch=z9hG4bK-reg-{phone}-{n}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=reg{n}\r\nTo: <sip:alice@{DOMAIN}>\r\n\
             Call-ID: reg-{phone}\r\nCSeq: {n} REGISTER\r\nContact: <sip:alice@{phone}>;expires=3600\r\n\
             {extra}Content-Length: 0\r\n\r\n"
        ),
    );
    h.one(phone)
}

/// Alice registered from each of `phones`.
fn registered(h: &mut Harness, phones: &[&str]) {
    for p in phones {
        assert_eq!(register(h, p, 1, "").status(), Some(200));
    }
}

fn invite(call: &str, sdp: bool) -> String {
    let body = if sdp { PHONE_SDP } else { "" };
    let ct = if sdp {
        "Content-Type: application/sdp\r\n"
    } else {
        ""
    };
    format!(
        "INVITE sip:alice@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {BOB};branch=z9hG4bK-{call}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@{DOMAIN}>;tag=bob-{call}\r\nTo: <sip:alice@{DOMAIN}>\r\n\
         Call-ID: {call}\r\nCSeq: 1 INVITE\r\nContact: <sip:bob@{BOB}>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Bob's CANCEL of the INVITE of `call` (§9.1: same branch, same CSeq number).
fn cancel(call: &str) -> String {
    format!(
        "CANCEL sip:alice@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {BOB};branch=z9hG4bK-{call}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@{DOMAIN}>;tag=bob-{call}\r\nTo: <sip:alice@{DOMAIN}>\r\n\
         Call-ID: {call}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A request within the dialog `call` from `from` (`ok` is the 2xx it got), through
/// `route` when given.
fn in_dialog(
    from: &str,
    call: &str,
    ok: &SipMessage,
    method: &str,
    cseq: u32,
    ruri: &str,
    route: Option<&str>,
) -> String {
    let route = route.map(|r| format!("Route: {r}\r\n")).unwrap_or_default();
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-{call}-{method}-{cseq}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:bob@{DOMAIN}>;tag=bob-{call}\r\nTo: {}\r\nCall-ID: {call}\r\n\
         CSeq: {cseq} {method}\r\n{route}Content-Length: 0\r\n\r\n",
        header(ok, "To").unwrap()
    )
}

/// The callee's response to a forwarded request, as a phone builds it (Record-Route
/// copied into a 2xx and 18x, §12.1.1).
fn answer(req: &SipMessage, code: u16, tag: &str, body: Option<&str>) -> Bytes {
    let mut b = ResponseBuilder::new(req, code).unwrap().to_tag(tag);
    if (101..300).contains(&code) {
        for rr in req.headers_named("Record-Route") {
            b = b.header("Record-Route", rr.value.to_vec());
        }
        b = b.header("Contact", b"<sip:alice@192.0.2.11:5070>".to_vec());
    }
    if let Some(sdp) = body {
        b = b.body(b"application/sdp".to_vec(), sdp.as_bytes().to_vec());
    }
    b.build()
}

/// Our Via is on top of a forwarded request, the caller's right under it.
fn assert_forwarded(m: &SipMessage, method: Method) {
    assert_eq!(m.method(), Some(method));
    let vias: Vec<_> = m.via().flatten().collect();
    assert_eq!(vias.len(), 2, "ours and the caller's");
    assert_eq!(vias[0].sent_by.host.to_string(), "10.0.0.1");
    assert!(vias[0].branch.unwrap().starts_with("z9hG4bK"));
    assert_eq!(vias[1].sent_by.host.to_string(), "192.0.2.20");
}

#[test]
fn register_then_a_parallel_fork_the_first_2xx_wins_and_the_dialog_follows_record_route() {
    let mut h = Harness::new();
    registered(&mut h, &[ALICE_1, ALICE_2]);

    h.deliver(BOB, &invite("c1", false));
    assert_eq!(h.one(BOB).status(), Some(100), "§16.2: 100 at once");
    let to_1 = h.one(ALICE_1);
    let to_2 = h.one(ALICE_2);
    for (m, contact) in [(&to_1, ALICE_1), (&to_2, ALICE_2)] {
        assert_forwarded(m, Method::Invite);
        assert_eq!(
            std::str::from_utf8(m.request_uri_raw().unwrap()).unwrap(),
            format!("sip:alice@{contact}"),
            "the Request-URI is the contact"
        );
        assert_eq!(header(m, "Max-Forwards"), Some("69"));
        let rr = header(m, "Record-Route").unwrap();
        assert!(rr.contains("10.0.0.1") && rr.contains("lr") && rr.contains("dlg="));
    }
    h.quiet();

    h.reply(ALICE_1, answer(&to_1, 180, "a1", None));
    let ringing = h.one(BOB);
    assert_eq!(ringing.status(), Some(180));
    assert_eq!(ringing.via_count(), 1, "our Via removed");

    h.reply(ALICE_2, answer(&to_2, 200, "a2", None));
    let ok = h.one(BOB);
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.via_count(), 1);
    let cancel_1 = h.one(ALICE_1);
    assert_eq!(cancel_1.method(), Some(Method::Cancel), "the other branch");
    assert_eq!(
        cancel_1.top_via().unwrap().branch,
        to_1.top_via().unwrap().branch,
        "§9.1: the CANCEL has its INVITE's branch"
    );
    h.quiet();

    h.reply(ALICE_1, answer(&cancel_1, 200, "a1", None));
    h.reply(ALICE_1, answer(&to_1, 487, "a1", None));
    assert_eq!(
        h.one(ALICE_1).method(),
        Some(Method::Ack),
        "§17.1.1.3: the 487 is acknowledged hop by hop"
    );
    assert!(h.to(BOB).is_empty(), "one final response for the caller");

    // The ACK and the BYE follow the Record-Route to the contact that answered.
    let route = header(&ok, "Record-Route").unwrap().to_owned();
    let contact = "sip:alice@192.0.2.11:5070";
    h.deliver(
        BOB,
        &in_dialog(BOB, "c1", &ok, "ACK", 1, contact, Some(&route)),
    );
    let ack = h.one(ALICE_2);
    assert_forwarded(&ack, Method::Ack);
    assert!(header(&ack, "Route").is_none(), "our Route popped");

    h.deliver(
        BOB,
        &in_dialog(BOB, "c1", &ok, "BYE", 2, contact, Some(&route)),
    );
    let bye = h.one(ALICE_2);
    assert_forwarded(&bye, Method::Bye);
    assert!(header(&bye, "Route").is_none(), "our Route popped");
    h.reply(ALICE_2, answer(&bye, 200, "a2", None));
    assert_eq!(h.one(BOB).status(), Some(200));

    // The same BYE from a stranger, not through our Record-Route: not our dialog.
    h.deliver(
        STRANGER,
        &in_dialog(STRANGER, "c1", &ok, "BYE", 3, contact, None),
    );
    assert_eq!(h.one(STRANGER).status(), Some(404));
    h.quiet();

    // Nothing outlives its transactions: 32 s later (Timer J/K/D with T1 = 500 ms) the
    // core holds none.
    assert_eq!(h.core.pending_decisions(), 0);
    h.advance(Duration::from_secs(40));
    h.quiet();
    assert_eq!(h.core.transactions(), (0, 0));
}

#[test]
fn digest_register_is_challenged_accepted_once_and_a_replay_is_challenged_again() {
    let mut h = Harness::with(|c| c.auth.register = true);
    let challenge = register(&mut h, ALICE_1, 1, "");
    assert_eq!(challenge.status(), Some(401));
    let www = header(&challenge, "WWW-Authenticate").unwrap().to_owned();
    let nonce = www
        .split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap();
    let authorization = |password: &str, nc: u32| {
        let creds = Credentials::from_password("alice", DOMAIN, password);
        let v = ClientAuthorization {
            algorithm: Algorithm::Md5,
            username: "alice",
            realm: DOMAIN,
            nonce,
            uri: &format!("sip:{DOMAIN}"),
            method: "REGISTER",
            qop: Some(QopAuth {
                nc,
                cnonce: "c0ffee",
            }),
            opaque: None,
        }
        .header_value(&creds)
        .unwrap();
        format!("Authorization: {v}\r\n")
    };

    let wrong = register(&mut h, ALICE_1, 2, &authorization("not-her-password", 1));
    assert_eq!(
        wrong.status(),
        Some(401),
        "a wrong password is challenged again"
    );
    let ok = register(&mut h, ALICE_1, 3, &authorization("alice-secret", 2));
    assert_eq!(ok.status(), Some(200));
    assert!(header(&ok, "Contact").unwrap().contains(ALICE_1));
    let replay = register(&mut h, ALICE_1, 4, &authorization("alice-secret", 2));
    assert_eq!(
        replay.status(),
        Some(401),
        "the same (nonce, nc) is good once"
    );
    assert!(
        header(&replay, "WWW-Authenticate")
            .unwrap()
            .contains("stale=true")
    );
}

#[test]
fn the_callers_cancel_ends_a_ringing_call_with_487() {
    let mut h = Harness::new();
    registered(&mut h, &[ALICE_1]);
    h.deliver(BOB, &invite("c2", false));
    assert_eq!(h.one(BOB).status(), Some(100));
    let inv = h.one(ALICE_1);
    h.reply(ALICE_1, answer(&inv, 180, "a1", None));
    assert_eq!(h.one(BOB).status(), Some(180));

    h.deliver(BOB, &cancel("c2"));
    let cancel_ok = h.one(BOB);
    assert_eq!(cancel_ok.status(), Some(200), "§16.10: 200 to the CANCEL");
    assert_eq!(cancel_ok.cseq().unwrap().method, Method::Cancel);
    let c = h.one(ALICE_1);
    assert_eq!(c.method(), Some(Method::Cancel));
    h.reply(ALICE_1, answer(&c, 200, "a1", None));
    h.reply(ALICE_1, answer(&inv, 487, "a1", None));
    assert_eq!(h.one(ALICE_1).method(), Some(Method::Ack));
    let end = h.one(BOB);
    assert_eq!(end.status(), Some(487));
    assert_eq!(end.cseq().unwrap().method, Method::Invite);
}

#[test]
fn a_cancel_while_the_decision_is_still_being_made_gets_487_and_nothing_is_forwarded() {
    let mut h = Harness::new();
    registered(&mut h, &[ALICE_1]);
    h.hold = true;
    h.deliver(BOB, &invite("c3", false));
    assert_eq!(h.one(BOB).status(), Some(100));
    assert_eq!(h.core.pending_decisions(), 1, "waiting on the stores");

    h.deliver(BOB, &cancel("c3"));
    assert_eq!(h.one(BOB).status(), Some(200));
    h.release();
    assert_eq!(h.one(BOB).status(), Some(487));
    assert!(h.to(ALICE_1).is_empty(), "the cancelled INVITE never left");
    assert_eq!(h.core.pending_decisions(), 0);
}

#[test]
fn an_unanswered_invite_is_retransmitted_by_timer_a_and_timer_b_gives_408() {
    let mut h = Harness::new();
    registered(&mut h, &[ALICE_1]);
    h.deliver(BOB, &invite("c4", false));
    assert_eq!(h.one(BOB).status(), Some(100));
    let mut sent = h.to(ALICE_1).len();
    // Timer A doubles from T1 = 500 ms: copies at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s.
    let mut at = Vec::new();
    for step in 1..=319 {
        h.advance(Duration::from_millis(100));
        let n = h.to(ALICE_1).len();
        if n > 0 {
            at.push(step);
            sent += n;
        }
        assert!(
            h.to(BOB).is_empty(),
            "nothing for the caller before Timer B"
        );
    }
    assert_eq!(sent, 7);
    assert_eq!(at, [5, 15, 35, 75, 155, 315], "in tenths of a second");
    h.advance(Duration::from_millis(100));
    assert_eq!(h.one(BOB).status(), Some(408), "Timer B at 64·T1 = 32 s");
}

#[test]
fn timer_c_cancels_a_branch_ringing_for_ever() {
    let mut h = Harness::new();
    registered(&mut h, &[ALICE_1]);
    for (call, callee_answers_the_cancel) in [("c5", true), ("c5b", false)] {
        h.deliver(BOB, &invite(call, false));
        h.one(BOB);
        let inv = h.one(ALICE_1);
        h.reply(ALICE_1, answer(&inv, 180, "a1", None));
        assert_eq!(h.one(BOB).status(), Some(180));
        // A provisional response stops Timer A and B: only Timer C (180 s) is left.
        h.advance(Duration::from_secs(179));
        h.quiet();
        // §16.6 step 11: a provisional (not 100) restarts Timer C.
        h.reply(ALICE_1, answer(&inv, 183, "a1", None));
        assert_eq!(h.one(BOB).status(), Some(183));
        h.advance(Duration::from_secs(179));
        h.quiet();
        // §16.8: Timer C fired on a branch that had a provisional response: CANCEL it.
        h.advance(Duration::from_millis(1200));
        let c = h.one(ALICE_1);
        assert_eq!(c.method(), Some(Method::Cancel));
        assert!(
            h.to(BOB).is_empty(),
            "the branch's final response is awaited"
        );
        if callee_answers_the_cancel {
            h.reply(ALICE_1, answer(&c, 200, "a1", None));
            h.reply(ALICE_1, answer(&inv, 487, "a1", None));
            assert_eq!(h.one(ALICE_1).method(), Some(Method::Ack));
            assert_eq!(
                h.one(BOB).status(),
                Some(487),
                "the best response, forwarded"
            );
        } else {
            // §9.1: no final response 64·T1 after the CANCEL: the branch is given up.
            // (The CANCEL left 0.2 s ago.)
            h.advance(Duration::from_millis(31_600));
            h.to(ALICE_1);
            assert!(h.to(BOB).is_empty());
            h.advance(Duration::from_millis(400));
            assert_eq!(h.one(BOB).status(), Some(408));
        }
        h.advance(Duration::from_secs(40));
        h.sent.clear();
    }
    assert_eq!(h.core.transactions(), (0, 0));
}

#[test]
fn an_unanswered_message_is_retransmitted_up_to_t2_and_timer_f_gives_408() {
    let mut h = Harness::new();
    registered(&mut h, &[ALICE_1]);
    h.deliver(
        BOB,
        &format!(
            "MESSAGE sip:alice@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {BOB};branch=z9hG4bK-m1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:bob@{DOMAIN}>;tag=m1\r\nTo: <sip:alice@{DOMAIN}>\r\n\
             Call-ID: m1\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        ),
    );
    assert!(h.to(BOB).is_empty(), "no 100 for a non-INVITE");
    let first = h.one(ALICE_1);
    assert_forwarded(&first, Method::Message);
    assert_eq!(first.body(), b"hi");
    // Timer E: 0.5, 1, 2, then T2 = 4 s: copies at 0.5, 1.5, 3.5, 7.5, 11.5, ... 31.5 s.
    let mut at = Vec::new();
    for step in 1..=319 {
        h.advance(Duration::from_millis(100));
        if !h.to(ALICE_1).is_empty() {
            at.push(step);
        }
    }
    assert_eq!(at, [5, 15, 35, 75, 115, 155, 195, 235, 275, 315]);
    assert!(h.to(BOB).is_empty());
    h.advance(Duration::from_millis(100));
    assert_eq!(h.one(BOB).status(), Some(408), "Timer F at 64·T1 = 32 s");
}

/// A runtime only because the media relay clients are made at start (lazily connected,
/// never used here: the test answers for the relay).
#[tokio::test]
async fn an_anchored_call_carries_the_relays_sdp_both_ways_and_ends_its_session() {
    let mut h = Harness::with(|c| c.media.relays = vec!["http://127.0.0.1:9".into()]);
    h.anchor = true;
    registered(&mut h, &[ALICE_1]);

    // The offer goes out with the relay's SDP.
    h.deliver(BOB, &invite("c6", true));
    assert_eq!(h.one(BOB).status(), Some(100));
    let inv = h.one(ALICE_1);
    assert_eq!(inv.body(), RELAY_SDP.as_bytes());
    assert_eq!(
        header(&inv, "Content-Length"),
        Some(RELAY_SDP.len().to_string().as_str())
    );

    // The answer waits for the relay; what the relay answers is what the caller gets.
    h.reply(ALICE_1, answer(&inv, 200, "a1", Some(PHONE_SDP)));
    h.quiet();
    let Some(Ask::AnchorResponse {
        txn,
        code,
        resp,
        relay,
        offer,
    }) = h.held.pop()
    else {
        panic!("the 200's SDP is anchored: {:?}", h.held);
    };
    assert_eq!((code, relay, offer), (200, 0, false));
    assert_eq!(resp.via_count(), 1, "our Via is already off");
    let rewritten = {
        // What the relay does to the body: its address and port, same lengths here.
        let text = String::from_utf8(resp.bytes().to_vec()).unwrap();
        let (head, body) = text.split_at(text.len() - resp.body().len());
        format!(
            "{head}{}",
            body.replace("192.0.2.20", "10.0.0.150")
                .replace("30000", "40002")
        )
    };
    h.core.handle_answer(
        h.now,
        Answer::Decided(Decision::Respond {
            txn,
            code,
            bytes: rewritten.clone().into(),
            logged: false,
        }),
    );
    h.settle();
    let ok = h.one(BOB);
    assert_eq!(ok.status(), Some(200));
    assert!(std::str::from_utf8(ok.body()).unwrap().contains("40002"));

    // The BYE ends the session on the relay (by both tags) as it is forwarded.
    let route = header(&ok, "Record-Route").unwrap().to_owned();
    h.deliver(
        BOB,
        &in_dialog(
            BOB,
            "c6",
            &ok,
            "BYE",
            2,
            &format!("sip:alice@{ALICE_1}"),
            Some(&route),
        ),
    );
    assert_eq!(h.one(ALICE_1).method(), Some(Method::Bye));
    match h.held.as_slice() {
        [
            Ask::EndMedia {
                call_id,
                from_tag,
                to_tag,
            },
        ] => assert_eq!(
            (call_id.as_str(), from_tag.as_str(), to_tag.as_str()),
            ("c6", "bob-c6", "a1")
        ),
        other => panic!("one EndMedia: {other:?}"),
    }
    h.held.clear();

    // A call that fails ends its session too (by the caller's tag: no dialog yet).
    h.deliver(BOB, &invite("c7", true));
    h.one(BOB);
    let inv = h.one(ALICE_1);
    h.reply(ALICE_1, answer(&inv, 486, "a1", None));
    assert_eq!(h.one(ALICE_1).method(), Some(Method::Ack));
    assert_eq!(h.one(BOB).status(), Some(486));
    assert!(
        matches!(h.held.as_slice(), [Ask::EndMedia { call_id, to_tag, .. }] if call_id == "c7" && to_tag.is_empty()),
        "{:?}",
        h.held
    );
}

#[test]
fn a_new_request_queued_past_the_limit_is_shed_with_503_and_its_retransmission_too() {
    let mut h = Harness::new();
    registered(&mut h, &[ALICE_1]);
    h.advance(Duration::from_secs(1));
    let read_at = h.now - Duration::from_millis(300);
    h.deliver_read_at(BOB, &invite("c8", false), read_at);
    let shed = h.one(BOB);
    assert_eq!(shed.status(), Some(503));
    assert_eq!(header(&shed, "Retry-After"), Some("5"));
    // The retransmission is answered from the transaction, not served after all.
    h.deliver(BOB, &invite("c8", false));
    assert_eq!(h.one(BOB).status(), Some(503));
    assert!(h.to(ALICE_1).is_empty());

    // An in-dialog request is never shed (a 503 to a BYE would end one side only).
    h.deliver_read_at(
        BOB,
        &in_dialog(
            BOB,
            "c8",
            &shed,
            "BYE",
            2,
            &format!("sip:alice@{ALICE_1}"),
            None,
        ),
        h.now - Duration::from_millis(300),
    );
    assert_ne!(h.one(BOB).status(), Some(503));
}

#[test]
fn options_to_the_edge_is_answered_without_a_transaction_and_a_bad_request_gets_400() {
    let mut h = Harness::new();
    h.deliver(
        BOB,
        &format!(
            "OPTIONS sip:10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {BOB};branch=z9hG4bK-o1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:bob@{DOMAIN}>;tag=o1\r\nTo: <sip:10.0.0.1>\r\n\
             Call-ID: o1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ),
    );
    let ok = h.one(BOB);
    assert_eq!(ok.status(), Some(200));
    assert!(header(&ok, "Allow").is_some());
    assert_eq!(h.core.transactions(), (0, 0));

    // The CSeq names another method than the request line (§8.1.1.5).
    h.deliver(
        BOB,
        &format!(
            "INVITE sip:alice@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {BOB};branch=z9hG4bK-b1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:bob@{DOMAIN}>;tag=b1\r\nTo: <sip:alice@{DOMAIN}>\r\n\
             Call-ID: b1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ),
    );
    let bad = h.one(BOB);
    assert_eq!(bad.status(), Some(400));
    assert!(
        bad.header(HeaderName::CSeq).is_some(),
        "the 400 still names the request it answers"
    );
}

/// What one accounted record says, from its JSON line: `("cdr", _)` or
/// `("event", kind)`.
fn kind_of(v: &serde_json::Value) -> (String, String) {
    if v.get("cdr").is_some() {
        ("cdr".into(), String::new())
    } else {
        let k = v["event"]["kind"].as_str().unwrap_or("").to_owned();
        (
            "event".into(),
            k.trim_start_matches("CALL_EVENT_KIND_").to_owned(),
        )
    }
}

fn kinds(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| match kind_of(l) {
            (c, k) if k.is_empty() => c,
            (_, k) => k,
        })
        .collect()
}

/// A JSON number of the proto3 mapping (64-bit integers are strings).
fn num(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::String(s) => s.parse().unwrap(),
        serde_json::Value::Number(n) => n.as_u64().unwrap(),
        serde_json::Value::Null => 0,
        other => panic!("not a number: {other}"),
    }
}

#[test]
fn an_answered_call_is_accounted_from_attempt_to_cdr_on_the_virtual_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::accounted(dir.path());
    registered(&mut h, &[ALICE_2]);
    h.deliver(BOB, &invite("acc1", false));
    assert_eq!(h.one(BOB).status(), Some(100));
    let inv = h.one(ALICE_2);
    // Alice's 100 stops Timer A (no retransmissions while she rings).
    h.reply(ALICE_2, answer(&inv, 100, "a1", None));
    h.advance(Duration::from_millis(1500));
    h.reply(ALICE_2, answer(&inv, 180, "a1", None));
    assert_eq!(h.one(BOB).status(), Some(180));
    h.advance(Duration::from_secs(4));
    h.reply(ALICE_2, answer(&inv, 200, "a1", None));
    let ok = h.one(BOB);
    let route = header(&ok, "Record-Route").unwrap().to_owned();
    let contact = "sip:alice@192.0.2.11:5070";
    h.deliver(
        BOB,
        &in_dialog(BOB, "acc1", &ok, "ACK", 1, contact, Some(&route)),
    );
    h.advance(Duration::from_secs(62));
    h.deliver(
        BOB,
        &in_dialog(BOB, "acc1", &ok, "BYE", 2, contact, Some(&route)),
    );
    // To the contact of the 2xx (`answer` writes ALICE_2's, where she registered), after
    // the ACK.
    let to_alice = h.to(ALICE_2);
    let bye = to_alice.last().unwrap().clone();
    assert_eq!(bye.method(), Some(Method::Bye));
    h.reply(ALICE_2, answer(&bye, 200, "a1", None));

    // The call's KPIs, on the same virtual clock: rang after 1.5 s, answered after 5.5 s.
    let text = h.metrics_text();
    for line in [
        "sipcluster_call_attempts_total{destination=\"local\"} 1",
        "sipcluster_call_answered_total{destination=\"local\"} 1",
        "sipcluster_call_post_dial_delay_seconds_sum{destination=\"local\"} 1.5",
        "sipcluster_call_post_dial_delay_seconds_count{destination=\"local\"} 1",
        "sipcluster_call_post_dial_delay_seconds_bucket{le=\"1.6\",destination=\"local\"} 1",
        "sipcluster_call_post_dial_delay_seconds_bucket{le=\"0.8\",destination=\"local\"} 0",
        "sipcluster_call_answer_delay_seconds_sum{destination=\"local\"} 5.5",
        "sipcluster_call_answer_delay_seconds_count{destination=\"local\"} 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(!text.contains("sipcluster_call_failed_total"), "{text}");
    let lines = h.accounted_lines(dir.path());
    assert_eq!(
        kinds(&lines),
        ["ATTEMPT", "RINGING", "ANSWERED", "ENDED", "cdr"],
        "{lines:#?}"
    );
    let cdr = &lines[4]["cdr"];
    assert_eq!(cdr["call"]["callId"], "acc1");
    assert_eq!(cdr["call"]["fromTag"], "bob-acc1");
    assert_eq!(cdr["call"]["toTag"], "a1");
    assert_eq!(cdr["caller"]["uri"], format!("sip:bob@{DOMAIN}"));
    assert_eq!(cdr["caller"]["user"], "bob");
    assert_eq!(cdr["callee"]["uri"], format!("sip:alice@{DOMAIN}"));
    assert_eq!(cdr["requestUri"], format!("sip:alice@{DOMAIN}"));
    assert_eq!(cdr["source"], BOB);
    assert_eq!(cdr["sourceTransport"], "TRANSPORT_UDP");
    assert_eq!(cdr["destinationUri"], format!("sip:alice@{ALICE_2}"));
    assert_eq!(cdr["sipCode"], 200);
    assert_eq!(cdr["endCause"], "END_CAUSE_BYE");
    assert_eq!(cdr["hungUpBy"], "HUNG_UP_BY_CALLER");
    assert_eq!(cdr["edge"], "core-test");
    assert_eq!(cdr["recordedBy"], "core-test");
    // The virtual clock's times: ringing 1.5 s after the INVITE, answer 4 s later, BYE
    // 62 s after the answer.
    let invite_at = num(&cdr["inviteAtMs"]);
    assert_eq!(num(&cdr["ringingAtMs"]) - invite_at, 1500);
    assert_eq!(num(&cdr["answeredAtMs"]) - invite_at, 5500);
    assert_eq!(num(&cdr["endedAtMs"]) - invite_at, 67_500);
    assert_eq!(num(&cdr["postDialDelayMs"]), 1500);
    assert_eq!(num(&cdr["billableMs"]), 62_000);
    // Deduplication keys: the CDR's id is a function of the call, so a second BYE (both
    // sides hanging up at once) or a replay carries the same one.
    let id = lines[4]["eventId"].as_str().unwrap();
    assert_eq!(
        id,
        edge::account::event_id("cdr", "acc1", "bob-acc1", "a1"),
        "{id}"
    );
    let ids: std::collections::HashSet<&str> = lines
        .iter()
        .map(|l| l["eventId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), lines.len(), "one id per event");
}

#[test]
fn the_callees_bye_ends_the_record_kept_under_the_callers_tag() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::accounted(dir.path());
    registered(&mut h, &[ALICE_2]);
    // Bob registered too: Alice's BYE goes to his registered contact.
    h.deliver(
        BOB,
        &format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {BOB};branch=z9hG4bK-reg-bob\r\n\
             Max-Forwards: 70\r\nFrom: <sip:bob@{DOMAIN}>;tag=regb\r\nTo: <sip:bob@{DOMAIN}>\r\n\
             Call-ID: reg-bob\r\nCSeq: 1 REGISTER\r\nContact: <sip:bob@{BOB}>;expires=3600\r\n\
             Content-Length: 0\r\n\r\n"
        ),
    );
    assert_eq!(h.one(BOB).status(), Some(200));
    h.deliver(BOB, &invite("acc2", false));
    assert_eq!(h.one(BOB).status(), Some(100));
    let inv = h.one(ALICE_2);
    h.reply(ALICE_2, answer(&inv, 200, "a2", None));
    let ok = h.one(BOB);
    let rr = header(&ok, "Record-Route").unwrap().to_owned();
    h.advance(Duration::from_secs(10));
    // Alice hangs up: her From tag is the dialog's To tag.
    let bye = format!(
        "BYE sip:bob@{BOB} SIP/2.0\r\nVia: SIP/2.0/UDP {ALICE_2};branch=z9hG4bK-acc2-bye\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{DOMAIN}>;tag=a2\r\nTo: <sip:bob@{DOMAIN}>;tag=bob-acc2\r\n\
         Call-ID: acc2\r\nCSeq: 1 BYE\r\nRoute: {rr}\r\nContent-Length: 0\r\n\r\n"
    );
    h.deliver(ALICE_2, &bye);
    let fwd = h.one(BOB);
    assert_eq!(fwd.method(), Some(Method::Bye));
    h.reply(BOB, answer(&fwd, 200, "bob-acc2", None));

    let lines = h.accounted_lines(dir.path());
    assert_eq!(kinds(&lines), ["ATTEMPT", "ANSWERED", "ENDED", "cdr"]);
    let cdr = &lines[3]["cdr"];
    assert_eq!(cdr["hungUpBy"], "HUNG_UP_BY_CALLEE");
    assert_eq!(
        cdr["call"]["fromTag"], "bob-acc2",
        "the caller's tag, whoever hung up"
    );
    assert_eq!(num(&cdr["billableMs"]), 10_000);
    assert_eq!(
        num(&cdr["postDialDelayMs"]),
        0,
        "answered at once, no ringing"
    );
}

#[test]
fn with_call_events_off_a_call_costs_one_record_its_cdr() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::accounted_with(dir.path(), |c| c.accounting.call_events = false);
    registered(&mut h, &[ALICE_2]);
    h.deliver(BOB, &invite("busy", false));
    assert_eq!(h.one(BOB).status(), Some(100));
    let inv = h.one(ALICE_2);
    h.reply(ALICE_2, answer(&inv, 486, "a3", None));
    assert_eq!(h.one(BOB).status(), Some(486));
    let lines = h.accounted_lines(dir.path());
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["cdr"]["sipCode"], 486, "{lines:#?}");
}

#[test]
fn busy_cancelled_and_refused_calls_get_a_cdr_with_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::accounted(dir.path());
    registered(&mut h, &[ALICE_2]);

    // Busy.
    h.deliver(BOB, &invite("busy", false));
    assert_eq!(h.one(BOB).status(), Some(100));
    let inv = h.one(ALICE_2);
    h.advance(Duration::from_millis(300));
    h.reply(ALICE_2, answer(&inv, 486, "a3", None));
    let got: Vec<Option<u16>> = h.to(BOB).iter().map(SipMessage::status).collect();
    assert_eq!(got, [Some(486)]);
    // Bob acknowledges the 486 (else it is retransmitted while the test goes on).
    h.deliver(
        BOB,
        &format!(
            "ACK sip:alice@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {BOB};branch=z9hG4bK-busy\r\n\
             Max-Forwards: 70\r\nFrom: <sip:bob@{DOMAIN}>;tag=bob-busy\r\nTo: <sip:alice@{DOMAIN}>;tag=a3\r\n\
             Call-ID: busy\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        ),
    );
    assert_eq!(h.one(ALICE_2).method(), Some(Method::Ack));

    // Cancelled while ringing.
    h.deliver(BOB, &invite("gone", false));
    assert_eq!(h.one(BOB).status(), Some(100));
    let inv = h.one(ALICE_2);
    h.reply(ALICE_2, answer(&inv, 180, "a4", None));
    assert_eq!(h.one(BOB).status(), Some(180));
    h.advance(Duration::from_secs(3));
    h.deliver(BOB, &cancel("gone"));
    assert_eq!(h.one(BOB).status(), Some(200));
    let c = h.one(ALICE_2);
    h.reply(ALICE_2, answer(&c, 200, "a4", None));
    h.reply(ALICE_2, answer(&inv, 487, "a4", None));
    assert_eq!(h.one(BOB).status(), Some(487));

    // Refused by the edge itself: nobody registered as carol (480, as for an unknown user:
    // the edge does not tell who exists).
    h.deliver(
        BOB,
        &invite("nobody", false).replace("sip:alice@", "sip:carol@"),
    );
    let refused: Vec<u16> = h.to(BOB).iter().filter_map(SipMessage::status).collect();
    assert_eq!(refused.last().copied(), Some(480), "{refused:?}");

    // Per destination: the busy and the cancelled call went to a registered user, the
    // third was refused before any route (ASR 0 of 3; NER counts busy and cancelled).
    let text = h.metrics_text();
    for line in [
        "sipcluster_call_attempts_total{destination=\"local\"} 2",
        "sipcluster_call_attempts_total{destination=\"unrouted\"} 1",
        "sipcluster_call_failed_total{destination=\"local\",class=\"4xx\",code=\"486\"} 1",
        "sipcluster_call_failed_total{destination=\"local\",class=\"4xx\",code=\"487\"} 1",
        "sipcluster_call_failed_total{destination=\"unrouted\",class=\"4xx\",code=\"480\"} 1",
        "sipcluster_call_post_dial_delay_seconds_count{destination=\"local\"} 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    assert!(!text.contains("sipcluster_call_answered_total"), "{text}");
    let lines = h.accounted_lines(dir.path());
    let cdrs: Vec<&serde_json::Value> = lines.iter().filter_map(|l| l.get("cdr")).collect();
    assert_eq!(cdrs.len(), 3, "{lines:#?}");
    let by_call = |id: &str| {
        *cdrs
            .iter()
            .find(|c| c["call"]["callId"] == id)
            .unwrap_or_else(|| panic!("no CDR for {id}"))
    };
    let busy = by_call("busy");
    assert_eq!(busy["sipCode"], 486);
    assert_eq!(busy["endCause"], "END_CAUSE_FAILURE");
    assert_eq!(busy["sipReason"], "Busy Here");
    assert_eq!(num(&busy["billableMs"]), 0);
    assert_eq!(
        num(&busy["postDialDelayMs"]),
        300,
        "to the final answer: no ringing"
    );
    let gone = by_call("gone");
    assert_eq!(gone["sipCode"], 487);
    assert_eq!(gone["endCause"], "END_CAUSE_CANCEL");
    assert_eq!(gone["hungUpBy"], "HUNG_UP_BY_CALLER");
    assert_eq!(num(&gone["endedAtMs"]) - num(&gone["inviteAtMs"]), 3000);
    let nobody = by_call("nobody");
    assert_eq!(nobody["sipCode"], 480);
    assert_eq!(nobody["endCause"], "END_CAUSE_FAILURE");
    assert_eq!(
        nobody["hungUpBy"], "HUNG_UP_BY_PROXY",
        "the edge's own answer"
    );
    assert_eq!(busy["hungUpBy"], "HUNG_UP_BY_CALLEE", "the callee's answer");
    // Each call: its attempt, its failure, its CDR.
    assert_eq!(
        kinds(&lines).iter().filter(|k| *k == "FAILED").count(),
        3,
        "{:?}",
        kinds(&lines)
    );
}

#[test]
fn the_session_timer_is_inserted_too_short_a_one_refused_and_a_refresh_renews_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::accounted_with(dir.path(), |c| {
        c.timers.session_expires_secs = 1800;
        c.timers.min_se_secs = 90;
    });
    registered(&mut h, &[ALICE_2]);

    // RFC 4028 §8.1: asking for less than our Min-SE gets 422 with it.
    h.deliver(
        BOB,
        &invite("st-short", false).replace(
            "CSeq: 1 INVITE\r\n",
            "CSeq: 1 INVITE\r\nSession-Expires: 60\r\nSupported: timer\r\n",
        ),
    );
    let got = h.to(BOB);
    let refused = got.last().unwrap();
    assert_eq!(refused.status(), Some(422), "{got:?}");
    assert_eq!(header(refused, "Min-SE"), Some("90"));
    assert!(h.to(ALICE_2).is_empty(), "not forwarded");

    // Without one: ours is put on the forwarded INVITE.
    h.deliver(BOB, &invite("st", false));
    assert_eq!(h.one(BOB).status(), Some(100));
    let inv = h.one(ALICE_2);
    assert_eq!(header(&inv, "Session-Expires"), Some("1800"));
    assert_eq!(header(&inv, "Min-SE"), Some("90"));
    let ok = {
        let b = ResponseBuilder::new(&inv, 200)
            .unwrap()
            .to_tag("a-st")
            .header(
                "Record-Route",
                header(&inv, "Record-Route").unwrap().as_bytes().to_vec(),
            )
            .header("Contact", b"<sip:alice@192.0.2.11:5070>".to_vec())
            .header("Session-Expires", b"1800;refresher=uac".to_vec())
            .header("Require", b"timer".to_vec());
        b.build()
    };
    h.reply(ALICE_2, ok);
    let ok = h.one(BOB);
    assert_eq!(ok.status(), Some(200));

    // Bob refreshes with a re-INVITE; its 2xx renews the record.
    let route = header(&ok, "Record-Route").unwrap().to_owned();
    let contact = "sip:alice@192.0.2.11:5070";
    h.deliver(
        BOB,
        &in_dialog(BOB, "st", &ok, "ACK", 1, contact, Some(&route)),
    );
    let reinvite = in_dialog(BOB, "st", &ok, "INVITE", 2, contact, Some(&route)).replace(
        "Content-Length: 0",
        "Session-Expires: 1800;refresher=uac\r\nContent-Length: 0",
    );
    h.deliver(BOB, &reinvite);
    let fwd = h
        .to(ALICE_2)
        .into_iter()
        .find(|m| m.method() == Some(Method::Invite))
        .expect("the re-INVITE forwarded");
    assert_eq!(
        header(&fwd, "Session-Expires"),
        Some("1800;refresher=uac"),
        "a refresh keeps its own interval"
    );
    let b = ResponseBuilder::new(&fwd, 200)
        .unwrap()
        .header("Session-Expires", b"1800;refresher=uac".to_vec());
    h.reply(ALICE_2, b.build());
    assert_eq!(h.to(BOB).last().and_then(SipMessage::status), Some(200));
    let text = h.metrics_text();
    assert!(
        text.contains("sipcluster_accounting_dialogs_refreshed_total 1"),
        "{text}"
    );
    let lines = h.accounted_lines(dir.path());
    assert_eq!(
        kinds(&lines),
        ["ATTEMPT", "ANSWERED"],
        "a 422 is a step of the call (the phone asks again), not a failed call: {:?}",
        kinds(&lines)
    );
}

#[test]
fn the_dispatchers_trace_header_is_not_forwarded() {
    let mut h = Harness::new();
    registered(&mut h, &[ALICE_1]);
    let traced = invite("tr1", false).replace(
        "Content-Length: 0\r\n",
        "X-Sipcluster-Trace: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\
         Content-Length: 0\r\n",
    );
    assert!(traced.contains("X-Sipcluster-Trace"));
    h.deliver(BOB, &traced);
    assert_eq!(h.one(BOB).status(), Some(100));
    let fwd = h.one(ALICE_1);
    assert_forwarded(&fwd, Method::Invite);
    assert_eq!(header(&fwd, "X-Sipcluster-Trace"), None, "for our hop only");
}

//! Redis loses its data under a running cluster (`sipcluster location` + `sipcluster edge`
//! processes, a real redis-server, FLUSHALL): the location service notices the missing
//! provisioning marker and never answers from the empty store, so phones get 503 with
//! Retry-After, never the 403/404 they would take as final.
//!
//! * `on_data_loss = "unready"` (default): REGISTER and INVITE get 503 + Retry-After from
//!   the first request after the flush, `/readyz` is 503 naming the loss, until an
//!   operator restarts a location replica; then REGISTER and calls work again.
//! * `on_data_loss = "reprovision"`: the users file is provisioned again at once and a
//!   user the edge had never seen registers within a few seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::gateway::Gateway;
use common::redis::{Redis, cli, prefix};
use common::tcp_ua::header;
use common::{RawSip, Server, http_get, status, workdir};

const DOMAIN: &str = "sipcluster.local";

/// A phone over UDP that answers digest challenges (MD5, qop=auth).
struct Phone {
    raw: RawSip,
    user: &'static str,
    password: &'static str,
    cseq: u32,
    n: u32,
}

impl Phone {
    fn new(edge: SocketAddr, user: &'static str, password: &'static str) -> Phone {
        Phone {
            raw: RawSip::new(edge),
            user,
            password,
            cseq: 0,
            n: 0,
        }
    }

    /// The Authorization value answering `challenge` for `method` `uri`.
    fn answer(&self, challenge: &str, method: &str, uri: &str) -> String {
        common::tcp_ua::digest_value(challenge, self.user, self.password, method, uri)
    }

    /// REGISTER `contact` (answering a 401 once): the final response, or "" on silence.
    fn register(&mut self, contact: SocketAddr) -> String {
        let local = self.raw.local();
        let uri = format!("sip:{DOMAIN}");
        let mut auth = String::new();
        for _ in 0..2 {
            self.cseq += 1;
            self.n += 1;
            let req = format!(
                "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK-dl-{}-{}\r\n\
                 From: <sip:{}@{DOMAIN}>;tag=r{}\r\nTo: <sip:{}@{DOMAIN}>\r\n\
                 Call-ID: dl-reg-{}@{local}\r\nCSeq: {} REGISTER\r\nContact: <sip:{}@{contact}>\r\n\
                 {auth}Expires: 600\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                self.user, self.n, self.user, self.user, self.user, self.user, self.cseq, self.user
            );
            let r = self.raw.request(req.as_bytes()).unwrap_or_default();
            if status(&r) != 401 || !auth.is_empty() {
                return r;
            }
            let challenge = header(&r, "WWW-Authenticate")[0].to_owned();
            auth = format!(
                "Authorization: {}\r\n",
                self.answer(&challenge, "REGISTER", &uri)
            );
        }
        unreachable!("the loop returns")
    }

    /// INVITE `callee` (answering a 407 once, ACKing failures): the final response.
    fn invite(&mut self, callee: &str) -> String {
        let local = self.raw.local();
        let uri = format!("sip:{callee}@{DOMAIN}");
        self.n += 1;
        let call = self.n;
        let mut auth = String::new();
        for cseq in 1..=2 {
            let branch = format!("z9hG4bK-dl-inv-{}-{call}-{cseq}", self.user);
            let head = |method: &str, to: &str, extra: &str| {
                format!(
                    "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch={branch}\r\n\
                     From: <sip:{}@{DOMAIN}>;tag=i{call}\r\nTo: {to}\r\nCall-ID: dl-inv-{call}@{local}\r\n\
                     CSeq: {cseq} {method}\r\n{extra}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                    self.user
                )
            };
            let req = head(
                "INVITE",
                &format!("<{uri}>"),
                &format!("Contact: <sip:{}@{local}>\r\n{auth}", self.user),
            );
            let r = self.raw.request(req.as_bytes()).unwrap_or_default();
            let code = status(&r);
            if code >= 300 {
                // ACK for a failure (§17.1.1.3), so the edge stops retransmitting it.
                let to = header(&r, "To")
                    .first()
                    .copied()
                    .unwrap_or_default()
                    .to_owned();
                self.raw.send(head("ACK", &to, "").as_bytes());
            }
            if code != 407 || !auth.is_empty() {
                return r;
            }
            let challenge = header(&r, "Proxy-Authenticate")[0].to_owned();
            auth = format!(
                "Proxy-Authorization: {}\r\n",
                self.answer(&challenge, "INVITE", &uri)
            );
        }
        unreachable!("the loop returns")
    }
}

/// 503 with a Retry-After, or the response in the panic message.
fn assert_503(r: &str, what: &str) {
    assert_eq!(status(r), 503, "{what}: {r}");
    assert!(
        !header(r, "Retry-After").is_empty(),
        "{what}: no Retry-After: {r}"
    );
}

fn location(dir: &Path, name: &str, redis: &Redis, test: &str, extra: &[&str]) -> Server {
    let mut args = redis.location_args(&prefix(test));
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::location(dir, name, &args)
}

/// Wait (bounded) until `/readyz` of `s` answers `code`; its body.
fn readyz_becomes(s: &Server, code: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some((c, body)) = http_get(s.metrics, "/readyz")
            && c == code
        {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{}: /readyz not {code} in {within:?}",
            s.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn redis_flushed_unready_answers_503_until_a_location_replica_restarts() {
    let test = "data_loss_unready";
    let dir = workdir(test);
    let redis = Redis::own_standalone(&dir);
    let loc = location(&dir, "location", &redis, test, &[]);
    let edge = Server::edge(&dir, "edge", loc.sip, &[]);
    let bob_phone = Gateway::spawn(486);
    let mut bob = Phone::new(edge.sip, "bob", "bob-secret");
    let mut alice = Phone::new(edge.sip, "alice", "alice-secret");
    let mut carol = Phone::new(edge.sip, "carol", "carol-secret");
    assert_eq!(status(&bob.register(bob_phone.addr)), 200);
    // The call reaches bob's phone, which is busy.
    assert_eq!(status(&alice.invite("bob")), 486);

    assert_eq!(cli(redis.port(), &["FLUSHALL"]).trim(), "OK");
    // At once, before any periodic check: bob's binding and carol's credentials are
    // gone, and "not found" is not believed.
    assert_503(&alice.invite("bob"), "INVITE right after the flush");
    assert_503(
        &carol.register(bob_phone.addr),
        "REGISTER of a user the edge never saw",
    );
    let body = readyz_becomes(&loc, 503, Duration::from_secs(3));
    assert!(body.contains("the store lost its data"), "{body}");
    // Until an operator acts: every REGISTER and INVITE is 503 + Retry-After (bounded:
    // ten rounds, ~3 s).
    for round in 0..10 {
        assert_503(
            &bob.register(bob_phone.addr),
            &format!("REGISTER, round {round}"),
        );
        assert_503(&alice.invite("bob"), &format!("INVITE, round {round}"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(loc.metric("sipcluster_location_data_intact"), 0.0);
    assert_eq!(loc.metric("sipcluster_location_data_losses_total"), 1.0);
    assert!(
        loc.log().contains("the store lost its data")
            && loc.log().contains("restart a location replica"),
        "{}",
        loc.log()
    );
    // The phone saw only 503s: no 403 or 404 anywhere in the edge's counts.
    for code in ["403", "404", "480"] {
        assert_eq!(
            edge.metric(&format!(
                "sipcluster_sip_responses_total{{class=\"4xx\",code=\"{code}\"}}"
            )),
            0.0,
            "{code} sent; {}",
            edge.scrape()
        );
    }

    // The operator restarts a location replica (here: starts one more): it provisions
    // the users file and writes the marker, and the first replica serves again.
    let _replica = location(&dir, "location-2", &redis, test, &[]);
    readyz_becomes(&loc, 200, Duration::from_secs(3));
    assert_eq!(loc.metric("sipcluster_location_data_intact"), 1.0);
    assert_eq!(status(&bob.register(bob_phone.addr)), 200);
    assert_eq!(status(&carol.register(bob_phone.addr)), 200);
    assert_eq!(status(&alice.invite("bob")), 486);
}

#[test]
fn redis_flushed_reprovision_registers_again_within_seconds() {
    let test = "data_loss_reprovision";
    let dir = workdir(test);
    let redis = Redis::own_standalone(&dir);
    let loc = location(
        &dir,
        "location",
        &redis,
        test,
        &["--on-data-loss", "reprovision"],
    );
    let edge = Server::edge(&dir, "edge", loc.sip, &[]);
    let bob_phone = Gateway::spawn(486);
    let mut bob = Phone::new(edge.sip, "bob", "bob-secret");
    let mut alice = Phone::new(edge.sip, "alice", "alice-secret");
    let mut dave = Phone::new(edge.sip, "dave", "dave-secret");
    assert_eq!(status(&bob.register(bob_phone.addr)), 200);

    assert_eq!(cli(redis.port(), &["FLUSHALL"]).trim(), "OK");
    let flushed = Instant::now();
    // A user whose credentials no edge cached: 503 while the store is refilled, then 200
    // (bounded: 10 s).
    let mut codes = Vec::new();
    loop {
        let r = dave.register(bob_phone.addr);
        codes.push(status(&r));
        if status(&r) == 200 {
            break;
        }
        assert_503(&r, "REGISTER while reprovisioning");
        assert!(flushed.elapsed() < Duration::from_secs(10), "{codes:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = flushed.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "registered {took:?} after the flush: {codes:?}"
    );
    // bob registers again (re-authenticating) and is called.
    assert_eq!(status(&bob.register(bob_phone.addr)), 200);
    assert_eq!(status(&alice.invite("bob")), 486);
    assert_eq!(loc.metric("sipcluster_location_data_losses_total"), 1.0);
    assert_eq!(loc.metric("sipcluster_location_data_intact"), 1.0);
    assert_eq!(http_get(loc.metrics, "/readyz").map(|r| r.0), Some(200));
    assert!(
        loc.log().contains("reprovisioned from the users file"),
        "{}",
        loc.log()
    );
    for code in ["403", "404", "480"] {
        assert_eq!(
            edge.metric(&format!(
                "sipcluster_sip_responses_total{{class=\"4xx\",code=\"{code}\"}}"
            )),
            0.0,
            "{code} sent; {}",
            edge.scrape()
        );
    }
    eprintln!("reprovisioned: dave registered {took:?} after FLUSHALL; codes {codes:?}");
}

//! Cluster mode end to end: `sipcluster location` over a real Redis (standalone and a
//! 3-master cluster), two `sipcluster edge` processes, SIPp and a raw TCP user agent.
//!
//! * a user registered through edge A is called through edge B (Redis, Redis Cluster);
//! * a user connected over TCP to edge A is reached through A's connection when the call
//!   arrives at B (signed flow token as Route);
//! * the location service killed, then Redis killed: REGISTER and INVITE get 503 with
//!   Retry-After within the deadline; service resumes by itself when they return;
//! * `sipcluster users` provisions through the location service, storing only HA1s.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::redis::{Redis, RedisProc, cli, prefix};
use common::tcp_ua::{TcpUa, header};
use common::{Proto, RawSip, Server, Sipp, free_addr, status, workdir};

const DOMAIN: &str = "sipcluster.local";

fn register(edge: &Server, dir: &Path, user: &str, password: &str, contact_port: u16) {
    Sipp::new(&format!("register-{user}"), "register.xml", Proto::Udp)
        .inf(&format!("{user};{DOMAIN};;127.0.0.1:{contact_port};3600"))
        .auth(user, password, DOMAIN)
        .to(edge.sip)
        .run(dir)
        .assert_ok(1, "REGISTER with digest auth");
}

fn caller(edge: &Server, callee: &str) -> Sipp {
    Sipp::new("uac", "uac_call.xml", Proto::Udp)
        .inf(&format!("alice;{DOMAIN};alice-secret;{callee}"))
        .auth("alice", "alice-secret", &format!("{callee}@{DOMAIN}"))
        .to(edge.sip)
}

fn location_for(dir: &Path, redis: &Redis, test: &str) -> Server {
    let args = redis.location_args(&prefix(test));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::location(dir, "location", &args)
}

fn call_across_edges(test: &str, redis: Redis) {
    let dir = workdir(test);
    let loc = location_for(&dir, &redis, test);
    let a = Server::edge(&dir, "edge-a", loc.sip, &[]);
    let b = Server::edge(&dir, "edge-b", loc.sip, &[]);
    let uas = Sipp::new("uas", "uas_answer.xml", Proto::Udp);
    register(&a, &dir, "bob", "bob-secret", uas.port);
    let callee = uas.spawn(&dir);
    std::thread::sleep(Duration::from_millis(300));
    let out = caller(&b, "bob").run(&dir);
    let uas_out = callee.wait();
    out.assert_ok(1, "caller via edge B");
    uas_out.assert_ok(1, "callee registered via edge A");
    let calls = |m: &str| {
        loc.metric(&format!(
            "sipcluster_location_grpc_calls_total{{method=\"{m}\",code=\"ok\"}}"
        ))
    };
    assert!(
        loc.metric("sipcluster_location_registers_total{result=\"ok\"}") >= 1.0
            && calls("Lookup") >= 1.0,
        "{}",
        loc.scrape()
    );
    // Every Redis round trip is timed (the lookup's script, the REGISTER's transaction)
    // and none failed.
    let redis_trips = loc
        .metric("sipcluster_location_redis_duration_seconds_count{op=\"pipeline\"}")
        + loc.metric("sipcluster_location_redis_duration_seconds_count{op=\"command\"}");
    assert!(redis_trips >= 2.0, "{}", loc.scrape());
    assert_eq!(
        loc.metric("sipcluster_location_redis_errors_total{op=\"pipeline\"}")
            + loc.metric("sipcluster_location_redis_errors_total{op=\"command\"}"),
        0.0,
        "{}",
        loc.scrape()
    );
    // Edge B found bob only through the shared store.
    assert_eq!(
        b.metric("sipcluster_sip_requests_total{method=\"REGISTER\"}"),
        0.0
    );
}

#[test]
fn call_registered_on_one_edge_placed_on_another_redis() {
    let dir = workdir("cross_edge_redis_setup");
    call_across_edges("cross_edge_redis", Redis::standalone(&dir));
}

#[test]
fn call_registered_on_one_edge_placed_on_another_redis_cluster() {
    let dir = workdir("cross_edge_cluster_setup");
    call_across_edges("cross_edge_cluster", Redis::cluster(&dir));
}

#[test]
fn tcp_client_on_edge_a_is_called_through_edge_b() {
    let dir = workdir("tcp_flow_cross_edge");
    let redis = Redis::standalone(&dir);
    let loc = location_for(&dir, &redis, "tcp_flow_cross_edge");
    let a = Server::edge(&dir, "edge-a", loc.sip, &[]);
    let b = Server::edge(&dir, "edge-b", loc.sip, &[]);
    let mut ua = TcpUa::connect(a.sip);
    // A contact nobody can reach (a private address behind a NAT): only the connection
    // to edge A leads to this UA.
    ua.register(
        "bob",
        "bob-secret",
        "sip:bob@10.255.255.1:5999;transport=tcp",
    );
    let callee = std::thread::spawn(move || ua.answer_call(Duration::from_secs(20)));
    let out = caller(&b, "bob").run(&dir);
    let seen = callee.join().expect("UA thread");
    out.assert_ok(1, "caller via edge B");
    assert_eq!(seen, ["INVITE", "ACK", "BYE"], "what the TCP UA received");
    // The INVITE went B → A (flow token) → the connection.
    assert!(a.metric("sipcluster_sip_requests_total{method=\"INVITE\"}") >= 1.0);
}

fn reg_request(local: SocketAddr, cseq: u32) -> String {
    format!(
        "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK-down-{cseq}\r\n\
         From: <sip:bob@{DOMAIN}>;tag=t1\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: down-test@{local}\r\n\
         CSeq: {cseq} REGISTER\r\nContact: <sip:bob@127.0.0.1:6999>\r\nMax-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn invite_request(local: SocketAddr, n: u32) -> String {
    format!(
        "INVITE sip:bob@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};rport;branch=z9hG4bK-inv-{n}\r\n\
         From: <sip:alice@{DOMAIN}>;tag=a{n}\r\nTo: <sip:bob@{DOMAIN}>\r\nCall-ID: inv-{n}@{local}\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:alice@{local}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Send REGISTERs (rising CSeq from `cseq`) until one gets `want`, for up to `within`.
fn register_until(raw: &RawSip, cseq: &mut u32, want: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        *cseq += 1;
        let r = raw
            .request(reg_request(raw.local(), *cseq).as_bytes())
            .unwrap_or_default();
        if status(&r) == want {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no {want} in {within:?}; last: {r}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// 503 with Retry-After, quickly (the edge's deadline is 500 ms, one retry).
fn assert_fast_503(raw: &RawSip, msg: &str, what: &str) {
    let t = Instant::now();
    let r = raw.request(msg.as_bytes()).unwrap_or_default();
    let took = t.elapsed();
    assert_eq!(status(&r), 503, "{what}: {r}");
    assert!(
        !header(&r, "Retry-After").is_empty(),
        "{what}: no Retry-After: {r}"
    );
    assert!(
        took < Duration::from_millis(1500),
        "{what}: 503 took {took:?}"
    );
}

#[test]
fn location_service_down_503_then_recovers() {
    let dir = workdir("location_down");
    let redis = Redis::standalone(&dir);
    let (grpc, metrics) = (free_addr(), free_addr());
    let args = redis.location_args(&prefix("location_down"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let loc = Server::location_at(&dir, "location", grpc, metrics, &args);
    let edge = Server::edge(&dir, "edge", grpc, &["--no-auth"]);
    let raw = RawSip::new(edge.sip);
    let mut cseq = 0;
    register_until(&raw, &mut cseq, 200, Duration::from_secs(5));

    loc.kill();
    cseq += 1;
    assert_fast_503(&raw, &reg_request(raw.local(), cseq), "REGISTER");
    // bob is registered, but nobody can tell now: 503, not 404/480.
    assert_fast_503(
        &raw,
        &invite_request(raw.local(), 1),
        "INVITE to a local user",
    );
    // The edge kept working meanwhile: OPTIONS to itself needs no store.
    let opts = format!(
        "OPTIONS sip:{} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK-o1\r\nFrom: <sip:x@{DOMAIN}>;tag=o\r\n\
         To: <sip:{}>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        edge.sip,
        raw.local(),
        edge.sip
    );
    assert_eq!(
        status(&raw.request(opts.as_bytes()).unwrap_or_default()),
        200
    );
    assert!(
        edge.metric("sipcluster_sip_store_unavailable_total") >= 2.0,
        "{}",
        edge.scrape()
    );
    assert!(
        edge.log().contains("location service call failed"),
        "{}",
        edge.log()
    );

    // Back on the same address: the edge reconnects on its own.
    let _loc = Server::location_at(&dir, "location-2", grpc, metrics, &args);
    register_until(&raw, &mut cseq, 200, Duration::from_secs(10));
}

#[test]
fn redis_down_503_then_recovers() {
    let dir = workdir("redis_down");
    let mut redis = Redis::own_standalone(&dir);
    let port = redis.port();
    // Redis comes back empty (it keeps nothing): reprovisioning is what lets the service
    // resume on its own (with the default, `unready`, it would wait for an operator; see
    // data_loss.rs).
    let mut args = redis.location_args(&prefix("redis_down"));
    args.extend(["--on-data-loss".to_owned(), "reprovision".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let loc = Server::location(&dir, "location", &args);
    let edge = Server::edge(&dir, "edge", loc.sip, &["--no-auth"]);
    let raw = RawSip::new(edge.sip);
    let mut cseq = 0;
    register_until(&raw, &mut cseq, 200, Duration::from_secs(5));

    redis.procs[0].kill();
    cseq += 1;
    assert_fast_503(&raw, &reg_request(raw.local(), cseq), "REGISTER");
    assert_fast_503(
        &raw,
        &invite_request(raw.local(), 2),
        "INVITE to a local user",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while loc.metric("sipcluster_location_backend_up") != 0.0 {
        assert!(Instant::now() < deadline, "backend_up stayed 1");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        loc.metric("sipcluster_location_registers_total{result=\"unavailable\"}") >= 1.0,
        "{}",
        loc.scrape()
    );
    assert!(loc.log().contains("backend unavailable"), "{}", loc.log());
    // Redis's own errors are counted apart from the gRPC calls they failed.
    assert!(
        loc.metric("sipcluster_location_redis_errors_total{op=\"pipeline\"}")
            + loc.metric("sipcluster_location_redis_errors_total{op=\"command\"}")
            >= 1.0,
        "{}",
        loc.scrape()
    );

    // Redis returns (empty: it kept nothing): service resumes without a restart.
    redis.procs[0] = RedisProc::start(&dir, port, false);
    register_until(&raw, &mut cseq, 200, Duration::from_secs(15));
    let deadline = Instant::now() + Duration::from_secs(5);
    while loc.metric("sipcluster_location_backend_up") != 1.0 {
        assert!(Instant::now() < deadline, "backend_up did not return to 1");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn users_cli_provisions_through_the_location_service() {
    let dir = workdir("users_cli");
    let redis = Redis::standalone(&dir);
    let pfx = prefix("users_cli");
    let loc = location_for(&dir, &redis, "users_cli");
    let edge = Server::edge(&dir, "edge", loc.sip, &[]);
    let users = |args: &[&str], stdin: &str| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sipcluster"))
            .args(["users", "--location", &format!("http://{}", loc.sip)])
            .args(["--token-file", &loc.tokens.admin_str()])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sipcluster users");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write password");
        let o = c.wait_with_output().expect("wait");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let (ok, out) = users(&["add", "erin", "--realm", DOMAIN], "erin-pass-4711\n");
    assert!(ok && out.contains("added erin@sipcluster.local"), "{out}");
    let (ok, out) = users(&["list", "--realm", DOMAIN], "");
    assert!(ok, "{out}");
    let listed: Vec<&str> = out.lines().collect();
    assert_eq!(listed, ["alice", "bob", "carol", "dave", "erin"]);

    // Only HA1s reached Redis.
    let port = redis.port();
    let keys = cli(port, &["--scan", "--pattern", &format!("{pfx}:user:*")]);
    assert!(keys.contains("erin@sipcluster.local"), "{keys}");
    for k in keys.lines() {
        let dump = cli(port, &["HGETALL", k]);
        assert!(
            !dump.contains("erin-pass-4711"),
            "plaintext password stored in {k}"
        );
    }
    // The new user registers through an edge.
    register(&edge, &dir, "erin", "erin-pass-4711", 6998);

    let (ok, out) = users(&["remove", "erin", "--realm", DOMAIN], "");
    assert!(ok && out.contains("removed erin@sipcluster.local"), "{out}");
    let (ok, out) = users(&["remove", "erin", "--realm", DOMAIN], "");
    assert!(
        !ok && out.contains("no user erin@sipcluster.local"),
        "{out}"
    );
    let (_, out) = users(&["list", "--realm", DOMAIN], "");
    assert!(!out.contains("erin"), "{out}");
}

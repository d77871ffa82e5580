//! The dispatcher end to end, with real processes: `sipcluster dispatcher` in front of
//! three `sipcluster edge` (no Record-Route of their own), `sipcluster location` over a
//! real Redis, SIPp as caller and callee, a raw TCP user agent.
//!
//! * calls spread over every edge; registrations and calls go through the dispatcher;
//! * an edge killed with SIGKILL during a 200 calls/s run: at most 0.5 % of call setups
//!   fail, every established call completes its BYE through a live edge, REGISTER keeps
//!   working; the edge restarted rejoins;
//! * a TCP client registered through the dispatcher stays reachable while every edge is
//!   restarted in turn (its connection is the dispatcher's, not an edge's);
//! * the admin CLI lists targets, drains and re-weights.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::gateway::Gateway;
use common::redis::{Redis, prefix};
use common::tcp_ua::TcpUa;
use common::{Proto, Server, Sipp, free_low_port, workdir};

const DOMAIN: &str = "sipcluster.local";
/// Edges drain for a second on SIGTERM (probes see 503 meanwhile).
const EDGE_ARGS: &[&str] = &["--drain-secs", "1"];

/// The tests of this file each run five processes and SIPp; on two cores they run one at
/// a time, so that the 200 calls/s run measures the cluster, not the other tests.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

struct Cluster {
    _redis: Redis,
    loc: Server,
    edges: Vec<Option<Server>>,
    edge_addrs: Vec<SocketAddr>,
    disp: Server,
    admin: SocketAddr,
    dir: std::path::PathBuf,
}

impl Cluster {
    fn start(test: &str, n: usize) -> Cluster {
        let dir = workdir(test);
        let redis = Redis::standalone(&dir);
        let args = redis.location_args(&prefix(test));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let loc = Server::location(&dir, "location", &args);
        let edge_addrs: Vec<SocketAddr> = (0..n)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_low_port())))
            .collect();
        let edges = edge_addrs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                Some(Server::edge_at(
                    &dir,
                    &format!("edge-{i}"),
                    *a,
                    loc.sip,
                    EDGE_ARGS,
                ))
            })
            .collect();
        let (disp, admin) = Server::dispatcher(&dir, "dispatcher", &edge_addrs, &[]);
        let c = Cluster {
            _redis: redis,
            loc,
            edges,
            edge_addrs,
            disp,
            admin,
            dir,
        };
        c.wait_up(n, Duration::from_secs(10));
        c
    }

    /// Edges the dispatcher reports up (metric), waiting until there are `n`.
    fn wait_up(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let up = self.up_count();
            if up == n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{up} edges up, want {n}:\n{}",
                self.disp.scrape()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn up_count(&self) -> usize {
        self.disp
            .scrape()
            .lines()
            .filter(|l| l.starts_with("sipcluster_dispatcher_target_up{") && l.ends_with(" 1"))
            .count()
    }

    fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_sipcluster"))
            .args([
                "dispatcher-admin",
                "--admin",
                &format!("http://{}", self.admin),
                "--token-file",
                &self.disp.tokens.admin_str(),
            ])
            .args(args)
            .output()
            .expect("run dispatcher-admin");
        assert!(
            out.status.success(),
            "dispatcher-admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn edge_invites(&self, i: usize) -> f64 {
        self.edges[i].as_ref().map_or(0.0, |e| {
            e.metric("sipcluster_sip_requests_total{method=\"INVITE\"}")
        })
    }

    fn restart_edge(&mut self, i: usize) {
        let name = format!("edge-{i}-again");
        self.edges[i] = Some(Server::edge_at(
            &self.dir,
            &name,
            self.edge_addrs[i],
            self.loc.sip,
            EDGE_ARGS,
        ));
    }
}

/// The sum of every sample whose name starts with `prefix`.
fn register(to: SocketAddr, dir: &Path, user: &str, password: &str, contact_port: u16) {
    Sipp::new(&format!("register-{user}"), "register.xml", Proto::Udp)
        .inf(&format!("{user};{DOMAIN};;127.0.0.1:{contact_port};3600"))
        .auth(user, password, DOMAIN)
        .to(to)
        .run(dir)
        .assert_ok(1, "REGISTER with digest auth through the dispatcher");
}

/// The caller scenario with calls lasting `hold_ms` between ACK and BYE.
fn caller(to: SocketAddr, dir: &Path, calls: u32, rate: u32, hold_ms: u32) -> Sipp {
    let mut s = Sipp::new("uac", "uac_call.xml", Proto::Udp)
        .inf(&format!("alice;{DOMAIN};alice-secret;bob"))
        .auth("alice", "alice-secret", &format!("bob@{DOMAIN}"))
        .to(to)
        .calls(calls)
        .rate(rate)
        .timeout(120)
        .hold(dir, hold_ms);
    s.extra.extend(["-buff_size".into(), "4194304".into()]);
    s
}

fn callee(calls: u32) -> Sipp {
    let mut s = Sipp::new("uas", "uas_answer.xml", Proto::Udp)
        .calls(calls)
        .timeout(120);
    s.extra.extend(["-buff_size".into(), "4194304".into()]);
    s
}

#[test]
fn calls_spread_over_every_edge_through_the_dispatcher() {
    let _serial = serial();
    let c = Cluster::start("dispatcher_spread", 3);
    let uas = callee(60);
    register(c.disp.sip, &c.dir, "bob", "bob-secret", uas.port);
    let running = uas.spawn(&c.dir);
    std::thread::sleep(Duration::from_millis(300));
    let out = caller(c.disp.sip, &c.dir, 60, 30, 100).run(&c.dir);
    let uas_out = running.wait();
    out.assert_ok(60, "60 calls through the dispatcher");
    uas_out.assert_ok(60, "callee registered through the dispatcher");
    // Each edge took a share of the INVITEs (each call: challenged INVITE + INVITE).
    let shares: Vec<f64> = (0..3).map(|i| c.edge_invites(i)).collect();
    assert!(
        shares.iter().all(|s| *s >= 10.0),
        "INVITEs per edge: {shares:?}"
    );
    assert!(
        (shares.iter().sum::<f64>() - 120.0).abs() < 1.0,
        "two INVITEs per call in all: {shares:?}"
    );
    let targets = c.admin(&["targets"]);
    assert_eq!(targets.lines().count(), 3, "{targets}");
    assert!(targets.lines().all(|l| l.contains(" up")), "{targets}");
    let sets = c.admin(&["sets"]);
    assert!(
        sets.contains("edge") && sets.contains("targets=3 up=3"),
        "{sets}"
    );

    // Operator drains edge 0 and gives edge 1 weight 0: new calls all go to edge 2.
    let id0 = c.edge_addrs[0].to_string();
    let id1 = c.edge_addrs[1].to_string();
    assert!(c.admin(&["drain", &id0]).contains("draining"));
    assert!(c.admin(&["weight", &id1, "0"]).contains("weight=0"));
    let before: Vec<f64> = (0..3).map(|i| c.edge_invites(i)).collect();
    let uas = callee(20);
    register(c.disp.sip, &c.dir, "bob", "bob-secret", uas.port);
    let running = uas.spawn(&c.dir);
    std::thread::sleep(Duration::from_millis(300));
    caller(c.disp.sip, &c.dir, 20, 20, 50)
        .run(&c.dir)
        .assert_ok(20, "20 calls with edge 0 drained, edge 1 at weight 0");
    running.wait().assert_ok(20, "callee");
    let after: Vec<f64> = (0..3).map(|i| c.edge_invites(i)).collect();
    assert_eq!(after[0], before[0], "drained edge got no new dialog");
    assert_eq!(after[1], before[1], "weight-0 edge got no new dialog");
    assert_eq!(after[2] - before[2], 40.0, "edge 2 took them all");
    assert!(!c.admin(&["undrain", &id0]).contains("draining"));
    let sets = c.admin(&["sets"]);
    assert!(sets.contains("targets=3 up=3"), "{sets}");
    // Unknown target: the CLI fails with a message.
    let out = Command::new(env!("CARGO_BIN_EXE_sipcluster"))
        .args([
            "dispatcher-admin",
            "--admin",
            &format!("http://{}", c.admin),
            "--token-file",
            &c.disp.tokens.admin_str(),
            "drain",
            "nope",
        ])
        .output()
        .expect("admin");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no target"));
}

#[test]
fn dispatcher_drains_on_sigterm_and_keeps_relaying() {
    let _serial = serial();
    let c = Cluster::start("dispatcher_drain", 1);
    let Cluster { disp, dir, .. } = c;
    let (sip, metrics) = (disp.sip, disp.metrics);
    let stopping = std::thread::spawn(move || disp.terminate());
    // Not ready at once (load balancers stop sending), OPTIONS say 503 ...
    let deadline = Instant::now() + Duration::from_millis(800);
    while common::http_get(metrics, "/readyz").is_some_and(|(code, _)| code == 200) {
        assert!(Instant::now() < deadline, "still ready while draining");
        std::thread::sleep(Duration::from_millis(20));
    }
    let raw = common::RawSip::new(sip);
    let l = raw.local();
    let opt = format!(
        "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKdr1\r\nMax-Forwards: 70\r\n\
         From: <sip:p@example.org>;tag=1\r\nTo: <sip:{sip}>\r\nCall-ID: dr1\r\nCSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let r = raw.request(opt.as_bytes()).expect("OPTIONS answered");
    assert_eq!(common::status(&r), 503, "{r}");
    // ... and a REGISTER during the drain is still relayed.
    register(sip, &dir, "bob", "bob-secret", 5999);
    let status = stopping.join().expect("terminate");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn edge_killed_during_200_calls_per_second_loses_almost_nothing() {
    let _serial = serial();
    let mut c = Cluster::start("dispatcher_kill_edge", 3);
    const CALLS: u32 = 2000;
    let uas = callee(CALLS);
    register(c.disp.sip, &c.dir, "bob", "bob-secret", uas.port);
    let running_uas = uas.spawn(&c.dir);
    std::thread::sleep(Duration::from_millis(300));
    // 200 calls/s for 10 s, each held 2 s: ~400 established calls at any time.
    // A UA gives up on a call that never gets an answer. SIPp has no such timer of its
    // own, so an INVITE that died with the edge after its 100 Trying (the edge had not
    // forwarded it yet; nothing can resend it without risking a duplicate at the callee)
    // would hang the run instead of counting as the failed setup it is.
    let mut caller = caller(c.disp.sip, &c.dir, CALLS, 200, 2000);
    caller
        .extra
        .extend(["-recv_timeout".into(), "16000".into()]);
    let running = caller.spawn(&c.dir);
    std::thread::sleep(Duration::from_secs(3));
    let before = c.edge_invites(1);
    assert!(before > 50.0, "edge 1 was taking calls: {before}");
    c.edges[1].take().expect("edge 1").kill();
    // Registrations keep working meanwhile (bob's binding lives in Redis, its Path names
    // the dispatcher).
    std::thread::sleep(Duration::from_millis(500));
    register(c.disp.sip, &c.dir, "carol", "carol-secret", 5999);
    let out = running.wait();
    // A call lost with the edge leaves the callee waiting for it: it has seen all it will.
    let uas_out = running_uas.wait_at_most(Duration::from_secs(3));
    let failed = out.failed;
    assert!(
        out.successful + out.failed == u64::from(CALLS),
        "every call accounted for: {out:?}"
    );
    // At most 0.5 % failures, setups and BYEs together.
    assert!(
        failed * 200 <= u64::from(CALLS),
        "{failed} of {CALLS} calls failed (> 0.5 %): {}\n{}",
        out.errors,
        c.disp.scrape()
    );
    eprintln!(
        "edge killed at 200 calls/s: {} ok, {failed} failed; callee saw {} ok / {} failed; failovers {}, responses rescued past the dead edge {}",
        out.successful,
        uas_out.successful,
        uas_out.failed,
        c.disp.metric_sum("sipcluster_dispatcher_failovers_total{"),
        c.disp
            .metric("sipcluster_dispatcher_responses_rescued_total")
    );
    // The edge comes back on its address and rejoins.
    c.wait_up(2, Duration::from_secs(5));
    c.restart_edge(1);
    c.wait_up(3, Duration::from_secs(10));
}

#[test]
fn tcp_client_stays_reachable_while_every_edge_restarts() {
    let _serial = serial();
    let mut c = Cluster::start("dispatcher_rolling_restart", 3);
    let mut ua = TcpUa::connect(c.disp.sip);
    // A contact nobody can reach: only the connection the dispatcher holds leads to it.
    ua.register(
        "bob",
        "bob-secret",
        "sip:bob@10.255.255.1:5999;transport=tcp",
    );
    let ua_port = ua.local().port();
    let mut ua = Some(ua);
    for i in 0..3 {
        // A graceful restart: SIGTERM, the edge answers probes 503 and drains, exits.
        let edge = c.edges[i].take().expect("edge");
        let stopping = std::thread::spawn(move || edge.terminate());
        // While it drains, its probes say 503 and it gets no new dialogs.
        let deadline = Instant::now() + Duration::from_secs(1);
        while c.up_count() != 2 {
            assert!(
                Instant::now() < deadline,
                "draining edge {i} still takes new dialogs"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = stopping.join().expect("terminate");
        assert!(status.success(), "edge {i} exit status {status}");
        // Called while edge i is away ...
        ua = Some(call_tcp_ua(
            &c,
            ua.take().expect("ua"),
            &format!("edge {i} down"),
        ));
        c.restart_edge(i);
        c.wait_up(3, Duration::from_secs(10));
        // ... and after it is back.
        ua = Some(call_tcp_ua(
            &c,
            ua.take().expect("ua"),
            &format!("edge {i} back"),
        ));
    }
    let ua = ua.expect("ua");
    assert_eq!(ua.local().port(), ua_port, "one connection all along");
    assert_eq!(c.disp.metric("sipcluster_dispatcher_flows"), 1.0);
}

fn call_tcp_ua(c: &Cluster, mut ua: TcpUa, what: &str) -> TcpUa {
    let callee = std::thread::spawn(move || {
        let seen = ua.answer_call(Duration::from_secs(20));
        (ua, seen)
    });
    let out = caller(c.disp.sip, &c.dir, 1, 1, 100).run(&c.dir);
    let (ua, seen) = callee.join().expect("UA thread");
    out.assert_ok(1, what);
    assert_eq!(
        seen,
        ["INVITE", "ACK", "BYE"],
        "{what}: what the TCP UA received"
    );
    ua
}

#[test]
fn outbound_calls_go_to_a_destination_set_with_priority_failover() {
    let _serial = serial();
    let dir = workdir("dispatcher_destination_set");
    let gw1 = Gateway::spawn(503);
    let gw2 = Gateway::spawn(200);
    let internal = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let disp_cfg = dir.join("dispatcher.toml");
    std::fs::write(
        &disp_cfg,
        format!(
            "[[sets]]\nname = \"carrier\"\nalgorithm = \"priority\"\ntargets = [\n  \
             {{ address = \"{}\", priority = 1 }},\n  {{ address = \"{}\", priority = 2 }},\n]\n",
            gw1.addr, gw2.addr
        ),
    )
    .expect("dispatcher config");
    let edge_cfg = dir.join("edge.toml");
    std::fs::write(
        &edge_cfg,
        format!(
            "[outbound]\ndispatcher = \"sip:{internal}\"\n[[outbound.rules]]\nprefix = \"+1\"\nset = \"carrier\"\n"
        ),
    )
    .expect("edge config");
    let (_loc, _edge, disp, admin) = Server::one_edge_cluster(&dir, internal, &edge_cfg, &disp_cfg);
    // Both gateways answer probes: up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while disp.metric_sum("sipcluster_dispatcher_target_up{set=\"carrier\"") < 2.0 {
        assert!(Instant::now() < deadline, "{}", disp.scrape());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut uac = Sipp::new("uac", "uac_call.xml", Proto::Udp)
        .inf(&format!("alice;{DOMAIN};alice-secret;+15551234"))
        .auth("alice", "alice-secret", &format!("+15551234@{DOMAIN}"))
        .to(disp.sip)
        .calls(3)
        .timeout(30);
    uac.extra.extend(["-buff_size".into(), "1048576".into()]);
    uac.run(&dir)
        .assert_ok(3, "calls to +1… through the carrier set");
    use std::sync::atomic::Ordering::Relaxed;
    // Priority 1 first; its 503 moves each call to priority 2.
    assert_eq!(
        gw1.invites.load(Relaxed),
        3,
        "gw1 tried first for every call"
    );
    assert_eq!(gw2.invites.load(Relaxed), 3, "gw2 took every call");
    assert_eq!(
        gw2.byes.load(Relaxed),
        3,
        "BYEs reached the gateway that answered"
    );
    assert!(gw1.options.load(Relaxed) >= 1 && gw2.options.load(Relaxed) >= 1);
    let sets = Command::new(env!("CARGO_BIN_EXE_sipcluster"))
        .args([
            "dispatcher-admin",
            "--admin",
            &format!("http://{admin}"),
            "--token-file",
            &disp.tokens.admin_str(),
            "sets",
        ])
        .output()
        .expect("admin");
    let sets = String::from_utf8_lossy(&sets.stdout);
    assert!(
        sets.contains("carrier") && sets.contains("priority") && sets.contains("targets=2 up=2"),
        "{sets}"
    );
}

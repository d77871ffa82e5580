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

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::redis::{Redis, prefix};
use common::{Proto, Server, Sipp, free_low_port, workdir};

const DOMAIN: &str = "sipcluster.local";

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
                    &[],
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
            &[],
        ));
    }
}

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
        .timeout(120);
    let text = std::fs::read_to_string(&s.scenario).expect("scenario");
    let path = dir.join(format!("uac_call_{hold_ms}.xml"));
    std::fs::write(
        &path,
        text.replace(
            "<pause milliseconds=\"200\"/>",
            &format!("<pause milliseconds=\"{hold_ms}\"/>"),
        ),
    )
    .expect("write scenario");
    s.scenario = path;
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
}

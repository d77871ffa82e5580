//! Accounting end to end, with a real Kafka-protocol broker (tansu), Redis, the location
//! service, a dispatcher, two edges and SIPp:
//!
//! * every call has exactly one complete CDR on the topic (after deduplication by event
//!   id), with its duration within 50 ms of SIPp's hold, also when its BYE went through
//!   the other edge (which built the CDR from the dialog record in Redis);
//! * an edge started with no broker serves calls and spools their events; killed with
//!   `kill -9`, then started again with a broker up, it delivers them.
//!
//! Records are read back with `sipcluster cdr tail --json`, the billing team's tool.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::kafka::Broker;
use common::redis::{Redis, prefix};
use common::{Proto, Server, Sipp, workdir};

const DOMAIN: &str = "sipcluster.local";
const CDRS: &str = "sipcluster.cdrs";
const EVENTS: &str = "sipcluster.call-events";

/// Every record of `topic` (from the beginning), deduplicated by event id, waiting up to
/// `wait` for `want` distinct ones.
fn records(broker: &Broker, topic: &str, want: usize, wait: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + wait;
    let mut last = Vec::new();
    while Instant::now() < deadline {
        let out = Command::new(env!("CARGO_BIN_EXE_sipcluster"))
            .args([
                "cdr",
                "tail",
                "--brokers",
                &broker.brokers(),
                "--topic",
                topic,
            ])
            .args(["--from-beginning", "--json", "--idle-exit-secs", "3"])
            .args(["--count", &(want * 3).to_string()])
            .output()
            .expect("run sipcluster cdr tail");
        let mut seen = HashSet::new();
        last = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON record"))
            .filter(|v| seen.insert(v["eventId"].as_str().unwrap_or("").to_owned()))
            .collect();
        if last.len() >= want {
            return last;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    last
}

fn num(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::String(s) => s.parse().unwrap(),
        serde_json::Value::Number(n) => n.as_u64().unwrap(),
        _ => 0,
    }
}

fn accounting_args(broker: &Broker, spool: &Path) -> Vec<String> {
    vec![
        "--kafka-brokers".into(),
        broker.brokers(),
        "--spool-dir".into(),
        spool.display().to_string(),
    ]
}

#[test]
fn every_call_through_two_edges_has_one_complete_cdr_also_when_the_other_edge_ends_it() {
    const CALLS: usize = 200;
    const HOLD_MS: u32 = 6000;
    let test = "acct_two_edges";
    let dir = workdir(test);
    let broker = Broker::start(&dir);
    let redis = Redis::standalone(&dir);
    let largs = redis.location_args(&prefix(test));
    let largs: Vec<&str> = largs.iter().map(String::as_str).collect();
    let loc = Server::location(&dir, "location", &largs);
    let internal = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let edges: Vec<Server> = ["a", "b"]
        .iter()
        .map(|n| {
            let sip = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_low_port()));
            let args = accounting_args(&broker, &dir.join(format!("spool-{n}")));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Server::edge_at(&dir, &format!("edge-{n}"), sip, loc.sip, &args)
        })
        .collect();
    let (disp, admin) = Server::dispatcher_at(
        &dir,
        "dispatcher",
        internal,
        &[edges[0].sip, edges[1].sip],
        &[],
    );
    let uas = Sipp::new("uas", "uas_answer.xml", Proto::Udp).calls(CALLS as u32);
    Sipp::new("register-bob", "register.xml", Proto::Udp)
        .inf(&format!("bob;{DOMAIN};;127.0.0.1:{};3600", uas.port))
        .auth("bob", "bob-secret", DOMAIN)
        .to(disp.sip)
        .run(&dir)
        .assert_ok(1, "REGISTER through the dispatcher");
    let callee = uas.spawn(&dir);
    std::thread::sleep(Duration::from_millis(300));
    let caller = Sipp::new("uac", "uac_call.xml", Proto::Udp)
        .hold(&dir, HOLD_MS)
        .inf(&format!("alice;{DOMAIN};alice-secret;bob"))
        .auth("alice", "alice-secret", &format!("bob@{DOMAIN}"))
        .to(disp.sip)
        .calls(CALLS as u32)
        .rate(100)
        .spawn(&dir);
    // Every call answered (2 s of INVITEs at 100/s), none hung up yet: edge A takes no
    // more requests (weight 0), so the BYEs of its calls go through edge B.
    std::thread::sleep(Duration::from_millis(3500));
    let out = Command::new(env!("CARGO_BIN_EXE_sipcluster"))
        .args(["dispatcher-admin", "--admin", &format!("http://{admin}")])
        .args(["--token-file", &disp.tokens.admin_str()])
        .args(["weight", &edges[0].sip.to_string(), "0"])
        .output()
        .expect("dispatcher-admin");
    assert!(
        out.status.success(),
        "dispatcher-admin weight: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = caller.wait_at_most(Duration::from_secs(60));
    out.assert_ok(CALLS as u64, "calls through the dispatcher");
    drop(callee);

    let cdrs = records(&broker, CDRS, CALLS, Duration::from_secs(60));
    assert_eq!(cdrs.len(), CALLS, "one CDR per call after deduplication");
    let mut per_call: HashMap<String, usize> = HashMap::new();
    let mut other_edge = 0;
    for r in &cdrs {
        let c = &r["cdr"];
        *per_call
            .entry(c["call"]["callId"].as_str().unwrap().to_owned())
            .or_default() += 1;
        assert_eq!(c["sipCode"], 200, "{c}");
        assert_eq!(c["endCause"], "END_CAUSE_BYE", "{c}");
        assert_eq!(c["hungUpBy"], "HUNG_UP_BY_CALLER", "{c}");
        assert_eq!(c["caller"]["user"], "alice", "{c}");
        assert_eq!(c["callee"]["user"], "bob", "{c}");
        assert!(!c["dispatcher"].as_str().unwrap_or("").is_empty(), "{c}");
        let billable = num(&c["billableMs"]);
        assert!(
            billable.abs_diff(u64::from(HOLD_MS)) <= 50,
            "billable {billable} ms for a {HOLD_MS} ms hold: {c}"
        );
        if c["edge"] != c["recordedBy"] {
            other_edge += 1;
        }
    }
    assert_eq!(per_call.len(), CALLS, "every call, once");
    assert!(
        other_edge > 0,
        "some BYEs went through the edge that did not answer the call"
    );
    // The events: an attempt, an answer and an end per call.
    let events = records(&broker, EVENTS, CALLS * 3, Duration::from_secs(30));
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for e in &events {
        *kinds
            .entry(e["event"]["kind"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
    }
    for k in [
        "CALL_EVENT_KIND_ATTEMPT",
        "CALL_EVENT_KIND_ANSWERED",
        "CALL_EVENT_KIND_ENDED",
    ] {
        assert_eq!(kinds.get(k).copied(), Some(CALLS), "{k}: {kinds:?}");
    }
    for e in &edges {
        assert_eq!(
            e.metric("sipcluster_accounting_events_dropped_total"),
            0.0,
            "{}",
            e.scrape()
        );
    }
    eprintln!(
        "{CALLS} calls, {} CDRs, {other_edge} ended through the other edge",
        cdrs.len()
    );
    // The documented Python consumer reads the same CDRs through the proto.
    let lines = python_consumer(&dir, &broker, CALLS);
    assert_eq!(lines.len(), CALLS, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains(" -> ") && l.contains("code=200")),
        "{lines:?}"
    );
}

/// Run `deploy/kafka/consume_cdrs.py` (its classes generated from the proto into the
/// test's directory, as its docstring says): the lines it printed.
fn python_consumer(dir: &Path, broker: &Broker, max: usize) -> Vec<String> {
    let python = std::env::var("SIPCLUSTER_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "SIPCLUSTER_TEST_PYTHON is not set: run ./scripts/test.sh, which makes a Python \
             with confluent-kafka, protobuf and grpcio-tools"
        )
    });
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out_dir = dir.join("python");
    std::fs::create_dir_all(&out_dir).unwrap();
    let protoc = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(root.join("proto"))
        .arg(format!("--python_out={}", out_dir.display()))
        .arg(root.join("proto/sipcluster/cdr/v1/cdr.proto"))
        .output()
        .expect("run grpc_tools.protoc");
    assert!(
        protoc.status.success(),
        "protoc: {}",
        String::from_utf8_lossy(&protoc.stderr)
    );
    let run = Command::new(&python)
        .arg(root.join("deploy/kafka/consume_cdrs.py"))
        .args(["--brokers", &broker.brokers(), "--from-beginning"])
        .args(["--group", "e2e-billing", "--max", &max.to_string()])
        .args(["--idle-exit", "20"])
        .env("PYTHONPATH", &out_dir)
        .output()
        .expect("run consume_cdrs.py");
    assert!(
        run.status.success(),
        "consume_cdrs.py: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_edge_without_a_broker_spools_and_after_kill_9_delivers_at_its_next_start() {
    const CALLS: usize = 20;
    let test = "acct_no_broker";
    let dir = workdir(test);
    let redis = Redis::standalone(&dir);
    let largs = redis.location_args(&prefix(test));
    let largs: Vec<&str> = largs.iter().map(String::as_str).collect();
    let loc = Server::location(&dir, "location", &largs);
    // A port nothing listens on yet: the broker comes later.
    let broker_addr = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let spool = dir.join("spool");
    let args = [
        "--kafka-brokers".to_owned(),
        broker_addr.to_string(),
        "--spool-dir".to_owned(),
        spool.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let edge = Server::edge(&dir, "edge", loc.sip, &args);
    let uas = Sipp::new("uas", "uas_answer.xml", Proto::Udp).calls(CALLS as u32);
    Sipp::new("register-bob", "register.xml", Proto::Udp)
        .inf(&format!("bob;{DOMAIN};;127.0.0.1:{};3600", uas.port))
        .auth("bob", "bob-secret", DOMAIN)
        .to(edge.sip)
        .run(&dir)
        .assert_ok(1, "REGISTER");
    let callee = uas.spawn(&dir);
    std::thread::sleep(Duration::from_millis(300));
    Sipp::new("uac", "uac_call.xml", Proto::Udp)
        .inf(&format!("alice;{DOMAIN};alice-secret;bob"))
        .auth("alice", "alice-secret", &format!("bob@{DOMAIN}"))
        .to(edge.sip)
        .calls(CALLS as u32)
        .rate(20)
        .run(&dir)
        .assert_ok(CALLS as u64, "calls with no broker");
    drop(callee);
    // Attempt, ringing, answered, ended and CDR of every call in the spool before the
    // kill: an event still on its way to the spool (the last BYE's CDR is built after
    // its EndDialog) dies with the process.
    let deadline = Instant::now() + Duration::from_secs(10);
    while edge.metric("sipcluster_accounting_spool_depth") < (CALLS * 5) as f64 {
        assert!(Instant::now() < deadline, "{}", edge.scrape());
        std::thread::sleep(Duration::from_millis(100));
    }
    edge.kill();

    let broker = Broker::start_at(&dir, broker_addr);
    let again = Server::edge(&dir, "edge-again", loc.sip, &args);
    let cdrs = records(&broker, CDRS, CALLS, Duration::from_secs(60));
    assert_eq!(
        cdrs.len(),
        CALLS,
        "every CDR of the spool, delivered after the restart"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while again.metric("sipcluster_accounting_spool_depth") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "spool drained: {}",
            again.scrape()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        again.log().contains("spool recovered"),
        "the restart says what it recovered: {}",
        again.log()
    );
}

#[test]
fn a_call_whose_bye_does_not_come_in_time_is_ended_by_the_cluster_with_a_cdr() {
    const TTL_SECS: u64 = 2;
    let test = "acct_reaped";
    let dir = workdir(test);
    let broker = Broker::start(&dir);
    let redis = Redis::standalone(&dir);
    let largs = redis.location_args(&prefix(test));
    let largs: Vec<&str> = largs.iter().map(String::as_str).collect();
    let loc = Server::location(&dir, "location", &largs);
    // A dead phone's call, compressed: the record lives 2 s without a BYE.
    let cfg = dir.join("edge.toml");
    std::fs::write(
        &cfg,
        format!("[accounting]\ndialog_ttl_secs = {TTL_SECS}\nreap_interval_secs = 1\n"),
    )
    .unwrap();
    let mut args = accounting_args(&broker, &dir.join("spool"));
    args.extend(["--config".to_owned(), cfg.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let edge = Server::edge(&dir, "edge", loc.sip, &args);
    let uas = Sipp::new("uas", "uas_answer.xml", Proto::Udp);
    Sipp::new("register-bob", "register.xml", Proto::Udp)
        .inf(&format!("bob;{DOMAIN};;127.0.0.1:{};3600", uas.port))
        .auth("bob", "bob-secret", DOMAIN)
        .to(edge.sip)
        .run(&dir)
        .assert_ok(1, "REGISTER");
    let callee = uas.spawn(&dir);
    std::thread::sleep(Duration::from_millis(300));
    // The BYE comes after 5 s: 3 s after the cluster ended the call.
    Sipp::new("uac", "uac_call.xml", Proto::Udp)
        .hold(&dir, 5000)
        .inf(&format!("alice;{DOMAIN};alice-secret;bob"))
        .auth("alice", "alice-secret", &format!("bob@{DOMAIN}"))
        .to(edge.sip)
        .run(&dir)
        .assert_ok(1, "the call, its late BYE still answered");
    drop(callee);
    let cdrs = records(&broker, CDRS, 1, Duration::from_secs(30));
    assert_eq!(
        cdrs.len(),
        1,
        "one CDR, not a second one at the late BYE: {cdrs:#?}"
    );
    let c = &cdrs[0]["cdr"];
    assert_eq!(c["endCause"], "END_CAUSE_DIALOG_TTL", "{c}");
    assert_eq!(c["hungUpBy"], "HUNG_UP_BY_PROXY", "{c}");
    let billable = num(&c["billableMs"]);
    assert!(
        (TTL_SECS * 1000..=TTL_SECS * 1000 + 200).contains(&billable),
        "billed up to the deadline: {billable} ms: {c}"
    );
    assert_eq!(
        edge.metric("sipcluster_accounting_sessions_reaped_total"),
        1.0,
        "{}",
        edge.scrape()
    );
    assert!(
        edge.log()
            .contains("BYE for a call already ended by the cluster"),
        "{}",
        edge.log()
    );
}

//! Accounting end to end, with a real Kafka-protocol broker (tansu), Redis, the location
//! service, a dispatcher, two edges and SIPp:
//!
//! * 1,000 calls: every one has exactly one complete CDR on the topic (after
//!   deduplication by event id), with its duration within 50 ms of SIPp's hold, also
//!   when its BYE went through the other edge (half of them: that edge built the CDR
//!   from the dialog record in Redis);
//! * busy, cancelled and unanswered calls have CDRs with their end cause and code;
//! * an edge started with no broker serves calls and spools their events; killed with
//!   `kill -9`, then started again with a broker up, it delivers them;
//! * a broker down for 30 s of a 100 calls/s run: every call succeeds, every CDR
//!   arrives after it comes back (empty: the producer makes its topics again);
//! * calls whose BYE does not come (dialog TTL, a session interval not refreshed) and
//!   calls an operator ends (`sipcluster calls end`) are ended by the cluster with a
//!   CDR, their relay sessions deleted; `sipcluster calls list|show` shows them before.
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
    let mut stderr = String::new();
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
        stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "{} of {want} records on {topic}; cdr tail said: {stderr}",
        last.len()
    );
    last
}

/// The lines of `log` that mention `what`.
fn edge_log_lines<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(what)).collect()
}

fn num(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::String(s) => s.parse().unwrap(),
        serde_json::Value::Number(n) => n.as_u64().unwrap(),
        _ => 0,
    }
}

/// Redis and a location service on it for `test` (`extra`: more flags).
fn location(dir: &Path, test: &str, extra: &[&str]) -> (Redis, Server) {
    let redis = Redis::standalone(dir);
    let mut args = redis.location_args(&prefix(test));
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let loc = Server::location(dir, "location", &args);
    (redis, loc)
}

/// Register `user` (password `USER-secret`) at `uas`'s port through `to`.
fn register(dir: &Path, user: &str, uas: &Sipp, to: std::net::SocketAddr) {
    Sipp::new(&format!("register-{user}"), "register.xml", Proto::Udp)
        .inf(&format!("{user};{DOMAIN};;127.0.0.1:{};3600", uas.port))
        .auth(user, &format!("{user}-secret"), DOMAIN)
        .to(to)
        .run(dir)
        .assert_ok(1, &format!("REGISTER {user}"));
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
    let _alone = alone();
    const CALLS: usize = 1000;
    const HOLD_MS: u32 = 14_000;
    let test = "acct_two_edges";
    let dir = workdir(test);
    let broker = Broker::start(&dir);
    let (_redis, loc) = location(&dir, test, &[]);
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
    register(&dir, "bob", &uas, disp.sip);
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
    // Every call answered (10 s of INVITEs at 100/s), none hung up yet (14 s holds):
    // edge A takes no more requests (weight 0), so the BYEs of its calls, about half,
    // go through edge B.
    std::thread::sleep(Duration::from_millis(11_500));
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
    let out = caller.wait_at_most(Duration::from_secs(90));
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
        assert_eq!(
            c["caller"]["authenticatedAs"],
            format!("alice@{DOMAIN}"),
            "{c}"
        );
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
        (CALLS * 2 / 5..=CALLS * 3 / 5).contains(&other_edge),
        "about half the BYEs went through the edge that did not answer the call: {other_edge}"
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
        // Every drop reason's series (queue_full, spool_full, spool_error) at 0.
        assert_eq!(
            common::metric_sum(&e.scrape(), "sipcluster_accounting_events_dropped_total"),
            (0.0, 3),
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
    let _alone = alone();
    const CALLS: usize = 20;
    let test = "acct_no_broker";
    let dir = workdir(test);
    let (_redis, loc) = location(&dir, test, &[]);
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
    register(&dir, "bob", &uas, edge.sip);
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
    let _alone = alone();
    const TTL_SECS: u64 = 2;
    let test = "acct_reaped";
    let dir = workdir(test);
    let broker = Broker::start(&dir);
    let (_redis, loc) = location(&dir, test, &[]);
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
    register(&dir, "bob", &uas, edge.sip);
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

/// `sipcluster calls` against the location service, as an operator runs it.
fn calls_cli(loc: &Server, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sipcluster"))
        .arg("calls")
        .args(["--location", &format!("http://{}", loc.sip)])
        .args(["--token-file", &loc.tokens.admin_str()])
        .args(args)
        .output()
        .expect("run sipcluster calls")
}

/// The called party of `uas_answer.xml` whose 200 sets a session interval of `secs`
/// (RFC 4028, refresher the caller, which never refreshes: SIPp's call holds still).
fn uas_with_session_timer(dir: &Path, secs: u32) -> Sipp {
    let text = std::fs::read_to_string(common::scenario("uas_answer.xml")).unwrap();
    let (head, tail) = text.split_once("SIP/2.0 200 OK").unwrap();
    let tail = tail.replacen(
        "Content-Type: application/sdp",
        &format!("Session-Expires: {secs};refresher=uac\n      Require: timer\n      Content-Type: application/sdp"),
        1,
    );
    let path = dir.join("uas_session_timer.xml");
    std::fs::write(&path, format!("{head}SIP/2.0 200 OK{tail}")).unwrap();
    let mut s = Sipp::new("uas-carol", "uas_answer.xml", Proto::Udp);
    s.scenario = path;
    s
}

#[test]
fn an_operator_lists_and_ends_calls_and_an_unrefreshed_session_is_reaped_with_its_relay_session() {
    let _alone = alone();
    const SESSION_SECS: u32 = 3;
    let test = "acct_calls_cli";
    let dir = workdir(test);
    let broker = Broker::start(&dir);
    // The dialogs-active gauge counted every second.
    let lcfg = dir.join("location.toml");
    std::fs::write(&lcfg, "stats_interval_secs = 1\n").unwrap();
    let (_redis, loc) = location(&dir, test, &["--config", &lcfg.display().to_string()]);
    let relay = Server::media_relay(&dir, "relay", "44600-44649", &["--idle-timeout-secs", "60"]);
    let cfg = dir.join("edge.toml");
    // No Min-SE floor (RFC 4028 allows a proxy none), so a 3 s session interval stands.
    std::fs::write(
        &cfg,
        "[accounting]\nreap_interval_secs = 1\n[timers]\nmin_se_secs = 0\n",
    )
    .unwrap();
    let mut args = accounting_args(&broker, &dir.join("spool"));
    args.extend([
        "--config".to_owned(),
        cfg.display().to_string(),
        "--media-relay".to_owned(),
        format!("http://{}", relay.sip),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let edge = Server::edge(&dir, "edge", loc.sip, &args);
    let bob = Sipp::new("uas-bob", "uas_answer.xml", Proto::Udp);
    let carol = uas_with_session_timer(&dir, SESSION_SECS);
    for (user, uas) in [("bob", &bob), ("carol", &carol)] {
        register(&dir, user, uas, edge.sip);
    }
    let (bob_run, carol_run) = (bob.spawn(&dir), carol.spawn(&dir));
    std::thread::sleep(Duration::from_millis(300));
    let call = |name: &str, callee: &str| {
        Sipp::new(name, "uac_call.xml", Proto::Udp)
            .hold(&dir, 9000)
            .inf(&format!("alice;{DOMAIN};alice-secret;{callee}"))
            .auth("alice", "alice-secret", &format!("{callee}@{DOMAIN}"))
            .to(edge.sip)
            .spawn(&dir)
    };
    let mut to_bob = call("uac-bob", "bob");
    let mut to_carol = call("uac-carol", "carol");
    std::thread::sleep(Duration::from_millis(1500));

    // Both calls in progress, on the cluster's record.
    let out = calls_cli(&loc, &["list"]);
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{list}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(list.contains("2 calls in progress"), "{list}");
    let bob_line = list.lines().find(|l| l.contains("sip:bob@")).expect(&list);
    assert!(bob_line.contains("sip:alice@"), "{list}");
    assert!(
        bob_line.contains(&relay.sip.to_string()),
        "the relay shown: {list}"
    );
    let call_id = bob_line.split_whitespace().next().unwrap().to_owned();
    let out = calls_cli(&loc, &["show", &call_id]);
    let show = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{show}");
    for want in [
        "caller        sip:alice@",
        "callee        sip:bob@",
        "request-uri   sip:bob@",
        "source        127.0.0.1:",
    ] {
        assert!(show.contains(want), "{want}: {show}");
    }
    eprintln!("{list}\n{show}");
    let sessions = || relay.metric("sipcluster_media_sessions");
    assert_eq!(sessions(), 2.0, "{}", relay.scrape());
    // The gauge is counted every second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while loc.metric("sipcluster_location_dialogs_active") != 2.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        loc.metric("sipcluster_location_dialogs_active"),
        2.0,
        "{}",
        loc.scrape()
    );

    // The operator ends bob's call: ended by an edge within its reap interval.
    let asked = Instant::now();
    let out = calls_cli(&loc, &["end", &call_id]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    let out = calls_cli(&loc, &["end", &call_id]);
    assert!(
        !out.status.success(),
        "ending it again: no such call in progress"
    );

    // Carol's call: its phones never refresh the 3 s session, so the cluster ends it.
    let cdrs = records(&broker, CDRS, 2, Duration::from_secs(20));
    assert_eq!(cdrs.len(), 2, "{cdrs:#?}");
    let by_callee = |u: &str| {
        cdrs.iter()
            .map(|r| &r["cdr"])
            .find(|c| c["callee"]["user"] == u)
            .unwrap_or_else(|| panic!("{u}: {cdrs:#?}"))
    };
    let ended = by_callee("bob");
    assert_eq!(ended["endCause"], "END_CAUSE_ADMINISTRATIVE", "{ended}");
    assert_eq!(ended["hungUpBy"], "HUNG_UP_BY_PROXY", "{ended}");
    assert_eq!(ended["call"]["callId"], call_id.as_str(), "{ended}");
    let billable = num(&ended["billableMs"]);
    assert!(
        (1000..4000).contains(&billable),
        "billed to the operator's request: {billable} ms"
    );
    let expired = by_callee("carol");
    assert_eq!(
        expired["endCause"], "END_CAUSE_SESSION_EXPIRED",
        "{expired}"
    );
    assert_eq!(expired["hungUpBy"], "HUNG_UP_BY_PROXY", "{expired}");
    let billable = num(&expired["billableMs"]);
    assert!(
        (u64::from(SESSION_SECS) * 1000..u64::from(SESSION_SECS) * 1000 + 200).contains(&billable),
        "billed to the end of the session interval: {billable} ms"
    );
    // Both relay sessions deleted with their calls (the phones' BYEs are still to come).
    assert_eq!(sessions(), 0.0, "{}", relay.scrape());
    assert!(
        to_bob.running() && to_carol.running(),
        "the calls' own BYEs have not come yet"
    );
    let out = calls_cli(&loc, &["list"]);
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(list.contains("0 calls in progress"), "{list}");
    assert_eq!(
        edge.metric("sipcluster_accounting_sessions_reaped_total"),
        2.0
    );
    // The phones' late BYEs are still forwarded and answered; no second CDR.
    to_bob
        .wait_at_most(Duration::from_secs(30))
        .assert_ok(1, "call to bob");
    to_carol
        .wait_at_most(Duration::from_secs(30))
        .assert_ok(1, "call to carol");
    drop((bob_run, carol_run));
    assert_eq!(records(&broker, CDRS, 3, Duration::from_secs(4)).len(), 2);
}

#[test]
fn a_broker_down_for_30_s_during_a_100_calls_per_second_run_loses_no_cdr_and_no_call() {
    let _alone = alone();
    const RATE: u32 = 100;
    const SECS: u32 = 36;
    const CALLS: usize = (RATE * SECS) as usize;
    const HOLD_MS: u32 = 2000;
    let test = "acct_broker_down";
    let dir = workdir(test);
    let mut broker = Broker::start(&dir);
    let (_redis, loc) = location(&dir, test, &[]);
    let args = accounting_args(&broker, &dir.join("spool"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let edge = Server::edge(&dir, "edge", loc.sip, &args);
    let uas = Sipp::new("uas", "uas_answer.xml", Proto::Udp)
        .calls(CALLS as u32)
        .timeout(SECS + 60);
    register(&dir, "bob", &uas, edge.sip);
    let callee = uas.spawn(&dir);
    // The producer connected and the topics made before the run.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !edge.log().contains("kafka topic created") {
        assert!(Instant::now() < deadline, "{}", edge.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let caller = Sipp::new("uac", "uac_call.xml", Proto::Udp)
        .hold(&dir, HOLD_MS)
        .inf(&format!("alice;{DOMAIN};alice-secret;bob"))
        .auth("alice", "alice-secret", &format!("bob@{DOMAIN}"))
        .to(edge.sip)
        .calls(CALLS as u32)
        .rate(RATE)
        .timeout(SECS + 60)
        .spawn(&dir);
    // Down before the first call ends (so no CDR of the run was on the old broker, whose
    // memory storage goes with it), for 30 s of the run.
    std::thread::sleep(Duration::from_millis(1000));
    broker.stop();
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_secs(15));
    let spooled = edge.metric("sipcluster_accounting_spool_depth");
    assert!(
        spooled > 1000.0,
        "records wait in the spool while the broker is down: {spooled}"
    );
    std::thread::sleep(Duration::from_secs(30).saturating_sub(stopped.elapsed()));
    let broker = Broker::start_at(&dir, broker.addr);
    eprintln!(
        "broker down {:?} from {:?} into the run",
        stopped.elapsed(),
        stopped - started
    );
    let out = caller.wait_at_most(Duration::from_secs(u64::from(SECS) + 60));
    // SIP never waited on Kafka: every call of the run succeeded.
    out.assert_ok(CALLS as u64, "calls while the broker was down");
    drop(callee);
    let cdrs = records(&broker, CDRS, CALLS, Duration::from_secs(150));
    let mut ids = HashSet::new();
    for r in &cdrs {
        let c = &r["cdr"];
        assert_eq!(c["endCause"], "END_CAUSE_BYE", "{c}");
        // A load run on a debug build: SIPp's own pause and the queues at 100 calls/s
        // move the BYE by tens of ms. The ±50 ms precision is the 1,000-call test's.
        let billable = num(&c["billableMs"]);
        assert!(
            billable.abs_diff(u64::from(HOLD_MS)) <= 500,
            "billable {billable} ms for a {HOLD_MS} ms hold: {c}"
        );
        ids.insert(c["call"]["callId"].as_str().unwrap().to_owned());
    }
    if cdrs.len() != CALLS {
        // What the producer side saw, for a failure on a CI machine.
        let log = edge.log();
        let kafka_lines: Vec<&str> = edge_log_lines(&log, "kafka");
        eprintln!(
            "edge kafka log (last 40):\n{}\nedge metrics:\n{}",
            kafka_lines[kafka_lines.len().saturating_sub(40)..].join("\n"),
            edge.scrape()
                .lines()
                .filter(|l| l.starts_with("sipcluster_accounting"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    assert_eq!(
        (cdrs.len(), ids.len()),
        (CALLS, CALLS),
        "every CDR of the run, once, after the broker came back"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while edge.metric("sipcluster_accounting_spool_depth") > 0.0 {
        assert!(
            Instant::now() < deadline,
            "spool drained: {}",
            edge.scrape()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        common::metric_sum(&edge.scrape(), "sipcluster_accounting_events_dropped_total"),
        (0.0, 3),
        "{}",
        edge.scrape()
    );
}

#[test]
fn busy_cancelled_and_unanswered_calls_have_cdrs_with_their_end_cause() {
    const EACH: u32 = 5;
    let _alone = alone();
    let test = "acct_failures";
    let dir = workdir(test);
    let broker = Broker::start(&dir);
    let (_redis, loc) = location(&dir, test, &[]);
    let args = accounting_args(&broker, &dir.join("spool"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let edge = Server::edge(&dir, "edge", loc.sip, &args);
    let bob = Sipp::new("uas-busy", "uas_busy.xml", Proto::Udp).calls(EACH);
    let carol = Sipp::new("uas-ring", "uas_ring_cancel.xml", Proto::Udp).calls(EACH);
    for (user, uas) in [("bob", &bob), ("carol", &carol)] {
        register(&dir, user, uas, edge.sip);
    }
    let (bob_run, carol_run) = (bob.spawn(&dir), carol.spawn(&dir));
    std::thread::sleep(Duration::from_millis(300));
    let caller = |name: &str, scenario: &str, callee: &str| {
        Sipp::new(name, scenario, Proto::Udp)
            .inf(&format!("alice;{DOMAIN};alice-secret;{callee}"))
            .auth("alice", "alice-secret", &format!("{callee}@{DOMAIN}"))
            .to(edge.sip)
            .calls(EACH)
            .rate(10)
    };
    // Bob is busy; carol rings until alice gives up; dave has no phone registered.
    caller("uac-busy", "uac_fail.xml", "bob")
        .expect_code(&dir, 486)
        .run(&dir)
        .assert_ok(u64::from(EACH), "busy calls");
    caller("uac-cancel", "uac_cancel.xml", "carol")
        .run(&dir)
        .assert_ok(u64::from(EACH), "cancelled calls");
    caller("uac-unanswered", "uac_fail.xml", "dave")
        .expect_code(&dir, 480)
        .run(&dir)
        .assert_ok(u64::from(EACH), "calls nobody could answer");
    drop((bob_run, carol_run));
    let want = 3 * EACH as usize;
    let cdrs = records(&broker, CDRS, want, Duration::from_secs(30));
    assert_eq!(cdrs.len(), want, "{cdrs:#?}");
    let mut seen: HashMap<(String, String, u64, String), usize> = HashMap::new();
    for r in &cdrs {
        let c = &r["cdr"];
        assert_eq!(num(&c["billableMs"]), 0, "nothing to bill: {c}");
        assert!(num(&c["answeredAtMs"]) == 0, "{c}");
        *seen
            .entry((
                c["callee"]["user"].as_str().unwrap_or("").to_owned(),
                c["endCause"].as_str().unwrap_or("").to_owned(),
                num(&c["sipCode"]),
                c["hungUpBy"].as_str().unwrap_or("").to_owned(),
            ))
            .or_default() += 1;
    }
    let n = EACH as usize;
    let expected: HashMap<(String, String, u64, String), usize> = [
        ("bob", "END_CAUSE_FAILURE", 486, "HUNG_UP_BY_CALLEE"),
        ("carol", "END_CAUSE_CANCEL", 487, "HUNG_UP_BY_CALLER"),
        ("dave", "END_CAUSE_FAILURE", 480, "HUNG_UP_BY_PROXY"),
    ]
    .into_iter()
    .map(|(u, e, code, by)| ((u.to_owned(), e.to_owned(), code, by.to_owned()), n))
    .collect();
    assert_eq!(seen, expected, "{cdrs:#?}");
    // And a failed event for each (attempts too), none ended: none was answered.
    let events = records(&broker, EVENTS, 2 * want, Duration::from_secs(20));
    let kinds = |k: &str| events.iter().filter(|e| e["event"]["kind"] == k).count();
    assert_eq!(kinds("CALL_EVENT_KIND_ATTEMPT"), want, "{events:#?}");
    assert_eq!(kinds("CALL_EVENT_KIND_FAILED"), want, "{events:#?}");
    assert_eq!(kinds("CALL_EVENT_KIND_ANSWERED"), 0);
}

/// The tests of this file one at a time: each runs a cluster and SIPp at rates a debug
/// build on two cores sustains alone, not beside another.
fn alone() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

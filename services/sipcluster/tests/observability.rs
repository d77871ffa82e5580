//! What an SRE sees, checked against what happened: a multi-process cluster (dispatcher,
//! two edges, location service on Redis, media relay) scraped by a real Prometheus, SIPp
//! calls through two destination sets (one answers, one is busy), then PromQL through
//! Prometheus's HTTP API must say what SIPp saw, and every expression of the shipped
//! dashboards and alert rules must run against that data.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::gateway::Gateway;
use common::prometheus::Prometheus;
use common::redis::Redis;
use common::{Proto, Server, Sipp, free_low_port, free_port, workdir};

const DOMAIN: &str = "sipcluster.local";
/// Calls to the set that answers, and to the busy one.
const ANSWERED: u32 = 20;
const BUSY: u32 = 10;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn prometheus_sees_what_sipp_saw_per_trunk_and_every_dashboard_and_rule_query_runs() {
    let dir = workdir("observability");
    let redis = Redis::standalone(&dir);
    let args = redis.location_args("obs-test");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let loc = Server::location(&dir, "location", &args);

    // Two trunks: carrier-a rings and answers, carrier-b rings and is busy.
    let gw_a = Gateway::spawn_ringing(200);
    let gw_b = Gateway::spawn_ringing(486);
    let internal = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let disp_cfg = dir.join("dispatcher.toml");
    std::fs::write(
        &disp_cfg,
        format!(
            "[[sets]]\nname = \"carrier-a\"\ntargets = [ {{ address = \"{}\" }} ]\n\
             [[sets]]\nname = \"carrier-b\"\ntargets = [ {{ address = \"{}\" }} ]\n",
            gw_a.addr, gw_b.addr
        ),
    )
    .unwrap();
    let edge_cfg = dir.join("edge.toml");
    std::fs::write(
        &edge_cfg,
        format!(
            "[outbound]\ndispatcher = \"sip:{internal}\"\n\
             [[outbound.rules]]\nprefix = \"+1\"\nset = \"carrier-a\"\n\
             [[outbound.rules]]\nprefix = \"+44\"\nset = \"carrier-b\"\n"
        ),
    )
    .unwrap();
    let cfg = edge_cfg.display().to_string();
    let edges: Vec<Server> = ["edge-a", "edge-b"]
        .iter()
        .map(|name| {
            let at = SocketAddr::from(([127, 0, 0, 1], free_low_port()));
            Server::edge_at(&dir, name, at, loc.sip, &["--config", &cfg])
        })
        .collect();
    let relay = Server::media_relay(&dir, "relay", "45000-45019", &[]);
    let (disp, _admin) = Server::dispatcher_at(
        &dir,
        "dispatcher",
        internal,
        &[edges[0].sip, edges[1].sip],
        &["--config", &disp_cfg.display().to_string()],
    );

    let prom = Prometheus::start(
        &dir,
        &[
            ("edge", edges.iter().map(|e| e.metrics).collect()),
            ("dispatcher", vec![disp.metrics]),
            ("location", vec![loc.metrics]),
            ("media-relay", vec![relay.metrics]),
        ],
    );
    // Both edges and both gateways up at the dispatcher, as Prometheus stores it.
    let up = prom.wait_for(
        "sum(sipcluster_dispatcher_target_up)",
        Duration::from_secs(60),
        |v| v == Some(4.0),
    );
    assert_eq!(up, Some(4.0), "{}\n{}", disp.scrape(), prom.log());

    let uac = |name: &str, scenario: &str, callee: &str, n: u32| {
        let mut s = Sipp::new(name, scenario, Proto::Udp)
            .inf(&format!("alice;{DOMAIN};alice-secret;{callee}"))
            .auth("alice", "alice-secret", &format!("{callee}@{DOMAIN}"))
            .to(disp.sip)
            .calls(n)
            .rate(20)
            .timeout(60);
        s.extra.extend(["-buff_size".into(), "1048576".into()]);
        s
    };
    let answered = uac("uac-a", "uac_call.xml", "+15551234", ANSWERED).run(&dir);
    answered.assert_ok(u64::from(ANSWERED), "calls through carrier-a");
    let busy = uac("uac-b", "uac_fail.xml", "+445551234", BUSY)
        .expect_code(&dir, 486)
        .run(&dir);
    busy.assert_ok(u64::from(BUSY), "busy calls through carrier-b");
    let calls = f64::from(ANSWERED + BUSY);

    // Bounded wait for the last scrape after the calls.
    let attempts = prom.wait_for(
        "sum(sipcluster_call_attempts_total)",
        Duration::from_secs(30),
        |v| v == Some(calls),
    );
    assert_eq!(
        attempts,
        Some(calls),
        "every call is one attempt (its 407 challenge is not):\n{}\n{}",
        edges[0].scrape(),
        edges[1].scrape()
    );
    let q = |e: &str| prom.query(e);
    // Calls answered equal SIPp's successful calls.
    assert_eq!(
        q("sum(sipcluster_call_answered_total)"),
        Some(answered.successful as f64)
    );
    // ASR and NER per trunk, as the dashboards compute them.
    let asr = |set: &str| {
        q(&format!(
            "(sum(sipcluster_call_answered_total{{destination=\"{set}\"}}) or vector(0)) \
             / sum(sipcluster_call_attempts_total{{destination=\"{set}\"}})"
        ))
    };
    assert_eq!(
        asr("carrier-a"),
        Some(1.0),
        "every call to carrier-a answered"
    );
    assert_eq!(asr("carrier-b"), Some(0.0), "carrier-b was busy");
    let ner = q(
        "((sum(sipcluster_call_answered_total{destination=\"carrier-b\"}) or vector(0)) \
         + sum(sipcluster_call_failed_total{destination=\"carrier-b\",code=~\"486|600|480|487|603\"})) \
         / sum(sipcluster_call_attempts_total{destination=\"carrier-b\"})",
    );
    assert_eq!(ner, Some(1.0), "a busy callee is an effective network");
    assert_eq!(
        q(
            "sum(sipcluster_call_failed_total{destination=\"carrier-b\",class=\"4xx\",code=\"486\"})"
        ),
        Some(f64::from(BUSY))
    );
    // Setup-time histograms: one observation per call (the INVITE to its 2xx for the
    // answered ones; to the first 18x for every call, both trunks ring).
    assert_eq!(
        q("sum(sipcluster_call_answer_delay_seconds_count)"),
        Some(f64::from(ANSWERED))
    );
    assert_eq!(
        q("sum(sipcluster_call_post_dial_delay_seconds_count)"),
        Some(calls)
    );
    // Over the cumulative buckets, not a rate: when Prometheus's first scrape comes after
    // the last call, every rate is 0 and the quantile NaN (seen once under load).
    let p99 =
        q("histogram_quantile(0.99, sum by (le) (sipcluster_call_answer_delay_seconds_bucket))")
            .unwrap_or(f64::NAN);
    assert!(
        p99 > 0.0 && p99 <= 0.05,
        "loopback trunks answer within the first bucket: {p99}"
    );
    // The edges' own responses: the 486s went up to the dispatcher.
    assert!(
        q("sum(sipcluster_sip_responses_total{code=\"486\"})")
            .is_some_and(|v| v >= f64::from(BUSY))
    );
    // Dispatcher probe round trips, Redis round trips, every process up.
    assert!(q("sum(sipcluster_dispatcher_probe_duration_seconds_count)").is_some_and(|v| v > 0.0));
    assert!(q("sum(sipcluster_location_redis_duration_seconds_count)").is_some_and(|v| v > 0.0));
    assert_eq!(q("count(up == 1)"), Some(5.0));
    assert_eq!(
        q("sum(sipcluster_location_redis_errors_total) or vector(0)"),
        Some(0.0)
    );

    // Every expression of the dashboards and alert rules parses and runs, and every
    // metric it names is one the services export (seen by Prometheus, or declared in a
    // scrape when no event of its kind happened in this run).
    let scrapes: Vec<String> = edges
        .iter()
        .chain([&disp, &loc, &relay])
        .map(|s| format!("http://{}/metrics", s.metrics))
        .collect();
    let python = std::env::var("SIPCLUSTER_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg(repo().join("tests/observability/check_promql.py"))
        .args(["--prometheus", &format!("http://{}", prom.addr)])
        .arg("--scrape")
        .args(&scrapes)
        .current_dir(repo())
        .output()
        .expect("run check_promql.py");
    assert!(
        out.status.success(),
        "dashboards and rules against real data:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

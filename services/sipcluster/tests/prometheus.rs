//! The all-in-one's `/metrics` (edge and dispatcher) scraped by a real Prometheus server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::{RawSip, Server, status, which, workdir};

#[test]
fn prometheus_scrapes_the_edge() {
    let dir = workdir("prometheus");
    let srv = Server::start(&dir, &[]);

    // Traffic first, so the counters exist: 5 OPTIONS and one bad request.
    let c = RawSip::new(srv.sip);
    let l = c.local();
    for i in 0..5 {
        let r = c.request(
            format!(
                "OPTIONS sip:{s} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKp{i}\r\nMax-Forwards: 70\r\n\
                 From: <sip:p@example.org>;tag={i}\r\nTo: <sip:{s}>\r\nCall-ID: p{i}\r\nCSeq: 1 OPTIONS\r\n\
                 Content-Length: 0\r\n\r\n",
                s = srv.sip
            )
            .as_bytes(),
        );
        assert_eq!(r.as_deref().map(status), Some(200));
    }

    // What Prometheus asks for is OpenMetrics (a scrape without Accept gets the classic
    // text format: see every_service_exposes_lint_clean_metrics_...).
    let (_, text) =
        common::http_get_accept(srv.metrics, "application/openmetrics-text;version=1.0.0");
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics exposition ends with # EOF"
    );

    let p = Prometheus::start(&dir, &[("sipcluster", vec![srv.metrics])]);

    // Bounded wait for Prometheus to have scraped us (first sample after a few seconds).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut up = None;
    let mut options = None;
    while Instant::now() < deadline {
        up = p.query("up{job=\"sipcluster\"}");
        // The dispatcher relays them to the edge (whose own OPTIONS counter also counts
        // the dispatcher's health probes).
        options =
            p.query("sipcluster_dispatcher_relayed_total{direction=\"inbound\",kind=\"request\"}");
        if up == Some(1.0) && options.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        up,
        Some(1.0),
        "Prometheus sees the edge up; log:\n{}",
        p.log()
    );
    assert_eq!(
        options,
        Some(5.0),
        "the relayed-requests counter as Prometheus stored it"
    );
    // The edge's latency histogram (its OPTIONS are the dispatcher's health probes), the
    // dispatcher's target health and both sides' transport counters made it too.
    let histogram = p.query("sipcluster_sip_request_duration_seconds_count{method=\"OPTIONS\"}");
    assert!(histogram.is_some_and(|v| v >= 1.0), "{histogram:?}");
    let up = p.query("sum(sipcluster_dispatcher_target_up)");
    assert_eq!(up, Some(1.0), "the in-process edge is up");
    let received = p
        .query("sum(sipcluster_dispatcher_sip_transport_messages_received_total{side=\"public\"})");
    assert!(received.is_some_and(|v| v >= 5.0), "{received:?}");
}

/// Every service's `/metrics`, as `curl` and `promtool` get it (the classic text format),
/// passes `promtool check metrics` (one family per name, help on every metric, the
/// dispatcher's two transport sides in one family), and carries the build and the
/// process's resources; Prometheus itself gets OpenMetrics ending in `# EOF`.
#[test]
fn every_service_exposes_lint_clean_metrics_with_its_build_and_process() {
    let promtool = which("promtool").expect("promtool is not installed: run ./scripts/test.sh");
    let dir = workdir("metrics_lint");
    let loc = Server::location(&dir, "location", &[]);
    let edge = Server::edge(&dir, "edge", loc.sip, &[]);
    let (disp, _admin) = Server::dispatcher(&dir, "dispatcher", &[edge.sip], &[]);
    let relay = Server::media_relay(&dir, "relay", "41000-41019", &[]);
    let aio = Server::start(&dir, &[]);
    let ticks: f64 = String::from_utf8(
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for (name, srv) in [
        ("location", &loc),
        ("edge", &edge),
        ("dispatcher", &disp),
        ("media-relay", &relay),
        ("all-in-one", &aio),
    ] {
        // The kernel's own CPU count for the process, read around the scrape: a young
        // process may have used under one clock tick (0 s), so compare, do not expect > 0.
        let before = proc_cpu_seconds(srv.pid(), ticks);
        let text = srv.scrape();
        let after = proc_cpu_seconds(srv.pid(), ticks);
        let file = dir.join(format!("{name}.prom"));
        fs::write(&file, &text).unwrap();
        let out = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(fs::File::open(&file).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics on {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let value = |sample: &str| common::metric_value(&text, sample);
        assert_eq!(
            value(&format!(
                "sipcluster_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )),
            1.0,
            "{name}"
        );
        let cpu = value("process_cpu_seconds_total");
        assert!(
            (before - 1e-9..=after + 1e-9).contains(&cpu),
            "{name}: process_cpu_seconds_total {cpu}, /proc says {before}..{after}"
        );
        assert!(value("process_resident_memory_bytes") > 1e6, "{name}");
        let open = value("process_open_fds");
        assert!(open >= 3.0 && open <= value("process_max_fds"), "{name}");
        let start = value("process_start_time_seconds");
        assert!(
            (started - 120.0..started + 5.0).contains(&start),
            "{name}: started at {start}, the test at {started}"
        );
        let (code, om) =
            common::http_get_accept(srv.metrics, "application/openmetrics-text;version=1.0.0");
        assert_eq!(code, 200, "{name}");
        assert!(
            om.ends_with("# EOF\n"),
            "{name}: OpenMetrics for Prometheus"
        );
    }
    // The dispatcher's two sides are one family each (promtool refused two blocks).
    let text = disp.scrape();
    assert_eq!(
        text.matches("# HELP sipcluster_dispatcher_sip_transport_messages_received_total ")
            .count(),
        1,
        "{text}"
    );
    assert!(text.contains("side=\"public\"") && text.contains("side=\"internal\""));
}

/// User plus system CPU seconds of `pid`, from `/proc/PID/stat` (fields 14 and 15, in
/// clock ticks; the command name in field 2 may hold spaces, so count after its `)`).
fn proc_cpu_seconds(pid: u32, ticks: f64) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks_used: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks_used / ticks
}

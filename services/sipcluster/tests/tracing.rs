//! OpenTelemetry traces across the cluster's hops: a dispatcher, an edge, the location
//! service and a media relay (each its own process) export to an OTLP receiver speaking
//! the collector's gRPC protocol. One SIPp call: the spans of its INVITE from every
//! service share one trace id with the right parent links, and nothing of the trace
//! reaches SIPp.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::otlp::{Receiver, Span};
use common::{Proto, Server, Sipp, free_low_port, workdir};

const DOMAIN: &str = "sipcluster.local";

/// What a SIPp run sent and received (the harness's `-trace_msg` file, `NAME.msg`).
fn sipp_messages(dir: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.msg"))).unwrap_or_default()
}

#[test]
fn one_call_is_one_trace_across_dispatcher_edge_location_and_relay_and_sipp_sees_none_of_it() {
    let dir = workdir("tracing");
    let otlp = Receiver::start();
    let endpoint = otlp.endpoint();
    let trace = ["--otlp-endpoint", &endpoint, "--trace-sample-ratio", "1"];

    let loc = Server::location(&dir, "location", &trace);
    let relay = Server::media_relay(&dir, "relay", "45120-45139", &trace);
    let relay_url = format!("http://{}", relay.sip);
    let mut edge_args = trace.to_vec();
    // JSON logs at debug: the lines written while a request is handled name its trace.
    edge_args.extend([
        "--media-relay",
        &relay_url,
        "--log-format",
        "json",
        "--log-level",
        "debug",
    ]);
    let at = SocketAddr::from(([127, 0, 0, 1], free_low_port()));
    let edge = Server::edge_at(&dir, "edge", at, loc.sip, &edge_args);
    let (disp, _admin) = Server::dispatcher(&dir, "dispatcher", &[edge.sip], &trace);

    let uas = Sipp::new("uas", "uas_answer.xml", Proto::Udp)
        .calls(1)
        .timeout(30);
    Sipp::new("register-bob", "register.xml", Proto::Udp)
        .inf(&format!("bob;{DOMAIN};;127.0.0.1:{};3600", uas.port))
        .auth("bob", "bob-secret", DOMAIN)
        .to(disp.sip)
        .run(&dir)
        .assert_ok(1, "REGISTER through the dispatcher");
    let callee = uas.spawn(&dir);
    std::thread::sleep(Duration::from_millis(300));
    Sipp::new("uac", "uac_call.xml", Proto::Udp)
        .inf(&format!("alice;{DOMAIN};alice-secret;bob"))
        .auth("alice", "alice-secret", &format!("bob@{DOMAIN}"))
        .to(disp.sip)
        .timeout(30)
        .run(&dir)
        .assert_ok(1, "the call");
    callee.wait().assert_ok(1, "the callee");

    // The exporters send in batches (every 5 s by default): wait for the INVITE's trace
    // to hold a span from each of the four services.
    let services = [
        "sipcluster-dispatcher",
        "sipcluster-edge",
        "sipcluster-location",
        "sipcluster-media-relay",
    ];
    let invite_trace = |spans: &[Span]| -> Option<String> {
        // The authenticated INVITE (the first one is challenged) is the one the edge
        // forwarded: its trace has the relay's span.
        spans
            .iter()
            .filter(|s| s.service == "sipcluster-media-relay")
            .map(|s| s.trace_id.clone())
            .find(|t| {
                services
                    .iter()
                    .all(|svc| spans.iter().any(|s| &s.trace_id == t && s.service == *svc))
            })
    };
    let spans = otlp.wait_for(Duration::from_secs(30), |s| invite_trace(s).is_some());
    let trace_id = invite_trace(&spans).unwrap_or_else(|| {
        panic!(
            "no trace with spans from all four services; got:\n{}",
            spans
                .iter()
                .map(|s| format!(
                    "{} {} {} {}<-{}",
                    s.service, s.name, s.trace_id, s.span_id, s.parent_span_id
                ))
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let by_id: HashMap<&str, &Span> = trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let listing = trace
        .iter()
        .map(|s| {
            format!(
                "{} {:?} {}<-{}",
                s.service, s.name, s.span_id, s.parent_span_id
            )
        })
        .collect::<Vec<_>>()
        .join("\n");

    // The dispatcher's span is the root: the trace started where the request entered.
    let root: Vec<&&Span> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(root.len(), 1, "one root:\n{listing}");
    assert_eq!(root[0].service, "sipcluster-dispatcher", "{listing}");
    assert_eq!(root[0].attr("sip.method"), Some("INVITE"), "{listing}");
    let call_id = root[0].attr("sip.call_id").unwrap().to_owned();
    assert!(!call_id.is_empty());

    // Every other span's parent is in the trace: no orphan, no second root.
    for s in &trace {
        if !s.parent_span_id.is_empty() {
            assert!(
                by_id.contains_key(s.parent_span_id.as_str()),
                "{} {:?}'s parent is in the trace:\n{listing}",
                s.service,
                s.name
            );
        }
    }
    // The edge's INVITE span is the dispatcher's child (through the SIP header), with
    // the same Call-ID.
    let edge_invite: Vec<&&Span> = trace
        .iter()
        .filter(|s| s.service == "sipcluster-edge" && s.attr("sip.method") == Some("INVITE"))
        .collect();
    assert_eq!(edge_invite.len(), 1, "{listing}");
    assert_eq!(edge_invite[0].parent_span_id, root[0].span_id, "{listing}");
    assert_eq!(edge_invite[0].attr("sip.call_id"), Some(call_id.as_str()));
    // The location service's and the relay's spans are the edge's gRPC calls: children
    // of its INVITE span (through the gRPC metadata).
    for svc in ["sipcluster-location", "sipcluster-media-relay"] {
        let calls: Vec<&&Span> = trace.iter().filter(|s| s.service == svc).collect();
        assert!(!calls.is_empty(), "{svc}:\n{listing}");
        for c in calls {
            assert_eq!(
                c.parent_span_id, edge_invite[0].span_id,
                "{svc} {:?}:\n{listing}",
                c.name
            );
            assert!(c.name.starts_with('/'), "a gRPC method path: {:?}", c.name);
            if svc == "sipcluster-media-relay" {
                // A call about one SIP call names it.
                assert_eq!(c.attr("sip.call_id"), Some(call_id.as_str()), "{listing}");
            }
        }
    }

    // The edge's log lines about this INVITE carry its trace id.
    let tagged = edge
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["span"]["trace_id"] == trace_id.as_str())
        .count();
    assert!(
        tagged > 0,
        "no edge log line names trace {trace_id}:\n{}",
        edge.log()
    );

    // The edge's request latency and the location service's call latency histograms name
    // traced requests as exemplars (OpenMetrics), each a trace the collector has.
    let exemplars_of = |metrics: SocketAddr, family: &str| -> Vec<String> {
        let (_, om) =
            common::http_get_accept(metrics, "application/openmetrics-text;version=1.0.0");
        let found: Vec<String> = om
            .lines()
            .filter(|l| l.starts_with(family))
            .filter_map(|l| l.split_once(" # {trace_id=\"")?.1.split('"').next())
            .map(str::to_owned)
            .collect();
        assert!(!found.is_empty(), "no exemplar on {family} in:\n{om}");
        found
    };
    let mut exemplars = exemplars_of(
        edge.metrics,
        "sipcluster_sip_request_duration_seconds_bucket",
    );
    exemplars.extend(exemplars_of(
        loc.metrics,
        "sipcluster_location_grpc_call_duration_seconds_bucket",
    ));
    // (The last requests' spans may still be in an exporter's batch: bounded wait.)
    let all = otlp.wait_for(Duration::from_secs(15), |spans| {
        exemplars
            .iter()
            .all(|t| spans.iter().any(|s| s.trace_id == *t))
    });
    for t in &exemplars {
        assert!(
            all.iter().any(|s| s.trace_id == *t),
            "exemplar {t} is a trace the collector got"
        );
    }
    // Classic text (curl, promtool) has none.
    assert!(!edge.scrape().contains("trace_id"));

    // Nothing of the trace left the cluster: SIPp's messages (both phones) carry no
    // trace header.
    let seen = sipp_messages(&dir, "uac") + &sipp_messages(&dir, "uas");
    assert!(seen.contains("INVITE sip:"), "SIPp logged its messages");
    assert!(
        !seen.to_ascii_lowercase().contains("x-sipcluster-trace"),
        "a trace header reached a phone"
    );
    assert!(!seen.contains(&trace_id), "the trace id reached a phone");

    // A dispatcher that traces nothing (ratio 0) in front of the same edge, which would
    // trace everything it is reached with directly: the edge follows the dispatcher's
    // decision, so a REGISTER through it makes no span anywhere.
    let registers = |spans: &[Span]| {
        spans
            .iter()
            .filter(|s| s.attr("sip.method") == Some("REGISTER"))
            .count()
    };
    let before = registers(&otlp.spans());
    let (quiet, _admin) = Server::dispatcher(
        &dir,
        "dispatcher-untraced",
        &[edge.sip],
        &["--otlp-endpoint", &endpoint, "--trace-sample-ratio", "0"],
    );
    Sipp::new("register-carol", "register.xml", Proto::Udp)
        .inf(&format!("carol;{DOMAIN};;127.0.0.1:6123;3600"))
        .auth("carol", "carol-secret", DOMAIN)
        .to(quiet.sip)
        .run(&dir)
        .assert_ok(1, "REGISTER through the untraced dispatcher");
    // Longer than an export batch (5 s).
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        registers(&otlp.spans()),
        before,
        "an untraced request made spans"
    );
}

//! HEP to a real collector: sngrep listens for HEP3 on loopback and writes what it
//! decodes to a pcap; tshark reads the pcap back as SIP. If the addresses, ports,
//! direction, message or Call-ID were encoded wrong, the rows tshark prints differ.
//!
//! Only UDP: sngrep (1.6 and up to 1.8) listens for HEP on a UDP socket only, so the TCP
//! exporter is tested against a collector of our own (`tests/exporter.rs`). And only
//! IPv4: sngrep writes each HEP packet to the pcap inside a made-up Ethernet/IPv4/UDP
//! frame, so an IPv6 capture could not be read back from it (the encoding of both
//! families is checked byte for byte in `src/encode.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;
#[path = "driver/sngrep.rs"]
mod driver;

use std::time::{Duration, Instant};

use common::{call, export, free_port, unique_call_id, wait_until};
use driver::{Row, Sngrep, require, rows_of};
use hep::{HepConfig, HepExporter, HepMetrics, HepTransport};

const WAIT: Duration = Duration::from_secs(15);

/// An exporter to sngrep on `port`.
fn exporter(port: u16, password: Option<&str>, metrics: &HepMetrics) -> HepExporter {
    HepExporter::start(
        &HepConfig {
            enabled: true,
            address: format!("127.0.0.1:{port}"),
            transport: HepTransport::Udp,
            capture_id: 2001,
            password: password.map(String::from),
            ..HepConfig::default()
        },
        metrics,
    )
    .unwrap()
}

/// sngrep says nothing when its listener is bound: probe until a message shows up in the
/// pcap (it writes every HEP packet it accepts, and flushes each).
async fn wait_ready(sngrep: &Sngrep, sink: &hep::HepSink) {
    let probe_id = unique_call_id("probe");
    let probe = &call(&probe_id)[..1];
    let start = Instant::now();
    while sngrep.pcap_len() <= 24 {
        assert!(
            start.elapsed() < WAIT,
            "sngrep wrote nothing to its pcap within {WAIT:?}"
        );
        export(sink, &probe_id, probe);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The rows tshark should print for `messages`.
fn expected_rows(call_id: &str, messages: &[common::Message]) -> Vec<Row> {
    messages
        .iter()
        .map(|m| Row {
            src: m.src.ip().to_string(),
            src_port: m.src.port(),
            dst: m.dst.ip().to_string(),
            dst_port: m.dst.port(),
            method: m.method.into(),
            status: if m.status == 0 {
                String::new()
            } else {
                m.status.to_string()
            },
            call_id: call_id.into(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sngrep_receives_a_whole_call_over_udp() {
    require("sngrep", "-V");
    require("tshark", "--version");

    let port = free_port("127.0.0.1", "udp");
    let mut sngrep = Sngrep::start(port, None);
    let metrics = HepMetrics::default();
    let exporter = exporter(port, None, &metrics);
    let sink = exporter.sink();
    wait_ready(&sngrep, &sink).await;

    let call_id = unique_call_id("hep-sngrep");
    let messages = call(&call_id);
    let before = metrics.packets.get();
    export(&sink, &call_id, &messages);
    wait_until(WAIT, "the exporter to send 7 packets", || {
        metrics.packets.get() == before + 7
    })
    .await;
    let pcap = sngrep.pcap.clone();
    wait_until(WAIT, "sngrep to write the 7 messages", || {
        rows_of(&pcap, &call_id).len() >= 7
    })
    .await;
    sngrep.stop();

    let rows = rows_of(&sngrep.pcap, &call_id);
    for r in &rows {
        println!("{r:?}");
    }
    assert_eq!(
        rows,
        expected_rows(&call_id, &messages),
        "tshark's reading of sngrep's pcap"
    );
    for r in hep::reason::ALL {
        assert_eq!(metrics.dropped(r), 0, "dropped {r}");
    }
}

/// sngrep reads our auth key chunk: with its listener password set, the call sent with
/// that password is in its pcap, and the calls sent with another or none are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sngrep_accepts_the_right_password_only() {
    require("sngrep", "-V");
    require("tshark", "--version");

    let port = free_port("127.0.0.1", "udp");
    let mut sngrep = Sngrep::start(port, Some("s3cret"));
    let metrics = HepMetrics::default();
    let right = exporter(port, Some("s3cret"), &metrics);
    let wrong = exporter(port, Some("guess"), &metrics);
    let none = exporter(port, None, &metrics);
    wait_ready(&sngrep, &right.sink()).await;

    let ids: Vec<String> = ["right", "wrong", "none"]
        .iter()
        .map(|t| unique_call_id(t))
        .collect();
    let before = metrics.packets.get();
    for (e, id) in [&wrong, &none, &right]
        .into_iter()
        .zip([&ids[1], &ids[2], &ids[0]])
    {
        export(&e.sink(), id, &call(id));
    }
    wait_until(WAIT, "the exporters to send 21 packets", || {
        metrics.packets.get() == before + 21
    })
    .await;
    // The right call went last: once it is all there, the others had their chance.
    let pcap = sngrep.pcap.clone();
    wait_until(WAIT, "sngrep to write the right call", || {
        rows_of(&pcap, &ids[0]).len() >= 7
    })
    .await;
    sngrep.stop();

    assert_eq!(
        rows_of(&sngrep.pcap, &ids[0]),
        expected_rows(&ids[0], &call(&ids[0]))
    );
    assert_eq!(
        rows_of(&sngrep.pcap, &ids[1]),
        vec![],
        "wrong password accepted"
    );
    assert_eq!(
        rows_of(&sngrep.pcap, &ids[2]),
        vec![],
        "no password accepted"
    );
}

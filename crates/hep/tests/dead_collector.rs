//! A collector that is down, or up and not reading, costs SIP nothing: 100 000 captures
//! return at once whatever the collector does, and every packet that could not go is
//! counted by why. Times are asserted loosely (the loop must not be held up by a
//! collector, which would take seconds per packet); the counters carry the proof.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{A, B, free_port, wait_until};
use hep::{HepConfig, HepExporter, HepMetrics, HepSink, HepTransport, reason};
use sip_txn::Transport;

const N: u64 = 100_000;
const WAIT: Duration = Duration::from_secs(20);

/// A message of about a full Ethernet frame.
fn payload() -> Vec<u8> {
    let mut m = b"MESSAGE sip:bob@127.0.0.2 SIP/2.0\r\nContent-Length: 1300\r\n\r\n".to_vec();
    m.resize(m.len() + 1300, b'x');
    m
}

/// `n` captures of distinct calls; returns how long the loop took and the longest call.
fn flood(sink: &HepSink, n: u64, payload: &[u8]) -> (Duration, Duration) {
    let (a, b): (SocketAddr, SocketAddr) = (A.parse().unwrap(), B.parse().unwrap());
    let mut call_id = String::new();
    let mut longest = Duration::ZERO;
    let start = Instant::now();
    for i in 0..n {
        call_id.clear();
        use std::fmt::Write;
        write!(call_id, "flood-{i}@127.0.0.1").unwrap();
        let t = Instant::now();
        sink.capture(a, b, Transport::Udp, payload, &call_id);
        longest = longest.max(t.elapsed());
    }
    (start.elapsed(), longest)
}

fn start(
    address: String,
    transport: HepTransport,
    queue: usize,
    metrics: &HepMetrics,
) -> HepExporter {
    HepExporter::start(
        &HepConfig {
            enabled: true,
            address,
            transport,
            queue,
            write_timeout_ms: 200,
            ..HepConfig::default()
        },
        metrics,
    )
    .unwrap()
}

fn counters(m: &HepMetrics) -> String {
    format!(
        "packets {} queue_full {} disconnected {} send_error {} too_large {}",
        m.packets.get(),
        m.dropped(reason::QUEUE_FULL),
        m.dropped(reason::DISCONNECTED),
        m.dropped(reason::SEND_ERROR),
        m.dropped(reason::TOO_LARGE),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_to_a_port_where_nothing_listens() {
    let port = free_port("127.0.0.1", "tcp");
    let metrics = HepMetrics::default();
    let exporter = start(
        format!("127.0.0.1:{port}"),
        HepTransport::Tcp,
        10_000,
        &metrics,
    );
    let payload = payload();

    let (took, longest) = flood(&exporter.sink(), N, &payload);
    println!(
        "{N} captures in {took:?}, longest {longest:?}; {}",
        counters(&metrics)
    );
    assert!(took < Duration::from_secs(2), "{N} captures took {took:?}");

    // Everything is dropped: what found the queue full at once, the rest drained by the
    // sender while it backs off between refused connections.
    wait_until(WAIT, "every capture counted as dropped", || {
        metrics.dropped(reason::QUEUE_FULL) + metrics.dropped(reason::DISCONNECTED) == N
    })
    .await;
    assert_eq!(metrics.packets.get(), 0, "{}", counters(&metrics));
    assert!(
        metrics.dropped(reason::DISCONNECTED) > 0,
        "{}",
        counters(&metrics)
    );
    assert_eq!(metrics.dropped(reason::SEND_ERROR), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_to_a_port_where_nothing_listens() {
    let port = free_port("127.0.0.1", "udp");
    let metrics = HepMetrics::default();
    let exporter = start(
        format!("127.0.0.1:{port}"),
        HepTransport::Udp,
        10_000,
        &metrics,
    );
    let payload = payload();

    let (took, longest) = flood(&exporter.sink(), N, &payload);
    println!(
        "{N} captures in {took:?}, longest {longest:?}; {}",
        counters(&metrics)
    );
    assert!(took < Duration::from_secs(2), "{N} captures took {took:?}");
    // UDP cannot know: datagrams go out (and are lost), or the queue overflows.
    wait_until(WAIT, "every capture sent or dropped", || {
        metrics.packets.get() + metrics.dropped_total() == N
    })
    .await;
    assert_eq!(
        metrics.packets.get()
            + metrics.dropped(reason::QUEUE_FULL)
            + metrics.dropped(reason::SEND_ERROR),
        N
    );
}

/// A collector that accepts and never reads: its receive buffer (kept small) and our
/// send buffer fill, the write times out, the connection is dropped and another made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_to_a_collector_that_never_reads() {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(16).unwrap();
    socket.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(socket.into()).unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    // Holds every connection open, reads none.
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            held.push(c);
        }
    });

    let metrics = HepMetrics::default();
    let exporter = start(address, HepTransport::Tcp, 100, &metrics);
    let sink = exporter.sink();
    let payload = payload();

    let (took, longest) = flood(&sink, N, &payload);
    println!(
        "{N} captures in {took:?}, longest {longest:?}; {}",
        counters(&metrics)
    );
    assert!(took < Duration::from_secs(2), "{N} captures took {took:?}");
    assert!(
        metrics.dropped(reason::QUEUE_FULL) > 0,
        "{}",
        counters(&metrics)
    );

    // Keep a trickle going until the stalled write has timed out and the exporter has
    // connected again (the buffers may not have been full when the flood ended).
    let mut sent = N;
    let start = Instant::now();
    while metrics.dropped(reason::SEND_ERROR) == 0 || accepted.load(Ordering::Relaxed) < 2 {
        assert!(
            start.elapsed() < WAIT,
            "no write timeout and reconnection within {WAIT:?}: {}",
            counters(&metrics)
        );
        let (took, _) = flood(&sink, 100, &payload);
        assert!(took < Duration::from_secs(1), "100 captures took {took:?}");
        sent += 100;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "after {:?}: {} connections, {}",
        start.elapsed(),
        accepted.load(Ordering::Relaxed),
        counters(&metrics)
    );
    // Nothing is lost without a count.
    wait_until(WAIT, "every capture sent or dropped", || {
        metrics.packets.get() + metrics.dropped_total() == sent
    })
    .await;
    holder.abort();
}

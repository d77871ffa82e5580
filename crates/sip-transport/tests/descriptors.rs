//! Out of file descriptors, over real sockets. A test binary of its own: it lowers this
//! process's `RLIMIT_NOFILE` (to 256), which every test in the binary would feel.
//!
//! * The connection cap is lowered below the limit, leaving a reserve, and says so.
//! * When `accept` fails (EMFILE: every descriptor taken by something else), the
//!   acceptor backs off (10 ms doubling to 1 s) with one log line, not a retry and a WARN
//!   every few milliseconds, and serves the waiting client once descriptors are free.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use sip_transport::{Inbound, TransportConfig, TransportMetrics, Transports};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// The log, captured.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

const OPTIONS: &str = "OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKfd1\r\nMax-Forwards: 70\r\nFrom: <sip:t@x>;tag=1\r\nTo: <sip:edge@127.0.0.1>\r\nCall-ID: fd1@t\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_cap_is_lowered_and_accept_backs_off() {
    let log = Log::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 256, hard).unwrap();

    let (tx, mut rx) = mpsc::channel(16);
    let metrics = TransportMetrics::default();
    let cfg = TransportConfig {
        udp: vec![],
        tcp: vec!["127.0.0.1:0".parse().unwrap()],
        ..TransportConfig::default()
    };
    let (t, _tasks) = Transports::bind(cfg, tx, metrics.clone()).await.unwrap();
    // 256 less a reserve of 128 (half, for so small a limit), not the configured 10,000.
    assert_eq!(t.max_connections(), 128);
    assert_eq!(metrics.tcp_max_connections.get(), 128);
    assert!(
        log.text().contains("tcp_max_connections lowered"),
        "{}",
        log.text()
    );

    // The client's socket first; then something else takes every descriptor left.
    let client = tokio::net::TcpSocket::new_v4().unwrap();
    let mut hog = Vec::new();
    for _ in 0..256 {
        match std::fs::File::open("/dev/null") {
            Ok(f) => hog.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(24), "EMFILE expected: {e}");
                break;
            }
        }
    }
    assert!(
        std::fs::File::open("/dev/null").is_err(),
        "descriptors left"
    );
    // The kernel completes the handshake; the server's accept has no descriptor for it.
    let mut c = client.connect(t.tcp_addrs()[0]).await.unwrap();
    let failing_from = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failures = metrics.accept_errors.get();
    // Backing off from 10 ms, doubling: 8 attempts in 1.5 s (7 waits sum to 1.27 s). A
    // retry every 50 ms would be 30, a busy loop thousands.
    assert!(
        (2..=12).contains(&failures),
        "{failures} failed accepts in {:?}",
        failing_from.elapsed()
    );
    let lines = log.text().matches("accept failed; backing off").count();
    assert_eq!(lines, 1, "{}", log.text());

    // Descriptors come back: the waiting client is served within the longest backoff.
    drop(hog);
    c.write_all(OPTIONS.as_bytes()).await.unwrap();
    let got = timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Inbound::Message { msg, .. }) = rx.recv().await {
                return msg;
            }
        }
    })
    .await
    .expect("served after the descriptors came back");
    assert_eq!(got.call_id(), Ok("fd1@t"));
    assert!(
        log.text().contains("accepting connections again"),
        "{}",
        log.text()
    );
}

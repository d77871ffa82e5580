//! The metrics/health endpoint's own budget, over real loopback connections: a client
//! that sends its request one byte at a time is cut at the deadline, connections beyond
//! the cap are closed at once, and the endpoint answers again as soon as slots free up.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use telemetry::HttpLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

async fn endpoint(limits: HttpLimits) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ready = Arc::new(AtomicBool::new(true));
    tokio::spawn(telemetry::serve_with_limits(
        listener,
        Registry::default(),
        ready,
        limits,
    ));
    addr
}

async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = Vec::new();
    timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Reads until the peer closes (or 5 s pass); how long that took.
async fn closed_after(s: &mut TcpStream) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the connection stayed open 5 s"),
        }
    }
}

#[tokio::test]
async fn a_slow_request_is_cut_at_the_deadline() {
    let addr = endpoint(HttpLimits {
        max_connections: 4,
        connection_deadline: Duration::from_millis(600),
    })
    .await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    let request =
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    // One byte every 50 ms, bounded by the request's length (3.5 s), stopping once the
    // server has closed.
    let mut cut = None;
    for b in request {
        if slow.write_all(&[*b]).await.is_err() {
            cut = Some(start.elapsed());
            break;
        }
        let mut probe = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = timeout(Duration::from_millis(50), slow.read(&mut probe)).await
        {
            cut = Some(start.elapsed());
            break;
        }
    }
    let cut = cut.expect("the server never closed the slow connection");
    assert!(
        cut >= Duration::from_millis(500) && cut < Duration::from_millis(2500),
        "closed after {cut:?}, deadline 600 ms"
    );
    // A normal request is answered meanwhile and after.
    let r = get(addr, "/healthz").await.expect("healthz");
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
}

#[tokio::test]
async fn beyond_the_cap_closed_at_once_and_answering_again_when_slots_free() {
    let addr = endpoint(HttpLimits {
        max_connections: 3,
        connection_deadline: Duration::from_millis(800),
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        held.push(s);
    }
    // Give the server the time to accept all three before the fourth arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let took = closed_after(&mut extra).await;
    assert!(
        took < Duration::from_millis(500),
        "fourth closed after {took:?}"
    );
    // The held ones are cut at their deadline; then the endpoint answers.
    for s in &mut held {
        let took = closed_after(s).await;
        assert!(
            took < Duration::from_secs(2),
            "held connection lasted {took:?}"
        );
    }
    let r = get(addr, "/readyz").await.expect("readyz");
    assert!(
        r.starts_with("HTTP/1.1 200") && r.ends_with("ready\n"),
        "{r}"
    );
}

//! The exporter over real loopback sockets, to collectors of our own that decode what
//! they receive with `hep::decode`: every field over UDP (both families), sampling by
//! call, and TCP (framing, reconnection after the collector closes).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::{call, export, unique_call_id, wait_until};
use hep::{Decoded, HepConfig, HepExporter, HepMetrics, HepTransport, decode};
use sip_txn::Transport;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn config(address: SocketAddr, transport: HepTransport) -> HepConfig {
    HepConfig {
        enabled: true,
        address: address.to_string(),
        transport,
        capture_id: 4242,
        ..HepConfig::default()
    }
}

async fn recv_udp(s: &UdpSocket) -> Decoded {
    let mut buf = vec![0u8; 65_536];
    let n = timeout(WAIT, s.recv(&mut buf)).await.unwrap().unwrap();
    decode(&buf[..n]).unwrap()
}

/// The next HEP packet on a TCP stream; `None` at its end.
async fn recv_tcp(s: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Decoded> {
    loop {
        if let Some(len) = hep::decode::packet_len(pending).unwrap()
            && pending.len() >= len
        {
            let packet: Vec<u8> = pending.drain(..len).collect();
            return Some(decode(&packet).unwrap());
        }
        let mut buf = [0u8; 4096];
        let n = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_packets_carry_every_field_in_both_families() {
    for (collector, a, b) in [
        ("127.0.0.1:0", "127.0.0.1:5060", "127.0.0.2:5070"),
        ("[::1]:0", "[2001:db8::1]:5060", "[2001:db8::2]:5070"),
    ] {
        let sock = UdpSocket::bind(collector).await.unwrap();
        let metrics = HepMetrics::default();
        let cfg = HepConfig {
            password: Some("pw".into()),
            ..config(sock.local_addr().unwrap(), HepTransport::Udp)
        };
        let exporter = HepExporter::start(&cfg, &metrics).unwrap();
        let sink = exporter.sink();
        let (a, b): (SocketAddr, SocketAddr) = (a.parse().unwrap(), b.parse().unwrap());
        let call_id = unique_call_id("fields");
        let msg = call(&call_id).remove(0).text;
        let before = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        sink.capture(a, b, Transport::Udp, msg.as_bytes(), &call_id);
        sink.capture(b, a, Transport::Tls, msg.as_bytes(), &call_id);

        let d = recv_udp(&sock).await;
        assert_eq!(d.family, if a.is_ipv4() { 2 } else { 10 });
        assert_eq!((d.src, d.dst), (a, b));
        assert_eq!(d.ip_proto, 17);
        assert_eq!(d.proto_type, 1);
        assert_eq!(d.capture_id, 4242);
        assert_eq!(d.auth_key.as_deref(), Some(&b"pw"[..]));
        assert_eq!(d.payload, msg.as_bytes());
        assert_eq!(d.call_id.as_deref(), Some(call_id.as_str()));
        assert!(u64::from(d.time_sec) >= before && u64::from(d.time_sec) <= before + 5);
        assert!(d.time_usec < 1_000_000);

        let d = recv_udp(&sock).await;
        assert_eq!((d.src, d.dst), (b, a), "the other direction");
        assert_eq!(d.ip_proto, 6, "TLS is reported as TCP");
        wait_until(WAIT, "2 packets counted", || metrics.packets.get() == 2).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_sampled_whole_or_not_at_all() {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let metrics = HepMetrics::default();
    let cfg = HepConfig {
        sample_ratio: 0.3,
        ..config(sock.local_addr().unwrap(), HepTransport::Udp)
    };
    let exporter = HepExporter::start(&cfg, &metrics).unwrap();
    let sink = exporter.sink();
    // Read as they come: 2000 datagrams at once would overflow the socket's buffer.
    let reader = tokio::spawn(async move {
        let mut per_call: HashMap<String, u64> = HashMap::new();
        let mut buf = vec![0u8; 65_536];
        while let Ok(Ok(n)) = timeout(Duration::from_millis(500), sock.recv(&mut buf)).await {
            let d = decode(&buf[..n]).unwrap();
            *per_call.entry(d.call_id.unwrap()).or_default() += 1;
        }
        per_call
    });
    let calls = 300;
    for i in 0..calls {
        let id = format!("sample-{i}@example.org");
        export(&sink, &id, &call(&id));
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // Every message is either sent or sampled out.
    wait_until(WAIT, "every message accounted", || {
        metrics.packets.get() + metrics.sampled_out.get() == calls * 7
    })
    .await;
    let per_call = reader.await.unwrap();
    assert_eq!(per_call.values().sum::<u64>(), metrics.packets.get());
    assert!(
        per_call.values().all(|&n| n == 7),
        "a sampled call lost messages: {per_call:?}"
    );
    let sampled = per_call.len() as u64;
    // 30 % of 300 = 90; a fair hash lands well within 50..130.
    assert!((50..130).contains(&sampled), "{sampled} calls sampled");
    assert_eq!(metrics.sampled_out.get(), (calls - sampled) * 7);
    assert_eq!(metrics.dropped_total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_frames_packets_and_reconnects_when_the_collector_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = HepMetrics::default();
    let exporter = HepExporter::start(
        &config(listener.local_addr().unwrap(), HepTransport::Tcp),
        &metrics,
    )
    .unwrap();
    let sink = exporter.sink();

    let call_id = unique_call_id("tcp");
    let messages = call(&call_id);
    export(&sink, &call_id, &messages);
    let (mut conn, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    let mut pending = Vec::new();
    for m in &messages {
        let d = recv_tcp(&mut conn, &mut pending).await.unwrap();
        assert_eq!((d.src, d.dst), (m.src, m.dst));
        assert_eq!(d.ip_proto, 17, "the SIP transport, not the collector's");
        assert_eq!(d.payload, m.text.as_bytes());
        assert_eq!(d.call_id.as_deref(), Some(call_id.as_str()));
    }

    // The collector goes away: the exporter sees the close, backs off, connects again,
    // and what it is given then arrives on the new connection.
    drop(conn);
    let second = unique_call_id("tcp-again");
    let accept = tokio::spawn(async move { listener.accept().await.unwrap().0 });
    let mut conn = loop {
        export(&sink, &second, &call(&second)[..1]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        if accept.is_finished() {
            break accept.await.unwrap();
        }
    };
    let mut pending = Vec::new();
    let d = loop {
        // Messages given while it reconnected may wait in the queue and arrive too.
        export(&sink, &second, &call(&second)[..1]);
        if let Some(d) = timeout(
            Duration::from_millis(500),
            recv_tcp(&mut conn, &mut pending),
        )
        .await
        .ok()
        .flatten()
        {
            break d;
        }
    };
    assert_eq!(d.call_id.as_deref(), Some(second.as_str()));
    assert!(metrics.packets.get() >= 8);
}

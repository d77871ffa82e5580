//! TLS flows over real loopback sockets, with certificates made by `openssl`: messages
//! in and out over a flow, the certificate swapped on disk and used by the next
//! connection without a restart (a bad change ignored), client certificates required
//! and naming the flow's peer, and an outbound TLS connection.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod pki;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sip_core::SipMessage;
use sip_transport::{
    ClientAuth, Inbound, TlsConfig, TransportConfig, TransportMetrics, Transports,
};
use sip_txn::{Target, Transport, TxnRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

const WAIT: Duration = Duration::from_secs(5);

fn options(branch: &str) -> String {
    format!(
        "OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:t@x>;tag=1\r\nTo: <sip:edge@127.0.0.1>\r\nCall-ID: {branch}@t\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

fn tls_config(dir: &Path, auth: ClientAuth) -> TlsConfig {
    TlsConfig {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        cert_file: dir.join("live.crt"),
        key_file: dir.join("live.key"),
        client_auth: auth,
        client_ca_file: Some(dir.join("ca.crt")),
        ca_file: Some(dir.join("ca.crt")),
        reload_interval: Duration::from_millis(100),
        handshake_timeout: Duration::from_secs(2),
    }
}

/// Make `name`'s pair the one served (copied over the live files).
fn serve(dir: &Path, name: &str) {
    // Written to a temporary name and renamed, as a Secret update swaps the files.
    for ext in ["crt", "key"] {
        let tmp = dir.join(format!("live.{ext}.tmp"));
        std::fs::copy(dir.join(format!("{name}.{ext}")), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(format!("live.{ext}"))).unwrap();
    }
}

async fn start(tls: TlsConfig) -> (Transports, mpsc::Receiver<Inbound>, TransportMetrics) {
    let (tx, rx) = mpsc::channel(64);
    let metrics = TransportMetrics::default();
    let cfg = TransportConfig {
        udp: Vec::new(),
        tcp: Vec::new(),
        tls: Some(tls),
        ..TransportConfig::default()
    };
    let (t, _tasks) = Transports::bind(cfg, tx, metrics.clone()).await.unwrap();
    (t, rx, metrics)
}

fn client(ca: &Path, cert: Option<(&Path, &Path)>) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let cfg = match cert {
        Some((c, k)) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(k).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(cfg))
}

type Conn = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(c: &TlsConnector, addr: SocketAddr) -> std::io::Result<Conn> {
    let tcp = TcpStream::connect(addr).await?;
    let mut s = c
        .connect(ServerName::try_from("sip.test").unwrap(), tcp)
        .await?;
    // TLS 1.3: a refused client certificate shows on the first read after the handshake.
    s.write_all(b"\r\n\r\n").await?;
    let mut pong = [0u8; 2];
    timeout(WAIT, s.read_exact(&mut pong)).await??;
    assert_eq!(&pong, b"\r\n");
    Ok(s)
}

/// The subject CN of the certificate the server presented.
fn served_cn(s: &Conn) -> String {
    let der = &s.get_ref().1.peer_certificates().unwrap()[0];
    let out = std::process::Command::new("openssl")
        .args(["x509", "-inform", "DER", "-noout", "-subject"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut p| {
            use std::io::Write;
            p.stdin.take().unwrap().write_all(der.as_ref())?;
            p.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.rsplit("CN = ").next().unwrap().trim().to_owned()
}

async fn next_message(rx: &mut mpsc::Receiver<Inbound>) -> (SipMessage, Target) {
    loop {
        match timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            Inbound::Message { msg, source, .. } => return (msg, source),
            _ => continue,
        }
    }
}

fn counter(m: &TransportMetrics, name: &str, label: &str) -> u64 {
    let mut registry = prometheus_client::registry::Registry::default();
    m.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let want = format!("{name}_total{{result=\"{label}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(want.as_str()))
        .unwrap_or_else(|| panic!("{want} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_flow_over_tls_and_a_certificate_swapped_on_disk() {
    let dir = tempdir("swap");
    let pki = pki::Pki::new(&dir, "test-ca");
    pki.leaf("first", "DNS:sip.test,IP:127.0.0.1");
    pki.leaf_for_days("second", "DNS:sip.test,IP:127.0.0.1", 30);
    pki.leaf("stranger", "DNS:other.test");
    serve(&dir, "first");
    let (t, mut rx, metrics) = start(tls_config(&dir, ClientAuth::Off)).await;
    let addr = t.tls_addrs()[0];
    let c = client(&pki.ca(), None);
    // The expiry gauge: the certificate's notAfter (3 days from its signing).
    let expires_in = |m: &TransportMetrics| {
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        m.tls_certificate_expiry.get() - unix_now
    };
    let three_days = 3 * 86_400;
    let left = expires_in(&metrics);
    assert!(
        (three_days - 120..=three_days).contains(&left),
        "{left} s left"
    );

    // A message in over TLS, a reply out over the same flow.
    let mut a = connect(&c, addr).await.unwrap();
    assert_eq!(served_cn(&a), "first");
    a.write_all(options("z9hG4bKtls1").as_bytes())
        .await
        .unwrap();
    let (msg, source) = next_message(&mut rx).await;
    assert_eq!(msg.call_id(), Ok("z9hG4bKtls1@t"));
    assert_eq!(source.transport, Transport::Tls);
    assert!(source.flow.is_some());
    assert_eq!(
        t.flow_peer(source.flow.unwrap()),
        None,
        "no client certificate"
    );
    t.send(
        source,
        Bytes::from_static(b"SIP/2.0 200 OK\r\n"),
        TxnRef::Stateless,
    );
    let mut got = [0u8; 16];
    timeout(WAIT, a.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"SIP/2.0 200 OK\r\n");

    // Swapped on disk: the next connection gets the new certificate, no restart.
    serve(&dir, "second");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // A new client each time: a resumed session shows the certificate it began with.
        let b = connect(&client(&pki.ca(), None), addr).await.unwrap();
        if served_cn(&b) == "second" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Counted once the swap is done (the gauge set before).
    while counter(&metrics, "sip_transport_tls_certificate_reloads", "ok") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "reload not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        counter(&metrics, "sip_transport_tls_certificate_reloads", "ok"),
        1
    );
    let left = expires_in(&metrics);
    assert!(
        (30 * 86_400 - 120..=30 * 86_400).contains(&left),
        "the new certificate's: {left} s left"
    );
    // The connection made before the swap goes on.
    a.write_all(options("z9hG4bKtls2").as_bytes())
        .await
        .unwrap();
    assert_eq!(next_message(&mut rx).await.0.call_id(), Ok("z9hG4bKtls2@t"));

    // A key that is not the certificate's: not applied, counted, the pair in use stays.
    std::fs::copy(dir.join("stranger.key"), dir.join("k.tmp")).unwrap();
    std::fs::rename(dir.join("k.tmp"), dir.join("live.key")).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while counter(&metrics, "sip_transport_tls_certificate_reloads", "error") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bad change not seen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = connect(&client(&pki.ca(), None), addr).await.unwrap();
    assert_eq!(served_cn(&b), "second");
    assert_eq!(
        counter(&metrics, "sip_transport_tls_certificate_reloads", "ok"),
        1
    );
    // Once per change: the broken files are not reported again and again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        counter(&metrics, "sip_transport_tls_certificate_reloads", "error"),
        1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn client_certificates_required_name_the_peer() {
    let dir = tempdir("mtls");
    let pki = pki::Pki::new(&dir, "test-ca");
    pki.leaf("live", "DNS:sip.test,IP:127.0.0.1");
    let (cert, key) = pki.leaf("trunk", "DNS:Trunk.Example.NET,DNS:alt.example.net");
    let (t, mut rx, metrics) = start(tls_config(&dir, ClientAuth::Required)).await;
    let addr = t.tls_addrs()[0];

    // No certificate: refused.
    assert!(connect(&client(&pki.ca(), None), addr).await.is_err());
    // One from another CA: refused.
    let other = pki::Pki::new(&dir.join("other"), "other-ca");
    let (oc, ok) = other.leaf("trunk", "DNS:trunk.example.net");
    assert!(
        connect(&client(&pki.ca(), Some((&oc, &ok))), addr)
            .await
            .is_err()
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while counter(&metrics, "sip_transport_tls_handshakes", "failed") < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "failures not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Ours: served, and the flow names the peer (its first DNS name, lower-cased).
    let mut s = connect(&client(&pki.ca(), Some((&cert, &key))), addr)
        .await
        .unwrap();
    s.write_all(options("z9hG4bKmtls").as_bytes())
        .await
        .unwrap();
    let (_, source) = next_message(&mut rx).await;
    assert_eq!(
        t.flow_peer(source.flow.unwrap()).as_deref(),
        Some("trunk.example.net")
    );
    assert_eq!(counter(&metrics, "sip_transport_tls_handshakes", "ok"), 1);

    // A client that connects and says nothing holds its slot only until the deadline.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = timeout(Duration::from_secs(4), silent.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    assert_eq!(
        counter(&metrics, "sip_transport_tls_handshakes", "timeout"),
        1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_outbound_tls_connection_verifies_the_server_and_is_reused() {
    let dir = tempdir("out");
    let pki = pki::Pki::new(&dir, "test-ca");
    pki.leaf("live", "DNS:sip.test,IP:127.0.0.1");
    let (server, mut server_rx, _) = start(tls_config(&dir, ClientAuth::Optional)).await;
    let (client_t, mut client_rx, _) = start(tls_config(&dir, ClientAuth::Off)).await;
    let target = Target {
        transport: Transport::Tls,
        addr: server.tls_addrs()[0],
        flow: None,
    };
    for branch in ["z9hG4bKout1", "z9hG4bKout2"] {
        client_t.send(
            target,
            Bytes::from(options(branch).into_bytes()),
            TxnRef::Stateless,
        );
        let (msg, source) = next_message(&mut server_rx).await;
        assert_eq!(msg.call_id().unwrap(), format!("{branch}@t"));
        assert_eq!(source.transport, Transport::Tls);
        // We presented our certificate: the server knows who we are.
        assert_eq!(
            server.flow_peer(source.flow.unwrap()).as_deref(),
            Some("sip.test")
        );
    }
    assert_eq!(client_t.connection_count(), 1, "one connection, reused");

    // A server whose certificate does not name the address: the send fails.
    let bad = tempdir("out-bad");
    let pki2 = pki::Pki::new(&bad, "test-ca");
    pki2.leaf("live", "DNS:elsewhere.test");
    let (other, _other_rx, _) = start(tls_config(&bad, ClientAuth::Off)).await;
    let mut cfg = tls_config(&bad, ClientAuth::Off);
    cfg.listen.clear();
    let (sender, mut sender_rx, _) = start(cfg).await;
    sender.send(
        Target {
            transport: Transport::Tls,
            addr: other.tls_addrs()[0],
            flow: None,
        },
        Bytes::from(options("z9hG4bKbad").into_bytes()),
        TxnRef::Stateless,
    );
    loop {
        match timeout(WAIT, sender_rx.recv()).await.unwrap().unwrap() {
            Inbound::SendFailed { target, .. } => {
                assert_eq!(target.addr, other.tls_addrs()[0]);
                break;
            }
            _ => continue,
        }
    }
    let _ = client_rx.try_recv();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&bad);
}

/// The CA files are re-read when they change, as the certificate is: a trunk whose CA
/// replaces the old one in `client_ca_file` is served and the old CA's refused; a
/// server whose CA replaces the old one in `ca_file` is reached and the old one no more.
#[tokio::test]
async fn ca_files_swapped_on_disk_change_whom_we_trust() {
    let dir = tempdir("trust");
    let pki = pki::Pki::new(&dir, "test-ca");
    pki.leaf("live", "DNS:sip.test,IP:127.0.0.1");
    let (old_cert, old_key) = pki.leaf("trunk", "DNS:trunk.example.net");
    let new_pki = pki::Pki::new(&dir.join("new"), "new-ca");
    let (new_cert, new_key) = new_pki.leaf("trunk", "DNS:trunk.example.net");
    let (new_live_cert, new_live_key) = new_pki.leaf("live", "DNS:sip.test,IP:127.0.0.1");
    // The CA files the transports read: the old CA's, replaced later (renamed over).
    let swap = |path: &Path, with: &Path| {
        let tmp = path.with_extension("tmp");
        std::fs::copy(with, &tmp).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    };
    let clients_ca = dir.join("clients-ca.crt");
    let servers_ca = dir.join("servers-ca.crt");
    swap(&clients_ca, &pki.ca());
    swap(&servers_ca, &pki.ca());
    let mut cfg = tls_config(&dir, ClientAuth::Required);
    cfg.client_ca_file = Some(clients_ca.clone());
    cfg.ca_file = Some(servers_ca.clone());
    let (t, _rx, metrics) = start(cfg).await;
    let addr = t.tls_addrs()[0];
    let old = (old_cert.as_path(), old_key.as_path());
    let new = (new_cert.as_path(), new_key.as_path());
    assert!(connect(&client(&pki.ca(), Some(old)), addr).await.is_ok());
    assert!(connect(&client(&pki.ca(), Some(new)), addr).await.is_err());

    // Client certificates: the new CA in, the old one out, no restart.
    swap(&clients_ca, &new_pki.ca());
    let deadline = tokio::time::Instant::now() + WAIT;
    while connect(&client(&pki.ca(), Some(new)), addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "new CA never trusted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        connect(&client(&pki.ca(), Some(old)), addr).await.is_err(),
        "the replaced CA's client is still served"
    );

    // Servers: one with a certificate from the new CA is refused, then reached once the
    // CA file names it.
    let server_dir = tempdir("trust-server");
    std::fs::copy(&new_live_cert, server_dir.join("live.crt")).unwrap();
    std::fs::copy(&new_live_key, server_dir.join("live.key")).unwrap();
    std::fs::copy(new_pki.ca(), server_dir.join("ca.crt")).unwrap();
    let (server, mut server_rx, _) = start(tls_config(&server_dir, ClientAuth::Off)).await;
    let target = Target {
        transport: Transport::Tls,
        addr: server.tls_addrs()[0],
        flow: None,
    };
    let send = |branch: &str| {
        t.send(
            target,
            Bytes::from(options(branch).into_bytes()),
            TxnRef::Stateless,
        )
    };
    send("z9hG4bKtrust1");
    assert!(
        timeout(Duration::from_millis(700), server_rx.recv())
            .await
            .is_err(),
        "a server of an untrusted CA was reached"
    );
    swap(&servers_ca, &new_pki.ca());
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut n = 2;
    loop {
        send(&format!("z9hG4bKtrust{n}"));
        if let Ok(Some(Inbound::Message { .. })) =
            timeout(Duration::from_millis(300), server_rx.recv()).await
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new server CA never trusted"
        );
        n += 1;
    }
    assert_eq!(
        counter(&metrics, "sip_transport_tls_certificate_reloads", "ok"),
        2,
        "the two CA files"
    );
    // A CA file replaced by something that does not load: refused, counted, kept.
    swap(&clients_ca, &dir.join("trunk.key"));
    let deadline = tokio::time::Instant::now() + WAIT;
    while counter(&metrics, "sip_transport_tls_certificate_reloads", "error") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "bad CA file not seen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(connect(&client(&pki.ca(), Some(new)), addr).await.is_ok());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&server_dir);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sip-transport-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

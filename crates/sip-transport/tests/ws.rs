//! WebSocket flows (RFC 7118) over real loopback sockets: the upgrade, a SIP message each
//! way, ping and CRLF keep-alives, refusals (no `sip` subprotocol, an origin not
//! allowed), protocol errors and oversized messages failing the connection with their
//! close codes, secure WebSocket over TLS, and no connection ever opened toward a browser.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod pki;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sip_core::SipMessage;
use sip_transport::{
    ClientAuth, Inbound, TlsConfig, TransportConfig, TransportMetrics, Transports,
};
use sip_txn::{Target, Transport, TxnRef};
use sip_ws::{Decoder, Event, Opcode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn options(branch: &str) -> String {
    format!(
        "OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS abc.invalid;branch={branch}\r\nMax-Forwards: 70\r\nFrom: <sip:t@x>;tag=1\r\nTo: <sip:edge@127.0.0.1>\r\nCall-ID: {branch}@t\r\nCSeq: 1 OPTIONS\r\n\r\n"
    )
}

async fn start(cfg: TransportConfig) -> (Transports, mpsc::Receiver<Inbound>, TransportMetrics) {
    let (tx, rx) = mpsc::channel(64);
    let metrics = TransportMetrics::default();
    let (t, _tasks) = Transports::bind(cfg, tx, metrics.clone()).await.unwrap();
    (t, rx, metrics)
}

fn ws_config() -> TransportConfig {
    TransportConfig {
        udp: Vec::new(),
        tcp: Vec::new(),
        ws: vec!["127.0.0.1:0".parse().unwrap()],
        limits: sip_core::Limits {
            max_message_size: 4096,
            ..sip_core::Limits::default()
        },
        ..TransportConfig::default()
    }
}

/// A WebSocket client over any stream.
struct Client<S> {
    s: S,
    buf: BytesMut,
    dec: Decoder,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Upgrade; returns the HTTP answer's status line when refused.
    async fn upgrade(mut s: S, request: &[u8]) -> Result<Client<S>, String> {
        s.write_all(request).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if timeout(WAIT, s.read(&mut b)).await.unwrap().unwrap() == 0 {
                break;
            }
            head.push(b[0]);
        }
        let text = String::from_utf8(head).unwrap();
        if !text.starts_with("HTTP/1.1 101 ") {
            return Err(text.lines().next().unwrap_or_default().to_owned());
        }
        assert!(
            text.contains(&format!(
                "Sec-WebSocket-Accept: {}\r\n",
                sip_ws::handshake::accept_key(KEY)
            )),
            "{text}"
        );
        assert!(text.contains("Sec-WebSocket-Protocol: sip\r\n"));
        Ok(Client {
            s,
            buf: BytesMut::new(),
            dec: Decoder::client(1 << 20),
        })
    }

    async fn send(&mut self, op: Opcode, payload: &[u8]) {
        let mut f = BytesMut::new();
        sip_ws::frame::encode(op, payload, Some([1, 2, 3, 4]), &mut f);
        self.s.write_all(&f).await.unwrap();
    }

    /// The next event, or `None` once the server closed the connection.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.dec.decode(&mut self.buf).unwrap() {
                return Some(e);
            }
            if timeout(WAIT, self.s.read_buf(&mut self.buf))
                .await
                .unwrap()
                .unwrap()
                == 0
            {
                return None;
            }
        }
    }
}

async fn next_message(rx: &mut mpsc::Receiver<Inbound>) -> (SipMessage, Target) {
    loop {
        match timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            Inbound::Message { msg, source, .. } => return (msg, source),
            _ => continue,
        }
    }
}

fn request(addr: SocketAddr) -> Vec<u8> {
    sip_ws::handshake::client_request(&addr.to_string(), "/", KEY)
}

#[tokio::test]
async fn a_sip_message_each_way_keepalives_and_the_close() {
    let (t, mut rx, _m) = start(ws_config()).await;
    let addr = t.ws_addrs()[0];
    let mut c = Client::upgrade(TcpStream::connect(addr).await.unwrap(), &request(addr))
        .await
        .unwrap();
    c.send(Opcode::Text, options("z9hG4bKws1").as_bytes()).await;
    let (msg, source) = next_message(&mut rx).await;
    assert_eq!(msg.call_id(), Ok("z9hG4bKws1@t"));
    assert_eq!(source.transport, Transport::Ws);
    assert!(source.flow.is_some());
    t.send(
        source,
        Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"),
        TxnRef::Stateless,
    );
    assert_eq!(
        c.next().await,
        Some(Event::Message(Bytes::from_static(
            b"SIP/2.0 200 OK\r\n\r\n"
        )))
    );
    // A ping gets its pong; a CRLF keep-alive its CRLF.
    c.send(Opcode::Ping, b"are you there").await;
    assert_eq!(c.next().await, Some(Event::Pong));
    c.send(Opcode::Text, b"\r\n\r\n").await;
    assert_eq!(
        c.next().await,
        Some(Event::Message(Bytes::from_static(b"\r\n")))
    );
    // Garbage is answered and the connection goes on (the framing is intact).
    c.send(
        Opcode::Text,
        b"INVITE nonsense\r\nVia: SIP/2.0/WS x;branch=z9hG4bKg\r\n\r\n",
    )
    .await;
    match c.next().await {
        Some(Event::Message(m)) => assert!(m.starts_with(b"SIP/2.0 400"), "{m:?}"),
        other => panic!("{other:?}"),
    }
    c.send(Opcode::Text, options("z9hG4bKws2").as_bytes()).await;
    assert_eq!(next_message(&mut rx).await.0.call_id(), Ok("z9hG4bKws2@t"));
    // Nothing connects out to a browser: a WS target without its flow fails.
    t.send(
        Target {
            transport: Transport::Ws,
            addr: "127.0.0.1:9".parse().unwrap(),
            flow: None,
        },
        Bytes::from_static(b"x"),
        TxnRef::Stateless,
    );
    loop {
        if let Inbound::SendFailed { .. } = timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            break;
        }
    }
    // The client closes: our close answers, then the connection ends and the flow goes.
    c.send(Opcode::Close, &1000u16.to_be_bytes()).await;
    assert_eq!(c.next().await, Some(Event::Close(Some(1000))));
    assert_eq!(c.next().await, None);
    let deadline = tokio::time::Instant::now() + WAIT;
    while t.connection_count() != 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A browser whose address is banned while its WebSocket is up: its next ping closes the
/// connection (1008), nothing of it is delivered; another source's connection goes on.
#[tokio::test]
async fn a_banned_sources_websocket_is_closed() {
    let blocklist = std::sync::Arc::new(sip_transport::Blocklist::default());
    let mut cfg = ws_config();
    cfg.blocklist = Some(blocklist.clone());
    let (t, mut rx, _m) = start(cfg).await;
    let addr = t.ws_addrs()[0];
    let from = |ip: &str| {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        s.connect(addr)
    };
    let mut banned = Client::upgrade(from("127.0.0.14").await.unwrap(), &request(addr))
        .await
        .unwrap();
    let mut other = Client::upgrade(from("127.0.0.15").await.unwrap(), &request(addr))
        .await
        .unwrap();
    blocklist.block(
        "127.0.0.14".parse().unwrap(),
        std::time::Instant::now() + Duration::from_secs(60),
    );
    banned.send(Opcode::Ping, b"still here").await;
    assert_eq!(banned.next().await, Some(Event::Close(Some(1008))));
    assert_eq!(banned.next().await, None);
    other
        .send(Opcode::Text, options("z9hG4bKws-other").as_bytes())
        .await;
    assert_eq!(
        next_message(&mut rx).await.0.call_id(),
        Ok("z9hG4bKws-other@t")
    );
}

#[tokio::test]
async fn refusals_and_protocol_errors() {
    let mut cfg = ws_config();
    cfg.ws_allowed_origins = vec!["http://phones.example.com".into()];
    let (t, _rx, metrics) = start(cfg).await;
    let addr = t.ws_addrs()[0];
    let allowed = |req: Vec<u8>| {
        String::from_utf8(req)
            .unwrap()
            .replace(
                &format!("Origin: http://{addr}"),
                "Origin: http://phones.example.com",
            )
            .into_bytes()
    };
    // Another origin: 403. No `sip` subprotocol: 400.
    let refused = Client::upgrade(TcpStream::connect(addr).await.unwrap(), &request(addr)).await;
    assert_eq!(refused.err().as_deref(), Some("HTTP/1.1 403 Forbidden"));
    let no_sip = String::from_utf8(allowed(request(addr))).unwrap().replace(
        "Sec-WebSocket-Protocol: sip",
        "Sec-WebSocket-Protocol: chat",
    );
    let refused = Client::upgrade(TcpStream::connect(addr).await.unwrap(), no_sip.as_bytes()).await;
    assert_eq!(refused.err().as_deref(), Some("HTTP/1.1 400 Bad Request"));

    // An unmasked frame: close 1002, connection over.
    let mut c = Client::upgrade(
        TcpStream::connect(addr).await.unwrap(),
        &allowed(request(addr)),
    )
    .await
    .unwrap();
    let mut f = BytesMut::new();
    sip_ws::frame::encode(Opcode::Text, b"x", None, &mut f);
    c.s.write_all(&f).await.unwrap();
    assert_eq!(c.next().await, Some(Event::Close(Some(1002))));
    assert_eq!(c.next().await, None);

    // A message over the parser's cap (4096 here): close 1009 at its header.
    let mut c = Client::upgrade(
        TcpStream::connect(addr).await.unwrap(),
        &allowed(request(addr)),
    )
    .await
    .unwrap();
    c.s.write_all(&[0x81, 0xfe, 0x20, 0x00, 1, 2, 3, 4])
        .await
        .unwrap();
    assert_eq!(c.next().await, Some(Event::Close(Some(1009))));
    assert_eq!(c.next().await, None);

    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "sip_transport_ws_upgrades_total{result=\"refused\"} 2",
        "sip_transport_ws_upgrades_total{result=\"ok\"} 2",
        "sip_transport_ws_closes_total{reason=\"protocol_error\"} 2",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

#[tokio::test]
async fn secure_websocket_over_tls() {
    let dir = std::env::temp_dir().join(format!("sip-transport-wss-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pki = pki::Pki::new(&dir, "test-ca");
    let (cert, key) = pki.leaf("live", "DNS:sip.test,IP:127.0.0.1");
    let mut cfg = ws_config();
    cfg.ws.clear();
    cfg.wss = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.tls = Some(TlsConfig {
        listen: Vec::new(),
        cert_file: cert,
        key_file: key,
        client_auth: ClientAuth::Off,
        client_ca_file: None,
        ca_file: None,
        reload_interval: Duration::from_secs(60),
        handshake_timeout: Duration::from_secs(2),
    });
    let (t, mut rx, _m) = start(cfg).await;
    let addr = t.wss_addrs()[0];
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(pki.ca()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let client_cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("sip.test").unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        )
        .await
        .unwrap();
    let mut c = Client::upgrade(tls, &request(addr)).await.unwrap();
    c.send(Opcode::Text, options("z9hG4bKwss").as_bytes()).await;
    let (msg, source) = next_message(&mut rx).await;
    assert_eq!(msg.call_id(), Ok("z9hG4bKwss@t"));
    assert_eq!(source.transport, Transport::Wss);
    t.send(
        source,
        Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"),
        TxnRef::Stateless,
    );
    assert_eq!(
        c.next().await,
        Some(Event::Message(Bytes::from_static(
            b"SIP/2.0 200 OK\r\n\r\n"
        )))
    );
    // WSS without a certificate configured is refused at start.
    let mut bad = ws_config();
    bad.wss = vec!["127.0.0.1:0".parse().unwrap()];
    let (tx, _rx) = mpsc::channel(1);
    assert!(
        Transports::bind(bad, tx, TransportMetrics::default())
            .await
            .is_err()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! A minimal SIP user agent over one TCP or TLS connection, for tests that need a client
//! whose only path is its own connection (behind a NAT, unreachable otherwise).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::status;

const DOMAIN: &str = "sipcluster.local";

/// A minimal SIP user agent over one TCP connection: registers (digest), answers one
/// call, answers its BYE. Everything it receives must come down its own connection.
pub struct TcpUa {
    stream: Box<dyn Stream>,
    local: SocketAddr,
    /// `TCP`, `TLS` or `WS`: its Via and Contact say so.
    transport: &'static str,
    buf: Vec<u8>,
    /// WebSocket framing (RFC 7118): each message one frame.
    ws: Option<(sip_ws::Decoder, bytes::BytesMut)>,
}

/// A byte stream: a TCP connection or TLS over one.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

pub fn header<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .collect()
}

/// The `header_name` line (`Authorization`, `Proxy-Authorization`) answering
/// `challenge` for `method` on `uri` (MD5, qop=auth, nc=00000001).
pub fn digest(
    header_name: &str,
    challenge: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> String {
    format!(
        "{header_name}: {}\r\n",
        digest_value(challenge, user, password, method, uri)
    )
}

/// The credentials (`Digest username=...`) answering `challenge` for `method` on `uri`.
pub fn digest_value(
    challenge: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> String {
    let realm = param(challenge, "realm").expect("realm");
    let nonce = param(challenge, "nonce").expect("nonce");
    let md5 = sip_auth::Algorithm::Md5;
    let ha1 = sip_auth::ha1(md5, user, realm, password);
    let ha2 = sip_auth::ha2(md5, method, uri);
    let response = md5.hash_joined_hex(&[
        ha1.as_bytes(),
        nonce.as_bytes(),
        b"00000001",
        b"c0ffee",
        b"auth",
        ha2.as_bytes(),
    ]);
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\""
    )
}

pub fn param<'a>(challenge: &'a str, name: &str) -> Option<&'a str> {
    challenge.split(',').find_map(|p| {
        let (k, v) = p.trim().trim_start_matches("Digest ").split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

impl TcpUa {
    pub fn connect(edge: SocketAddr) -> TcpUa {
        let stream = TcpStream::connect(edge).expect("connect to edge");
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        TcpUa {
            local: stream.local_addr().expect("local address"),
            stream: Box::new(stream),
            transport: "TCP",
            buf: Vec::new(),
            ws: None,
        }
    }

    /// Over a WebSocket to `addr` (RFC 7118: the `sip` subprotocol, one message per
    /// frame), as a browser phone connects.
    pub fn connect_ws(addr: SocketAddr) -> TcpUa {
        let mut ua = TcpUa::connect(addr);
        ua.stream
            .write_all(&sip_ws::handshake::client_request(
                &addr.to_string(),
                "/",
                "dGhlIHNhbXBsZSBub25jZQ==",
            ))
            .expect("upgrade request");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ua.buf.ends_with(b"\r\n\r\n") {
            assert!(Instant::now() < deadline, "no upgrade answer");
            let mut b = [0u8; 1];
            if let Ok(1) = ua.stream.read(&mut b) {
                ua.buf.push(b[0]);
            }
        }
        let head = String::from_utf8_lossy(&ua.buf).into_owned();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        ua.buf.clear();
        ua.transport = "WS";
        ua.ws = Some((sip_ws::Decoder::client(1 << 20), bytes::BytesMut::new()));
        ua
    }

    /// Over TLS to `addr`, verifying the server against `ca` (for the IP address), with
    /// a client certificate when given.
    pub fn connect_tls(addr: SocketAddr, ca: &Path, cert: Option<(&Path, &Path)>) -> TcpUa {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
            roots.add(c.expect("CA certificate")).expect("CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots);
        let cfg = match cert {
            Some((c, k)) => b
                .with_client_auth_cert(
                    CertificateDer::pem_file_iter(c)
                        .expect("certificate file")
                        .map(|c| c.expect("certificate"))
                        .collect(),
                    PrivateKeyDer::from_pem_file(k).expect("key file"),
                )
                .expect("client certificate"),
            None => b.with_no_client_auth(),
        };
        let conn =
            rustls::ClientConnection::new(Arc::new(cfg), ServerName::IpAddress(addr.ip().into()))
                .expect("TLS client");
        let tcp = TcpStream::connect(addr).expect("connect");
        tcp.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let local = tcp.local_addr().expect("local address");
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        // The handshake, now: a refusal shows here rather than in the first exchange.
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .expect("TLS handshake");
        }
        TcpUa {
            local,
            stream: Box::new(stream),
            transport: "TLS",
            buf: Vec::new(),
            ws: None,
        }
    }

    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// `TCP` or `TLS`.
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    pub fn send(&mut self, text: &str) {
        if self.ws.is_some() {
            let mut f = bytes::BytesMut::new();
            sip_ws::frame::encode(
                sip_ws::Opcode::Text,
                text.as_bytes(),
                Some([7, 1, 9, 3]),
                &mut f,
            );
            self.stream.write_all(&f).expect("send");
        } else {
            self.stream.write_all(text.as_bytes()).expect("send");
        }
    }

    /// The next message (headers + Content-Length body), waiting up to `wait`.
    pub fn next(&mut self, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let len: usize = header(&format!("{head}\r\n"), "Content-Length")
                    .first()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let msg: Vec<u8> = self.buf.drain(..end + 4 + len).collect();
                    let text = String::from_utf8_lossy(&msg).into_owned();
                    if text.trim().is_empty() {
                        continue;
                    }
                    return Some(text);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => match &mut self.ws {
                    // Each frame's payload is one message: the text parser above reads
                    // them one after the other.
                    Some((dec, raw)) => {
                        raw.extend_from_slice(&chunk[..n]);
                        while let Ok(Some(e)) = dec.decode(raw) {
                            if let sip_ws::Event::Message(m) = e {
                                self.buf.extend_from_slice(&m);
                            }
                        }
                    }
                    None => self.buf.extend_from_slice(&chunk[..n]),
                },
                Err(_) => {}
            }
        }
    }

    pub fn register(&mut self, user: &str, password: &str, contact: &str) {
        let local = self.local();
        let t = self.transport;
        let req = |cseq: u32, auth: &str| {
            format!(
                "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/{t} {local};branch=z9hG4bK-tcpua-{cseq}\r\n\
                 From: <sip:{user}@{DOMAIN}>;tag=ua1\r\nTo: <sip:{user}@{DOMAIN}>\r\n\
                 Call-ID: tcpua-reg@{local}\r\nCSeq: {cseq} REGISTER\r\nContact: <{contact}>\r\n\
                 {auth}Expires: 600\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
        };
        self.send(&req(1, ""));
        let challenge = self.next(Duration::from_secs(5)).expect("401");
        assert_eq!(status(&challenge), 401, "{challenge}");
        let www = header(&challenge, "WWW-Authenticate")[0].to_owned();
        let auth = digest(
            "Authorization",
            &www,
            user,
            password,
            "REGISTER",
            &format!("sip:{DOMAIN}"),
        );
        self.send(&req(2, &auth));
        let ok = self.next(Duration::from_secs(5)).expect("200");
        assert_eq!(status(&ok), 200, "{ok}");
    }

    /// An INVITE (no body) to `ruri` from `user`, answering the edge's 407 once: the
    /// final response (provisional ones skipped; the 407 acknowledged).
    pub fn invite(&mut self, user: &str, password: &str, ruri: &str, call_id: &str) -> String {
        let local = self.local();
        let t = self.transport;
        let scheme = if t == "TLS" { "sips" } else { "sip" };
        let req = |cseq: u32, branch: &str, auth: &str| {
            format!(
                "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/{t} {local};branch=z9hG4bK-{branch}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=inv-{call_id}\r\nTo: <{ruri}>\r\n\
                 Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <{scheme}:{user}@{local};transport={}>\r\n\
                 {auth}Content-Length: 0\r\n\r\n",
                t.to_ascii_lowercase()
            )
        };
        self.send(&req(1, &format!("{call_id}-1"), ""));
        let challenge = self.final_response(call_id);
        if status(&challenge) != 407 {
            return challenge;
        }
        let to = header(&challenge, "To")[0].to_owned();
        self.send(&format!(
            "ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/{t} {local};branch=z9hG4bK-{call_id}-1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{user}@{DOMAIN}>;tag=inv-{call_id}\r\nTo: {to}\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        ));
        let proxy = header(&challenge, "Proxy-Authenticate")[0].to_owned();
        let auth = digest(
            "Proxy-Authorization",
            &proxy,
            user,
            password,
            "INVITE",
            ruri,
        );
        self.send(&req(2, &format!("{call_id}-2"), &auth));
        self.final_response(call_id)
    }

    /// The next final response for `call_id`, within 10 s.
    fn final_response(&mut self, call_id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(m) = self.next(Duration::from_millis(500))
                && m.starts_with("SIP/2.0")
                && status(&m) >= 200
                && header(&m, "Call-ID").first() == Some(&call_id)
            {
                return m;
            }
        }
        panic!("no final response for {call_id} within 10 s");
    }

    pub fn respond(&mut self, req: &str, code: u16, reason: &str, to_tag: bool) {
        let mut r = format!("SIP/2.0 {code} {reason}\r\n");
        for v in header(req, "Via") {
            r += &format!("Via: {v}\r\n");
        }
        for h in ["From", "Call-ID", "CSeq"] {
            r += &format!("{h}: {}\r\n", header(req, h)[0]);
        }
        let to = header(req, "To")[0];
        if to_tag && !to.contains("tag=") {
            r += &format!("To: {to};tag=uas1\r\n");
        } else {
            r += &format!("To: {to}\r\n");
        }
        for v in header(req, "Record-Route") {
            r += &format!("Record-Route: {v}\r\n");
        }
        r += &format!(
            "Contact: <sip:bob@{};transport={}>\r\nContent-Length: 0\r\n\r\n",
            self.local(),
            self.transport.to_ascii_lowercase()
        );
        self.send(&r);
    }

    /// Answer one INVITE and its BYE; returns the methods received, in order.
    pub fn answer_call(&mut self, wait: Duration) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            let Some(m) = self.next(Duration::from_millis(500)) else {
                continue;
            };
            let method = m.split(' ').next().unwrap_or_default().to_owned();
            match method.as_str() {
                "INVITE" => {
                    self.respond(&m, 180, "Ringing", true);
                    self.respond(&m, 200, "OK", true);
                }
                "BYE" => {
                    self.respond(&m, 200, "OK", false);
                    seen.push(method);
                    return seen;
                }
                _ => {}
            }
            seen.push(method);
        }
        seen
    }
}

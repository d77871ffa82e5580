//! The opening handshake (RFC 6455 §4.2.1, §4.2.2) for the `sip` subprotocol (RFC 7118
//! §4.1).

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The longest request head accepted (a browser's is well under 1 KiB).
pub const MAX_HEAD: usize = 8192;

/// RFC 6455 §1.3: appended to the client's key before hashing.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A valid upgrade request: what the answer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Key` as sent.
    pub key: String,
    /// `Origin`, when sent (browsers always do).
    pub origin: Option<String>,
    /// The request target (`/`, `/ws`).
    pub path: String,
    /// Bytes of the head, CRLFCRLF included: what follows is already WebSocket.
    pub head_len: usize,
}

/// Why a request is not a SIP WebSocket upgrade.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The head is longer than [`MAX_HEAD`].
    #[error("request head over {MAX_HEAD} bytes")]
    TooLarge,
    /// Not an HTTP/1.1 request.
    #[error("not an HTTP/1.1 request")]
    NotHttp,
    /// Not `GET`.
    #[error("method {0} (a WebSocket upgrade is a GET)")]
    Method(String),
    /// No `Upgrade: websocket` / `Connection: Upgrade`.
    #[error("not a WebSocket upgrade")]
    NotUpgrade,
    /// `Sec-WebSocket-Version` other than 13.
    #[error("WebSocket version {0:?} (13 is supported)")]
    Version(String),
    /// No `Sec-WebSocket-Key`, or one that is not 16 bytes in base64.
    #[error("missing or malformed Sec-WebSocket-Key")]
    Key,
    /// `sip` is not among the offered subprotocols.
    #[error("the sip subprotocol was not offered (RFC 7118 §4.1)")]
    NoSipProtocol,
    /// `Origin` is not one of those allowed.
    #[error("origin {0:?} not allowed")]
    Origin(String),
}

impl HandshakeError {
    /// The HTTP answer: 426 (with the version we speak) for another version, 403 for an
    /// origin not allowed, 400 otherwise. `Connection: close`: the connection ends.
    pub fn response(&self) -> Vec<u8> {
        let (status, extra) = match self {
            HandshakeError::Version(_) => ("426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n"),
            HandshakeError::Origin(_) => ("403 Forbidden", ""),
            _ => ("400 Bad Request", ""),
        };
        format!("HTTP/1.1 {status}\r\n{extra}Connection: close\r\nContent-Length: 0\r\n\r\n")
            .into_bytes()
    }
}

/// Whether `list` (a comma-separated header value) holds `token`, case-insensitively.
fn has_token(list: &str, token: &str) -> bool {
    list.split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Read the upgrade request at the start of `buf`: `Ok(None)` while its head is not all
/// there, the request once it is valid. `allowed_origins` empty allows any origin.
pub fn parse(buf: &[u8], allowed_origins: &[String]) -> Result<Option<Upgrade>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD {
                Err(HandshakeError::TooLarge)
            } else {
                Ok(None)
            };
        }
        // Too many headers, bad tokens: not a request we serve.
        Err(_) => return Err(HandshakeError::NotHttp),
    };
    if head_len > MAX_HEAD {
        return Err(HandshakeError::TooLarge);
    }
    if req.version != Some(1) {
        return Err(HandshakeError::NotHttp);
    }
    let method = req.method.unwrap_or_default();
    if method != "GET" {
        return Err(HandshakeError::Method(method.chars().take(16).collect()));
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect::<Vec<_>>()
    };
    let upgrade = header("Upgrade").iter().any(|v| has_token(v, "websocket"));
    let connection = header("Connection").iter().any(|v| has_token(v, "upgrade"));
    if !upgrade || !connection {
        return Err(HandshakeError::NotUpgrade);
    }
    match header("Sec-WebSocket-Version").as_slice() {
        [v] if v.trim() == "13" => {}
        vs => {
            return Err(HandshakeError::Version(
                vs.join(",").chars().take(16).collect(),
            ));
        }
    }
    let key = match header("Sec-WebSocket-Key").as_slice() {
        [k] => k.trim().to_owned(),
        _ => return Err(HandshakeError::Key),
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(&key)
        .map_err(|_| HandshakeError::Key)?;
    if decoded.len() != 16 {
        return Err(HandshakeError::Key);
    }
    if !header("Sec-WebSocket-Protocol")
        .iter()
        .any(|v| has_token(v, "sip"))
    {
        return Err(HandshakeError::NoSipProtocol);
    }
    let origin = header("Origin").first().map(|o| o.trim().to_owned());
    if !allowed_origins.is_empty() {
        let ok = origin
            .as_deref()
            .is_some_and(|o| allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(o)));
        if !ok {
            return Err(HandshakeError::Origin(
                origin.unwrap_or_default().chars().take(128).collect(),
            ));
        }
    }
    Ok(Some(Upgrade {
        key,
        origin,
        path: req.path.unwrap_or("/").chars().take(256).collect(),
        head_len,
    }))
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2 item 5.4).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

impl Upgrade {
    /// The `101 Switching Protocols` answer, choosing `sip`.
    pub fn response(&self) -> Vec<u8> {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: sip\r\n\r\n",
            accept_key(&self.key)
        )
        .into_bytes()
    }
}

/// The upgrade request a client sends (tests, load tools): `key` is 16 bytes in base64.
pub fn client_request(host: &str, path: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\
         Origin: http://{host}\r\n\r\n"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = "GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, sip\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn the_rfc_6455_example_key_gives_its_accept() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn a_browser_upgrade_is_accepted_with_sip_chosen() {
        let u = parse(REQ.as_bytes(), &[]).unwrap().unwrap();
        assert_eq!(u.head_len, REQ.len());
        assert_eq!(u.origin.as_deref(), Some("http://example.com"));
        let r = String::from_utf8(u.response()).unwrap();
        assert!(r.starts_with("HTTP/1.1 101 "));
        assert!(r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(r.contains("Sec-WebSocket-Protocol: sip\r\n"));
        // Every byte but the last: not complete yet.
        assert_eq!(parse(&REQ.as_bytes()[..REQ.len() - 1], &[]), Ok(None));
    }

    #[test]
    fn what_is_not_a_sip_upgrade_is_refused() {
        let cases = [
            (
                REQ.replace("chat, sip", "chat"),
                HandshakeError::NoSipProtocol,
            ),
            (
                REQ.replace("GET", "POST"),
                HandshakeError::Method("POST".into()),
            ),
            (
                REQ.replace("Version: 13", "Version: 8"),
                HandshakeError::Version("8".into()),
            ),
            (
                REQ.replace("Upgrade: websocket", "Upgrade: h2c"),
                HandshakeError::NotUpgrade,
            ),
            (
                REQ.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
                HandshakeError::Key,
            ),
            (REQ.replace("HTTP/1.1", "HTTP/1.0"), HandshakeError::NotHttp),
        ];
        for (req, want) in cases {
            assert_eq!(parse(req.as_bytes(), &[]), Err(want.clone()), "{req}");
            let answer = String::from_utf8(want.response()).unwrap();
            assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
        }
        assert!(
            String::from_utf8(HandshakeError::Version("8".into()).response())
                .unwrap()
                .contains("Sec-WebSocket-Version: 13")
        );
        // Origins, when restricted.
        let allowed = vec!["https://phones.example.com".to_owned()];
        assert_eq!(
            parse(REQ.as_bytes(), &allowed),
            Err(HandshakeError::Origin("http://example.com".into()))
        );
        let ok = REQ.replace("http://example.com", "https://phones.example.com");
        assert!(parse(ok.as_bytes(), &allowed).unwrap().is_some());
        // A head that never ends is cut at MAX_HEAD.
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(parse(long.as_bytes(), &[]), Err(HandshakeError::TooLarge));
    }

    #[test]
    fn our_client_request_is_one_we_accept() {
        let req = client_request("127.0.0.1:8080", "/", "dGhlIHNhbXBsZSBub25jZQ==");
        assert!(parse(&req, &[]).unwrap().is_some());
    }
}

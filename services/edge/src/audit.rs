//! What an operator reads in the log about the requests this edge serves.
//!
//! * `info`: one line per failed authentication and one per request this edge refused
//!   (a 3xx-6xx it generated itself, not one relayed from downstream; a bare challenge
//!   is the normal first step of a login and is not a refusal). Peers can trigger these,
//!   so each kind is rate-limited, and the next line that passes says how many were held
//!   back (`suppressed`).
//! * `debug`: one line per completed server transaction (final response sent), relayed
//!   or generated, with its duration.
//!
//! Every line carries the Call-ID, method, code, source (address and transport) and user
//! (the REGISTER's To user, else the From user; for a failed login, the user name the
//! credentials claimed). Never a password, an HA1 or a digest response: the
//! Authorization header is not read here at all.
//!
//! The source is the phone's, not the previous hop's: behind a dispatcher every request
//! comes from the dispatcher's internal socket, and a brute-forcer could not be told
//! from anyone else. The dispatcher signs where it saw the client into its own Via, so
//! that address is read once the signature verifies (`edge::origin`); a look-alike Via
//! from someone who reached the edge directly is not believed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::SipMessage;
use sip_txn::Target;
use telemetry::LogLimit;

/// The rate limits of the edge's log lines.
#[derive(Debug)]
pub struct Audit {
    auth: LogLimit,
    rejected: LogLimit,
    dropped: LogLimit,
    /// The cluster secret, to verify a dispatcher's Via before believing its address.
    tokens: dispatch_core::TokenKey,
}

impl Audit {
    /// Lines whose source behind a dispatcher is verified with `tokens`.
    pub fn new(tokens: dispatch_core::TokenKey) -> Audit {
        Audit {
            auth: LogLimit::operator_lines(),
            rejected: LogLimit::operator_lines(),
            dropped: LogLimit::operator_lines(),
            tokens,
        }
    }
}

/// Whether the per-transaction lines are wanted (the core keeps a response's bytes for
/// them only then).
pub fn transactions_logged() -> bool {
    tracing::enabled!(tracing::Level::DEBUG)
}

/// The user a request acts for: the AOR's user for a REGISTER, else the caller.
fn user_of(msg: &SipMessage) -> &str {
    let register = msg
        .cseq()
        .is_ok_and(|c| c.method == sip_core::Method::Register);
    let user = if register {
        msg.to_user()
    } else {
        msg.from_user()
    };
    user.unwrap_or_default()
}

/// Where the request came from: the client's address (signed by the dispatcher that
/// relayed it) and transport (of the client's Via), else the packet's source.
fn origin(
    tokens: &dispatch_core::TokenKey,
    msg: &SipMessage,
    source: Target,
) -> (SocketAddr, String) {
    if let Some(r) = crate::origin::relayed(tokens, msg, source) {
        let transport = msg
            .via()
            .flatten()
            .nth(1)
            .map(|v| v.transport.as_str().to_ascii_uppercase())
            .unwrap_or_default();
        return (r.client, transport);
    }
    (source.addr, source.transport.as_str().to_owned())
}

fn method_of(msg: &SipMessage) -> String {
    match msg.method() {
        Some(m) => m.as_str().to_owned(),
        None => msg
            .cseq()
            .map(|c| c.method.as_str().to_owned())
            .unwrap_or_default(),
    }
}

fn reason_of(resp: &[u8]) -> String {
    // "SIP/2.0 404 Not Found\r\n": the reason phrase as sent.
    let line = resp.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.splitn(3, |&b| b == b' ');
    String::from_utf8_lossy(parts.nth(2).unwrap_or_default()).into_owned()
}

impl Audit {
    /// A failed authentication: `reason` is the metric's label, `claimed` the user name
    /// in the credentials, `code` what the client gets (a new challenge or 403).
    pub fn auth_failed(
        &self,
        msg: &SipMessage,
        source: Target,
        claimed: &str,
        realm: &str,
        reason: &'static str,
        code: u16,
    ) {
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        let Some(suppressed) = self.auth.allow(Instant::now()) else {
            return;
        };
        let (src, transport) = origin(&self.tokens, msg, source);
        tracing::info!(
            call_id = msg.call_id().unwrap_or_default(),
            method = %method_of(msg),
            code,
            %src,
            %transport,
            user = claimed,
            request_user = user_of(msg),
            realm,
            reason,
            suppressed,
            "authentication failed"
        );
    }

    /// A ban or lock for failed logins has started (`warn`: an attack, or a phone with a
    /// wrong password, that the operator should know of).
    pub fn lockout(&self, l: &crate::guard::Lockout) {
        match l {
            crate::guard::Lockout::Source(ip, d) => tracing::warn!(
                src = %ip,
                secs = d.as_secs(),
                "source banned after repeated failed logins: its requests are dropped"
            ),
            crate::guard::Lockout::User(user, d) => tracing::warn!(
                user = %user,
                secs = d.as_secs(),
                "user locked after repeated failed logins: its logins are refused"
            ),
            crate::guard::Lockout::Flood(ip, d) => tracing::warn!(
                src = %ip,
                secs = d.as_secs(),
                "source banned for flooding: its requests are dropped on arrival, on every edge"
            ),
        }
    }

    /// A request dropped without an answer (`reason`: scanner, banned, rate_limited),
    /// from `src` (the verified client address), rate-limited.
    pub fn dropped(&self, req: &SipMessage, src: SocketAddr, reason: &'static str) {
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        let Some(suppressed) = self.dropped.allow(Instant::now()) else {
            return;
        };
        tracing::info!(
            call_id = req.call_id().unwrap_or_default(),
            method = %method_of(req),
            %src,
            user = user_of(req),
            reason,
            suppressed,
            "request dropped"
        );
    }

    /// A request this edge refused with `resp` (a 3xx-6xx it generated).
    pub fn rejected(&self, req: &SipMessage, source: Target, code: u16, resp: &[u8]) {
        if code < 300 || code == 401 || code == 407 {
            return;
        }
        self.refusal(req, source, code, &reason_of(resp));
    }

    /// A request refused before it reached a transaction (malformed, or shed under
    /// overload): what can be read of it. An ACK gets no answer, so no line either.
    pub fn refused_early(&self, req: &SipMessage, source: Target, code: u16, why: &str) {
        if req.method() != Some(sip_core::Method::Ack) {
            self.refusal(req, source, code, why);
        }
    }

    /// The "request rejected" line, rate-limited.
    fn refusal(&self, req: &SipMessage, source: Target, code: u16, reason: &str) {
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        let Some(suppressed) = self.rejected.allow(Instant::now()) else {
            return;
        };
        let (src, transport) = origin(&self.tokens, req, source);
        tracing::info!(
            call_id = req.call_id().unwrap_or_default(),
            method = %method_of(req),
            code,
            reason,
            %src,
            %transport,
            user = user_of(req),
            ruri = %String::from_utf8_lossy(req.request_uri_raw().unwrap_or_default()),
            suppressed,
            "request rejected"
        );
    }

    /// A server transaction got its final response `resp` after `elapsed` (debug; the
    /// core passes it only when [`transactions_logged`]).
    pub fn transaction(&self, resp: Bytes, source: Target, elapsed: Duration) {
        let Ok(msg) = SipMessage::parse(resp) else {
            return;
        };
        let (src, transport) = origin(&self.tokens, &msg, source);
        tracing::debug!(
            call_id = msg.call_id().unwrap_or_default(),
            method = %method_of(&msg),
            code = msg.status().unwrap_or_default(),
            %src,
            %transport,
            user = user_of(&msg),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "transaction"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> SipMessage {
        SipMessage::parse(text.replace('\n', "\r\n").into_bytes()).expect("parses")
    }

    #[test]
    fn the_source_is_the_phone_behind_a_dispatcher() {
        let udp = |a: &str| Target {
            transport: sip_txn::Transport::Udp,
            addr: a.parse().expect("address"),
            flow: None,
        };
        let key = dispatch_core::TokenKey::new(b"audit-test-secret-0123456789");
        let phone: SocketAddr = "203.0.113.9:51000".parse().expect("address");
        let branch = "z9hG4bK-scd0123456789abcdef";
        let signed = key.sign_source(branch, phone);
        let relayed = msg(&format!(
            "INVITE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch={branch};scflow=1f;scsrc={signed}\nVia: SIP/2.0/TCP 10.0.0.7:5060;rport=51000;received=203.0.113.9;branch=z9hG4bK1\nFrom: <sip:carol@example.com>;tag=1\nTo: <sip:bob@example.com>\nCall-ID: c\nCSeq: 1 INVITE\nContent-Length: 0\n\n",
        ));
        assert_eq!(
            origin(&key, &relayed, udp("127.0.0.1:40000")),
            (phone, "TCP".to_owned())
        );
        // A look-alike dispatcher Via without a valid signature: the packet's source.
        let forged = msg(
            "INVITE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-scd0123;scsrc=047f00000113c40011223344556677\nVia: SIP/2.0/UDP 10.0.0.7;received=203.0.113.9;branch=z9hG4bK1\nFrom: <sip:carol@example.com>;tag=1\nTo: <sip:bob@example.com>\nCall-ID: c\nCSeq: 1 INVITE\nContent-Length: 0\n\n",
        );
        assert_eq!(
            origin(&key, &forged, udp("192.0.2.66:5060")).0,
            "192.0.2.66:5060".parse::<SocketAddr>().expect("address")
        );
        // Anyone else's Via on top is just the previous hop: its packet source counts.
        let proxied = msg(
            "INVITE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.1;branch=z9hG4bKother\nVia: SIP/2.0/UDP 10.0.0.7;received=203.0.113.9;branch=z9hG4bK1\nFrom: <sip:carol@example.com>;tag=1\nTo: <sip:bob@example.com>\nCall-ID: c\nCSeq: 1 INVITE\nContent-Length: 0\n\n",
        );
        assert_eq!(
            origin(&key, &proxied, udp("198.51.100.1:5060")),
            (
                "198.51.100.1:5060".parse().expect("address"),
                "UDP".to_owned()
            )
        );
    }

    #[test]
    fn the_user_is_the_aor_for_register_and_the_caller_otherwise() {
        let reg = msg(
            "REGISTER sip:example.com SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:admin@example.com>;tag=1\nTo: <sip:alice@example.com>\nCall-ID: c\nCSeq: 1 REGISTER\nContent-Length: 0\n\n",
        );
        assert_eq!(user_of(&reg), "alice");
        let inv = msg(
            "INVITE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:carol@example.com>;tag=1\nTo: <sip:bob@example.com>\nCall-ID: c\nCSeq: 1 INVITE\nContent-Length: 0\n\n",
        );
        assert_eq!(user_of(&inv), "carol");
        assert_eq!(method_of(&inv), "INVITE");
        let resp = msg(
            "SIP/2.0 404 Not Found\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nFrom: <sip:carol@example.com>;tag=1\nTo: <sip:bob@example.com>;tag=2\nCall-ID: c\nCSeq: 1 INVITE\nContent-Length: 0\n\n",
        );
        assert_eq!(method_of(&resp), "INVITE");
        assert_eq!(reason_of(resp.as_bytes()), "Not Found");
    }
}

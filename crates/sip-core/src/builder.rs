//! Building new messages: responses (§8.2.6), error replies for requests that failed to
//! parse, and new requests (OPTIONS probes, CANCEL §9.1, ACK for non-2xx §17.1.1.3).
//!
//! Copied header values are copied byte for byte from the request; nothing is
//! re-serialised from a typed form.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

use crate::chars::{self, is_token, is_wsp};
use crate::error::Error;
use crate::header_name::HeaderName;
use crate::headers::name_addr::NameAddr;
use crate::message::SipMessage;
use crate::method::Method;

/// The standard reason phrase of a status code, `""` for unknown ones.
pub fn default_reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        439 => "First Hop Lacks Outbound Support",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => "",
    }
}

/// The request headers a response is built from, as raw values.
///
/// Built from a parsed message ([`ReplyContext::from_message`]) or salvaged from bytes
/// that failed to parse ([`ReplyContext::salvage`]), so that even a malformed request can
/// get its 400.
#[derive(Debug, Clone)]
pub struct ReplyContext<'a> {
    method: &'a [u8],
    vias: SmallVec<[&'a [u8]; 4]>,
    from: Option<&'a [u8]>,
    to: Option<&'a [u8]>,
    call_id: Option<&'a [u8]>,
    cseq: Option<&'a [u8]>,
    timestamp: Option<&'a [u8]>,
    /// An Authorization or Proxy-Authorization header is present.
    credentials: bool,
}

/// Does `to` already carry a tag? Falls back to a textual search when the value does not
/// parse, so that a response to a malformed To never gets a second tag.
fn has_tag(to: &[u8]) -> bool {
    match NameAddr::parse(to, "To") {
        Ok(a) => a.params.contains("tag"),
        Err(_) => to.windows(4).any(|w| w.eq_ignore_ascii_case(b"tag=")),
    }
}

/// Safe to copy into a response: no NUL, no bare CR, no line end that is not a fold.
fn copyable(v: &[u8]) -> bool {
    let mut i = 0;
    while i < v.len() {
        let ok = match v[i] {
            0 => false,
            // CR only as the start of a fold (CRLF followed by white space).
            b'\r' => v.get(i + 1) == Some(&b'\n') && v.get(i + 2).copied().is_some_and(is_wsp),
            // LF ends a fold's CRLF, or is a bare-LF fold itself.
            b'\n' => (i > 0 && v[i - 1] == b'\r') || v.get(i + 1).copied().is_some_and(is_wsp),
            _ => true,
        };
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

impl<'a> ReplyContext<'a> {
    /// The context of a parsed request; `None` for responses.
    pub fn from_message(msg: &'a SipMessage) -> Option<ReplyContext<'a>> {
        let method = match msg.start_line() {
            crate::StartLineRef::Request { method, .. } => method.as_str().as_bytes(),
            crate::StartLineRef::Response { .. } => return None,
        };
        Some(ReplyContext {
            method,
            vias: msg.headers_of(HeaderName::Via).map(|h| h.value).collect(),
            from: msg.header(HeaderName::From),
            to: msg.header(HeaderName::To),
            call_id: msg.header(HeaderName::CallId),
            cseq: msg.header(HeaderName::CSeq),
            timestamp: msg.header(HeaderName::Timestamp),
            credentials: msg.header(HeaderName::Authorization).is_some()
                || msg.header(HeaderName::ProxyAuthorization).is_some(),
        })
    }

    /// Recover what a reply needs from bytes that failed to parse. Returns `None` when the
    /// bytes are a response, an ACK, or carry no Via at all, as RFC 3261 then prefers a
    /// silent drop. A malformed Via is copied as is: the transport answers to the packet's
    /// source (§18.2.2 with `received`/`rport` semantics) when the Via cannot be used.
    ///
    /// Reads at most `max_len` bytes; malformed lines are skipped.
    pub fn salvage(raw: &'a [u8], max_len: usize) -> Option<ReplyContext<'a>> {
        let raw = &raw[..raw.len().min(max_len)];
        let skip = raw
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        let raw = &raw[skip..];
        if raw.len() >= 4 && raw[..4].eq_ignore_ascii_case(b"SIP/") {
            return None;
        }
        let method_len = raw.iter().take_while(|&&b| is_token(b)).count();
        let method = &raw[..method_len];
        if method.is_empty() || method == b"ACK" {
            return None;
        }
        let mut ctx = ReplyContext {
            method,
            vias: SmallVec::new(),
            from: None,
            to: None,
            call_id: None,
            cseq: None,
            timestamp: None,
            credentials: false,
        };
        let mut pos = memchr::memchr(b'\n', raw)? + 1;
        while pos < raw.len() {
            if raw[pos] == b'\n' || raw[pos..].starts_with(b"\r\n") {
                break;
            }
            let mut end = pos + memchr::memchr(b'\n', &raw[pos..]).unwrap_or(raw.len() - pos);
            while end + 1 < raw.len() && is_wsp(raw[end + 1]) {
                end =
                    end + 1 + memchr::memchr(b'\n', &raw[end + 1..]).unwrap_or(raw.len() - end - 1);
            }
            let line = &raw[pos..end.min(raw.len())];
            pos = end + 1;
            let name_len = line.iter().take_while(|&&b| is_token(b)).count();
            let mut i = name_len;
            while i < line.len() && is_wsp(line[i]) {
                i += 1;
            }
            if name_len == 0 || line.get(i) != Some(&b':') {
                continue;
            }
            let value = chars::trim_lws(&line[i + 1..]);
            let name = HeaderName::from_bytes(&line[..name_len]);
            if !copyable(value) {
                // Without its top Via a reply would be discarded by the previous hop
                // (RFC 3261 §18.1.2); better to send none.
                if name == HeaderName::Via && ctx.vias.is_empty() {
                    return None;
                }
                continue;
            }
            match name {
                HeaderName::Via => ctx.vias.push(value),
                HeaderName::From => ctx.from = ctx.from.or(Some(value)),
                HeaderName::To => ctx.to = ctx.to.or(Some(value)),
                HeaderName::CallId => ctx.call_id = ctx.call_id.or(Some(value)),
                HeaderName::CSeq => ctx.cseq = ctx.cseq.or(Some(value)),
                HeaderName::Timestamp => ctx.timestamp = ctx.timestamp.or(Some(value)),
                HeaderName::Authorization | HeaderName::ProxyAuthorization => {
                    ctx.credentials = true;
                }
                _ => {}
            }
        }
        if ctx.vias.is_empty() {
            return None;
        }
        Some(ctx)
    }

    /// The request method as written.
    pub fn method(&self) -> &'a [u8] {
        self.method
    }

    /// The request is within a dialog: its To has a tag.
    pub fn in_dialog(&self) -> bool {
        self.to.is_some_and(has_tag)
    }

    /// The request carries credentials (Authorization or Proxy-Authorization).
    pub fn has_credentials(&self) -> bool {
        self.credentials
    }

    /// A tag for a stateless reply: the same request always gets the same tag
    /// (RFC 3261 §8.2.7 lets a stateless UAS derive it), different requests almost never do.
    pub fn stateless_tag(&self) -> [u8; 16] {
        // FNV-1a over the fields that identify the request.
        let mut fnv = crate::fnv::Fnv1a::new();
        for part in [
            self.vias.first().copied(),
            self.call_id,
            self.from,
            self.cseq,
        ]
        .into_iter()
        .flatten()
        {
            fnv.field(part);
        }
        let h = fnv.finish();
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = b"0123456789abcdef"[((h >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }
}

/// What both builders append after their own headers: extra header fields in order, then
/// Content-Type/Content-Length and the body.
#[derive(Debug, Clone, Default)]
struct Tail<'a> {
    headers: SmallVec<[Field<'a>; 8]>,
    /// Content-Type and body.
    body: Option<Field<'a, [u8]>>,
}

/// A (name, value) pair as the builders keep it.
type Field<'a, N = str> = (Cow<'a, N>, Cow<'a, [u8]>);

impl Tail<'_> {
    /// Bytes `write` will need, for sizing the output once.
    fn len_hint(&self) -> usize {
        self.headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 4)
            .sum::<usize>()
            + self
                .body
                .as_ref()
                .map_or(0, |(t, b)| t.len() + b.len() + 40)
            + 20
    }

    fn write(&self, out: &mut BytesMut) {
        for (n, v) in &self.headers {
            line(out, n.as_bytes(), v);
        }
        match &self.body {
            Some((ctype, b)) => {
                line(out, b"Content-Type", ctype);
                out.put_slice(b"Content-Length: ");
                put_decimal(out, u32::try_from(b.len()).unwrap_or(u32::MAX));
                out.put_slice(b"\r\n\r\n");
                out.put_slice(b);
            }
            None => out.put_slice(b"Content-Length: 0\r\n\r\n"),
        }
    }
}

/// Builds a response to a request per RFC 3261 §8.2.6.
#[derive(Debug, Clone)]
pub struct ResponseBuilder<'a> {
    ctx: ReplyContext<'a>,
    code: u16,
    reason: Cow<'a, str>,
    to_tag: Option<Cow<'a, str>>,
    tail: Tail<'a>,
}

impl<'a> ResponseBuilder<'a> {
    /// A response to `req`; `None` when `req` is a response.
    pub fn new(req: &'a SipMessage, code: u16) -> Option<ResponseBuilder<'a>> {
        ReplyContext::from_message(req).map(|ctx| Self::from_context(ctx, code))
    }

    /// A response from a (possibly salvaged) context.
    pub fn from_context(ctx: ReplyContext<'a>, code: u16) -> ResponseBuilder<'a> {
        ResponseBuilder {
            ctx,
            code,
            reason: Cow::Borrowed(default_reason(code)),
            to_tag: None,
            tail: Tail::default(),
        }
    }

    /// Replace the reason phrase (CR and LF are replaced by spaces).
    pub fn reason(mut self, reason: impl Into<Cow<'a, str>>) -> Self {
        self.reason = reason.into();
        self
    }

    /// The To tag to add when the request's To has none (ignored for 100 Trying). Without
    /// it a deterministic [`ReplyContext::stateless_tag`] is used.
    pub fn to_tag(mut self, tag: impl Into<Cow<'a, str>>) -> Self {
        self.to_tag = Some(tag.into());
        self
    }

    /// Append a header (e.g. `WWW-Authenticate`, `Min-Expires`, `Retry-After`, `Contact`).
    pub fn header(
        mut self,
        name: impl Into<Cow<'a, str>>,
        value: impl Into<Cow<'a, [u8]>>,
    ) -> Self {
        self.tail.headers.push((name.into(), value.into()));
        self
    }

    /// Set a body and its Content-Type.
    pub fn body(
        mut self,
        content_type: impl Into<Cow<'a, [u8]>>,
        body: impl Into<Cow<'a, [u8]>>,
    ) -> Self {
        self.tail.body = Some((content_type.into(), body.into()));
        self
    }

    /// Write the response.
    pub fn build(&self) -> Bytes {
        let c = &self.ctx;
        let mut out = BytesMut::with_capacity(
            256 + c.vias.iter().map(|v| v.len() + 8).sum::<usize>() + self.tail.len_hint(),
        );
        out.put_slice(b"SIP/2.0 ");
        put_decimal(&mut out, u32::from(self.code.clamp(100, 699)));
        out.put_u8(b' ');
        for ch in self.reason.bytes() {
            out.put_u8(if ch == b'\r' || ch == b'\n' || ch == 0 {
                b' '
            } else {
                ch
            });
        }
        out.put_slice(b"\r\n");
        for v in &c.vias {
            line(&mut out, b"Via", v);
        }
        if let Some(v) = c.from {
            line(&mut out, b"From", v);
        }
        if let Some(v) = c.to {
            out.put_slice(b"To: ");
            out.put_slice(v);
            if self.code > 100 && !has_tag(v) {
                out.put_slice(b";tag=");
                match &self.to_tag {
                    Some(t) => out.put_slice(t.as_bytes()),
                    None => out.put_slice(&c.stateless_tag()),
                }
            }
            out.put_slice(b"\r\n");
        }
        if let Some(v) = c.call_id {
            line(&mut out, b"Call-ID", v);
        }
        if let Some(v) = c.cseq {
            line(&mut out, b"CSeq", v);
        }
        if let (100, Some(v)) = (self.code, c.timestamp) {
            line(&mut out, b"Timestamp", v);
        }
        self.tail.write(&mut out);
        out.freeze()
    }
}

/// Append `n` in decimal without going through `fmt`.
pub(crate) fn put_decimal(out: &mut BytesMut, mut n: u32) {
    let mut tmp = [0u8; 10];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&tmp[i..]);
}

fn line(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// The error response for a request that failed validation or parsing.
///
/// `msg` is the parsed request when parsing succeeded; otherwise the reply is salvaged from
/// `raw`. Returns `None` where RFC 3261 wants a silent drop: responses, ACKs, and requests
/// without any Via.
pub fn error_reply(msg: Option<&SipMessage>, raw: &[u8], err: &Error) -> Option<Bytes> {
    let ctx = match msg {
        Some(m) => ReplyContext::from_message(m)?,
        None => ReplyContext::salvage(raw, 65_536)?,
    };
    if ctx.method == b"ACK" || ctx.vias.is_empty() {
        return None;
    }
    Some(
        ResponseBuilder::from_context(ctx, err.status())
            .reason(err.reason_phrase())
            .build(),
    )
}

/// Builds a new request. Headers are written in the order given, then Content-Length.
#[derive(Debug, Clone)]
pub struct RequestBuilder<'a> {
    method: Method<'a>,
    uri: Cow<'a, [u8]>,
    tail: Tail<'a>,
}

impl<'a> RequestBuilder<'a> {
    /// `method uri SIP/2.0`.
    pub fn new(method: Method<'a>, uri: impl Into<Cow<'a, [u8]>>) -> Self {
        RequestBuilder {
            method,
            uri: uri.into(),
            tail: Tail::default(),
        }
    }

    /// Append a header.
    pub fn header(
        mut self,
        name: impl Into<Cow<'a, str>>,
        value: impl Into<Cow<'a, [u8]>>,
    ) -> Self {
        self.tail.headers.push((name.into(), value.into()));
        self
    }

    /// Set a body and its Content-Type.
    pub fn body(
        mut self,
        content_type: impl Into<Cow<'a, [u8]>>,
        body: impl Into<Cow<'a, [u8]>>,
    ) -> Self {
        self.tail.body = Some((content_type.into(), body.into()));
        self
    }

    /// Write the request.
    pub fn build(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64 + self.uri.len() + self.tail.len_hint());
        out.put_slice(self.method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(&self.uri);
        out.put_slice(b" SIP/2.0\r\n");
        self.tail.write(&mut out);
        out.freeze()
    }

    /// The CANCEL for a pending INVITE (RFC 3261 §9.1): same Request-URI, Call-ID, To,
    /// From, CSeq number and Route set, and only the INVITE's top Via.
    pub fn cancel(invite: &'a SipMessage) -> Result<Bytes, Error> {
        Self::hop_by_hop(invite, Method::Cancel, None)
    }

    /// The ACK for a non-2xx final response to an INVITE (RFC 3261 §17.1.1.3): like the
    /// CANCEL, but with the To of the response (which carries the UAS's tag).
    pub fn ack_non_2xx(invite: &'a SipMessage, response: &'a SipMessage) -> Result<Bytes, Error> {
        Self::hop_by_hop(invite, Method::Ack, Some(response))
    }

    fn hop_by_hop(
        invite: &'a SipMessage,
        method: Method<'a>,
        response: Option<&'a SipMessage>,
    ) -> Result<Bytes, Error> {
        if invite.method() != Some(Method::Invite) {
            return Err(Error::BadRequestLine("not an INVITE"));
        }
        let via = invite.top_via()?;
        let cseq = invite.cseq()?;
        let to = match response {
            Some(r) => r.header(HeaderName::To).ok_or(Error::MissingHeader("To"))?,
            None => invite
                .header(HeaderName::To)
                .ok_or(Error::MissingHeader("To"))?,
        };
        let mut b = RequestBuilder::new(method, invite.request_uri_raw().unwrap_or_default())
            .header("Via", via.raw)
            .header("Max-Forwards", &b"70"[..])
            .header(
                "From",
                invite
                    .header(HeaderName::From)
                    .ok_or(Error::MissingHeader("From"))?,
            )
            .header("To", to)
            .header(
                "Call-ID",
                invite
                    .header(HeaderName::CallId)
                    .ok_or(Error::MissingHeader("Call-ID"))?,
            )
            .header(
                "CSeq",
                format!("{} {}", cseq.seq, method.as_str()).into_bytes(),
            );
        for r in invite.headers_of(HeaderName::Route) {
            b = b.header("Route", r.value);
        }
        Ok(b.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INV: &str = "INVITE sip:bob@biloxi.com SIP/2.0\r\nVia: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds\r\nv: SIP/2.0/UDP p1.example.com;branch=z9hG4bKx, SIP/2.0/TCP p2;branch=z9hG4bKy\r\nMax-Forwards: 70\r\nTo: Bob <sip:bob@biloxi.com>\r\nFrom: Alice <sip:alice@atlanta.com>;tag=1928301774\r\nCall-ID: a84b4c76e66710@pc33.atlanta.com\r\nCSeq: 314159 INVITE\r\nTimestamp: 54\r\nRoute: <sip:p1;lr>\r\nContent-Length: 0\r\n\r\n";

    fn parse(b: &[u8]) -> SipMessage {
        SipMessage::parse(b.to_vec()).unwrap()
    }

    #[test]
    fn response_copies_headers_and_adds_tag() {
        let req = parse(INV.as_bytes());
        let resp = ResponseBuilder::new(&req, 486)
            .unwrap()
            .to_tag("abc")
            .build();
        let r = parse(&resp);
        assert_eq!(r.status(), Some(486));
        assert_eq!(r.reason(), Some(&b"Busy Here"[..]));
        assert!(r.validate_response().is_ok());
        let vias: Vec<&[u8]> = r.headers_of(HeaderName::Via).map(|h| h.value).collect();
        assert_eq!(
            vias,
            [
                &b"SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds"[..],
                b"SIP/2.0/UDP p1.example.com;branch=z9hG4bKx, SIP/2.0/TCP p2;branch=z9hG4bKy"
            ]
        );
        assert_eq!(r.via_count(), 3);
        assert_eq!(r.header(HeaderName::From), req.header(HeaderName::From));
        assert_eq!(r.header(HeaderName::CallId), req.header(HeaderName::CallId));
        assert_eq!(r.header(HeaderName::CSeq), req.header(HeaderName::CSeq));
        assert_eq!(r.to_tag().unwrap(), Some("abc"));
        assert_eq!(r.header(HeaderName::Timestamp), None);
        assert_eq!(r.content_length(), Some(0));
    }

    #[test]
    fn trying_has_no_tag_and_echoes_timestamp() {
        let req = parse(INV.as_bytes());
        let r = parse(&ResponseBuilder::new(&req, 100).unwrap().build());
        assert_eq!(r.to_tag().unwrap(), None);
        assert_eq!(r.header(HeaderName::Timestamp), Some(&b"54"[..]));
        assert_eq!(r.reason(), Some(&b"Trying"[..]));
    }

    #[test]
    fn existing_tag_kept_and_challenge() {
        let req = parse(
            INV.replace(
                "To: Bob <sip:bob@biloxi.com>",
                "To: Bob <sip:bob@biloxi.com>;tag=xyz",
            )
            .as_bytes(),
        );
        let r = parse(
            &ResponseBuilder::new(&req, 407)
                .unwrap()
                .header(
                    "Proxy-Authenticate",
                    &b"Digest realm=\"atlanta.com\", nonce=\"n1\", qop=\"auth\", algorithm=SHA-256"
                        [..],
                )
                .build(),
        );
        assert_eq!(r.to_tag().unwrap(), Some("xyz"));
        let ch = r.proxy_authenticates().next().unwrap().unwrap();
        assert_eq!(ch.realm(), Some("atlanta.com"));
        assert_eq!(ch.algorithm(), Some("SHA-256"));
    }

    #[test]
    fn stateless_tag_is_stable() {
        let a = parse(INV.as_bytes());
        let b = parse(INV.as_bytes());
        let c = parse(INV.replace("314159", "314160").as_bytes());
        let ta = ReplyContext::from_message(&a).unwrap().stateless_tag();
        assert_eq!(ta, ReplyContext::from_message(&b).unwrap().stateless_tag());
        assert_ne!(ta, ReplyContext::from_message(&c).unwrap().stateless_tag());
        let r = parse(&ResponseBuilder::new(&a, 404).unwrap().build());
        assert_eq!(r.to_tag().unwrap().unwrap().as_bytes(), ta);
    }

    #[test]
    fn body_and_reason_sanitised() {
        let req = parse(INV.as_bytes());
        let r = ResponseBuilder::new(&req, 200)
            .unwrap()
            .reason("O\r\nK")
            .body(&b"application/sdp"[..], &b"v=0\r\n"[..])
            .build();
        let r = parse(&r);
        assert_eq!(r.reason(), Some(&b"O  K"[..]));
        assert_eq!(r.body(), b"v=0\r\n");
        assert_eq!(r.content_length(), Some(5));
        assert!(r.content_type().unwrap().unwrap().is_sdp());
    }

    #[test]
    fn error_replies() {
        let raw = b"INVITE  sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n";
        let err = SipMessage::parse(raw.to_vec()).unwrap_err();
        let r = parse(&error_reply(None, raw, &err).unwrap());
        assert_eq!(r.status(), Some(400));
        assert_eq!(
            r.reason(),
            Some(&b"Malformed request line: extra white space"[..])
        );
        assert!(r.validate_response().is_ok());
        assert!(r.to_tag().unwrap().is_some());

        // No Via at all: no reply.
        assert!(error_reply(None, b"INVITE  sip:x SIP/2.0\r\nFrom: a\r\n\r\n", &err).is_none());
        // Responses and ACKs are never answered.
        assert!(
            error_reply(
                None,
                b"SIP/2.0 4294967301 x\r\nVia: SIP/2.0/UDP h\r\n\r\n",
                &err
            )
            .is_none()
        );
        assert!(
            error_reply(
                None,
                b"ACK  sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n\r\n",
                &err
            )
            .is_none()
        );

        let big = Error::MessageTooLarge { limit: 10 };
        let r = parse(&error_reply(None, raw, &big).unwrap());
        assert_eq!(r.status(), Some(513));
        assert_eq!(r.reason(), Some(&b"Message Too Large"[..]));

        let ver = parse(b"OPTIONS sip:a SIP/7.0\r\nVia: SIP/7.0/UDP c.example.com;branch=z9hG4bKkdjuw\r\nFrom: A <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: v\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n");
        let e = ver.validate_request().unwrap_err();
        let r = parse(&error_reply(Some(&ver), ver.as_bytes(), &e).unwrap());
        assert_eq!(r.status(), Some(505));
    }

    #[test]
    fn salvage_skips_dangerous_values() {
        let raw = b"FOO sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: a\0b\r\nbroken line\r\nCall-ID: \r\n x\r\n\r\n";
        let ctx = ReplyContext::salvage(raw, 1000).unwrap();
        assert_eq!(ctx.from, None);
        assert_eq!(ctx.call_id, Some(&b"x"[..]));
        assert_eq!(ctx.method(), b"FOO");
        let bad_top = b"FOO sip:x SIP/2.0\r\nVia: SIP/2.0/UDP a\0;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK2\r\n\r\n";
        assert!(ReplyContext::salvage(bad_top, 1000).is_none());
    }

    #[test]
    fn cancel_and_ack() {
        let inv = parse(INV.as_bytes());
        let c = parse(&RequestBuilder::cancel(&inv).unwrap());
        assert_eq!(c.method(), Some(Method::Cancel));
        assert_eq!(c.request_uri_raw(), inv.request_uri_raw());
        assert_eq!(c.via_count(), 1);
        assert_eq!(c.top_via().unwrap().branch, Some("z9hG4bK776asdhds"));
        assert_eq!(c.cseq().unwrap().seq, 314159);
        assert_eq!(c.cseq().unwrap().method, Method::Cancel);
        assert_eq!(c.routes().count(), 1);
        assert!(c.validate_request().is_ok());
        assert_eq!(c.cancelled_invite_key().unwrap(), inv.server_key().unwrap());

        let resp = parse(
            &ResponseBuilder::new(&inv, 486)
                .unwrap()
                .to_tag("t9")
                .build(),
        );
        let a = parse(&RequestBuilder::ack_non_2xx(&inv, &resp).unwrap());
        assert_eq!(a.method(), Some(Method::Ack));
        assert_eq!(a.to_tag().unwrap(), Some("t9"));
        assert_eq!(a.server_key().unwrap(), inv.server_key().unwrap());
        assert!(a.validate_request().is_ok());
        assert!(RequestBuilder::cancel(&resp).is_err());
    }

    #[test]
    fn options_probe() {
        let r = RequestBuilder::new(Method::Options, &b"sip:edge-1.example.com:5060"[..])
            .header(
                "Via",
                &b"SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKprobe1"[..],
            )
            .header("Max-Forwards", &b"70"[..])
            .header("From", &b"<sip:dispatcher@10.0.0.1>;tag=p1"[..])
            .header("To", &b"<sip:edge-1.example.com>"[..])
            .header("Call-ID", &b"probe-1"[..])
            .header("CSeq", &b"1 OPTIONS"[..])
            .build();
        let m = parse(&r);
        assert!(m.validate_request().is_ok());
        assert_eq!(m.content_length(), Some(0));
    }
}

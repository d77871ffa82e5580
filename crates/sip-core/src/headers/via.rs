//! Via (RFC 3261 §20.42, RFC 3581 rport, RFC 5118 IPv6 received).

use std::net::{IpAddr, SocketAddr};

use crate::chars::{self, HOSTNAME};
use crate::error::Error;
use crate::header_name::HeaderName;
use crate::message::{SipMessage, Span};
use crate::params::{Cursor, Params};
use crate::split::top_level_comma;
use crate::uri::{Host, parse_host, parse_port};

/// The RFC 3261 branch prefix that makes the branch a transaction id.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// Transport token of a Via (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport<'a> {
    /// UDP
    Udp,
    /// TCP
    Tcp,
    /// TLS
    Tls,
    /// SCTP
    Sctp,
    /// WS (RFC 7118)
    Ws,
    /// WSS (RFC 7118)
    Wss,
    /// Anything else, as written.
    Other(&'a str),
}

impl<'a> Transport<'a> {
    fn parse(t: &'a str) -> Transport<'a> {
        match t.len() {
            2 if t.eq_ignore_ascii_case("WS") => Transport::Ws,
            3 if t.eq_ignore_ascii_case("UDP") => Transport::Udp,
            3 if t.eq_ignore_ascii_case("TCP") => Transport::Tcp,
            3 if t.eq_ignore_ascii_case("TLS") => Transport::Tls,
            3 if t.eq_ignore_ascii_case("WSS") => Transport::Wss,
            4 if t.eq_ignore_ascii_case("SCTP") => Transport::Sctp,
            _ => Transport::Other(t),
        }
    }

    /// Canonical upper-case token.
    pub fn as_str(&self) -> &'a str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Sctp => "SCTP",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
            Transport::Other(s) => s,
        }
    }

    /// True for transports that need Content-Length framing and connection reuse.
    pub fn is_stream(&self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// `host[:port]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HostPort<'a> {
    /// Host.
    pub host: Host<'a>,
    /// Port when written.
    pub port: Option<u16>,
}

impl HostPort<'_> {
    /// Same host and port; a missing port equals only a missing port (RFC 3261 §17.2.3
    /// compares sent-by as written).
    pub fn same_as(&self, other: &HostPort<'_>) -> bool {
        self.port == other.port && self.host.same_as(&other.host)
    }
}

impl std::fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(p) => write!(f, "{}:{p}", self.host),
            None => write!(f, "{}", self.host),
        }
    }
}

/// One Via hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// The hop as written (one comma-separated element).
    pub raw: &'a [u8],
    /// Protocol name, `SIP`.
    pub protocol: &'a str,
    /// Protocol version, `2.0`.
    pub version: &'a str,
    /// Transport.
    pub transport: Transport<'a>,
    /// sent-by.
    pub sent_by: HostPort<'a>,
    /// All parameters.
    pub params: Params<'a>,
    /// `branch`.
    pub branch: Option<&'a str>,
    /// `received`, as written (IPv6 with or without brackets, RFC 5118 §4.5).
    pub received: Option<&'a str>,
    /// `rport`: `Some(None)` when present without value (a request asking for it).
    pub rport: Option<Option<u16>>,
    /// `maddr`.
    pub maddr: Option<&'a str>,
    /// `ttl`.
    pub ttl: Option<u8>,
}

fn parse_received(v: &str) -> Option<IpAddr> {
    let inner = v
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(v);
    inner.parse().ok()
}

impl<'a> Via<'a> {
    /// Parse one Via element.
    pub fn parse(elem: &'a [u8]) -> Result<Via<'a>, Error> {
        const H: &str = "Via";
        let mut c = Cursor::new(elem);
        c.skip_lws();
        let (protocol, version, transport);
        if elem[c.i..].starts_with(b"SIP/2.0/") {
            // Nearly every Via is written this way; skip the LWS-tolerant path.
            protocol = &elem[c.i..c.i + 3];
            version = &elem[c.i + 4..c.i + 7];
            c.i += 8;
            c.skip_lws();
            transport = c.token();
        } else {
            protocol = c.token();
            if protocol.is_empty() || !c.eat_sep(b'/') {
                return Err(Error::BadHeader(H, "bad sent-protocol"));
            }
            c.skip_lws();
            version = c.token();
            if version.is_empty() || !c.eat_sep(b'/') {
                return Err(Error::BadHeader(H, "bad sent-protocol"));
            }
            c.skip_lws();
            transport = c.token();
        }
        if transport.is_empty() {
            return Err(Error::BadHeader(H, "bad sent-protocol"));
        }
        if !c.skip_lws() {
            return Err(Error::BadHeader(H, "missing sent-by"));
        }
        let host_start = c.i;
        if c.peek() == Some(b'[') {
            match memchr::memchr(b']', c.rest()) {
                Some(close) => c.i += close + 1,
                None => return Err(Error::BadHeader(H, "bad sent-by host")),
            }
        } else {
            c.take_class(HOSTNAME);
        }
        let host = parse_host(&elem[host_start..c.i])
            .map_err(|_| Error::BadHeader(H, "bad sent-by host"))?;
        let mut port = None;
        if c.eat_sep(b':') {
            c.skip_lws();
            let digits_start = c.i;
            while c.peek().is_some_and(|b| b.is_ascii_digit()) {
                c.i += 1;
            }
            port = Some(
                parse_port(&elem[digits_start..c.i])
                    .ok_or(Error::BadHeader(H, "bad sent-by port"))?,
            );
        }
        let (mut branch, mut received, mut rport, mut maddr, mut ttl) =
            (None, None, None, None, None);
        let params = Params::parse_with(&mut c, H, |p| {
            let text = || {
                p.value
                    .and_then(|v| if v.is_quoted() { None } else { v.as_str() })
            };
            match p.name.len() {
                // A repeated branch would let two elements key the same message to
                // different transactions; the other parameters keep their first value,
                // as `Params::get` does.
                6 if p.name.eq_ignore_ascii_case("branch") => {
                    if branch.is_some() {
                        return Err(Error::BadHeader(H, "duplicate branch"));
                    }
                    branch = Some(text().ok_or(Error::BadHeader(H, "bad branch"))?);
                }
                8 if p.name.eq_ignore_ascii_case("received") => {
                    let v = text().ok_or(Error::BadHeader(H, "bad received"))?;
                    parse_received(v).ok_or(Error::BadHeader(H, "bad received"))?;
                    received = received.or(Some(v));
                }
                5 if p.name.eq_ignore_ascii_case("rport") => {
                    let v = match p.value {
                        None => None,
                        Some(v) => {
                            Some(parse_port(v.raw()).ok_or(Error::BadHeader(H, "bad rport"))?)
                        }
                    };
                    rport = rport.or(Some(v));
                }
                5 if p.name.eq_ignore_ascii_case("maddr") => {
                    let v = text().ok_or(Error::BadHeader(H, "bad maddr"))?;
                    parse_host(v.as_bytes()).map_err(|_| Error::BadHeader(H, "bad maddr"))?;
                    maddr = maddr.or(Some(v));
                }
                3 if p.name.eq_ignore_ascii_case("ttl") => {
                    let n = text()
                        .and_then(|v| chars::decimal_u32(v.as_bytes()))
                        .and_then(|n| u8::try_from(n).ok())
                        .ok_or(Error::BadHeader(H, "bad ttl"))?;
                    ttl = ttl.or(Some(n));
                }
                _ => {}
            }
            Ok(())
        })?;
        c.skip_lws();
        if !c.at_end() {
            return Err(Error::BadHeader(H, "unexpected characters"));
        }
        let via = Via {
            raw: elem,
            protocol: chars::ascii(protocol).unwrap_or_default(),
            version: chars::ascii(version).unwrap_or_default(),
            transport: Transport::parse(chars::ascii(transport).unwrap_or_default()),
            sent_by: HostPort { host, port },
            params,
            branch,
            received,
            rport,
            maddr,
            ttl,
        };
        Ok(via)
    }

    /// The `received` address.
    pub fn received_ip(&self) -> Option<IpAddr> {
        self.received.and_then(parse_received)
    }

    /// Where this hop's request was seen from, so where its responses go (RFC 3261
    /// §18.2.2, RFC 3581 §4): `received` (else the sent-by IP) and `rport` (else the
    /// sent-by port, else 5061 for TLS and 5060 otherwise). `None` when the sent-by is a
    /// name and no `received` was recorded.
    pub fn response_addr(&self) -> Option<std::net::SocketAddr> {
        let ip = self.received_ip().or_else(|| self.sent_by.host.ip())?;
        let port = match self.rport {
            Some(Some(p)) => p,
            _ => self.sent_by.port.unwrap_or(match self.transport {
                Transport::Tls => 5061,
                _ => 5060,
            }),
        };
        Some(std::net::SocketAddr::new(ip, port))
    }

    /// True when the branch carries the RFC 3261 magic cookie, i.e. it identifies the
    /// transaction on its own (§17.2.3). A bare `z9hG4bK` does not count.
    pub fn is_rfc3261_branch(&self) -> bool {
        self.branch
            .is_some_and(|b| b.len() > MAGIC_COOKIE.len() && b.starts_with(MAGIC_COOKIE))
    }
}

/// Byte range of a slice that lies inside `buf`.
/// Byte range of a slice that lies inside `buf` (an empty range for one that does not,
/// such as a `""` default).
fn span_in(buf: &[u8], s: &[u8]) -> Span {
    match (s.as_ptr() as usize).checked_sub(buf.as_ptr() as usize) {
        Some(start) if start + s.len() <= buf.len() => Span::new(start, start + s.len()),
        _ => Span::new(0, 0),
    }
}

fn text(buf: &[u8], span: Span) -> &str {
    chars::ascii(span.get(buf)).unwrap_or_default()
}

#[derive(Debug, Clone, Copy)]
enum SpanTransport {
    Known(Transport<'static>),
    Other(Span),
}

#[derive(Debug, Clone, Copy)]
enum SpanHost {
    Domain(Span),
    Ipv4(std::net::Ipv4Addr),
    Ipv6(std::net::Ipv6Addr),
}

/// A parsed top Via as offsets into its message, so that [`SipMessage::top_via`] hands
/// out the same [`Via`] again without scanning.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TopVia {
    raw: Span,
    protocol: Span,
    version: Span,
    transport: SpanTransport,
    host: SpanHost,
    port: Option<u16>,
    params: Span,
    branch: Option<Span>,
    received: Option<Span>,
    rport: Option<Option<u16>>,
    maddr: Option<Span>,
    ttl: Option<u8>,
}

impl TopVia {
    fn of(v: &Via<'_>, buf: &[u8]) -> TopVia {
        let span = |s: &str| span_in(buf, s.as_bytes());
        TopVia {
            raw: span_in(buf, v.raw),
            protocol: span(v.protocol),
            version: span(v.version),
            transport: match v.transport {
                Transport::Udp => SpanTransport::Known(Transport::Udp),
                Transport::Tcp => SpanTransport::Known(Transport::Tcp),
                Transport::Tls => SpanTransport::Known(Transport::Tls),
                Transport::Sctp => SpanTransport::Known(Transport::Sctp),
                Transport::Ws => SpanTransport::Known(Transport::Ws),
                Transport::Wss => SpanTransport::Known(Transport::Wss),
                Transport::Other(t) => SpanTransport::Other(span(t)),
            },
            host: match v.sent_by.host {
                Host::Domain(d) => SpanHost::Domain(span(d)),
                Host::Ipv4(a) => SpanHost::Ipv4(a),
                Host::Ipv6(a) => SpanHost::Ipv6(a),
            },
            port: v.sent_by.port,
            params: span_in(buf, v.params.raw()),
            branch: v.branch.map(span),
            received: v.received.map(span),
            rport: v.rport,
            maddr: v.maddr.map(span),
            ttl: v.ttl,
        }
    }

    fn view<'a>(&self, buf: &'a [u8]) -> Via<'a> {
        Via {
            raw: self.raw.get(buf),
            protocol: text(buf, self.protocol),
            version: text(buf, self.version),
            transport: match self.transport {
                SpanTransport::Known(t) => t,
                SpanTransport::Other(t) => Transport::Other(text(buf, t)),
            },
            sent_by: HostPort {
                host: match self.host {
                    SpanHost::Domain(d) => Host::Domain(text(buf, d)),
                    SpanHost::Ipv4(a) => Host::Ipv4(a),
                    SpanHost::Ipv6(a) => Host::Ipv6(a),
                },
                port: self.port,
            },
            params: Params::validated(self.params.get(buf)),
            branch: self.branch.map(|s| text(buf, s)),
            received: self.received.map(|s| text(buf, s)),
            rport: self.rport,
            maddr: self.maddr.map(|s| text(buf, s)),
            ttl: self.ttl,
        }
    }
}

impl SipMessage {
    /// Every Via hop across every Via line, topmost first.
    pub fn via(&self) -> impl Iterator<Item = Result<Via<'_>, Error>> + '_ {
        self.required_list(HeaderName::Via, "Via")
            .map(|e| e.and_then(Via::parse))
    }

    /// The topmost Via hop, parsing nothing else; parsed once per message.
    pub fn top_via(&self) -> Result<Via<'_>, Error> {
        match self
            .top_via
            .get_or_init(|| self.parse_top_via().map(|v| TopVia::of(&v, &self.buf)))
        {
            Ok(t) => Ok(t.view(&self.buf)),
            Err(e) => Err(e.clone()),
        }
    }

    fn parse_top_via(&self) -> Result<Via<'_>, Error> {
        let v = self
            .header(HeaderName::Via)
            .ok_or(Error::MissingHeader("Via"))?;
        if chars::trim_lws(v).is_empty() {
            return Err(Error::BadHeader("Via", "empty value"));
        }
        let first = match top_level_comma(v) {
            Some(i) => &v[..i],
            None => v,
        };
        Via::parse(chars::trim_lws(first))
    }

    /// Number of Via hops (elements, not lines).
    pub fn via_count(&self) -> usize {
        self.header_values(HeaderName::Via).count()
    }

    /// The client's top Via with `received` and `rport` recording where the request really
    /// came from (RFC 3261 §18.2.1, RFC 3581; rport is filled in even when not asked for, so
    /// NATed clients without RFC 3581 still get their responses). `None` when the Via
    /// already says all that, or cannot be parsed.
    pub fn top_via_seen_from(&self, source: SocketAddr) -> Option<String> {
        let v = self.top_via().ok()?;
        let ip = source.ip();
        let same_host = v.sent_by.host.ip() == Some(ip);
        let port = source.port();
        let host_recorded = same_host || v.received_ip() == Some(ip);
        let port_recorded = match v.rport {
            Some(Some(p)) => p == port,
            Some(None) => false,
            None => v.sent_by.port.unwrap_or(5060) == port,
        };
        if host_recorded && port_recorded {
            return None;
        }
        let base = v.raw.len() - v.params.raw().len();
        let mut s = String::from_utf8_lossy(&v.raw[..base])
            .trim_end()
            .to_owned();
        for p in v.params.iter() {
            if p.name.eq_ignore_ascii_case("received") || p.name.eq_ignore_ascii_case("rport") {
                continue;
            }
            s.push(';');
            s.push_str(p.name);
            if let Some(val) = p.value {
                s.push('=');
                let raw = String::from_utf8_lossy(val.raw());
                if val.is_quoted() {
                    s.push('"');
                    s.push_str(&raw);
                    s.push('"');
                } else {
                    s.push_str(&raw);
                }
            }
        }
        if !same_host {
            s.push_str(&format!(";received={ip}"));
        }
        s.push_str(&format!(";rport={}", source.port()));
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// The cached top Via is the Via a fresh parse gives, for every kind of host,
    /// transport and parameter, and an error stays the same error.
    #[test]
    fn top_via_is_parsed_once_and_read_back_unchanged() {
        for via in [
            "SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776asdhds;rport;received=192.0.2.1;maddr=224.2.0.1;ttl=16",
            "SIP / 2.0 / tcp 192.0.2.7;branch=z9hG4bKx;rport=5070",
            "SIP/2.0/SCTP-X [2001:db8::9]:5070;branch=z9hG4bKy;received=[2001:db8::1]",
            "SIP/2.0/WSS edge.example ;branch=\"odd\";x=\"y\"",
            "SIP/2.0/UDP bad host",
        ] {
            let text = format!(
                "OPTIONS sip:a@b SIP/2.0\r\nVia: {via}, SIP/2.0/UDP second.example\r\nMax-Forwards: 70\r\n\
                 To: <sip:a@b>\r\nFrom: <sip:c@d>;tag=1\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\
                 Content-Length: 0\r\n\r\n"
            );
            let m = SipMessage::parse(text.into_bytes()).expect("parses");
            let fresh = m.parse_top_via();
            let valid = !via.contains("bad") && !via.contains("odd");
            assert_eq!(fresh.is_ok(), valid, "{via}: {fresh:?}");
            assert_eq!(m.top_via(), fresh, "{via}");
            assert_eq!(m.top_via(), fresh, "{via}, read back");
            let copy = m.clone();
            assert_eq!(copy.top_via(), fresh, "{via}, clone");
        }
    }

    #[test]
    fn simple() {
        let v = Via::parse(b"SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776asdhds;rport;received=192.0.2.1;maddr=224.2.0.1;ttl=16").unwrap();
        assert_eq!(v.protocol, "SIP");
        assert_eq!(v.version, "2.0");
        assert_eq!(v.transport, Transport::Udp);
        assert_eq!(v.sent_by.host, Host::Domain("pc33.atlanta.com"));
        assert_eq!(v.sent_by.port, Some(5066));
        assert_eq!(v.branch, Some("z9hG4bK776asdhds"));
        assert_eq!(v.rport, Some(None));
        assert_eq!(
            v.received_ip(),
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
        );
        assert_eq!(v.maddr, Some("224.2.0.1"));
        assert_eq!(v.ttl, Some(16));
        assert!(v.is_rfc3261_branch());
    }

    #[test]
    fn whitespace_and_folding() {
        let v = Via::parse(b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, Transport::Udp);
        assert_eq!(v.sent_by.host, Host::Ipv4(Ipv4Addr::new(192, 0, 2, 2)));
        assert_eq!(v.branch, Some("390skdjuw"));
        assert!(!v.is_rfc3261_branch());
        let v = Via::parse(
            b"SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8",
        )
        .unwrap();
        assert_eq!(v.transport, Transport::Tcp);
        assert_eq!(v.branch, Some("z9hG4bK9ikj8"));
        let v = Via::parse(b"SIP/2.0/ UDP h;branch=z9hG4bK1").unwrap();
        assert_eq!(v.transport, Transport::Udp);
        let v =
            Via::parse(b"SIP/2.0/\r\n TCP h;received=192.0.2.1;received=192.0.2.2;rport=1;rport=2")
                .unwrap();
        assert_eq!(v.transport, Transport::Tcp);
        assert_eq!(v.received, Some("192.0.2.1"));
        assert_eq!(v.rport, Some(Some(1)));
        let v = Via::parse(b"SIP/2.0/UDP host : 5060 ;rport=1234").unwrap();
        assert_eq!(v.sent_by.port, Some(5060));
        assert_eq!(v.rport, Some(Some(1234)));
    }

    #[test]
    fn ipv6() {
        let v = Via::parse(
            b"SIP/2.0/UDP [2001:db8::9:1]:6050;received=[2001:db8::9:255];branch=z9hG4bKas3-111",
        )
        .unwrap();
        assert_eq!(v.sent_by.host, Host::Ipv6("2001:db8::9:1".parse().unwrap()));
        assert_eq!(v.sent_by.port, Some(6050));
        assert_eq!(v.received_ip(), Some("2001:db8::9:255".parse().unwrap()));
        let v =
            Via::parse(b"SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bKas3")
                .unwrap();
        assert_eq!(v.received_ip(), Some("2001:db8::9:255".parse().unwrap()));
        assert_eq!(v.sent_by.port, None);
    }

    #[test]
    fn transports() {
        for (t, e) in [
            ("udp", Transport::Udp),
            ("TCP", Transport::Tcp),
            ("TLS", Transport::Tls),
            ("SCTP", Transport::Sctp),
            ("WS", Transport::Ws),
            ("wss", Transport::Wss),
            ("UNKNOWN", Transport::Other("UNKNOWN")),
        ] {
            let s = format!("SIP/2.0/{t} h;branch=z9hG4bK1");
            assert_eq!(Via::parse(s.as_bytes()).unwrap().transport, e);
        }
    }

    #[test]
    fn bad() {
        for (s, why) in [
            ("SIP/2.0/UDP 192.0.2.15;;", "malformed parameter"),
            (";", "bad sent-protocol"),
            ("", "bad sent-protocol"),
            ("SIP/2.0/UDP", "missing sent-by"),
            ("SIP/2.0/UDP ", "bad sent-by host"),
            ("SIP/2.0 UDP h", "bad sent-protocol"),
            ("SIP/2.0/UDP h:99999", "bad sent-by port"),
            ("SIP/2.0/UDP h:", "bad sent-by port"),
            ("SIP/2.0/UDP [::1", "bad sent-by host"),
            ("SIP/2.0/UDP h;received=notanip", "bad received"),
            ("SIP/2.0/UDP h;rport=x", "bad rport"),
            ("SIP/2.0/UDP h;ttl=256", "bad ttl"),
            ("SIP/2.0/UDP h;branch=\"q\"", "bad branch"),
            ("SIP/2.0/UDP h x", "unexpected characters"),
            (
                "SIP/2.0/UDP h;branch=z9hG4bK1;branch=z9hG4bK2",
                "duplicate branch",
            ),
        ] {
            assert_eq!(
                Via::parse(s.as_bytes()),
                Err(Error::BadHeader("Via", why)),
                "{s}"
            );
        }
    }

    #[test]
    fn message_hops() {
        let m = SipMessage::parse(&b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b;branch=z9hG4bK2\r\nv: SIP/2.0/UDP c;branch=z9hG4bK3\r\nl: 0\r\n\r\n"[..]).unwrap();
        let hosts: Vec<String> = m
            .via()
            .map(|v| v.unwrap().sent_by.host.to_string())
            .collect();
        assert_eq!(hosts, ["a", "b", "c"]);
        assert_eq!(m.top_via().unwrap().branch, Some("z9hG4bK1"));
        assert_eq!(m.via_count(), 3);
    }
}

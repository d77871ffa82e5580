//! URIs: `sip`/`sips` (RFC 3261 §19.1, §25.1), `tel` (RFC 3966), other schemes opaque.
//!
//! Parsing borrows from the input. Escapes are validated but not decoded; the `*_unescaped`
//! accessors decode on demand.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::chars::{
    self, HNV_UNRESERVED, HOSTNAME, PARAM_UNRESERVED, PASSWORD_EXTRA, UNRESERVED, USER_UNRESERVED,
};
use crate::error::Error;
use crate::params::unescape_percent;

/// A parsed URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uri<'a> {
    /// `sip:` or `sips:`
    Sip(SipUri<'a>),
    /// `tel:`
    Tel(TelUri<'a>),
    /// Any other scheme, kept opaque (`isbn:...`, `http://...`, `urn:...`).
    Other {
        /// Scheme as written.
        scheme: &'a str,
        /// Everything after the first colon.
        opaque: &'a str,
    },
}

/// A host: name, IPv4 address, or IPv6 reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Host<'a> {
    /// A domain name as written (compare case-insensitively).
    Domain(&'a str),
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address, written `[...]` in SIP.
    Ipv6(Ipv6Addr),
}

impl Host<'_> {
    /// The address when the host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match *self {
            Host::Ipv4(a) => Some(IpAddr::V4(a)),
            Host::Ipv6(a) => Some(IpAddr::V6(a)),
            Host::Domain(_) => None,
        }
    }

    /// Same host per RFC 3261 §19.1.4: names case-insensitively, addresses by value.
    pub fn same_as(&self, other: &Host<'_>) -> bool {
        match (self, other) {
            (Host::Domain(a), Host::Domain(b)) => a.eq_ignore_ascii_case(b),
            (Host::Ipv4(a), Host::Ipv4(b)) => a == b,
            (Host::Ipv6(a), Host::Ipv6(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ipv4(a) => write!(f, "{a}"),
            Host::Ipv6(a) => write!(f, "[{a}]"),
        }
    }
}

/// Parse host text: a name, dotted IPv4, or a bracketed IPv6 reference.
pub(crate) fn parse_host(s: &[u8]) -> Result<Host<'_>, &'static str> {
    if s.is_empty() {
        return Err("empty host");
    }
    if s[0] == b'[' {
        if s.len() < 3 || s[s.len() - 1] != b']' {
            return Err("unterminated IPv6 reference");
        }
        let inner = chars::ascii(&s[1..s.len() - 1]).ok_or("bad IPv6 reference")?;
        // std's parser follows RFC 4291 (the RFC 5954 correction): `2001:db8:::1` fails.
        return inner
            .parse::<Ipv6Addr>()
            .map(Host::Ipv6)
            .map_err(|_| "bad IPv6 reference");
    }
    // One pass: every byte a host-name byte; whether all are digits/dots (IPv4); no "..".
    let mut numeric = true;
    let mut prev_dot = false;
    for &b in s {
        if !chars::is(b, HOSTNAME) {
            return Err("bad character in host");
        }
        let dot = b == b'.';
        if dot && prev_dot {
            return Err("bad host name");
        }
        prev_dot = dot;
        numeric &= dot || b.is_ascii_digit();
    }
    let text = chars::ascii(s).ok_or("bad character in host")?;
    if numeric {
        return parse_ipv4(s).map(Host::Ipv4).ok_or("bad IPv4 address");
    }
    if s[0] == b'.' || s[0] == b'-' {
        return Err("bad host name");
    }
    Ok(Host::Domain(text))
}

/// Dotted-quad IPv4 (`1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT`, each at most
/// 255). Leading zeros are accepted, as RFC 3261's grammar allows them.
fn parse_ipv4(s: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut n = 0;
    for part in s.split(|&b| b == b'.') {
        if n == 4 || part.is_empty() || part.len() > 3 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v = part.iter().fold(0u16, |a, d| a * 10 + u16::from(d - b'0'));
        octets[n] = u8::try_from(v).ok()?;
        n += 1;
    }
    (n == 4).then(|| Ipv4Addr::from(octets))
}

/// Parse `1*DIGIT` as a port.
pub(crate) fn parse_port(s: &[u8]) -> Option<u16> {
    chars::decimal_u32(s).and_then(|n| u16::try_from(n).ok())
}

/// The `;name[=value]` parameters of a SIP or tel URI, as written (escapes kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UriParams<'a> {
    raw: &'a str,
}

/// One URI parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UriParam<'a> {
    /// Name as written (compare case-insensitively; may contain escapes).
    pub name: &'a str,
    /// Value as written, escapes kept; `None` for flags like `lr`.
    pub value: Option<&'a str>,
}

impl<'a> UriParams<'a> {
    /// Parameters as written, starting at the first `;` (empty if none).
    pub fn raw(&self) -> &'a str {
        self.raw
    }
    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
    /// Iterate the parameters.
    pub fn iter(&self) -> impl Iterator<Item = UriParam<'a>> + 'a {
        self.raw
            .split(';')
            .skip(1)
            .map(|p| match p.split_once('=') {
                Some((n, v)) => UriParam {
                    name: n,
                    value: Some(v),
                },
                None => UriParam {
                    name: p,
                    value: None,
                },
            })
    }
    /// The first parameter named `name` (case-insensitive; `%HH` escapes in the name are
    /// decoded first, RFC 3261 §19.1.4): `Some(None)` for a flag.
    pub fn get(&self, name: &str) -> Option<Option<&'a str>> {
        self.iter()
            .find(|p| {
                if p.name.contains('%') {
                    unescape_percent(p.name.as_bytes()).eq_ignore_ascii_case(name.as_bytes())
                } else {
                    p.name.eq_ignore_ascii_case(name)
                }
            })
            .map(|p| p.value)
    }
    /// True when the parameter is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

fn check_uri_params(s: &[u8]) -> Result<(), &'static str> {
    // s starts with ';'
    for p in s.split(|&b| b == b';').skip(1) {
        let (n, v) = match memchr::memchr(b'=', p) {
            Some(e) => (&p[..e], Some(&p[e + 1..])),
            None => (p, None),
        };
        if n.is_empty() || !chars::is_escaped_class(n, UNRESERVED | PARAM_UNRESERVED) {
            return Err("bad URI parameter");
        }
        if let Some(v) = v
            && (v.is_empty() || !chars::is_escaped_class(v, UNRESERVED | PARAM_UNRESERVED))
        {
            return Err("bad URI parameter value");
        }
    }
    Ok(())
}

/// A `sip:` or `sips:` URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipUri<'a> {
    /// The whole URI as written.
    pub raw: &'a str,
    /// `sips:`
    pub secure: bool,
    /// User part as written (escapes kept).
    pub user: Option<&'a str>,
    /// Password as written (deprecated by RFC 3261 but still parsed).
    pub password: Option<&'a str>,
    /// Host.
    pub host: Host<'a>,
    /// Port if written.
    pub port: Option<u16>,
    /// URI parameters.
    pub params: UriParams<'a>,
    /// `?`-headers as written, without the `?`.
    pub headers: Option<&'a str>,
}

impl<'a> SipUri<'a> {
    /// The user part with `%HH` escapes decoded.
    pub fn user_unescaped(&self) -> Option<Cow<'a, [u8]>> {
        self.user.map(|u| unescape_percent(u.as_bytes()))
    }
    /// The port, or the default of the scheme when none is written (RFC 3263 §4.2: 5061
    /// for `sips:`, 5060 otherwise).
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(if self.secure { 5061 } else { 5060 })
    }
    /// `transport` parameter.
    pub fn transport(&self) -> Option<&'a str> {
        self.params.get("transport").flatten()
    }
    /// `lr` flag (loose routing, RFC 3261 §19.1.1).
    pub fn lr(&self) -> bool {
        self.params.contains("lr")
    }
    /// `maddr` parameter.
    pub fn maddr(&self) -> Option<&'a str> {
        self.params.get("maddr").flatten()
    }
    /// `user` parameter (`phone`, `ip`, ...).
    pub fn user_param(&self) -> Option<&'a str> {
        self.params.get("user").flatten()
    }
    /// `ob` flag (RFC 5626 outbound).
    pub fn ob(&self) -> bool {
        self.params.contains("ob")
    }
    /// `?hname=hvalue&...` pairs, as written.
    pub fn header_pairs(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.headers
            .into_iter()
            .flat_map(|h| h.split('&'))
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
    }
}

/// A `tel:` URI (RFC 3966).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelUri<'a> {
    /// The whole URI as written.
    pub raw: &'a str,
    /// The number, visual separators included (`+1-201-555-0123`).
    pub number: &'a str,
    /// Parameters (`phone-context`, `ext`, ...).
    pub params: UriParams<'a>,
}

impl TelUri<'_> {
    /// True for a global number (`+` prefix).
    pub fn is_global(&self) -> bool {
        self.number.starts_with('+')
    }
}

pub(crate) fn scheme_end(s: &[u8]) -> Option<usize> {
    let colon = memchr::memchr(b':', s)?;
    let scheme = &s[..colon];
    let ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    ok.then_some(colon)
}

impl<'a> Uri<'a> {
    /// Parse a URI. Errors are [`Error::BadUri`].
    pub fn parse(s: &'a [u8]) -> Result<Uri<'a>, Error> {
        Self::parse_inner(s).map_err(Error::BadUri)
    }

    pub(crate) fn parse_inner(s: &'a [u8]) -> Result<Uri<'a>, &'static str> {
        let raw = std::str::from_utf8(s).map_err(|_| "non-UTF-8 URI")?;
        let colon = scheme_end(s).ok_or("missing or bad scheme")?;
        let scheme = &raw[..colon];
        let rest = &s[colon + 1..];
        if rest.is_empty() {
            return Err("empty URI after scheme");
        }
        if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
            return parse_sip(raw, scheme.len() == 4, rest).map(Uri::Sip);
        }
        if scheme.eq_ignore_ascii_case("tel") {
            return parse_tel(raw, colon + 1).map(Uri::Tel);
        }
        if rest
            .iter()
            .any(|&b| b <= 0x20 || b == 0x7f || b == b'<' || b == b'>' || b == b'"')
        {
            return Err("bad character in URI");
        }
        Ok(Uri::Other {
            scheme,
            opaque: &raw[colon + 1..],
        })
    }

    /// The SIP URI, if this is one.
    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }

    /// The scheme as written.
    pub fn scheme(&self) -> &'a str {
        match self {
            Uri::Sip(u) => &u.raw[..if u.secure { 4 } else { 3 }],
            Uri::Tel(t) => &t.raw[..3],
            Uri::Other { scheme, .. } => scheme,
        }
    }
}

fn parse_sip<'a>(raw: &'a str, secure: bool, rest: &'a [u8]) -> Result<SipUri<'a>, &'static str> {
    let base = raw.len() - rest.len();
    let text = |a: usize, b: usize| &raw[base + a..base + b];
    let (mut user, mut password) = (None, None);
    let mut i = 0;
    if let Some(at) = memchr::memchr(b'@', rest) {
        if memchr::memchr(b'@', &rest[at + 1..]).is_some() {
            return Err("more than one @");
        }
        let userinfo = &rest[..at];
        let (u, p) = match memchr::memchr(b':', userinfo) {
            Some(c) => (&userinfo[..c], Some(c)),
            None => (userinfo, None),
        };
        if u.is_empty() {
            return Err("empty user part");
        }
        if !chars::is_escaped_class(u, UNRESERVED | USER_UNRESERVED) {
            return Err("bad character in user part");
        }
        user = Some(text(0, u.len()));
        if let Some(c) = p {
            let pw = &userinfo[c + 1..];
            if !chars::is_escaped_class(pw, UNRESERVED | PASSWORD_EXTRA) {
                return Err("bad character in password");
            }
            password = Some(text(c + 1, at));
        }
        i = at + 1;
    }
    // host ends at ';' (params), '?' (headers) or the port colon (outside brackets)
    let host_start = i;
    let host_end = if rest.get(i) == Some(&b'[') {
        i + memchr::memchr(b']', &rest[i..]).ok_or("unterminated IPv6 reference")? + 1
    } else {
        let mut j = i;
        while j < rest.len() && !matches!(rest[j], b':' | b';' | b'?') {
            j += 1;
        }
        j
    };
    let host = parse_host(&rest[host_start..host_end])?;
    i = host_end;
    let mut port = None;
    if rest.get(i) == Some(&b':') {
        let ps = i + 1;
        let mut j = ps;
        while j < rest.len() && rest[j].is_ascii_digit() {
            j += 1;
        }
        port = Some(parse_port(&rest[ps..j]).ok_or("bad port")?);
        i = j;
    }
    let params_start = i;
    while i < rest.len() && rest[i] != b'?' {
        i += 1;
    }
    let params_raw = &rest[params_start..i];
    if !params_raw.is_empty() {
        if params_raw[0] != b';' {
            return Err("unexpected character after host");
        }
        check_uri_params(params_raw)?;
    }
    let mut headers = None;
    if i < rest.len() {
        let h = &rest[i + 1..];
        for pair in h.split(|&b| b == b'&') {
            let (n, v) = match memchr::memchr(b'=', pair) {
                Some(e) => (&pair[..e], &pair[e + 1..]),
                None => return Err("bad URI header"),
            };
            if n.is_empty()
                || !chars::is_escaped_class(n, UNRESERVED | HNV_UNRESERVED)
                || !chars::is_escaped_class(v, UNRESERVED | HNV_UNRESERVED)
            {
                return Err("bad URI header");
            }
        }
        headers = Some(text(i + 1, rest.len()));
    }
    Ok(SipUri {
        raw,
        secure,
        user,
        password,
        host,
        port,
        params: UriParams {
            raw: text(params_start, params_start + params_raw.len()),
        },
        headers,
    })
}

fn parse_tel(raw: &str, start: usize) -> Result<TelUri<'_>, &'static str> {
    let body = &raw[start..];
    let (number, params) = match body.find(';') {
        Some(p) => (&body[..p], &body[p..]),
        None => (body, ""),
    };
    let ok = !number.is_empty()
        && number.bytes().all(|b| {
            b.is_ascii_hexdigit()
                || matches!(
                    b,
                    b'+' | b'-' | b'.' | b'(' | b')' | b'*' | b'#' | b'p' | b'w'
                )
        });
    if !ok {
        return Err("bad telephone number");
    }
    if !params.is_empty() {
        check_uri_params(params.as_bytes())?;
    }
    Ok(TelUri {
        raw,
        number,
        params: UriParams { raw: params },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sip(s: &str) -> SipUri<'_> {
        match Uri::parse(s.as_bytes()) {
            Ok(Uri::Sip(u)) => u,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn bad(s: &str) -> &'static str {
        match Uri::parse_inner(s.as_bytes()) {
            Err(e) => e,
            Ok(u) => panic!("{s} parsed: {u:?}"),
        }
    }

    #[test]
    fn sip_uris() {
        let u = sip(
            "sip:alice:secret@atlanta.com:5061;transport=tcp;lr;maddr=239.1.1.1;user=phone;ob;x?subject=hi&priority=urgent",
        );
        assert!(!u.secure);
        assert_eq!(u.user, Some("alice"));
        assert_eq!(u.password, Some("secret"));
        assert_eq!(u.host, Host::Domain("atlanta.com"));
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.transport(), Some("tcp"));
        assert!(u.lr());
        assert!(u.ob());
        assert_eq!(u.maddr(), Some("239.1.1.1"));
        assert_eq!(u.user_param(), Some("phone"));
        assert_eq!(u.params.get("x"), Some(None));
        assert_eq!(u.headers, Some("subject=hi&priority=urgent"));
        assert_eq!(
            u.header_pairs().collect::<Vec<_>>(),
            [("subject", "hi"), ("priority", "urgent")]
        );

        let u = sip("sips:[2001:db8::10]:5070");
        assert!(u.secure);
        assert_eq!(u.host, Host::Ipv6("2001:db8::10".parse().unwrap()));
        assert_eq!(u.port, Some(5070));
        let u = sip("sip:[2001:db8::10:5070]");
        assert_eq!(u.port, None);
        let u = sip("SIP:192.0.2.1");
        assert_eq!(u.host, Host::Ipv4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(u.user, None);
        let u = sip("sip:user;par=u%40example.net@example.com");
        assert_eq!(u.user, Some("user;par=u%40example.net"));
        assert_eq!(u.host, Host::Domain("example.com"));
        let u = sip("sip:null-%00-null@example.com");
        assert_eq!(u.user_unescaped().unwrap().as_ref(), b"null-\0-null");
        let u = sip(
            "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com",
        );
        assert_eq!(
            u.user,
            Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        );
        assert_eq!(
            u.password,
            Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
        );
        let u = sip("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31");
        assert_eq!(u.params.iter().count(), 2);
        let u = sip("sip:caller@[::ffff:192.0.2.2]");
        assert_eq!(u.host.ip(), Some("::ffff:192.0.2.2".parse().unwrap()));
        assert!(sip("sip:a@b;%6Cr").lr());
        assert_eq!(sip("sip:a@b;tr%61nsport=tcp").transport(), Some("tcp"));
        let u = sip("sip:example.com.");
        assert_eq!(u.host, Host::Domain("example.com."));
    }

    #[test]
    fn bad_sip_uris() {
        assert_eq!(bad("sip:2001:db8::10"), "bad IPv4 address");
        assert_eq!(bad("sip:user@[2001:db8:::192.0.2.1]"), "bad IPv6 reference");
        assert_eq!(bad("sip:[2001:db8::10"), "unterminated IPv6 reference");
        assert_eq!(bad("<sip:user@example.com>"), "missing or bad scheme");
        assert_eq!(bad("sip:user@example.com; lr"), "bad URI parameter");
        assert_eq!(bad("sip:a@b@c"), "more than one @");
        assert_eq!(bad("sip:@b"), "empty user part");
        assert_eq!(bad("sip:a b@c"), "bad character in user part");
        assert_eq!(bad("sip:a%zz@c"), "bad character in user part");
        assert_eq!(bad("sip:a@c:99999"), "bad port");
        assert_eq!(bad("sip:a@c:"), "bad port");
        assert_eq!(bad("sip:a@999.1.1.1"), "bad IPv4 address");
        assert_eq!(bad("sip:a@"), "empty host");
        assert_eq!(bad("sip:"), "empty URI after scheme");
        assert_eq!(bad("sip:a@c;"), "bad URI parameter");
        assert_eq!(bad("sip:a@c;x="), "bad URI parameter value");
        assert_eq!(bad("sip:a@c?x"), "bad URI header");
        assert_eq!(bad("sip:a@c:5060x"), "unexpected character after host");
        assert_eq!(bad("sip:a@ex ample.com"), "bad character in host");
        assert_eq!(bad("1sip:a"), "missing or bad scheme");
        assert_eq!(Uri::parse_inner(b"sip:a@b\xff"), Err("non-UTF-8 URI"));
    }

    #[test]
    fn other_schemes() {
        assert_eq!(
            Uri::parse(b"isbn:2983792873").unwrap(),
            Uri::Other {
                scheme: "isbn",
                opaque: "2983792873"
            }
        );
        assert_eq!(
            Uri::parse(b"soap.beep://192.0.2.103:3002")
                .unwrap()
                .scheme(),
            "soap.beep"
        );
        assert!(Uri::parse(b"nobodyKnowsThisScheme:totallyopaquecontent").is_ok());
        let t = match Uri::parse(b"tel:+1-201-555-0123;phone-context=example.com").unwrap() {
            Uri::Tel(t) => t,
            u => panic!("{u:?}"),
        };
        assert_eq!(t.number, "+1-201-555-0123");
        assert!(t.is_global());
        assert_eq!(t.params.get("phone-context"), Some(Some("example.com")));
        assert!(Uri::parse(b"tel:").is_err());
        assert!(Uri::parse(b"tel:12;").is_err());
        assert!(Uri::parse(b"tel:12 34").is_err());
    }

    #[test]
    fn host_helpers() {
        assert!(Host::Domain("Example.COM").same_as(&Host::Domain("example.com")));
        assert!(!Host::Domain("a").same_as(&Host::Ipv4(Ipv4Addr::LOCALHOST)));
        assert_eq!(Host::Ipv6(Ipv6Addr::LOCALHOST).to_string(), "[::1]");
        assert_eq!(parse_port(b"0005060"), Some(5060));
        assert_eq!(parse_ipv4(b"192.0.2.1"), Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(parse_ipv4(b"255.255.255.255"), Some(Ipv4Addr::BROADCAST));
        assert_eq!(parse_ipv4(b"010.0.0.1"), Some(Ipv4Addr::new(10, 0, 0, 1)));
        for bad in [
            &b"256.0.0.1"[..],
            b"1.2.3",
            b"1.2.3.4.5",
            b"1..3.4",
            b"1.2.3.4.",
            b"1234.1.1.1",
            b"",
        ] {
            assert_eq!(parse_ipv4(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse_port(b"65536"), None);
        assert_eq!(parse_port(b"99999999999999999999"), None);
    }
}

//! Address headers: From, To, Contact, Route, Record-Route, Path (RFC 3261 §20, RFC 3327,
//! RFC 5626 `+sip.instance`/`reg-id`).

use std::borrow::Cow;

use crate::chars::{self, is_lws};
use crate::error::Error;
use crate::header_name::HeaderName;
use crate::message::SipMessage;
use crate::params::{Cursor, Params, unescape_quoted};
use crate::uri::Uri;

/// A display name as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayName<'a> {
    /// `"..."`: the bytes between the quotes, escapes kept.
    Quoted(&'a [u8]),
    /// `*(token LWS)`: unquoted tokens, inner white space kept.
    Tokens(&'a [u8]),
}

impl<'a> DisplayName<'a> {
    /// The name with quoted-pair escapes removed.
    pub fn unescaped(&self) -> Cow<'a, [u8]> {
        match *self {
            DisplayName::Quoted(q) => unescape_quoted(q),
            DisplayName::Tokens(t) => Cow::Borrowed(t),
        }
    }
    /// Lossy UTF-8 text of the unescaped name.
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.unescaped()).into_owned()
    }
}

/// `name-addr` or `addr-spec`, followed by header parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// The element as written.
    pub raw: &'a [u8],
    /// Display name, if any.
    pub display_name: Option<DisplayName<'a>>,
    /// The URI as written (between `<>` in name-addr form).
    pub uri: &'a [u8],
    /// Written as `<uri>` (name-addr) rather than bare addr-spec.
    pub angle: bool,
    /// Header parameters after the address (`tag`, `expires`, `lr` is a URI param...).
    pub params: Params<'a>,
    tag: Option<&'a str>,
}

impl<'a> NameAddr<'a> {
    /// Parse one address element; `header` names the header in errors.
    pub fn parse(elem: &'a [u8], header: &'static str) -> Result<NameAddr<'a>, Error> {
        let mut c = Cursor::new(elem);
        c.skip_lws();
        let start = c.i;
        let mut display_name = None;
        let angle;
        let uri;
        if c.peek() == Some(b'"') {
            let q = c
                .quoted()
                .ok_or(Error::BadHeader(header, "unterminated quoted string"))?;
            display_name = Some(DisplayName::Quoted(q));
            c.skip_lws();
            if !c.eat(b'<') {
                return Err(Error::BadHeader(header, "expected < after display name"));
            }
            uri = angle_uri(&mut c, header)?;
            angle = true;
        } else {
            // display-name = *(token LWS): read tokens until '<'; anything else means the
            // value is a bare addr-spec and the tokens were its beginning.
            let mut last_token_end = c.i;
            loop {
                let t = c.token();
                if t.is_empty() {
                    break;
                }
                last_token_end = c.i;
                if !c.skip_lws() {
                    break;
                }
            }
            if c.peek() == Some(b'<') {
                if last_token_end > start {
                    display_name = Some(DisplayName::Tokens(&elem[start..last_token_end]));
                }
                c.i += 1;
                uri = angle_uri(&mut c, header)?;
                angle = true;
            } else {
                c.i = start;
                let mut end = start;
                while end < elem.len() && elem[end] != b';' && !is_lws(elem[end]) {
                    end += 1;
                }
                uri = &elem[start..end];
                c.i = end;
                if uri.is_empty() {
                    return Err(Error::BadHeader(header, "missing URI"));
                }
                if memchr::memchr2(b'?', b',', uri).is_some() {
                    return Err(Error::BadHeader(
                        header,
                        "URI with ? or , must be enclosed in <>",
                    ));
                }
                angle = false;
            }
        }
        if crate::uri::scheme_end(uri).is_none() {
            return Err(Error::BadHeader(header, "bad URI"));
        }
        let mut tag = None;
        let params = Params::parse_with(&mut c, header, |p| {
            if p.name.len() == 3 && p.name.eq_ignore_ascii_case("tag") {
                // A tag identifies the dialog: it must be one token, given once.
                if tag.is_some() {
                    return Err(Error::BadHeader(header, "duplicate tag"));
                }
                let v = p.value.filter(|v| !v.is_quoted()).and_then(|v| v.as_str());
                let v = v.filter(|t| chars::is_token_str(t.as_bytes()));
                tag = Some(v.ok_or(Error::BadHeader(header, "bad tag"))?);
            }
            Ok(())
        })?;
        c.skip_lws();
        if !c.at_end() {
            return Err(Error::BadHeader(header, "unexpected characters"));
        }
        Ok(NameAddr {
            raw: elem,
            display_name,
            uri,
            angle,
            params,
            tag,
        })
    }

    /// Parse the URI.
    pub fn parsed_uri(&self) -> Result<Uri<'a>, Error> {
        Uri::parse(self.uri)
    }

    /// The `tag` parameter (From/To).
    pub fn tag(&self) -> Option<&'a str> {
        self.tag
    }
}

/// The URI between `<` (already consumed) and `>`, which must hug it: `< sip:a >` is not
/// an addr-spec (RFC 4475 §3.1.2.14).
fn angle_uri<'a>(c: &mut Cursor<'a>, header: &'static str) -> Result<&'a [u8], Error> {
    let rest = c.rest();
    let gt = memchr::memchr(b'>', rest).ok_or(Error::BadHeader(header, "missing >"))?;
    let uri = &rest[..gt];
    if uri.is_empty() {
        return Err(Error::BadHeader(header, "missing URI"));
    }
    if chars::has_lws_or_bracket(uri) {
        return Err(Error::BadHeader(header, "white space or < inside <>"));
    }
    c.i += gt + 1;
    Ok(uri)
}

/// A q-value in thousandths (`q=0.5` is 500); 0..=1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QValue(pub u16);

impl QValue {
    /// Parse `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`.
    pub fn parse(s: &[u8]) -> Option<QValue> {
        let (int, frac) = match memchr::memchr(b'.', s) {
            Some(d) => (&s[..d], &s[d + 1..]),
            None => (s, &b""[..]),
        };
        if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let f = frac
            .iter()
            .enumerate()
            .fold(0u16, |a, (i, d)| a + u16::from(d - b'0') * [100, 10, 1][i]);
        match int {
            b"0" => Some(QValue(f)),
            b"1" if f == 0 => Some(QValue(1000)),
            _ => None,
        }
    }
}

impl std::fmt::Display for QValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 >= 1000 {
            return f.write_str("1");
        }
        let s = format!("0.{:03}", self.0);
        f.write_str(s.trim_end_matches('0').trim_end_matches('.'))
    }
}

fn delta_seconds(v: &[u8]) -> Option<u32> {
    chars::decimal_u32(v)
}

pub(crate) fn parse_delta_seconds(v: &[u8], header: &'static str) -> Result<u32, Error> {
    delta_seconds(chars::trim_lws(v)).ok_or(Error::BadHeader(
        header,
        "value is not 32-bit delta-seconds",
    ))
}

/// One Contact value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contact<'a> {
    /// `*` (remove all bindings, with `Expires: 0`).
    Star,
    /// An address with its contact parameters.
    Addr(ContactAddr<'a>),
}

/// A Contact address with its typed parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContactAddr<'a> {
    /// The address.
    pub addr: NameAddr<'a>,
    /// `expires` parameter.
    pub expires: Option<u32>,
    /// `q` parameter.
    pub q: Option<QValue>,
    /// `+sip.instance` (RFC 5626), between its quotes, e.g. `<urn:uuid:...>`.
    pub instance: Option<&'a [u8]>,
    /// `reg-id` (RFC 5626).
    pub reg_id: Option<u32>,
}

impl<'a> Contact<'a> {
    /// Parse one Contact element.
    pub fn parse(elem: &'a [u8]) -> Result<Contact<'a>, Error> {
        const H: &str = "Contact";
        if chars::trim_lws(elem) == b"*" {
            return Ok(Contact::Star);
        }
        let addr = NameAddr::parse(elem, H)?;
        let mut c = ContactAddr {
            addr,
            expires: None,
            q: None,
            instance: None,
            reg_id: None,
        };
        // Repeated parameters keep their first value, as `Params::get` does.
        for p in addr.params.iter() {
            let v = p.value.map(|v| v.raw());
            if p.name.eq_ignore_ascii_case("expires") {
                let e = v
                    .and_then(delta_seconds)
                    .ok_or(Error::BadHeader(H, "bad expires parameter"))?;
                c.expires = c.expires.or(Some(e));
            } else if p.name.eq_ignore_ascii_case("q") {
                let q = v
                    .and_then(QValue::parse)
                    .ok_or(Error::BadHeader(H, "bad q parameter"))?;
                c.q = c.q.or(Some(q));
            } else if p.name.eq_ignore_ascii_case("+sip.instance") {
                match p.value {
                    Some(v) if v.is_quoted() => c.instance = c.instance.or(Some(v.raw())),
                    _ => return Err(Error::BadHeader(H, "bad +sip.instance parameter")),
                }
            } else if p.name.eq_ignore_ascii_case("reg-id") {
                let r = v
                    .and_then(delta_seconds)
                    .ok_or(Error::BadHeader(H, "bad reg-id parameter"))?;
                c.reg_id = c.reg_id.or(Some(r));
            }
        }
        Ok(Contact::Addr(c))
    }
}

fn single_addr<'a>(
    msg: &'a SipMessage,
    name: HeaderName,
    h: &'static str,
) -> Result<NameAddr<'a>, Error> {
    let v = msg.header(name).ok_or(Error::MissingHeader(h))?;
    NameAddr::parse(v, h)
}

fn route_set<'a>(
    msg: &'a SipMessage,
    name: HeaderName,
    h: &'static str,
) -> impl Iterator<Item = Result<NameAddr<'a>, Error>> + 'a {
    msg.required_list(name, h).map(move |e| {
        let a = NameAddr::parse(e?, h)?;
        if !a.angle {
            return Err(Error::BadHeader(h, "route must be in name-addr form"));
        }
        Ok(a)
    })
}

impl SipMessage {
    /// The From header (first, if repeated: see validation).
    pub fn from_header(&self) -> Result<NameAddr<'_>, Error> {
        single_addr(self, HeaderName::From, "From")
    }

    /// The To header.
    pub fn to_header(&self) -> Result<NameAddr<'_>, Error> {
        single_addr(self, HeaderName::To, "To")
    }

    /// The user part of the From URI (the caller), when it is a SIP URI with one, as
    /// written (not unescaped).
    pub fn from_user(&self) -> Option<&str> {
        match self.from_header().ok()?.parsed_uri().ok()? {
            crate::Uri::Sip(u) => u.user,
            _ => None,
        }
    }

    /// The user part of the To URI (a REGISTER's address-of-record), as written.
    pub fn to_user(&self) -> Option<&str> {
        match self.to_header().ok()?.parsed_uri().ok()? {
            crate::Uri::Sip(u) => u.user,
            _ => None,
        }
    }

    /// The From tag, without parsing more than needed.
    pub fn from_tag(&self) -> Result<Option<&str>, Error> {
        Ok(self.from_header()?.tag())
    }

    /// The To tag.
    pub fn to_tag(&self) -> Result<Option<&str>, Error> {
        Ok(self.to_header()?.tag())
    }

    /// Every Contact value across all Contact lines.
    pub fn contacts(&self) -> impl Iterator<Item = Result<Contact<'_>, Error>> + '_ {
        self.required_list(HeaderName::Contact, "Contact")
            .map(|e| e.and_then(Contact::parse))
    }

    /// Route values, topmost first. Each must be a name-addr.
    pub fn routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, Error>> + '_ {
        route_set(self, HeaderName::Route, "Route")
    }

    /// Record-Route values, topmost first.
    pub fn record_routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, Error>> + '_ {
        route_set(self, HeaderName::RecordRoute, "Record-Route")
    }

    /// Path values (RFC 3327), topmost first.
    pub fn paths(&self) -> impl Iterator<Item = Result<NameAddr<'_>, Error>> + '_ {
        route_set(self, HeaderName::Path, "Path")
    }

    /// Service-Route values (RFC 3608).
    pub fn service_routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, Error>> + '_ {
        route_set(self, HeaderName::ServiceRoute, "Service-Route")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn na(s: &str) -> NameAddr<'_> {
        NameAddr::parse(s.as_bytes(), "To").unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn err(s: &str) -> &'static str {
        match NameAddr::parse(s.as_bytes(), "To") {
            Err(Error::BadHeader(_, why)) => why,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn forms() {
        let a = na(
            "\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
        );
        assert_eq!(
            a.display_name.unwrap().unescaped().as_ref(),
            b"J Rosenberg \\\""
        );
        assert_eq!(a.uri, b"sip:jdrosen@example.com");
        assert!(a.angle);
        assert_eq!(a.tag(), Some("98asjd8"));

        let a = na("sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n");
        assert!(!a.angle);
        assert_eq!(a.display_name, None);
        assert_eq!(a.uri, b"sip:vivekg@chair-dnrc.example.com");
        assert_eq!(a.tag(), Some("1918181833n"));

        let a = na("caller<sip:caller@example.com>;tag=323");
        assert_eq!(a.display_name, Some(DisplayName::Tokens(b"caller")));
        assert_eq!(a.tag(), Some("323"));

        let a = na(
            "token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=\"\u{440}\u{430}\";tag=_token~1'+`*%!-.",
        );
        assert_eq!(
            a.display_name,
            Some(DisplayName::Tokens(b"token1~` token2'+_ token3*%!.-"))
        );
        assert_eq!(a.tag(), Some("_token~1'+`*%!-."));

        let a = na("<sip:a@b>");
        assert_eq!(a.display_name, None);
        let a = na("A. Bell <sip:a.g.bell@example.com>;tag=qweoiqpe");
        assert_eq!(a.display_name.unwrap().to_string_lossy(), "A. Bell");
        let a = na("isbn:2983792873");
        assert_eq!(a.parsed_uri().unwrap().scheme(), "isbn");
        let a = na("\"BEL:\\\x07 NUL:\\\0 DEL:\\\x7f\" <sip:x@example.com>");
        assert_eq!(
            a.display_name.unwrap().unescaped().as_ref(),
            b"BEL:\x07 NUL:\0 DEL:\x7f"
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            err("\"Mr. J. User <sip:j.user@example.com>"),
            "unterminated quoted string"
        );
        assert_eq!(
            err("Bell, Alexander <sip:a.g.bell@example.com>;tag=43"),
            "URI with ? or , must be enclosed in <>"
        );
        assert_eq!(err("Bell Alexander;tag=43"), "bad URI");
        assert_eq!(
            err("\"Watson, Thomas\" < sip:t.watson@example.org >"),
            "white space or < inside <>"
        );
        assert_eq!(
            err("sip:user@example.com?Route=%3Csip:sip.example.com%3E"),
            "URI with ? or , must be enclosed in <>"
        );
        assert_eq!(err("<sip:a@b"), "missing >");
        assert_eq!(err("<>"), "missing URI");
        assert_eq!(err(""), "missing URI");
        assert_eq!(err("\"x\" sip:a@b"), "expected < after display name");
        assert_eq!(err("<sip:a@b> junk"), "unexpected characters");
        assert_eq!(
            err("\"Joe\" <sip:joe@example.org>;;;;"),
            "malformed parameter"
        );
        assert_eq!(err("<<<<<<sip:a>"), "white space or < inside <>");
        assert_eq!(err("<sip:a@b>;tag"), "bad tag");
        assert_eq!(err("<sip:a@b>;tag=\"q t\""), "bad tag");
        assert_eq!(err("<sip:a@b>;tag=1;tag=2"), "duplicate tag");
    }

    #[test]
    fn contacts() {
        assert_eq!(Contact::parse(b" * ").unwrap(), Contact::Star);
        let c = match Contact::parse(b"\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n  secondparam ; q = 0.33").unwrap() {
            Contact::Addr(c) => c,
            Contact::Star => panic!(),
        };
        assert_eq!(c.q, Some(QValue(330)));
        let c = match Contact::parse(b"<sip:u@h;ob>;expires=3600;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\";reg-id=1;q=1").unwrap() {
            Contact::Addr(c) => c,
            Contact::Star => panic!(),
        };
        assert_eq!(c.expires, Some(3600));
        assert_eq!(
            c.instance,
            Some(&b"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"[..])
        );
        assert_eq!(c.reg_id, Some(1));
        assert_eq!(c.q, Some(QValue(1000)));
        assert_eq!(
            Contact::parse(b"<sip:user@host129.example.com>\r\n  ;expires=280297596632815"),
            Err(Error::BadHeader("Contact", "bad expires parameter"))
        );
        assert_eq!(
            Contact::parse(b"<sip:a@b>;q=1.5"),
            Err(Error::BadHeader("Contact", "bad q parameter"))
        );
        assert_eq!(
            Contact::parse(b"<sip:a@b>;+sip.instance=x"),
            Err(Error::BadHeader("Contact", "bad +sip.instance parameter"))
        );
    }

    #[test]
    fn qvalues() {
        assert_eq!(QValue::parse(b"0"), Some(QValue(0)));
        assert_eq!(QValue::parse(b"0.5"), Some(QValue(500)));
        assert_eq!(QValue::parse(b"0.123"), Some(QValue(123)));
        assert_eq!(QValue::parse(b"1.000"), Some(QValue(1000)));
        assert_eq!(QValue::parse(b"1.001"), None);
        assert_eq!(QValue::parse(b"0.1234"), None);
        assert_eq!(QValue::parse(b"2"), None);
        assert_eq!(QValue(500).to_string(), "0.5");
        assert_eq!(QValue(1000).to_string(), "1");
        assert_eq!(QValue(0).to_string(), "0");
        assert_eq!(QValue(125).to_string(), "0.125");
    }

    #[test]
    fn delta() {
        assert_eq!(delta_seconds(b"4294967295"), Some(u32::MAX));
        assert_eq!(delta_seconds(b"4294967296"), None);
        assert_eq!(delta_seconds(b"0003600"), Some(3600));
        assert_eq!(delta_seconds(b""), None);
        assert_eq!(delta_seconds(b"-1"), None);
    }

    #[test]
    fn message_accessors() {
        let m = SipMessage::parse(&b"INVITE sip:a SIP/2.0\r\nRoute: <sip:p1;lr>, <sip:p2;lr>\r\nRoute: <sip:p3>\r\nRecord-Route: <sip:r1;lr>\r\nf: A <sip:a@x>;tag=1\r\nt: <sip:b@y>\r\nm: <sip:a@1.2.3.4>;expires=60, <sip:a@5.6.7.8>\r\nPath: <sip:e1;lr>\r\nl: 0\r\n\r\n"[..]).unwrap();
        let routes: Vec<&[u8]> = m.routes().map(|r| r.unwrap().uri).collect();
        assert_eq!(routes, [&b"sip:p1;lr"[..], b"sip:p2;lr", b"sip:p3"]);
        assert_eq!(m.record_routes().count(), 1);
        assert_eq!(m.paths().next().unwrap().unwrap().uri, b"sip:e1;lr");
        assert_eq!(m.from_tag().unwrap(), Some("1"));
        assert_eq!(m.to_tag().unwrap(), None);
        assert_eq!(m.contacts().count(), 2);
        let bad = SipMessage::parse(&b"INVITE sip:a SIP/2.0\r\nRoute: sip:p1\r\nl: 0\r\n\r\n"[..])
            .unwrap();
        assert_eq!(
            bad.routes().next().unwrap(),
            Err(Error::BadHeader("Route", "route must be in name-addr form"))
        );
        assert_eq!(bad.from_header(), Err(Error::MissingHeader("From")));
    }
}

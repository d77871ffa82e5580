//! Single-valued scalar headers: Call-ID, CSeq, Max-Forwards, Expires, Min-Expires,
//! Content-Type, Timestamp, Retry-After, User-Agent, Server.

use crate::chars::{self, WORD};
use crate::error::Error;
use crate::header_name::HeaderName;
use crate::headers::name_addr::parse_delta_seconds;
use crate::message::SipMessage;
use crate::method::Method;
use crate::params::{Cursor, Params};

/// `CSeq: <seq> <method>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CSeq<'a> {
    /// Sequence number (32 bits, RFC 3261 §8.1.1.5).
    pub seq: u32,
    /// Method.
    pub method: Method<'a>,
}

impl<'a> CSeq<'a> {
    /// Parse a CSeq value.
    pub fn parse(v: &'a [u8]) -> Result<CSeq<'a>, Error> {
        const H: &str = "CSeq";
        let mut c = Cursor::new(v);
        c.skip_lws();
        let start = c.i;
        while c.peek().is_some_and(|b| b.is_ascii_digit()) {
            c.i += 1;
        }
        let digits = &v[start..c.i];
        if digits.is_empty() {
            return Err(Error::BadHeader(H, "missing sequence number"));
        }
        let seq = chars::decimal_u32(digits)
            .ok_or(Error::BadHeader(H, "sequence number out of range"))?;
        if !c.skip_lws() {
            return Err(Error::BadHeader(H, "missing method"));
        }
        let m = c.token();
        let method = Method::parse(m).ok_or(Error::BadHeader(H, "missing method"))?;
        c.skip_lws();
        if !c.at_end() {
            return Err(Error::BadHeader(H, "unexpected characters"));
        }
        Ok(CSeq { seq, method })
    }
}

/// `Timestamp: <time> [<delay>]` (RFC 3261 §20.38), kept as text so a 100 Trying can echo
/// it byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp<'a> {
    /// The time value.
    pub time: &'a str,
    /// The delay value, if any.
    pub delay: Option<&'a str>,
}

fn decimal(s: &[u8]) -> bool {
    // 1*(DIGIT) [ "." *(DIGIT) ]
    let int = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if int == 0 {
        return false;
    }
    match s.get(int) {
        None => true,
        Some(b'.') => s[int + 1..].iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

impl<'a> Timestamp<'a> {
    /// Parse a Timestamp value.
    pub fn parse(v: &'a [u8]) -> Result<Timestamp<'a>, Error> {
        let bad = Error::BadHeader("Timestamp", "not a decimal number");
        let v = chars::trim_lws(v);
        let (t, d) = match v.iter().position(|&b| chars::is_lws(b)) {
            Some(i) => (&v[..i], Some(chars::trim_lws(&v[i..]))),
            None => (v, None),
        };
        if !decimal(t) || d.is_some_and(|d| !decimal(d)) {
            return Err(bad);
        }
        Ok(Timestamp {
            time: chars::ascii(t).ok_or(bad.clone())?,
            delay: d.and_then(chars::ascii),
        })
    }
}

/// `type/subtype;params` (Content-Type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaType<'a> {
    /// Type, e.g. `application`.
    pub mtype: &'a str,
    /// Subtype, e.g. `sdp`.
    pub subtype: &'a str,
    /// Parameters (`boundary`, `charset`, ...).
    pub params: Params<'a>,
}

impl<'a> MediaType<'a> {
    /// Parse a media type.
    pub fn parse(v: &'a [u8]) -> Result<MediaType<'a>, Error> {
        const H: &str = "Content-Type";
        let mut c = Cursor::new(v);
        c.skip_lws();
        let t = c.token();
        if t.is_empty() || !c.eat_sep(b'/') {
            return Err(Error::BadHeader(H, "bad media type"));
        }
        c.skip_lws();
        let s = c.token();
        if s.is_empty() {
            return Err(Error::BadHeader(H, "bad media type"));
        }
        let params = Params::parse(&mut c, H)?;
        c.skip_lws();
        if !c.at_end() {
            return Err(Error::BadHeader(H, "unexpected characters"));
        }
        Ok(MediaType {
            mtype: chars::ascii(t).unwrap_or_default(),
            subtype: chars::ascii(s).unwrap_or_default(),
            params,
        })
    }

    /// `application/sdp`, case-insensitively.
    pub fn is_sdp(&self) -> bool {
        self.mtype.eq_ignore_ascii_case("application") && self.subtype.eq_ignore_ascii_case("sdp")
    }
}

/// Validate `callid = word [ "@" word ]`.
pub(crate) fn check_call_id(v: &[u8]) -> Result<&str, Error> {
    const H: &str = "Call-ID";
    if v.is_empty() {
        return Err(Error::BadHeader(H, "empty"));
    }
    let (a, b) = match memchr::memchr(b'@', v) {
        Some(i) => (&v[..i], Some(&v[i + 1..])),
        None => (v, None),
    };
    let word = |w: &[u8]| !w.is_empty() && w.iter().all(|&c| chars::is(c, WORD));
    if !word(a) || b.is_some_and(|b| !word(b)) {
        return Err(Error::BadHeader(H, "not word[@word]"));
    }
    chars::ascii(v).ok_or(Error::BadHeader(H, "not word[@word]"))
}

impl SipMessage {
    /// The Call-ID: non-empty visible ASCII. [`validate_request`](Self::validate_request)
    /// checks the full `word [ "@" word ]` grammar once; this accessor only guarantees what
    /// keying on it needs, so that transaction matching stays cheap.
    pub fn call_id(&self) -> Result<&str, Error> {
        let v = self
            .header(HeaderName::CallId)
            .ok_or(Error::MissingHeader("Call-ID"))?;
        if v.is_empty() || !chars::is_visible_ascii(v) {
            return Err(Error::BadHeader("Call-ID", "not word[@word]"));
        }
        chars::ascii(v).ok_or(Error::BadHeader("Call-ID", "not word[@word]"))
    }

    /// The CSeq.
    pub fn cseq(&self) -> Result<CSeq<'_>, Error> {
        CSeq::parse(
            self.header(HeaderName::CSeq)
                .ok_or(Error::MissingHeader("CSeq"))?,
        )
    }

    /// Max-Forwards (0–255); `None` when absent (RFC 2543 clients omit it).
    pub fn max_forwards(&self) -> Result<Option<u8>, Error> {
        let Some(v) = self.header(HeaderName::MaxForwards) else {
            return Ok(None);
        };
        let bad = Error::BadHeader("Max-Forwards", "not a number from 0 to 255");
        let n = chars::decimal_u32(v).ok_or(bad.clone())?;
        u8::try_from(n).map(Some).map_err(|_| bad)
    }

    /// Expires (delta-seconds).
    pub fn expires(&self) -> Result<Option<u32>, Error> {
        self.header(HeaderName::Expires)
            .map(|v| parse_delta_seconds(v, "Expires"))
            .transpose()
    }

    /// Min-Expires (delta-seconds).
    pub fn min_expires(&self) -> Result<Option<u32>, Error> {
        self.header(HeaderName::MinExpires)
            .map(|v| parse_delta_seconds(v, "Min-Expires"))
            .transpose()
    }

    /// Retry-After seconds (comment and parameters ignored).
    pub fn retry_after(&self) -> Result<Option<u32>, Error> {
        self.header(HeaderName::RetryAfter)
            .map(|v| {
                let end = v
                    .iter()
                    .position(|&b| !b.is_ascii_digit())
                    .unwrap_or(v.len());
                parse_delta_seconds(&v[..end], "Retry-After")
            })
            .transpose()
    }

    /// Content-Type.
    pub fn content_type(&self) -> Result<Option<MediaType<'_>>, Error> {
        self.header(HeaderName::ContentType)
            .map(MediaType::parse)
            .transpose()
    }

    /// Timestamp.
    pub fn timestamp(&self) -> Result<Option<Timestamp<'_>>, Error> {
        self.header(HeaderName::Timestamp)
            .map(Timestamp::parse)
            .transpose()
    }

    /// User-Agent, as written (product tokens and comments are free text).
    pub fn user_agent(&self) -> Option<&[u8]> {
        self.header(HeaderName::UserAgent)
    }

    /// Server, as written.
    pub fn server(&self) -> Option<&[u8]> {
        self.header(HeaderName::Server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cseq() {
        assert_eq!(
            CSeq::parse(b"0009\r\n  INVITE").unwrap(),
            CSeq {
                seq: 9,
                method: Method::Invite
            }
        );
        assert_eq!(
            CSeq::parse(b"4294967295 FOO").unwrap(),
            CSeq {
                seq: u32::MAX,
                method: Method::Other("FOO")
            }
        );
        assert_eq!(
            CSeq::parse(b"36893488147419103232 REGISTER"),
            Err(Error::BadHeader("CSeq", "sequence number out of range"))
        );
        assert_eq!(
            CSeq::parse(b"4294967296 REGISTER"),
            Err(Error::BadHeader("CSeq", "sequence number out of range"))
        );
        assert_eq!(
            CSeq::parse(b"1INVITE"),
            Err(Error::BadHeader("CSeq", "missing method"))
        );
        assert_eq!(
            CSeq::parse(b"INVITE"),
            Err(Error::BadHeader("CSeq", "missing sequence number"))
        );
        assert_eq!(
            CSeq::parse(b"1 "),
            Err(Error::BadHeader("CSeq", "missing method"))
        );
        assert_eq!(
            CSeq::parse(b"1 INVITE x"),
            Err(Error::BadHeader("CSeq", "unexpected characters"))
        );
    }

    #[test]
    fn call_ids() {
        assert_eq!(
            check_call_id(b"a84b4c76e66710@pc33.atlanta.com"),
            Ok("a84b4c76e66710@pc33.atlanta.com")
        );
        assert!(check_call_id(b"intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{").is_ok());
        assert!(check_call_id(b"a@b@c").is_err());
        assert!(check_call_id(b"a b").is_err());
        assert!(check_call_id(b"").is_err());
        assert!(check_call_id(b"@x").is_err());
        assert!(check_call_id(b"x\xff").is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            Timestamp::parse(b"54").unwrap(),
            Timestamp {
                time: "54",
                delay: None
            }
        );
        assert_eq!(
            Timestamp::parse(b"54.3 0.5").unwrap(),
            Timestamp {
                time: "54.3",
                delay: Some("0.5")
            }
        );
        assert!(Timestamp::parse(b"x").is_err());
        assert!(Timestamp::parse(b"1 2 3").is_err());
    }

    #[test]
    fn media_types() {
        let m = MediaType::parse(b"multipart/mixed;boundary=7a9cbec02ceef655").unwrap();
        assert_eq!((m.mtype, m.subtype), ("multipart", "mixed"));
        assert_eq!(
            m.params.get("boundary").unwrap().unwrap().as_str(),
            Some("7a9cbec02ceef655")
        );
        assert!(MediaType::parse(b"Application/SDP").unwrap().is_sdp());
        assert!(MediaType::parse(b"application").is_err());
        assert!(MediaType::parse(b"a/b c").is_err());
    }

    #[test]
    fn scalars_from_message() {
        let m = SipMessage::parse(&b"REGISTER sip:a SIP/2.0\r\nMax-Forwards: 0068\r\nExpires: 3600\r\nMin-Expires: 60\r\nRetry-After: 18 (busy);duration=10\r\nTimestamp: 1.5\r\nUser-Agent: Foo/1.0 (bar)\r\nServer: S\r\ni: abc@def\r\nCSeq: 7 REGISTER\r\nc: application/sdp\r\nl: 0\r\n\r\n"[..]).unwrap();
        assert_eq!(m.max_forwards(), Ok(Some(68)));
        assert_eq!(m.expires(), Ok(Some(3600)));
        assert_eq!(m.min_expires(), Ok(Some(60)));
        assert_eq!(m.retry_after(), Ok(Some(18)));
        assert_eq!(m.timestamp().unwrap().unwrap().time, "1.5");
        assert_eq!(m.user_agent(), Some(&b"Foo/1.0 (bar)"[..]));
        assert_eq!(m.server(), Some(&b"S"[..]));
        assert_eq!(m.call_id(), Ok("abc@def"));
        assert_eq!(m.cseq().unwrap().seq, 7);
        assert!(m.content_type().unwrap().unwrap().is_sdp());
        let m = SipMessage::parse(&b"OPTIONS sip:a SIP/2.0\r\nMax-Forwards: 300\r\nExpires: 10000000000000000000000\r\nl: 0\r\n\r\n"[..]).unwrap();
        assert_eq!(
            m.max_forwards(),
            Err(Error::BadHeader(
                "Max-Forwards",
                "not a number from 0 to 255"
            ))
        );
        assert_eq!(
            m.expires(),
            Err(Error::BadHeader(
                "Expires",
                "value is not 32-bit delta-seconds"
            ))
        );
        assert_eq!(m.call_id(), Err(Error::MissingHeader("Call-ID")));
        assert_eq!(m.timestamp(), Ok(None));
    }
}

//! Message validation: the checks an edge runs once on every message before acting on it
//! (RFC 3261 §8.2.1–§8.2.2 syntax, §16.3 request validation).
//!
//! Indexing only proves a message can be framed; these checks parse every header a proxy
//! relies on, so that later accessors on a validated message do not fail.

use crate::error::Error;
use crate::header_name::HeaderName;
use crate::headers::auth::Auth;
use crate::headers::name_addr::Contact;
use crate::headers::simple::CSeq;
use crate::message::{SipMessage, StartLineRef};
use crate::method::Method;
use crate::uri::Uri;

/// Header fields that may appear at most once (RFC 3261 §7.3.1, §20).
const SINGLE: &[(HeaderName, &str)] = &[
    (HeaderName::From, "From"),
    (HeaderName::To, "To"),
    (HeaderName::CallId, "Call-ID"),
    (HeaderName::CSeq, "CSeq"),
    (HeaderName::MaxForwards, "Max-Forwards"),
    (HeaderName::ContentType, "Content-Type"),
    (HeaderName::ContentLength, "Content-Length"),
    (HeaderName::Expires, "Expires"),
    (HeaderName::MinExpires, "Min-Expires"),
];

/// What the common checks learnt that the request/response checks use again.
struct Common<'a> {
    cseq: CSeq<'a>,
    contacts: usize,
    star: bool,
}

/// Checks shared by requests and responses (the caller has checked the version).
fn check_common(msg: &SipMessage) -> Result<Common<'_>, Error> {
    for &(name, label) in [
        (HeaderName::Via, "Via"),
        (HeaderName::From, "From"),
        (HeaderName::To, "To"),
        (HeaderName::CallId, "Call-ID"),
        (HeaderName::CSeq, "CSeq"),
    ]
    .iter()
    {
        if msg.header(name).is_none() {
            return Err(Error::MissingHeader(label));
        }
    }
    // One pass over the index counts every single-valued header.
    let mut seen = [0u8; SINGLE.len()];
    for h in msg.head.headers.iter() {
        if let Some(i) = SINGLE.iter().position(|(n, _)| *n == h.name) {
            seen[i] += 1;
            if seen[i] > 1 {
                return Err(Error::DuplicateHeader(SINGLE[i].1));
            }
        }
    }
    for v in msg.via() {
        v?;
    }
    msg.from_header()?.parsed_uri_checked("From")?;
    msg.to_header()?.parsed_uri_checked("To")?;
    crate::headers::simple::check_call_id(msg.header(HeaderName::CallId).unwrap_or_default())?;
    let cseq = msg.cseq()?;
    msg.max_forwards()?;
    msg.expires()?;
    msg.min_expires()?;
    msg.content_type()?;
    let (mut contacts, mut star) = (0, false);
    for c in msg.contacts() {
        match c? {
            Contact::Addr(a) => a.addr.parsed_uri_checked("Contact")?,
            Contact::Star => star = true,
        }
        contacts += 1;
    }
    for r in msg.record_routes() {
        r?.parsed_uri_checked("Record-Route")?;
    }
    Ok(Common {
        cseq,
        contacts,
        star,
    })
}

impl crate::headers::name_addr::NameAddr<'_> {
    fn parsed_uri_checked(&self, header: &'static str) -> Result<(), Error> {
        match Uri::parse_inner(self.uri) {
            Ok(_) => Ok(()),
            Err(why) => Err(Error::BadHeader(header, why)),
        }
    }
}

impl SipMessage {
    /// Validate a received request. On error, [`Error::status`] is the response to send
    /// (400, 416 or 505); ACKs are never answered (RFC 3261 §17.2.3).
    ///
    /// Checks: SIP/2.0; a sip/sips/tel Request-URI without URI headers; Via, From, To,
    /// Call-ID and CSeq present and well-formed; single-valued headers not repeated;
    /// CSeq method equal to the request method; Max-Forwards, Expires and Contact values in
    /// range; Route, Record-Route and Contact addresses well-formed; Require and
    /// Proxy-Require lists and Authorization headers well-formed.
    pub fn validate_request(&self) -> Result<(), Error> {
        let StartLineRef::Request { method, .. } = self.start_line() else {
            return Err(Error::BadRequestLine("not a request"));
        };
        if !self.version().eq_ignore_ascii_case(b"SIP/2.0") {
            return Err(Error::UnsupportedVersion);
        }
        match self.request_uri()? {
            Uri::Sip(u) if u.headers.is_some() => {
                return Err(Error::BadRequestUri("headers are not allowed"));
            }
            Uri::Sip(_) | Uri::Tel(_) => {}
            Uri::Other { .. } => return Err(Error::UnsupportedUriScheme),
        }
        let common = check_common(self)?;
        if common.cseq.method != method {
            return Err(Error::CSeqMethodMismatch);
        }
        // RFC 3261 §10.2.2/§10.3 step 6: `*` removes every binding, so it stands alone, in a
        // REGISTER, with Expires: 0.
        if common.star
            && (common.contacts > 1 || method != Method::Register || self.expires()? != Some(0))
        {
            return Err(Error::BadHeader(
                "Contact",
                "* must be the only Contact, in a REGISTER with Expires: 0",
            ));
        }
        for r in self.routes() {
            r?.parsed_uri_checked("Route")?;
        }
        for r in self.paths() {
            r?.parsed_uri_checked("Path")?;
        }
        for t in self.require().chain(self.proxy_require()) {
            t?;
        }
        for (name, label) in [
            (HeaderName::Authorization, "Authorization"),
            (HeaderName::ProxyAuthorization, "Proxy-Authorization"),
        ] {
            for h in self.headers_of(name) {
                Auth::parse(h.value, label)?;
            }
        }
        Ok(())
    }

    /// Validate a received response: status class 1xx–6xx, SIP/2.0, and the same header
    /// checks as requests. A response that fails is discarded, never answered.
    pub fn validate_response(&self) -> Result<(), Error> {
        match self.status() {
            None => return Err(Error::BadStatusLine("not a response")),
            Some(code) if !(100..=699).contains(&code) => {
                return Err(Error::BadStatusLine("status code out of range"));
            }
            Some(_) => {}
        }
        if !self.version().eq_ignore_ascii_case(b"SIP/2.0") {
            return Err(Error::UnsupportedVersion);
        }
        check_common(self)?;
        for (name, label) in [
            (HeaderName::WwwAuthenticate, "WWW-Authenticate"),
            (HeaderName::ProxyAuthenticate, "Proxy-Authenticate"),
        ] {
            for h in self.headers_of(name) {
                Auth::parse(h.value, label)?;
            }
        }
        Ok(())
    }

    /// The parsed Request-URI. Errors are [`Error::BadRequestUri`].
    pub fn request_uri(&self) -> Result<Uri<'_>, Error> {
        let raw = self
            .request_uri_raw()
            .ok_or(Error::BadRequestUri("not a request"))?;
        Uri::parse_inner(raw).map_err(Error::BadRequestUri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HDRS: &str = "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n";

    fn resp(code: &str) -> SipMessage {
        SipMessage::parse(format!("SIP/2.0 {code} Whatever\r\n{HDRS}").into_bytes()).unwrap()
    }

    #[test]
    fn response_classes() {
        assert!(resp("180").validate_response().is_ok());
        assert!(resp("699").validate_response().is_ok());
        for bad in ["099", "700", "999", "000"] {
            assert_eq!(
                resp(bad).validate_response(),
                Err(Error::BadStatusLine("status code out of range")),
                "{bad}"
            );
        }
        let req =
            SipMessage::parse(format!("INVITE sip:c@d SIP/2.0\r\n{HDRS}").into_bytes()).unwrap();
        assert!(req.validate_request().is_ok());
        assert_eq!(
            req.validate_response(),
            Err(Error::BadStatusLine("not a response"))
        );
        assert_eq!(
            resp("200").validate_request(),
            Err(Error::BadRequestLine("not a request"))
        );
    }

    #[test]
    fn contact_star_rules() {
        let reg = |contacts: &str, expires: &str| {
            let m = format!(
                "REGISTER sip:d SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:c@d>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 2 REGISTER\r\n{contacts}{expires}l: 0\r\n\r\n"
            );
            SipMessage::parse(m.into_bytes())
                .unwrap()
                .validate_request()
        };
        assert_eq!(reg("Contact: *\r\n", "Expires: 0\r\n"), Ok(()));
        assert_eq!(
            reg("Contact: <sip:a@1.2.3.4>\r\n", "Expires: 3600\r\n"),
            Ok(())
        );
        let bad = Err(Error::BadHeader(
            "Contact",
            "* must be the only Contact, in a REGISTER with Expires: 0",
        ));
        assert_eq!(
            reg("Contact: *, <sip:a@1.2.3.4>\r\n", "Expires: 0\r\n"),
            bad
        );
        assert_eq!(
            reg(
                "Contact: *\r\nContact: <sip:a@1.2.3.4>\r\n",
                "Expires: 0\r\n"
            ),
            bad
        );
        assert_eq!(reg("Contact: *\r\n", "Expires: 3600\r\n"), bad);
        assert_eq!(reg("Contact: *\r\n", ""), bad);
        assert_eq!(
            reg("Contact:\r\n", "Expires: 0\r\n"),
            Err(Error::BadHeader("Contact", "empty value"))
        );
    }

    #[test]
    fn empty_via_line_is_invalid() {
        let m = SipMessage::parse(format!("INVITE sip:c@d SIP/2.0\r\nVia:\r\n{HDRS}").into_bytes())
            .unwrap();
        assert_eq!(
            m.validate_request(),
            Err(Error::BadHeader("Via", "empty value"))
        );
        assert_eq!(m.top_via(), Err(Error::BadHeader("Via", "empty value")));
    }

    #[test]
    fn request_uri_rules() {
        let with_uri = |u: &str| {
            SipMessage::parse(format!("INVITE {u} SIP/2.0\r\n{HDRS}").into_bytes())
                .unwrap()
                .validate_request()
        };
        assert_eq!(with_uri("sips:c@d;transport=tls"), Ok(()));
        assert_eq!(with_uri("tel:+15551234567"), Ok(()));
        assert_eq!(with_uri("mailto:c@d"), Err(Error::UnsupportedUriScheme));
        assert_eq!(
            with_uri("sip:c@d?Subject=x"),
            Err(Error::BadRequestUri("headers are not allowed"))
        );
        assert_eq!(
            with_uri("sip:c@[::1"),
            Err(Error::BadRequestUri("unterminated IPv6 reference"))
        );
    }
}

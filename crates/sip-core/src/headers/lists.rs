//! Option-tag and method lists: Require, Proxy-Require, Supported, Unsupported, Allow.

use crate::chars;
use crate::error::Error;
use crate::header_name::HeaderName;
use crate::message::SipMessage;

fn tokens<'a>(
    msg: &'a SipMessage,
    name: HeaderName,
    h: &'static str,
) -> impl Iterator<Item = Result<&'a str, Error>> + 'a {
    msg.header_values(name).map(move |t| {
        if chars::is_token_str(t) {
            chars::ascii(t).ok_or(Error::BadHeader(h, "element is not a token"))
        } else {
            Err(Error::BadHeader(h, "element is not a token"))
        }
    })
}

impl SipMessage {
    /// Require option tags.
    pub fn require(&self) -> impl Iterator<Item = Result<&str, Error>> + '_ {
        tokens(self, HeaderName::Require, "Require")
    }
    /// Proxy-Require option tags.
    pub fn proxy_require(&self) -> impl Iterator<Item = Result<&str, Error>> + '_ {
        tokens(self, HeaderName::ProxyRequire, "Proxy-Require")
    }
    /// Supported option tags.
    pub fn supported(&self) -> impl Iterator<Item = Result<&str, Error>> + '_ {
        tokens(self, HeaderName::Supported, "Supported")
    }
    /// Unsupported option tags.
    pub fn unsupported(&self) -> impl Iterator<Item = Result<&str, Error>> + '_ {
        tokens(self, HeaderName::Unsupported, "Unsupported")
    }
    /// Allow methods.
    pub fn allow(&self) -> impl Iterator<Item = Result<&str, Error>> + '_ {
        tokens(self, HeaderName::Allow, "Allow")
    }
    /// True when `tag` is listed in Supported or Require (option tags are case-sensitive
    /// per RFC 3261 §19.2, but compared case-insensitively here as deployed peers do).
    pub fn supports(&self, tag: &str) -> bool {
        self.supported()
            .chain(self.require())
            .any(|t| t.is_ok_and(|t| t.eq_ignore_ascii_case(tag)))
    }
}

#[cfg(test)]
mod tests {
    use crate::{Error, SipMessage};

    #[test]
    fn lists() {
        let m = SipMessage::parse(&b"OPTIONS sip:a SIP/2.0\r\nRequire: nothingSupportsThis, nothingSupportsThisEither\r\nProxy-Require: noProxiesSupportThis,\r\n norDoAnyProxiesSupportThis\r\nk: path, outbound\r\nSupported:\r\nAllow: INVITE, ACK,BYE\r\nUnsupported: a b\r\nl: 0\r\n\r\n"[..]).unwrap();
        assert_eq!(
            m.require().collect::<Result<Vec<_>, _>>().unwrap(),
            ["nothingSupportsThis", "nothingSupportsThisEither"]
        );
        assert_eq!(
            m.proxy_require().collect::<Result<Vec<_>, _>>().unwrap(),
            ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
        );
        assert_eq!(
            m.supported().collect::<Result<Vec<_>, _>>().unwrap(),
            ["path", "outbound"]
        );
        assert_eq!(
            m.allow().collect::<Result<Vec<_>, _>>().unwrap(),
            ["INVITE", "ACK", "BYE"]
        );
        assert_eq!(
            m.unsupported().next().unwrap(),
            Err(Error::BadHeader("Unsupported", "element is not a token"))
        );
        assert!(m.supports("outbound"));
        assert!(!m.supports("timer"));
    }
}

//! Request methods. Any token is a method (RFC 3261 §7.1); the common ones get variants so
//! that comparisons are one byte.

use crate::chars;

/// A SIP request method. Methods are case-sensitive, so `invite` is [`Method::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method<'a> {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// REGISTER
    Register,
    /// OPTIONS
    Options,
    /// INFO
    Info,
    /// UPDATE
    Update,
    /// PRACK
    Prack,
    /// SUBSCRIBE
    Subscribe,
    /// NOTIFY
    Notify,
    /// REFER
    Refer,
    /// MESSAGE
    Message,
    /// PUBLISH
    Publish,
    /// Any other token; passed through untouched by a proxy.
    Other(&'a str),
}

impl<'a> Method<'a> {
    /// Parse a method token; `None` if `b` is not a token.
    pub fn parse(b: &'a [u8]) -> Option<Method<'a>> {
        if let Some(m) = Self::known(b) {
            return Some(m);
        }
        if chars::is_token_str(b) {
            chars::ascii(b).map(Method::Other)
        } else {
            None
        }
    }

    /// Can this method create a dialog (RFC 3261 §12 INVITE, RFC 6665 SUBSCRIBE and
    /// NOTIFY, RFC 3515 REFER)? Such requests get a Record-Route from a proxy that
    /// wants to stay on the path.
    pub fn creates_dialog(&self) -> bool {
        matches!(
            self,
            Method::Invite | Method::Subscribe | Method::Refer | Method::Notify
        )
    }

    /// The well-known methods, without validating other tokens.
    #[inline]
    pub(crate) fn known(b: &[u8]) -> Option<Method<'static>> {
        Some(match b {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"REGISTER" => Method::Register,
            b"OPTIONS" => Method::Options,
            b"INFO" => Method::Info,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"PUBLISH" => Method::Publish,
            _ => return None,
        })
    }

    /// The method token.
    pub fn as_str(&self) -> &'a str {
        match *self {
            Method::Other(s) => s,
            _ => self.known_name().unwrap_or_default(),
        }
    }

    /// The token of a method this crate knows, as a `'static` string (so keys and labels
    /// built from it need no allocation); `None` for [`Method::Other`].
    pub fn known_name(&self) -> Option<&'static str> {
        Some(match *self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Register => "REGISTER",
            Method::Options => "OPTIONS",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(_) => return None,
        })
    }
}

impl std::fmt::Display for Method<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods() {
        assert_eq!(Method::parse(b"INVITE"), Some(Method::Invite));
        assert_eq!(Method::parse(b"invite"), Some(Method::Other("invite")));
        assert_eq!(
            Method::parse(b"RE%47IST%45R"),
            Some(Method::Other("RE%47IST%45R"))
        );
        assert_eq!(
            Method::parse(b"!interesting-Method0123456789_*+`.%indeed'~").map(|m| m.as_str()),
            Some("!interesting-Method0123456789_*+`.%indeed'~")
        );
        assert_eq!(Method::parse(b"IN VITE"), None);
        assert_eq!(Method::parse(b""), None);
        assert_eq!(Method::parse(b"A/B"), None);
        assert_eq!(Method::Register.to_string(), "REGISTER");
    }
}

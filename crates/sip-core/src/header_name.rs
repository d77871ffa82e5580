//! Header field names: the ones a proxy acts on get a variant, everything else is `Other`.
//!
//! Names are classified once while indexing, so typed lookups compare one byte per header
//! instead of case-folding strings.

macro_rules! header_names {
    ($( $variant:ident => $canonical:literal $(, compact $compact:literal)? $(, list $list:literal)? ;)*) => {
        /// A header field name, case-insensitively classified; compact forms map to their
        /// full name (RFC 3261 §7.3.3).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum HeaderName {
            $(
                #[doc = concat!("`", $canonical, "`")]
                $variant,
            )*
            /// Any other header; compare the raw name.
            Other,
        }

        impl HeaderName {
            /// Every named variant (not `Other`).
            pub const ALL: &'static [HeaderName] = &[$(HeaderName::$variant,)*];

            /// Canonical spelling, used when the crate writes this header.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( HeaderName::$variant => $canonical, )*
                    HeaderName::Other => "",
                }
            }

            /// The one-letter compact form, if the header has one.
            pub fn compact(self) -> Option<u8> {
                match self {
                    $( $( HeaderName::$variant => Some($compact), )? )*
                    _ => None,
                }
            }

            /// Several values may share one header line, separated by commas
            /// (RFC 3261 §7.3.1). Authorization-style and free-text headers are not lists.
            pub fn is_list(self) -> bool {
                match self {
                    $( $( HeaderName::$variant => $list, )? )*
                    _ => false,
                }
            }

        }
    };
}

header_names! {
    Via => "Via", compact b'v', list true;
    From => "From", compact b'f';
    To => "To", compact b't';
    CallId => "Call-ID", compact b'i';
    CSeq => "CSeq";
    MaxForwards => "Max-Forwards";
    Route => "Route", list true;
    RecordRoute => "Record-Route", list true;
    Path => "Path", list true;
    ServiceRoute => "Service-Route", list true;
    Contact => "Contact", compact b'm', list true;
    Expires => "Expires";
    MinExpires => "Min-Expires";
    ContentLength => "Content-Length", compact b'l';
    ContentType => "Content-Type", compact b'c';
    ContentEncoding => "Content-Encoding", compact b'e', list true;
    ContentDisposition => "Content-Disposition";
    Authorization => "Authorization";
    ProxyAuthorization => "Proxy-Authorization";
    WwwAuthenticate => "WWW-Authenticate";
    ProxyAuthenticate => "Proxy-Authenticate";
    AuthenticationInfo => "Authentication-Info";
    Require => "Require", list true;
    ProxyRequire => "Proxy-Require", list true;
    Supported => "Supported", compact b'k', list true;
    Unsupported => "Unsupported", list true;
    Allow => "Allow", list true;
    Accept => "Accept", list true;
    Timestamp => "Timestamp";
    UserAgent => "User-Agent";
    Server => "Server";
    Subject => "Subject", compact b's';
    ReferTo => "Refer-To", compact b'r';
    ReferredBy => "Referred-By", compact b'b';
    Event => "Event", compact b'o';
    AllowEvents => "Allow-Events", compact b'u', list true;
    SessionExpires => "Session-Expires", compact b'x';
    Identity => "Identity", compact b'y';
    RetryAfter => "Retry-After";
    Date => "Date";
    Warning => "Warning", list true;
    Reason => "Reason", list true;
    RSeq => "RSeq";
    RAck => "RAck";
    PAssertedIdentity => "P-Asserted-Identity", list true;
    AcceptContact => "Accept-Contact", compact b'a', list true;
    RejectContact => "Reject-Contact", compact b'j', list true;
    RequestDisposition => "Request-Disposition", compact b'd', list true;
}

/// `name` equals the lower-case `lower` ignoring ASCII case. Setting bit 5 lower-cases
/// letters; among bytes that can precede the colon (no CR/LF), only letters map onto
/// letters and only `-` onto `-`, so this is exact for header names.
#[inline(always)]
fn eq_lower(name: &[u8], lower: &[u8]) -> bool {
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    // Two overlapping loads cover any length between one and two words, so a 2–24 byte
    // name costs two or three compares and no loop.
    #[inline(always)]
    fn w2(s: &[u8], i: usize) -> u16 {
        let mut b = [0u8; 2];
        b.copy_from_slice(&s[i..i + 2]);
        u16::from_le_bytes(b)
    }
    #[inline(always)]
    fn w4(s: &[u8], i: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&s[i..i + 4]);
        u32::from_le_bytes(b)
    }
    #[inline(always)]
    fn w8(s: &[u8], i: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&s[i..i + 8]);
        u64::from_le_bytes(b)
    }
    const L2: u16 = 0x2020;
    const L4: u32 = 0x2020_2020;
    const L8: u64 = 0x2020_2020_2020_2020;
    match n {
        0 => true,
        1 => name[0] | 0x20 == lower[0],
        2..=3 => w2(name, 0) | L2 == w2(lower, 0) && w2(name, n - 2) | L2 == w2(lower, n - 2),
        4..=7 => w4(name, 0) | L4 == w4(lower, 0) && w4(name, n - 4) | L4 == w4(lower, n - 4),
        8..=16 => w8(name, 0) | L8 == w8(lower, 0) && w8(name, n - 8) | L8 == w8(lower, n - 8),
        17..=24 => {
            w8(name, 0) | L8 == w8(lower, 0)
                && w8(name, 8) | L8 == w8(lower, 8)
                && w8(name, n - 8) | L8 == w8(lower, n - 8)
        }
        _ => name.iter().zip(lower).all(|(a, b)| (a | 0x20) == *b),
    }
}

impl HeaderName {
    // Dispatch on (length, first letter) so that a header costs one compare at most;
    // generated from the table above.
    fn from_full(name: &[u8]) -> HeaderName {
        let first = match name.first() {
            Some(b) => b | 0x20,
            None => return HeaderName::Other,
        };
        match (name.len(), first) {
            (2, b't') => {
                if eq_lower(name, b"to") {
                    HeaderName::To
                } else {
                    HeaderName::Other
                }
            }
            (3, b'v') => {
                if eq_lower(name, b"via") {
                    HeaderName::Via
                } else {
                    HeaderName::Other
                }
            }
            (4, b'c') => {
                if eq_lower(name, b"cseq") {
                    HeaderName::CSeq
                } else {
                    HeaderName::Other
                }
            }
            (4, b'd') => {
                if eq_lower(name, b"date") {
                    HeaderName::Date
                } else {
                    HeaderName::Other
                }
            }
            (4, b'f') => {
                if eq_lower(name, b"from") {
                    HeaderName::From
                } else {
                    HeaderName::Other
                }
            }
            (4, b'p') => {
                if eq_lower(name, b"path") {
                    HeaderName::Path
                } else {
                    HeaderName::Other
                }
            }
            (4, b'r') => {
                if eq_lower(name, b"rseq") {
                    HeaderName::RSeq
                } else if eq_lower(name, b"rack") {
                    HeaderName::RAck
                } else {
                    HeaderName::Other
                }
            }
            (5, b'a') => {
                if eq_lower(name, b"allow") {
                    HeaderName::Allow
                } else {
                    HeaderName::Other
                }
            }
            (5, b'e') => {
                if eq_lower(name, b"event") {
                    HeaderName::Event
                } else {
                    HeaderName::Other
                }
            }
            (5, b'r') => {
                if eq_lower(name, b"route") {
                    HeaderName::Route
                } else {
                    HeaderName::Other
                }
            }
            (6, b'a') => {
                if eq_lower(name, b"accept") {
                    HeaderName::Accept
                } else {
                    HeaderName::Other
                }
            }
            (6, b'r') => {
                if eq_lower(name, b"reason") {
                    HeaderName::Reason
                } else {
                    HeaderName::Other
                }
            }
            (6, b's') => {
                if eq_lower(name, b"server") {
                    HeaderName::Server
                } else {
                    HeaderName::Other
                }
            }
            (7, b'c') => {
                if eq_lower(name, b"call-id") {
                    HeaderName::CallId
                } else if eq_lower(name, b"contact") {
                    HeaderName::Contact
                } else {
                    HeaderName::Other
                }
            }
            (7, b'e') => {
                if eq_lower(name, b"expires") {
                    HeaderName::Expires
                } else {
                    HeaderName::Other
                }
            }
            (7, b'r') => {
                if eq_lower(name, b"require") {
                    HeaderName::Require
                } else {
                    HeaderName::Other
                }
            }
            (7, b's') => {
                if eq_lower(name, b"subject") {
                    HeaderName::Subject
                } else {
                    HeaderName::Other
                }
            }
            (7, b'w') => {
                if eq_lower(name, b"warning") {
                    HeaderName::Warning
                } else {
                    HeaderName::Other
                }
            }
            (8, b'i') => {
                if eq_lower(name, b"identity") {
                    HeaderName::Identity
                } else {
                    HeaderName::Other
                }
            }
            (8, b'r') => {
                if eq_lower(name, b"refer-to") {
                    HeaderName::ReferTo
                } else {
                    HeaderName::Other
                }
            }
            (9, b's') => {
                if eq_lower(name, b"supported") {
                    HeaderName::Supported
                } else {
                    HeaderName::Other
                }
            }
            (9, b't') => {
                if eq_lower(name, b"timestamp") {
                    HeaderName::Timestamp
                } else {
                    HeaderName::Other
                }
            }
            (10, b'u') => {
                if eq_lower(name, b"user-agent") {
                    HeaderName::UserAgent
                } else {
                    HeaderName::Other
                }
            }
            (11, b'm') => {
                if eq_lower(name, b"min-expires") {
                    HeaderName::MinExpires
                } else {
                    HeaderName::Other
                }
            }
            (11, b'r') => {
                if eq_lower(name, b"referred-by") {
                    HeaderName::ReferredBy
                } else if eq_lower(name, b"retry-after") {
                    HeaderName::RetryAfter
                } else {
                    HeaderName::Other
                }
            }
            (11, b'u') => {
                if eq_lower(name, b"unsupported") {
                    HeaderName::Unsupported
                } else {
                    HeaderName::Other
                }
            }
            (12, b'a') => {
                if eq_lower(name, b"allow-events") {
                    HeaderName::AllowEvents
                } else {
                    HeaderName::Other
                }
            }
            (12, b'c') => {
                if eq_lower(name, b"content-type") {
                    HeaderName::ContentType
                } else {
                    HeaderName::Other
                }
            }
            (12, b'm') => {
                if eq_lower(name, b"max-forwards") {
                    HeaderName::MaxForwards
                } else {
                    HeaderName::Other
                }
            }
            (12, b'r') => {
                if eq_lower(name, b"record-route") {
                    HeaderName::RecordRoute
                } else {
                    HeaderName::Other
                }
            }
            (13, b'a') => {
                if eq_lower(name, b"authorization") {
                    HeaderName::Authorization
                } else {
                    HeaderName::Other
                }
            }
            (13, b'p') => {
                if eq_lower(name, b"proxy-require") {
                    HeaderName::ProxyRequire
                } else {
                    HeaderName::Other
                }
            }
            (13, b's') => {
                if eq_lower(name, b"service-route") {
                    HeaderName::ServiceRoute
                } else {
                    HeaderName::Other
                }
            }
            (14, b'a') => {
                if eq_lower(name, b"accept-contact") {
                    HeaderName::AcceptContact
                } else {
                    HeaderName::Other
                }
            }
            (14, b'c') => {
                if eq_lower(name, b"content-length") {
                    HeaderName::ContentLength
                } else {
                    HeaderName::Other
                }
            }
            (14, b'r') => {
                if eq_lower(name, b"reject-contact") {
                    HeaderName::RejectContact
                } else {
                    HeaderName::Other
                }
            }
            (15, b's') => {
                if eq_lower(name, b"session-expires") {
                    HeaderName::SessionExpires
                } else {
                    HeaderName::Other
                }
            }
            (16, b'c') => {
                if eq_lower(name, b"content-encoding") {
                    HeaderName::ContentEncoding
                } else {
                    HeaderName::Other
                }
            }
            (16, b'w') => {
                if eq_lower(name, b"www-authenticate") {
                    HeaderName::WwwAuthenticate
                } else {
                    HeaderName::Other
                }
            }
            (18, b'p') => {
                if eq_lower(name, b"proxy-authenticate") {
                    HeaderName::ProxyAuthenticate
                } else {
                    HeaderName::Other
                }
            }
            (19, b'a') => {
                if eq_lower(name, b"authentication-info") {
                    HeaderName::AuthenticationInfo
                } else {
                    HeaderName::Other
                }
            }
            (19, b'c') => {
                if eq_lower(name, b"content-disposition") {
                    HeaderName::ContentDisposition
                } else {
                    HeaderName::Other
                }
            }
            (19, b'p') => {
                if eq_lower(name, b"proxy-authorization") {
                    HeaderName::ProxyAuthorization
                } else if eq_lower(name, b"p-asserted-identity") {
                    HeaderName::PAssertedIdentity
                } else {
                    HeaderName::Other
                }
            }
            (19, b'r') => {
                if eq_lower(name, b"request-disposition") {
                    HeaderName::RequestDisposition
                } else {
                    HeaderName::Other
                }
            }
            _ => HeaderName::Other,
        }
    }

    /// Classify a raw header name (already known to be a token).
    #[inline]
    pub fn from_bytes(name: &[u8]) -> HeaderName {
        if name.len() == 1 {
            return match name[0].to_ascii_lowercase() {
                b'v' => HeaderName::Via,
                b'f' => HeaderName::From,
                b't' => HeaderName::To,
                b'i' => HeaderName::CallId,
                b'm' => HeaderName::Contact,
                b'l' => HeaderName::ContentLength,
                b'c' => HeaderName::ContentType,
                b'e' => HeaderName::ContentEncoding,
                b'k' => HeaderName::Supported,
                b's' => HeaderName::Subject,
                b'r' => HeaderName::ReferTo,
                b'b' => HeaderName::ReferredBy,
                b'o' => HeaderName::Event,
                b'u' => HeaderName::AllowEvents,
                b'x' => HeaderName::SessionExpires,
                b'y' => HeaderName::Identity,
                b'a' => HeaderName::AcceptContact,
                b'j' => HeaderName::RejectContact,
                b'd' => HeaderName::RequestDisposition,
                _ => HeaderName::Other,
            };
        }
        Self::from_full(name)
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderName as H;

    #[test]
    fn lower_compare() {
        assert!(super::eq_lower(b"CaLl-Id", b"call-id"));
        assert!(!super::eq_lower(b"Call-Ix", b"call-id"));
        assert!(!super::eq_lower(b"Xall-Id", b"call-id"));
        assert!(super::eq_lower(
            b"PROXY-AUTHORIZATION",
            b"proxy-authorization"
        ));
        assert!(!super::eq_lower(
            b"PROXY-AUTHORIZATIOX",
            b"proxy-authorization"
        ));
        assert!(!super::eq_lower(
            b"PROXY-XUTHORIZATION",
            b"proxy-authorization"
        ));
        assert!(!super::eq_lower(
            b"PROXY-AUTHXRIZATION",
            b"proxy-authorization"
        ));
        for len in 0..40 {
            let lower: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let upper = lower.to_ascii_uppercase();
            assert!(super::eq_lower(&upper, &lower), "{len}");
            for i in 0..len {
                let mut bad = upper.clone();
                bad[i] = b'0';
                assert!(!super::eq_lower(&bad, &lower), "{len} {i}");
            }
        }
    }

    #[test]
    fn classification() {
        assert_eq!(H::from_bytes(b"MaX-fOrWaRdS"), H::MaxForwards);
        assert_eq!(H::from_bytes(b"via"), H::Via);
        assert_eq!(H::from_bytes(b"V"), H::Via);
        assert_eq!(H::from_bytes(b"i"), H::CallId);
        assert_eq!(H::from_bytes(b"C%6Fntact"), H::Other);
        assert_eq!(H::from_bytes(b"call-id"), H::CallId);
        assert_eq!(H::from_bytes(b"www-authenticate"), H::WwwAuthenticate);
        assert_eq!(H::from_bytes(b"q"), H::Other);
        for (c, h) in [
            (b'i', H::CallId),
            (b'm', H::Contact),
            (b'e', H::ContentEncoding),
            (b'l', H::ContentLength),
            (b'f', H::From),
            (b't', H::To),
            (b'v', H::Via),
            (b's', H::Subject),
            (b'k', H::Supported),
            (b'c', H::ContentType),
            (b'r', H::ReferTo),
            (b'o', H::Event),
            (b'u', H::AllowEvents),
            (b'b', H::ReferredBy),
            (b'x', H::SessionExpires),
            (b'y', H::Identity),
            (b'a', H::AcceptContact),
            (b'j', H::RejectContact),
            (b'd', H::RequestDisposition),
        ] {
            assert_eq!(H::from_bytes(&[c]), h);
            assert_eq!(H::from_bytes(&[c.to_ascii_uppercase()]), h);
            assert_eq!(h.compact(), Some(c));
            assert_eq!(H::from_bytes(h.as_str().as_bytes()), h);
        }
        for &h in H::ALL {
            assert_eq!(H::from_bytes(h.as_str().as_bytes()), h, "{}", h.as_str());
            assert_eq!(H::from_bytes(h.as_str().to_ascii_uppercase().as_bytes()), h);
            assert_eq!(H::from_bytes(h.as_str().to_ascii_lowercase().as_bytes()), h);
        }
        assert!(H::Via.is_list());
        assert!(!H::Authorization.is_list());
        assert!(!H::From.is_list());
    }
}

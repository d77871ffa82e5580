//! Authorization, Proxy-Authorization, WWW-Authenticate, Proxy-Authenticate
//! (RFC 3261 §20.7/§20.27/§20.28/§20.44, RFC 7616, RFC 8760).
//!
//! One header line carries one credentials or challenge: these headers are the exception
//! to comma-joining (§7.3.1), because their parameters are comma-separated.

use crate::chars;
use crate::error::Error;
use crate::header_name::HeaderName;
use crate::message::SipMessage;
use crate::params::{Cursor, ParamValue};

/// Credentials or a challenge: `scheme param=value, param="value", ...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth<'a> {
    /// The whole value as written.
    pub raw: &'a [u8],
    /// Auth scheme (`Digest`, compare case-insensitively).
    pub scheme: &'a str,
    params: &'a [u8],
    token68: Option<&'a str>,
}

/// `token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_token68(s: &[u8]) -> bool {
    let body = s
        .iter()
        .take_while(|&&b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
        .count();
    body > 0 && s[body..].iter().all(|&b| b == b'=')
}

/// One `name=value` auth parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthParam<'a> {
    /// Name (compare case-insensitively).
    pub name: &'a str,
    /// Value (token or quoted string).
    pub value: ParamValue<'a>,
}

fn auth_param_at<'a>(c: &mut Cursor<'a>) -> Option<AuthParam<'a>> {
    c.skip_lws();
    let name = chars::ascii(c.token())?;
    if name.is_empty() || !c.eat_sep(b'=') {
        return None;
    }
    c.skip_lws();
    let value = if c.peek() == Some(b'"') {
        ParamValue::new(c.quoted()?, true)
    } else {
        let t = c.token();
        if t.is_empty() {
            return None;
        }
        ParamValue::new(t, false)
    };
    Some(AuthParam { name, value })
}

impl<'a> Auth<'a> {
    /// Parse a credentials/challenge value; `header` names the header in errors.
    pub fn parse(v: &'a [u8], header: &'static str) -> Result<Auth<'a>, Error> {
        let mut c = Cursor::new(v);
        c.skip_lws();
        let scheme = c.token();
        if scheme.is_empty() {
            return Err(Error::BadHeader(header, "missing auth scheme"));
        }
        let had_lws = c.skip_lws();
        let params_start = c.i;
        let rest = chars::trim_lws(c.rest());
        // Digest credentials are always parameter lists (RFC 7616), so `Digest realm` stays
        // an error instead of reading as a token.
        if had_lws && !scheme.eq_ignore_ascii_case(b"Digest") && is_token68(rest) {
            // `Bearer <token>` (RFC 8898), `Basic <base64>`: one opaque token, no parameters.
            return Ok(Auth {
                raw: v,
                scheme: chars::ascii(scheme).unwrap_or_default(),
                params: &[],
                token68: chars::ascii(rest),
            });
        }
        if !c.at_end() {
            if !had_lws {
                return Err(Error::BadHeader(header, "bad auth scheme"));
            }
            loop {
                if auth_param_at(&mut c).is_none() {
                    return Err(Error::BadHeader(header, "malformed auth parameter"));
                }
                c.skip_lws();
                if c.at_end() {
                    break;
                }
                if !c.eat(b',') {
                    return Err(Error::BadHeader(
                        header,
                        "expected , between auth parameters",
                    ));
                }
            }
        }
        Ok(Auth {
            raw: v,
            scheme: chars::ascii(scheme).unwrap_or_default(),
            params: &v[params_start..],
            token68: None,
        })
    }

    /// The token of a token68 credential (`Bearer <token>`, RFC 8898); `None` for
    /// parameter lists such as Digest.
    pub fn token68(&self) -> Option<&'a str> {
        self.token68
    }

    /// True for the Digest scheme.
    pub fn is_digest(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("Digest")
    }

    /// Iterate the parameters in order.
    pub fn params(&self) -> impl Iterator<Item = AuthParam<'a>> + 'a {
        let mut c = Cursor::new(self.params);
        let mut first = true;
        std::iter::from_fn(move || {
            if !first && !c.eat_sep(b',') {
                return None;
            }
            first = false;
            auth_param_at(&mut c)
        })
    }

    /// The first parameter named `name` (case-insensitive).
    pub fn param(&self, name: &str) -> Option<ParamValue<'a>> {
        self.params()
            .find(|p| p.name.eq_ignore_ascii_case(name))
            .map(|p| p.value)
    }

    fn text(&self, name: &str) -> Option<&'a str> {
        self.param(name).and_then(|v| v.as_str())
    }

    /// `username` (quoted; escapes kept).
    pub fn username(&self) -> Option<&'a str> {
        self.text("username")
    }
    /// `realm`.
    pub fn realm(&self) -> Option<&'a str> {
        self.text("realm")
    }
    /// `nonce`.
    pub fn nonce(&self) -> Option<&'a str> {
        self.text("nonce")
    }
    /// `uri` (digest-uri).
    pub fn uri(&self) -> Option<&'a str> {
        self.text("uri")
    }
    /// `response`.
    pub fn response(&self) -> Option<&'a str> {
        self.text("response")
    }
    /// `algorithm` (`MD5`, `SHA-256`, `MD5-sess`, ...); absent means MD5.
    pub fn algorithm(&self) -> Option<&'a str> {
        self.text("algorithm")
    }
    /// `cnonce`.
    pub fn cnonce(&self) -> Option<&'a str> {
        self.text("cnonce")
    }
    /// `opaque`.
    pub fn opaque(&self) -> Option<&'a str> {
        self.text("opaque")
    }
    /// `qop`: a single value in credentials, a comma list inside quotes in challenges.
    pub fn qop(&self) -> Option<&'a str> {
        self.text("qop")
    }
    /// `nc` (8 hex digits).
    pub fn nc(&self) -> Option<&'a str> {
        self.text("nc")
    }
    /// `stale=true` in a challenge.
    pub fn stale(&self) -> bool {
        self.text("stale")
            .is_some_and(|s| s.eq_ignore_ascii_case("true"))
    }
    /// `userhash=true` (RFC 7616).
    pub fn userhash(&self) -> bool {
        self.text("userhash")
            .is_some_and(|s| s.eq_ignore_ascii_case("true"))
    }
}

fn auth_headers<'a>(
    msg: &'a SipMessage,
    name: HeaderName,
    h: &'static str,
) -> impl Iterator<Item = Result<Auth<'a>, Error>> + 'a {
    msg.headers_of(name).map(move |x| Auth::parse(x.value, h))
}

impl SipMessage {
    /// Authorization headers (one per realm).
    pub fn authorizations(&self) -> impl Iterator<Item = Result<Auth<'_>, Error>> + '_ {
        auth_headers(self, HeaderName::Authorization, "Authorization")
    }
    /// Proxy-Authorization headers.
    pub fn proxy_authorizations(&self) -> impl Iterator<Item = Result<Auth<'_>, Error>> + '_ {
        auth_headers(self, HeaderName::ProxyAuthorization, "Proxy-Authorization")
    }
    /// WWW-Authenticate challenges.
    pub fn www_authenticates(&self) -> impl Iterator<Item = Result<Auth<'_>, Error>> + '_ {
        auth_headers(self, HeaderName::WwwAuthenticate, "WWW-Authenticate")
    }
    /// Proxy-Authenticate challenges.
    pub fn proxy_authenticates(&self) -> impl Iterator<Item = Result<Auth<'_>, Error>> + '_ {
        auth_headers(self, HeaderName::ProxyAuthenticate, "Proxy-Authenticate")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_credentials() {
        let a = Auth::parse(
            b"Digest username=\"bob\",realm=\"biloxi.com\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\",\r\n uri=\"sip:bob@biloxi.com\", qop=auth, nc=00000001, cnonce=\"0a4f113b\", response=\"6629fae49393a05397450978507c4ef1\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\", algorithm=SHA-256",
            "Authorization",
        )
        .unwrap();
        assert!(a.is_digest());
        assert_eq!(a.username(), Some("bob"));
        assert_eq!(a.realm(), Some("biloxi.com"));
        assert_eq!(a.nonce(), Some("dcd98b7102dd2f0e8b11d0f600bfb0c093"));
        assert_eq!(a.uri(), Some("sip:bob@biloxi.com"));
        assert_eq!(a.qop(), Some("auth"));
        assert_eq!(a.nc(), Some("00000001"));
        assert_eq!(a.cnonce(), Some("0a4f113b"));
        assert_eq!(a.response(), Some("6629fae49393a05397450978507c4ef1"));
        assert_eq!(a.opaque(), Some("5ccc069c403ebaf9f0171e9517f40e41"));
        assert_eq!(a.algorithm(), Some("SHA-256"));
        assert_eq!(a.params().count(), 10);
    }

    #[test]
    fn challenge() {
        let c = Auth::parse(b"Digest realm=\"atlanta.com\", qop=\"auth,auth-int\", nonce=\"84f1\", stale=TRUE, algorithm=MD5", "WWW-Authenticate").unwrap();
        assert_eq!(c.qop(), Some("auth,auth-int"));
        assert!(c.stale());
        assert!(!c.userhash());
        let other = Auth::parse(b"NoOneKnowsThisScheme opaque-data=here", "Authorization").unwrap();
        assert_eq!(other.scheme, "NoOneKnowsThisScheme");
        assert!(!other.is_digest());
        assert_eq!(other.param("opaque-data").unwrap().as_str(), Some("here"));
        assert_eq!(
            Auth::parse(b"Basic", "Authorization")
                .unwrap()
                .params()
                .count(),
            0
        );
    }

    #[test]
    fn token68_credentials() {
        let b = Auth::parse(b"Bearer eyJhbGciOi.JSUzI1NiJ9-_x/y+z==", "Authorization").unwrap();
        assert_eq!(
            (b.scheme, b.token68()),
            ("Bearer", Some("eyJhbGciOi.JSUzI1NiJ9-_x/y+z=="))
        );
        assert_eq!(b.params().count(), 0);
        let basic = Auth::parse(b"Basic dXNlcjpwYXNzd29yZA==", "Authorization").unwrap();
        assert_eq!(basic.token68(), Some("dXNlcjpwYXNzd29yZA=="));
        // `a=b` is a parameter, not a token68 ending in `=`.
        let p = Auth::parse(b"Digest realm=x", "Authorization").unwrap();
        assert_eq!((p.token68(), p.realm()), (None, Some("x")));
    }

    #[test]
    fn bad() {
        for (v, why) in [
            ("", "missing auth scheme"),
            ("Digest realm", "malformed auth parameter"),
            ("Digest realm=", "malformed auth parameter"),
            ("Digest realm=\"x", "malformed auth parameter"),
            (
                "Digest realm=a nonce=b",
                "expected , between auth parameters",
            ),
            ("Digest realm=a,", "malformed auth parameter"),
            ("Digest,realm=a", "bad auth scheme"),
        ] {
            assert_eq!(
                Auth::parse(v.as_bytes(), "Authorization"),
                Err(Error::BadHeader("Authorization", why)),
                "{v}"
            );
        }
    }
}

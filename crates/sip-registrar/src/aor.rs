//! Addresses-of-record: the key every binding is stored under.

use std::fmt;

use sip_core::{Host, SipUri, TelUri, Uri, unescape_percent};

use crate::error::RegisterError;

/// A canonical address-of-record, derived from the To URI of a REGISTER.
///
/// Two To URIs that name the same AOR give the same `Aor`, so it can key a map or a Redis
/// hash directly:
///
/// * `sip:user@host` / `sips:user@host`: the scheme is kept (a `sips:` AOR is a different
///   AOR, RFC 3261 §19.1.4); port, password, URI parameters and headers are dropped
///   (§10.3 step 5); the host is lower-cased (IPv6 written in its canonical compressed
///   form); the user part stays case-sensitive and its escapes are normalised: each `%HH`
///   is decoded, and only the bytes that may not appear literally in a user part are
///   escaped again (as upper-case `%HH`). So `sip:%61lice@Example.COM:5060;transport=tcp`
///   is `sip:alice@example.com`, while `sip:a%40b@x` stays a valid URI with one user `a@b`.
/// * `tel:`: a global number as `tel:+` followed by its digits, visual separators
///   (`-` `.` `(` `)`) removed and hex digits lower-cased (RFC 3966 §4); a local number
///   keeps its `phone-context` (`tel:1234;phone-context=example.com`), without which it
///   names nothing (RFC 3966 §5.1.5).
///
/// The canonical text parses back to the same `Aor` ([`Aor::parse`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Aor(String);

impl Aor {
    /// The AOR named by a To URI. Schemes other than sip/sips/tel are
    /// [`RegisterError::UnsupportedScheme`] (the edge answers 416).
    pub fn from_uri(uri: &Uri<'_>) -> Result<Aor, RegisterError> {
        match uri {
            Uri::Sip(u) => Ok(Aor(canonical_sip(u))),
            Uri::Tel(t) => canonical_tel(t).map(Aor),
            Uri::Other { scheme, .. } => Err(RegisterError::UnsupportedScheme((*scheme).into())),
        }
    }

    /// Parse URI text (no `<>`) and canonicalise it, as [`from_uri`](Self::from_uri).
    pub fn parse(text: &str) -> Result<Aor, RegisterError> {
        let uri = Uri::parse(text.as_bytes())?;
        Aor::from_uri(&uri)
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Aor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Aor {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Bytes a SIP user part may carry unescaped: `unreserved / user-unreserved`
/// (RFC 3261 §25.1).
fn user_literal(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'_'
                | b'.'
                | b'!'
                | b'~'
                | b'*'
                | b'\''
                | b'('
                | b')'
                | b'&'
                | b'='
                | b'+'
                | b'$'
                | b','
                | b';'
                | b'?'
                | b'/'
        )
}

fn push_host(out: &mut String, host: &Host<'_>) {
    match host {
        Host::Domain(d) => out.extend(d.chars().map(|c| c.to_ascii_lowercase())),
        // Display writes the canonical form of the address, brackets included for IPv6.
        ip => out.push_str(&ip.to_string()),
    }
}

fn canonical_sip(u: &SipUri<'_>) -> String {
    let mut out = String::with_capacity(u.raw.len());
    out.push_str(if u.secure { "sips:" } else { "sip:" });
    if let Some(user) = u.user {
        // Decode every escape, then escape again exactly the bytes that need it: `%61` and
        // `a` become the same key, and the key is still a URI a later parse accepts.
        for &b in unescape_percent(user.as_bytes()).iter() {
            if user_literal(b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out.push('@');
    }
    push_host(&mut out, &u.host);
    out
}

/// The digits of a telephone number without visual separators, lower-cased.
pub(crate) fn tel_digits(number: &str) -> String {
    number
        .chars()
        .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn canonical_tel(t: &TelUri<'_>) -> Result<String, RegisterError> {
    let digits = tel_digits(t.number);
    if t.is_global() {
        if digits.len() < 2 {
            return Err(RegisterError::InvalidAor("tel: number without digits"));
        }
        return Ok(format!("tel:{digits}"));
    }
    if digits.is_empty() {
        return Err(RegisterError::InvalidAor("tel: number without digits"));
    }
    // A local number is only unique within its context (RFC 3966 §5.1.5).
    match t.params.get("phone-context").flatten() {
        Some(ctx) => {
            let ctx = if ctx.starts_with('+') {
                tel_digits(ctx)
            } else {
                ctx.to_ascii_lowercase()
            };
            Ok(format!("tel:{digits};phone-context={ctx}"))
        }
        None => Err(RegisterError::InvalidAor(
            "local tel: number without phone-context",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aor(s: &str) -> String {
        Aor::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .as_str()
            .to_owned()
    }

    #[test]
    fn sip_aors() {
        assert_eq!(aor("sip:alice@example.com"), "sip:alice@example.com");
        assert_eq!(
            aor("sip:%61lice@Example.COM:5070;transport=tcp?subject=x"),
            "sip:alice@example.com"
        );
        assert_eq!(aor("SIP:alice:secret@example.com"), "sip:alice@example.com");
        // The user part is case-sensitive; sips is another AOR.
        assert_eq!(aor("sip:Alice@example.com"), "sip:Alice@example.com");
        assert_eq!(aor("sips:alice@example.com"), "sips:alice@example.com");
        assert_ne!(aor("sips:alice@example.com"), aor("sip:alice@example.com"));
        // Escapes that must stay escapes are normalised to upper case.
        assert_eq!(aor("sip:a%40b@x"), "sip:a%40b@x");
        assert_eq!(aor("sip:a%3cb@x"), "sip:a%3Cb@x");
        assert_eq!(aor("sip:a%2fb%20c@x"), "sip:a/b%20c@x");
        assert_eq!(aor("sip:a%2Fb%20c@x"), aor("sip:a/b%20c@x"));
        assert_eq!(aor("sip:+12125551212@x;user=phone"), "sip:+12125551212@x");
        assert_eq!(aor("sip:example.com"), "sip:example.com");
        assert_eq!(aor("sip:bob@192.0.2.1:5060"), "sip:bob@192.0.2.1");
        assert_eq!(
            aor("sip:bob@[2001:DB8:0:0::1]:5060"),
            "sip:bob@[2001:db8::1]"
        );
    }

    #[test]
    fn canonical_text_parses_back_to_itself() {
        for s in [
            "sip:%61lice@Example.COM:5060",
            "sip:a%40b%25c%00@x",
            "sips:b@[::1]",
            "tel:+1-201-555-0123",
            "tel:12.34;phone-context=Example.COM",
        ] {
            let once = aor(s);
            assert_eq!(aor(&once), once, "{s}");
        }
    }

    #[test]
    fn tel_aors() {
        assert_eq!(aor("tel:+1-201-555-0123"), "tel:+12015550123");
        assert_eq!(aor("tel:+1(201)555.0123;ext=1"), "tel:+12015550123");
        assert_eq!(
            aor("tel:7042;phone-context=Example.COM"),
            "tel:7042;phone-context=example.com"
        );
        assert_eq!(
            aor("tel:863-1234;phone-context=+1-914-555"),
            "tel:8631234;phone-context=+1914555"
        );
        assert_eq!(
            Aor::parse("tel:1234"),
            Err(RegisterError::InvalidAor(
                "local tel: number without phone-context"
            ))
        );
        assert!(matches!(
            Aor::parse("tel:+"),
            Err(RegisterError::InvalidAor(_))
        ));
    }

    #[test]
    fn other_schemes_are_416() {
        let e = Aor::parse("mailto:alice@example.com").unwrap_err();
        assert_eq!(e, RegisterError::UnsupportedScheme("mailto".into()));
        assert_eq!(e.status(), 416);
        assert_eq!(Aor::parse("sip:").unwrap_err().status(), 400);
    }
}

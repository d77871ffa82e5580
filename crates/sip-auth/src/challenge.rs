//! Challenges: the `WWW-Authenticate` (401, registrar) and `Proxy-Authenticate` (407,
//! proxy) header values.

use crate::algorithm::Algorithm;
use crate::nonce::NonceKey;

/// Who challenges: the registrar/UAS (401) or a proxy (407), RFC 3261 §22.2/§22.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChallengeKind {
    /// Registrar or UAS: `401 Unauthorized`, `WWW-Authenticate`, answered in `Authorization`.
    Www,
    /// Proxy: `407 Proxy Authentication Required`, `Proxy-Authenticate`, answered in
    /// `Proxy-Authorization`.
    Proxy,
}

impl ChallengeKind {
    /// The response code that carries the challenge.
    pub fn status(self) -> u16 {
        match self {
            ChallengeKind::Www => 401,
            ChallengeKind::Proxy => 407,
        }
    }

    /// The header that carries the challenge.
    pub fn challenge_header(self) -> &'static str {
        match self {
            ChallengeKind::Www => "WWW-Authenticate",
            ChallengeKind::Proxy => "Proxy-Authenticate",
        }
    }

    /// The header in which the client answers.
    pub fn credentials_header(self) -> &'static str {
        match self {
            ChallengeKind::Www => "Authorization",
            ChallengeKind::Proxy => "Proxy-Authorization",
        }
    }
}

/// One digest challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge<'a> {
    /// Protection space; for SIP, the domain the user belongs to.
    pub realm: &'a str,
    /// From [`NonceKey::issue`].
    pub nonce: &'a str,
    /// Algorithm the client must use to answer this challenge.
    pub algorithm: Algorithm,
    /// The previous answer was right but its nonce had expired (RFC 7616 §3.3).
    pub stale: bool,
    /// Opaque string the client echoes back; not needed by stateless nonces.
    pub opaque: Option<&'a str>,
}

impl Challenge<'_> {
    /// The header value: `Digest realm="...", nonce="...", algorithm=..., qop="auth"`,
    /// then `stale=true` and `opaque="..."` when set.
    ///
    /// `algorithm` is always written, even for MD5: RFC 8760 §2.4 clients pick among
    /// several challenges by it. Quotes and backslashes in `realm`/`opaque` are escaped and
    /// control characters dropped, so a mis-configured realm cannot inject header lines.
    pub fn header_value(&self) -> String {
        let mut v = String::with_capacity(96 + self.realm.len() + self.nonce.len());
        v.push_str("Digest realm=");
        push_quoted(&mut v, self.realm);
        v.push_str(", nonce=");
        push_quoted(&mut v, self.nonce);
        v.push_str(", algorithm=");
        v.push_str(self.algorithm.name());
        v.push_str(", qop=\"auth\"");
        if self.stale {
            v.push_str(", stale=true");
        }
        if let Some(opaque) = self.opaque {
            v.push_str(", opaque=");
            push_quoted(&mut v, opaque);
        }
        v
    }
}

/// The two challenge header values for `realm`, SHA-256 first and MD5 second (RFC 8760
/// §2.4: one challenge per algorithm, in the server's order of preference). Add each as its
/// own header line of [`ChallengeKind::challenge_header`]. Both share one nonce: a nonce
/// binds a realm and a time, not an algorithm.
pub fn challenge_values(
    key: &NonceKey,
    realm: &str,
    now_unix: u64,
    stale: bool,
    opaque: Option<&str>,
) -> [String; 2] {
    let nonce = key.issue(realm, now_unix);
    Algorithm::PREFERENCE.map(|algorithm| {
        Challenge {
            realm,
            nonce: &nonce,
            algorithm,
            stale,
            opaque,
        }
        .header_value()
    })
}

/// Append `s` as a quoted-string (RFC 3261 §25.1).
pub(crate) fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn header_values() {
        let c = Challenge {
            realm: "example.com",
            nonce: "abc",
            algorithm: Algorithm::Sha256,
            stale: false,
            opaque: None,
        };
        assert_eq!(
            c.header_value(),
            "Digest realm=\"example.com\", nonce=\"abc\", algorithm=SHA-256, qop=\"auth\""
        );
        let c = Challenge {
            algorithm: Algorithm::Md5,
            stale: true,
            opaque: Some("op"),
            ..c
        };
        assert_eq!(
            c.header_value(),
            "Digest realm=\"example.com\", nonce=\"abc\", algorithm=MD5, qop=\"auth\", stale=true, opaque=\"op\""
        );
    }

    #[test]
    fn quoting() {
        let c = Challenge {
            realm: "a\"b\\c\r\nVia: x",
            nonce: "n",
            algorithm: Algorithm::Md5,
            stale: false,
            opaque: None,
        };
        assert_eq!(
            c.header_value(),
            "Digest realm=\"a\\\"b\\\\cVia: x\", nonce=\"n\", algorithm=MD5, qop=\"auth\""
        );
    }

    #[test]
    fn both_in_order() {
        let key = NonceKey::new([7u8; 32], Duration::from_secs(60)).unwrap();
        let [first, second] = challenge_values(&key, "example.com", 1000, false, None);
        // One nonce for both challenges (each challenge gets its own, unique).
        let nonce = first
            .split("nonce=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned();
        assert_eq!(
            key.verify(&nonce, "example.com", 1000),
            crate::NonceCheck::Valid
        );
        assert_eq!(
            first,
            format!(
                "Digest realm=\"example.com\", nonce=\"{nonce}\", algorithm=SHA-256, qop=\"auth\""
            )
        );
        assert_eq!(
            second,
            format!("Digest realm=\"example.com\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"")
        );
        let [s, _] = challenge_values(&key, "example.com", 1000, true, Some("o"));
        assert!(s.ends_with(", stale=true, opaque=\"o\""), "{s}");
    }

    #[test]
    fn kinds() {
        assert_eq!(ChallengeKind::Www.status(), 401);
        assert_eq!(ChallengeKind::Proxy.status(), 407);
        assert_eq!(ChallengeKind::Www.challenge_header(), "WWW-Authenticate");
        assert_eq!(
            ChallengeKind::Proxy.challenge_header(),
            "Proxy-Authenticate"
        );
        assert_eq!(ChallengeKind::Www.credentials_header(), "Authorization");
        assert_eq!(
            ChallengeKind::Proxy.credentials_header(),
            "Proxy-Authorization"
        );
    }
}

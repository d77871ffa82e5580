//! Digest algorithms (RFC 8760 §2.2) and the hashes built on them.

use md5::Md5;
use sha2::{Digest, Sha256};
use std::fmt;

/// A digest algorithm this crate accepts.
///
/// RFC 8760 lets SIP use every RFC 7616 algorithm; we take MD5 (what every deployed phone
/// speaks) and SHA-256 (what RFC 8760 asks servers to prefer). The `-sess` variants and
/// SHA-512-256 are rejected: almost no SIP client implements them, and `-sess` needs
/// per-client state that a stateless edge does not keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5`: the default when the `algorithm` parameter is absent.
    Md5,
    /// `SHA-256`.
    Sha256,
}

impl Algorithm {
    /// Challenge order: RFC 8760 §2.4 has the server list its preferred algorithm first.
    pub const PREFERENCE: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Md5];

    /// The RFC name (`MD5`, `SHA-256`).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Parse an algorithm name, case-insensitively; `None` for names we do not support.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if name.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// The algorithm of an `algorithm` parameter that may be absent: absent means MD5
    /// (RFC 7616 §3.3, RFC 3261 §22.4).
    pub fn from_param(param: Option<&str>) -> Option<Algorithm> {
        param.map_or(Some(Algorithm::Md5), Algorithm::from_name)
    }

    /// Length of a hash in lowercase hex: 32 for MD5, 64 for SHA-256.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
        }
    }

    /// `H(data)` in lowercase hex.
    pub fn hash_hex(self, data: &[u8]) -> String {
        self.hash_joined_hex(&[data])
    }

    /// `H(part1 ":" part2 ":" ...)` in lowercase hex, without building the joined string.
    pub fn hash_joined_hex(self, parts: &[&[u8]]) -> String {
        match self {
            Algorithm::Md5 => joined::<Md5>(parts),
            Algorithm::Sha256 => joined::<Sha256>(parts),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn joined<D: Digest>(parts: &[&[u8]]) -> String {
    let mut d = D::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            d.update(b":");
        }
        d.update(part);
    }
    to_hex(&d.finalize())
}

/// Lowercase hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len().saturating_mul(2));
    for &b in bytes {
        for nibble in [b >> 4, b & 0x0f] {
            // A nibble is always a base-16 digit; `from_digit` writes it lower-case.
            s.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
        }
    }
    s
}

/// `HA1 = H(username ":" realm ":" password)` (RFC 7616 §3.4.2, non-`-sess`), lowercase hex.
///
/// `username` and `realm` are the unquoted values (quoted-pair escapes removed).
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hash_joined_hex(&[username.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// `HA2 = H(method ":" digest-uri)` (RFC 7616 §3.4.3, qop `auth` or absent), lowercase hex.
pub fn ha2(algorithm: Algorithm, method: &str, digest_uri: &str) -> String {
    algorithm.hash_joined_hex(&[method.as_bytes(), digest_uri.as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_parsing() {
        assert_eq!(Algorithm::Md5.name(), "MD5");
        assert_eq!(Algorithm::Sha256.to_string(), "SHA-256");
        assert_eq!(Algorithm::from_name("md5"), Some(Algorithm::Md5));
        assert_eq!(Algorithm::from_name("sha-256"), Some(Algorithm::Sha256));
        assert_eq!(Algorithm::from_name("SHA-256-sess"), None);
        assert_eq!(Algorithm::from_name("MD5-sess"), None);
        assert_eq!(Algorithm::from_name("SHA-512-256"), None);
        assert_eq!(Algorithm::from_name(""), None);
        assert_eq!(Algorithm::from_param(None), Some(Algorithm::Md5));
        assert_eq!(
            Algorithm::from_param(Some("Sha-256")),
            Some(Algorithm::Sha256)
        );
        assert_eq!(Algorithm::PREFERENCE[0], Algorithm::Sha256);
    }

    #[test]
    fn known_hashes() {
        // Well-known digests of the empty string.
        assert_eq!(
            Algorithm::Md5.hash_hex(b""),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(
            Algorithm::Sha256.hash_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            Algorithm::Md5.hash_joined_hex(&[b"a", b"b"]),
            Algorithm::Md5.hash_hex(b"a:b")
        );
        assert_eq!(
            Algorithm::Md5.hash_hex(b"x").len(),
            Algorithm::Md5.hex_len()
        );
        assert_eq!(
            Algorithm::Sha256.hash_hex(b"x").len(),
            Algorithm::Sha256.hex_len()
        );
    }

    #[test]
    fn rfc2617_ha1_ha2() {
        // RFC 2617 §3.5: HA1 and HA2 of the Mufasa example.
        assert_eq!(
            ha1(
                Algorithm::Md5,
                "Mufasa",
                "testrealm@host.com",
                "Circle Of Life"
            ),
            "939e7578ed9e3c518a452acee763bce9"
        );
        assert_eq!(
            ha2(Algorithm::Md5, "GET", "/dir/index.html"),
            "39aff3a2bab6126f332b942af96d3366"
        );
    }
}

//! What the server keeps per subscriber: HA1 per algorithm, never the password.

use crate::algorithm::{Algorithm, ha1};
use crate::error::Error;
use std::fmt;

/// The stored secrets of one subscriber in one realm: `HA1 = H(username:realm:password)`
/// for each algorithm it can use, as lowercase hex.
///
/// HA1 is password-equivalent for digest (whoever has it can answer any challenge in that
/// realm), so it is treated as a secret: [`Debug`] prints only which algorithms are present.
/// A subscriber provisioned with one HA1 only can authenticate with that algorithm only.
#[derive(Clone)]
pub struct Credentials {
    md5: Option<String>,
    sha256: Option<String>,
}

impl Credentials {
    /// Both HA1s from a password; the password itself is not kept.
    pub fn from_password(username: &str, realm: &str, password: &str) -> Credentials {
        Credentials {
            md5: Some(ha1(Algorithm::Md5, username, realm, password)),
            sha256: Some(ha1(Algorithm::Sha256, username, realm, password)),
        }
    }

    /// From precomputed HA1s in hex (either case; stored lowercase). At least one is needed.
    pub fn from_ha1_hex(md5: Option<&str>, sha256: Option<&str>) -> Result<Credentials, Error> {
        if md5.is_none() && sha256.is_none() {
            return Err(Error::MissingSecret);
        }
        Ok(Credentials {
            md5: md5
                .map(|h| normalize_hex(h, Algorithm::Md5, "ha1_md5"))
                .transpose()?,
            sha256: sha256
                .map(|h| normalize_hex(h, Algorithm::Sha256, "ha1_sha256"))
                .transpose()?,
        })
    }

    /// The HA1 for `algorithm` in lowercase hex, if provisioned.
    pub fn ha1(&self, algorithm: Algorithm) -> Option<&str> {
        match algorithm {
            Algorithm::Md5 => self.md5.as_deref(),
            Algorithm::Sha256 => self.sha256.as_deref(),
        }
    }

    /// True when an HA1 for `algorithm` is present.
    pub fn supports(&self, algorithm: Algorithm) -> bool {
        self.ha1(algorithm).is_some()
    }
}

fn normalize_hex(h: &str, algorithm: Algorithm, field: &'static str) -> Result<String, Error> {
    let h = h.trim();
    if h.len() != algorithm.hex_len() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::BadHa1 {
            field,
            expected_len: algorithm.hex_len(),
        });
    }
    Ok(h.to_ascii_lowercase())
}

/// Stands in for a secret in `Debug` output.
struct Redacted(bool);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0 { "<redacted>" } else { "None" })
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("ha1_md5", &Redacted(self.md5.is_some()))
            .field("ha1_sha256", &Redacted(self.sha256.is_some()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_password_matches_from_ha1() {
        let c = Credentials::from_password("Mufasa", "testrealm@host.com", "Circle Of Life");
        assert_eq!(
            c.ha1(Algorithm::Md5),
            Some("939e7578ed9e3c518a452acee763bce9")
        );
        let h = Credentials::from_ha1_hex(Some("939E7578ED9E3C518A452ACEE763BCE9"), None).unwrap();
        assert_eq!(h.ha1(Algorithm::Md5), c.ha1(Algorithm::Md5));
        assert!(!h.supports(Algorithm::Sha256));
        assert!(c.supports(Algorithm::Sha256));
    }

    #[test]
    fn bad_hex() {
        assert!(matches!(
            Credentials::from_ha1_hex(None, None),
            Err(Error::MissingSecret)
        ));
        assert!(matches!(
            Credentials::from_ha1_hex(Some("abc"), None),
            Err(Error::BadHa1 {
                field: "ha1_md5",
                expected_len: 32
            })
        ));
        // Right length, not hex.
        assert!(matches!(
            Credentials::from_ha1_hex(None, Some(&"g".repeat(64))),
            Err(Error::BadHa1 {
                field: "ha1_sha256",
                expected_len: 64
            })
        ));
        // Multi-byte characters must not be mistaken for hex or split mid-char.
        assert!(Credentials::from_ha1_hex(Some(&"é".repeat(16)), None).is_err());
    }

    #[test]
    fn debug_hides_secrets() {
        let c = Credentials::from_password("alice", "example.com", "hunter2");
        let dbg = format!("{c:?}");
        assert_eq!(
            dbg,
            "Credentials { ha1_md5: <redacted>, ha1_sha256: <redacted> }"
        );
        let only = Credentials::from_ha1_hex(None, Some(c.ha1(Algorithm::Sha256).unwrap()));
        assert_eq!(
            format!("{:?}", only.unwrap()),
            "Credentials { ha1_md5: None, ha1_sha256: <redacted> }"
        );
    }
}

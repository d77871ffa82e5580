//! Stateless nonces: any edge holding the same secret verifies a nonce another edge issued.
//!
//! ```text
//! nonce = base64url-nopad( timestamp (8 bytes, big-endian Unix seconds)
//!                          || serial (8 bytes)
//!                          || HMAC-SHA256(secret, 0xff || timestamp || serial || realm)[..16] )
//! ```
//!
//! The nonce is 43 characters of `[A-Za-z0-9_-]`, so it needs no escaping inside a quoted
//! string and survives every SIP stack unchanged. The serial (a per-process counter from a
//! random start) makes every challenge's nonce unique: replay protection remembers
//! `(nonce, nc)` pairs, and two clients challenged in the same second must not share one.
//! The first format (32 characters, no serial, MAC over `timestamp || realm`) still
//! verifies, so nonces issued before an upgrade stay good for their lifetime; the `0xff`
//! prefix keeps the two MAC inputs apart (a timestamp's first byte is 0 for millennia).
//!
//! # Replay
//!
//! The nonce itself is stateless; replay is stopped by remembering which `(nonce, nc)`
//! pairs were accepted ([`crate::NonceUses`]), for the nonce's lifetime, in a set every
//! edge shares (the location service, Redis behind it). A captured `Authorization` sent
//! again, from anywhere, with a new Call-ID or Contact, repeats a pair already seen and is
//! re-challenged with `stale=true`. The digest does not cover the Call-ID, CSeq or Contact,
//! so the registrar's Call-ID/CSeq ordering alone does not stop such a replay.

use crate::error::Error;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::time::Duration;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

const TS_LEN: usize = 8;
/// 128 bits of MAC: forging one takes 2^128 guesses, and keeps the nonce short.
const MAC_LEN: usize = 16;
const SERIAL_LEN: usize = 8;
/// The first format, without serial: 24 bytes, exactly 32 characters without padding.
const RAW_LEN_V1: usize = TS_LEN + MAC_LEN;
const ENCODED_LEN_V1: usize = RAW_LEN_V1 / 3 * 4;
const RAW_LEN: usize = TS_LEN + SERIAL_LEN + MAC_LEN;
/// base64 of 32 bytes without padding: 43 characters.
const ENCODED_LEN: usize = (RAW_LEN * 4).div_ceil(3);

/// The result of checking a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Issued by a holder of the secret for this realm, within its lifetime.
    Valid,
    /// Authentic but older than the lifetime: re-challenge with `stale=true`, so the client
    /// retries with the same credentials instead of asking its user.
    Stale,
    /// Not ours: wrong MAC, malformed, another realm, or issued too far in the future.
    Invalid,
}

/// Issues and verifies stateless nonces for one cluster-wide secret.
///
/// Every edge is configured with the same secret; a nonce issued by one edge verifies on
/// any other, so a client's retry may land anywhere. Rotating the secret invalidates all
/// outstanding nonces (clients see one extra 401 each).
#[derive(Clone)]
pub struct NonceKey {
    /// Keyed once: HMAC state after absorbing the key, cloned per nonce.
    mac: HmacSha256,
    lifetime_secs: u64,
    max_skew_secs: u64,
    /// The next serial (shared by clones: one sequence per process and secret).
    serial: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl NonceKey {
    /// Shortest secret accepted.
    pub const MIN_SECRET_LEN: usize = 16;
    /// Default tolerance for a nonce issued "in the future" by an edge whose clock runs ahead.
    pub const DEFAULT_MAX_SKEW_SECS: u64 = 30;

    /// A key for `secret` (at least [`Self::MIN_SECRET_LEN`] bytes, ideally 32 random
    /// bytes) whose nonces are fresh for `lifetime` (whole seconds).
    pub fn new(secret: impl AsRef<[u8]>, lifetime: Duration) -> Result<NonceKey, Error> {
        let secret = secret.as_ref();
        let weak = Error::WeakNonceSecret {
            min: Self::MIN_SECRET_LEN,
        };
        if secret.len() < Self::MIN_SECRET_LEN {
            return Err(weak);
        }
        let mac = HmacSha256::new_from_slice(secret).map_err(|_| weak)?;
        // A random start, so that two edges' serials do not run in step.
        let start = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        Ok(NonceKey {
            mac,
            lifetime_secs: lifetime.as_secs(),
            max_skew_secs: Self::DEFAULT_MAX_SKEW_SECS,
            serial: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(start)),
        })
    }

    /// Change how far in the future a nonce's timestamp may be (clock skew between edges).
    pub fn with_max_skew(mut self, skew: Duration) -> NonceKey {
        self.max_skew_secs = skew.as_secs();
        self
    }

    /// How long a nonce stays fresh.
    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.lifetime_secs)
    }

    /// A nonce for `realm`, issued at `now_unix` (Unix seconds); each one is unique.
    pub fn issue(&self, realm: &str, now_unix: u64) -> String {
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_be_bytes();
        let ts = now_unix.to_be_bytes();
        let tag = self.tag_v2(&ts, &serial, realm);
        let mut raw = [0u8; RAW_LEN];
        raw[..TS_LEN].copy_from_slice(&ts);
        raw[TS_LEN..TS_LEN + SERIAL_LEN].copy_from_slice(&serial);
        raw[TS_LEN + SERIAL_LEN..].copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Check a nonce presented for `realm` at `now_unix`.
    pub fn verify(&self, nonce: &str, realm: &str, now_unix: u64) -> NonceCheck {
        // Length first: bounds the work on hostile input and rejects every other format.
        let want = match nonce.len() {
            ENCODED_LEN => RAW_LEN,
            ENCODED_LEN_V1 => RAW_LEN_V1,
            _ => return NonceCheck::Invalid,
        };
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) {
            Ok(n) if n == want => {}
            _ => return NonceCheck::Invalid,
        }
        let Some((ts, rest)) = raw[..want].split_first_chunk::<TS_LEN>() else {
            return NonceCheck::Invalid;
        };
        let good = if want == RAW_LEN {
            let Some((serial, mac)) = rest.split_first_chunk::<SERIAL_LEN>() else {
                return NonceCheck::Invalid;
            };
            self.tag_v2(ts, serial, realm).as_slice().ct_eq(mac)
        } else {
            self.tag(ts, realm).as_slice().ct_eq(rest)
        };
        if !bool::from(good) {
            return NonceCheck::Invalid;
        }
        let issued = u64::from_be_bytes(*ts);
        if issued > now_unix.saturating_add(self.max_skew_secs) {
            // Authentic but from the future: only a badly wrong clock on some edge does this,
            // and accepting it would extend the nonce's life by the clock error.
            return NonceCheck::Invalid;
        }
        if now_unix.saturating_sub(issued) > self.lifetime_secs {
            NonceCheck::Stale
        } else {
            NonceCheck::Valid
        }
    }

    /// A MAC over `domain` and `data` with the shared secret, for other tokens the edges
    /// must trust from each other (flow tokens). `domain` separates uses, so a value
    /// signed for one purpose never verifies as another (and never as a nonce, whose
    /// input starts with 8 timestamp bytes, never with the `\0`-terminated domain).
    pub fn sign(&self, domain: &str, data: &[u8]) -> [u8; MAC_LEN] {
        let mut m = self.mac.clone();
        m.update(b"\0");
        m.update(domain.as_bytes());
        m.update(b"\0");
        m.update(data);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        if let Some(prefix) = full.first_chunk::<MAC_LEN>() {
            out = *prefix;
        }
        out
    }

    /// Check a [`sign`](Self::sign)ature in constant time.
    pub fn verify_signature(&self, domain: &str, data: &[u8], signature: &[u8]) -> bool {
        bool::from(self.sign(domain, data).as_slice().ct_eq(signature))
    }

    fn tag_v2(&self, ts: &[u8; TS_LEN], serial: &[u8; SERIAL_LEN], realm: &str) -> [u8; MAC_LEN] {
        self.mac_of(&[&[0xff], ts, serial, realm.as_bytes()])
    }

    /// The first format's MAC (nonces issued before the serial).
    fn tag(&self, ts: &[u8; TS_LEN], realm: &str) -> [u8; MAC_LEN] {
        // The timestamp has a fixed width, so `ts || realm` is unambiguous without a separator.
        self.mac_of(&[ts, realm.as_bytes()])
    }

    /// The MAC of the concatenated `parts`, cut to [`MAC_LEN`].
    fn mac_of(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        let mut m = self.mac.clone();
        for p in parts {
            m.update(p);
        }
        let full = m.finalize().into_bytes();
        let mut out = [0u8; MAC_LEN];
        if let Some(prefix) = full.first_chunk::<MAC_LEN>() {
            out = *prefix;
        }
        out
    }
}

impl fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceKey")
            .field("secret", &"<redacted>")
            .field("lifetime_secs", &self.lifetime_secs)
            .field("max_skew_secs", &self.max_skew_secs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;

    fn key() -> NonceKey {
        NonceKey::new(SECRET, Duration::from_secs(300)).unwrap()
    }

    #[test]
    fn format() {
        let k = key();
        let n = k.issue("example.com", NOW);
        assert_eq!(n.len(), 43);
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let mut raw = [0u8; 32];
        assert_eq!(URL_SAFE_NO_PAD.decode_slice(&n, &mut raw).unwrap(), 32);
        assert_eq!(raw[..8], NOW.to_be_bytes());
        // Unique, even for the same realm in the same second (replay protection
        // remembers nonces, so two clients must never share one).
        assert_ne!(n, k.issue("example.com", NOW));
        assert_eq!(k.verify(&n, "example.com", NOW), NonceCheck::Valid);
        // The first format (no serial) still verifies.
        let mut v1 = [0u8; 24];
        v1[..8].copy_from_slice(&NOW.to_be_bytes());
        v1[8..].copy_from_slice(&k.tag(&NOW.to_be_bytes(), "example.com"));
        let v1 = URL_SAFE_NO_PAD.encode(v1);
        assert_eq!(v1.len(), 32);
        assert_eq!(k.verify(&v1, "example.com", NOW), NonceCheck::Valid);
        assert_eq!(k.verify(&v1, "example.org", NOW), NonceCheck::Invalid);
    }

    #[test]
    fn lifetime_boundaries() {
        let k = key();
        let n = k.issue("example.com", NOW);
        assert_eq!(k.verify(&n, "example.com", NOW), NonceCheck::Valid);
        assert_eq!(k.verify(&n, "example.com", NOW + 300), NonceCheck::Valid);
        assert_eq!(k.verify(&n, "example.com", NOW + 301), NonceCheck::Stale);
        assert_eq!(k.verify(&n, "example.com", u64::MAX), NonceCheck::Stale);
        assert_eq!(k.verify(&n, "example.org", NOW), NonceCheck::Invalid);
    }

    #[test]
    fn skew() {
        let k = key();
        let n = k.issue("r", NOW + 30);
        assert_eq!(k.verify(&n, "r", NOW), NonceCheck::Valid);
        let n = k.issue("r", NOW + 31);
        assert_eq!(k.verify(&n, "r", NOW), NonceCheck::Invalid);
        let strict = key().with_max_skew(Duration::ZERO);
        assert_eq!(
            strict.verify(&k.issue("r", NOW + 1), "r", NOW),
            NonceCheck::Invalid
        );
        // Far-future timestamps must not overflow.
        assert_eq!(
            k.verify(&k.issue("r", u64::MAX), "r", u64::MAX - 10),
            NonceCheck::Valid
        );
    }

    #[test]
    fn garbage() {
        let k = key();
        let good = k.issue("r", NOW);
        for bad in [
            "",
            "x",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            &"A".repeat(32),
            &"=".repeat(32),
            &"é".repeat(16),
            &good[..31],
            &format!("{good}A"),
            &format!("{}+", &good[..31]),
        ] {
            assert_eq!(k.verify(bad, "r", NOW), NonceCheck::Invalid, "{bad:?}");
        }
        // Flip each character of the MAC part.
        for i in 11..32 {
            let mut b = good.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let s = String::from_utf8(b).unwrap();
            assert_eq!(k.verify(&s, "r", NOW), NonceCheck::Invalid, "{i}");
        }
    }

    #[test]
    fn weak_secret_and_debug() {
        assert!(matches!(
            NonceKey::new(b"short", Duration::from_secs(1)),
            Err(Error::WeakNonceSecret { min: 16 })
        ));
        let dbg = format!("{:?}", key());
        assert!(!dbg.contains("0123456789abcdef"), "{dbg}");
        assert!(dbg.contains("<redacted>"));
        assert_eq!(key().lifetime(), Duration::from_secs(300));
    }
}

//! Nonces issued on one edge and verified on another.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use sip_auth::{NonceCheck, NonceKey};
use std::time::Duration;

const SECRET: &str = "shared by every edge of the cluster";
const NOW: u64 = 1_700_000_000;

fn edge(secret: &str) -> NonceKey {
    NonceKey::new(secret, Duration::from_secs(120)).unwrap()
}

#[test]
fn two_edges_same_secret() {
    let (a, b) = (edge(SECRET), edge(SECRET));
    let n = a.issue("example.com", NOW);
    // Unique per challenge, on one edge and across edges.
    assert_ne!(n, b.issue("example.com", NOW));
    assert_ne!(n, a.issue("example.com", NOW));
    assert_eq!(b.verify(&n, "example.com", NOW + 1), NonceCheck::Valid);
    assert_eq!(b.verify(&n, "example.com", NOW + 120), NonceCheck::Valid);
    assert_eq!(b.verify(&n, "example.com", NOW + 121), NonceCheck::Stale);
    assert_eq!(b.verify(&n, "example.net", NOW + 1), NonceCheck::Invalid);
}

#[test]
fn different_secrets_reject_each_other() {
    let a = edge(SECRET);
    let c = edge("a different cluster's secret");
    let n = a.issue("example.com", NOW);
    assert_eq!(c.verify(&n, "example.com", NOW), NonceCheck::Invalid);
    // Expired and foreign is still Invalid, not Stale: Stale promises authenticity.
    assert_eq!(
        c.verify(&n, "example.com", NOW + 10_000),
        NonceCheck::Invalid
    );
    assert_eq!(
        a.verify(&c.issue("example.com", NOW), "example.com", NOW),
        NonceCheck::Invalid
    );
}

#[test]
fn clock_skew_between_edges() {
    let a = edge(SECRET);
    let b = edge(SECRET);
    // Edge a's clock is ahead of b's.
    for (ahead, want) in [
        (0, NonceCheck::Valid),
        (29, NonceCheck::Valid),
        (30, NonceCheck::Valid),
        (31, NonceCheck::Invalid),
        (3600, NonceCheck::Invalid),
    ] {
        let n = a.issue("example.com", NOW + ahead);
        assert_eq!(b.verify(&n, "example.com", NOW), want, "ahead by {ahead}s");
    }
    // Edge a's clock is behind: the nonce just looks older.
    let n = a.issue("example.com", NOW - 100);
    assert_eq!(b.verify(&n, "example.com", NOW), NonceCheck::Valid);
    let n = a.issue("example.com", NOW - 121);
    assert_eq!(b.verify(&n, "example.com", NOW), NonceCheck::Stale);
    // A wider tolerance is configurable.
    let lenient = edge(SECRET).with_max_skew(Duration::from_secs(300));
    let n = a.issue("example.com", NOW + 200);
    assert_eq!(lenient.verify(&n, "example.com", NOW), NonceCheck::Valid);
}

#[test]
fn timestamp_cannot_be_moved_without_the_secret() {
    // Re-encoding a nonce with a later timestamp but the old MAC must not refresh it.
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let a = edge(SECRET);
    let n = a.issue("example.com", NOW);
    let mut raw = URL_SAFE_NO_PAD.decode(&n).unwrap();
    assert_eq!(raw.len(), 32);
    raw[..8].copy_from_slice(&(NOW + 1000).to_be_bytes());
    let forged = URL_SAFE_NO_PAD.encode(&raw);
    assert_eq!(
        a.verify(&forged, "example.com", NOW + 1000),
        NonceCheck::Invalid
    );
    // Nor can the serial be changed (to mint a fresh nonce for replay tracking).
    let mut raw = URL_SAFE_NO_PAD.decode(&n).unwrap();
    raw[15] ^= 1;
    assert_eq!(
        a.verify(&URL_SAFE_NO_PAD.encode(&raw), "example.com", NOW),
        NonceCheck::Invalid
    );
}

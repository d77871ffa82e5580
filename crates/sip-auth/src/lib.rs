//! # sip-auth: digest authentication for the sipcluster edge
//!
//! The edge proxy and registrar use this crate to challenge requests and check the
//! answers: RFC 3261 §22 digest, with RFC 7616's SHA-256 and RFC 8760's algorithm agility
//! (MD5 and SHA-256, `qop=auth`, plus the RFC 2069 form without qop that many phones
//! still send). It is sans-IO like [`sip_core`]: pure functions and values, callers pass the
//! time (`now_unix`, Unix seconds), nothing here opens a socket, reads a clock or logs.
//!
//! * [`Algorithm`], [`ha1`], [`ha2`], [`digest_response`]: the hashes, as lowercase hex.
//! * [`Credentials`]: what is stored per subscriber, HA1 per algorithm, never a password.
//! * [`NonceKey`]: stateless nonces that any edge sharing the secret can verify
//!   ([`NonceCheck`]); see the [`nonce`] module for the format and the replay trade-off.
//! * [`Challenge`], [`challenge_values`], [`ChallengeKind`]: `WWW-Authenticate` (401) and
//!   `Proxy-Authenticate` (407) values, SHA-256 offered before MD5.
//! * [`find_credentials`] / [`select_for_realm`], [`DigestResponse`], [`verify`]: pick the
//!   answer for our realm and check it, giving an [`Outcome`] (verified, stale, or a
//!   [`FailReason`]).
//! * [`SubscriberStore`]: where credentials come from ([`FileStore`] for the all-in-one,
//!   [`MemoryStore`] for tests, the location service later); a store failure is an
//!   [`Error`], distinct from an unknown user.
//!
//! Nothing panics on network input, MACs and responses are compared in constant time, and
//! no `Debug` output carries a password, HA1 or nonce secret.
//!
//! ```
//! use sip_auth::{ChallengeKind, Credentials, NonceKey, Outcome, challenge_values, find_credentials, verify};
//! use std::time::Duration;
//!
//! let key = NonceKey::new(b"32 bytes of cluster-wide secret!", Duration::from_secs(300))?;
//! let now = 1_700_000_000;
//! // 401 to an unauthenticated REGISTER: one WWW-Authenticate line per value.
//! let [sha256, md5] = challenge_values(&key, "example.com", now, false, None);
//! assert!(sha256.contains("algorithm=SHA-256") && md5.contains("algorithm=MD5"));
//!
//! // The retried REGISTER (its Authorization built here the way a phone would).
//! let nonce = key.issue("example.com", now);
//! let creds = Credentials::from_password("alice", "example.com", "secret");
//! let answer = sip_auth::ClientAuthorization {
//!     algorithm: sip_auth::Algorithm::Sha256, username: "alice", realm: "example.com",
//!     nonce: &nonce, uri: "sip:example.com", method: "REGISTER",
//!     qop: Some(sip_auth::QopAuth { nc: 1, cnonce: "abc" }), opaque: None,
//! }.header_value(&creds).unwrap();
//! let msg = sip_core::SipMessage::parse(format!(
//!     "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
//!      From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n\
//!      Call-ID: c1\r\nCSeq: 2 REGISTER\r\nAuthorization: {answer}\r\n\
//!      Content-Length: 0\r\n\r\n").into_bytes())?;
//!
//! let auth = find_credentials(&msg, ChallengeKind::Www, "example.com").unwrap();
//! let uri = msg.request_uri_raw().unwrap_or_default();
//! let out = verify(&auth, "REGISTER", uri, "example.com", &creds, &key, now + 5);
//! assert!(matches!(out, Outcome::Verified { ref username, .. } if username == "alice"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod algorithm;
mod challenge;
mod credentials;
mod error;
pub mod nonce;
mod replay;
mod store;
mod verify;

pub use algorithm::{Algorithm, ha1, ha2};
pub use challenge::{Challenge, ChallengeKind, challenge_values};
pub use credentials::Credentials;
pub use error::Error;
pub use nonce::{NonceCheck, NonceKey};
pub use replay::{MemoryNonceUses, NonceUses};
pub use store::{FileStore, MemoryStore, StoreError, SubscriberStore};
pub use verify::{
    ClientAuthorization, DigestResponse, FailReason, Outcome, QopAuth, digest_response,
    find_credentials, select_for_realm, verify,
};

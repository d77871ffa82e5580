//! # sip-registrar: the registrar rules of sipcluster, sans-IO
//!
//! A SIP registrar (RFC 3261 §10) keeps, for each address-of-record, the contacts its
//! user agents registered. This crate holds the rules of that bookkeeping and the storage
//! abstraction the edge proxy uses; it owns no socket, clock or task.
//!
//! * **Model**: [`Aor`] (canonical key from a To URI), [`Binding`] (one contact with its
//!   expiry, q, Call-ID/CSeq, Path, RFC 5626 instance/reg-id and the NAT [`Source`]),
//!   [`RegisterRequest`] (what a REGISTER asks, [`RegisterRequest::from_message`]).
//! * **Rules**: [`apply_register`] is RFC 3261 §10.3 steps 6–8 (plus RFC 3327 Path and
//!   RFC 5626 outbound matching) as one pure function from the stored bindings and a
//!   request to the new binding set and the 200 OK's Contact list ([`RegisterOutcome`]).
//!   Every store calls it — the in-memory one here and the Redis-backed location service —
//!   so they cannot disagree, and a failed request changes nothing by construction.
//!   [`uris_equivalent`] is the §19.1.4 URI comparison it matches contacts with.
//! * **Errors**: [`RegisterError`] says why a REGISTER failed and which response to send
//!   ([`RegisterError::status`]: 400, 416, 423 with `Min-Expires`, 500, 403);
//!   [`StoreError`] adds "backend unavailable" (503 with `Retry-After`).
//! * **Store**: [`LocationStore`] (async, usable as `dyn`), implemented in memory by
//!   [`MemoryStore`] for the all-in-one.
//!
//! Times are Unix seconds passed in by the caller. Expiry is enforced by the data: a
//! binding whose `expires_at` has passed is never returned and is dropped from the set by
//! the next write, so correctness never depends on a cleanup task.
//!
//! ```
//! use sip_core::SipMessage;
//! use sip_registrar::{Policy, RegisterRequest, apply_register};
//!
//! let msg = SipMessage::parse(&b"REGISTER sip:example.com SIP/2.0\r\n\
//!     Via: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK1\r\n\
//!     From: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\n\
//!     Call-ID: c1@192.0.2.10\r\nCSeq: 1 REGISTER\r\n\
//!     Contact: <sip:alice@192.0.2.10>;q=0.5\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"[..])?;
//! let req = RegisterRequest::from_message(&msg, 1_000, None)?;
//! let out = apply_register(&[], &req, &Policy::default(), 1_000)?;
//! assert_eq!(out.bindings.len(), 1);
//! assert_eq!(out.bindings[0].expires_at, 1_600);
//! assert_eq!(
//!     out.contact_header().as_deref(),
//!     Some("<sip:alice@192.0.2.10>;expires=600;q=0.5")
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(unsafe_code)]

mod aor;
mod binding;
mod error;
mod request;
mod rules;
mod store;
mod uri_match;

pub use aor::Aor;
pub use binding::{Binding, DEFAULT_Q, Source};
pub use error::{RegisterError, StoreError};
pub use request::{ContactSpec, RegisterRequest, RequestContact};
pub use rules::{
    Policy, RegisterOutcome, ResponseContact, apply_register, live_bindings, sort_bindings,
};
pub use store::{LocationStore, MemoryStore, StoreStats, contact_matches};
pub use uri_match::uris_equivalent;

/// Unix seconds: the clock of every binding's expiry, and of nonces. Before 1970 (a
/// clock not set yet) reads as 0.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix milliseconds (call events and CDRs), 0 before 1970 as [`unix_now`].
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

//! # media-core: the sans-IO heart of the sipcluster media relay
//!
//! A media relay anchors a call's RTP: each party is told (by the SDP the edge rewrites)
//! to send its media to a port of the relay, and the relay forwards what arrives on one
//! leg out of the other. This crate holds every decision of that job and no socket:
//!
//! - [`packet`]: classify a datagram (RTP, RTCP, STUN, DTLS, other; RFC 7983 / RFC 5761
//!   demultiplexing), read RTP headers and RTCP sender/receiver reports without copying.
//! - [`stats`]: per-stream counters from RTP headers (packets, bytes, sequence-gap loss,
//!   RFC 3550 interarrival jitter) and the last RTCP report a party sent about it.
//! - [`ports`]: the per-pod port range as even/odd RTP/RTCP pairs, with a quarantine so
//!   that late packets of an ended call never reach the next one.
//! - [`session`]: the [`Engine`](session::Engine): offers and answers (idempotent,
//!   forked answers, re-INVITEs from either side), symmetric latching that prefers the
//!   signalled address (a stranger who sends first cannot keep a party out; hijack
//!   attempts are counted and reported) with an optional strict mode, the forwarding
//!   decision per packet, idle and maximum-duration timeouts, drain, and a load report.
//!
//! The driver (`services/media-relay`) owns the sockets: it binds what
//! [`Engine::take_binds`](session::Engine::take_binds) asks for, hands every received
//! datagram to [`Engine::on_packet`](session::Engine::on_packet) and sends it where the
//! answer says. Payloads are never changed, so SRTP, DTLS and ICE pass through
//! untouched. The per-packet path does not allocate.

pub mod error;
pub mod packet;
pub mod ports;
pub mod session;
pub mod stats;

pub use error::MediaError;
pub use session::{
    Binding, DropReason, EndReason, Engine, EngineConfig, Event, Family, Forward, Load, LocalMedia,
    MediaSpec, SessionInfo, SideStats,
};

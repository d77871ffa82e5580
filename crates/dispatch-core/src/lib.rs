//! # dispatch-core: what the dispatcher decides, without sockets or clocks
//!
//! The dispatcher (the public SIP entry point in front of the edge proxies) makes two
//! kinds of decisions, both here as plain data structures driven by bytes and times:
//!
//! * [`hashing`]: which edge a request goes to. Weighted rendezvous hashing (highest
//!   random weight) of a dialog key (the Call-ID) over the targets: every dispatcher
//!   instance computes the same answer with no shared state, a target's share follows
//!   its weight, and adding, removing or re-weighting one target moves only the keys
//!   that must move. The full preference order gives the failover sequence.
//! * [`health`]: whether an edge may take new dialogs. A per-target state machine fed
//!   with probe results (SIP OPTIONS answers, timeouts, transport errors) and the
//!   current time; it says when to probe next and when a target goes up or down.
//!
//! * [`token`]: the signed flow tokens the dispatcher puts in Path and Record-Route so
//!   that edges can reach a client over the connection the dispatcher holds.
//! * [`relay`]: the stateless relay itself (RFC 3261 §16.11): bytes and times in,
//!   [`Transmit`]s out, with failover of INVITE/REGISTER to the next edge, and the
//!   [`pool`]s of edges and outbound destination sets it picks from.
//!
//! The hash is defined here (FNV-1a, then a splitmix64 finaliser) rather than taken from
//! a library, so that dispatchers of different builds never disagree about where a
//! dialog lives during a rolling upgrade.

pub mod hashing;
pub mod health;
pub mod metrics;
pub mod pool;
pub mod relay;
pub mod security;
pub mod token;

pub use hashing::{Rendezvous, key_hash};
pub use health::{Health, HealthConfig, Probe, State, Transition};
pub use metrics::Metrics;
pub use pool::{Algorithm, Pool, TargetSpec};
pub use relay::{
    FlowTable, Listen, Notice, Rejected, Relay, RelayConfig, Side, TRACE_HEADER, TargetInfo,
    Transmit, is_dispatcher_via,
};
pub use security::{Cidr, UserAgentDeny};
pub use token::{FlowToken, TokenKey};

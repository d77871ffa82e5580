//! # hep: siptrace over HEP v3
//!
//! A copy of every SIP message a node receives or sends, sent to a HEP collector
//! (Homer, heplify-server, sngrep) with the Call-ID as correlation id, so an operator
//! sees a call's whole ladder across the cluster in one place.
//!
//! * [`encode`] is sans-IO: a [`Capture`] (addresses, transport, time, the message and
//!   Call-ID, borrowed) in, one HEP3 packet appended to a buffer out, byte for byte as
//!   the sipcapture specification has it. [`decode`] reads one back, for tests and tools.
//! * [`HepExporter`] runs it: [`HepSink::capture`] on the SIP path decides on sampling,
//!   encodes into a reused buffer and `try_send`s it to a bounded queue; a background
//!   task sends the queue over UDP (a datagram per packet) or TCP (reconnected with a
//!   capped backoff, writes bounded by a timeout).
//!
//! Decisions worth knowing:
//!
//! * **SIP never waits on the collector.** The sink never awaits and never blocks: a
//!   full queue, a collector that is down, or one that stops reading costs dropped
//!   packets, each counted by reason ([`HepMetrics`]), never a slower SIP message.
//!   While there is no collector the task keeps draining the queue, so drops show as
//!   `disconnected` and a collector that comes back gets current messages.
//! * **Sampling is per call, the same on every node.** A pinned hash of the Call-ID
//!   decides, so a sampled call is exported whole by every dispatcher and edge it
//!   crosses, and an unsampled one costs one hash per message.
//! * **Off by default** ([`HepConfig::enabled`]); a disabled sink is one branch.
//! * TLS, WS and WSS messages are exported as TCP (HEP has no number for them), with
//!   the SIP message as it was before encryption and framing.
//! * The password ([`HepConfig::password`]) is in no log line, `Debug` output or
//!   printed configuration.

mod config;
pub mod decode;
pub mod encode;
mod export;
mod metrics;

pub use config::{HepConfig, HepTransport};
pub use decode::{Decoded, decode};
pub use encode::{Capture, encode};
pub use export::{HepExporter, HepSink};
pub use metrics::{HepMetrics, reason};

/// What can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum HepError {
    /// The settings cannot run.
    #[error(transparent)]
    Config(#[from] telemetry::ConfigError),
    /// An enabled exporter was started outside a tokio runtime.
    #[error("the HEP exporter must be started inside a tokio runtime")]
    NoRuntime,
    /// The message does not fit one HEP packet (whose length is a u16).
    #[error("a HEP packet holds at most 65535 bytes; this one would be {len}")]
    TooLong {
        /// The length the packet would have had.
        len: usize,
    },
    /// Bytes that are not a HEP3 packet this crate can read.
    #[error("not a valid HEP3 packet: {0}")]
    Malformed(&'static str),
}

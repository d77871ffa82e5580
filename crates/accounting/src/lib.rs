//! # accounting: call events and CDRs that are never lost
//!
//! The edge hands every call event and CDR ([`proto::cdr::v1::Envelope`]) to
//! [`Accounting::record`], which only queues it: SIP never waits on disk or broker. A
//! dedicated thread then
//!
//! 1. appends it to the durable [`spool`] (one record: the Kafka key, the Call-ID, and
//!    the envelope's protobuf bytes),
//! 2. makes the batch durable (`fdatasync` every `sync_interval` or `sync_batch` records),
//! 3. hands durable records to a [`Publisher`] ([`Kafka`]; [`JsonLines`] in the all-in-one),
//!    in order, up to `max_in_flight` at once,
//! 4. removes a record from the spool only when the publisher reports it acknowledged;
//!    a failed one is offered again after a back-off.
//!
//! A destination that is itself a durable local file (the all-in-one's JSON lines) takes
//! records straight from the queue instead: the file is the durable copy, acknowledged
//! once synced; records wait in memory until then (bounded like the spool) and go into
//! the spool only if the thread ends with some unacknowledged.
//!
//! A broker that is down only makes the spool grow (bounded; past the bound events are
//! counted and logged, loudly). After a restart, everything the spool holds is published
//! again, in order: an event acknowledged just before a crash may arrive twice, with the
//! same event id. On SIGTERM the service calls [`Accounting::drain`] to publish what it can
//! before it exits; what is left stays in the spool for the next start.

mod driver;
mod jsonl;
pub mod kafka;
mod metrics;
mod settings;

use std::time::Duration;

pub use driver::{Accounting, AccountingConfig};
pub use jsonl::JsonLines;
pub use kafka::{Kafka, KafkaConfig};
pub use metrics::{DropLabel, Metrics};
pub use settings::{AccountingSettings, Destination, StartError};

/// A spooled record offered to a [`Publisher`].
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The spool's id of the record: what [`Delivery`] names.
    pub id: u64,
    /// The partitioning key (the Call-ID: one call's events stay in order).
    pub key: &'a [u8],
    /// The envelope, protobuf-encoded.
    pub envelope: &'a [u8],
}

/// What became of a published record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Durably accepted by the destination: the spool may forget it.
    Acked(u64),
    /// Not accepted (the broker refused it, a timeout): it is offered again.
    Failed(u64),
}

/// Not now: the record stays pending and is offered again after the back-off.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Busy(pub String);

/// Where published records go: Kafka, or a JSON-lines file.
///
/// Called from the accounting thread only; may block briefly (`poll`'s `wait`).
pub trait Publisher: Send + 'static {
    /// Take a record. `Err` when it cannot now (its queue is full, it is not connected).
    fn publish(&mut self, rec: Outgoing<'_>) -> Result<(), Busy>;
    /// Deliveries since the last call, waiting up to `wait` for one.
    fn poll(&mut self, wait: Duration) -> Vec<Delivery>;
    /// For the logs and metrics: `kafka`, `jsonl`.
    fn kind(&self) -> &'static str;
    /// The destination is itself a durable local file that keeps what it acknowledged
    /// (the JSON-lines file): records go to it without the spool in front, which would
    /// only write and sync each of them twice on the same disk. Such a publisher writes
    /// what it takes at once (at the latest at its next `poll`), so that a killed process
    /// loses nothing it was given.
    fn durable(&self) -> bool {
        false
    }
}

/// Why accounting could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccountingError {
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// The accounting thread could not be started.
    #[error("starting the accounting thread: {0}")]
    Thread(std::io::Error),
}

/// The spool record of one event: the key's length (u16 LE), the key, the envelope.
pub(crate) fn frame(key: &[u8], envelope: &[u8]) -> Vec<u8> {
    let key = &key[..key.len().min(u16::MAX as usize)];
    let mut out = Vec::with_capacity(2 + key.len() + envelope.len());
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(envelope);
    out
}

/// The key and envelope of a spool record; `None` when it is not one (`frame`'s inverse).
pub(crate) fn unframe(rec: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u16::from_le_bytes(rec.get(..2)?.try_into().ok()?) as usize;
    Some((rec.get(2..2 + len)?, rec.get(2 + len..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let f = frame(b"call-1@host", b"\x0a\x03abc");
        assert_eq!(
            unframe(&f),
            Some((&b"call-1@host"[..], &b"\x0a\x03abc"[..]))
        );
        assert_eq!(unframe(&frame(b"", b"")), Some((&b""[..], &b""[..])));
        assert_eq!(unframe(b"\x05\x00ab"), None);
        assert_eq!(unframe(b"\x01"), None);
    }
}

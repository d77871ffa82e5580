//! What the exporter counts, registered in the caller's registry (no globals).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use telemetry::ReasonLabel;

/// Why a packet was not sent: the values of `reason`.
pub mod reason {
    /// The queue to the sender task was full: the collector is slower than SIP.
    pub const QUEUE_FULL: &str = "queue_full";
    /// There was no collector to send to (connecting, backing off, or stopped).
    pub const DISCONNECTED: &str = "disconnected";
    /// The send failed or the collector did not take it in time.
    pub const SEND_ERROR: &str = "send_error";
    /// The message does not fit one HEP packet (64 KiB).
    pub const TOO_LARGE: &str = "too_large";
    /// Every reason, so that each series exists (at 0) from the start.
    pub const ALL: [&str; 4] = [QUEUE_FULL, DISCONNECTED, SEND_ERROR, TOO_LARGE];
}

/// The exporter's counters (cheap to clone: every field is a shared handle).
#[derive(Debug, Clone)]
pub struct HepMetrics {
    /// Packets handed to the collector (a datagram sent; bytes written to the connection).
    pub packets: Counter,
    /// Packets dropped, by [`reason`].
    pub dropped: Family<ReasonLabel, Counter>,
    /// Messages not exported because their call was not sampled.
    pub sampled_out: Counter,
    /// Handles into `dropped`, resolved once: a family lookup locks and hashes the label
    /// set, too much for a counter bumped on the SIP path.
    pub(crate) queue_full: Counter,
    pub(crate) disconnected: Counter,
    pub(crate) send_error: Counter,
    pub(crate) too_large: Counter,
}

impl Default for HepMetrics {
    fn default() -> Self {
        let dropped: Family<ReasonLabel, Counter> = Family::default();
        let get = |reason| dropped.get_or_create(&ReasonLabel { reason }).clone();
        let (queue_full, disconnected, send_error, too_large) = (
            get(reason::QUEUE_FULL),
            get(reason::DISCONNECTED),
            get(reason::SEND_ERROR),
            get(reason::TOO_LARGE),
        );
        HepMetrics {
            packets: Counter::default(),
            dropped,
            sampled_out: Counter::default(),
            queue_full,
            disconnected,
            send_error,
            too_large,
        }
    }
}

impl HepMetrics {
    /// The prefix of every HEP metric.
    pub const PREFIX: &'static str = "sipcluster_hep";

    /// Packets dropped for `reason` so far (one of [`reason::ALL`]; 0 for any other).
    #[must_use]
    pub fn dropped(&self, reason: &'static str) -> u64 {
        match reason {
            reason::QUEUE_FULL => self.queue_full.get(),
            reason::DISCONNECTED => self.disconnected.get(),
            reason::SEND_ERROR => self.send_error.get(),
            reason::TOO_LARGE => self.too_large.get(),
            _ => 0,
        }
    }

    /// Packets dropped for any reason so far.
    #[must_use]
    pub fn dropped_total(&self) -> u64 {
        reason::ALL.iter().map(|r| self.dropped(r)).sum()
    }

    /// Register every metric into the process's root registry, prefixed [`Self::PREFIX`]:
    /// `sipcluster_hep_packets_total`, `sipcluster_hep_dropped_total{reason}`,
    /// `sipcluster_hep_sampled_out_total`.
    pub fn register(&self, root: &mut Registry) {
        let r = root.sub_registry_with_prefix(Self::PREFIX);
        r.register(
            "packets",
            "SIP messages sent to the HEP collector",
            self.packets.clone(),
        );
        r.register(
            "dropped",
            "SIP messages not sent to the HEP collector, by reason (queue_full: the collector is slower than SIP; disconnected: no collector connection; send_error: a send failed or timed out; too_large: over 64 KiB)",
            self.dropped.clone(),
        );
        r.register(
            "sampled_out",
            "SIP messages not exported because their call was not sampled (hep.sample_ratio)",
            self.sampled_out.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_out_as_documented() {
        let m = HepMetrics::default();
        m.packets.inc();
        m.queue_full.inc();
        let mut root = Registry::default();
        m.register(&mut root);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &root).unwrap();
        for line in [
            "sipcluster_hep_packets_total 1",
            "sipcluster_hep_dropped_total{reason=\"queue_full\"} 1",
            "sipcluster_hep_dropped_total{reason=\"disconnected\"} 0",
            "sipcluster_hep_dropped_total{reason=\"send_error\"} 0",
            "sipcluster_hep_dropped_total{reason=\"too_large\"} 0",
            "sipcluster_hep_sampled_out_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert_eq!(m.dropped(reason::QUEUE_FULL), 1);
        assert_eq!(m.dropped_total(), 1);
    }
}

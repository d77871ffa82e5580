//! The accounting pipeline's metrics (`register` under the service's prefix).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why an event never reached the spool.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DropLabel {
    /// `queue_full` (the accounting thread fell behind), `spool_full` (the size bound),
    /// `spool_error` (the disk failed).
    pub reason: &'static str,
}

impl DropLabel {
    /// The accounting thread fell behind (its queue was full) or is gone.
    pub const QUEUE_FULL: &'static str = "queue_full";
    /// The spool is at its size bound (or the event is larger than it).
    pub const SPOOL_FULL: &'static str = "spool_full";
    /// The spool failed (the disk).
    pub const SPOOL_ERROR: &'static str = "spool_error";
    /// Every reason: each series exists, at 0, from the start.
    pub const ALL: [&'static str; 3] = [Self::QUEUE_FULL, Self::SPOOL_FULL, Self::SPOOL_ERROR];
}

/// Counters and gauges of the pipeline. Clones share the series.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Events appended to the spool.
    pub produced: Counter,
    /// Events the destination acknowledged (removed from the spool).
    pub acknowledged: Counter,
    /// Publish attempts that failed (each is retried).
    pub failed: Counter,
    /// Events lost before the spool, by reason.
    pub dropped: Family<DropLabel, Counter>,
    /// Events in the spool not yet acknowledged.
    pub spool_depth: Gauge,
    /// Bytes the spool holds.
    pub spool_bytes: Gauge,
    /// Events handed to the publisher and not yet acknowledged.
    pub in_flight: Gauge,
    /// From the event's arrival to its acknowledgement, seconds.
    pub latency: Histogram,
    /// Spooled records that did not read back (CRC) and were discarded.
    pub corrupt: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        // Every known reason at 0 from the start: a family without a series is not
        // exposed at all, and the first drop would show up as 1 with no increase.
        let dropped = Family::default();
        for reason in DropLabel::ALL {
            let _ = dropped.get_or_create(&DropLabel { reason });
        }
        Metrics {
            produced: Counter::default(),
            acknowledged: Counter::default(),
            failed: Counter::default(),
            dropped,
            spool_depth: Gauge::default(),
            spool_bytes: Gauge::default(),
            in_flight: Gauge::default(),
            // 0.5 ms to ~65 s: a healthy broker acknowledges in milliseconds, an outage
            // shows up in the top buckets.
            latency: Histogram::new(exponential_buckets(0.0005, 2.0, 18)),
            corrupt: Counter::default(),
        }
    }
}

impl Metrics {
    /// Count an event lost before the spool (`reason`: one of [`DropLabel::ALL`]).
    pub(crate) fn drop(&self, reason: &'static str) {
        debug_assert!(
            DropLabel::ALL.contains(&reason),
            "{reason} not in DropLabel::ALL"
        );
        self.dropped.get_or_create(&DropLabel { reason }).inc();
    }

    /// Register every series under `registry` (the prefix is the caller's).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "accounting_events_produced",
            "Call events and CDRs appended to the spool",
            self.produced.clone(),
        );
        registry.register(
            "accounting_events_acknowledged",
            "Events the destination (Kafka, or the JSON-lines file) acknowledged",
            self.acknowledged.clone(),
        );
        registry.register(
            "accounting_events_failed",
            "Publish attempts that failed and will be retried",
            self.failed.clone(),
        );
        registry.register(
            "accounting_events_dropped",
            "Events lost before reaching the spool, by reason (queue_full, spool_full, spool_error)",
            self.dropped.clone(),
        );
        registry.register(
            "accounting_spool_depth",
            "Events in the spool not yet acknowledged",
            self.spool_depth.clone(),
        );
        registry.register(
            "accounting_spool_bytes",
            "Bytes the spool holds on disk",
            self.spool_bytes.clone(),
        );
        registry.register(
            "accounting_in_flight",
            "Events handed to the publisher, not yet acknowledged",
            self.in_flight.clone(),
        );
        registry.register(
            "accounting_delivery_seconds",
            "From an event's arrival to its acknowledgement",
            self.latency.clone(),
        );
        registry.register(
            "accounting_spool_corrupt_records",
            "Spooled records that failed their CRC when read back, discarded",
            self.corrupt.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_are_exposed_at_zero_from_the_start() {
        let m = Metrics::default();
        let mut registry = Registry::with_prefix("sipcluster");
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for reason in ["queue_full", "spool_full", "spool_error"] {
            let line =
                format!("sipcluster_accounting_events_dropped_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        m.drop(DropLabel::SPOOL_FULL);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("sipcluster_accounting_events_dropped_total{reason=\"spool_full\"} 1"),
            "{text}"
        );
    }
}

//! The dispatcher's metrics (`sipcluster_dispatcher_*`). Per-target series are created
//! when a target joins and removed when it leaves; the relay keeps each target's handles,
//! so the hot path never builds a label set.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A target (edge or destination-set member).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabel {
    /// `edge` or the destination set's name.
    pub set: String,
    /// The target id (pod name or address).
    pub target: String,
}

/// A probe outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabel {
    /// `edge` or the destination set's name.
    pub set: String,
    /// The target id.
    pub target: String,
    /// `ok`, `failed` (503 or transport error) or `timeout`.
    pub result: &'static str,
}

/// Why a message was not relayed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Short reason.
    pub reason: &'static str,
}

/// Every `reason` of [`Metrics::dropped`] (the relay's `drop` calls): each series exists,
/// at 0, from the start.
pub const DROP_REASONS: [&str; 16] = [
    "bad_hidden",
    "bad_next_via",
    "bad_probe_branch",
    "bad_route",
    "bad_via",
    "failover_table_full",
    "foreign_via",
    "hiding_failed",
    "next_via_dead_edge",
    "next_via_not_an_edge",
    "no_edge",
    "no_next_via",
    "not_an_edge",
    "response_from_previous_target",
    "scanner",
    "send_failed",
];

/// Every status the dispatcher answers with itself ([`Metrics::replies`]): 200 and 503
/// to OPTIONS for itself (503 also when no target can take a request), 400 malformed,
/// 403 and 404 on the internal side, 416 a SIPS request that came in the clear, 430 flow
/// failed, 480 no edge left for a failover or no TLS way to a SIPS target, 483
/// Max-Forwards exhausted. Each series exists, at 0, from the start.
pub const REPLY_STATUSES: [u16; 9] = [200, 400, 403, 404, 416, 430, 480, 483, 503];

/// A stateless answer the dispatcher gave itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// The status code.
    pub status: u16,
}

/// Direction of relayed traffic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `inbound` (client → edge) or `outbound` (edge → client or destination).
    pub direction: &'static str,
    /// `request` or `response`.
    pub kind: &'static str,
}

/// Every dispatcher metric.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Requests sent to each target (first attempts and failovers).
    pub target_requests: Family<TargetLabel, Counter>,
    /// Requests moved away from a target (503, transport error, dead target).
    pub failovers: Family<TargetLabel, Counter>,
    /// Probe results per target.
    pub probes: Family<ProbeLabel, Counter>,
    /// Round-trip time of answered probes per target, s.
    pub probe_duration: Family<TargetLabel, Histogram>,
    /// 1 while a target takes new dialogs, 0 otherwise.
    pub target_up: Family<TargetLabel, Gauge>,
    /// 1 while a target is draining.
    pub target_draining: Family<TargetLabel, Gauge>,
    /// Relayed messages.
    pub relayed: Family<DirectionLabel, Counter>,
    /// Messages dropped, by reason.
    pub dropped: Family<ReasonLabel, Counter>,
    /// Stateless answers by status (503 no target, 483, 430, 403, 400).
    pub replies: Family<StatusLabel, Counter>,
    /// Client connections held.
    pub flows: Gauge,
    /// Requests remembered for failover.
    pub failover_entries: Gauge,
    /// Responses relayed past an edge that died (to the client, skipping its hop).
    pub rescued: Counter,
}

fn probe_histogram() -> Histogram {
    // 100 µs .. ~1.6 s: a healthy edge in the same cluster answers within a millisecond;
    // the probe timeout is a few seconds.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Metrics {
        // The closed label sets at 0 from the start: a family without a series is not
        // exposed at all, and a first event would show up as 1 with no increase.
        let dropped = Family::default();
        for reason in DROP_REASONS {
            let _ = dropped.get_or_create(&ReasonLabel { reason });
        }
        let replies = Family::default();
        for status in REPLY_STATUSES {
            let _ = replies.get_or_create(&StatusLabel { status });
        }
        Metrics {
            target_requests: Family::default(),
            failovers: Family::default(),
            probes: Family::default(),
            probe_duration: Family::new_with_constructor(probe_histogram),
            target_up: Family::default(),
            target_draining: Family::default(),
            relayed: Family::default(),
            dropped,
            replies,
            flows: Gauge::default(),
            failover_entries: Gauge::default(),
            rescued: Counter::default(),
        }
    }
}

impl Metrics {
    /// Register every family under `dispatcher_` (the caller's registry adds `sipcluster_`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("dispatcher");
        r.register(
            "target_requests",
            "Requests relayed to each target",
            self.target_requests.clone(),
        );
        r.register(
            "failovers",
            "Requests moved from a target to the next in hash order",
            self.failovers.clone(),
        );
        r.register("probes", "OPTIONS probe results", self.probes.clone());
        r.register(
            "probe_duration_seconds",
            "Round-trip time of answered OPTIONS probes (any final status), per target",
            self.probe_duration.clone(),
        );
        r.register(
            "target_up",
            "1 while the target takes new dialogs",
            self.target_up.clone(),
        );
        r.register(
            "target_draining",
            "1 while the target is draining",
            self.target_draining.clone(),
        );
        r.register("relayed", "Messages relayed", self.relayed.clone());
        r.register(
            "dropped",
            "Messages dropped, by reason",
            self.dropped.clone(),
        );
        r.register(
            "replies",
            "Responses the dispatcher generated itself",
            self.replies.clone(),
        );
        r.register("flows", "Client connections held", self.flows.clone());
        r.register(
            "responses_rescued",
            "Responses relayed to the client past an edge that died",
            self.rescued.clone(),
        );
        r.register(
            "failover_entries",
            "Requests remembered until their first response, for failover",
            self.failover_entries.clone(),
        );
    }

    pub(crate) fn drop(&self, reason: &'static str) {
        debug_assert!(
            DROP_REASONS.contains(&reason),
            "{reason} not in DROP_REASONS"
        );
        self.dropped.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub(crate) fn reply(&self, status: u16) {
        debug_assert!(
            REPLY_STATUSES.contains(&status),
            "{status} not in REPLY_STATUSES"
        );
        self.replies.get_or_create(&StatusLabel { status }).inc();
    }
}

/// The metric handles of one target, kept with it.
#[derive(Clone, Debug)]
pub(crate) struct TargetMetrics {
    pub requests: Counter,
    pub failovers: Counter,
    pub up: Gauge,
    pub draining: Gauge,
    pub probe_ok: Counter,
    pub probe_failed: Counter,
    pub probe_timeout: Counter,
    pub probe_duration: Histogram,
}

impl TargetMetrics {
    pub fn new(m: &Metrics, set: &str, target: &str) -> TargetMetrics {
        let l = TargetLabel {
            set: set.to_owned(),
            target: target.to_owned(),
        };
        let probe = |result| {
            m.probes
                .get_or_create(&ProbeLabel {
                    set: set.to_owned(),
                    target: target.to_owned(),
                    result,
                })
                .clone()
        };
        TargetMetrics {
            requests: m.target_requests.get_or_create(&l).clone(),
            failovers: m.failovers.get_or_create(&l).clone(),
            up: m.target_up.get_or_create(&l).clone(),
            draining: m.target_draining.get_or_create(&l).clone(),
            probe_ok: probe("ok"),
            probe_failed: probe("failed"),
            probe_timeout: probe("timeout"),
            probe_duration: m.probe_duration.get_or_create(&l).clone(),
        }
    }

    /// Drop the series of a target that left.
    pub fn remove(m: &Metrics, set: &str, target: &str) {
        let l = TargetLabel {
            set: set.to_owned(),
            target: target.to_owned(),
        };
        m.target_requests.remove(&l);
        m.failovers.remove(&l);
        m.target_up.remove(&l);
        m.target_draining.remove(&l);
        m.probe_duration.remove(&l);
        for result in ["ok", "failed", "timeout"] {
            m.probes.remove(&ProbeLabel {
                set: set.to_owned(),
                target: target.to_owned(),
                result,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: [&str; 8] = [
        include_str!("relay/mod.rs"),
        include_str!("relay/failover.rs"),
        include_str!("relay/internal.rs"),
        include_str!("relay/probes.rs"),
        include_str!("relay/public.rs"),
        include_str!("relay/responses.rs"),
        include_str!("relay/stamps.rs"),
        include_str!("relay/targets.rs"),
    ];

    /// The lists and the relay's `drop("...")` and `self.reply(.., status, ..)` calls
    /// name the same values (the statuses of the parse-error path are 400: a Via that
    /// cannot be read).
    #[test]
    fn the_lists_are_what_the_relay_uses() {
        let (mut reasons, mut statuses) = (Vec::new(), Vec::new());
        for src in RELAY {
            for (i, m) in src.match_indices(".drop(\"") {
                let rest = &src[i + m.len()..];
                reasons.push(&rest[..rest.find('"').unwrap()]);
            }
            for (i, m) in src.match_indices("self.reply(") {
                // (side, msg, source, status, extra): a literal status (`status`, a
                // variable, is 200 or 503).
                let arg = src[i + m.len()..].split(',').nth(3).unwrap().trim();
                if let Ok(status) = arg.parse::<u16>() {
                    statuses.push(status);
                }
            }
        }
        reasons.sort_unstable();
        reasons.dedup();
        statuses.sort_unstable();
        statuses.dedup();
        assert_eq!(reasons, DROP_REASONS);
        assert_eq!(statuses, REPLY_STATUSES);
    }

    #[test]
    fn closed_label_sets_are_exposed_at_zero_from_the_start() {
        let m = Metrics::default();
        let mut registry = Registry::with_prefix("sipcluster");
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for reason in DROP_REASONS {
            let line = format!("sipcluster_dispatcher_dropped_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        for status in REPLY_STATUSES {
            let line = format!("sipcluster_dispatcher_replies_total{{status=\"{status}\"}} 0");
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(
            text.contains("sipcluster_dispatcher_dropped_total{reason=\"scanner\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sipcluster_dispatcher_replies_total{status=\"503\"} 0"),
            "{text}"
        );
    }
}

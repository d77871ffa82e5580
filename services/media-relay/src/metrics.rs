//! The media relay's Prometheus metrics (`sipcluster_media_*`).
//!
//! The forwarding threads count in plain locals and add them here once per wake-up, so
//! the per-packet cost is an integer increment, not an atomic per metric.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

// Labels shared with the other services: a reason (drops, session ends), a packet kind
// (`rtp`, `rtcp`, `stun`, `dtls`, `other`), a control call and its outcome.
pub use telemetry::{CallLabel, KindLabel, ReasonLabel};

/// Labels: the state of port pairs.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabel {
    /// `in_use`, `available` (free or in quarantine).
    pub state: &'static str,
}

/// Labels: the side of a session that sent no media.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SideLabel {
    /// `offerer` (the party whose SDP created the session), `answerer` (every branch
    /// together) or `both`.
    pub side: &'static str,
}

/// Every metric of the relay.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Sessions now.
    pub sessions: Gauge,
    /// Sessions created.
    pub sessions_started: Counter,
    /// Sessions ended, by reason (`deleted`, `idle`, `max_duration`).
    pub sessions_ended: Family<ReasonLabel, Counter>,
    /// Answered sessions that ended with no media from one side, or both, by side.
    pub sessions_without_media: Family<SideLabel, Counter>,
    /// Hijack attempts: a source other than a party's sent to its relay port while its
    /// latched source was active, or was displaced by its signalled address (at most one
    /// per party and media section; the packets are in `dropped{reason="wrong_source"}`).
    pub foreign_sources: Counter,
    /// Datagrams forwarded, by kind.
    pub packets: Family<KindLabel, Counter>,
    /// Bytes forwarded.
    pub bytes: Counter,
    /// Datagrams not forwarded, by reason.
    pub dropped: Family<ReasonLabel, Counter>,
    /// Port pairs by state.
    pub ports: Family<PortLabel, Gauge>,
    /// Control calls by method and outcome.
    pub calls: Family<CallLabel, Counter>,
    /// Per party and media section at session end: sequence-gap loss ratio.
    pub loss: Histogram,
    /// Per party and media section at session end: interarrival jitter, seconds.
    pub jitter: Histogram,
    /// 1 while draining.
    pub draining: Gauge,
    /// The soft `RLIMIT_NOFILE` in force (raised at start to fit the port range, within
    /// the hard limit).
    pub fd_limit: Gauge,
    /// Descriptors the configured port range needs: every port, plus a reserve.
    pub fd_needed: Gauge,
    /// The session cap in force: `max_sessions`, or lower when the descriptor limit is
    /// short of `fd_needed`.
    pub max_sessions: Gauge,
    /// Control calls refused by token authentication.
    pub auth: grpc_auth::AuthMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        // The closed label sets of the counters at 0 from the start: a family without a
        // series is not exposed at all, and a first event would show up as 1 with no
        // increase. (`packets` and `dropped` are created by the forwarding threads.)
        let sessions_ended = Family::default();
        for r in media_core::EndReason::ALL {
            let _ = sessions_ended.get_or_create(&ReasonLabel { reason: r.as_str() });
        }
        let sessions_without_media = Family::default();
        for side in crate::control::SILENT_SIDES {
            let _ = sessions_without_media.get_or_create(&SideLabel { side });
        }
        let calls = Family::default();
        for method in crate::control::CONTROL_METHODS {
            for code in telemetry::GRPC_CODE_NAMES {
                let _ = calls.get_or_create(&CallLabel { method, code });
            }
        }
        Metrics {
            sessions: Gauge::default(),
            sessions_started: Counter::default(),
            sessions_ended,
            sessions_without_media,
            foreign_sources: Counter::default(),
            packets: Family::default(),
            bytes: Counter::default(),
            dropped: Family::default(),
            ports: Family::default(),
            calls,
            loss: Histogram::new([0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]),
            // Seconds, as Prometheus names units (promtool refuses `_ms`): 1 ms to 200 ms.
            jitter: Histogram::new([0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2]),
            draining: Gauge::default(),
            fd_limit: Gauge::default(),
            fd_needed: Gauge::default(),
            max_sessions: Gauge::default(),
            auth: grpc_auth::AuthMetrics::default(),
        }
    }
}

impl Metrics {
    /// Register every metric under `sipcluster_media_` (and the authentication
    /// refusals as `sipcluster_grpc_auth_rejected`, the name every API uses).
    pub fn register(&self, root: &mut Registry) {
        self.auth
            .register(root.sub_registry_with_prefix("sipcluster"));
        let r = root.sub_registry_with_prefix("sipcluster_media");
        r.register("sessions", "Sessions now", self.sessions.clone());
        r.register(
            "sessions_started",
            "Sessions created",
            self.sessions_started.clone(),
        );
        r.register(
            "sessions_ended",
            "Sessions ended, by reason",
            self.sessions_ended.clone(),
        );
        r.register(
            "sessions_without_media",
            "Answered sessions that ended with no media from one side (offerer, answerer) or both",
            self.sessions_without_media.clone(),
        );
        r.register(
            "foreign_sources",
            "Foreign sources sending to a party's relay port (hijack attempts), once per party and media section",
            self.foreign_sources.clone(),
        );
        r.register(
            "packets",
            "Datagrams forwarded, by kind",
            self.packets.clone(),
        );
        r.register("bytes", "Bytes forwarded", self.bytes.clone());
        r.register(
            "dropped",
            "Datagrams not forwarded, by reason",
            self.dropped.clone(),
        );
        r.register("port_pairs", "Port pairs by state", self.ports.clone());
        r.register(
            "control_calls",
            "Control calls by method and outcome",
            self.calls.clone(),
        );
        r.register(
            "loss_ratio",
            "Sequence-gap loss ratio per party and media section, at session end",
            self.loss.clone(),
        );
        r.register(
            "jitter_seconds",
            "Interarrival jitter (RFC 3550) per party and media section at session end, seconds",
            self.jitter.clone(),
        );
        r.register("draining", "1 while draining", self.draining.clone());
        r.register(
            "fd_limit",
            "The soft RLIMIT_NOFILE in force (raised at start to fit the port range, within the hard limit)",
            self.fd_limit.clone(),
        );
        r.register(
            "fd_needed",
            "Descriptors the configured port range needs: every port plus a reserve",
            self.fd_needed.clone(),
        );
        r.register(
            "max_sessions",
            "The session cap in force (configured, or lowered when fd_limit is short of fd_needed)",
            self.max_sessions.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_label_sets_are_exposed_at_zero_from_the_start() {
        let m = Metrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let mut lines = Vec::new();
        for reason in ["deleted", "idle", "max_duration"] {
            lines.push(format!(
                "sipcluster_media_sessions_ended_total{{reason=\"{reason}\"}} 0"
            ));
        }
        for side in ["offerer", "answerer", "both"] {
            lines.push(format!(
                "sipcluster_media_sessions_without_media_total{{side=\"{side}\"}} 0"
            ));
        }
        for method in ["offer", "answer", "delete", "query"] {
            for code in [
                "ok",
                "invalid_argument",
                "not_found",
                "resource_exhausted",
                "unavailable",
            ] {
                lines.push(format!(
                    "sipcluster_media_control_calls_total{{method=\"{method}\",code=\"{code}\"}} 0"
                ));
            }
        }
        lines.push("sipcluster_grpc_auth_rejected_total{reason=\"unknown_token\"} 0".to_owned());
        for line in lines {
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }
}

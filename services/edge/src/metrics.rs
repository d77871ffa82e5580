//! The edge's Prometheus metrics and the small HTTP server that exposes them with the
//! health endpoints.

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sip_transport::TransportMetrics;

// Labels shared with the other services: request method (the well-known ones;
// everything else is `other` so a peer cannot grow the label set), auth failure reason,
// which transactions (`server` or `client`).
pub use telemetry::{KindLabel, MethodLabel, ReasonLabel};

/// Labels: response class.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// `1xx` ... `6xx`.
    pub class: &'static str,
}

/// The methods with their own label value; everything else is `other` so a peer cannot
/// grow the label set. The index into this table is the hot-path handle.
pub const METHODS: [&str; 15] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "REGISTER",
    "OPTIONS",
    "INFO",
    "UPDATE",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "MESSAGE",
    "PUBLISH",
    "other",
];

/// Index of a method's label in [`METHODS`].
pub fn method_index(m: &str) -> usize {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|k| *k == m)
        .unwrap_or(METHODS.len() - 1)
}

/// Map a method to a bounded label.
pub fn method_label(m: &str) -> &'static str {
    METHODS[method_index(m)]
}

/// Map a status code to its class label.
pub fn class_label(code: u16) -> &'static str {
    match code / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "6xx",
    }
}

/// Every edge metric.
#[derive(Debug, Clone)]
pub struct EdgeMetrics {
    /// Requests received (new transactions and ACKs), by method.
    pub requests: Family<MethodLabel, Counter>,
    /// Final and provisional responses this edge sent upstream (generated or relayed),
    /// by class.
    pub responses: Family<ClassLabel, Counter>,
    /// Live transactions.
    pub transactions: Family<KindLabel, Gauge>,
    /// Live registrations (bindings) in the location store.
    pub registrations: Gauge,
    /// Authentication failures, by reason.
    pub auth_failures: Family<ReasonLabel, Counter>,
    /// Seconds from receiving a request to sending its final response, by method.
    pub request_duration: Family<MethodLabel, Histogram>,
    /// Requests refused because the location or subscriber store was unavailable.
    pub store_unavailable: Counter,
    /// Calls whose media a relay anchored (new sessions).
    pub media_anchored: Counter,
    /// Relay calls that failed (the call got 503 or passed untouched, by configuration).
    pub media_failures: Counter,
    /// Requests that parsed but failed validation (answered 4xx/5xx statelessly), by kind.
    pub invalid_requests: Family<ReasonLabel, Counter>,
    /// Responses from downstream dropped as unroutable (no Via left below ours).
    pub bad_responses: Counter,
    /// Transport metrics (registered with the rest).
    pub transport: TransportMetrics,
    hot: Arc<Hot>,
}

/// Per-label handles resolved once: a `Family` lookup takes a lock and SipHashes the
/// label set, which showed up at several percent of a REGISTER's CPU. Handles share
/// their value with the family, so the exposition is unchanged; they are created on
/// first use so unused methods do not add empty series.
#[derive(Debug, Default)]
struct Hot {
    requests: [OnceLock<Counter>; METHODS.len()],
    durations: [OnceLock<Histogram>; METHODS.len()],
    responses: [OnceLock<Counter>; 6],
    txn_server: OnceLock<Gauge>,
    txn_client: OnceLock<Gauge>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~33 s: local replies take microseconds, rung calls tens of seconds.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 17,
    ))
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        EdgeMetrics {
            requests: Family::default(),
            responses: Family::default(),
            transactions: Family::default(),
            registrations: Gauge::default(),
            auth_failures: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            store_unavailable: Counter::default(),
            media_anchored: Counter::default(),
            media_failures: Counter::default(),
            bad_responses: Counter::default(),
            invalid_requests: Family::default(),
            transport: TransportMetrics::default(),
            hot: Arc::default(),
        }
    }
}

impl EdgeMetrics {
    /// Count a request by its [`METHODS`] index.
    pub fn count_request(&self, method: usize) {
        let m = method.min(METHODS.len() - 1);
        self.hot.requests[m]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&MethodLabel { method: METHODS[m] })
                    .clone()
            })
            .inc();
    }

    /// Count a response sent upstream.
    pub fn count_response(&self, code: u16) {
        let class = class_label(code);
        // The same bucketing as `class_label` (anything outside 1xx-5xx is 6xx), so a slot
        // is only ever bound to its own label.
        let i = match code / 100 {
            c @ 1..=5 => usize::from(c) - 1,
            _ => 5,
        };
        self.hot.responses[i]
            .get_or_init(|| self.responses.get_or_create(&ClassLabel { class }).clone())
            .inc();
    }

    /// Record a request's time to its final response.
    pub fn observe_duration(&self, method: usize, seconds: f64) {
        let m = method.min(METHODS.len() - 1);
        self.hot.durations[m]
            .get_or_init(|| {
                self.request_duration
                    .get_or_create(&MethodLabel { method: METHODS[m] })
                    .clone()
            })
            .observe(seconds);
    }

    /// Publish the live transaction counts.
    pub fn set_transactions(&self, server: usize, client: usize) {
        self.hot
            .txn_server
            .get_or_init(|| {
                self.transactions
                    .get_or_create(&KindLabel { kind: "server" })
                    .clone()
            })
            .set(server as i64);
        self.hot
            .txn_client
            .get_or_init(|| {
                self.transactions
                    .get_or_create(&KindLabel { kind: "client" })
                    .clone()
            })
            .set(client as i64);
    }

    /// A registry holding every metric, prefixed `sipcluster_`.
    pub fn registry(&self) -> Registry {
        let mut root = Registry::with_prefix("sipcluster");
        let r = &mut root;
        r.register(
            "sip_requests",
            "SIP requests received, by method",
            self.requests.clone(),
        );
        r.register(
            "sip_responses",
            "SIP responses sent upstream, by class",
            self.responses.clone(),
        );
        r.register(
            "sip_transactions_active",
            "Live SIP transactions",
            self.transactions.clone(),
        );
        r.register(
            "sip_registrations_active",
            "Live registrations (bindings)",
            self.registrations.clone(),
        );
        r.register(
            "sip_auth_failures",
            "Digest authentication failures, by reason",
            self.auth_failures.clone(),
        );
        r.register(
            "sip_request_duration_seconds",
            "Time from a request's arrival to its final response, by method",
            self.request_duration.clone(),
        );
        r.register(
            "media_anchored",
            "Calls whose media a relay anchored",
            self.media_anchored.clone(),
        );
        r.register(
            "media_relay_failures",
            "Media relay calls that failed (503 or SDP untouched, by configuration)",
            self.media_failures.clone(),
        );
        r.register(
            "sip_store_unavailable",
            "Requests answered 503 because a store was unavailable",
            self.store_unavailable.clone(),
        );
        r.register(
            "sip_invalid_requests",
            "Requests refused at validation (missing or malformed mandatory headers), by kind",
            self.invalid_requests.clone(),
        );
        r.register(
            "sip_bad_responses",
            "Responses from downstream dropped because no Via was left to route them",
            self.bad_responses.clone(),
        );
        self.transport.register(r);
        root
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
pub use telemetry::serve;

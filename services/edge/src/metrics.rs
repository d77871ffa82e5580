//! The edge's Prometheus metrics and the small HTTP server that exposes them with the
//! health endpoints.

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sip_transport::TransportMetrics;
use telemetry::trace::TraceExemplar;

// Labels shared with the other services: request method (the well-known ones;
// everything else is `other` so a peer cannot grow the label set), auth failure reason,
// which transactions (`server` or `client`).
pub use telemetry::{KindLabel, MethodLabel, ReasonLabel};

/// Labels: a call limit's kind of key and limit.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// `account`, `domain` or `trunk`.
    pub limit: &'static str,
    /// `calls` or `cps`.
    pub by: &'static str,
}

/// Labels: a response's status code and class.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabel {
    /// `1xx` ... `6xx`.
    pub class: &'static str,
    /// The code (`404`) when it is one of [`CODES`], else the class (`4xx`): a peer
    /// cannot grow the label set by inventing codes.
    pub code: &'static str,
}

/// Labels: the destination set (trunk) a call went to: a set's name from the
/// configuration's outbound rules, `local` for calls to registered users and trusted
/// peers, `unrouted` for calls refused before a route was chosen (no such user, forbidden,
/// a store down). Bounded by the configuration, never taken from the wire.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabel {
    /// The destination set.
    pub destination: String,
}

/// Labels: a failed call's destination set and final code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallFailedLabel {
    /// As in [`DestinationLabel`].
    pub destination: String,
    /// `3xx` ... `6xx`.
    pub class: &'static str,
    /// As in [`ResponseLabel`].
    pub code: &'static str,
}

/// The status codes with their own label value: those of RFC 3261 and the extensions a
/// proxy meets (RFC 3265, 3329, 4028, 4412, 5626, 6086, 8599...). Sorted: looked up by
/// binary search.
pub const CODES: [(u16, &str); 72] = [
    (100, "100"),
    (180, "180"),
    (181, "181"),
    (182, "182"),
    (183, "183"),
    (199, "199"),
    (200, "200"),
    (202, "202"),
    (204, "204"),
    (300, "300"),
    (301, "301"),
    (302, "302"),
    (305, "305"),
    (380, "380"),
    (400, "400"),
    (401, "401"),
    (402, "402"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (406, "406"),
    (407, "407"),
    (408, "408"),
    (410, "410"),
    (412, "412"),
    (413, "413"),
    (414, "414"),
    (415, "415"),
    (416, "416"),
    (417, "417"),
    (420, "420"),
    (421, "421"),
    (422, "422"),
    (423, "423"),
    (424, "424"),
    (428, "428"),
    (429, "429"),
    (430, "430"),
    (433, "433"),
    (436, "436"),
    (437, "437"),
    (438, "438"),
    (439, "439"),
    (440, "440"),
    (469, "469"),
    (470, "470"),
    (480, "480"),
    (481, "481"),
    (482, "482"),
    (483, "483"),
    (484, "484"),
    (485, "485"),
    (486, "486"),
    (487, "487"),
    (488, "488"),
    (489, "489"),
    (491, "491"),
    (493, "493"),
    (494, "494"),
    (500, "500"),
    (501, "501"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
    (505, "505"),
    (513, "513"),
    (580, "580"),
    (600, "600"),
    (603, "603"),
    (604, "604"),
    (606, "606"),
    (607, "607"),
];

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

/// The slot of a code in the per-code handles: its index in [`CODES`], or after them one
/// slot per class for the codes without their own label.
fn code_slot(code: u16) -> usize {
    match CODES.binary_search_by_key(&code, |(c, _)| *c) {
        Ok(i) => i,
        Err(_) => CODES.len() + class_index(code),
    }
}

fn class_index(code: u16) -> usize {
    match code / 100 {
        c @ 1..=5 => usize::from(c) - 1,
        _ => 5,
    }
}

/// The label of a status code: itself when listed in [`CODES`], else its class.
pub fn code_label(code: u16) -> &'static str {
    match CODES.binary_search_by_key(&code, |(c, _)| *c) {
        Ok(i) => CODES[i].1,
        Err(_) => class_label(code),
    }
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
    /// by code and class.
    pub responses: Family<ResponseLabel, Counter>,
    /// Live transactions.
    pub transactions: Family<KindLabel, Gauge>,
    /// Live registrations (bindings) in the location store.
    pub registrations: Gauge,
    /// Authentication failures, by reason.
    pub auth_failures: Family<ReasonLabel, Counter>,
    /// Seconds from receiving a request to sending its final response, by method; with
    /// the request's trace as exemplar when it is traced (OpenMetrics).
    pub request_duration: Family<MethodLabel, HistogramWithExemplars<TraceExemplar>>,
    /// Requests refused because the location or subscriber store was unavailable.
    pub store_unavailable: Counter,
    /// Calls whose media a relay anchored (new sessions).
    pub media_anchored: Counter,
    /// Relay calls that failed (the call got 503 or passed untouched, by configuration).
    pub media_failures: Counter,
    /// Media relays that answered the last poll.
    pub media_relays_up: Gauge,
    /// Requests that parsed but failed validation (answered 4xx/5xx statelessly), by kind.
    pub invalid_requests: Family<ReasonLabel, Counter>,
    /// Initial INVITEs forwarded or refused with a final answer (challenges excluded: the
    /// phone asks again), by destination set: the denominator of ASR and NER.
    pub call_attempts: Family<DestinationLabel, Counter>,
    /// Calls answered (their first 2xx), by destination set.
    pub call_answered: Family<DestinationLabel, Counter>,
    /// Calls that ended with a final failure, by destination set, class and code.
    pub call_failed: Family<CallFailedLabel, Counter>,
    /// Seconds from the INVITE to its first 180-199 (post-dial delay), by destination set.
    pub post_dial_delay: Family<DestinationLabel, Histogram>,
    /// Seconds from the INVITE to its 2xx, by destination set.
    pub answer_delay: Family<DestinationLabel, Histogram>,
    /// Responses from downstream dropped as unroutable (no Via left below ours).
    pub bad_responses: Counter,
    /// Requests dropped without an answer: `scanner`, `banned`, `rate_limited`.
    pub dropped_requests: Family<ReasonLabel, Counter>,
    /// Bans started for failed logins: `source` (an address), `user` (an account).
    pub lockouts: Family<ReasonLabel, Counter>,
    /// Sources banned here now (this edge's bans and the cluster's).
    pub banned_sources: Gauge,
    /// Users locked here now.
    pub locked_users: Gauge,
    /// New calls refused over a call limit, by kind of key (`account`, `domain`,
    /// `trunk`) and limit (`calls`, `cps`).
    pub call_limit_refusals: Family<LimitLabel, Counter>,
    /// Call-limit store calls that failed (an admission answered 503; a release or
    /// refresh left to the slots' time-to-live).
    pub call_limit_errors: Counter,
    /// OPTIONS for the proxy itself answered without a transaction.
    pub options_stateless: Counter,
    /// Transport metrics (registered with the rest).
    pub transport: TransportMetrics,
    /// The accounting pipeline's (registered with the rest).
    pub accounting: accounting::Metrics,
    /// Dialog records written at an answer.
    pub dialogs_recorded: Counter,
    /// Dialog records not written (the location service down): such a call is accounted
    /// from its events.
    pub dialog_record_failures: Counter,
    /// CDRs of answered calls (at their BYE, or reaped).
    pub cdrs: Counter,
    /// Dialog records refreshed by a 2xx to a re-INVITE or UPDATE.
    pub dialogs_refreshed: Counter,
    /// Calls ended by the cluster: no BYE and no session refresh in time.
    pub sessions_reaped: Counter,
    /// BYEs with no dialog record to end (a call not answered through the cluster, an
    /// expired record, the location service down): an ended event only.
    pub cdr_without_dialog: Counter,
    hot: Arc<Hot>,
}

/// Per-label handles resolved once: a `Family` lookup takes a lock and SipHashes the
/// label set, which showed up at several percent of a REGISTER's CPU. Handles share
/// their value with the family, so the exposition is unchanged; they are created on
/// first use so unused methods do not add empty series.
#[derive(Debug)]
struct Hot {
    requests: [OnceLock<Counter>; METHODS.len()],
    durations: [OnceLock<HistogramWithExemplars<TraceExemplar>>; METHODS.len()],
    responses: [OnceLock<Counter>; CODES.len() + 6],
    txn_server: OnceLock<Gauge>,
    txn_client: OnceLock<Gauge>,
}

impl Default for Hot {
    fn default() -> Self {
        Hot {
            requests: Default::default(),
            durations: Default::default(),
            // `Default` stops at 32-element arrays.
            responses: std::array::from_fn(|_| OnceLock::new()),
            txn_server: OnceLock::new(),
            txn_client: OnceLock::new(),
        }
    }
}

fn call_setup_histogram() -> Histogram {
    // 50 ms .. ~102 s: a trunk rings within a second or two, a person answers in tens.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.05, 2.0, 12,
    ))
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    // 0.5 ms .. ~33 s: local replies take microseconds, rung calls tens of seconds.
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 17)
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        EdgeMetrics {
            requests: Family::default(),
            responses: Family::default(),
            transactions: Family::default(),
            registrations: Gauge::default(),
            auth_failures: Family::default(),
            request_duration: Family::new_with_constructor(|| {
                HistogramWithExemplars::new(latency_buckets())
            }),
            store_unavailable: Counter::default(),
            accounting: accounting::Metrics::default(),
            dialogs_recorded: Counter::default(),
            dialog_record_failures: Counter::default(),
            cdrs: Counter::default(),
            dialogs_refreshed: Counter::default(),
            sessions_reaped: Counter::default(),
            cdr_without_dialog: Counter::default(),
            call_attempts: Family::default(),
            call_answered: Family::default(),
            call_failed: Family::default(),
            post_dial_delay: Family::new_with_constructor(call_setup_histogram),
            answer_delay: Family::new_with_constructor(call_setup_histogram),
            media_anchored: Counter::default(),
            media_failures: Counter::default(),
            media_relays_up: Gauge::default(),
            bad_responses: Counter::default(),
            invalid_requests: Family::default(),
            dropped_requests: Family::default(),
            lockouts: Family::default(),
            call_limit_refusals: Family::default(),
            banned_sources: Gauge::default(),
            locked_users: Gauge::default(),
            call_limit_errors: Counter::default(),
            options_stateless: Counter::default(),
            transport: TransportMetrics::default(),
            hot: Arc::default(),
        }
        .with_closed_label_sets()
    }
}

impl EdgeMetrics {
    /// Create the series of the families whose label values are a closed set known at
    /// start, at 0: a family without a series is not exposed at all, and a first event
    /// would show up as 1 with no increase. (Not the per-method and per-code families
    /// of the hot handles, created on first use on purpose.)
    fn with_closed_label_sets(self) -> Self {
        let reasons = |f: &Family<ReasonLabel, Counter>, list: &[&'static str]| {
            for &reason in list {
                let _ = f.get_or_create(&ReasonLabel { reason });
            }
        };
        reasons(&self.auth_failures, &sip_auth::FailReason::LABELS);
        reasons(&self.auth_failures, &crate::authenticate::AUTH_FAILURES);
        reasons(&self.dropped_requests, &crate::core::DROP_REASONS);
        let kinds = sip_core::ErrorKind::ALL.map(sip_core::ErrorKind::as_str);
        reasons(&self.invalid_requests, &kinds);
        reasons(&self.lockouts, &crate::guard::Lockout::LABELS);
        for limit in crate::limit::KINDS {
            for by in ["calls", "cps"] {
                let _ = self
                    .call_limit_refusals
                    .get_or_create(&LimitLabel { limit, by });
            }
        }
        self
    }

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
        // A slot is only ever bound to its own label: listed codes have one each, the
        // others share their class's (the same bucketing as `code_label`).
        self.hot.responses[code_slot(code)]
            .get_or_init(|| {
                self.responses
                    .get_or_create(&ResponseLabel {
                        class: class_label(code),
                        code: code_label(code),
                    })
                    .clone()
            })
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
            .observe(seconds, telemetry::trace::exemplar(), None);
    }

    /// A call attempt to `destination` (see [`DestinationLabel`]).
    pub fn call_attempt(&self, destination: &str) {
        self.call_attempts.get_or_create(&dest(destination)).inc();
    }

    /// A call's first ringing, `seconds` after its INVITE.
    pub fn call_ringing(&self, destination: &str, seconds: f64) {
        self.post_dial_delay
            .get_or_create(&dest(destination))
            .observe(seconds);
    }

    /// A call answered `seconds` after its INVITE.
    pub fn call_answered(&self, destination: &str, seconds: f64) {
        let d = dest(destination);
        self.call_answered.get_or_create(&d).inc();
        self.answer_delay.get_or_create(&d).observe(seconds);
    }

    /// A call failed with `code`.
    pub fn call_failed(&self, destination: &str, code: u16) {
        self.call_failed
            .get_or_create(&CallFailedLabel {
                destination: destination.to_owned(),
                class: class_label(code),
                code: code_label(code),
            })
            .inc();
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

    /// Register every metric into `root`, prefixed `sipcluster_`.
    pub fn register(&self, root: &mut Registry) {
        let r = root.sub_registry_with_prefix("sipcluster");
        r.register(
            "sip_requests",
            "SIP requests received, by method",
            self.requests.clone(),
        );
        r.register(
            "sip_responses",
            "SIP responses sent upstream, by code (listed codes; others by class) and class",
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
            "call_attempts",
            "Initial INVITEs forwarded or refused with a final answer (challenges excluded), by destination set",
            self.call_attempts.clone(),
        );
        r.register(
            "call_answered",
            "Calls answered (first 2xx), by destination set",
            self.call_answered.clone(),
        );
        r.register(
            "call_failed",
            "Calls ended by a final failure, by destination set, class and code",
            self.call_failed.clone(),
        );
        r.register(
            "call_post_dial_delay_seconds",
            "Time from an INVITE to its first 180-199 response (post-dial delay), by destination set",
            self.post_dial_delay.clone(),
        );
        r.register(
            "call_answer_delay_seconds",
            "Time from an INVITE to its 2xx, by destination set",
            self.answer_delay.clone(),
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
            "media_relays_up",
            "Media relays that answered the last load poll",
            self.media_relays_up.clone(),
        );
        self.accounting.register(r);
        r.register(
            "accounting_dialogs_recorded",
            "Dialog records written when a call was answered",
            self.dialogs_recorded.clone(),
        );
        r.register(
            "accounting_dialog_record_failures",
            "Dialog records not written at an answer (the location service down)",
            self.dialog_record_failures.clone(),
        );
        r.register(
            "accounting_cdrs",
            "CDRs of answered calls (at their BYE, or reaped)",
            self.cdrs.clone(),
        );
        r.register(
            "accounting_dialogs_refreshed",
            "Dialog records refreshed by a 2xx to a re-INVITE or UPDATE (session refresh)",
            self.dialogs_refreshed.clone(),
        );
        r.register(
            "accounting_sessions_reaped",
            "Calls ended by the cluster with a CDR: no BYE and no session refresh in time",
            self.sessions_reaped.clone(),
        );
        r.register(
            "accounting_bye_without_dialog",
            "BYEs forwarded with no dialog record to end (an ended event only)",
            self.cdr_without_dialog.clone(),
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
        r.register(
            "sip_dropped_requests",
            "Requests dropped without an answer (scanner, banned source, over its rate), by reason",
            self.dropped_requests.clone(),
        );
        r.register(
            "sip_lockouts",
            "Bans started for failed logins, by what was banned (source, user)",
            self.lockouts.clone(),
        );
        r.register(
            "sip_banned_sources",
            "Sources banned on this edge now (flood, failed logins; this edge's bans and the cluster's)",
            self.banned_sources.clone(),
        );
        r.register(
            "sip_locked_users",
            "Users locked on this edge now (failed logins; this edge's locks and the cluster's)",
            self.locked_users.clone(),
        );
        r.register(
            "sip_call_limit_refusals",
            "New calls refused over a cluster-wide call limit, by kind of key (account, domain, trunk) and limit (calls at once, cps)",
            self.call_limit_refusals.clone(),
        );
        r.register(
            "sip_call_limit_errors",
            "Call-limit store calls that failed (an admission answered 503 + Retry-After; a release or refresh left to the slots' time-to-live)",
            self.call_limit_errors.clone(),
        );
        r.register(
            "sip_options_stateless",
            "OPTIONS for the proxy itself answered statelessly (keepalives, health checks)",
            self.options_stateless.clone(),
        );
        self.transport.register(r);
    }
}

fn dest(destination: &str) -> DestinationLabel {
    DestinationLabel {
        destination: destination.to_owned(),
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `listener` until the task is dropped.
pub use telemetry::serve;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_sorted_and_label_themselves() {
        assert!(CODES.windows(2).all(|w| w[0].0 < w[1].0));
        for (c, l) in CODES {
            assert_eq!(l, c.to_string());
            assert_eq!(code_label(c), l);
        }
        assert_eq!(code_label(499), "4xx");
        assert_eq!(code_label(299), "2xx");
        assert_eq!(code_label(999), "6xx");
    }

    #[test]
    fn closed_label_sets_are_exposed_at_zero_from_the_start() {
        let m = EdgeMetrics::default();
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let mut lines = Vec::new();
        for reason in [
            "not_digest",
            "missing_param",
            "invalid_param",
            "realm_mismatch",
            "unknown_algorithm",
            "unsupported_qop",
            "userhash_unsupported",
            "no_credentials_for_algorithm",
            "bad_nonce",
            "uri_mismatch",
            "wrong_response",
            "locked",
            "unknown_user",
            "replay",
            "identity_mismatch",
        ] {
            lines.push(format!(
                "sipcluster_sip_auth_failures_total{{reason=\"{reason}\"}} 0"
            ));
        }
        for reason in ["scanner", "banned", "rate_limited"] {
            lines.push(format!(
                "sipcluster_sip_dropped_requests_total{{reason=\"{reason}\"}} 0"
            ));
        }
        for reason in ["limit", "framing", "start_line", "header", "uri"] {
            lines.push(format!(
                "sipcluster_sip_invalid_requests_total{{reason=\"{reason}\"}} 0"
            ));
            lines.push(format!(
                "sipcluster_sip_transport_parse_errors_total{{kind=\"{reason}\"}} 0"
            ));
        }
        for reason in ["source", "user"] {
            lines.push(format!(
                "sipcluster_sip_lockouts_total{{reason=\"{reason}\"}} 0"
            ));
        }
        lines
            .push("sipcluster_accounting_events_dropped_total{reason=\"spool_full\"} 0".to_owned());
        lines.push(
            "sipcluster_sip_transport_tcp_refused_total{reason=\"connection_limit\"} 0".to_owned(),
        );
        for line in lines {
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        // The hot handles' families still start empty.
        for absent in [
            "sipcluster_sip_requests_total{",
            "sipcluster_sip_responses_total{",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        // Exactly 15 auth failure reasons: `bad_nonce` once.
        assert_eq!(
            text.matches("sipcluster_sip_auth_failures_total{").count(),
            15
        );
    }

    #[test]
    fn responses_are_counted_by_code() {
        let m = EdgeMetrics::default();
        for code in [200, 200, 404, 499, 401] {
            m.count_response(code);
        }
        let mut registry = Registry::default();
        m.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "sipcluster_sip_responses_total{class=\"2xx\",code=\"200\"} 2",
            "sipcluster_sip_responses_total{class=\"4xx\",code=\"404\"} 1",
            "sipcluster_sip_responses_total{class=\"4xx\",code=\"4xx\"} 1",
            "sipcluster_sip_responses_total{class=\"4xx\",code=\"401\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}

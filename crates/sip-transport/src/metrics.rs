//! Transport counters, registered in the caller's Prometheus registry (explicit registries,
//! as in linkerd2-proxy: no global state).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use telemetry::ReasonLabel;

use crate::limits::Refusal;

/// Labels: transport name.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// `udp`, `tcp`, `tls` or `in_process`.
    pub transport: &'static str,
}

/// Labels: parse error class.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    /// `sip_core::ErrorKind::as_str`.
    pub kind: &'static str,
}

/// Every deadline `tcp` closes a connection on (the `reason` of
/// [`TransportMetrics::tcp_timeouts`]): a message not complete in time after its first
/// byte, the peer not taking our bytes in time, no byte at all for the idle timeout.
pub(crate) const TIMEOUT_REASONS: [&str; 3] = ["message_timeout", "write_timeout", "idle_timeout"];

/// One transport's message counters, resolved from their families once: a family lookup
/// locks and SipHashes the label set, too much for every datagram.
#[derive(Debug, Clone)]
pub struct PerTransport {
    /// Messages received.
    pub received: Counter,
    /// Messages sent.
    pub sent: Counter,
}

/// The transport metrics (cheap to clone: every field is a shared handle).
#[derive(Debug, Clone)]
pub struct TransportMetrics {
    /// Messages received, by transport.
    pub received: Family<TransportLabel, Counter>,
    /// Messages sent, by transport.
    pub sent: Family<TransportLabel, Counter>,
    /// Inbound bytes that did not parse, by error class.
    pub parse_errors: Family<ErrorLabel, Counter>,
    /// Requests answered 503 because the core's queue was full.
    pub overload_rejections: Counter,
    /// Sends that failed (connect refused, socket error, closed flow).
    pub send_failures: Counter,
    /// Keep-alives received (CRLF on streams, CRLF-only datagrams).
    pub keepalives: Counter,
    /// Open TCP connections.
    pub connections: Gauge,
    /// New inbound TCP connections closed at once, by the cap they hit
    /// (`connection_limit`, `source_limit`, `descriptor_limit`).
    pub tcp_refused: Family<ReasonLabel, Counter>,
    /// TCP connections we closed on a deadline, by which (`message_timeout`: a message
    /// not complete in time after its first byte; `write_timeout`: the peer did not take
    /// our bytes in time; `idle_timeout`).
    pub tcp_timeouts: Family<ReasonLabel, Counter>,
    /// `accept` failures on the TCP listeners (out of descriptors, mostly).
    pub accept_errors: Counter,
    /// Datagrams and connections from a banned source, dropped on arrival.
    pub blocked: Counter,
    /// The inbound TCP connection cap in force (configured, or lower to fit the
    /// process's descriptor limit).
    pub tcp_max_connections: Gauge,
    /// The queue depth up to which new requests are admitted (see `admission`); -1 while
    /// admission is open (no standing queue).
    pub admission_depth: Gauge,
    /// UDP handles into `received`/`sent`.
    pub udp: PerTransport,
    /// TCP handles into `received`/`sent`.
    pub tcp: PerTransport,
    /// In-process link handles into `received`/`sent` (label `in_process`).
    pub in_process: PerTransport,
    /// TLS handles into `received`/`sent`.
    pub tls: PerTransport,
    /// WebSocket handles into `received`/`sent`.
    pub ws: PerTransport,
    /// Secure WebSocket handles into `received`/`sent`.
    pub wss: PerTransport,
    /// WebSocket upgrades, by result (`ok`, `refused`: not a SIP WebSocket upgrade or an
    /// origin not allowed, `timeout`).
    pub ws_upgrades: Family<ResultLabel, Counter>,
    /// WebSocket connections closed by a close frame, by who (`peer`, `protocol_error`:
    /// we failed it).
    pub ws_closes: Family<ReasonLabel, Counter>,
    /// TLS handshakes of inbound connections, by result (`ok`, `failed`, `timeout`).
    pub tls_handshakes: Family<ResultLabel, Counter>,
    /// Changes of the certificate files, by result (`ok`: in use; `error`: the previous
    /// pair stays).
    pub tls_reloads: Family<ResultLabel, Counter>,
    /// When the TLS certificate in use expires, Unix seconds (0: no TLS, or its date
    /// unreadable).
    pub tls_certificate_expiry: Gauge,
}

/// Labels: an outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The outcome.
    pub result: &'static str,
}

/// Every result of [`TransportMetrics::tls_handshakes`].
pub(crate) const HANDSHAKE_RESULTS: [&str; 3] = ["ok", "failed", "timeout"];
/// Every result of [`TransportMetrics::ws_upgrades`].
pub(crate) const UPGRADE_RESULTS: [&str; 3] = ["ok", "refused", "timeout"];
/// Every reason of [`TransportMetrics::ws_closes`].
pub(crate) const CLOSE_REASONS: [&str; 2] = ["peer", "protocol_error"];
/// Every result of [`TransportMetrics::tls_reloads`].
pub(crate) const RELOAD_RESULTS: [&str; 2] = ["ok", "error"];

impl Default for TransportMetrics {
    fn default() -> Self {
        let received: Family<TransportLabel, Counter> = Family::default();
        let sent: Family<TransportLabel, Counter> = Family::default();
        let per = |transport| PerTransport {
            received: received
                .get_or_create(&TransportLabel { transport })
                .clone(),
            sent: sent.get_or_create(&TransportLabel { transport }).clone(),
        };
        let (udp, tcp, in_process, tls) = (per("udp"), per("tcp"), per("in_process"), per("tls"));
        let (ws, wss) = (per("ws"), per("wss"));
        let results = |all: &[&'static str]| {
            let f: Family<ResultLabel, Counter> = Family::default();
            for &result in all {
                let _ = f.get_or_create(&ResultLabel { result });
            }
            f
        };
        // The closed label sets at 0 from the start: a family without a series is not
        // exposed at all, and a first event would show up as 1 with no increase.
        let parse_errors = Family::default();
        for kind in sip_core::ErrorKind::ALL {
            let _ = parse_errors.get_or_create(&ErrorLabel {
                kind: kind.as_str(),
            });
        }
        let tcp_refused = Family::default();
        for r in Refusal::ALL {
            let _ = tcp_refused.get_or_create(&ReasonLabel { reason: r.label() });
        }
        let tcp_timeouts = Family::default();
        for reason in TIMEOUT_REASONS {
            let _ = tcp_timeouts.get_or_create(&ReasonLabel { reason });
        }
        TransportMetrics {
            received,
            sent,
            parse_errors,
            overload_rejections: Counter::default(),
            send_failures: Counter::default(),
            keepalives: Counter::default(),
            connections: Gauge::default(),
            tcp_refused,
            tcp_timeouts,
            accept_errors: Counter::default(),
            blocked: Counter::default(),
            tcp_max_connections: Gauge::default(),
            admission_depth: {
                let g = Gauge::default();
                g.set(-1);
                g
            },
            udp,
            tcp,
            in_process,
            tls,
            tls_handshakes: results(&HANDSHAKE_RESULTS),
            tls_reloads: results(&RELOAD_RESULTS),
            tls_certificate_expiry: Gauge::default(),
            ws,
            wss,
            ws_upgrades: results(&UPGRADE_RESULTS),
            ws_closes: {
                let f = Family::default();
                for reason in CLOSE_REASONS {
                    let _ = f.get_or_create(&ReasonLabel { reason });
                }
                f
            },
        }
    }
}

impl TransportMetrics {
    /// Count inbound bytes that did not parse, by error class.
    pub fn parse_error(&self, e: &sip_core::Error) {
        self.parse_errors
            .get_or_create(&ErrorLabel {
                kind: e.kind().as_str(),
            })
            .inc();
    }

    /// The message counters of a connection-oriented transport.
    pub(crate) fn per_transport(&self, t: sip_txn::Transport) -> PerTransport {
        match t {
            sip_txn::Transport::Tls => self.tls.clone(),
            sip_txn::Transport::Ws => self.ws.clone(),
            sip_txn::Transport::Wss => self.wss.clone(),
            _ => self.tcp.clone(),
        }
    }

    /// Count an inbound TLS handshake.
    pub(crate) fn tls_handshake(&self, result: &'static str) {
        debug_assert!(HANDSHAKE_RESULTS.contains(&result));
        self.tls_handshakes
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Count a WebSocket upgrade.
    pub(crate) fn ws_upgrade(&self, result: &'static str) {
        debug_assert!(UPGRADE_RESULTS.contains(&result));
        self.ws_upgrades
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Count a WebSocket closed by a close frame.
    pub(crate) fn ws_close(&self, reason: &'static str) {
        debug_assert!(CLOSE_REASONS.contains(&reason));
        self.ws_closes.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Count a change of the certificate files.
    pub(crate) fn tls_reload(&self, result: &'static str) {
        debug_assert!(RELOAD_RESULTS.contains(&result));
        self.tls_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Count a connection refused at a cap.
    pub(crate) fn refused(&self, reason: &'static str) {
        self.tcp_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Count a connection closed on a deadline.
    pub(crate) fn timed_out(&self, reason: &'static str) {
        debug_assert!(
            TIMEOUT_REASONS.contains(&reason),
            "{reason} not in TIMEOUT_REASONS"
        );
        self.tcp_timeouts
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Register every metric under `registry` (prefix is the caller's).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "sip_transport_messages_received",
            "SIP messages received",
            self.received.clone(),
        );
        registry.register(
            "sip_transport_messages_sent",
            "SIP messages sent",
            self.sent.clone(),
        );
        registry.register(
            "sip_transport_parse_errors",
            "Inbound bytes that were not a valid SIP message, by error class",
            self.parse_errors.clone(),
        );
        registry.register(
            "sip_overload_rejections",
            "New requests answered 503 + Retry-After because the proxy core was overloaded (a standing queue: beyond the admission depth; the queue full; or queued past max_queue_delay)",
            self.overload_rejections.clone(),
        );
        registry.register(
            "sip_transport_send_failures",
            "Sends that failed",
            self.send_failures.clone(),
        );
        registry.register(
            "sip_transport_keepalives",
            "Keep-alives received",
            self.keepalives.clone(),
        );
        registry.register(
            "sip_transport_connections",
            "Open TCP connections",
            self.connections.clone(),
        );
        registry.register(
            "sip_transport_tcp_refused",
            "New inbound TCP connections closed at once, by the cap they hit (connection_limit, source_limit, descriptor_limit)",
            self.tcp_refused.clone(),
        );
        registry.register(
            "sip_transport_tcp_timeouts",
            "TCP connections closed on a deadline (message_timeout: a message incomplete too long after its first byte; write_timeout; idle_timeout)",
            self.tcp_timeouts.clone(),
        );
        registry.register(
            "sip_transport_accept_errors",
            "Failed accepts on the TCP listeners (out of file descriptors, mostly); each backs off",
            self.accept_errors.clone(),
        );
        registry.register(
            "sip_transport_blocked",
            "Datagrams and connections from a banned source (a flood, failed logins; this edge's ban or the cluster's), dropped on arrival",
            self.blocked.clone(),
        );
        registry.register(
            "sip_admission_depth",
            "How deep the core's queue may be for a new request that is neither in a dialog nor carries credentials (-1: no standing queue, all admitted)",
            self.admission_depth.clone(),
        );
        registry.register(
            "sip_transport_tls_handshakes",
            "TLS handshakes of inbound connections, by result (ok, failed: refused or broken, timeout: not done within the handshake timeout)",
            self.tls_handshakes.clone(),
        );
        registry.register(
            "sip_transport_tls_certificate_expiry_timestamp_seconds",
            "When the TLS certificate in use expires (its notAfter), Unix time; 0 without TLS",
            self.tls_certificate_expiry.clone(),
        );
        registry.register(
            "sip_transport_tls_certificate_reloads",
            "Changes of the TLS certificate or key file, by result (ok: new connections use it; error: it did not load and the previous pair stays in use)",
            self.tls_reloads.clone(),
        );
        registry.register(
            "sip_transport_ws_upgrades",
            "WebSocket upgrades (RFC 7118), by result (ok; refused: not a SIP WebSocket upgrade, or an origin not allowed; timeout)",
            self.ws_upgrades.clone(),
        );
        registry.register(
            "sip_transport_ws_closes",
            "WebSocket connections ended by a close frame, by reason (peer: the client closed; protocol_error: we failed the connection)",
            self.ws_closes.clone(),
        );
        registry.register(
            "sip_transport_tcp_max_connections",
            "The inbound TCP connection cap in force (configured, or lowered to fit RLIMIT_NOFILE)",
            self.tcp_max_connections.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tcp` closes connections on these deadlines and no other.
    #[test]
    fn timeout_reasons_are_what_tcp_uses() {
        let src = include_str!("tcp.rs");
        // Every string literal `"..._timeout"` (a word: lowercase and `_`).
        let mut used: Vec<&str> = src
            .match_indices("_timeout\"")
            .filter_map(|(i, m)| {
                let word = src[..i].rfind(|c: char| !(c.is_ascii_lowercase() || c == '_'))?;
                (src.as_bytes()[word] == b'"').then(|| &src[word + 1..i + m.len() - 1])
            })
            .collect();
        used.sort_unstable();
        used.dedup();
        let mut listed = TIMEOUT_REASONS.to_vec();
        listed.sort_unstable();
        assert_eq!(used, listed);
    }

    #[test]
    fn closed_label_sets_are_exposed_at_zero_from_the_start() {
        let m = TransportMetrics::default();
        let mut registry = Registry::with_prefix("sipcluster");
        m.register(&mut registry);
        // A dispatcher's copy, as it registers its two (the constant label first).
        let d = TransportMetrics::default();
        let dr = registry.sub_registry_with_prefix("dispatcher");
        d.register(dr.sub_registry_with_label(("side".into(), "public".into())));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let mut lines = Vec::new();
        for kind in ["limit", "framing", "start_line", "header", "uri"] {
            lines.push(format!(
                "sipcluster_sip_transport_parse_errors_total{{kind=\"{kind}\"}} 0"
            ));
            lines.push(format!(
                "sipcluster_dispatcher_sip_transport_parse_errors_total{{side=\"public\",kind=\"{kind}\"}} 0"
            ));
        }
        for reason in ["connection_limit", "source_limit", "descriptor_limit"] {
            lines.push(format!(
                "sipcluster_sip_transport_tcp_refused_total{{reason=\"{reason}\"}} 0"
            ));
            lines.push(format!(
                "sipcluster_dispatcher_sip_transport_tcp_refused_total{{side=\"public\",reason=\"{reason}\"}} 0"
            ));
        }
        for reason in ["message_timeout", "write_timeout", "idle_timeout"] {
            lines.push(format!(
                "sipcluster_sip_transport_tcp_timeouts_total{{reason=\"{reason}\"}} 0"
            ));
            lines.push(format!(
                "sipcluster_dispatcher_sip_transport_tcp_timeouts_total{{side=\"public\",reason=\"{reason}\"}} 0"
            ));
        }
        for result in ["ok", "failed", "timeout"] {
            lines.push(format!(
                "sipcluster_sip_transport_tls_handshakes_total{{result=\"{result}\"}} 0"
            ));
        }
        for result in ["ok", "refused", "timeout"] {
            lines.push(format!(
                "sipcluster_sip_transport_ws_upgrades_total{{result=\"{result}\"}} 0"
            ));
        }
        for reason in ["peer", "protocol_error"] {
            lines.push(format!(
                "sipcluster_sip_transport_ws_closes_total{{reason=\"{reason}\"}} 0"
            ));
        }
        for result in ["ok", "error"] {
            lines.push(format!(
                "sipcluster_sip_transport_tls_certificate_reloads_total{{result=\"{result}\"}} 0"
            ));
        }
        for line in lines {
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }
}

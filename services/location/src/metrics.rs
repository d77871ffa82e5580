//! The location service's Prometheus metrics: one set per service, owned by it and
//! registered into the registry its `/metrics` serves. The backend registers its own
//! (the Redis backend's compare-and-set conflicts) through [`crate::Backend::register_metrics`].

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use telemetry::trace::TraceExemplar;

// Labels of a gRPC call (the method and the status code's name) and of an RPC name.
pub use telemetry::{CallLabel, MethodLabel};

/// Labels: a REGISTER's result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok`, `refused` or `unavailable`.
    pub result: &'static str,
}

/// Every metric of the service.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Calls by method and outcome.
    pub calls: Family<CallLabel, Counter>,
    /// Call latency by method; with the call's trace as exemplar when it is traced
    /// (OpenMetrics).
    pub duration: Family<MethodLabel, HistogramWithExemplars<TraceExemplar>>,
    /// REGISTERs applied, single or in batches, by result (`ok`, `refused`, `unavailable`).
    pub registers: Family<ResultLabel, Counter>,
    /// REGISTER outcomes refused by the rules, by status.
    pub refused: Family<CallLabel, Counter>,
    /// 1 while the backend answers pings.
    pub backend_up: Gauge,
    /// AORs with live bindings (from the periodic count).
    pub aors: Gauge,
    /// Live bindings (from the periodic count).
    pub bindings: Gauge,
    /// Provisioned users (from the periodic count).
    pub users: Gauge,
    /// Calls in progress: dialog records not ended (from the periodic count).
    pub dialogs_active: Gauge,
    /// Open WatchBindings streams.
    pub watchers: Gauge,
    /// 1 while the store is known whole (its provisioning marker is there).
    pub data_intact: Gauge,
    /// Losses of the store's data noticed (the provisioning marker gone).
    pub data_losses: Counter,
}

fn buckets() -> impl Iterator<Item = f64> {
    [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    ]
    .into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        // The closed label sets of the counters at 0 from the start: a family without a
        // series is not exposed at all, and a first event would show up as 1 with no
        // increase. (Not the duration histograms: an empty one adds series, no signal.)
        use crate::server::{METHODS, REFUSED_CODES, REFUSED_OTHER, REGISTER_RESULTS};
        let calls = Family::default();
        for method in METHODS {
            for code in telemetry::GRPC_CODE_NAMES {
                let _ = calls.get_or_create(&CallLabel { method, code });
            }
        }
        let registers = Family::default();
        for result in REGISTER_RESULTS {
            let _ = registers.get_or_create(&ResultLabel { result });
        }
        let refused = Family::default();
        for code in REFUSED_CODES
            .map(|(_, c)| c)
            .into_iter()
            .chain([REFUSED_OTHER])
        {
            let _ = refused.get_or_create(&CallLabel {
                method: "Register",
                code,
            });
        }
        Metrics {
            calls,
            duration: Family::new_with_constructor(|| HistogramWithExemplars::new(buckets())),
            refused,
            registers,
            backend_up: Gauge::default(),
            aors: Gauge::default(),
            bindings: Gauge::default(),
            users: Gauge::default(),
            dialogs_active: Gauge::default(),
            watchers: Gauge::default(),
            data_intact: {
                let g = Gauge::default();
                g.set(1);
                g
            },
            data_losses: Counter::default(),
        }
    }
}

impl Metrics {
    /// The prefix of every location metric.
    pub const PREFIX: &'static str = "sipcluster_location";

    /// Register every metric into `root`, prefixed [`Self::PREFIX`].
    pub fn register(&self, root: &mut Registry) {
        let r = root.sub_registry_with_prefix(Self::PREFIX);
        r.register(
            "grpc_calls",
            "gRPC calls by method and status code",
            self.calls.clone(),
        );
        r.register(
            "grpc_call_duration_seconds",
            "gRPC call handling time by method (backend included)",
            self.duration.clone(),
        );
        r.register(
            "registers",
            "REGISTERs handled (alone or in batches) by result: ok, refused, unavailable",
            self.registers.clone(),
        );
        r.register(
            "register_refused",
            "REGISTERs refused by the registrar rules, by status code",
            self.refused.clone(),
        );
        r.register(
            "backend_up",
            "1 while the storage backend answers",
            self.backend_up.clone(),
        );
        r.register("aors", "AORs with live bindings", self.aors.clone());
        r.register("bindings", "Live bindings", self.bindings.clone());
        r.register("users", "Provisioned users", self.users.clone());
        r.register(
            "dialogs_active",
            "Calls in progress: dialog records not ended or reaped (from the periodic count)",
            self.dialogs_active.clone(),
        );
        r.register(
            "watchers",
            "Open WatchBindings streams",
            self.watchers.clone(),
        );
        r.register(
            "data_intact",
            "1 while the store is known whole (provisioning marker present); 0 after a loss until reprovisioned",
            self.data_intact.clone(),
        );
        r.register(
            "data_losses",
            "Losses of the store's data noticed (provisioning marker gone: Redis restarted empty or flushed)",
            self.data_losses.clone(),
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
        for result in ["ok", "refused", "unavailable"] {
            lines.push(format!(
                "sipcluster_location_registers_total{{result=\"{result}\"}} 0"
            ));
        }
        for code in ["400", "403", "416", "423", "500", "other"] {
            lines.push(format!(
                "sipcluster_location_register_refused_total{{method=\"Register\",code=\"{code}\"}} 0"
            ));
        }
        for method in ["Register", "Lookup", "TerminateDialog"] {
            for code in ["ok", "unavailable", "aborted", "other"] {
                lines.push(format!(
                    "sipcluster_location_grpc_calls_total{{method=\"{method}\",code=\"{code}\"}} 0"
                ));
            }
        }
        for line in lines {
            assert!(text.contains(&line), "{line} in\n{text}");
        }
        assert!(
            !text.contains("sipcluster_location_grpc_call_duration_seconds_count{"),
            "no empty histograms: {text}"
        );
    }
}

//! OpenTelemetry traces: off unless an OTLP endpoint is given, sampled by ratio.
//!
//! Spans are `tracing` spans; [`layer`] turns them into OpenTelemetry spans exported over
//! OTLP/gRPC. A trace crosses the cluster's hops in two carriers, both the W3C
//! `traceparent` form (`00-<trace id>-<span id>-<flags>`):
//!
//! * SIP, dispatcher → edge: the `X-Sipcluster-Trace` header (`dispatch_core::TRACE_HEADER`),
//!   added by the dispatcher on the internal side only and removed by whoever sends a
//!   message on (the dispatcher also removes one arriving from outside: a client does not
//!   choose our parents). It carries unsampled contexts too, so the edge follows the
//!   dispatcher's decision instead of drawing its own;
//! * gRPC, edge → location service and media relay: the `traceparent` metadata entry
//!   ([`inject_grpc`], [`parent_from_http`]), for sampled traces only: a server makes a
//!   span for a call that carries one, and none otherwise.
//!
//! The entry point (the dispatcher, or an edge reached directly) draws the ratio once per
//! request ([`sample`]) before making any span; the dispatcher tells the edge either way
//! ([`UNSAMPLED`] when not), so a trace is whole or absent and an untraced request costs
//! no span at any hop. With no endpoint configured nothing here runs: the
//! services check [`enabled`] before making a span.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::ConfigError;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// The sample ratio as `u64` bits of an `f64`.
static RATIO: AtomicU64 = AtomicU64::new(0);

/// The `traceparent` an entry point sends on for a request it does not trace: the next
/// hop follows the decision (no span there either) instead of drawing its own. The ids
/// are all zero (no trace); only the flags are read.
pub const UNSAMPLED: &str = "00-00000000000000000000000000000000-0000000000000000-00";

/// Draw the sample ratio for a request entering the cluster (the dispatcher, or an edge
/// reached directly): whether to trace it. Decided before any span is made, so an
/// untraced request costs no span anywhere.
pub fn sample() -> bool {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x9e37_79b9_7f4a_7c15);
            h.finish() | 1
        });
    }
    if !enabled() {
        return false;
    }
    let ratio = f64::from_bits(RATIO.load(Ordering::Relaxed));
    if ratio >= 1.0 {
        return true;
    }
    // SplitMix64: a draw is a few instructions; no cryptographic quality needed.
    let x = STATE.with(|s| {
        let v = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(v);
        let mut z = v;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    });
    ((x >> 11) as f64) / ((1u64 << 53) as f64) < ratio
}

/// Whether a `traceparent` value says its trace is sampled (its flags' low bit).
pub fn is_sampled(traceparent: &str) -> bool {
    traceparent
        .trim()
        .rsplit('-')
        .next()
        .and_then(|f| u8::from_str_radix(f, 16).ok())
        .is_some_and(|f| f & 1 == 1)
}

/// Whether spans are exported (an endpoint was configured): the hot paths make no span
/// otherwise.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The gRPC metadata key (W3C Trace Context).
pub const GRPC_KEY: &str = "traceparent";

/// Where traces go and how many.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraceSettings {
    /// The OTLP/gRPC collector, `http://host:4317`; unset: no traces (the default).
    pub otlp_endpoint: Option<String>,
    /// The share of requests traced, 0 to 1, drawn where a request enters the cluster;
    /// every later hop follows that decision.
    pub sample_ratio: f64,
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            otlp_endpoint: None,
            sample_ratio: 0.01,
        }
    }
}

impl TraceSettings {
    /// What is wrong with these settings, refused at start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::new(
                "tracing.sample_ratio",
                format!("{}: between 0 and 1", self.sample_ratio),
            ));
        }
        if let Some(e) = &self.otlp_endpoint {
            let ok = (e.starts_with("http://") || e.starts_with("https://"))
                && e.parse::<http::Uri>().is_ok_and(|u| u.host().is_some());
            if !ok {
                return Err(ConfigError::new(
                    "tracing.otlp_endpoint",
                    format!("{e:?}: an OTLP/gRPC URL such as http://otel-collector:4317"),
                ));
            }
        }
        Ok(())
    }
}

/// Keeps the exporter running; dropping it flushes what is buffered (at exit).
pub struct TraceGuard {
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for TraceGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TraceGuard")
    }
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }
}

/// The layer turning `tracing` spans into exported OpenTelemetry spans, when `settings`
/// name an endpoint; `service` is the `service.name` of the resource.
pub fn layer<S>(
    settings: &TraceSettings,
    service: &str,
) -> Result<Option<(impl tracing_subscriber::Layer<S>, TraceGuard)>, ConfigError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    settings.validate()?;
    let Some(endpoint) = &settings.otlp_endpoint else {
        return Ok(None);
    };
    let exporter = OnOwnRuntime::new(endpoint)?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // The ratio is drawn by the entry points ([`sample`]) before any span is made;
        // a span made is a span kept, and its children follow it.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("sipcluster");
    // Our spans are at `info`; the libraries' (h2, tower, hyper) at `debug` and `trace`
    // would be exported too otherwise, dozens per call.
    let layer = tracing_subscriber::Layer::with_filter(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_tracked_inactivity(false),
        tracing_subscriber::filter::LevelFilter::INFO,
    );
    RATIO.store(settings.sample_ratio.to_bits(), Ordering::Relaxed);
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some((layer, TraceGuard { provider })))
}

/// The OTLP exporter on a runtime of its own. The SDK exports from a plain thread, and
/// tonic's channel needs a Tokio reactor: each export runs as a task there (the services'
/// runtimes stay free of it, and a slow collector only delays that one thread).
#[derive(Debug)]
struct OnOwnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    rt: Arc<tokio::runtime::Runtime>,
}

impl OnOwnRuntime {
    fn new(endpoint: &str) -> Result<OnOwnRuntime, ConfigError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(|e| ConfigError::new("tracing", format!("starting its runtime: {e}")))?;
        let inner = {
            let _in = rt.enter();
            use opentelemetry_otlp::WithExportConfig;
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| ConfigError::new("tracing.otlp_endpoint", e.to_string()))?
        };
        Ok(OnOwnRuntime {
            inner: Arc::new(inner),
            rt: Arc::new(rt),
        })
    }
}

impl SpanExporter for OnOwnRuntime {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let inner = Arc::clone(&self.inner);
        let task = self.rt.spawn(async move { inner.export(batch).await });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                    e.to_string(),
                ))
            })
        }
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        // Called once, while building the provider, before any export shares `inner`.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == GRPC_KEY).then_some(self.0)
    }
    fn keys(&self) -> Vec<&str> {
        vec![GRPC_KEY]
    }
}

#[derive(Default)]
struct Slot(Option<String>);

impl Injector for Slot {
    fn set(&mut self, key: &str, value: String) {
        if key == GRPC_KEY {
            self.0 = Some(value);
        }
    }
}

/// The `traceparent` value of `span`, sampled or not (the next hop follows the decision).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    traceparent_if(span, false)
}

/// The `traceparent` value of `span` when its trace is sampled (a gRPC call: the server
/// makes a span only for a call that carries one).
pub fn sampled_traceparent(span: &tracing::Span) -> Option<String> {
    traceparent_if(span, true)
}

fn traceparent_if(span: &tracing::Span, sampled_only: bool) -> Option<String> {
    if !enabled() || span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() || (sampled_only && !sc.is_sampled()) {
        return None;
    }
    let mut slot = Slot::default();
    TraceContextPropagator::new().inject_context(&cx, &mut slot);
    slot.0
}

/// Make `span` a child of the context in a `traceparent` value (a SIP header's, a gRPC
/// call's). A malformed value is ignored: the span starts its own trace.
pub fn set_parent(span: &tracing::Span, value: &str) {
    let cx = TraceContextPropagator::new().extract(&One(value.trim()));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Record `span`'s trace id in its `trace_id` field (declared `Empty` at its creation):
/// JSON log lines inside it then carry it.
pub fn record_trace_id(span: &tracing::Span) {
    if let Some(id) = trace_id(span) {
        span.record("trace_id", id.as_str());
    }
}

/// The trace id of `span` (hex), when it is sampled: for log lines and exemplars.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if !enabled() || span.is_disabled() {
        return None;
    }
    let sc = span.context().span().span_context().clone();
    (sc.is_valid() && sc.is_sampled()).then(|| sc.trace_id().to_string())
}

/// The exemplar of a latency observation: the trace of the request measured.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct TraceExemplar {
    /// The trace id, hex.
    pub trace_id: String,
}

/// The exemplar for an observation made now: the current span's trace, when sampled
/// (nothing when traces are off).
pub fn exemplar() -> Option<TraceExemplar> {
    if !enabled() {
        return None;
    }
    trace_id(&tracing::Span::current()).map(|trace_id| TraceExemplar { trace_id })
}

/// Name the SIP call a gRPC call is about in its span (the server's handlers; nothing
/// when the call is not traced).
pub fn record_call_id(call_id: &str) {
    tracing::Span::current().record("sip.call_id", call_id);
}

/// Add the current span's context to an outgoing gRPC request's metadata.
pub fn inject_grpc(md: &mut tonic::metadata::MetadataMap) {
    if !enabled() {
        return;
    }
    if let Some(v) = sampled_traceparent(&tracing::Span::current())
        && let Ok(v) = v.parse()
    {
        md.insert(GRPC_KEY, v);
    }
}

/// The `traceparent` of an incoming HTTP/2 (gRPC) request, if any.
pub fn parent_from_http(headers: &http::HeaderMap) -> Option<&str> {
    headers.get(GRPC_KEY).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_refuse_what_cannot_work() {
        assert!(TraceSettings::default().validate().is_ok());
        let bad = |endpoint: &str, ratio: f64| {
            TraceSettings {
                otlp_endpoint: Some(endpoint.into()),
                sample_ratio: ratio,
            }
            .validate()
            .expect_err(endpoint)
            .field
        };
        assert_eq!(bad("http://c:4317", 1.5), "tracing.sample_ratio");
        assert_eq!(bad("http://c:4317", -0.1), "tracing.sample_ratio");
        assert_eq!(bad("c:4317", 0.5), "tracing.otlp_endpoint");
        assert_eq!(bad("http://", 0.5), "tracing.otlp_endpoint");
        assert!(
            TraceSettings {
                otlp_endpoint: Some("https://otel.example:4317".into()),
                sample_ratio: 1.0,
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn flags_say_whether_a_trace_is_sampled() {
        assert!(is_sampled(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
        assert!(!is_sampled(UNSAMPLED));
        assert!(!is_sampled("garbage"));
        // Off: nothing is sampled.
        assert!(!sample());
    }

    #[test]
    fn nothing_is_carried_without_a_sampled_trace() {
        // No subscriber with the OpenTelemetry layer: spans have no context.
        let span = tracing::info_span!("x");
        assert_eq!(traceparent(&span), None);
        assert_eq!(trace_id(&span), None);
        set_parent(&span, "garbage");
    }
}

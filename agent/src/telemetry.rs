//! Logs and traces. Both binaries (`understudy`, `understudy-operator`) call [`init`]: `tracing`'s formatter on
//! stderr, filtered by `RUST_LOG`, and, in a build with the `otlp` feature and `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, every span exported over OTLP/HTTP (protobuf) as well.
//!
//! A dry-run is one trace: the agent's `dryrun` span and one child per phase (`fork`, `replay`, `migrate`,
//! `verify`, `rollback`); its id ([`TraceId`]) is kept in the report and shown by the API, and the operator copies
//! it into the DryRun's status, so that a run can be found in the tracing backend. Without the `otel` feature
//! (the default build) spans are only logged and runs carry no trace id.

use serde::{Deserialize, Serialize};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The environment variables that switch the OTLP export on.
pub const ENDPOINT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"];

/// An OpenTelemetry trace id: 32 lowercase hex digits, never all zeros.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "4bf92f3577b34da6a3ce929d0e0e4736")]
pub struct TraceId(String);

impl TraceId {
    /// Parses 32 hex digits (not all zeros, which W3C Trace Context reserves for "no trace").
    pub fn parse(s: &str) -> Option<TraceId> {
        let ok = s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0');
        ok.then(|| TraceId(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TraceId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        TraceId::parse(&s).ok_or_else(|| format!("{s:?} is not a trace id (32 hex digits, not all zeros)"))
    }
}

impl From<TraceId> for String {
    fn from(t: TraceId) -> String {
        t.0
    }
}

/// The trace `span` belongs to, when spans go to an OpenTelemetry tracer (the `otel` feature, with its layer
/// installed); `None` otherwise.
#[cfg(feature = "otel")]
pub fn trace_id(span: &tracing::Span) -> Option<TraceId> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| TraceId::parse(&span_context.trace_id().to_string()))
        .flatten()
}

/// The trace `span` belongs to: always `None` in a build without the `otel` feature.
#[cfg(not(feature = "otel"))]
pub fn trace_id(_span: &tracing::Span) -> Option<TraceId> {
    None
}

/// The W3C Trace Context header that carries a caller's span to the agent (the operator's reconcile that started
/// a run becomes the run's parent).
pub const TRACEPARENT: &str = "traceparent";

/// `span` as a `traceparent` header value, to make a callee's spans its children; `None` without a tracer.
#[cfg(feature = "otel")]
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let mut carrier = std::collections::HashMap::new();
    opentelemetry_sdk::propagation::TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// `span` as a `traceparent` header value: always `None` in a build without the `otel` feature.
#[cfg(not(feature = "otel"))]
pub fn traceparent(_span: &tracing::Span) -> Option<String> {
    None
}

/// Makes `span` a child of the caller's span in `traceparent` (ignored when it does not parse).
#[cfg(feature = "otel")]
pub fn set_remote_parent(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::propagation::TextMapPropagator as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let carrier = std::collections::HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    if let Err(e) = span.set_parent(parent) {
        tracing::debug!(error = %e, "the caller's trace context was not taken");
    }
}

/// A no-op in a build without the `otel` feature.
#[cfg(not(feature = "otel"))]
pub fn set_remote_parent(_span: &tracing::Span, _traceparent: &str) {}

/// Keeps the exporter alive; dropping it flushes the spans not yet sent.
#[derive(Default)]
pub struct Guard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: some spans were not exported: {e}");
        }
    }
}

/// Why the OTLP exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces over OTLP ({var}): {reason}; fix the endpoint, or unset {var}")]
pub struct TelemetryError {
    var: &'static str,
    reason: String,
}

/// Installs the global subscriber: the formatter on stderr with `RUST_LOG` (else `default_filter`), and the
/// OTLP exporter for `service` when configured (see the module's documentation). Call it inside the Tokio
/// runtime: the exporter runs on it.
pub fn init(default_filter: &str, service: &'static str) -> Result<Guard, TelemetryError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let configured = ENDPOINT_VARS.into_iter().find(|v| std::env::var_os(v).is_some());
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    #[cfg(feature = "otlp")]
    if let Some(var) = configured {
        let provider = otlp_provider(service).map_err(|reason| TelemetryError { var, reason })?;
        use opentelemetry::trace::TracerProvider as _;
        // Whatever the log filter says, our own spans are exported (not kube's or hyper's).
        let spans = tracing_subscriber::filter::Targets::new()
            .with_target("understudy", tracing::Level::INFO)
            .with_target("operator", tracing::Level::INFO);
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
        registry.with(layer.with_filter(spans)).init();
        return Ok(Guard {
            provider: Some(provider),
        });
    }
    registry.init();
    #[cfg(not(feature = "otlp"))]
    if let Some(var) = configured {
        tracing::warn!(
            "{var} is set but {service} was built without the `otlp` feature: no traces are exported \
             (build with --features otlp)"
        );
    }
    Ok(Guard::default())
}

#[cfg(feature = "otlp")]
fn otlp_provider(service: &'static str) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .map_err(|e| e.to_string())?;
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

#[cfg(test)]
mod tests {
    use super::TraceId;

    #[test]
    fn trace_ids_are_32_hex_digits_not_all_zeros() {
        let id = TraceId::parse("4BF92F3577B34DA6A3CE929D0E0E4736").map(|t| t.to_string());
        assert_eq!(id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(TraceId::parse(&"0".repeat(32)).is_none());
        assert!(TraceId::parse("4bf92f3577b34da6").is_none());
        assert!(TraceId::parse(&"g".repeat(32)).is_none());
        let json: Result<TraceId, _> = serde_json::from_str("\"xyz\"");
        assert!(json.is_err_and(|e| e.to_string().contains("not a trace id")));
    }
}

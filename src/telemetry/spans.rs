//! Helpers tying `tracing` spans to OpenTelemetry: the trace and span ids of a span (when the
//! OpenTelemetry layer is installed), recorded into the span's own `trace_id`/`span_id` fields
//! so every log line inside it carries them; W3C `traceparent` extraction; span links.

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The OpenTelemetry span context of `span`, a span `tracing-opentelemetry` sees; invalid when
/// no OpenTelemetry layer is installed. (A connection span's is [`connection_context`].)
pub fn span_context(span: &tracing::Span) -> SpanContext {
    span.context().span().span_context().clone()
}

/// The span context of a connection span: its disconnect record's; invalid without records.
pub fn connection_context(connection: &tracing::Span) -> SpanContext {
    super::records::span_context(connection).unwrap_or_else(SpanContext::empty_context)
}

/// Records `trace_id` and `span_id` on `span` (declared as empty fields) and returns the trace
/// id, or `None` when the span is not traced.
pub fn record_ids(span: &tracing::Span) -> Option<String> {
    let cx = span_context(span);
    if !cx.is_valid() {
        return None;
    }
    let trace_id = cx.trace_id().to_string();
    span.record("trace_id", trace_id.as_str());
    span.record("span_id", cx.span_id().to_string().as_str());
    Some(trace_id)
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The remote parent carried by a W3C `traceparent` header, if it is valid.
pub fn remote_parent(headers: &HeaderMap) -> Option<opentelemetry::Context> {
    headers.get("traceparent")?;
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The W3C `traceparent` value naming `span`, or `None` when it is not traced.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span_context(span);
    cx.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            cx.trace_id(),
            cx.span_id(),
            cx.trace_flags().to_u8()
        )
    })
}

/// The remote parent a `traceparent` value names, if it is valid.
pub fn parent_from_traceparent(value: &str) -> Option<opentelemetry::Context> {
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", value.parse().ok()?);
    remote_parent(&headers)
}

/// Makes `span` a child of `parent` (before the span is first entered).
pub fn set_parent(span: &tracing::Span, parent: opentelemetry::Context) {
    let _ = span.set_parent(parent);
}

/// Makes `span` a child of `connection` (a connection's `websocket.open`), whose span
/// `tracing-opentelemetry` does not see.
pub fn set_connection_parent(span: &tracing::Span, connection: &tracing::Span) {
    let cx = connection_context(connection);
    if cx.is_valid() {
        set_parent(
            span,
            opentelemetry::Context::new().with_remote_span_context(cx),
        );
    }
}

/// Links `span` to another span (e.g. a message span to its connection).
pub fn link(span: &tracing::Span, to: SpanContext) {
    if to.is_valid() {
        span.add_link(to);
    }
}

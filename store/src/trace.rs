//! W3C trace context across the queue: the `traceparent` of the span that
//! enqueues a job is stored with it, and the worker's span for the job
//! continues that trace. Without an OpenTelemetry layer (tracing off) the
//! current span has no trace, and nothing is stored.

use std::collections::HashMap;

use opentelemetry::{propagation::TextMapPropagator, trace::TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The current span's context as a `traceparent` header value, when it is
/// part of a trace.
pub fn traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    // Every enqueue asks: without a trace, answer before allocating.
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the span `traceparent` names (a header from a
/// client, or a job's stored value). An unreadable value starts no trace
/// of its own: the span keeps its place.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let carrier: HashMap<String, String> =
        [("traceparent".to_owned(), traceparent.to_owned())].into();
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

//! W3C trace context between tracing spans and jobs: the publish writes its span's context into
//! the job (`traceparent` / `tracestate`, long-string headers as pika, Spring and the .NET client
//! write them), and every attempt reads it back, so all attempts of a job join the submit's trace.

use jobpipe_proto::job::TraceContext;
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
};
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `traceparent`, as the propagator spells it.
const TRACEPARENT: &str = "traceparent";
/// `tracestate`, as the propagator spells it.
const TRACESTATE: &str = "tracestate";

/// The trace ids to put on log lines, in lowercase hex; empty when unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceIds {
    /// The trace id.
    pub trace_id: String,
    /// The current span's id (only when traces are exported).
    pub span_id: String,
}

/// `span`'s context, to write into a job; `None` when the span has none (traces not exported).
pub fn context_of(span: &tracing::Span) -> Option<TraceContext> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut fields = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MapCarrier(&mut fields));
    });
    Some(TraceContext {
        traceparent: fields.remove(TRACEPARENT)?,
        tracestate: fields.remove(TRACESTATE).unwrap_or_default(),
    })
}

/// The context a job carries, to parent its attempt's span on (empty if it carries none).
pub fn extract(trace: Option<&TraceContext>) -> Context {
    let Some(trace) = trace else {
        return Context::new();
    };
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&TraceCarrier(trace))
    })
}

/// The ids to log for work done in `span` for a job carrying `trace`: the span's own when traces
/// are exported, else the trace id of the job's `traceparent`, so logs still join the caller's
/// trace.
pub fn ids(span: &tracing::Span, trace: Option<&TraceContext>) -> TraceIds {
    let context = span.context();
    let current = context.span().span_context().clone();
    if current.is_valid() {
        return TraceIds {
            trace_id: current.trace_id().to_string(),
            span_id: current.span_id().to_string(),
        };
    }
    TraceIds {
        trace_id: trace
            .and_then(|trace| trace_id_of(&trace.traceparent))
            .unwrap_or_default()
            .to_owned(),
        span_id: String::new(),
    }
}

/// The trace id of a `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), if well formed.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    (trace_id.len() == 32 && trace_id.bytes().all(|c| c.is_ascii_hexdigit())).then_some(trace_id)
}

struct MapCarrier<'a>(&'a mut HashMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct TraceCarrier<'a>(&'a TraceContext);

impl Extractor for TraceCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(&self.0.traceparent),
            TRACESTATE if !self.0.tracestate.is_empty() => Some(&self.0.tracestate),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACEPARENT_VALUE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn trace_ids_from_traceparents() {
        let cases = [
            (TRACEPARENT_VALUE, Some("0af7651916cd43dd8448eb211c80319c")),
            ("00-short-b7ad6b7169203331-01", None),
            ("garbage", None),
            ("", None),
        ];
        for (traceparent, expected) in cases {
            assert_eq!(trace_id_of(traceparent), expected, "{traceparent}");
        }
    }

    #[test]
    fn a_carried_context_is_read_back() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let trace = TraceContext {
            traceparent: TRACEPARENT_VALUE.into(),
            tracestate: String::new(),
        };
        let context = extract(Some(&trace));
        let span = context.span();
        let remote = span.span_context();
        assert!(remote.is_valid() && remote.is_remote());
        assert_eq!(
            remote.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        let ids = ids(&tracing::Span::none(), Some(&trace));
        assert_eq!(ids.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert!(ids.span_id.is_empty());
        assert!(!extract(None).span().span_context().is_valid());
        assert_eq!(
            context_of(&tracing::Span::none()),
            None,
            "no exporter, no context"
        );
    }
}

//! W3C trace context between tracing spans and jobs: the publish writes its span's context into
//! the job (`traceparent` / `tracestate`, long-string headers as pika, Spring and the .NET client
//! write them), and every attempt reads it back, so all attempts of a job join the submit's trace.

use jobpipe_proto::{
    headers::{TRACEPARENT, TRACESTATE},
    job::TraceContext,
};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The length of a version-00 `traceparent`.
const TRACEPARENT_LEN: usize = 55;
/// The longest `tracestate` carried (W3C: 32 members of at most 256 characters; real ones are
/// far shorter, and the job's headers must fit in one AMQP frame).
const MAX_TRACESTATE_LEN: usize = 512;

/// The trace ids to put on log lines, in lowercase hex; empty when unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceIds {
    /// The trace id.
    pub trace_id: String,
    /// The current span's id (only when traces are exported).
    pub span_id: String,
}

/// A caller's trace context as its headers carry it, if well formed: a version-00
/// `traceparent`, and a `tracestate` of bounded length (a longer one is dropped, the parent
/// kept). Anything else is ignored rather than carried into jobs.
pub fn from_caller(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<TraceContext> {
    let traceparent = traceparent.filter(|traceparent| {
        traceparent.len() == TRACEPARENT_LEN && trace_id_of(traceparent).is_some()
    })?;
    Some(TraceContext {
        traceparent: traceparent.to_owned(),
        tracestate: tracestate
            .filter(|state| state.len() <= MAX_TRACESTATE_LEN)
            .unwrap_or_default()
            .to_owned(),
    })
}

/// `span`'s context, to write into a job; `None` when the span has none (traces not exported).
pub fn context_of(span: &tracing::Span) -> Option<TraceContext> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = ContextCarrier(TraceContext::default());
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    let ContextCarrier(trace) = carrier;
    (!trace.traceparent.is_empty()).then_some(trace)
}

/// Parents `span` on the trace a job or a caller carries. Nothing to do without one, or when the
/// span is disabled (traces not exported).
pub fn set_parent(span: &tracing::Span, trace: Option<&TraceContext>) {
    let Some(trace) = trace.filter(|_| !span.is_disabled()) else {
        return;
    };
    // Fails only when traces are not exported, and then there is no parent to set.
    let _ = span.set_parent(extract(trace));
}

/// The context `trace` carries.
fn extract(trace: &TraceContext) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&TraceCarrier(trace))
    })
}

/// The ids to log for work done in `span` for a job carrying `trace`: the span's own when traces
/// are exported, else the trace id of the job's `traceparent`, so logs still join the caller's
/// trace.
pub fn ids(span: &tracing::Span, trace: Option<&TraceContext>) -> TraceIds {
    let context = span.context();
    let span_ref = context.span();
    let current = span_ref.span_context();
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

/// Receives the propagator's fields straight into a job's trace context.
struct ContextCarrier(TraceContext);

impl Injector for ContextCarrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.0.traceparent = value,
            TRACESTATE => self.0.tracestate = value,
            _ => {}
        }
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
    fn only_well_formed_caller_contexts_are_carried() {
        let long_state = "k=v,".repeat(200);
        let bad_hex = TRACEPARENT_VALUE.replace('a', "g");
        let carried = |traceparent: &str, tracestate: &str| {
            Some(TraceContext {
                traceparent: traceparent.into(),
                tracestate: tracestate.into(),
            })
        };
        let cases = [
            (
                Some(TRACEPARENT_VALUE),
                Some("a=1"),
                carried(TRACEPARENT_VALUE, "a=1"),
            ),
            (
                Some(TRACEPARENT_VALUE),
                None,
                carried(TRACEPARENT_VALUE, ""),
            ),
            (
                Some(TRACEPARENT_VALUE),
                Some(long_state.as_str()),
                carried(TRACEPARENT_VALUE, ""),
            ),
            (Some("00-short-b7ad6b7169203331-01"), Some("a=1"), None),
            (Some(bad_hex.as_str()), None, None),
            (None, Some("a=1"), None),
        ];
        for (traceparent, tracestate, expected) in cases {
            assert_eq!(
                from_caller(traceparent, tracestate),
                expected,
                "{traceparent:?} {tracestate:?}"
            );
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
        let context = extract(&trace);
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
        assert_eq!(
            context_of(&tracing::Span::none()),
            None,
            "no exporter, no context"
        );
    }
}

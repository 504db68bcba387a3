//! The span of one attempt (kind consumer), parented on the publish that put the job on the
//! broker, so every attempt of a job lands in the submit's trace, in order, with the backoff as
//! the gap between them. Attribute names follow OpenTelemetry's messaging conventions.

use crate::{inbound::Inbound, metrics::Outcome};
use jobpipe_proto::{failure::FailureKind, job::JobProperties};
use jobpipe_runtime::{propagation, telemetry::SPANS};
use tracing::{Span, field::Empty, info_span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Opens the span of `job`'s attempt, delivered as `inbound` from the work queue `work_queue`.
pub fn attempt(inbound: &Inbound, job: &JobProperties, work_queue: &str) -> Span {
    let (exchange, routing_key) = inbound.route();
    let span = info_span!(
        target: SPANS,
        "attempt",
        otel.name = %format_args!("process {work_queue}"),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %format_args!("{exchange}:{routing_key}:{work_queue}"),
        messaging.rabbitmq.destination.routing_key = routing_key,
        messaging.message.id = %job.id,
        jobpipe.job.type = %job.job_type,
        jobpipe.attempt = i64::from(job.attempt),
        jobpipe.outcome = Empty,
        error.type = Empty,
    );
    if job.trace.is_some() {
        // Fails only when traces are not exported, and then there is no parent to set.
        let _ = span.set_parent(propagation::extract(job.trace.as_ref()));
    }
    span
}

/// Records how the attempt ended: its outcome, and for a failure why (`error.type`).
pub fn attempt_done(span: &Span, outcome: Outcome, reason: Option<FailureKind>) {
    span.record("jobpipe.outcome", outcome.as_str());
    if let Some(kind) = reason {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", kind.as_str());
    }
}

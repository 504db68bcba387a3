//! The span of one attempt (kind consumer), parented on the publish that put the job on the
//! broker, so every attempt of a job lands in the submit's trace, in order, with the backoff as
//! the gap between them. Attribute names follow OpenTelemetry's messaging conventions.

use crate::{inbound::Inbound, metrics::Outcome};
use jobpipe_proto::{failure::FailureKind, job::JobProperties, topology::Topology};
use jobpipe_runtime::{propagation, telemetry::SPANS};
use tracing::{Span, field::Empty, info_span};

/// Opens the span of `job`'s attempt, delivered as `inbound`. Its fields are only computed when
/// traces are exported.
pub(crate) fn attempt(inbound: &Inbound, job: &JobProperties, topology: &Topology) -> Span {
    let (exchange, routing_key) = inbound.route();
    let work_queue = || topology.work_queue(inbound.queue());
    let span = info_span!(
        target: SPANS,
        "attempt",
        otel.name = %format_args!("process {}", work_queue()),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %format_args!("{exchange}:{routing_key}:{}", work_queue()),
        messaging.rabbitmq.destination.routing_key = routing_key,
        messaging.message.id = %job.id,
        jobpipe.job.type = %job.job_type,
        jobpipe.attempt = i64::from(job.attempt),
        jobpipe.outcome = Empty,
        error.type = Empty,
    );
    propagation::set_parent(&span, job.trace.as_ref());
    span
}

/// Records how the attempt ended: its outcome, and for a failure why (`error.type`).
pub(crate) fn attempt_done(span: &Span, outcome: Outcome, reason: Option<FailureKind>) {
    span.record("jobpipe.outcome", outcome.as_str());
    if let Some(kind) = reason {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", kind.as_str());
    }
}

//! The spans the producer opens: one per RPC (kind server), continuing the caller's trace from
//! the gRPC `traceparent`, and one per publish (kind producer), whose context travels in the job.
//! Attribute names follow OpenTelemetry's RPC and messaging conventions.

use crate::{SERVICE_NAME, metrics::Method};
use jobpipe_proto::{
    headers::{TRACEPARENT, TRACESTATE},
    job::TraceContext,
    names::JobId,
};
use jobpipe_runtime::telemetry::SPANS;
use jobpipe_runtime::{amqp::PublishError, propagation};
use tonic::{Code, metadata::MetadataMap};
use tracing::{Span, field::Empty, info_span};

/// The server span of one RPC, parented on the caller's trace, and that trace as the caller sent
/// it (propagated into the jobs even when jobpipe itself exports no traces).
pub fn rpc(method: Method, metadata: &MetadataMap) -> (Span, Option<TraceContext>) {
    let header = |name: &str| metadata.get(name).and_then(|value| value.to_str().ok());
    let caller = propagation::from_caller(header(TRACEPARENT), header(TRACESTATE));
    let span = info_span!(
        target: SPANS,
        "rpc",
        otel.name = %format_args!("{SERVICE_NAME}/{}", method.as_str()),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = SERVICE_NAME,
        rpc.method = method.as_str(),
        rpc.grpc.status_code = Empty,
    );
    propagation::set_parent(&span, caller.as_ref());
    (span, caller)
}

/// Records an RPC's status on its span.
pub fn rpc_done(span: &Span, code: Code) {
    span.record("rpc.grpc.status_code", code as i64);
    if code != Code::Ok {
        span.record("otel.status_code", "ERROR");
    }
}

/// The producer span of one job's publish.
pub fn publish(exchange: &str, routing_key: &str, job_id: &JobId) -> Span {
    info_span!(
        target: SPANS,
        "publish",
        otel.name = %format_args!("publish {exchange}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = "rabbitmq",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = %format_args!("{exchange}:{routing_key}"),
        messaging.rabbitmq.destination.routing_key = routing_key,
        messaging.message.id = %job_id,
        error.type = Empty,
    )
}

/// Records how a publish ended on its span.
pub fn publish_done(span: &Span, published: Result<(), PublishError>) {
    if let Err(error) = published {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", error.as_str());
    }
}

/// The trace context to write into a job: the publish span's, or the caller's when jobpipe
/// exports no traces itself.
pub fn job_context(publish: &Span, caller: Option<&TraceContext>) -> Option<TraceContext> {
    propagation::context_of(publish).or_else(|| caller.cloned())
}

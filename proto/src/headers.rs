//! AMQP header names jobpipe reads and writes. Every `x-jobpipe-*` name is spelled here and
//! nowhere else; integers travel as signed 64-bit (`l`), texts as long strings (`S`), the two
//! types every RabbitMQ client reads.

/// The attempt this delivery is, 1-based.
pub const ATTEMPT: &str = "x-jobpipe-attempt";
/// How many attempts the job gets in all.
pub const MAX_ATTEMPTS: &str = "x-jobpipe-max-attempts";
/// The deadline of one attempt, in milliseconds.
pub const TIMEOUT_MS: &str = "x-jobpipe-timeout-ms";
/// When the client submitted the job, in milliseconds since the Unix epoch.
pub const SUBMITTED_AT_MS: &str = "x-jobpipe-submitted-at";
/// Who submitted the job: the caller's name from the producer's callers file (absent when
/// authentication is off).
pub const SUBMITTED_BY: &str = "x-jobpipe-submitted-by";
/// When this attempt became due (submit time plus any delay or backoff), in milliseconds since
/// the Unix epoch. Queue wait is measured from here.
pub const DUE_AT_MS: &str = "x-jobpipe-due-at";

/// Why a dead-lettered job failed: `permanent`, `exhausted`, `timeout`, `no_handler`, `decode`.
pub const ERROR_KIND: &str = "x-jobpipe-error-kind";
/// The last error's text, truncated.
pub const ERROR: &str = "x-jobpipe-error";
/// When the job was dead-lettered, in milliseconds since the Unix epoch.
pub const FAILED_AT_MS: &str = "x-jobpipe-failed-at";
/// The work queue the job was dead-lettered from (its short name).
pub const ORIGIN_QUEUE: &str = "x-jobpipe-origin-queue";
/// One entry per attempt: an array of tables (see `failure::AttemptRecord`), capped in size.
pub const HISTORY: &str = "x-jobpipe-history";

/// The W3C trace context of the submit, so every attempt joins the client's trace.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C trace state that travels with [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";

/// RabbitMQ's dead-letter history. Stripped before a re-publish: RabbitMQ before 4.0.1 drops a
/// message whose copied `x-death` makes it look like a dead-letter cycle.
pub const X_DEATH: &str = "x-death";
/// The prefix of RabbitMQ's `x-first-death-*` headers, stripped for the same reason.
pub const X_FIRST_DEATH_PREFIX: &str = "x-first-death-";
/// The prefix of RabbitMQ's `x-last-death-*` headers (4.x), stripped for the same reason.
pub const X_LAST_DEATH_PREFIX: &str = "x-last-death-";
/// The delivery count a quorum queue adds on redelivery.
pub const X_DELIVERY_COUNT: &str = "x-delivery-count";

/// Whether a header name belongs to jobpipe, RabbitMQ or tracing rather than to a job's metadata.
/// Metadata keys must not be reserved, so decoding can tell the two apart.
pub fn is_reserved(name: &str) -> bool {
    let lower = name.as_bytes();
    lower.len() >= 2 && lower[..2].eq_ignore_ascii_case(b"x-")
        || name.eq_ignore_ascii_case(TRACEPARENT)
        || name.eq_ignore_ascii_case(TRACESTATE)
}

/// Whether a header is RabbitMQ's dead-letter bookkeeping, which a re-publish must not carry.
pub fn is_broker_death_record(name: &str) -> bool {
    name == X_DEATH
        || name == X_DELIVERY_COUNT
        || name.starts_with(X_FIRST_DEATH_PREFIX)
        || name.starts_with(X_LAST_DEATH_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names() {
        let cases = [
            ("x-jobpipe-attempt", true),
            ("X-Custom", true),
            ("traceparent", true),
            ("TraceState", true),
            ("tenant", false),
            ("x", false),
            ("xray", false),
        ];
        for (name, reserved) in cases {
            assert_eq!(is_reserved(name), reserved, "{name}");
        }
    }

    #[test]
    fn broker_death_records() {
        for name in [
            "x-death",
            "x-first-death-reason",
            "x-last-death-queue",
            "x-delivery-count",
        ] {
            assert!(is_broker_death_record(name), "{name}");
        }
        assert!(!is_broker_death_record(ATTEMPT));
    }
}

//! Why a job was not accepted, and the one place that maps it to a gRPC status code. Messages
//! never carry payloads, broker addresses or credentials.

use jobpipe_proto::names::QueueName;
use jobpipe_runtime::amqp::PublishError;
use tonic::{Code, Status};

/// Why a job (or a whole request) was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The request as a whole is unacceptable (no job, too many jobs).
    #[error("{0}")]
    BadRequest(String),
    /// A field of a job breaks a rule. `field` is relative to the job (`type`, `metadata`).
    #[error("{field}: {reason}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// The rule it breaks.
        reason: String,
    },
    /// The caller may not submit this job (its queue or type is outside what the callers file
    /// grants it).
    #[error("{field}: {reason}")]
    Forbidden {
        /// The field that decides it (`queue`, `type`).
        field: &'static str,
        /// The rule, naming the caller.
        reason: String,
    },
    /// The payload is over the configured limit.
    #[error("payload: {size} bytes is over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The broker has no queue of this name (it returned the mandatory message).
    #[error("queue '{0}' does not exist")]
    NoSuchQueue(QueueName),
    /// The broker did not take the job.
    #[error("{}", publish_message(.0))]
    Publish(PublishError),
}

impl SubmitError {
    /// The gRPC code clients rely on, as documented in the proto.
    pub fn code(&self) -> Code {
        match self {
            Self::BadRequest(_) | Self::Invalid { .. } => Code::InvalidArgument,
            Self::PayloadTooLarge { .. } => Code::ResourceExhausted,
            Self::Forbidden { .. } => Code::PermissionDenied,
            Self::NoSuchQueue(_) => Code::FailedPrecondition,
            Self::Publish(error) => match error {
                PublishError::Unavailable | PublishError::Blocked | PublishError::Lost => {
                    Code::Unavailable
                }
                PublishError::Nacked => Code::ResourceExhausted,
                PublishError::Timeout => Code::DeadlineExceeded,
                // Mapped to NoSuchQueue where the queue is known; kept total here.
                PublishError::Unroutable => Code::FailedPrecondition,
            },
        }
    }

    /// The message for a client, with a field path rooted at `job_path` (`job`, `jobs[3]`).
    pub fn describe(&self, job_path: &str) -> String {
        match self {
            Self::Invalid { .. } | Self::PayloadTooLarge { .. } | Self::Forbidden { .. } => {
                format!("{job_path}.{self}")
            }
            _ => self.to_string(),
        }
    }

    /// The error of a publish to `queue`.
    pub fn from_publish(error: PublishError, queue: &QueueName) -> Self {
        match error {
            PublishError::Unroutable => Self::NoSuchQueue(queue.clone()),
            other => Self::Publish(other),
        }
    }
}

impl From<SubmitError> for Status {
    fn from(error: SubmitError) -> Self {
        Status::new(error.code(), error.describe("job"))
    }
}

fn publish_message(error: &PublishError) -> &'static str {
    match error {
        PublishError::Unavailable => {
            "the broker is unreachable; nothing was queued, retry with the same job_id"
        }
        PublishError::Lost => {
            "the broker connection was lost before it confirmed the job; the outcome is unknown, retry with the same job_id"
        }
        PublishError::Blocked => {
            "the broker is not accepting jobs right now (resource alarm); nothing was queued, retry later with the same job_id"
        }
        PublishError::Nacked => "the broker refused the job (the queue may be full); retry later",
        PublishError::Timeout => {
            "the broker did not confirm the job in time; the outcome is unknown, retry with the same job_id"
        }
        PublishError::Unroutable => "the target queue does not exist",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_its_documented_code() {
        let queue = QueueName::default_queue();
        let cases = [
            (
                SubmitError::Invalid {
                    field: "type",
                    reason: "must not be empty".into(),
                },
                Code::InvalidArgument,
                "job.type: must not be empty",
            ),
            (
                SubmitError::PayloadTooLarge { size: 10, limit: 5 },
                Code::ResourceExhausted,
                "job.payload: 10 bytes is over the limit of 5 bytes",
            ),
            (
                SubmitError::from_publish(PublishError::Unroutable, &queue),
                Code::FailedPrecondition,
                "queue 'default' does not exist",
            ),
            (
                SubmitError::from_publish(PublishError::Nacked, &queue),
                Code::ResourceExhausted,
                "the broker refused the job (the queue may be full); retry later",
            ),
            (
                SubmitError::from_publish(PublishError::Unavailable, &queue),
                Code::Unavailable,
                "the broker is unreachable; nothing was queued, retry with the same job_id",
            ),
            (
                SubmitError::from_publish(PublishError::Lost, &queue),
                Code::Unavailable,
                "the broker connection was lost before it confirmed the job; the outcome is unknown, retry with the same job_id",
            ),
            (
                SubmitError::from_publish(PublishError::Blocked, &queue),
                Code::Unavailable,
                "the broker is not accepting jobs right now (resource alarm); nothing was queued, retry later with the same job_id",
            ),
            (
                SubmitError::from_publish(PublishError::Timeout, &queue),
                Code::DeadlineExceeded,
                "the broker did not confirm the job in time; the outcome is unknown, retry with the same job_id",
            ),
        ];
        for (error, code, message) in cases {
            let status = Status::from(error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }

    #[test]
    fn batch_paths_name_the_job() {
        let error = SubmitError::Invalid {
            field: "queue",
            reason: "r".into(),
        };
        assert_eq!(error.describe("jobs[3]"), "jobs[3].queue: r");
    }
}

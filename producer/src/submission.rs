//! Turns a client's `JobSpec` into a job ready to publish, or says which field is wrong and why.

use crate::{
    config::{JobDefaults, Limits},
    error::SubmitError,
};
use jobpipe_proto::{
    delay::LadderDelay,
    job::JobProperties,
    metadata,
    names::{JobId, JobType, NameError, QueueName},
    rules,
    v1::JobSpec,
};
use std::time::{Duration, SystemTime};

/// The content type of a job whose client named none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// A valid job, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// Where the job goes.
    pub queue: QueueName,
    /// How long the job waits in the delay ladder before it becomes due (`None`: at once).
    pub delay: Option<LadderDelay>,
    /// The job's AMQP properties.
    pub properties: JobProperties,
    /// The payload, unchanged (a slice of the request buffer: never copied).
    pub payload: bytes::Bytes,
}

/// The rules a submission is checked against, taken from the configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    limits: Limits,
    jobs: JobDefaults,
}

impl Rules {
    /// Rules from the configured limits and job defaults.
    pub fn new(limits: Limits, jobs: JobDefaults) -> Self {
        Self { limits, jobs }
    }

    /// The most jobs one batch may hold.
    pub fn max_batch_jobs(&self) -> usize {
        self.limits.max_batch_jobs
    }

    /// Checks `spec` and fills in defaults; `now` is the submit time.
    pub fn check(&self, spec: JobSpec, now: SystemTime) -> Result<Submission, SubmitError> {
        if spec.payload.len() > self.limits.max_payload_bytes {
            return Err(SubmitError::PayloadTooLarge {
                size: spec.payload.len(),
                limit: self.limits.max_payload_bytes,
            });
        }
        let id = if spec.job_id.is_empty() {
            JobId::generate()
        } else {
            JobId::try_new(spec.job_id).map_err(invalid_name("job_id"))?
        };
        let job_type = JobType::try_new(spec.r#type).map_err(invalid_name("type"))?;
        let queue = if spec.queue.is_empty() {
            QueueName::default_queue()
        } else {
            QueueName::try_new(spec.queue).map_err(invalid_name("queue"))?
        };
        let content_type = content_type(spec.content_type)?;
        let max_attempts = self.max_attempts(spec.max_attempts)?;
        let timeout = self.timeout(spec.timeout)?;
        let delay = delay(spec.delay)?;
        check_metadata(&spec.metadata)?;
        Ok(Submission {
            queue,
            delay,
            properties: JobProperties {
                id,
                job_type,
                content_type,
                attempt: 1,
                max_attempts,
                timeout,
                submitted_at: now,
                due_at: now + delay.map_or(Duration::ZERO, LadderDelay::duration),
                metadata: spec.metadata.into_iter().collect(),
                // Set at publish time, from the publish span.
                trace: None,
                submitted_by: None,
            },
            payload: spec.payload,
        })
    }

    fn max_attempts(&self, asked: u32) -> Result<u32, SubmitError> {
        match asked {
            0 => Ok(self.jobs.default_max_attempts),
            n if n <= self.jobs.max_attempts_cap => Ok(n),
            _ => Err(SubmitError::Invalid {
                field: "max_attempts",
                reason: format!("must be at most {}", self.jobs.max_attempts_cap),
            }),
        }
    }

    fn timeout(&self, asked: Option<prost_types::Duration>) -> Result<Duration, SubmitError> {
        let invalid = |reason| SubmitError::Invalid {
            field: "timeout",
            reason,
        };
        let Some(asked) = asked else {
            return Ok(self.jobs.default_timeout);
        };
        let timeout = rules::duration_from_wire(asked).map_err(invalid)?;
        rules::check_timeout(timeout, self.jobs.max_timeout).map_err(invalid)?;
        // The wire carries whole milliseconds: what the consumer reads is what is checked.
        Ok(Duration::from_millis(
            u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        ))
    }
}

fn delay(asked: Option<prost_types::Duration>) -> Result<Option<LadderDelay>, SubmitError> {
    let invalid = |reason: String| SubmitError::Invalid {
        field: "delay",
        reason,
    };
    let Some(asked) = asked else {
        return Ok(None);
    };
    let delay = rules::duration_from_wire(asked).map_err(invalid)?;
    LadderDelay::from_duration(delay).map_err(|error| invalid(error.to_string()))
}

fn content_type(asked: String) -> Result<String, SubmitError> {
    if asked.is_empty() {
        return Ok(DEFAULT_CONTENT_TYPE.to_owned());
    }
    rules::check_content_type(&asked).map_err(|reason| SubmitError::Invalid {
        field: "content_type",
        reason,
    })?;
    Ok(asked)
}

fn check_metadata(entries: &std::collections::HashMap<String, String>) -> Result<(), SubmitError> {
    let invalid = |reason| SubmitError::Invalid {
        field: "metadata",
        reason,
    };
    if entries.len() > metadata::MAX_ENTRIES {
        return Err(invalid(format!(
            "{} entries is over the limit of {}",
            entries.len(),
            metadata::MAX_ENTRIES
        )));
    }
    entries
        .iter()
        .try_for_each(|(key, value)| metadata::check_entry(key, value))
        .map_err(invalid)
}

fn invalid_name(field: &'static str) -> impl Fn(NameError) -> SubmitError {
    move |error| SubmitError::Invalid {
        field,
        reason: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn rules() -> Rules {
        Rules::new(
            Limits {
                max_payload_bytes: 16,
                max_batch_jobs: 10,
            },
            JobDefaults::default(),
        )
    }

    fn spec() -> JobSpec {
        JobSpec {
            r#type: "email.send".into(),
            payload: b"hello".as_slice().into(),
            ..JobSpec::default()
        }
    }

    fn field_of(result: Result<Submission, SubmitError>) -> Option<&'static str> {
        match result {
            Err(SubmitError::Invalid { field, .. }) => Some(field),
            Err(SubmitError::PayloadTooLarge { .. }) => Some("payload"),
            Err(other) => panic!("unexpected {other:?}"),
            Ok(_) => None,
        }
    }

    #[test]
    fn defaults_are_filled_in() {
        let now = SystemTime::now();
        let job = rules().check(spec(), now).unwrap();
        assert_eq!(job.queue.as_str(), "default");
        assert_eq!(job.properties.content_type, DEFAULT_CONTENT_TYPE);
        assert_eq!(job.properties.attempt, 1);
        assert_eq!(job.properties.max_attempts, 5);
        assert_eq!(job.properties.timeout, Duration::from_secs(300));
        assert_eq!(job.properties.submitted_at, now);
        assert!(JobId::try_new(job.properties.id.as_str()).is_ok());
        assert_eq!(job.payload.as_ref(), b"hello");
    }

    #[test]
    fn a_delay_is_rounded_up_and_makes_the_job_due_later() {
        let now = SystemTime::now();
        let spec = JobSpec {
            delay: Some(prost_types::Duration {
                seconds: 2,
                nanos: 1,
            }),
            ..spec()
        };
        let job = rules().check(spec, now).unwrap();
        assert_eq!(job.delay.map(LadderDelay::secs), Some(3));
        assert_eq!(job.properties.due_at, now + Duration::from_secs(3));
    }

    #[test]
    fn each_bad_field_is_named() {
        let secs = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
        let meta = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect()
        };
        let too_many: HashMap<String, String> =
            (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        let cases: Vec<(&str, JobSpec, Option<&str>)> = vec![
            ("valid", spec(), None),
            (
                "empty type",
                JobSpec {
                    r#type: String::new(),
                    ..spec()
                },
                Some("type"),
            ),
            (
                "type charset",
                JobSpec {
                    r#type: "a b".into(),
                    ..spec()
                },
                Some("type"),
            ),
            (
                "job id charset",
                JobSpec {
                    job_id: "id/1".into(),
                    ..spec()
                },
                Some("job_id"),
            ),
            (
                "queue charset",
                JobSpec {
                    queue: "Q.1".into(),
                    ..spec()
                },
                Some("queue"),
            ),
            (
                "payload",
                JobSpec {
                    payload: vec![0; 17].into(),
                    ..spec()
                },
                Some("payload"),
            ),
            (
                "payload at limit",
                JobSpec {
                    payload: vec![0; 16].into(),
                    ..spec()
                },
                None,
            ),
            (
                "content type",
                JobSpec {
                    content_type: "a\u{7f}".into(),
                    ..spec()
                },
                Some("content_type"),
            ),
            (
                "attempts over cap",
                JobSpec {
                    max_attempts: 26,
                    ..spec()
                },
                Some("max_attempts"),
            ),
            (
                "attempts at cap",
                JobSpec {
                    max_attempts: 25,
                    ..spec()
                },
                None,
            ),
            (
                "zero timeout",
                JobSpec {
                    timeout: secs(0),
                    ..spec()
                },
                Some("timeout"),
            ),
            (
                "long timeout",
                JobSpec {
                    timeout: secs(3600),
                    ..spec()
                },
                Some("timeout"),
            ),
            (
                "a timeout under a millisecond",
                JobSpec {
                    timeout: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 999_999,
                    }),
                    ..spec()
                },
                Some("timeout"),
            ),
            (
                "a timeout of one millisecond",
                JobSpec {
                    timeout: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 1_000_000,
                    }),
                    ..spec()
                },
                None,
            ),
            (
                "mixed-sign nanos",
                JobSpec {
                    timeout: Some(prost_types::Duration {
                        seconds: 2,
                        nanos: -5,
                    }),
                    ..spec()
                },
                Some("timeout"),
            ),
            (
                "nanos out of range",
                JobSpec {
                    delay: Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 2_000_000_000,
                    }),
                    ..spec()
                },
                Some("delay"),
            ),
            (
                "negative delay",
                JobSpec {
                    delay: secs(-1),
                    ..spec()
                },
                Some("delay"),
            ),
            (
                "reserved key",
                JobSpec {
                    metadata: meta(&[("x-a", "v")]),
                    ..spec()
                },
                Some("metadata"),
            ),
            (
                "too many entries",
                JobSpec {
                    metadata: too_many,
                    ..spec()
                },
                Some("metadata"),
            ),
            (
                "good metadata",
                JobSpec {
                    metadata: meta(&[("tenant", "acme")]),
                    ..spec()
                },
                None,
            ),
        ];
        for (case, spec, expected) in cases {
            assert_eq!(
                field_of(rules().check(spec, SystemTime::now())),
                expected,
                "{case}"
            );
        }
    }
}

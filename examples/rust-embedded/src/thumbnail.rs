//! The `thumbnail.resize` handler: what a handler of your own looks like. It checks its payload,
//! calls an upstream service (simulated here), and tells the consumer through [`JobError`]
//! whether another attempt could succeed.
//!
//! The payload is one line of `key=value` pairs, e.g. `source=photos/cat.jpg width=320
//! height=240`, so this example needs no JSON library. A real handler would decode JSON (or
//! protobuf) with serde: the decisions stay the same.

use jobpipe_consumer::{Handler, Job, JobError, async_trait};
use std::time::Duration;

/// Runs `thumbnail.resize` jobs.
pub(crate) struct Resizer;

#[async_trait]
impl Handler for Resizer {
    async fn handle(&self, job: Job) -> Result<(), JobError> {
        // Bad input stays bad: `?` passes the permanent error on, and the job is dead-lettered at
        // once, with the error text in its failure record.
        let request = Request::parse(&job.payload)?;
        // Delivery is at-least-once: the same job can run twice. `job.id` is the same for every
        // attempt and duplicate; a real upstream call would pass it as an idempotency key.
        upstream(&request, job.attempt)
    }
}

/// What a `thumbnail.resize` job asks for.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    /// The image to resize, a path in the image store.
    source: String,
    /// The thumbnail's width in pixels.
    width: u32,
    /// The thumbnail's height in pixels.
    height: u32,
}

/// The largest thumbnail edge, in pixels.
const MAX_EDGE: u32 = 4096;

impl Request {
    /// Parses a payload. Every error is permanent, and names the rule, never the payload's
    /// content: error texts go to logs and dead-letter headers.
    fn parse(payload: &[u8]) -> Result<Self, JobError> {
        let text = std::str::from_utf8(payload)
            .map_err(|_| JobError::permanent("thumbnail.resize: the payload is not UTF-8"))?;
        let (mut source, mut width, mut height) = (None, None, None);
        for pair in text.split_whitespace() {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(JobError::permanent(
                    "thumbnail.resize: expected key=value pairs (source, width, height)",
                ));
            };
            let slot = match key {
                "source" => &mut source,
                "width" => &mut width,
                "height" => &mut height,
                _ => {
                    return Err(JobError::permanent(
                        "thumbnail.resize: unknown key (known: source, width, height)",
                    ));
                }
            };
            if slot.replace(value).is_some() {
                return Err(JobError::permanent("thumbnail.resize: a key is repeated"));
            }
        }
        let source = source
            .filter(|source| !source.is_empty() && !source.split('/').any(|part| part == ".."))
            .ok_or_else(|| {
                JobError::permanent("thumbnail.resize: source must be a path without `..`")
            })?;
        Ok(Self {
            source: source.to_owned(),
            width: edge(width, "width")?,
            height: edge(height, "height")?,
        })
    }
}

/// One edge of the thumbnail: a whole number of pixels from 1 to [`MAX_EDGE`].
fn edge(value: Option<&str>, key: &str) -> Result<u32, JobError> {
    value
        .and_then(|value| value.parse::<u32>().ok())
        .filter(|pixels| (1..=MAX_EDGE).contains(pixels))
        .ok_or_else(|| {
            JobError::permanent(format!(
                "thumbnail.resize: {key} must be a number of pixels from 1 to {MAX_EDGE}"
            ))
        })
}

/// Stands in for the image service. To show each answer, an image under `flaky/` fails its first
/// attempt (a hiccup: retried with the consumer's backoff) and one under `busy/` is rate limited
/// on its first attempt (retried after the delay the service asked for, not the backoff).
fn upstream(request: &Request, attempt: u32) -> Result<(), JobError> {
    let first = attempt == 1;
    match request.source.split_once('/') {
        Some(("flaky", _)) if first => Err(JobError::transient(
            "thumbnail.resize: the image service did not answer",
        )),
        Some(("busy", _)) if first => Err(JobError::RetryAfter {
            error: "thumbnail.resize: the image service is rate limiting us".to_owned(),
            after: Duration::from_secs(5),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobpipe_consumer::{JobId, JobType, QueueName};
    use std::time::{Instant, SystemTime};

    /// What became of an attempt, short enough for a table.
    fn outcome(result: &Result<(), JobError>) -> String {
        match result {
            Ok(()) => "ok".to_owned(),
            Err(JobError::Transient(_)) => "transient".to_owned(),
            Err(JobError::Permanent(_)) => "permanent".to_owned(),
            Err(JobError::RetryAfter { after, .. }) => format!("retry after {after:?}"),
        }
    }

    #[test]
    fn payload_decides_the_outcome() {
        let cases: &[(&[u8], u32, &str)] = &[
            (b"source=photos/cat.jpg width=320 height=240", 1, "ok"),
            (b"  height=1\twidth=4096 source=a.png\n", 1, "ok"),
            // Bad input: permanent, whatever the attempt.
            (b"", 1, "permanent"),
            (b"source=cat.jpg width=320", 1, "permanent"),
            (b"source=cat.jpg width=0 height=240", 1, "permanent"),
            (b"source=cat.jpg width=4097 height=240", 1, "permanent"),
            (b"source=cat.jpg width=-1 height=240", 1, "permanent"),
            (b"source=cat.jpg width=320px height=240", 1, "permanent"),
            (b"source= width=320 height=240", 1, "permanent"),
            (b"source=../etc/passwd width=320 height=240", 1, "permanent"),
            (
                b"source=cat.jpg width=320 height=240 colour=red",
                1,
                "permanent",
            ),
            (
                b"source=cat.jpg width=320 width=640 height=240",
                1,
                "permanent",
            ),
            (b"source=cat.jpg 320x240", 1, "permanent"),
            (b"{\"source\":\"cat.jpg\"}", 1, "permanent"),
            (b"source=cat.jpg width=\xff height=240", 1, "permanent"),
            (b"source=flaky/cat.jpg width=0 height=240", 1, "permanent"),
            // A hiccup upstream: transient on the first attempt, then fine.
            (b"source=flaky/cat.jpg width=320 height=240", 1, "transient"),
            (b"source=flaky/cat.jpg width=320 height=240", 2, "ok"),
            // Rate limited: retried after the service's delay.
            (
                b"source=busy/cat.jpg width=320 height=240",
                1,
                "retry after 5s",
            ),
            (b"source=busy/cat.jpg width=320 height=240", 2, "ok"),
        ];
        for &(payload, attempt, expected) in cases {
            let result = Request::parse(payload).and_then(|request| upstream(&request, attempt));
            assert_eq!(
                outcome(&result),
                expected,
                "{:?}, attempt {attempt}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn errors_do_not_carry_the_payload() {
        let Err(error) = Request::parse(b"source=secret-customer.jpg width=9999 height=1") else {
            panic!("an over-wide thumbnail was accepted");
        };
        assert!(!error.to_string().contains("secret"), "{error}");
        assert!(!error.to_string().contains("9999"), "{error}");
    }

    #[tokio::test]
    async fn handler_runs_a_job() {
        let job = |payload: &'static [u8], attempt| Job {
            id: JobId::generate(),
            job_type: JobType::try_new("thumbnail.resize").unwrap(),
            queue: QueueName::default_queue(),
            attempt,
            max_attempts: 5,
            payload: payload.into(),
            content_type: "text/plain".to_owned(),
            metadata: Default::default(),
            submitted_at: SystemTime::now(),
            deadline: Instant::now() + Duration::from_secs(60),
        };
        let payload = b"source=busy/cat.jpg width=320 height=240";
        assert_eq!(
            outcome(&Resizer.handle(job(payload, 1)).await),
            "retry after 5s"
        );
        assert_eq!(outcome(&Resizer.handle(job(payload, 2)).await), "ok");
        assert_eq!(
            outcome(&Resizer.handle(job(b"width=320", 1)).await),
            "permanent"
        );
    }
}

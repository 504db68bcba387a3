//! A job's AMQP properties: how a job is written onto a message and read back from one.
//!
//! The body is the payload, unchanged, so any AMQP client can read a job. Everything else sits in
//! standard properties (`message_id` = job id, `type`, `content_type`, `timestamp`, persistent
//! delivery) and in headers (attempt, limits, times; metadata as plain string headers).

use crate::{
    headers, metadata,
    names::{JobId, JobType, NameError},
    rules,
};
use amq_protocol::{
    protocol::BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// AMQP `delivery_mode` for a message that survives a broker restart.
pub const PERSISTENT: u8 = 2;

/// What jobpipe knows about a job besides its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobProperties {
    /// The job's id, kept by every copy and retry of the job.
    pub id: JobId,
    /// The handler name.
    pub job_type: JobType,
    /// The payload's MIME type.
    pub content_type: String,
    /// This delivery's attempt, 1-based.
    pub attempt: u32,
    /// How many attempts the job gets in all.
    pub max_attempts: u32,
    /// The deadline of one attempt.
    pub timeout: Duration,
    /// When the client submitted the job (millisecond precision).
    pub submitted_at: SystemTime,
    /// When this attempt became due (millisecond precision).
    pub due_at: SystemTime,
    /// The client's free-form pairs.
    pub metadata: BTreeMap<String, String>,
    /// The W3C trace context of the submit, so that every attempt joins the client's trace.
    pub trace: Option<TraceContext>,
    /// Who submitted it (a caller's name), when the producer knew.
    pub submitted_by: Option<JobType>,
}

/// A W3C trace context, as the `traceparent` and `tracestate` headers carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    /// `00-<trace id>-<parent span id>-<flags>`.
    pub traceparent: String,
    /// Vendor state; empty when there is none.
    pub tracestate: String,
}

/// Why a message is not a readable jobpipe job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A property or header jobpipe always sets is absent.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A property or header is present but unusable.
    #[error("{field}: {reason}")]
    Invalid {
        /// The property or header name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl JobProperties {
    /// Writes the job onto AMQP properties: persistent, with every jobpipe header.
    pub fn encode(&self) -> BasicProperties {
        let mut table = FieldTable::default();
        for (key, value) in &self.metadata {
            table.insert(key.as_str().into(), long_string(value));
        }
        table.insert(headers::ATTEMPT.into(), integer(self.attempt.into()));
        table.insert(
            headers::MAX_ATTEMPTS.into(),
            integer(self.max_attempts.into()),
        );
        table.insert(headers::TIMEOUT_MS.into(), integer(millis(self.timeout)));
        table.insert(
            headers::SUBMITTED_AT_MS.into(),
            integer(unix_millis(self.submitted_at)),
        );
        table.insert(headers::DUE_AT_MS.into(), integer(unix_millis(self.due_at)));
        if let Some(caller) = &self.submitted_by {
            table.insert(headers::SUBMITTED_BY.into(), long_string(caller.as_str()));
        }
        if let Some(trace) = &self.trace {
            table.insert(headers::TRACEPARENT.into(), long_string(&trace.traceparent));
            if !trace.tracestate.is_empty() {
                table.insert(headers::TRACESTATE.into(), long_string(&trace.tracestate));
            }
        }
        BasicProperties::default()
            .with_message_id(self.id.as_str().into())
            .with_type(self.job_type.as_str().into())
            .with_content_type(short_string(&self.content_type))
            .with_timestamp(unix_millis(self.submitted_at) / 1000)
            .with_delivery_mode(PERSISTENT)
            .with_headers(table)
    }

    /// Reads a job back from AMQP properties, refusing a message jobpipe did not write whole.
    pub fn decode(properties: &BasicProperties) -> Result<Self, DecodeError> {
        let empty = FieldTable::default();
        let table = properties.headers().as_ref().unwrap_or(&empty);
        let id = name(properties.message_id(), "message_id", JobId::try_new)?;
        let job_type = name(properties.kind(), "type", JobType::try_new)?;
        let attempt = required_u32(table, headers::ATTEMPT)?;
        let max_attempts = required_u32(table, headers::MAX_ATTEMPTS)?;
        if attempt == 0 {
            return Err(DecodeError::Invalid {
                field: headers::ATTEMPT,
                reason: "attempts are 1-based".into(),
            });
        }
        rules::check_max_attempts(max_attempts).map_err(|reason| DecodeError::Invalid {
            field: headers::MAX_ATTEMPTS,
            reason,
        })?;
        let timeout = Duration::from_millis(required_integer(table, headers::TIMEOUT_MS)?);
        rules::check_timeout(timeout, rules::MAX_TIMEOUT).map_err(|reason| {
            DecodeError::Invalid {
                field: headers::TIMEOUT_MS,
                reason,
            }
        })?;
        let content_type = properties
            .content_type()
            .as_ref()
            .map_or_else(String::new, |c| c.as_str().to_owned());
        rules::check_content_type(&content_type).map_err(|reason| DecodeError::Invalid {
            field: "content_type",
            reason,
        })?;
        let submitted_at = from_unix_millis(required_integer(table, headers::SUBMITTED_AT_MS)?);
        let due_at = match integer_header(table, headers::DUE_AT_MS)? {
            Some(ms) => from_unix_millis(ms),
            None => submitted_at,
        };
        Ok(Self {
            id,
            job_type,
            content_type,
            attempt,
            max_attempts,
            timeout,
            submitted_at,
            due_at,
            metadata: read_metadata(table)?,
            submitted_by: text_header(table, headers::SUBMITTED_BY)
                .map(|name| JobType::try_new(name.into_owned()))
                .transpose()
                .map_err(|error| DecodeError::Invalid {
                    field: headers::SUBMITTED_BY,
                    reason: error.to_string(),
                })?,
            trace: text_header(table, headers::TRACEPARENT).map(|traceparent| TraceContext {
                traceparent: traceparent.into_owned(),
                tracestate: text_header(table, headers::TRACESTATE)
                    .map(|state| state.into_owned())
                    .unwrap_or_default(),
            }),
        })
    }
}

/// Reads an integer header of any AMQP integer type; RabbitMQ clients differ in which they use.
pub fn integer_header(table: &FieldTable, field: &'static str) -> Result<Option<u64>, DecodeError> {
    let Some(value) = table.inner().get(field) else {
        return Ok(None);
    };
    let signed: i128 = match *value {
        AMQPValue::ShortShortInt(v) => v.into(),
        AMQPValue::ShortShortUInt(v) => v.into(),
        AMQPValue::ShortInt(v) => v.into(),
        AMQPValue::ShortUInt(v) => v.into(),
        AMQPValue::LongInt(v) => v.into(),
        AMQPValue::LongUInt(v) => v.into(),
        AMQPValue::LongLongInt(v) => v.into(),
        AMQPValue::Timestamp(v) => v.into(),
        _ => {
            return Err(DecodeError::Invalid {
                field,
                reason: "not an integer".into(),
            });
        }
    };
    u64::try_from(signed)
        .map(Some)
        .map_err(|_| DecodeError::Invalid {
            field,
            reason: "negative".into(),
        })
}

/// Reads a text header, whether sent as a long or a short string.
pub fn text_header<'a>(table: &'a FieldTable, field: &str) -> Option<std::borrow::Cow<'a, str>> {
    match table.inner().get(field)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => Some(s.as_str().into()),
        _ => None,
    }
}

/// An integer header value in the type RabbitMQ and every client read (`l`).
pub fn integer(value: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX))
}

/// A text header value (`S`).
pub fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, millis)
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn from_unix_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A short string from text that validation already bounded; longer text is cut at 255 bytes
/// on a character boundary rather than panicking in `ShortString::from`.
fn short_string(value: &str) -> ShortString {
    let mut end = value
        .len()
        .min(amq_protocol::types::MAX_SHORT_STRING_LENGTH);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].into()
}

fn name<T>(
    value: &Option<ShortString>,
    field: &'static str,
    parse: fn(String) -> Result<T, NameError>,
) -> Result<T, DecodeError> {
    let value = value.as_ref().ok_or(DecodeError::Missing(field))?;
    parse(value.as_str().to_owned()).map_err(|error| DecodeError::Invalid {
        field,
        reason: error.to_string(),
    })
}

fn required_integer(table: &FieldTable, field: &'static str) -> Result<u64, DecodeError> {
    integer_header(table, field)?.ok_or(DecodeError::Missing(field))
}

fn required_u32(table: &FieldTable, field: &'static str) -> Result<u32, DecodeError> {
    u32::try_from(required_integer(table, field)?).map_err(|_| DecodeError::Invalid {
        field,
        reason: "out of range".into(),
    })
}

/// The job's metadata: its text headers that are not reserved, under the rules a submission's
/// metadata obeys.
fn read_metadata(table: &FieldTable) -> Result<BTreeMap<String, String>, DecodeError> {
    let invalid = |reason| DecodeError::Invalid {
        field: "metadata",
        reason,
    };
    let mut pairs = BTreeMap::new();
    for key in table.inner().keys() {
        if headers::is_reserved(key.as_str()) {
            continue;
        }
        let Some(value) = text_header(table, key.as_str()) else {
            continue;
        };
        metadata::check_entry(key.as_str(), &value).map_err(invalid)?;
        pairs.insert(key.to_string(), value.into_owned());
    }
    if pairs.len() > metadata::MAX_ENTRIES {
        return Err(invalid(format!(
            "{} entries is over the limit of {}",
            pairs.len(),
            metadata::MAX_ENTRIES
        )));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> JobProperties {
        JobProperties {
            id: JobId::try_new("job-1").unwrap(),
            job_type: JobType::try_new("email.send").unwrap(),
            content_type: "application/json".into(),
            attempt: 2,
            max_attempts: 5,
            timeout: Duration::from_secs(30),
            submitted_at: from_unix_millis(1_700_000_000_123),
            due_at: from_unix_millis(1_700_000_004_123),
            metadata: BTreeMap::from([("tenant".into(), "acme".into())]),
            trace: Some(TraceContext {
                traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                tracestate: "vendor=1".into(),
            }),
            submitted_by: Some(JobType::try_new("billing").unwrap()),
        }
    }

    #[test]
    fn encodes_the_documented_properties() {
        let props = sample().encode();
        assert_eq!(props.message_id().as_ref().unwrap().as_str(), "job-1");
        assert_eq!(props.kind().as_ref().unwrap().as_str(), "email.send");
        assert_eq!(*props.delivery_mode(), Some(PERSISTENT));
        assert_eq!(*props.timestamp(), Some(1_700_000_000));
        let table = props.headers().as_ref().unwrap();
        assert_eq!(integer_header(table, headers::ATTEMPT), Ok(Some(2)));
        assert_eq!(integer_header(table, headers::TIMEOUT_MS), Ok(Some(30_000)));
        assert_eq!(text_header(table, "tenant").as_deref(), Some("acme"));
        assert_eq!(
            text_header(table, headers::SUBMITTED_BY).as_deref(),
            Some("billing")
        );
        assert_eq!(
            text_header(table, headers::TRACEPARENT).as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(
            text_header(table, headers::TRACESTATE).as_deref(),
            Some("vendor=1")
        );
    }

    #[test]
    fn decode_refuses_what_jobpipe_did_not_write() {
        let good = sample().encode();
        let headers_without = |name: &str| {
            let table = good.headers().clone().unwrap();
            let kept = table
                .inner()
                .iter()
                .filter(|(k, _)| k.as_str() != name)
                .map(|(k, v)| (k.clone(), v.clone()));
            good.clone()
                .with_headers(FieldTable::from(kept.collect::<BTreeMap<_, _>>()))
        };
        let with_header = |name: &str, value: AMQPValue| {
            let mut table = good.headers().clone().unwrap();
            table.insert(name.into(), value);
            good.clone().with_headers(table)
        };
        let cases: Vec<(&str, BasicProperties, DecodeError)> = vec![
            (
                "no message id",
                BasicProperties::default().with_type("t".into()),
                DecodeError::Missing("message_id"),
            ),
            (
                "bad type",
                good.clone().with_type("has space".into()),
                DecodeError::Invalid {
                    field: "type",
                    reason: "must match [A-Za-z0-9_.:-]{1,128}".into(),
                },
            ),
            (
                "no attempt",
                headers_without(headers::ATTEMPT),
                DecodeError::Missing(headers::ATTEMPT),
            ),
            (
                "text attempt",
                with_header(headers::ATTEMPT, long_string("two")),
                DecodeError::Invalid {
                    field: headers::ATTEMPT,
                    reason: "not an integer".into(),
                },
            ),
            (
                "negative timeout",
                with_header(headers::TIMEOUT_MS, AMQPValue::LongInt(-1)),
                DecodeError::Invalid {
                    field: headers::TIMEOUT_MS,
                    reason: "negative".into(),
                },
            ),
            (
                "endless attempts",
                with_header(headers::MAX_ATTEMPTS, AMQPValue::LongLongInt(1_000_000)),
                DecodeError::Invalid {
                    field: headers::MAX_ATTEMPTS,
                    reason: "must be 1 to 100".into(),
                },
            ),
            (
                "a year-long attempt",
                with_header(
                    headers::TIMEOUT_MS,
                    AMQPValue::LongLongInt(365 * 24 * 3_600_000),
                ),
                DecodeError::Invalid {
                    field: headers::TIMEOUT_MS,
                    reason: "must be from 1ms to 24h".into(),
                },
            ),
            (
                "zero timeout",
                with_header(headers::TIMEOUT_MS, AMQPValue::ShortShortUInt(0)),
                DecodeError::Invalid {
                    field: headers::TIMEOUT_MS,
                    reason: "must be from 1ms to 24h".into(),
                },
            ),
            (
                "a control character in the content type",
                good.clone().with_content_type("text/plain\u{1}".into()),
                DecodeError::Invalid {
                    field: "content_type",
                    reason: "must be at most 128 printable ASCII characters".into(),
                },
            ),
            (
                "an oversized metadata value",
                with_header("tenant", long_string(&"v".repeat(1025))),
                DecodeError::Invalid {
                    field: "metadata",
                    reason: "value of \"tenant\" is 1025 bytes, over the limit of 1024".into(),
                },
            ),
            (
                "zero attempt",
                with_header(headers::ATTEMPT, AMQPValue::ShortShortUInt(0)),
                DecodeError::Invalid {
                    field: headers::ATTEMPT,
                    reason: "attempts are 1-based".into(),
                },
            ),
        ];
        for (case, props, expected) in cases {
            assert_eq!(JobProperties::decode(&props), Err(expected), "{case}");
        }
    }

    #[test]
    fn broker_and_trace_headers_are_not_metadata() {
        let mut props = sample().encode();
        let mut table = props.headers().clone().unwrap();
        table.insert("x-death".into(), AMQPValue::FieldArray(vec![].into()));
        table.insert(headers::TRACEPARENT.into(), long_string("00-abc"));
        props = props.with_headers(table);
        assert_eq!(
            JobProperties::decode(&props).unwrap().metadata,
            sample().metadata
        );
    }

    proptest! {
        #[test]
        fn round_trips(
            attempt in 1u32..50,
            extra in 0u32..50,
            timeout_ms in 1u64..10_000_000,
            submitted_ms in 0u64..4_000_000_000_000,
            metadata in proptest::collection::btree_map("m[a-z0-9_.-]{0,20}", "\\PC{0,40}", 0..8),
        ) {
            let job = JobProperties {
                attempt,
                max_attempts: attempt + extra,
                timeout: Duration::from_millis(timeout_ms),
                submitted_at: from_unix_millis(submitted_ms),
                due_at: from_unix_millis(submitted_ms + 5),
                metadata,
                ..sample()
            };
            prop_assert_eq!(JobProperties::decode(&job.encode()), Ok(job));
        }
    }
}

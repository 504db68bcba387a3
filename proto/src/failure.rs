//! A job's failure record: why each attempt failed, and why the job was finally dead-lettered.
//! It travels in headers, so an operator reading a dead-letter queue with any AMQP client sees the
//! whole history, not only the last exception.
//!
//! Re-published copies (retries and dead letters) keep every property and header of the original
//! except RabbitMQ's own dead-letter bookkeeping (`x-death`, `x-first-death-*`), which RabbitMQ
//! before 4.0.1 would read as a dead-letter cycle and drop.

use crate::{
    headers,
    job::{integer, long_string, unix_millis},
    metadata::truncate,
};
use amq_protocol::{
    protocol::BasicProperties,
    types::{AMQPValue, FieldArray, FieldTable},
};
use std::{collections::BTreeMap, time::SystemTime};

/// The longest error text kept in `x-jobpipe-error`, in bytes.
pub const MAX_ERROR_BYTES: usize = 1024;
/// The longest error text kept per history entry, in bytes.
pub const MAX_HISTORY_ERROR_BYTES: usize = 256;
/// The most history entries kept: the first attempt and the latest ones. With the text limits
/// above the history stays under ~10 KiB; with a full metadata set (~35 KiB) the whole header
/// set stays under 48 KiB, inside the 64 KiB frames jobpipe asks for.
pub const MAX_HISTORY_ENTRIES: usize = 25;

/// Why an attempt failed, or why a job was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The handler reported a transient error.
    Transient,
    /// The attempt ran past its deadline.
    Timeout,
    /// The handler panicked.
    Panic,
    /// The handler reported a permanent error: retrying cannot help.
    Permanent,
    /// Attempts ran out after transient failures.
    Exhausted,
    /// No handler is registered for the job's type.
    NoHandler,
    /// The message is not a readable jobpipe job.
    Decode,
}

impl FailureKind {
    /// The header value (`permanent`, `no_handler`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Timeout => "timeout",
            Self::Panic => "panic",
            Self::Permanent => "permanent",
            Self::Exhausted => "exhausted",
            Self::NoHandler => "no_handler",
            Self::Decode => "decode",
        }
    }
}

/// One failed attempt, as kept in `x-jobpipe-history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// The attempt, 1-based (0 when the message was unreadable).
    pub attempt: u32,
    /// When it failed.
    pub at: SystemTime,
    /// Why.
    pub kind: FailureKind,
    /// The error text, truncated to [`MAX_HISTORY_ERROR_BYTES`].
    pub error: String,
    /// The consumer instance that ran it.
    pub consumer: String,
}

/// The properties of a retry: the next attempt, due at `due_at`, with `failed` in its history.
pub fn for_retry(
    original: &BasicProperties,
    failed: &AttemptRecord,
    next_attempt: u32,
    due_at: SystemTime,
) -> BasicProperties {
    let mut table = carried_headers(original);
    append_history(&mut table, original, failed);
    table.insert(headers::ATTEMPT.into(), integer(next_attempt.into()));
    table.insert(headers::DUE_AT_MS.into(), integer(unix_millis(due_at)));
    original.clone().with_headers(table)
}

/// The properties of a dead letter: the failure record on top of everything the job carried.
pub fn for_dead_letter(
    original: &BasicProperties,
    last: &AttemptRecord,
    kind: FailureKind,
    origin_queue: &str,
) -> BasicProperties {
    let mut table = carried_headers(original);
    append_history(&mut table, original, last);
    table.insert(headers::ERROR_KIND.into(), long_string(kind.as_str()));
    table.insert(
        headers::ERROR.into(),
        long_string(truncate(&last.error, MAX_ERROR_BYTES)),
    );
    table.insert(headers::FAILED_AT_MS.into(), integer(unix_millis(last.at)));
    table.insert(headers::ORIGIN_QUEUE.into(), long_string(origin_queue));
    original.clone().with_headers(table)
}

/// The history entry kind of a replay.
pub const REPLAYED: &str = "replayed";

/// The properties of a replayed dead letter: a fresh first attempt, due `now`, without its
/// failure record, its history kept with a `replayed` entry naming `by` (the caller).
pub fn for_replay(original: &BasicProperties, by: &str, now: SystemTime) -> BasicProperties {
    let record = [
        headers::ERROR_KIND,
        headers::ERROR,
        headers::FAILED_AT_MS,
        headers::ORIGIN_QUEUE,
    ];
    let carried = carried_headers(original);
    let mut table = FieldTable::from(
        carried
            .inner()
            .iter()
            .filter(|(key, _)| !record.contains(&key.as_str()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect::<BTreeMap<_, _>>(),
    );
    let attempts = original
        .headers()
        .as_ref()
        .and_then(|table| {
            crate::job::integer_header(table, headers::ATTEMPT)
                .ok()
                .flatten()
        })
        .unwrap_or(0);
    let mut entry = FieldTable::default();
    entry.insert("attempt".into(), integer(attempts));
    entry.insert("at".into(), integer(unix_millis(now)));
    entry.insert("kind".into(), long_string(REPLAYED));
    entry.insert(
        "by".into(),
        long_string(truncate(by, MAX_HISTORY_ERROR_BYTES)),
    );
    push_history(&mut table, original, entry);
    table.insert(headers::ATTEMPT.into(), integer(1));
    table.insert(headers::DUE_AT_MS.into(), integer(unix_millis(now)));
    original.clone().with_headers(table)
}

/// Reads the history back (for operators' tools and tests); unreadable entries are skipped.
pub fn history(table: &FieldTable) -> Vec<BTreeMap<String, String>> {
    let Some(AMQPValue::FieldArray(entries)) = table.inner().get(headers::HISTORY) else {
        return Vec::new();
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|entry| match entry {
            AMQPValue::FieldTable(fields) => Some(
                fields
                    .inner()
                    .iter()
                    .filter_map(|(key, value)| Some((key.to_string(), as_text(value)?)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn as_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The original's headers minus RabbitMQ's dead-letter bookkeeping and the history (which
/// [`append_history`] rebuilds).
fn carried_headers(original: &BasicProperties) -> FieldTable {
    let Some(table) = original.headers() else {
        return FieldTable::default();
    };
    FieldTable::from(
        table
            .inner()
            .iter()
            .filter(|(key, _)| {
                key.as_str() != headers::HISTORY && !headers::is_broker_death_record(key.as_str())
            })
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// Writes `original`'s history with `record` appended into `table`, keeping the first entry and
/// the latest ones within the cap.
fn append_history(table: &mut FieldTable, original: &BasicProperties, record: &AttemptRecord) {
    push_history(table, original, entry(record));
}

/// Writes `original`'s history with `new` appended into `table`, within the cap.
fn push_history(table: &mut FieldTable, original: &BasicProperties, new: FieldTable) {
    let earlier = original
        .headers()
        .as_ref()
        .and_then(|table| table.inner().get(headers::HISTORY));
    let mut entries: Vec<AMQPValue> = match earlier {
        Some(AMQPValue::FieldArray(entries)) => entries.as_slice().to_vec(),
        _ => Vec::new(),
    };
    entries.push(AMQPValue::FieldTable(new));
    if entries.len() > MAX_HISTORY_ENTRIES {
        entries.drain(1..=entries.len() - MAX_HISTORY_ENTRIES);
    }
    table.insert(
        headers::HISTORY.into(),
        AMQPValue::FieldArray(FieldArray::from(entries)),
    );
}

fn entry(record: &AttemptRecord) -> FieldTable {
    let mut fields = FieldTable::default();
    fields.insert("attempt".into(), integer(record.attempt.into()));
    fields.insert("at".into(), integer(unix_millis(record.at)));
    fields.insert("kind".into(), long_string(record.kind.as_str()));
    fields.insert(
        "error".into(),
        long_string(truncate(&record.error, MAX_HISTORY_ERROR_BYTES)),
    );
    fields.insert("consumer".into(), long_string(&record.consumer));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        job::{JobProperties, from_unix_millis, integer_header, text_header},
        names::{JobId, JobType},
    };
    use std::time::Duration;

    fn job() -> BasicProperties {
        let props = JobProperties {
            id: JobId::try_new("j1").unwrap(),
            job_type: JobType::try_new("t").unwrap(),
            content_type: "text/plain".into(),
            attempt: 1,
            max_attempts: 3,
            timeout: Duration::from_secs(1),
            submitted_at: from_unix_millis(1_000),
            due_at: from_unix_millis(1_000),
            metadata: BTreeMap::from([("tenant".into(), "acme".into())]),
            trace: None,
            submitted_by: None,
        }
        .encode();
        let mut table = props.headers().clone().unwrap();
        table.insert(
            headers::X_DEATH.into(),
            AMQPValue::FieldArray(FieldArray::default()),
        );
        table.insert("x-first-death-reason".into(), long_string("expired"));
        props.with_headers(table)
    }

    fn failed(attempt: u32, kind: FailureKind, error: &str) -> AttemptRecord {
        AttemptRecord {
            attempt,
            at: from_unix_millis(5_000 + u64::from(attempt)),
            kind,
            error: error.into(),
            consumer: "c1".into(),
        }
    }

    #[test]
    fn a_retry_is_the_next_attempt_without_broker_bookkeeping() {
        let retry = for_retry(
            &job(),
            &failed(1, FailureKind::Transient, "boom"),
            2,
            from_unix_millis(9_000),
        );
        let decoded = JobProperties::decode(&retry).unwrap();
        assert_eq!(decoded.attempt, 2);
        assert_eq!(decoded.due_at, from_unix_millis(9_000));
        assert_eq!(decoded.id.as_str(), "j1", "same message id");
        assert_eq!(
            decoded.metadata.get("tenant").map(String::as_str),
            Some("acme")
        );
        let table = retry.headers().clone().unwrap();
        assert!(!table.contains_key(headers::X_DEATH));
        assert!(!table.contains_key("x-first-death-reason"));
        let history = history(&table);
        assert_eq!(history.len(), 1);
        assert_eq!(history[0]["kind"], "transient");
        assert_eq!(history[0]["error"], "boom");
        assert_eq!(history[0]["attempt"], "1");
    }

    #[test]
    fn a_dead_letter_carries_the_whole_record() {
        let first = for_retry(
            &job(),
            &failed(1, FailureKind::Timeout, "slow"),
            2,
            from_unix_millis(1),
        );
        let dead = for_dead_letter(
            &first,
            &failed(2, FailureKind::Transient, "boom"),
            FailureKind::Exhausted,
            "default",
        );
        let table = dead.headers().clone().unwrap();
        assert_eq!(
            text_header(&table, headers::ERROR_KIND).as_deref(),
            Some("exhausted")
        );
        assert_eq!(text_header(&table, headers::ERROR).as_deref(), Some("boom"));
        assert_eq!(
            text_header(&table, headers::ORIGIN_QUEUE).as_deref(),
            Some("default")
        );
        assert_eq!(
            integer_header(&table, headers::FAILED_AT_MS),
            Ok(Some(5_002))
        );
        let kinds: Vec<_> = history(&table).iter().map(|e| e["kind"].clone()).collect();
        assert_eq!(kinds, ["timeout", "transient"]);
    }

    #[test]
    fn history_and_texts_are_capped() {
        let long = "é".repeat(5_000);
        let mut props = job();
        for attempt in 1..=40 {
            props = for_retry(
                &props,
                &failed(attempt, FailureKind::Transient, &long),
                attempt + 1,
                from_unix_millis(1),
            );
        }
        let dead = for_dead_letter(
            &props,
            &failed(41, FailureKind::Panic, &long),
            FailureKind::Exhausted,
            "q",
        );
        let table = dead.headers().clone().unwrap();
        let history = history(&table);
        assert_eq!(history.len(), MAX_HISTORY_ENTRIES);
        assert_eq!(history[0]["attempt"], "1", "the first attempt is kept");
        assert_eq!(
            history[MAX_HISTORY_ENTRIES - 1]["attempt"],
            "41",
            "and the latest"
        );
        assert!(
            history
                .iter()
                .all(|e| e["error"].len() <= MAX_HISTORY_ERROR_BYTES)
        );
        assert!(text_header(&table, headers::ERROR).unwrap().len() <= MAX_ERROR_BYTES);
        let size: usize = history
            .iter()
            .flat_map(|e| e.values())
            .map(String::len)
            .sum();
        assert!(size < 16 * 1024, "history of {size} bytes");
    }
}

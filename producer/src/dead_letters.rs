//! Dead letters for operators: selecting entries by a filter, what an entry says about itself,
//! and page tokens. Reading a dead-letter queue is [`crate::scan`]'s.

use crate::scan::Message;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jobpipe_proto::{
    failure::{self, REPLAYED},
    headers,
    job::{JobProperties, from_unix_millis, integer_header, text_header},
    v1::{DeadLetter, DeadLetterFilter, HistoryEntry},
};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable},
};
use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    time::SystemTime,
};

/// The most of a payload a listing returns per entry.
pub(crate) const MAX_LISTED_PAYLOAD: usize = 64 * 1024;
/// The most entries a selector may name per list.
const MAX_SELECTORS: usize = 1000;

/// Which dead letters; every set part must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Filter {
    job_types: Vec<String>,
    kinds: Vec<String>,
    job_ids: Vec<String>,
    after_ms: Option<u64>,
    before_ms: Option<u64>,
}

/// The failure kinds a filter may name.
const KINDS: [&str; 7] = [
    "permanent",
    "exhausted",
    "timeout",
    "no_handler",
    "decode",
    "rejected",
    "delivery_limit",
];

impl Filter {
    /// Checks a request's filter; the error names the field.
    pub(crate) fn parse(filter: Option<DeadLetterFilter>) -> Result<Self, (String, String)> {
        let Some(filter) = filter else {
            return Ok(Self::default());
        };
        for (field, list) in [
            ("filter.job_types", &filter.job_types),
            ("filter.kinds", &filter.kinds),
            ("filter.job_ids", &filter.job_ids),
        ] {
            if list.len() > MAX_SELECTORS {
                return Err((field.into(), format!("at most {MAX_SELECTORS} entries")));
            }
        }
        if let Some(kind) = filter.kinds.iter().find(|k| !KINDS.contains(&k.as_str())) {
            return Err((
                "filter.kinds".into(),
                format!(
                    "unknown kind {:?} (one of {})",
                    jobpipe_proto::metadata::truncate(kind, 64),
                    KINDS.join(", ")
                ),
            ));
        }
        let millis =
            |field: &str, at: Option<prost_types::Timestamp>| -> Result<_, (String, String)> {
                at.map(|at| {
                    SystemTime::try_from(at)
                        .ok()
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .and_then(|d| u64::try_from(d.as_millis()).ok())
                        .ok_or_else(|| {
                            (
                                field.to_owned(),
                                "must be a valid time after 1970".to_owned(),
                            )
                        })
                })
                .transpose()
            };
        let mut parsed = Self {
            job_types: filter.job_types,
            kinds: filter.kinds,
            job_ids: filter.job_ids,
            after_ms: millis("filter.failed_after", filter.failed_after)?,
            before_ms: millis("filter.failed_before", filter.failed_before)?,
        };
        for list in [
            &mut parsed.job_types,
            &mut parsed.kinds,
            &mut parsed.job_ids,
        ] {
            list.sort_unstable();
            list.dedup();
        }
        Ok(parsed)
    }

    /// Whether it selects everything.
    pub(crate) fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether `entry` is selected.
    pub(crate) fn matches(&self, entry: &Summary) -> bool {
        let listed =
            |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        listed(&self.job_types, &entry.job_type)
            && listed(&self.kinds, &entry.kind)
            && listed(&self.job_ids, &entry.job_id)
            && self
                .after_ms
                .is_none_or(|after| entry.failed_at_ms >= after)
            && self
                .before_ms
                .is_none_or(|before| entry.failed_at_ms < before)
    }

    /// A digest of the filter and queue, so a page token is used only with its own query.
    fn digest(&self, queue: &str) -> u64 {
        let mut hasher = DefaultHasher::new();
        (self, queue).hash(&mut hasher);
        hasher.finish()
    }
}

/// What a dead letter says about itself, read leniently: a message the broker dead-lettered
/// without jobpipe's record, or one that is not a job at all, is still listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) job_id: String,
    pub(crate) job_type: String,
    pub(crate) kind: String,
    pub(crate) failed_at_ms: u64,
    /// Whether it is a readable job, which a replay can run again.
    pub(crate) readable: bool,
}

/// Reads `properties`' summary.
pub(crate) fn summarize(properties: &BasicProperties) -> Summary {
    let empty = FieldTable::default();
    let table = properties.headers().as_ref().unwrap_or(&empty);
    let text = |name: &str| text_header(table, name).map(|s| s.into_owned());
    // Without jobpipe's record, RabbitMQ's reason (`delivery_limit`, `rejected`, ...).
    let kind = text(headers::ERROR_KIND)
        .or_else(|| text("x-first-death-reason"))
        .unwrap_or_default();
    Summary {
        job_id: properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default(),
        job_type: properties
            .kind()
            .as_ref()
            .map(|t| t.to_string())
            .unwrap_or_default(),
        kind,
        failed_at_ms: integer_header(table, headers::FAILED_AT_MS)
            .ok()
            .flatten()
            .unwrap_or_default(),
        readable: JobProperties::decode(properties).is_ok(),
    }
}

/// The entry whose `summary` was read, as the API shows it: `queue` is its origin when it does
/// not name one; its payload only up to `payload` bytes, when asked.
pub(crate) fn to_proto(
    summary: Summary,
    message: &Message,
    queue: &str,
    payload: Option<usize>,
) -> DeadLetter {
    let (properties, body) = (&message.properties, &message.body);
    let empty = FieldTable::default();
    let table = properties.headers().as_ref().unwrap_or(&empty);
    let text = |name: &str| {
        text_header(table, name)
            .map(|s| s.into_owned())
            .unwrap_or_default()
    };
    let timestamp = |ms: u64| Some(prost_types::Timestamp::from(from_unix_millis(ms)));
    let history = failure::history(table)
        .into_iter()
        .map(|entry| HistoryEntry {
            attempt: number(&entry, "attempt") as u32,
            at: timestamp(number(&entry, "at")),
            kind: entry.get("kind").cloned().unwrap_or_default(),
            error: entry.get("error").cloned().unwrap_or_default(),
            consumer: entry.get("consumer").cloned().unwrap_or_default(),
            by: entry.get("by").cloned().unwrap_or_default(),
        })
        .collect::<Vec<_>>();
    let attempts = history
        .iter()
        .filter(|entry| entry.kind != REPLAYED)
        .map(|entry| entry.attempt)
        .max()
        .unwrap_or(0);
    let metadata: HashMap<String, String> = table
        .inner()
        .iter()
        .filter(|(key, _)| !headers::is_reserved(key.as_str()))
        .filter_map(|(key, value)| match value {
            AMQPValue::LongString(text) => Some((
                key.to_string(),
                String::from_utf8_lossy(text.as_bytes()).into_owned(),
            )),
            _ => None,
        })
        .collect();
    let origin = text(headers::ORIGIN_QUEUE);
    DeadLetter {
        job_id: summary.job_id,
        r#type: summary.job_type,
        queue: if origin.is_empty() {
            queue.to_owned()
        } else {
            origin
        },
        kind: summary.kind,
        error: text(headers::ERROR),
        failed_at: (summary.failed_at_ms > 0)
            .then(|| timestamp(summary.failed_at_ms))
            .flatten(),
        attempts,
        history,
        metadata,
        content_type: properties
            .content_type()
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        payload_size: body.len() as u64,
        payload: payload
            .map(|max| body[..body.len().min(max)].to_vec().into())
            .unwrap_or_default(),
        submitted_at: integer_header(table, headers::SUBMITTED_AT_MS)
            .ok()
            .flatten()
            .and_then(timestamp),
    }
}

fn number(entry: &std::collections::BTreeMap<String, String>, key: &str) -> u64 {
    entry.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The order listings follow: when the job failed, then its id. Queue order is no use: the
/// entries a scan held go back in an order of the broker's choosing.
pub(crate) type SortKey = (u64, String);

impl Summary {
    /// Where the entry comes in a listing.
    pub(crate) fn key(&self) -> SortKey {
        (self.failed_at_ms, self.job_id.clone())
    }
}

/// Where the next page of a listing starts: after the last entry shown, for this queue and
/// filter only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PageToken {
    digest: u64,
    /// The last entry shown; `None` on the first page.
    pub(crate) after: Option<SortKey>,
}

impl PageToken {
    /// The first page of `filter` on `queue`.
    pub(crate) fn first(filter: &Filter, queue: &str) -> Self {
        Self {
            digest: filter.digest(queue),
            after: None,
        }
    }

    /// The token of the page after this one, whose last entry was `last`.
    pub(crate) fn after(&self, last: SortKey) -> Self {
        Self {
            digest: self.digest,
            after: Some(last),
        }
    }

    /// Whether an entry at `key` belongs after this token.
    pub(crate) fn admits(&self, key: &SortKey) -> bool {
        self.after.as_ref().is_none_or(|after| key > after)
    }

    /// The token's text.
    pub(crate) fn encode(&self) -> String {
        let (at, id) = self.after.clone().unwrap_or_default();
        URL_SAFE_NO_PAD.encode(format!("v1:{:016x}:{at}:{id}", self.digest))
    }

    /// Reads a token, refusing one that is not ours or belongs to another query.
    pub(crate) fn decode(text: &str, filter: &Filter, queue: &str) -> Result<Self, &'static str> {
        if text.is_empty() {
            return Ok(Self::first(filter, queue));
        }
        let refused = "is not a page token of this query (same queue and filter)";
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| refused)?;
        let text = String::from_utf8(bytes).map_err(|_| refused)?;
        // The job id comes last: it may hold colons.
        let mut parts = text.splitn(4, ':');
        let (Some("v1"), Some(digest), Some(at), Some(id)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refused);
        };
        let digest = u64::from_str_radix(digest, 16).map_err(|_| refused)?;
        let at = at.parse().map_err(|_| refused)?;
        if digest != filter.digest(queue) {
            return Err(refused);
        }
        Ok(Self {
            digest,
            after: Some((at, id.to_owned())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letter(id: &str, job_type: &str, kind: &str, failed_at_ms: u64) -> BasicProperties {
        let mut table = FieldTable::default();
        table.insert(
            headers::ERROR_KIND.into(),
            jobpipe_proto::job::long_string(kind),
        );
        table.insert(
            headers::FAILED_AT_MS.into(),
            jobpipe_proto::job::integer(failed_at_ms),
        );
        BasicProperties::default()
            .with_message_id(id.into())
            .with_type(job_type.into())
            .with_headers(table)
    }

    fn filter(f: DeadLetterFilter) -> Filter {
        Filter::parse(Some(f)).unwrap()
    }

    #[test]
    fn filters_select_what_they_name() {
        let entry = summarize(&dead_letter("a1", "email.send", "permanent", 5_000));
        let at = |ms: i64| {
            Some(prost_types::Timestamp {
                seconds: ms / 1000,
                nanos: 0,
            })
        };
        let cases = [
            (DeadLetterFilter::default(), true),
            (
                DeadLetterFilter {
                    job_types: vec!["email.send".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                DeadLetterFilter {
                    job_types: vec!["email".into()],
                    ..Default::default()
                },
                false,
            ),
            (
                DeadLetterFilter {
                    kinds: vec!["permanent".into(), "timeout".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                DeadLetterFilter {
                    kinds: vec!["exhausted".into()],
                    ..Default::default()
                },
                false,
            ),
            (
                DeadLetterFilter {
                    job_ids: vec!["a1".into()],
                    ..Default::default()
                },
                true,
            ),
            (
                DeadLetterFilter {
                    job_ids: vec!["a2".into()],
                    ..Default::default()
                },
                false,
            ),
            (
                DeadLetterFilter {
                    failed_after: at(5_000),
                    ..Default::default()
                },
                true,
            ),
            (
                DeadLetterFilter {
                    failed_after: at(6_000),
                    ..Default::default()
                },
                false,
            ),
            (
                DeadLetterFilter {
                    failed_before: at(5_000),
                    ..Default::default()
                },
                false,
            ),
            (
                DeadLetterFilter {
                    failed_before: at(6_000),
                    ..Default::default()
                },
                true,
            ),
        ];
        for (f, expected) in cases {
            assert_eq!(filter(f.clone()).matches(&entry), expected, "{f:?}");
        }
    }

    #[test]
    fn bad_filters_name_the_field() {
        let cases = [
            (
                DeadLetterFilter {
                    kinds: vec!["oops".into()],
                    ..Default::default()
                },
                "filter.kinds",
            ),
            (
                DeadLetterFilter {
                    failed_after: Some(prost_types::Timestamp {
                        seconds: -5,
                        nanos: 0,
                    }),
                    ..Default::default()
                },
                "filter.failed_after",
            ),
            (
                DeadLetterFilter {
                    job_ids: vec![String::new(); 1001],
                    ..Default::default()
                },
                "filter.job_ids",
            ),
        ];
        for (f, field) in cases {
            assert_eq!(Filter::parse(Some(f)).unwrap_err().0, field);
        }
    }

    #[test]
    fn page_tokens_belong_to_their_query() {
        let all = Filter::default();
        let some = filter(DeadLetterFilter {
            kinds: vec!["timeout".into()],
            ..Default::default()
        });
        let last = (1_700_000_000_000, "job:42".to_owned());
        let token = PageToken::first(&all, "default")
            .after(last.clone())
            .encode();
        let decoded = PageToken::decode(&token, &all, "default").unwrap();
        assert_eq!(decoded.after.as_ref(), Some(&last));
        assert!(!decoded.admits(&last) && decoded.admits(&(last.0, "job:43".into())));
        assert!(decoded.admits(&(last.0 + 1, String::new())));
        assert!(PageToken::decode(&token, &some, "default").is_err());
        assert!(PageToken::decode(&token, &all, "other").is_err());
        for junk in ["x", "djE6eHl6OjE", "%%%"] {
            assert!(PageToken::decode(junk, &all, "default").is_err(), "{junk}");
        }
        assert_eq!(PageToken::decode("", &all, "default").unwrap().after, None);
    }

    #[test]
    fn a_dead_letter_without_a_record_is_still_listed_with_the_brokers_reason() {
        let mut table = FieldTable::default();
        table.insert(
            "x-first-death-reason".into(),
            jobpipe_proto::job::long_string("delivery_limit"),
        );
        let props = BasicProperties::default()
            .with_message_id("m1".into())
            .with_headers(table);
        let entry = summarize(&props);
        assert_eq!(entry.kind, "delivery_limit");
        assert!(!entry.readable);
    }
}

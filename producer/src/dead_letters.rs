//! Dead letters for operators: reading a dead-letter queue without changing it, selecting entries
//! by a filter, and what an entry says about itself.
//!
//! A [`Scan`] reads a dead-letter queue from its head with `basic.get`, one message at a time
//! (bounded memory whatever the queue's length), on a channel of its own, acknowledging nothing
//! but what the caller removes. Closing the channel puts every other entry back, in its order.
//! Dead-letter queues have no delivery limit, so being read never moves an entry.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::{StreamExt, future::BoxFuture, stream::FuturesUnordered};
use jobpipe_proto::{
    failure::{self, REPLAYED},
    headers,
    job::{JobProperties, from_unix_millis, integer_header, text_header},
    v1::{DeadLetter, DeadLetterFilter, HistoryEntry},
};
use jobpipe_runtime::amqp::Session;
use lapin::{BasicProperties, Channel, options::BasicGetOptions, types::AMQPValue};
use std::{
    collections::{BTreeSet, HashMap},
    hash::{DefaultHasher, Hash, Hasher},
    time::SystemTime,
};

/// The most of a payload a listing returns per entry.
pub(crate) const MAX_LISTED_PAYLOAD: usize = 64 * 1024;
/// How often, and how far apart, a closing scan checks that its entries are back.
const RETURN_CHECKS: u32 = 40;
const RETURN_CHECK_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);
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
    let empty = lapin::types::FieldTable::default();
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

/// The entry as the API shows it; the payload only with `payload` (cut to `max_payload`).
pub(crate) fn to_proto(
    properties: &BasicProperties,
    body: &[u8],
    queue: &str,
    payload: bool,
    max_payload: usize,
) -> DeadLetter {
    let summary = summarize(properties);
    let empty = lapin::types::FieldTable::default();
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
        payload: if payload {
            body[..body.len().min(max_payload)].to_vec().into()
        } else {
            Default::default()
        },
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

/// One dead letter read by a [`Scan`].
#[derive(Debug)]
pub(crate) struct Message {
    /// The channel that holds it, and its delivery tag there.
    pub(crate) tag: (usize, u64),
    pub(crate) properties: BasicProperties,
    pub(crate) body: Vec<u8>,
}

/// Channels a scan reads on at once: `basic.get` is one round trip per message and channel,
/// so several channels read several messages at a time (listings are sorted by key, not by
/// queue order, so the interleaving does not matter).
const READERS: usize = 8;

type Got = (
    usize,
    Result<Option<lapin::message::BasicGetMessage>, lapin::Error>,
);

/// One pass over a dead-letter queue.
pub(crate) struct Scan {
    readers: Vec<Reader>,
    queue: String,
    in_flight: FuturesUnordered<BoxFuture<'static, Got>>,
    /// The queue had nothing more to give.
    exhausted: bool,
}

struct Reader {
    channel: Channel,
    /// The delivery tags of the entries read and not removed: what goes back when the scan
    /// ends (a nack of a removed tag would close the channel).
    held: BTreeSet<u64>,
}

impl std::fmt::Debug for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan").field("queue", &self.queue).finish()
    }
}

impl Scan {
    /// Starts reading `queue` on channels of its own.
    pub(crate) async fn open(session: &Session, queue: String) -> Result<Self, lapin::Error> {
        let mut scan = Self {
            readers: Vec::with_capacity(READERS),
            queue,
            in_flight: FuturesUnordered::new(),
            exhausted: false,
        };
        for index in 0..READERS {
            scan.readers.push(Reader {
                channel: session.open_channel().await?,
                held: BTreeSet::new(),
            });
            scan.get(index);
        }
        Ok(scan)
    }

    fn get(&mut self, index: usize) {
        let channel = self.readers[index].channel.clone();
        let queue = self.queue.clone();
        self.in_flight.push(Box::pin(async move {
            let got = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await;
            (index, got)
        }));
    }

    /// The next entry, held (unacknowledged) until removed or the scan closes; `None` at the
    /// end (entries this scan holds are not seen again).
    pub(crate) async fn next(&mut self) -> Result<Option<Message>, lapin::Error> {
        while let Some((index, got)) = self.in_flight.next().await {
            let Some(message) = got? else {
                self.exhausted = true;
                continue;
            };
            if !self.exhausted {
                self.get(index);
            }
            let delivery = message.delivery;
            self.readers[index].held.insert(delivery.delivery_tag);
            return Ok(Some(Message {
                tag: (index, delivery.delivery_tag),
                properties: delivery.properties,
                body: delivery.data,
            }));
        }
        Ok(None)
    }

    /// Removes the entry `tag` for good.
    pub(crate) async fn remove(&mut self, (index, tag): (usize, u64)) -> Result<(), lapin::Error> {
        let reader = &mut self.readers[index];
        reader
            .channel
            .basic_ack(tag, lapin::options::BasicAckOptions::default())
            .await?;
        reader.held.remove(&tag);
        Ok(())
    }

    /// Ends the pass: every entry not removed goes back to the queue, and is back (ready for
    /// the next scan) when this returns.
    pub(crate) async fn close(self) {
        let Self {
            readers,
            queue,
            in_flight,
            ..
        } = self;
        // Gets still on their way hold what they get: let them land, so it goes back too.
        let landed: Vec<Got> =
            tokio::time::timeout(std::time::Duration::from_secs(5), in_flight.collect())
                .await
                .unwrap_or_default();
        let mut readers = readers;
        for (index, got) in landed {
            if let Ok(Some(message)) = got {
                readers[index].held.insert(message.delivery.delivery_tag);
            }
        }
        let held = u32::try_from(
            readers
                .iter()
                .map(|reader| reader.held.len())
                .sum::<usize>(),
        )
        .unwrap_or(u32::MAX);
        let give_back = async {
            for reader in &readers {
                // Every tag up to the last one held: those removed are no longer counted.
                if let Some(&last) = reader.held.last() {
                    let all = lapin::options::BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    };
                    reader.channel.basic_nack(last, all).await?;
                }
            }
            // The queue takes returns in asynchronously: wait (briefly) until they are ready
            // again, so that a scan that starts next sees them. Nothing but scans takes from a
            // dead-letter queue, so its ready count only grows meanwhile.
            if held > 0 {
                let passive = lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                for _ in 0..RETURN_CHECKS {
                    let ready = readers[0]
                        .channel
                        .queue_declare(queue.as_str().into(), passive, Default::default())
                        .await?
                        .message_count();
                    if ready >= held {
                        break;
                    }
                    tokio::time::sleep(RETURN_CHECK_PAUSE).await;
                }
            }
            // Only channels still open: closing one the broker closed breaks the connection.
            for reader in readers.iter().filter(|r| r.channel.status().connected()) {
                reader.channel.close(200, "scan done".into()).await?;
            }
            Ok::<_, lapin::Error>(())
        };
        // A channel that cannot close cleanly goes with its connection; the broker returns its
        // entries either way.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), give_back).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

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

//! Dead letters for operators: reading a dead-letter queue without changing it, selecting entries
//! by a filter, and what an entry says about itself.
//!
//! A [`Scan`] reads a dead-letter queue through subscriptions of its own with a bounded window
//! (bounded memory whatever the queue's length), acknowledging nothing but what the caller
//! removes; when it ends, every other entry goes back. Dead-letter queues have no delivery
//! limit, so being read never moves an entry.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::{FutureExt, StreamExt};
use jobpipe_proto::{
    failure::{self, REPLAYED},
    headers,
    job::{JobProperties, from_unix_millis, integer_header, text_header},
    v1::{DeadLetter, DeadLetterFilter, HistoryEntry},
};
use jobpipe_runtime::amqp::Session;
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{
        BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    hash::{DefaultHasher, Hash, Hasher},
    time::{Duration, SystemTime},
};
use tracing::warn;

/// The most of a payload a listing returns per entry.
pub(crate) const MAX_LISTED_PAYLOAD: usize = 64 * 1024;
/// How long a closing scan waits for its entries to be back: a second, and a quorum queue takes
/// about 25,000 returns per second in (100,000 entries show as ready all at once, 4.5 s later).
const RETURN_PATIENCE: Duration = Duration::from_secs(1);
const RETURN_PATIENCE_PER_ENTRY: Duration = Duration::from_micros(100);
const RETURN_CHECK_PAUSE: Duration = Duration::from_millis(25);
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

/// The entry whose `summary` was read, as the API shows it: `queue` is its origin when it does
/// not name one; its payload only up to `payload` bytes, when asked.
pub(crate) fn to_proto(
    summary: Summary,
    message: &Message,
    queue: &str,
    payload: Option<usize>,
) -> DeadLetter {
    let (properties, body) = (&message.properties, &message.body);
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

/// One dead letter read by a [`Scan`].
#[derive(Debug)]
pub(crate) struct Message {
    /// Its delivery tag on the scan's channel.
    pub(crate) tag: u64,
    pub(crate) properties: BasicProperties,
    pub(crate) body: Vec<u8>,
}

/// What a scan's subscription may hold. A scan holds every entry it read and did not remove, so
/// when its subscription is full it ends it (what it holds stays held) and subscribes anew: the
/// broker never sends more than one window ahead of the reader, and a pass is not limited by a
/// round trip per entry, as `basic.get` is (about 3,000 entries/s on a quorum queue). The window
/// is sized by the largest entry seen, so that it holds about [`WINDOW_BYTES`] (AMQP cannot
/// bound a window in bytes): a scan's memory is bounded whatever the entries' sizes.
const WINDOW_BYTES: usize = 4 << 20;
const FIRST_WINDOW: usize = 16;
const WINDOWS: std::ops::RangeInclusive<usize> = 4..=1024;
/// What an entry costs beyond its payload, roughly (properties and headers).
const ENTRY_OVERHEAD: usize = 1024;
/// How long a scan waits for an entry before asking the queue whether any are left.
const QUIET: Duration = Duration::from_millis(20);

/// One pass over the entries a dead-letter queue held when the pass began.
pub(crate) struct Scan {
    channel: Channel,
    queue: String,
    /// The subscription delivering now, and its tag.
    subscription: Option<(lapin::Consumer, String)>,
    subscriptions: usize,
    /// Entries of the current subscription not removed: when it holds its window, the broker
    /// sends it no more.
    subscription_holds: usize,
    window: usize,
    /// The largest entry read so far, in bytes (roughly).
    largest: usize,
    /// The first delivery tag of the current subscription (tags grow on a channel).
    subscription_from: u64,
    /// Deliveries that arrived while a subscription ended, not yet read.
    early: VecDeque<Delivery>,
    /// The delivery tags of the entries read and not removed: what goes back when the scan
    /// ends.
    held: BTreeSet<u64>,
    /// Entries left to read: the queue's length when the scan began. Entries dead-lettered
    /// since (a replayed job that failed again, say) wait for the next pass.
    left: u32,
    last_tag: u64,
}

impl std::fmt::Debug for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan").field("queue", &self.queue).finish()
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

impl Scan {
    /// Starts reading `queue` on a channel of its own.
    pub(crate) async fn open(session: &Session, queue: String) -> Result<Self, lapin::Error> {
        let channel = session.open_channel().await?;
        let mut scan = Self {
            channel,
            queue,
            subscription: None,
            subscriptions: 0,
            subscription_holds: 0,
            subscription_from: 0,
            window: 0,
            largest: 0,
            early: VecDeque::new(),
            held: BTreeSet::new(),
            left: 0,
            last_tag: 0,
        };
        let opened = async {
            scan.left = scan.ready().await?;
            if scan.left > 0 {
                scan.subscribe().await?;
            }
            Ok(())
        }
        .await;
        match opened {
            Ok(()) => Ok(scan),
            Err(error) => {
                // Nothing read yet: the channel holds nothing.
                let _ = scan.channel.close(200, "scan failed".into()).await;
                Err(error)
            }
        }
    }

    async fn ready(&self) -> Result<u32, lapin::Error> {
        Ok(self
            .channel
            .queue_declare(self.queue.as_str().into(), passive(), FieldTable::default())
            .await?
            .message_count())
    }

    /// Ends the current subscription, if any (its entries stay held; what it was sent before
    /// the end is kept for reading) and starts another.
    async fn subscribe(&mut self) -> Result<(), lapin::Error> {
        self.unsubscribe().await?;
        self.window = self.wanted_window();
        // Per subscription: quorum queues refuse a channel-wide window.
        let window = u16::try_from(self.window).unwrap_or(u16::MAX);
        self.channel
            .basic_qos(window, BasicQosOptions { global: false })
            .await?;
        self.subscriptions += 1;
        let tag = format!("jobpipe-scan-{}", self.subscriptions);
        let consumer = self
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.subscription = Some((consumer, tag));
        self.subscription_holds = 0;
        self.subscription_from = self.last_tag + 1;
        Ok(())
    }

    /// The window for the entries seen so far.
    fn wanted_window(&self) -> usize {
        match self.largest {
            0 => FIRST_WINDOW,
            largest => (WINDOW_BYTES / largest).clamp(*WINDOWS.start(), *WINDOWS.end()),
        }
    }

    async fn unsubscribe(&mut self) -> Result<(), lapin::Error> {
        let Some((mut consumer, tag)) = self.subscription.take() else {
            return Ok(());
        };
        self.channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await?;
        // The broker sends what it sent before it answers the cancel: it is all here.
        while let Some(delivery) = consumer.next().now_or_never().flatten() {
            let delivery = delivery?;
            self.last_tag = self.last_tag.max(delivery.delivery_tag);
            self.early.push_back(delivery);
        }
        Ok(())
    }

    async fn delivered(
        &mut self,
        wait: Option<Duration>,
    ) -> Option<Result<Delivery, lapin::Error>> {
        if let Some(delivery) = self.early.pop_front() {
            return Some(Ok(delivery));
        }
        let (consumer, _) = self.subscription.as_mut()?;
        match wait {
            None => consumer.next().now_or_never().flatten(),
            Some(wait) => tokio::time::timeout(wait, consumer.next())
                .await
                .ok()
                .flatten(),
        }
    }

    /// The next entry, held (unacknowledged) until removed or the scan closes; `None` at the
    /// end (entries this scan holds are not seen again).
    pub(crate) async fn next(&mut self) -> Result<Option<Message>, lapin::Error> {
        while self.left > 0 {
            if let Some(delivery) = self.delivered(None).await {
                return Ok(Some(self.take(delivery?)));
            }
            // Full, or (once, after the first entries) narrower than their size allows.
            if self.subscription_holds >= self.window || self.window < self.wanted_window() {
                self.subscribe().await?;
                continue;
            }
            if let Some(delivery) = self.delivered(Some(QUIET)).await {
                return Ok(Some(self.take(delivery?)));
            }
            // Nothing came: another reader may hold the rest. The broker sends what it
            // delivered to this channel before it answers on it, so when the queue has none
            // ready, whatever is on its way is already here.
            if self.ready().await? == 0 {
                let last = self.delivered(None).await.transpose()?;
                self.left = 0;
                return Ok(last.map(|delivery| self.take(delivery)));
            }
        }
        Ok(None)
    }

    fn take(&mut self, delivery: Delivery) -> Message {
        let tag = delivery.delivery_tag;
        self.left = self.left.saturating_sub(1);
        self.last_tag = self.last_tag.max(tag);
        self.largest = self.largest.max(delivery.data.len() + ENTRY_OVERHEAD);
        if tag >= self.subscription_from {
            self.subscription_holds += 1;
        }
        self.held.insert(tag);
        Message {
            tag,
            properties: delivery.properties,
            body: delivery.data,
        }
    }

    /// Removes the entry `tag` for good.
    pub(crate) async fn remove(&mut self, tag: u64) -> Result<(), lapin::Error> {
        self.channel
            .basic_ack(tag, lapin::options::BasicAckOptions::default())
            .await?;
        if self.held.remove(&tag) && tag >= self.subscription_from {
            self.subscription_holds -= 1;
        }
        Ok(())
    }

    /// Ends the pass: every entry not removed goes back to the queue, and is back (ready for
    /// the next scan) when this returns.
    pub(crate) async fn close(mut self) {
        let bound = Duration::from_secs(5) + RETURN_PATIENCE_PER_ENTRY * self.held.len() as u32;
        let give_back = async {
            self.unsubscribe().await?;
            self.held
                .extend(self.early.drain(..).map(|delivery| delivery.delivery_tag));
            let held = u32::try_from(self.held.len()).unwrap_or(u32::MAX);
            // Every tag up to the last one held: those removed are no longer counted.
            if let Some(&last) = self.held.last() {
                let all = BasicNackOptions {
                    multiple: true,
                    requeue: true,
                };
                self.channel.basic_nack(last, all).await?;
                // The queue takes returns in asynchronously: wait until they are ready again,
                // so that a scan that starts next sees them. Only scans take from a dead-letter
                // queue, so its ready count only grows meanwhile.
                let patience = RETURN_PATIENCE + RETURN_PATIENCE_PER_ENTRY * held;
                let returned = async {
                    while self.ready().await? < held {
                        tokio::time::sleep(RETURN_CHECK_PAUSE).await;
                    }
                    Ok::<_, lapin::Error>(())
                };
                if tokio::time::timeout(patience, returned).await.is_err() {
                    warn!(queue = %self.queue, held, "Dead letters a scan read are slow to return to their queue.");
                }
            }
            // Only a channel still open: closing one the broker closed breaks the connection.
            if self.channel.status().connected() {
                self.channel.close(200, "scan done".into()).await?;
            }
            Ok::<_, lapin::Error>(())
        };
        // A channel that cannot close cleanly goes with its connection; the broker returns its
        // entries either way.
        let _ = tokio::time::timeout(bound, give_back).await;
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

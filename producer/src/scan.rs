//! Reading a dead-letter queue without changing it: a [`Scan`] takes the entries present when it
//! began through subscriptions of its own with a bounded window (bounded memory whatever the
//! queue's length), acknowledges nothing but what the caller removes, and when it ends gives
//! every other entry back and waits until they are ready again. Dead-letter queues have no
//! delivery limit, so being read never moves an entry.

use futures::{FutureExt, StreamExt};
use jobpipe_runtime::{amqp::Session, queue_state};
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::FieldTable,
};
use std::{
    collections::{BTreeSet, VecDeque},
    time::Duration,
};
use tracing::warn;

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
/// How long a closing scan waits for its entries to be back: a second, and a quorum queue takes
/// about 25,000 returns per second in (100,000 entries show as ready all at once, 4.5 s later).
const RETURN_PATIENCE: Duration = Duration::from_secs(1);
const RETURN_PATIENCE_PER_ENTRY: Duration = Duration::from_micros(100);
const RETURN_CHECK_PAUSE: Duration = Duration::from_millis(25);

/// One dead letter read by a [`Scan`].
#[derive(Debug)]
pub(crate) struct Message {
    /// Its delivery tag on the scan's channel.
    pub(crate) tag: u64,
    pub(crate) properties: BasicProperties,
    pub(crate) body: Vec<u8>,
}

/// One pass over the entries a dead-letter queue held when the pass began.
pub(crate) struct Scan {
    channel: Channel,
    queue: String,
    /// The subscription delivering now, and its tag; `None` before the first, or when the
    /// broker ended it.
    subscription: Option<(lapin::Consumer, String)>,
    subscriptions: usize,
    /// Entries of the current subscription not removed: when it holds its window, the broker
    /// sends it no more.
    subscription_holds: usize,
    /// The first delivery tag of the current subscription (tags grow on a channel).
    subscription_from: u64,
    window: usize,
    /// The largest entry read so far, in bytes (roughly).
    largest: usize,
    /// Deliveries that arrived while a subscription ended, not yet read.
    early: VecDeque<Delivery>,
    /// The delivery tags of the entries read and not removed: what goes back when the scan
    /// ends.
    held: BTreeSet<u64>,
    /// Entries left to read: the queue's length when the scan began. Entries dead-lettered
    /// since (a replayed job that failed again, say) wait for the next pass.
    left: u32,
    /// The queue had none ready: what was delivered is read, then the pass ends.
    ending: bool,
    last_tag: u64,
}

impl std::fmt::Debug for Scan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scan").field("queue", &self.queue).finish()
    }
}

/// What waiting for a delivery gave.
// Returned and matched at once, never stored: boxing the delivery would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Waited {
    Delivery(Result<Delivery, lapin::Error>),
    /// The broker ended the subscription (the queue was deleted, say).
    Ended,
    Nothing,
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
            ending: false,
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
        Ok(queue_state::depth(&self.channel, &self.queue).await?.0)
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
        if self.channel.status().connected() {
            self.channel
                .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                .await?;
        }
        // The broker sends what it sent before it answers the cancel: it is all here.
        while let Some(delivery) = consumer.next().now_or_never().flatten() {
            let delivery = delivery?;
            self.last_tag = self.last_tag.max(delivery.delivery_tag);
            self.early.push_back(delivery);
        }
        Ok(())
    }

    /// A delivery already here, or one within `wait`.
    async fn delivered(&mut self, wait: Duration) -> Waited {
        if let Some(delivery) = self.early.pop_front() {
            return Waited::Delivery(Ok(delivery));
        }
        let Some((consumer, _)) = self.subscription.as_mut() else {
            return Waited::Nothing;
        };
        let next = match consumer.next().now_or_never() {
            Some(next) => next,
            None if wait.is_zero() => return Waited::Nothing,
            None => match tokio::time::timeout(wait, consumer.next()).await {
                Ok(next) => next,
                Err(_) => return Waited::Nothing,
            },
        };
        match next {
            Some(delivery) => Waited::Delivery(delivery),
            None => {
                self.subscription = None;
                Waited::Ended
            }
        }
    }

    /// The next entry, held (unacknowledged) until removed or the scan closes; `None` at the
    /// end (entries this scan holds are not seen again).
    pub(crate) async fn next(&mut self) -> Result<Option<Message>, lapin::Error> {
        while self.left > 0 {
            match self.delivered(Duration::ZERO).await {
                Waited::Delivery(delivery) => return Ok(Some(self.take(delivery?))),
                Waited::Ended => self.ending = true,
                Waited::Nothing => {}
            }
            // The queue had none ready when last asked, and what was on its way is read.
            if self.ending {
                self.left = 0;
                break;
            }
            // Full, or (once, after the first entries) narrower than their size allows.
            if self.subscription_holds >= self.window || self.window < self.wanted_window() {
                self.subscribe().await?;
                continue;
            }
            match self.delivered(QUIET).await {
                Waited::Delivery(delivery) => return Ok(Some(self.take(delivery?))),
                Waited::Ended => self.ending = true,
                // Nothing came: another reader may hold the rest. The broker sends what it
                // delivered to this channel before it answers on it, so when the queue has
                // none ready, whatever is on its way is here once the answer is: read it all,
                // then end.
                Waited::Nothing => self.ending = self.ready().await? == 0,
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
            .basic_ack(tag, BasicAckOptions::default())
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
                // What is ready without them (entries this scan never took count too).
                let before = self.ready().await?;
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
                    while self.ready().await? < before.saturating_add(held) {
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

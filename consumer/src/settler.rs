//! Settling one channel's deliveries: acks of deliveries next to each other on the channel go to
//! the broker as one multiple-ack.
//!
//! Every settlement of a channel passes through one task. An ack with `multiple` covers every
//! delivery of the channel up to its tag, so the task sends one only over a run of tags that
//! jobpipe has settled or is acknowledging in the same batch; every other ack, nack and reject
//! goes alone. Tags on a channel count up from 1 with no gap, so a delivery jobpipe never saw
//! (dropped with a subscription) is an unsettled tag that no multiple-ack passes. For the broker a
//! run of N finished jobs is one frame and one queue command instead of N.

use futures::future::join_all;
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions},
    types::DeliveryTag,
};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// How long an ack, nack or reject may take to reach the connection, once the settling task sends
/// it (a request arriving meanwhile waits for the batch in hand, so twice this at most). A blocked
/// broker (resource alarm) stops every write; past this the delivery is left to the broker, which
/// returns it to its queue when the channel closes.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most settlements taken at once.
const BATCH: usize = 512;

/// Whether settling reached the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The broker has the ack, nack or reject.
    Done,
    /// The channel is gone (broker link lost): the broker redelivers the message by itself.
    ChannelGone,
}

/// One way of settling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    Requeue,
    Reject,
}

/// The handle to one channel's settling task. The task keeps the channel open until the last
/// handle is gone: deliveries still being worked on can be settled after their subscription ended.
#[derive(Debug, Clone)]
pub(crate) struct Settler {
    requests: mpsc::UnboundedSender<Request>,
    /// Deliveries received and not yet handed to the task for settling (nor given up with their
    /// channel).
    unsettled: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct Request {
    delivery: Delivery,
    how: Settle,
    /// `None`: nobody waits for the answer.
    reply: Option<oneshot::Sender<Settled>>,
}

impl Settler {
    /// Starts the settling task of `channel`.
    pub(crate) fn new(channel: Channel) -> Self {
        let (requests, received) = mpsc::unbounded_channel();
        let unsettled = Arc::new(AtomicUsize::new(0));
        tokio::spawn(run(channel, received, unsettled.clone()));
        Self {
            requests,
            unsettled,
        }
    }

    /// Counts a delivery received on the channel, until it is settled or [`Settler::forget`]ten.
    pub(crate) fn received(&self) {
        self.unsettled.fetch_add(1, Ordering::Relaxed);
    }

    /// Stops counting a delivery that cannot be settled any more (its channel failed).
    pub(crate) fn forget(&self) {
        self.unsettled.fetch_sub(1, Ordering::Relaxed);
    }

    /// Deliveries received and not yet handed over for settling.
    pub(crate) fn unsettled(&self) -> usize {
        self.unsettled.load(Ordering::Relaxed)
    }

    /// Settles `delivery` (of this channel) and tells whether the broker has it.
    pub(crate) async fn settle(&self, delivery: Delivery, how: Settle) -> Settled {
        let (reply, answer) = oneshot::channel();
        if !self.request(delivery, how, Some(reply)) {
            return Settled::ChannelGone;
        }
        answer.await.unwrap_or(Settled::ChannelGone)
    }

    /// Settles `delivery` without waiting (from a destructor). The task is gone only with the
    /// runtime: the channel closes then and the broker requeues.
    pub(crate) fn settle_later(&self, delivery: Delivery, how: Settle) {
        self.request(delivery, how, None);
    }

    /// Hands a settlement to the task; `false` if the task is gone.
    fn request(
        &self,
        delivery: Delivery,
        how: Settle,
        reply: Option<oneshot::Sender<Settled>>,
    ) -> bool {
        let request = Request {
            delivery,
            how,
            reply,
        };
        self.requests.send(request).is_ok()
    }
}

async fn run(
    channel: Channel,
    mut requests: mpsc::UnboundedReceiver<Request>,
    unsettled: Arc<AtomicUsize>,
) {
    let _open = channel;
    let mut tags = Tags::default();
    let mut batch = Vec::with_capacity(BATCH);
    while requests.recv_many(&mut batch, BATCH).await > 0 {
        unsettled.fetch_sub(batch.len(), Ordering::Relaxed);
        let (acks, alone): (Vec<Request>, Vec<Request>) = batch
            .drain(..)
            .partition(|request| request.how == Settle::Ack);
        // Nacks and rejects first, each written to the connection before any ack is sent: a
        // multiple-ack ahead of one would cover it. One that did not go out stays unsettled, so
        // no multiple-ack passes it.
        let settled = join_all(alone.iter().map(|r| send(&r.delivery, r.how, false))).await;
        for (request, settled) in alone.iter().zip(&settled) {
            if *settled == Settled::Done {
                tags.record(request.delivery.delivery_tag);
            }
        }
        answer(alone.into_iter().zip(settled));

        let acked = acks.iter().map(|r| r.delivery.delivery_tag).collect();
        let top = tags.plan(&acked);
        let (covered, single): (Vec<Request>, Vec<Request>) = (acks.into_iter())
            .partition(|request| top.is_some_and(|top| request.delivery.delivery_tag <= top));
        let multiple = async {
            let top = covered.iter().max_by_key(|r| r.delivery.delivery_tag)?;
            // A run of one is a plain ack.
            Some(send(&top.delivery, Settle::Ack, covered.len() > 1).await)
        };
        let singles = join_all(single.iter().map(|r| send(&r.delivery, Settle::Ack, false)));
        let (multiple, singles) = futures::join!(multiple, singles);
        if let Some(multiple) = multiple {
            answer(covered.into_iter().map(|request| (request, multiple)));
        }
        answer(single.into_iter().zip(singles));
    }
}

fn answer(settled: impl Iterator<Item = (Request, Settled)>) {
    for (request, settled) in settled {
        if let Some(reply) = request.reply {
            let _ = reply.send(settled);
        }
    }
}

/// Sends one ack (covering every earlier delivery of the channel with `multiple`), nack-requeue
/// or reject.
async fn send(delivery: &Delivery, how: Settle, multiple: bool) -> Settled {
    let acker = &delivery.acker;
    let settled = tokio::time::timeout(SETTLE_TIMEOUT, async {
        match how {
            Settle::Ack => acker.ack(BasicAckOptions { multiple }).await,
            Settle::Requeue => {
                acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await
            }
            Settle::Reject => acker.reject(BasicRejectOptions { requeue: false }).await,
        }
    })
    .await;
    match settled {
        Ok(Ok(true)) => Settled::Done,
        Ok(Ok(false)) => Settled::ChannelGone,
        Ok(Err(error)) => {
            debug!(%error, "Settling failed; the broker will redeliver.");
            Settled::ChannelGone
        }
        Err(_elapsed) => {
            warn!("Settling timed out (is the broker blocked?); the broker will redeliver.");
            Settled::ChannelGone
        }
    }
}

/// Which tags of a channel are settled: every tag up to `through`, and the ranges in `beyond`
/// (first tag → last tag, none touching another or `through`). Ranges rather than tags: the tags
/// settled after a job held for minutes form one range, so memory follows the open deliveries.
#[derive(Debug, Default)]
struct Tags {
    through: DeliveryTag,
    beyond: BTreeMap<DeliveryTag, DeliveryTag>,
}

impl Tags {
    /// Records `tag` as settled.
    fn record(&mut self, tag: DeliveryTag) {
        if self.settled_through(tag).is_some() {
            return;
        }
        let (mut first, mut last) = (tag, tag);
        if let Some((&start, &end)) = self.beyond.range(..tag).next_back()
            && end + 1 == tag
        {
            self.beyond.remove(&start);
            first = start;
        }
        if let Some(end) = self.beyond.remove(&(tag + 1)) {
            last = end;
        }
        if first == self.through + 1 {
            self.through = last;
        } else {
            self.beyond.insert(first, last);
        }
    }

    /// The last tag of the settled range that holds `tag`, if it is settled.
    fn settled_through(&self, tag: DeliveryTag) -> Option<DeliveryTag> {
        if tag <= self.through {
            return Some(self.through);
        }
        let (_, &end) = self.beyond.range(..=tag).next_back()?;
        (end >= tag).then_some(end)
    }

    /// Records `acks` as settled and plans them: the acks in the run of tags from the first
    /// unsettled one, all settled before or acked now, go as one multiple-ack at the returned
    /// tag; the others alone.
    fn plan(&mut self, acks: &BTreeSet<DeliveryTag>) -> Option<DeliveryTag> {
        let mut top = None;
        let mut next = self.through + 1;
        loop {
            if acks.contains(&next) {
                top = Some(next);
                next += 1;
            } else if let Some(end) = self.settled_through(next) {
                next = end + 1;
            } else {
                break;
            }
        }
        acks.iter().for_each(|&tag| self.record(tag));
        top
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn runs_of_settled_tags_become_one_multiple_ack() {
        // (settled alone before, acks of the batch, expected multiple-ack tag)
        let cases: &[(&[u64], &[u64], Option<u64>)] = &[
            (&[], &[1], Some(1)),
            (&[], &[1, 2, 3], Some(3)),
            (&[], &[2, 3], None),
            (&[], &[1, 2, 4], Some(2)),
            (&[2], &[1, 3], Some(3)),
            (&[1, 2], &[3, 5], Some(3)),
            (&[1, 2, 4], &[3, 5], Some(5)),
            (&[3], &[1], Some(1)),
        ];
        for &(alone, acks, expected) in cases {
            let mut tags = Tags::default();
            alone.iter().for_each(|&tag| tags.record(tag));
            let plan = tags.plan(&acks.iter().copied().collect());
            assert_eq!(plan, expected, "alone {alone:?}, acks {acks:?}");
        }
    }

    #[test]
    fn the_tags_settled_after_a_long_job_are_one_range() {
        let mut tags = Tags::default();
        // Tag 1 is a job held for minutes; 100,000 later ones settle, and one more is open.
        (2..=100_000).for_each(|tag| tags.record(tag));
        tags.record(100_002);
        assert_eq!(tags.beyond.len(), 2);
        assert_eq!(tags.plan(&[1].into()), Some(1));
        assert_eq!((tags.through, tags.beyond.len()), (100_000, 1));
    }

    proptest! {
        /// Settling a channel's tags in any order, in any batches: a multiple-ack never covers a
        /// tag that is not settled, and once every tag is settled the ledger is empty.
        #[test]
        fn a_multiple_ack_covers_only_settled_tags(
            order in Just((1..=64u64).collect::<Vec<_>>()).prop_shuffle(),
            cuts in proptest::collection::vec(1usize..8, 1..64),
            alone in proptest::collection::vec(any::<bool>(), 64),
        ) {
            let mut tags = Tags::default();
            let mut settled = BTreeSet::new();
            let mut rest = &order[..];
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (batch, after) = rest.split_at((*cut).min(rest.len()));
                rest = after;
                let (nacks, acks): (Vec<u64>, Vec<u64>) =
                    batch.iter().partition(|&&tag| alone[tag as usize - 1]);
                for &tag in &nacks {
                    tags.record(tag);
                    settled.insert(tag);
                }
                settled.extend(acks.iter().copied());
                if let Some(top) = tags.plan(&acks.iter().copied().collect()) {
                    prop_assert!((1..=top).all(|tag| settled.contains(&tag)));
                }
            }
            prop_assert_eq!((tags.through, tags.beyond.len()), (64, 0));
        }
    }
}

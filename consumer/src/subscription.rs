//! Consuming one queue for the consumer's whole life: subscribe whenever the link is up, hand each
//! delivery to a job task under the concurrency limit, subscribe again on the next connection
//! once the link is back up (never before: the topology is declared first) or when the broker
//! stops serving an idle subscription while its queue keeps jobs ready, and on shutdown cancel
//! the subscription and return what was never started.

use crate::{context::Context, inbound::Inbound, settler::Settler, worker};
use futures::{FutureExt, StreamExt};
use jobpipe_proto::names::QueueName;
use jobpipe_runtime::{
    amqp::{AccessRefused, LinkState, Session},
    queue_state,
};
use lapin::{
    Channel,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use std::{sync::Arc, time::Duration};
use tokio::{sync::watch, time::MissedTickBehavior};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

/// How long a cancelled subscription waits for deliveries still on their way before it stops.
const CANCEL_DRAIN: Duration = Duration::from_secs(2);
/// How long subscribing or cancelling may take (a blocked broker answers nothing).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause before retrying a subscription the broker refused.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);
/// How often a subscription that received nothing checks that its queue has nothing ready.
const HELD_BACK_CHECK: Duration = Duration::from_secs(5);
/// Checks in a row that find jobs ready while the subscription, with room for more, received
/// none, before it subscribes again; twice as many after each time that did not help (a queue
/// whose policy gives one consumer at a time, say), up to [`HELD_BACK_CHECKS_MAX`].
const HELD_BACK_CHECKS: u32 = 2;
/// At most ten minutes of checks before subscribing again.
const HELD_BACK_CHECKS_MAX: u32 = 120;

/// What the consumer's queues share: where job tasks run (their slots are `ctx.permits`).
#[derive(Debug, Clone)]
pub(crate) struct Workers {
    /// Shared state of job tasks.
    pub(crate) ctx: Arc<Context>,
    /// Tracks running jobs, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
}

/// Consumes `queue` until `shutdown`, with `prefetch` deliveries in flight from the broker. Ends
/// early only if the broker refuses this consumer's user to read the queue: retrying cannot help.
pub(crate) async fn consume(
    queue: QueueName,
    prefetch: u16,
    workers: Workers,
    shutdown: CancellationToken,
) -> Result<(), AccessRefused> {
    let mut states = workers.ctx.link.watch();
    let tag = format!("{}/{queue}", workers.ctx.instance);
    let mut patience = HELD_BACK_CHECKS;
    loop {
        let Some(session) = wait_for_session(&mut states, &shutdown).await else {
            return Ok(());
        };
        let opened = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            opened = tokio::time::timeout(
                STEP_TIMEOUT,
                Subscription::open(&session, &workers.ctx, &queue, &tag, prefetch),
            ) => match opened {
                Ok(Err(error)) => {
                    if let Some(refused) = AccessRefused::from_error(&error, "consuming needs read access") {
                        return Err(refused);
                    }
                    Err(error.to_string())
                }
                Ok(Ok(subscription)) => Ok(subscription),
                Err(_elapsed) => Err("the broker did not answer in time".to_owned()),
            },
        };
        let mut subscription = match opened {
            Ok(subscription) => subscription,
            Err(error) => {
                warn!(%queue, %error, "Cannot subscribe; retrying.");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(RESUBSCRIBE_PAUSE) => continue,
                }
            }
        };
        info!(%queue, "Consuming.");
        let ended = subscription
            .run(&workers, &mut states, &session, &shutdown, &mut patience)
            .await;
        match ended {
            Ended::Shutdown => {
                subscription.stop().await;
                return Ok(());
            }
            // The broker forgot this consumer: cancel it, then a fresh one on a new channel.
            Ended::HeldBack => {
                subscription.stop().await;
                patience = (patience * 2).min(HELD_BACK_CHECKS_MAX);
            }
            Ended::Resubscribe => {}
        }
    }
}

/// Why a subscription stopped delivering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The consumer is shutting down.
    Shutdown,
    /// The connection failed or was replaced, or the broker cancelled the consumer: subscribe
    /// again.
    Resubscribe,
    /// The queue kept jobs ready while this consumer, with room for more, received none: seen
    /// on RabbitMQ 3.10 after a queue's leader moved, the consumer still registered on its
    /// channel and never served again. Subscribe again.
    HeldBack,
}

struct Subscription {
    channel: Channel,
    /// Settles this channel's deliveries.
    settler: Settler,
    consumer: lapin::Consumer,
    queue: QueueName,
    tag: String,
    /// The prefetch in force.
    prefetch: u16,
    /// Taking one delivery at a time (see `Session::follows_unreadable_frame`).
    probing: Option<Probing>,
    /// A channel of its own for reading the queue's depth (a failed read closes its channel).
    depth_channel: Option<Channel>,
}

/// One delivery at a time after the connection dropped on a frame the library could not read.
#[derive(Debug, Clone, Copy)]
struct Probing {
    /// The prefetch to go back to.
    prefetch: u16,
    /// Intact deliveries to see before that: as many as were in flight when the connection
    /// dropped. They and the unreadable message are back at the head of the queue; past them, a
    /// new drop would charge only the message that causes it.
    remaining: u16,
}

impl Subscription {
    async fn open(
        session: &Session,
        ctx: &Context,
        queue: &QueueName,
        tag: &str,
        prefetch: u16,
    ) -> Result<Self, lapin::Error> {
        let channel = session.open_channel().await?;
        let probing = session.follows_unreadable_frame().then_some(Probing {
            prefetch,
            remaining: prefetch,
        });
        if probing.is_some() {
            info!(%queue, intact = prefetch, "Taking one delivery at a time for a while.");
        }
        let prefetch = probing.map_or(prefetch, |_| 1);
        let consumer = basic_consume(&channel, ctx, queue, tag, prefetch).await?;
        Ok(Self {
            settler: Settler::new(channel.clone()),
            channel,
            consumer,
            queue: queue.clone(),
            tag: tag.to_owned(),
            prefetch,
            probing,
            depth_channel: None,
        })
    }

    /// After enough deliveries arrived intact while probing: the consumer is replaced by one with
    /// the full prefetch (quorum queues apply a prefetch to consumers made after it is set).
    async fn widen(&mut self, ctx: &Context, prefetch: u16) -> Result<(), lapin::Error> {
        self.channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await?;
        self.consumer = basic_consume(&self.channel, ctx, &self.queue, &self.tag, prefetch).await?;
        self.prefetch = prefetch;
        self.probing = None;
        info!(queue = %self.queue, prefetch, "Deliveries arrive intact; full prefetch again.");
        Ok(())
    }

    /// Hands deliveries to job tasks until shutdown or until the subscription is gone.
    async fn run(
        &mut self,
        workers: &Workers,
        states: &mut watch::Receiver<LinkState>,
        session: &Session,
        shutdown: &CancellationToken,
        patience: &mut u32,
    ) -> Ended {
        let mut check = tokio::time::interval(HELD_BACK_CHECK);
        check.set_missed_tick_behavior(MissedTickBehavior::Delay);
        check.reset();
        let (mut received, mut held_back) = (false, 0);
        loop {
            let delivery = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ended::Shutdown,
                changed = states.changed() => {
                    if changed.is_err() || rebuilt(&states.borrow(), session.generation()) {
                        return Ended::Resubscribe;
                    }
                    continue;
                }
                _ = check.tick() => {
                    let ready = match received {
                        false => tokio::select! {
                            biased;
                            () = shutdown.cancelled() => return Ended::Shutdown,
                            ready = self.held_back(session, &workers.ctx) => ready,
                        },
                        true => None,
                    };
                    (received, held_back) = (false, ready.map_or(0, |_| held_back + 1));
                    if held_back == *patience {
                        warn!(queue = %self.queue, ready, unsettled = self.settler.unsettled(),
                            "The queue keeps jobs ready but delivers none to this subscription; subscribing again.");
                        workers.ctx.metrics.held_back(self.queue.as_str());
                        return Ended::HeldBack;
                    }
                    continue;
                }
                next = self.consumer.next() => match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error)) => {
                        // A failed connection takes every subscription with it; the link
                        // reports that once.
                        if workers.ctx.link.session().is_some() {
                            warn!(queue = %self.queue, %error, "Subscription failed; resubscribing.");
                        } else {
                            debug!(queue = %self.queue, %error, "Subscription ended with the connection.");
                        }
                        return Ended::Resubscribe;
                    }
                    None => return Ended::Resubscribe,
                },
            };
            received = true;
            *patience = HELD_BACK_CHECKS;
            if let Some(probing) = self.probing.as_mut() {
                probing.remaining = probing.remaining.saturating_sub(1);
            }
            if let Some(Probing {
                prefetch,
                remaining: 0,
            }) = self.probing
            {
                // The delivery in hand stays valid: it belongs to the channel, not the consumer.
                let widened =
                    tokio::time::timeout(STEP_TIMEOUT, self.widen(&workers.ctx, prefetch)).await;
                if !matches!(widened, Ok(Ok(()))) {
                    warn!(queue = %self.queue, "Cannot raise the prefetch again; resubscribing.");
                    Inbound::new(delivery, self.queue.clone(), self.settler.clone())
                        .requeue()
                        .await;
                    return Ended::Resubscribe;
                }
            }
            let inbound = Inbound::new(delivery, self.queue.clone(), self.settler.clone());
            // Wait for a free slot; a delivery that never got one goes back on shutdown.
            let permit = tokio::select! {
                permit = workers.ctx.permits.clone().acquire_owned() => permit,
                () = shutdown.cancelled() => {
                    inbound.requeue().await;
                    return Ended::Shutdown;
                }
            };
            let Ok(permit) = permit else {
                inbound.requeue().await;
                return Ended::Shutdown;
            };
            // Boxed once here: tokio moves a task's future several times while spawning it, and
            // a job's future is kilobytes (copying it was most of the consumer's CPU time).
            let job = Box::pin(worker::process(workers.ctx.clone(), inbound, permit));
            workers.tracker.spawn(job);
        }
    }

    /// The jobs ready in the queue, if any, while this subscription has room for more: after
    /// [`HELD_BACK_CHECKS`] such readings with nothing received, the broker is holding them back.
    /// A blocked connection is not one: the broker reads no acks from it meanwhile, so it sees
    /// the prefetch full while this side has settled everything.
    async fn held_back(&mut self, session: &Session, ctx: &Context) -> Option<u32> {
        if self.settler.unsettled() >= usize::from(self.prefetch) || !session.can_publish() {
            return None;
        }
        let queue = ctx.topology.work_queue(&self.queue);
        let read = tokio::time::timeout(STEP_TIMEOUT, async {
            if self.depth_channel.is_none() {
                self.depth_channel = Some(session.open_channel().await?);
            }
            let channel = self.depth_channel.as_ref().expect("opened above");
            queue_state::depth(channel, &queue).await
        })
        .await;
        match read {
            Ok(Ok((ready, _consumers))) => (ready > 0).then_some(ready),
            Ok(Err(_)) | Err(_) => {
                self.depth_channel = None;
                None
            }
        }
    }

    /// Cancels the subscription and returns every delivery received but never started.
    async fn stop(mut self) {
        let cancelled = tokio::time::timeout(
            STEP_TIMEOUT,
            self.channel
                .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default()),
        )
        .await;
        if !matches!(cancelled, Ok(Ok(()))) {
            // What is already here goes back now; the rest when the channel closes.
            while let Some(Some(Ok(delivery))) = self.consumer.next().now_or_never() {
                Inbound::new(delivery, self.queue.clone(), self.settler.clone())
                    .requeue()
                    .await;
            }
            debug!("Cancel failed; the broker requeues the rest when the channel closes.");
            return;
        }
        let mut returned = 0usize;
        // After the cancel, the stream yields what is buffered, then ends.
        while let Ok(Some(Ok(delivery))) =
            tokio::time::timeout(CANCEL_DRAIN, self.consumer.next()).await
        {
            Inbound::new(delivery, self.queue.clone(), self.settler.clone())
                .requeue()
                .await;
            returned += 1;
        }
        info!(queue = %self.queue, returned, "Stopped consuming; unstarted deliveries returned.");
    }
}

/// Subscribes to `queue` on `channel` with `prefetch` deliveries in flight.
async fn basic_consume(
    channel: &Channel,
    ctx: &Context,
    queue: &QueueName,
    tag: &str,
    prefetch: u16,
) -> Result<lapin::Consumer, lapin::Error> {
    // Per-consumer prefetch: quorum queues refuse a global one.
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    channel
        .basic_consume(
            ctx.topology.work_queue(queue).into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Waits until the link is up on a live connection (one that failed may still be announced as
/// up for a moment); `None` on shutdown or when the link closed for good.
async fn wait_for_session(
    states: &mut watch::Receiver<LinkState>,
    shutdown: &CancellationToken,
) -> Option<Session> {
    loop {
        match &*states.borrow_and_update() {
            LinkState::Up(session) if session.is_connected() => return Some(session.clone()),
            LinkState::Closed => return None,
            LinkState::Up(_) | LinkState::Down(_) => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            changed = states.changed() => if changed.is_err() { return None },
        }
    }
}

/// Whether the link now runs on a different connection than `generation` (whose channels are
/// gone). A resource alarm announced on the same connection changes nothing.
fn rebuilt(state: &LinkState, generation: u64) -> bool {
    match state {
        LinkState::Up(session) => session.generation() != generation,
        LinkState::Closed => true,
        LinkState::Down(_) => false,
    }
}

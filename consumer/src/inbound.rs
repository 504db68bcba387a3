//! A delivery not yet settled. Every way of settling it consumes it, so a delivery is settled
//! exactly once, and always on the channel that delivered it (the `Inbound` keeps that channel
//! open until then). One dropped unsettled (a bug, an aborted task) is returned to its queue
//! rather than left unacknowledged until the connection closes.

use bytes::Bytes;
use jobpipe_proto::names::QueueName;
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions},
};
use std::time::Duration;
use tracing::{debug, warn};

/// How long an ack, nack or reject may take to reach the connection. A blocked broker (resource
/// alarm) stops every write; past this the delivery is left to the broker, which returns it to
/// its queue when the channel closes.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// A delivery from one of the consumer's queues.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// `None` once settled.
    delivery: Option<Delivery>,
    properties: BasicProperties,
    payload: Bytes,
    queue: QueueName,
    // Dropping the last clone of a channel closes it; in-flight deliveries keep theirs alive.
    _channel: Channel,
}

/// Whether settling reached the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The broker has the ack, nack or reject.
    Done,
    /// The channel is gone (broker link lost): the broker redelivers the message by itself.
    ChannelGone,
}

/// One way of settling.
#[derive(Debug, Clone, Copy)]
enum Settle {
    Ack,
    Requeue,
    Reject,
}

impl Inbound {
    /// Wraps `delivery` from `queue`, received on `channel`.
    pub(crate) fn new(mut delivery: Delivery, queue: QueueName, channel: Channel) -> Self {
        let payload = Bytes::from(std::mem::take(&mut delivery.data));
        let properties = std::mem::take(&mut delivery.properties);
        Self {
            delivery: Some(delivery),
            properties,
            payload,
            queue,
            _channel: channel,
        }
    }

    /// The queue it came from.
    pub(crate) fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// The exchange it was published to and its routing key.
    pub(crate) fn route(&self) -> (&str, &str) {
        self.delivery.as_ref().map_or(("", ""), |delivery| {
            (delivery.exchange.as_str(), delivery.routing_key.as_str())
        })
    }

    /// Its AMQP properties.
    pub(crate) fn properties(&self) -> &BasicProperties {
        &self.properties
    }

    /// Its body.
    pub(crate) fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Whether the broker delivered it before (to this or another consumer).
    pub(crate) fn redelivered(&self) -> bool {
        self.delivery.as_ref().is_some_and(|d| d.redelivered)
    }

    /// Whether it was delivered on a channel that has since failed: it can no
    /// longer be settled, and the broker has already put it back in the queue.
    pub(crate) fn is_stale(&self) -> bool {
        self.delivery.as_ref().is_none_or(|d| !d.acker.usable())
    }

    /// Acknowledges: the broker forgets the message.
    pub(crate) async fn ack(mut self) -> Settled {
        settle(self.delivery.take(), Settle::Ack).await
    }

    /// Returns the message to its queue, to be delivered again.
    pub(crate) async fn requeue(mut self) -> Settled {
        settle(self.delivery.take(), Settle::Requeue).await
    }

    /// Rejects without requeue: the broker dead-letters it (reason `rejected`).
    pub(crate) async fn reject(mut self) -> Settled {
        settle(self.delivery.take(), Settle::Reject).await
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        let Some(delivery) = self.delivery.take() else {
            return;
        };
        if !delivery.acker.usable() {
            return;
        }
        warn!(queue = %self.queue, "A delivery was dropped unsettled; returning it to its queue.");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(settle(Some(delivery), Settle::Requeue));
        }
    }
}

async fn settle(delivery: Option<Delivery>, how: Settle) -> Settled {
    let Some(delivery) = delivery else {
        return Settled::ChannelGone;
    };
    let acker = &delivery.acker;
    let settled = tokio::time::timeout(SETTLE_TIMEOUT, async {
        match how {
            Settle::Ack => acker.ack(BasicAckOptions::default()).await,
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

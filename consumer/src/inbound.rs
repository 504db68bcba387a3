//! A delivery not yet settled. Every way of settling it consumes it, so a delivery is settled
//! exactly once, and always on the channel that delivered it, through that channel's
//! [`Settler`] (which keeps the channel open until then). One dropped unsettled (a bug, an
//! aborted task) is returned to its queue rather than left unacknowledged until the connection
//! closes.

use crate::settler::{Settle, Settled, Settler};
use bytes::Bytes;
use jobpipe_proto::names::QueueName;
use lapin::{BasicProperties, message::Delivery};
use tracing::warn;

/// A delivery from one of the consumer's queues.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// `None` once settled.
    delivery: Option<Delivery>,
    properties: BasicProperties,
    payload: Bytes,
    queue: QueueName,
    /// Its channel's settling; it keeps the channel open until this delivery is settled.
    settler: Settler,
}

impl Inbound {
    /// Wraps `delivery` from `queue`, received on the channel `settler` settles.
    pub(crate) fn new(mut delivery: Delivery, queue: QueueName, settler: Settler) -> Self {
        let payload = Bytes::from(std::mem::take(&mut delivery.data));
        let properties = std::mem::take(&mut delivery.properties);
        settler.received();
        Self {
            delivery: Some(delivery),
            properties,
            payload,
            queue,
            settler,
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
    pub(crate) async fn ack(self) -> Settled {
        self.settle(Settle::Ack).await
    }

    /// Returns the message to its queue, to be delivered again.
    pub(crate) async fn requeue(self) -> Settled {
        self.settle(Settle::Requeue).await
    }

    /// Rejects without requeue: the broker dead-letters it (reason `rejected`).
    pub(crate) async fn reject(self) -> Settled {
        self.settle(Settle::Reject).await
    }

    async fn settle(mut self, how: Settle) -> Settled {
        match self.delivery.take() {
            Some(delivery) => self.settler.settle(delivery, how).await,
            None => Settled::ChannelGone,
        }
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        let Some(delivery) = self.delivery.take() else {
            return;
        };
        if !delivery.acker.usable() {
            self.settler.forget();
            return;
        }
        warn!(queue = %self.queue, "A delivery was dropped unsettled; returning it to its queue.");
        self.settler.settle_later(delivery, Settle::Requeue);
    }
}

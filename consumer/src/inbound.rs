//! A delivery not yet settled. Every way of settling it consumes it, so a delivery is settled
//! exactly once, and always on the channel that delivered it (the `Inbound` keeps that channel
//! open until then).

use bytes::Bytes;
use jobpipe_proto::names::QueueName;
use lapin::{
    BasicProperties, Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions},
};
use tracing::debug;

/// A delivery from one of the consumer's queues.
#[derive(Debug)]
pub struct Inbound {
    delivery: Delivery,
    payload: Bytes,
    queue: QueueName,
    // Dropping the last clone of a channel closes it; in-flight deliveries keep theirs alive.
    _channel: Channel,
}

/// Whether settling reached the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The broker has the ack, nack or reject.
    Done,
    /// The channel is gone (broker link lost): the broker redelivers the message by itself.
    ChannelGone,
}

impl Inbound {
    /// Wraps `delivery` from `queue`, received on `channel`.
    pub fn new(mut delivery: Delivery, queue: QueueName, channel: Channel) -> Self {
        let payload = Bytes::from(std::mem::take(&mut delivery.data));
        Self {
            delivery,
            payload,
            queue,
            _channel: channel,
        }
    }

    /// The queue it came from.
    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// The exchange it was published to and its routing key.
    pub fn route(&self) -> (&str, &str) {
        (
            self.delivery.exchange.as_str(),
            self.delivery.routing_key.as_str(),
        )
    }

    /// Its AMQP properties.
    pub fn properties(&self) -> &BasicProperties {
        &self.delivery.properties
    }

    /// Its body.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Whether the broker delivered it before (to this or another consumer).
    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
    }

    /// Whether it was delivered on a channel that has since failed or been recovered: it can no
    /// longer be settled, and the broker has already put it back in the queue.
    pub fn is_stale(&self) -> bool {
        !self.delivery.acker.usable()
    }

    /// Acknowledges: the broker forgets the message.
    pub async fn ack(self) -> Settled {
        outcome(self.delivery.acker.ack(BasicAckOptions::default()).await)
    }

    /// Returns the message to its queue, to be delivered again.
    pub async fn requeue(self) -> Settled {
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        outcome(self.delivery.acker.nack(options).await)
    }

    /// Rejects without requeue: the broker dead-letters it (reason `rejected`).
    pub async fn reject(self) -> Settled {
        let options = BasicRejectOptions { requeue: false };
        outcome(self.delivery.acker.reject(options).await)
    }
}

fn outcome(result: Result<bool, lapin::Error>) -> Settled {
    match result {
        Ok(true) => Settled::Done,
        Ok(false) => Settled::ChannelGone,
        Err(error) => {
            debug!(%error, "Settling failed; the broker will redeliver.");
            Settled::ChannelGone
        }
    }
}

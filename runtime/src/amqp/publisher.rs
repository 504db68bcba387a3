//! Confirmed publishing: a publish succeeds only when the broker confirmed it *and* routed it.

use lapin::{
    BasicProperties, Channel, Confirmation, ConnectionStatus, PublisherConfirm,
    options::BasicPublishOptions, types::ShortString,
};
use std::time::Duration;
use tokio::time::Instant;
use tracing::debug;

/// Publishes persistent, mandatory messages on a channel in confirm mode. Clones share the
/// channel, so many publishes can await their confirms at once (pipelined).
#[derive(Clone, Debug)]
pub struct Publisher {
    channel: Channel,
    connection: ConnectionStatus,
    confirm_timeout: Duration,
}

/// Why a publish was not accepted. Each variant has one meaning for the caller's retry logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The broker is unreachable or the connection failed before the confirm: the message may or
    /// may not be queued. Retrying with the same message id is safe.
    #[error("the broker is unreachable")]
    Unavailable,
    /// The broker has blocked publishers (a memory or disk alarm). Nothing was sent.
    #[error("the broker is not accepting messages (resource alarm)")]
    Blocked,
    /// No queue is bound for the routing key (the broker returned the mandatory message).
    #[error("no queue is bound for the routing key")]
    Unroutable,
    /// The broker refused the message (nack), e.g. a full queue with `reject-publish` overflow.
    #[error("the broker refused the message")]
    Nacked,
    /// No confirm arrived in time: the outcome is unknown.
    #[error("the broker did not confirm in time")]
    Timeout,
}

impl PublishError {
    /// A short stable name, for span attributes (`error.type`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Blocked => "blocked",
            Self::Unroutable => "unroutable",
            Self::Nacked => "nacked",
            Self::Timeout => "timeout",
        }
    }
}

impl Publisher {
    /// Wraps `channel`, which must be in confirm mode, of the connection whose status is
    /// `connection`.
    pub(crate) fn new(
        channel: Channel,
        connection: ConnectionStatus,
        confirm_timeout: Duration,
    ) -> Self {
        Self {
            channel,
            connection,
            confirm_timeout,
        }
    }

    /// Whether the broker closed the channel (lapin reopens channels only when it recovers a
    /// whole connection).
    pub(crate) fn is_closed(&self) -> bool {
        let status = self.channel.status();
        !status.connected() && !status.initializing()
    }

    /// Publishes `payload` and waits for the broker's verdict, at most the confirm timeout.
    pub async fn publish(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        self.send(exchange, routing_key, payload, properties)
            .await?
            .confirmed()
            .await
    }

    /// Hands the message to the connection and returns its pending confirm, so that many
    /// publishes can be in flight at once while only their small confirms are kept. The confirm
    /// timeout runs from here.
    pub async fn send(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<Pending, PublishError> {
        if self.connection.blocked() {
            return Err(PublishError::Blocked);
        }
        let deadline = Instant::now() + self.confirm_timeout;
        let options = BasicPublishOptions {
            mandatory: true,
            immediate: false,
        };
        let sent = tokio::time::timeout_at(
            deadline,
            self.channel
                .basic_publish(exchange, routing_key, options, payload, properties),
        )
        .await;
        match sent {
            Err(_elapsed) => Err(PublishError::Timeout),
            Ok(Err(error)) => {
                debug!(%error, "Publish failed on the connection.");
                Err(PublishError::Unavailable)
            }
            Ok(Ok(confirm)) => Ok(Pending { confirm, deadline }),
        }
    }
}

/// A sent message awaiting the broker's confirm.
#[derive(Debug)]
pub struct Pending {
    confirm: PublisherConfirm,
    deadline: Instant,
}

impl Pending {
    /// The broker's verdict: `Ok` only if it confirmed the message and routed it.
    pub async fn confirmed(self) -> Result<(), PublishError> {
        match tokio::time::timeout_at(self.deadline, self.confirm).await {
            Err(_elapsed) => Err(PublishError::Timeout),
            Ok(Err(error)) => {
                debug!(%error, "The connection failed before the confirm.");
                Err(PublishError::Unavailable)
            }
            // An unroutable mandatory message is confirmed too: only Ack(None) means queued.
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_returned)))) => Err(PublishError::Unroutable),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            // Confirm mode is set when the session opens; without it nothing is known.
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::Unavailable),
        }
    }
}

//! Confirmed publishing: a publish succeeds only when the broker confirmed it *and* routed it.

use lapin::{
    BasicProperties, Channel, Confirmation, ConnectionStatus, PublisherConfirm,
    options::BasicPublishOptions, types::ShortString,
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::time::Instant;
use tracing::debug;

/// Publishes persistent, mandatory messages on a channel in confirm mode. Clones share the
/// channel, so many publishes can await their confirms at once (pipelined).
#[derive(Clone, Debug)]
pub struct Publisher {
    channel: Channel,
    connection: ConnectionStatus,
    confirm_timeout: Duration,
    /// Set when the broker refused a message or did not confirm it in time: see
    /// [`Publisher::is_suspect`].
    suspect: Arc<AtomicBool>,
}

/// Why a publish was not accepted. Each variant has one meaning for the caller's retry logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The broker is unreachable: nothing was sent.
    #[error("the broker is unreachable")]
    Unavailable,
    /// The connection failed after the message was sent and before the broker confirmed it: the
    /// message may or may not be queued. Retrying with the same message id is safe.
    #[error("the broker connection was lost before the confirm")]
    Lost,
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
            Self::Lost => "lost",
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
            suspect: Arc::default(),
        }
    }

    /// Whether a publish on this channel was nacked or not confirmed in time since it opened.
    /// Either can mean the channel itself is stuck: on RabbitMQ 3.10, a channel that first
    /// publishes to a quorum queue while the queue elects a new leader keeps refusing (or never
    /// confirming) every later message to it, while a fresh channel is accepted at once. The link
    /// replaces a suspect channel.
    pub(crate) fn is_suspect(&self) -> bool {
        self.suspect.load(Ordering::Relaxed)
    }

    /// Whether the broker closed the channel (the connection may live on without it).
    pub(crate) fn is_closed(&self) -> bool {
        let status = self.channel.status();
        !status.connected() && !status.initializing()
    }

    /// Publishes `payload` and waits for the broker's verdict as
    /// [`Pending::confirmed_through_alarms`] does: for a publisher that would rather wait out a
    /// resource alarm than lose track of a message (a consumer's retries and dead letters).
    pub async fn publish(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        self.send(exchange, routing_key, payload, properties)
            .await?
            .confirmed_through_alarms()
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
            // lapin fails a publish whose frames it could not write: nothing reached the broker.
            Ok(Err(error)) => {
                debug!(%error, "Publish failed on the connection.");
                Err(PublishError::Unavailable)
            }
            Ok(Ok(confirm)) => Ok(Pending {
                confirm,
                deadline,
                timeout: self.confirm_timeout,
                connection: self.connection.clone(),
                suspect: self.suspect.clone(),
            }),
        }
    }
}

/// A sent message awaiting the broker's confirm.
#[derive(Debug)]
pub struct Pending {
    confirm: PublisherConfirm,
    deadline: Instant,
    /// The confirm timeout, for restarting the clock after a resource alarm.
    timeout: Duration,
    connection: ConnectionStatus,
    suspect: Arc<AtomicBool>,
}

impl Pending {
    /// The broker's verdict: `Ok` only if it confirmed the message and routed it; `Timeout` when
    /// no verdict came within the confirm timeout.
    pub async fn confirmed(self) -> Result<(), PublishError> {
        self.wait(false).await
    }

    /// [`Pending::confirmed`], except that the confirm timeout does not run out while the
    /// broker blocks the connection: a blocked broker reads nothing from it, so the message is
    /// still on its way, and the clock starts again each time it would run out during the block.
    pub async fn confirmed_through_alarms(self) -> Result<(), PublishError> {
        self.wait(true).await
    }

    async fn wait(self, through_alarms: bool) -> Result<(), PublishError> {
        let Self {
            mut confirm,
            mut deadline,
            timeout,
            connection,
            suspect,
        } = self;
        let verdict = loop {
            match tokio::time::timeout_at(deadline, &mut confirm).await {
                Ok(answer) => break verdict(answer),
                Err(_elapsed) if through_alarms && connection.blocked() => {
                    deadline = Instant::now() + timeout;
                }
                Err(_elapsed) => break Err(PublishError::Timeout),
            }
        };
        if matches!(verdict, Err(PublishError::Nacked | PublishError::Timeout)) {
            suspect.store(true, Ordering::Relaxed);
        }
        verdict
    }
}

/// The broker's answer to a publish.
fn verdict(answer: Result<Confirmation, lapin::Error>) -> Result<(), PublishError> {
    match answer {
        // The connection failed: lapin fails every pending confirm at once.
        Err(error) => {
            debug!(%error, "The connection failed before the confirm.");
            Err(PublishError::Lost)
        }
        // An unroutable mandatory message is confirmed too: only Ack(None) means queued.
        Ok(Confirmation::Ack(None)) => Ok(()),
        Ok(Confirmation::Ack(Some(_returned))) => Err(PublishError::Unroutable),
        Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked),
        // Confirm mode is set when the session opens; without it nothing is known.
        Ok(Confirmation::NotRequested) => Err(PublishError::Unavailable),
    }
}

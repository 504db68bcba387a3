//! Queue depths, read from the broker over AMQP (a passive declare per queue: no management
//! plugin needed) and exported as gauges by both services, so they are there even when every
//! consumer of a queue is gone. The ready backlog and the jobs merely waiting in the delay ladder
//! are separate series on purpose: autoscaling on the backlog must not add consumers for jobs
//! that are only waiting to retry.

use crate::amqp::Link;
use jobpipe_proto::{delay::LEVELS, names::QueueName, topology::Topology};
use lapin::{Channel, options::QueueDeclareOptions, types::FieldTable};
use prometheus_client::{
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How queue depths are polled.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// How often queue depths (ready, delayed, dead, consumers) are read from the broker, with a
    /// passive declare per queue; `0s` turns the polling off.
    #[serde(with = "humantime_serde")]
    pub queue_poll_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            queue_poll_interval: Duration::from_secs(10),
        }
    }
}

type QueueGauge = Family<[(&'static str, String); 1], Gauge>;

/// The queue-depth gauges.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueueState {
    ready: QueueGauge,
    dead: QueueGauge,
    consumers: QueueGauge,
    delayed: Gauge,
    unroutable: Gauge,
}

impl QueueState {
    /// Creates the gauges, registered in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let state = Self::default();
        registry.register(
            "jobpipe_queue_ready_messages",
            "Jobs ready in a work queue (the backlog to scale on)",
            state.ready.clone(),
        );
        registry.register(
            "jobpipe_queue_dead_messages",
            "Jobs in a queue's dead-letter queue, waiting for an operator",
            state.dead.clone(),
        );
        registry.register(
            "jobpipe_queue_consumers",
            "Consumers subscribed to a work queue",
            state.consumers.clone(),
        );
        registry.register(
            "jobpipe_delay_ladder_messages",
            "Jobs waiting in the delay ladder (retries in backoff and scheduled jobs), all queues",
            state.delayed.clone(),
        );
        registry.register(
            "jobpipe_delay_unroutable_messages",
            "Delayed jobs whose queue disappeared while they waited",
            state.unroutable.clone(),
        );
        state
    }

    /// Polls every `interval` until `shutdown`, telling `depths` each reading; a zero interval
    /// polls never.
    pub(crate) async fn poll(
        self,
        link: Link,
        topology: Topology,
        queues: Vec<QueueName>,
        interval: Duration,
        depths: watch::Sender<Option<Depths>>,
        shutdown: CancellationToken,
    ) {
        if interval.is_zero() {
            return;
        }
        let mut ticker = tokio::time::interval(interval);
        let mut channel: Option<Channel> = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let Some(session) = link.session() else {
                channel = None;
                continue;
            };
            if channel.as_ref().is_none_or(|c| !c.status().connected()) {
                channel = session.open_channel().await.ok();
            }
            let Some(open) = &channel else { continue };
            let read = tokio::select! {
                () = shutdown.cancelled() => return,
                read = tokio::time::timeout(interval, self.read(open, &topology, &queues)) => read,
            };
            if let Ok(Ok(read)) = read {
                depths.send_replace(Some(read));
            } else {
                // A queue missing (404) closes the channel, a blocked broker does not answer:
                // the next tick opens another channel.
                debug!("Reading queue depths failed.");
                channel = None;
            }
        }
    }

    async fn read(
        &self,
        channel: &Channel,
        topology: &Topology,
        queues: &[QueueName],
    ) -> Result<Depths, lapin::Error> {
        let depths = read_depths(channel, topology, queues).await?;
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        for queue in &depths.queues {
            let label = [("queue", queue.name.to_string())];
            self.ready.get_or_create(&label).set(gauge(queue.ready));
            self.consumers
                .get_or_create(&label)
                .set(i64::from(queue.consumers));
            self.dead.get_or_create(&label).set(gauge(queue.dead));
        }
        self.delayed.set(gauge(depths.delayed));
        self.unroutable.set(gauge(depths.unroutable));
        Ok(depths)
    }
}

/// The depths of the configured queues and of the delay ladder, as read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Depths {
    /// Each work queue.
    pub queues: Vec<QueueDepth>,
    /// Jobs waiting in the delay ladder, all queues together.
    pub delayed: u64,
    /// Delayed jobs whose queue disappeared.
    pub unroutable: u64,
}

/// One work queue's depths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    /// The queue.
    pub name: QueueName,
    /// Jobs ready.
    pub ready: u64,
    /// Consumers subscribed.
    pub consumers: u32,
    /// Jobs in its dead-letter queue.
    pub dead: u64,
}

/// Reads the depths of `queues` and the ladder with passive declares on `channel` (which a
/// missing queue closes): the numbers `/metrics` exports, and the operations API answers.
pub async fn read_depths(
    channel: &Channel,
    topology: &Topology,
    queues: &[QueueName],
) -> Result<Depths, lapin::Error> {
    let mut depths = Depths::default();
    for queue in queues {
        let (ready, consumers) = depth(channel, &topology.work_queue(queue)).await?;
        let (dead, _) = depth(channel, &topology.dead_queue(queue)).await?;
        depths.queues.push(QueueDepth {
            name: queue.clone(),
            ready: u64::from(ready),
            consumers,
            dead: u64::from(dead),
        });
    }
    for level in 0..LEVELS {
        depths.delayed += u64::from(depth(channel, &topology.delay_level(level)).await?.0);
    }
    depths.unroutable = u64::from(depth(channel, &topology.delay_unroutable()).await?.0);
    Ok(depths)
}

/// Messages ready and consumers of `queue`, by a passive declare.
pub async fn depth(channel: &Channel, queue: &str) -> Result<(u32, u32), lapin::Error> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok((declared.message_count(), declared.consumer_count()))
}

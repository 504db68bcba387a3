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

    /// Polls every `interval` until `shutdown`; a zero interval polls never.
    pub(crate) async fn poll(
        self,
        link: Link,
        topology: Topology,
        queues: Vec<QueueName>,
        interval: Duration,
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
            if !matches!(read, Ok(Ok(()))) {
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
    ) -> Result<(), lapin::Error> {
        for queue in queues {
            let (ready, consumers) = depth(channel, &topology.work_queue(queue)).await?;
            let label = [("queue", queue.to_string())];
            self.ready.get_or_create(&label).set(ready);
            self.consumers.get_or_create(&label).set(consumers);
            let (dead, _) = depth(channel, &topology.dead_queue(queue)).await?;
            self.dead.get_or_create(&label).set(dead);
        }
        let mut delayed = 0;
        for level in 0..LEVELS {
            delayed += depth(channel, &topology.delay_level(level)).await?.0;
        }
        self.delayed.set(delayed);
        self.unroutable
            .set(depth(channel, &topology.delay_unroutable()).await?.0);
        Ok(())
    }
}

/// Messages ready and consumers of `queue`, by a passive declare.
async fn depth(channel: &Channel, queue: &str) -> Result<(i64, i64), lapin::Error> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok((
        i64::from(declared.message_count()),
        i64::from(declared.consumer_count()),
    ))
}

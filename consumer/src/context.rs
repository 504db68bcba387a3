//! What every job task shares: the link, the handlers, the retry policy, the names it publishes
//! to (built once), the instance name and the metrics.

use crate::{handler::Handlers, metrics::ConsumerMetrics, retry::RetryPolicy};
use jobpipe_proto::{delay::LEVELS, topology::Topology};
use jobpipe_runtime::amqp::Link;
use lapin::types::ShortString;

/// Shared, read-only state of a running consumer.
#[derive(Debug)]
pub struct Context {
    /// The broker link, for publishing retries and dead letters.
    pub link: Link,
    /// Handlers by job type.
    pub handlers: Handlers,
    /// The retry schedule.
    pub retry: RetryPolicy,
    /// This instance's name, recorded in failure histories.
    pub instance: String,
    /// The metrics.
    pub metrics: ConsumerMetrics,
    /// `{prefix}.jobs`, for retries without delay.
    pub jobs_exchange: ShortString,
    /// `{prefix}.dead`.
    pub dead_exchange: ShortString,
    /// `{prefix}.delay.NN`, indexed by level.
    pub delay_levels: Vec<ShortString>,
    /// The names of broker objects.
    pub topology: Topology,
    /// The longest an attempt may run, whatever the job asks.
    pub max_timeout: std::time::Duration,
}

impl Context {
    /// Builds the context, naming every exchange once.
    pub fn new(
        link: Link,
        handlers: Handlers,
        retry: RetryPolicy,
        instance: String,
        metrics: ConsumerMetrics,
        topology: Topology,
        max_timeout: std::time::Duration,
    ) -> Self {
        Self {
            jobs_exchange: topology.jobs_exchange().into(),
            dead_exchange: topology.dead_exchange().into(),
            delay_levels: (0..LEVELS)
                .map(|level| topology.delay_level(level).into())
                .collect(),
            link,
            handlers,
            retry,
            instance,
            metrics,
            topology,
            max_timeout,
        }
    }
}

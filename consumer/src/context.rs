//! What every job task shares: the link, the handlers, the retry policy, the routes it publishes
//! to (named once), the instance name and the metrics.

use crate::{handler::Handlers, metrics::ConsumerMetrics, retry::RetryPolicy};
use jobpipe_proto::topology::Topology;
use jobpipe_runtime::amqp::{Link, Routes};

/// Shared, read-only state of a running consumer.
#[derive(Debug)]
pub(crate) struct Context {
    /// The broker link, for publishing retries and dead letters.
    pub(crate) link: Link,
    /// Handlers by job type.
    pub(crate) handlers: Handlers,
    /// The retry schedule.
    pub(crate) retry: RetryPolicy,
    /// This instance's name, recorded in failure histories.
    pub(crate) instance: String,
    /// The metrics.
    pub(crate) metrics: ConsumerMetrics,
    /// Where retries and dead letters are published.
    pub(crate) routes: Routes,
    /// The names of broker objects.
    pub(crate) topology: Topology,
    /// The longest an attempt may run, whatever the job asks.
    pub(crate) max_timeout: std::time::Duration,
}

impl Context {
    /// Builds the context, naming every exchange once.
    pub(crate) fn new(
        link: Link,
        handlers: Handlers,
        retry: RetryPolicy,
        instance: String,
        metrics: ConsumerMetrics,
        topology: Topology,
        max_timeout: std::time::Duration,
    ) -> Self {
        Self {
            routes: Routes::new(&topology),
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

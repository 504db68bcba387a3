//! What every job task shares: the link, who runs which job type, the retry policy, the routes it
//! publishes to (named once), the instance name, the metrics, the concurrency slots and the
//! shutdown signal. Built once, by `Consumer::run`.

use crate::{dispatch::Dispatch, metrics::ConsumerMetrics, retry::RetryPolicy};
use jobpipe_proto::topology::Topology;
use jobpipe_runtime::amqp::{Link, Routes};
use std::{sync::Arc, time::Duration};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Shared, read-only state of a running consumer.
#[derive(Debug)]
pub(crate) struct Context {
    /// The broker link, for publishing retries and dead letters.
    pub(crate) link: Link,
    /// Handlers and remote workers by job type.
    pub(crate) dispatch: Dispatch,
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
    /// The longest an attempt may run, whatever the job asks; also the longest a job waits for
    /// an unreachable worker.
    pub(crate) max_timeout: Duration,
    /// One slot per job allowed to run at once (`consumer.concurrency`).
    pub(crate) permits: Arc<Semaphore>,
    /// Cancelled when the consumer drains: jobs still waiting go back to their queue.
    pub(crate) shutdown: CancellationToken,
}

//! The consumer's Prometheus metrics. Labels are bounded: queues are the configured ones and job
//! types the registered ones (anything else is `unknown`); never job ids.

use crate::{outcome::Attempt, remote::Answer};
use jobpipe_proto::failure::FailureKind;
use jobpipe_runtime::{label_enum, metrics::latency_buckets};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, linear_buckets},
    },
    registry::Registry,
};
use std::time::Duration;

label_enum! {
    /// How a job's delivery ended.
    pub(crate) enum Outcome {
        /// The handler succeeded; acknowledged.
        Succeeded => "succeeded",
        /// Re-published for another attempt; acknowledged.
        Retried => "retried",
        /// Published to the dead-letter queue; acknowledged.
        DeadLettered => "dead_lettered",
        /// Handed back to the broker (the retry or dead-letter publish failed, or the delivery
        /// predates a reconnect): it will be delivered again.
        Returned => "returned",
    }
}

/// The label value for a job type or queue outside the registered set.
pub(crate) const UNKNOWN: &str = "unknown";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    queue: &'static str,
    r#type: &'static str,
    outcome: Outcome,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandlerLabels {
    queue: &'static str,
    r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    outcome: &'static str,
    status: &'static str,
}

/// One route's worker series.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSeries {
    /// 1 while the worker can be reached.
    pub(crate) up: Gauge,
    /// Calls in flight.
    pub(crate) in_flight: Gauge,
    /// Time per call.
    pub(crate) seconds: Histogram,
}

/// Every metric the consumer exports.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerMetrics {
    /// The label values allowed (configured queues, registered types), interned for the
    /// process's life so that labelling a job costs no allocation.
    known: Vec<&'static str>,
    jobs: Family<JobLabels, Counter>,
    handler_seconds: Family<HandlerLabels, Histogram>,
    queue_wait_seconds: Family<QueueLabels, Histogram>,
    attempts: Family<QueueLabels, Histogram>,
    redeliveries: Family<QueueLabels, Counter>,
    held_back: Family<QueueLabels, Counter>,
    /// Jobs whose handler is running now.
    pub(crate) in_flight: Gauge,
    /// Attempts run, and the microseconds they took: what a handler slot gets done, which the
    /// desired-replicas signal scales by. Not exported (`jobpipe_consumer_handler_seconds`
    /// has them by label).
    pub(crate) attempts_run: Counter,
    pub(crate) attempt_micros: Counter,
    worker_requests: Family<RequestLabels, Counter>,
    worker_seconds: Family<RouteLabels, Histogram>,
    worker_in_flight: Family<RouteLabels, Gauge>,
    worker_up: Family<RouteLabels, Gauge>,
}

impl ConsumerMetrics {
    /// Creates the metrics for `queues` and `types`, registered in `registry`.
    pub(crate) fn register<'a>(
        registry: &mut Registry,
        queues: impl IntoIterator<Item = &'a str>,
        types: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let queues: Vec<&str> = queues.into_iter().collect();
        let queue_count = queues.len();
        let known: Vec<&'static str> = queues
            .into_iter()
            .chain(types)
            .map(|name| &*Box::leak(name.to_owned().into_boxed_str()))
            .collect();
        let metrics = Self {
            known,
            jobs: Family::default(),
            handler_seconds: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            queue_wait_seconds: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            attempts: Family::new_with_constructor(|| Histogram::new(linear_buckets(1.0, 1.0, 25))),
            redeliveries: Family::default(),
            held_back: Family::default(),
            in_flight: Gauge::default(),
            attempts_run: Counter::default(),
            attempt_micros: Counter::default(),
            worker_requests: Family::default(),
            worker_seconds: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            worker_in_flight: Family::default(),
            worker_up: Family::default(),
        };
        // Every queue's series exist from the start, at zero, so rates and alerts see them
        // before the first redelivery or finished job.
        for &queue in metrics.known.iter().take(queue_count) {
            let labels = QueueLabels { queue };
            drop(metrics.redeliveries.get_or_create(&labels));
            drop(metrics.held_back.get_or_create(&labels));
            drop(metrics.attempts.get_or_create(&labels));
            drop(metrics.queue_wait_seconds.get_or_create(&labels));
        }
        registry.register(
            "jobpipe_consumer_jobs",
            "Deliveries settled, by queue, job type, outcome and reason (the failure kind)",
            metrics.jobs.clone(),
        );
        registry.register(
            "jobpipe_consumer_handler_seconds",
            "Time handlers took per attempt",
            metrics.handler_seconds.clone(),
        );
        registry.register(
            "jobpipe_consumer_queue_wait_seconds",
            "Time from when an attempt was due to when its handler started",
            metrics.queue_wait_seconds.clone(),
        );
        registry.register(
            "jobpipe_consumer_attempts",
            "Attempts a job took, counted when it finished (succeeded or dead-lettered)",
            metrics.attempts.clone(),
        );
        registry.register(
            "jobpipe_consumer_redeliveries",
            "Deliveries the broker marked as redelivered (a consumer died or returned them)",
            metrics.redeliveries.clone(),
        );
        registry.register(
            "jobpipe_consumer_held_back",
            "Subscriptions replaced because the queue kept jobs ready while delivering none to them",
            metrics.held_back.clone(),
        );
        registry.register(
            "jobpipe_consumer_jobs_in_flight",
            "Jobs whose handler is running",
            metrics.in_flight.clone(),
        );
        registry.register(
            "jobpipe_worker_requests",
            "Calls to remote workers, by route, outcome (succeeded, transient, permanent, \
             retry_after, unreachable; no answer in time is transient) and status (HTTP class, \
             gRPC code, or none)",
            metrics.worker_requests.clone(),
        );
        registry.register(
            "jobpipe_worker_request_seconds",
            "Time calls to remote workers took, by route",
            metrics.worker_seconds.clone(),
        );
        registry.register(
            "jobpipe_worker_in_flight",
            "Calls to remote workers in flight, by route",
            metrics.worker_in_flight.clone(),
        );
        registry.register(
            "jobpipe_worker_up",
            "Whether a route's remote worker can be reached (1) or is being probed (0)",
            metrics.worker_up.clone(),
        );
        metrics
    }

    /// Creates route `route`'s series, so they exist from the start, and returns them for the
    /// route's worker to update without a lookup per call.
    pub(crate) fn register_worker(&self, route: &'static str) -> WorkerSeries {
        let labels = RouteLabels { route };
        // Clones share the family's values.
        WorkerSeries {
            up: self.worker_up.get_or_create(&labels).clone(),
            in_flight: self.worker_in_flight.get_or_create(&labels).clone(),
            seconds: self.worker_seconds.get_or_create(&labels).clone(),
        }
    }

    /// Counts a call to route `route`'s worker.
    pub(crate) fn worker_request(&self, route: &'static str, attempt: &Attempt, answer: Answer) {
        let outcome = match attempt {
            Attempt::Succeeded => "succeeded",
            Attempt::Withdrawn => "unreachable",
            Attempt::Failed {
                retry_after: Some(_),
                ..
            } => "retry_after",
            Attempt::Failed { kind, .. } => kind.as_str(),
        };
        self.worker_requests
            .get_or_create(&RequestLabels {
                route,
                outcome,
                status: answer.label(),
            })
            .inc();
    }

    /// Counts a settled delivery. `reason` is the failure kind, if the attempt failed.
    pub(crate) fn job(
        &self,
        queue: &str,
        job_type: &str,
        outcome: Outcome,
        reason: Option<FailureKind>,
    ) {
        self.jobs
            .get_or_create(&JobLabels {
                queue: self.intern(queue),
                r#type: self.intern(job_type),
                outcome,
                reason: reason.map_or("", FailureKind::as_str),
            })
            .inc();
    }

    /// Records an attempt's handler time.
    pub(crate) fn handler_time(&self, queue: &str, job_type: &str, elapsed: Duration) {
        self.attempts_run.inc();
        self.attempt_micros
            .inc_by(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
        self.handler_seconds
            .get_or_create(&HandlerLabels {
                queue: self.intern(queue),
                r#type: self.intern(job_type),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records how long an attempt waited after it was due.
    pub(crate) fn queue_wait(&self, queue: &str, waited: Duration) {
        self.queue_wait_seconds
            .get_or_create(&self.queue_labels(queue))
            .observe(waited.as_secs_f64());
    }

    /// Records the attempts of a job that finished.
    pub(crate) fn finished_after(&self, queue: &str, attempts: u32) {
        self.attempts
            .get_or_create(&self.queue_labels(queue))
            .observe(f64::from(attempts));
    }

    /// Counts a redelivery.
    pub(crate) fn redelivered(&self, queue: &str) {
        self.redeliveries
            .get_or_create(&self.queue_labels(queue))
            .inc();
    }

    /// Counts a subscription to `queue` the broker stopped serving, replaced by a new one.
    pub(crate) fn held_back(&self, queue: &str) {
        self.held_back
            .get_or_create(&self.queue_labels(queue))
            .inc();
    }

    fn queue_labels(&self, queue: &str) -> QueueLabels {
        QueueLabels {
            queue: self.intern(queue),
        }
    }

    fn intern(&self, name: &str) -> &'static str {
        self.known
            .iter()
            .find(|known| **known == name)
            .copied()
            .unwrap_or(UNKNOWN)
    }
}

//! The producer's Prometheus metrics. Labels are bounded: a queue label is one of the configured
//! queues or `other`, never a client's free text; no job ids.

use jobpipe_proto::names::QueueName;
use jobpipe_runtime::{label_enum, metrics::latency_buckets};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use std::time::Duration;
use tonic::Code;

label_enum! {
    /// The RPC a request called.
    pub enum Method {
        SubmitJob => "SubmitJob",
        SubmitJobs => "SubmitJobs",
    }
}

label_enum! {
    /// How one job's submission ended.
    pub enum Outcome {
        /// The broker confirmed it.
        Confirmed => "confirmed",
        /// It broke a rule and was not published.
        Invalid => "invalid",
        /// No queue of that name.
        Unroutable => "unroutable",
        /// The broker refused it.
        Nacked => "nacked",
        /// No confirm in time.
        Timeout => "timeout",
        /// The broker was unreachable or blocked: nothing was sent.
        Unavailable => "unavailable",
        /// The connection failed before the confirm: the outcome is unknown.
        Lost => "lost",
    }
}

/// The label value for queues that are not configured (or not valid names).
const OTHER_QUEUE: &str = "other";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: Method,
    code: &'static str,
    /// The caller's name from the callers file, or `anonymous`: bounded by that file.
    caller: String,
}

label_enum! {
    /// Why the gRPC port refused a call before any service saw it.
    pub enum Refusal {
        /// Not a gRPC request (HTTP 405 or 415).
        NotGrpc => "not_grpc",
        /// Missing or invalid credentials.
        Unauthenticated => "unauthenticated",
        /// The caller lacks the role the call needs.
        PermissionDenied => "permission_denied",
        /// `grpc.max_concurrent_calls` calls were in flight.
        TooManyCalls => "too_many_calls",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: Refusal,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    queue: String,
    outcome: Outcome,
}

/// Every metric the producer exports.
#[derive(Debug, Clone)]
pub struct ProducerMetrics {
    rpcs: Family<RpcLabels, Counter>,
    refused: Family<RefusalLabels, Counter>,
    /// One counter per outcome for each configured queue, resolved once so that counting a job
    /// costs no allocation.
    queues: Vec<(QueueName, Vec<Counter>)>,
    other: Vec<Counter>,
    confirm_seconds: Histogram,
}

impl ProducerMetrics {
    /// Creates the metrics for `queues` and registers them in `registry`.
    pub fn register(registry: &mut Registry, queues: &[QueueName]) -> Self {
        let rpcs = Family::<RpcLabels, Counter>::default();
        let jobs = Family::<JobLabels, Counter>::default();
        let per_outcome = |queue: &str| -> Vec<Counter> {
            Outcome::ALL
                .iter()
                .map(|&outcome| {
                    jobs.get_or_create_owned(&JobLabels {
                        queue: queue.to_owned(),
                        outcome,
                    })
                })
                .collect()
        };
        let metrics = Self {
            queues: queues
                .iter()
                .map(|queue| (queue.clone(), per_outcome(queue.as_str())))
                .collect(),
            other: per_outcome(OTHER_QUEUE),
            rpcs,
            refused: Family::default(),
            confirm_seconds: Histogram::new(latency_buckets()),
        };
        registry.register(
            "jobpipe_producer_rpcs",
            "gRPC requests answered, by method, status code and caller",
            metrics.rpcs.clone(),
        );
        registry.register(
            "jobpipe_producer_calls_refused",
            "gRPC calls refused before any service saw them, by reason",
            metrics.refused.clone(),
        );
        registry.register(
            "jobpipe_producer_jobs",
            "Jobs submitted, by queue and outcome",
            jobs,
        );
        registry.register(
            "jobpipe_producer_publish_confirm_seconds",
            "Time from publishing a job to the broker's confirm",
            metrics.confirm_seconds.clone(),
        );
        metrics
    }

    /// Counts one answered RPC.
    pub fn rpc(&self, method: Method, code: Code, caller: &str) {
        self.rpcs
            .get_or_create(&RpcLabels {
                method,
                code: jobpipe_proto::status::code_name(code),
                caller: caller.to_owned(),
            })
            .inc();
    }

    /// Counts a call the gRPC port refused before any service saw it.
    pub fn refused(&self, reason: Refusal) {
        self.refused.get_or_create(&RefusalLabels { reason }).inc();
    }

    /// Counts one job's outcome; `queue` is `None` when the job named no valid queue.
    pub fn job(&self, queue: Option<&QueueName>, outcome: Outcome) {
        let counters = queue
            .and_then(|queue| self.queues.iter().find(|(name, _)| name == queue))
            .map_or(&self.other, |(_, counters)| counters);
        counters[outcome as usize].inc();
    }

    /// Records how long a confirm took.
    pub fn confirm_latency(&self, elapsed: Duration) {
        self.confirm_seconds.observe(elapsed.as_secs_f64());
    }
}

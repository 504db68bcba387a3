//! The jobpipe consumer: takes jobs from RabbitMQ queues, runs their handlers, and settles every
//! delivery exactly once — acknowledged on success, re-published through the delay ladder with
//! backoff on a transient failure, or dead-lettered with its failure record.
//!
//! - [`config`]: the one `Config`.
//! - [`handler`]: the [`Handler`] trait, the one extension point, and the [`Handlers`] registry.
//! - [`builtin`]: the handlers the binary ships (`noop`, `sleep`, `fail`, `crash`).
//! - [`retry`]: the backoff schedule and its settings.
//!
//! Inside (private): `subscription` (consuming a queue across reconnects, under the concurrency
//! limit), `worker` (one delivery's life, from decoding to settlement), `outcome` (the pure retry
//! decision), `republish` (a retry or dead letter confirmed before the original is settled,
//! waiting out broker trouble), `inbound` (a delivery that can be settled only once), `settler` (one
//! channel's settling, runs of acks as one multiple-ack), `context`,
//! `metrics` and `spans` (shared state, what `/metrics` shows, trace spans).
//! - [`Consumer`] (here): binds the admin port and runs everything until shutdown.
//!
//! To embed the consumer, build [`Handlers`], then `Consumer::bind(config, handlers)` and `run`.

pub mod builtin;
pub mod config;
mod context;
mod dispatch;
pub mod handler;
mod inbound;
mod metrics;
mod outcome;
mod remote;
mod republish;
pub mod retry;
pub mod routes;
pub mod scaling;
mod settler;
mod spans;
mod subscription;
mod worker;

pub use async_trait::async_trait;
pub use handler::{Handler, Handlers, Job, JobError};
pub use jobpipe_proto::names::{JobId, JobType, QueueName};
pub use worker::STARTED_TARGET;

use crate::{
    config::Config,
    context::Context,
    dispatch::Dispatch,
    metrics::ConsumerMetrics,
    retry::{RetryPolicy, RetryPolicyError},
    scaling::DesiredReplicas,
    subscription::Workers,
};
use jobpipe_runtime::{
    admin::Admin,
    amqp::{AccessRefused, LinkError, Publishes, Routes},
    base::{BaseConfig, ServiceBase},
    readiness::Blockers,
    settings::ConfigError,
};
use prometheus_client::registry::Registry;
use std::{io, net::SocketAddr, sync::Arc};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

/// Why the consumer could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The configuration breaks a rule, or names a file, handler or worker that cannot be used.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The admin port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The retry settings are invalid.
    #[error("{}: {error}", error.key())]
    Retry {
        /// What is wrong.
        #[from]
        error: RetryPolicyError,
    },
    /// The broker refuses this service's setup (its objects disagree with the configuration, or
    /// the user lacks a permission): a restart will not help.
    #[error("broker: {0}")]
    Broker(Arc<LinkError>),
    /// The broker refused to let this consumer's user read one of its queues.
    #[error("cannot consume: {0}")]
    AccessRefused(AccessRefused),
}

/// A consumer with its admin port bound, ready to run.
#[derive(Debug)]
pub struct Consumer {
    config: Config,
    dispatch: Dispatch,
    blockers: Blockers,
    admin: Admin,
}

impl Consumer {
    /// Checks `config` (routes resolved against `handlers`, token and TLS files read) and binds
    /// the admin port (port 0 picks a free one). An invalid configuration is refused here, never
    /// started as a consumer that cannot run a job.
    pub async fn bind(config: Config, handlers: Handlers) -> Result<Self, ConsumerError> {
        config.validate()?;
        let blockers = Blockers::default();
        let dispatch = Dispatch::new(
            &config.routes,
            handlers,
            config.consumer.concurrency,
            &blockers,
        )?;
        let addr = config.admin.listen;
        let admin = Admin::bind(&config.admin)
            .await
            .map_err(|source| ConsumerError::Bind { addr, source })?;
        Ok(Self {
            config,
            dispatch,
            blockers,
            admin,
        })
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Consumes until `shutdown` is cancelled, then drains: subscriptions are cancelled and
    /// unstarted deliveries returned, running jobs finish within the grace period, and the
    /// broker connection closes last (returning anything still unsettled to its queue). A
    /// failure that ends the consumer early does not cancel `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ConsumerError> {
        let Self {
            config,
            dispatch,
            blockers,
            admin,
        } = self;
        // Ours to cancel when the consumer ends early; the caller's token is theirs.
        let shutdown = shutdown.child_token();
        let retry = RetryPolicy::try_new(&config.retry)?;
        let instance = config.instance();
        let mut registry = Registry::default();
        let types = dispatch.known_types();
        let metrics = ConsumerMetrics::register(
            &mut registry,
            config.topology.queues.iter().map(|q| q.as_str()),
            types.iter().map(String::as_str),
        );
        for remote in dispatch.remotes() {
            remote.attach(metrics.register_worker(remote.label));
        }
        let desired_replicas = DesiredReplicas::register(&mut registry);
        let base = ServiceBase::start(
            BaseConfig {
                service: "jobpipe-consumer",
                amqp: &config.amqp,
                topology: &config.topology,
                publishes: Publishes::Failures,
                metrics: &config.metrics,
                blockers,
            },
            instance.clone(),
            admin,
            registry,
            &shutdown,
        );

        let scaling = tokio::spawn(desired_replicas.follow(
            base.depths.clone(),
            metrics.clone(),
            config.consumer.concurrency,
            config.scaling.clone(),
            shutdown.clone(),
        ));
        let topology = config.topology.topology();
        let workers = Workers {
            ctx: Arc::new(Context {
                link: base.link.clone(),
                dispatch,
                retry,
                instance,
                metrics,
                routes: Routes::new(&topology),
                topology,
                max_timeout: config.consumer.max_timeout,
                permits: Arc::new(Semaphore::new(config.consumer.concurrency)),
                shutdown: shutdown.clone(),
            }),
            tracker: TaskTracker::new(),
        };
        let mut subscriptions = JoinSet::new();
        for queue in &config.topology.queues {
            subscriptions.spawn(subscription::consume(
                queue.clone(),
                config.consumer.prefetch,
                workers.clone(),
                shutdown.clone(),
            ));
        }
        info!(queues = ?config.topology.queues, "Consumer started.");

        let started = async {
            match base.link.wait_first_up().await {
                Err(error) => Err(ConsumerError::Broker(error)),
                Ok(_) => {
                    shutdown.cancelled().await;
                    Ok(())
                }
            }
        };
        let outcome = tokio::select! {
            outcome = started => outcome,
            refused = first_refusal(&mut subscriptions) => Err(ConsumerError::AccessRefused(refused)),
            () = shutdown.cancelled() => Ok(()),
        };
        shutdown.cancel();
        while subscriptions.join_next().await.is_some() {}
        drain(&workers.tracker, &config).await;
        let _ = scaling.await;
        base.stop().await;
        info!("Consumer stopped.");
        outcome
    }
}

/// Runs a consumer with `config` and `handlers` until `shutdown`.
pub async fn run(
    config: Config,
    handlers: Handlers,
    shutdown: CancellationToken,
) -> Result<(), ConsumerError> {
    Consumer::bind(config, handlers).await?.run(shutdown).await
}

/// The first subscription that ended because the broker refused it; pending while none did.
async fn first_refusal(subscriptions: &mut JoinSet<Result<(), AccessRefused>>) -> AccessRefused {
    while let Some(ended) = subscriptions.join_next().await {
        if let Ok(Err(refused)) = ended {
            return refused;
        }
    }
    std::future::pending().await
}

/// Gives running jobs the grace period to finish.
async fn drain(tracker: &TaskTracker, config: &Config) {
    tracker.close();
    if tracker.is_empty() {
        return;
    }
    info!(
        running = tracker.len(),
        grace_period = ?config.shutdown.grace_period,
        "Waiting for running jobs."
    );
    if tokio::time::timeout(config.shutdown.grace_period, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            abandoned = tracker.len(),
            "Grace period over; unfinished jobs go back to their queue."
        );
    }
}

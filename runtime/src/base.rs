//! What every service runs beside its own work: the supervised broker link, and the admin
//! endpoint with readiness and metrics (the service's own, build info, and queue depths). Started
//! together, stopped together, last.

use crate::{
    admin::{Admin, AdminState},
    amqp::{AmqpConfig, Declare, Link, Publishes, Routes, TopologyConfig},
    metrics::register_build_info,
    queue_state::{Depths, MetricsConfig, QueueState},
    readiness::{self, Blockers},
};
use prometheus_client::{metrics::gauge::Gauge, registry::Registry};
use std::sync::Arc;
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// How long stopping may take.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The settings the base needs from a service's configuration.
#[derive(Debug, Clone)]
pub struct BaseConfig<'a> {
    /// The service's name for build info (`jobpipe-producer`).
    pub service: &'static str,
    /// The broker.
    pub amqp: &'a AmqpConfig,
    /// The topology to declare (or check) on every connect.
    pub topology: &'a TopologyConfig,
    /// Where the service publishes: checked on every connect.
    pub publishes: Publishes,
    /// Queue depth polling.
    pub metrics: &'a MetricsConfig,
    /// What besides the link keeps the service unready (none for a service that has nothing
    /// else to wait for: `Blockers::default()`).
    pub blockers: Blockers,
}

/// The running base of a service.
#[derive(Debug)]
pub struct ServiceBase {
    /// The broker link.
    pub link: Link,
    /// `true` while the service is ready (link up, not draining, no blocker).
    pub ready: watch::Receiver<bool>,
    /// The last reading of the queue depths (`None` before the first, or with polling off).
    pub depths: watch::Receiver<Option<Depths>>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl ServiceBase {
    /// Starts the link (named `connection_name` in RabbitMQ) and the admin endpoint serving
    /// `registry`, which gets build info, the link's state and queue depths too. Readiness turns
    /// false when `draining` is cancelled, while the link stays up for the drain.
    pub fn start(
        config: BaseConfig<'_>,
        connection_name: String,
        admin: Admin,
        mut registry: Registry,
        draining: &CancellationToken,
    ) -> Self {
        let stop = CancellationToken::new();
        let (link, link_task) = Link::spawn(
            config.amqp.clone(),
            config.topology.plan(),
            Declare::from_config(config.topology.declare),
            Routes::new(&config.topology.topology()).exchanges(config.publishes),
            connection_name,
            stop.clone(),
        );
        register_build_info(&mut registry, config.service);
        let connected = Gauge::default();
        registry.register(
            "jobpipe_broker_connected",
            "Whether the broker link is up (1) or down (0)",
            connected.clone(),
        );
        let (depths_sender, depths) = watch::channel(None);
        let poller = tokio::spawn(QueueState::register(&mut registry).poll(
            link.clone(),
            config.topology.topology(),
            config.topology.queues.clone(),
            config.metrics.queue_poll_interval,
            depths_sender,
            stop.clone(),
        ));
        let blockers = config.blockers;
        let ready = readiness::track(&link, draining.clone(), connected, &blockers);
        let state = AdminState {
            ready: ready.clone(),
            blockers: blockers.clone(),
            registry: Arc::new(registry),
        };
        let admin = tokio::spawn({
            let stop = stop.clone();
            async move {
                // A failing admin endpoint must not take the service down; it logs nothing
                // more than its bind already reported.
                let _ = admin.serve(state, stop).await;
            }
        });
        Self {
            link,
            ready,
            depths,
            stop,
            tasks: vec![link_task, poller, admin],
        }
    }

    /// Closes the broker connection and the admin endpoint, and waits for both (at most
    /// [`STOP_TIMEOUT`]: a blocked broker may never answer the close).
    pub async fn stop(self) {
        self.stop.cancel();
        let all = futures::future::join_all(self.tasks);
        let _ = tokio::time::timeout(STOP_TIMEOUT, all).await;
    }
}

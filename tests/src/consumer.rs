//! The consumer, run in-process with handlers a test controls, and a recording handler that
//! tells the test every attempt it sees.

use crate::{broker, broker::TestTopology, eventually, within};
use async_trait::async_trait;
use jobpipe_consumer::{
    ConsumerError, Handler, Handlers, Job, JobError, builtin::Builtin, config::Config,
    retry::Jitter,
};
use jobpipe_proto::names::JobType;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// A consumer configuration for `topology` on the test broker: admin on a free port, a
/// predictable retry schedule (1 s, doubling, no jitter), and the instance name `instance`.
pub fn config(topology: &TestTopology, instance: &str) -> Config {
    let mut config = Config {
        amqp: broker::amqp_config(),
        topology: topology.config(),
        ..Config::default()
    };
    config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.retry.jitter = Jitter::None;
    config.consumer.instance = instance.into();
    config.consumer.prefetch = 8;
    config.consumer.concurrency = 8;
    config.shutdown.grace_period = Duration::from_secs(10);
    config
}

/// One attempt a [`Recorder`] saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The job's id.
    pub job_id: String,
    /// The attempt.
    pub attempt: u32,
    /// The recorder's instance name.
    pub instance: String,
    /// When the attempt started.
    pub at: Instant,
}

/// A handler that reports every attempt to the test, then does what a built-in handler does.
#[derive(Debug, Clone)]
pub struct Recorder {
    instance: String,
    then: Builtin,
    seen: mpsc::UnboundedSender<Seen>,
}

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, job: Job) -> Result<(), JobError> {
        let _ = self.seen.send(Seen {
            job_id: job.id.to_string(),
            attempt: job.attempt,
            instance: self.instance.clone(),
            at: Instant::now(),
        });
        self.then.handle(job).await
    }
}

/// Handlers for every built-in job type, each recording its attempts to `seen` under `instance`.
pub fn recording_handlers(instance: &str, seen: &mpsc::UnboundedSender<Seen>) -> Handlers {
    let mut handlers = Handlers::new();
    for builtin in [Builtin::Noop, Builtin::Sleep, Builtin::Fail] {
        handlers.register(
            JobType::try_new(builtin.name()).expect("valid"),
            Recorder {
                instance: instance.into(),
                then: builtin,
                seen: seen.clone(),
            },
        );
    }
    handlers
}

/// Receives the next `count` attempts, failing the test after `limit`.
pub async fn next_seen(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    count: usize,
    limit: Duration,
) -> Vec<Seen> {
    within(limit, &format!("{count} attempts"), async {
        let mut got = Vec::with_capacity(count);
        while got.len() < count {
            got.push(seen.recv().await.expect("recorders alive"));
        }
        got
    })
    .await
}

/// A consumer running in this process.
#[derive(Debug)]
pub struct RunningConsumer {
    /// Where its admin endpoint listens.
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ConsumerError>>,
}

impl RunningConsumer {
    /// Starts a consumer and waits until it is ready (subscribed to a live link).
    pub async fn start(config: Config, handlers: Handlers) -> Self {
        let consumer = jobpipe_consumer::Consumer::bind(config, handlers)
            .await
            .expect("bind the consumer");
        let admin_addr = consumer.admin_addr().expect("admin address");
        let shutdown = CancellationToken::new();
        crate::init_logs();
        let task = tokio::spawn(consumer.run(shutdown.clone()));
        let running = Self {
            admin_addr,
            shutdown,
            task,
        };
        running.wait_ready().await;
        running
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let addr = self.admin_addr;
        eventually(
            Duration::from_secs(30),
            "the consumer to be ready",
            || async move { crate::http_get(addr, "/readyz").await.0 == 200 },
        )
        .await;
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        crate::http_get(self.admin_addr, "/metrics").await.1
    }

    /// Asks the consumer to drain and waits for it to stop.
    pub async fn stop(self) -> Result<(), ConsumerError> {
        self.shutdown.cancel();
        within(Duration::from_secs(30), "the consumer to stop", self.task)
            .await
            .expect("consumer task")
    }
}

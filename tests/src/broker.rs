//! The real broker, as tests see it: a unique topology per test that cleans up after itself, and
//! a plain AMQP client to look inside queues without jobpipe in the way.

use crate::{eventually, within};
use jobpipe_proto::{
    names::{Prefix, QueueName},
    topology::{Destination, QueueOptions, QueueType, Topology},
};
use jobpipe_runtime::amqp::{AmqpConfig, AmqpUrl, TopologyConfig};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    message::BasicGetMessage,
    options::{
        BasicGetOptions, BasicPublishOptions, ExchangeDeleteOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::FieldTable,
};
use std::time::Duration;

/// How long any one probe operation may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker every test uses: `JOBPIPE__AMQP__URL` (the one `make test` ensures), or the
/// local one.
pub fn amqp_url() -> String {
    std::env::var("JOBPIPE__AMQP__URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// The test broker's parts: its address, user, password and vhost (URL-encoded).
pub fn broker_parts() -> (std::net::SocketAddr, String, String, String) {
    use std::net::ToSocketAddrs;
    let uri: lapin::uri::AMQPUri = amqp_url().parse().expect("a valid JOBPIPE__AMQP__URL");
    let addr = (uri.authority.host.as_str(), uri.authority.port)
        .to_socket_addrs()
        .expect("resolvable broker host")
        .next()
        .expect("an address");
    let vhost = if uri.vhost == "/" {
        "%2f".to_owned()
    } else {
        uri.vhost.clone()
    };
    (
        addr,
        uri.authority.userinfo.username,
        uri.authority.userinfo.password,
        vhost,
    )
}

/// Broker settings for a service under test: the test broker, short timeouts.
pub fn amqp_config() -> AmqpConfig {
    AmqpConfig {
        url: amqp_url().parse().unwrap_or_else(|_| AmqpUrl::local()),
        heartbeat: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        confirm_timeout: Duration::from_secs(5),
        recovery_timeout: Duration::from_secs(20),
        ..AmqpConfig::default()
    }
}

fn queue_name(queue: &str) -> QueueName {
    QueueName::try_new(queue).expect("test queue names are valid")
}

/// A topology of its own for one test, deleted (queues and exchanges) when dropped, pass or fail.
#[derive(Debug)]
pub struct TestTopology {
    config: TopologyConfig,
}

impl TestTopology {
    /// A fresh prefix, `t-{test}-{random}`, with the given work queues.
    pub fn new(test: &str, queues: &[&str]) -> Self {
        let prefix = format!("t-{test}-{:08x}", rand::random::<u32>());
        Self {
            config: TopologyConfig {
                prefix: Prefix::try_new(prefix).expect("test prefixes are valid"),
                queues: queues.iter().map(|queue| queue_name(queue)).collect(),
                ..TopologyConfig::default()
            },
        }
    }

    /// The topology section for a service's configuration.
    pub fn config(&self) -> TopologyConfig {
        self.config.clone()
    }

    /// The names of this topology's objects.
    pub fn names(&self) -> Topology {
        self.config.topology()
    }

    /// `{prefix}.{queue}`.
    pub fn work_queue(&self, queue: &str) -> String {
        self.names().work_queue(&queue_name(queue))
    }

    /// `{prefix}.{queue}.dead`.
    pub fn dead_queue(&self, queue: &str) -> String {
        self.names().dead_queue(&queue_name(queue))
    }

    fn all_objects(&self) -> (Vec<String>, Vec<String>) {
        let options = QueueOptions {
            queue_type: QueueType::Quorum,
            delivery_limit: 0,
            max_length: None,
        };
        let plan = self.names().plan(&self.config.queues, &options);
        let queues = plan.queues.into_iter().map(|q| q.name).collect();
        let mut exchanges: Vec<String> = plan.exchanges.into_iter().map(|e| e.name).collect();
        exchanges.extend(
            plan.bindings
                .into_iter()
                .filter_map(|b| match b.destination {
                    Destination::Exchange(name) => Some(name),
                    Destination::Queue(_) => None,
                }),
        );
        (queues, exchanges)
    }
}

impl Drop for TestTopology {
    fn drop(&mut self) {
        let (queues, exchanges) = self.all_objects();
        // Drop cannot await, and may run inside a runtime: clean up from a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let probe = Probe::connect().await?;
                for queue in &queues {
                    probe.delete_queue(queue).await;
                }
                for exchange in &exchanges {
                    // Best effort, as for the queues.
                    let _ = probe.delete_exchange(exchange).await;
                }
                Ok::<_, lapin::Error>(())
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("cleaning up the test topology failed: {error}"),
            // A probe timeout panics the cleanup thread; its message is already printed.
            Err(_) => eprintln!("cleaning up the test topology gave up"),
        }
    }
}

/// A plain AMQP client on the test broker.
#[derive(Debug)]
pub struct Probe {
    _connection: Connection,
    /// A channel for anything the helpers do not cover.
    pub channel: Channel,
}

impl Probe {
    /// Connects to the test broker.
    pub async fn connect() -> Result<Self, lapin::Error> {
        Self::connect_to(&amqp_url()).await
    }

    /// Connects to the broker at `url` (a throwaway node of a test's own).
    pub async fn connect_to(url: &str) -> Result<Self, lapin::Error> {
        within(PROBE_TIMEOUT, "the probe to connect", async {
            let connection = Connection::connect(url, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            Ok(Self {
                _connection: connection,
                channel,
            })
        })
        .await
    }

    /// Ready messages in `queue` (which must exist).
    pub async fn message_count(&self, queue: &str) -> u32 {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        within(
            PROBE_TIMEOUT,
            "a queue's message count",
            self.channel
                .queue_declare(queue.into(), passive, FieldTable::default()),
        )
        .await
        .unwrap_or_else(|error| panic!("queue {queue} should exist: {error}"))
        .message_count()
    }

    /// Waits until `queue` holds exactly `count` ready messages, failing the test after `limit`.
    pub async fn wait_for_count(&self, queue: &str, count: u32, limit: Duration) {
        eventually(
            limit,
            &format!("{count} ready messages in {queue}"),
            || async move { self.message_count(queue).await == count },
        )
        .await;
    }

    /// Takes one message from `queue` and acknowledges it.
    pub async fn get(&self, queue: &str) -> Option<BasicGetMessage> {
        let options = BasicGetOptions { no_ack: true };
        within(
            PROBE_TIMEOUT,
            "a basic.get",
            self.channel.basic_get(queue.into(), options),
        )
        .await
        .unwrap_or_else(|error| panic!("basic.get on {queue}: {error}"))
    }

    /// Takes every message from `queue`.
    pub async fn drain(&self, queue: &str) -> Vec<BasicGetMessage> {
        let mut messages = Vec::new();
        while let Some(message) = self.get(queue).await {
            messages.push(message);
        }
        messages
    }

    /// Publishes raw bytes with `properties`, as any AMQP client could, and waits for the write.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) {
        within(
            PROBE_TIMEOUT,
            "a probe publish",
            self.channel.basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            ),
        )
        .await
        .expect("publish");
    }

    /// Deletes `queue`, ignoring whether it existed.
    pub async fn delete_queue(&self, queue: &str) {
        let _ = tokio::time::timeout(
            PROBE_TIMEOUT,
            self.channel
                .queue_delete(queue.into(), QueueDeleteOptions::default()),
        )
        .await;
    }

    /// Deletes `exchange`; the broker's answer. A broker that does not answer in time fails the
    /// test.
    pub async fn delete_exchange(&self, exchange: &str) -> Result<(), lapin::Error> {
        within(
            PROBE_TIMEOUT,
            "an exchange delete",
            self.channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default()),
        )
        .await
    }
}

/// A dead letter of queue `default` as a consumer writes it: job `id` of `job_type` (tenant
/// `acme`), failed as `kind` on its second and last attempt at `at_ms` (ms since the epoch), by
/// consumer `c`, with the error "`kind` on purpose".
pub fn dead_letter(
    id: &str,
    job_type: &str,
    kind: jobpipe_proto::failure::FailureKind,
    at_ms: u64,
) -> BasicProperties {
    use jobpipe_proto::{
        failure::{self, AttemptRecord},
        job::JobProperties,
        names::{JobId, JobType},
    };
    let at = std::time::UNIX_EPOCH + Duration::from_millis(at_ms);
    let job = JobProperties {
        id: JobId::try_new(id).expect("id"),
        job_type: JobType::try_new(job_type).expect("type"),
        content_type: "text/plain".into(),
        attempt: 2,
        max_attempts: 2,
        timeout: Duration::from_secs(30),
        submitted_at: at,
        due_at: at,
        metadata: std::collections::BTreeMap::from([("tenant".into(), "acme".into())]),
        trace: None,
        submitted_by: None,
    };
    let last = AttemptRecord {
        attempt: 2,
        at,
        kind,
        error: format!("{} on purpose", kind.as_str()),
        consumer: "c".into(),
    };
    failure::for_dead_letter(&job.encode(), &last, kind, "default")
}

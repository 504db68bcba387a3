//! The producer, run in-process on free ports, with clients for its gRPC and admin endpoints.

use crate::{broker, broker::TestTopology, within};
use jobpipe_producer::{Producer, ProducerError, config::Config};
use jobpipe_proto::v1::{
    JobSpec, SubmitJobRequest, SubmitJobsRequest, job_service_client::JobServiceClient,
};
use std::{net::SocketAddr, time::Duration};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A producer running in this process.
#[derive(Debug)]
pub struct RunningProducer {
    /// Where its gRPC service listens.
    pub grpc_addr: SocketAddr,
    /// Where its admin endpoint listens.
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ProducerError>>,
}

/// A producer configuration for `topology` on the test broker, on free loopback ports.
pub fn config(topology: &TestTopology) -> Config {
    let mut config = Config {
        amqp: broker::amqp_config(),
        topology: topology.config(),
        ..Config::default()
    };
    config.grpc.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config
}

impl RunningProducer {
    /// Starts a producer with `config` and waits until it serves (its `/readyz`: the gRPC port
    /// may want TLS or credentials).
    pub async fn start(config: Config) -> Self {
        let running = Self::spawn(config).await;
        crate::process::wait_ready(running.admin_addr).await;
        running
    }

    /// Starts a producer with `config` without waiting for the broker.
    pub async fn spawn(config: Config) -> Self {
        let producer = Producer::bind(config).await.expect("bind the producer");
        let grpc_addr = producer.grpc_addr().expect("grpc address");
        let admin_addr = producer.admin_addr().expect("admin address");
        let shutdown = CancellationToken::new();
        crate::init_logs();
        let task = tokio::spawn(producer.run(shutdown.clone()));
        Self {
            grpc_addr,
            admin_addr,
            shutdown,
            task,
        }
    }

    /// A connected gRPC client.
    pub async fn client(&self) -> JobServiceClient<Channel> {
        JobServiceClient::new(self.channel().await)
    }

    /// Submits `spec`, failing the test if it is refused; its job id.
    pub async fn submit(&self, spec: JobSpec) -> String {
        self.client()
            .await
            .submit_job(SubmitJobRequest { job: Some(spec) })
            .await
            .expect("submitted")
            .into_inner()
            .job_id
    }

    /// Submits `jobs` as one batch, failing the test if the batch or any job in it is refused;
    /// their job ids, in order.
    pub async fn submit_all(&self, jobs: Vec<JobSpec>) -> Vec<String> {
        self.client()
            .await
            .submit_jobs(SubmitJobsRequest { jobs })
            .await
            .expect("batch")
            .into_inner()
            .results
            .into_iter()
            .map(|result| {
                assert_eq!(result.code, 0, "{}", result.message);
                result.job_id
            })
            .collect()
    }

    /// A gRPC channel to the producer (every call bounded).
    pub async fn channel(&self) -> Channel {
        crate::grpc_channel(self.grpc_addr).await
    }

    /// The job service's health right now.
    pub async fn health(&self) -> ServingStatus {
        let mut client = HealthClient::new(self.channel().await);
        let response = client
            .check(HealthCheckRequest {
                service: jobpipe_producer::SERVICE_NAME.into(),
            })
            .await
            .expect("health check");
        response.into_inner().status()
    }

    /// Waits (at most 30 s) until the job service's health is `status`.
    pub async fn wait_for_health(&self, status: ServingStatus) {
        // A watch is a long-lived stream: no per-call timeout, the whole wait is bounded instead.
        let channel = Channel::from_shared(format!("http://{}", self.grpc_addr))
            .expect("valid uri")
            .connect_timeout(Duration::from_secs(10));
        within(Duration::from_secs(30), "the producer's health", async {
            let mut client = HealthClient::new(channel.connect().await.expect("connect"));
            let mut updates = client
                .watch(HealthCheckRequest {
                    service: jobpipe_producer::SERVICE_NAME.into(),
                })
                .await
                .expect("health watch")
                .into_inner();
            while let Some(update) = updates.message().await.expect("health stream") {
                if update.status() == status {
                    return;
                }
            }
            panic!("health stream ended before {status:?}");
        })
        .await;
    }

    /// Fetches an admin endpoint's status code and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        crate::http_get(self.admin_addr, path).await
    }

    /// Asks the producer to drain and waits for it to stop.
    pub async fn stop(self) -> Result<(), ProducerError> {
        self.shutdown.cancel();
        within(Duration::from_secs(30), "the producer to stop", self.task)
            .await
            .expect("producer task")
    }

    /// Waits for the producer to stop on its own (e.g. on a fatal error).
    pub async fn stopped(self) -> Result<(), ProducerError> {
        within(Duration::from_secs(30), "the producer to stop", self.task)
            .await
            .expect("producer task")
    }
}

//! The jobpipe producer: a gRPC service that accepts jobs and answers OK only once RabbitMQ has
//! confirmed them.
//!
//! - [`config`]: the one `Config`.
//! - [`auth`]: callers, their credentials and roles (the callers file, followed as it changes).
//! - `admission` (private): what the gRPC port takes before any service sees it (gRPC only,
//!   bounded calls, each within its deadline, one message per job call).
//! - [`submission`]: checking a client's job and filling in defaults.
//! - [`service`]: the `JobService` RPCs, publishing with confirms (scheduled jobs into the
//!   delay ladder, after [`queues`] confirms their destination exists).
//! - [`operations`]: the `AdminService` RPCs: dead letters listed, shown, replayed and purged
//!   (reading a dead-letter queue without changing it: `dead_letters`, private), queue depths.
//! - [`error`]: why a job was refused, and its gRPC status (mapped in one place).
//! - [`metrics`] and [`spans`]: what `/metrics` shows and the trace spans opened.
//! - [`Producer`] (here): binds the ports and runs everything until shutdown.

mod admission;
pub mod auth;
pub mod config;
mod dead_letters;
pub mod error;
pub mod metrics;
pub mod operations;
pub mod queues;
mod scan;
pub mod service;
pub mod spans;
pub mod submission;

use crate::{
    admission::AdmissionLayer,
    auth::Authenticator,
    config::{Config, GRPC_TLS_KEYS},
    metrics::ProducerMetrics,
    operations::AdminService,
    service::JobService,
    submission::Rules,
};
use jobpipe_proto::v1::{
    FILE_DESCRIPTOR_SET, admin_service_server::AdminServiceServer,
    job_service_server::JobServiceServer,
};
use jobpipe_runtime::{
    admin::Admin,
    amqp::{LinkError, Publishes, link::connection_name},
    base::{BaseConfig, ServiceBase},
    listener::{ConnectionLimits, Listener},
    readiness::Blockers,
    tls::ReloadingServerConfig,
};
use prometheus_client::registry::Registry;
use std::{io, net::SocketAddr, sync::Arc};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{info, warn};

/// The gRPC service name clients and probes ask health for.
pub const SERVICE_NAME: &str = "jobpipe.v1.JobService";

/// Why the producer could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ProducerError {
    /// A port could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The broker refuses this service's setup (its objects disagree with the configuration, or
    /// the user lacks a permission): a restart will not help.
    #[error("broker: {0}")]
    Broker(Arc<LinkError>),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The reflection service could not be built from the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC port's TLS files could not be loaded.
    #[error("{0}")]
    Tls(#[from] jobpipe_runtime::tls::TlsError),
    /// The callers file could not be loaded.
    #[error("auth.callers_file: {0}")]
    Auth(#[from] auth::AuthError),
}

/// HTTP/2 streams (calls) one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// A producer with its ports bound, ready to run.
#[derive(Debug)]
pub struct Producer {
    config: Config,
    grpc: Listener,
    admin: Admin,
}

impl Producer {
    /// Binds the gRPC and admin ports (port 0 picks free ones).
    pub async fn bind(config: Config) -> Result<Self, ProducerError> {
        let grpc_addr = config.grpc.listen;
        let grpc = TcpListener::bind(grpc_addr)
            .await
            .map_err(|source| ProducerError::Bind {
                addr: grpc_addr,
                source,
            })?;
        let grpc = Listener::new(
            grpc,
            ConnectionLimits {
                max_connections: config.grpc.max_connections,
                handshake_timeout: config.grpc.handshake_timeout,
            },
        );
        let admin_addr = config.admin.listen;
        let admin = Admin::bind(&config.admin)
            .await
            .map_err(|source| ProducerError::Bind {
                addr: admin_addr,
                source,
            })?;
        Ok(Self {
            config,
            grpc,
            admin,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> io::Result<SocketAddr> {
        self.admin.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then drains: health turns NOT_SERVING, in-flight
    /// RPCs finish (their confirms awaited) within the grace period, and the broker connection
    /// closes last.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ProducerError> {
        let Self {
            config,
            grpc,
            admin,
        } = self;
        let mut registry = Registry::default();
        let metrics = ProducerMetrics::register(&mut registry, &config.topology.queues);
        // The base outlives the gRPC server: draining RPCs still need their confirms.
        let base = ServiceBase::start(
            BaseConfig {
                service: "jobpipe-producer",
                amqp: &config.amqp,
                topology: &config.topology,
                publishes: Publishes::Jobs,
                metrics: &config.metrics,
                blockers: Blockers::default(),
            },
            connection_name("jobpipe-producer"),
            admin,
            registry,
            &shutdown,
        );
        let (reporter, health) = tonic_health::server::health_reporter();
        tokio::spawn(report_health(reporter, base.ready.clone()));
        let tls = match config.grpc.tls.enabled() {
            true => Some(ReloadingServerConfig::start(
                config.grpc.tls.clone(),
                GRPC_TLS_KEYS,
                &[b"h2"],
                shutdown.clone(),
            )?),
            false => None,
        };
        let authenticator = Authenticator::start(&config.auth, shutdown.clone())?;
        if authenticator.is_none() {
            warn!("Authentication is off (auth.callers_file is unset): every caller may submit.");
        }

        let jobs = JobServiceServer::new(JobService::new(
            base.link.clone(),
            Rules::new(config.limits.clone(), config.jobs.clone()),
            config.topology.topology(),
            config.topology.queues.clone(),
            config.amqp.confirm_timeout,
            metrics.clone(),
        ))
        .max_decoding_message_size(config.max_request_bytes());
        let operations = AdminServiceServer::new(AdminService::new(
            base.link.clone(),
            config.topology.topology(),
            config.topology.queues.clone(),
            config.amqp.confirm_timeout,
        ));
        let limits = &config.grpc;
        let server = Server::builder()
            .http2_keepalive_interval(Some(limits.keepalive_interval))
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .max_connection_age(limits.max_connection_age)
            // Short, so that a silent client cannot keep a recycled connection: an operations
            // call cut by it is retried (a replay continues where it stopped).
            .max_connection_age_grace(limits.request_timeout)
            .layer(AdmissionLayer::new(
                limits.max_concurrent_calls,
                (limits.request_timeout, limits.admin_request_timeout),
                authenticator,
                metrics,
            ))
            .add_service(health)
            .add_optional_service(limits.reflection.then(reflection_v1).transpose()?)
            .add_optional_service(limits.reflection.then(reflection_v1alpha).transpose()?)
            .add_service(jobs)
            .add_service(operations)
            .serve_with_incoming_shutdown(
                grpc.into_stream(tls),
                shutdown.clone().cancelled_owned(),
            );
        tokio::pin!(server);
        info!(grpc = %config.grpc.listen, admin = %config.admin.listen, "Producer started.");

        let outcome = tokio::select! {
            served = &mut server => served.map_err(ProducerError::from),
            fatal = base.link.wait_first_up() => match fatal {
                Err(error) => Err(ProducerError::Broker(error)),
                Ok(_) => drain(&mut server, &shutdown, &config).await,
            },
        };
        base.stop().await;
        info!("Producer stopped.");
        outcome
    }
}

/// Runs the producer with `config` until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ProducerError> {
    Producer::bind(config).await?.run(shutdown).await
}

/// Serves until shutdown, then gives in-flight RPCs the grace period to finish.
async fn drain(
    server: &mut std::pin::Pin<&mut impl Future<Output = Result<(), tonic::transport::Error>>>,
    shutdown: &CancellationToken,
    config: &Config,
) -> Result<(), ProducerError> {
    tokio::select! {
        served = server.as_mut() => return served.map_err(ProducerError::from),
        () = shutdown.cancelled() => {}
    }
    info!(grace_period = ?config.shutdown.grace_period, "Draining in-flight requests.");
    match tokio::time::timeout(config.shutdown.grace_period, server.as_mut()).await {
        Ok(served) => served.map_err(ProducerError::from),
        Err(_) => {
            warn!("Grace period over; abandoning the remaining requests.");
            Ok(())
        }
    }
}

/// gRPC health: the job service ("jobpipe.v1.JobService") follows readiness (broker link up, not
/// draining), for readiness probes and clients; the server as a whole ("") is SERVING while the
/// process runs, for liveness probes, which must not restart pods for a broker outage.
async fn report_health(reporter: HealthReporter, mut ready: watch::Receiver<bool>) {
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    loop {
        let status = if *ready.borrow_and_update() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status(SERVICE_NAME, status).await;
        if ready.changed().await.is_err() {
            reporter
                .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                .await;
            return;
        }
    }
}

fn reflection_v1() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    ProducerError,
> {
    Ok(tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?)
}

/// grpcurl 1.8.6 speaks only the v1alpha reflection protocol.
fn reflection_v1alpha() -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
    ProducerError,
> {
    Ok(tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?)
}

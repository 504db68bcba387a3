//! The admin HTTP endpoint every service serves beside its main work: `/livez` (the process
//! runs), `/readyz` (it can do its job: broker up, not draining) and `/metrics` (Prometheus text).
//! HTTP/1.1 only, with every wait bounded: probes and scrapes are small and quick, anything slow
//! or idle is dropped.

use crate::{
    listener::{ConnectionLimits, Listener},
    readiness::Blockers,
};
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use prometheus_client::{encoding::prometheus_text, registry::Registry};
use serde::Deserialize;
use std::{io, net::SocketAddr, sync::Arc, time::Duration};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

/// The longest a connection is kept: a scraper reconnects, a slow reader is cut off.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Where the admin endpoint listens, and how much it takes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address and port, e.g. `0.0.0.0:9090`.
    pub listen: SocketAddr,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// How long a client may take to send a request's head (and, on a new connection, its
    /// first byte); a connection idle between requests is closed after as long.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9090)),
            max_connections: 64,
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl AdminConfig {
    /// Checks the rules the types cannot express; the error names the key.
    pub fn validate(&self) -> Result<(), crate::settings::ConfigError> {
        let invalid = |key, reason: &str| {
            Err(crate::settings::ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if self.max_connections == 0 {
            return invalid("admin.max_connections", "must be at least 1");
        }
        if self.request_timeout.is_zero() {
            return invalid("admin.request_timeout", "must be positive");
        }
        Ok(())
    }
}

/// What the endpoint reports.
#[derive(Clone, Debug)]
pub struct AdminState {
    /// Whether the service is ready (see [`crate::readiness`]).
    pub ready: watch::Receiver<bool>,
    /// Why, besides the broker link, it is not (printed by `/readyz`).
    pub blockers: Blockers,
    /// The service's metrics.
    pub registry: Arc<Registry>,
}

/// A bound, not yet serving, admin endpoint.
#[derive(Debug)]
pub struct Admin {
    listener: Listener,
    request_timeout: Duration,
}

impl Admin {
    /// Binds the listener (port 0 picks a free port).
    pub async fn bind(config: &AdminConfig) -> io::Result<Self> {
        let limits = ConnectionLimits {
            max_connections: config.max_connections,
            handshake_timeout: config.request_timeout,
        };
        Ok(Self {
            listener: Listener::new(TcpListener::bind(config.listen).await?, limits),
            request_timeout: config.request_timeout,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn serve(self, state: AdminState, shutdown: CancellationToken) -> io::Result<()> {
        let router = Router::new()
            .route("/livez", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .with_state(state);
        let connections = TaskTracker::new();
        loop {
            let (io, _) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let service =
                router
                    .clone()
                    .map_request(|request: hyper::Request<hyper::body::Incoming>| {
                        request.map(axum::body::Body::new)
                    });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(self.request_timeout)
                .serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                tokio::pin!(connection);
                tokio::select! {
                    _ = &mut connection => {}
                    () = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                    () = shutdown.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
                    }
                }
            });
        }
        connections.close();
        connections.wait().await;
        Ok(())
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if *state.ready.borrow() {
        return (StatusCode::OK, "ready\n".to_owned());
    }
    let mut body = "not ready\n".to_owned();
    for reason in state.blockers.reasons() {
        body.push_str(&reason);
        body.push('\n');
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "metrics encoding failed\n".to_owned(),
        ),
    }
}

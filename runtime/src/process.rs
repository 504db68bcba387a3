//! The process around a service: what every jobpipe binary's `main` does besides loading its
//! configuration. Keeps `main` thin and the binaries alike.

use crate::{
    shutdown,
    telemetry::{self, LogConfig, TelemetryConfig, TelemetryError},
};
use std::future::Future;
use tokio_util::sync::CancellationToken;

/// Exit status for an unusable configuration (EX_USAGE).
pub const EX_USAGE: u8 = 64;
/// Exit status when the broker's objects disagree with the configuration (EX_CONFIG).
pub const EX_CONFIG: u8 = 78;

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Tokio runtime or the signal handlers could not be set up.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Logging or tracing could not start (a configuration error).
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

/// Builds the Tokio runtime, installs logging and tracing for `name`, arms the shutdown signal,
/// runs `service` until it returns, and flushes buffered spans. Returns what `service` returned.
pub fn serve<F, Fut, T>(
    name: &'static str,
    log: &LogConfig,
    telemetry: &TelemetryConfig,
    service: F,
) -> Result<T, StartError>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = T>,
{
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        // Inside the runtime: the OTLP exporter's client lives on it.
        let telemetry = telemetry::init(log, telemetry, name)?;
        let shutdown = shutdown::on_signals()?;
        let outcome = service(shutdown).await;
        telemetry.shutdown().await;
        Ok(outcome)
    })
}

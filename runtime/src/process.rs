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

/// The exit status for what [`serve`] returned, with any error printed as one line: 0 on a clean
/// stop, [`EX_CONFIG`] when `is_config` says the broker's objects disagree with the
/// configuration, [`EX_USAGE`] when the service could not start, 1 otherwise.
pub fn exit_status<E: std::fmt::Display>(
    name: &str,
    served: Result<Result<(), E>, StartError>,
    is_config: impl Fn(&E) -> bool,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    match served {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("{name}: {error}");
            ExitCode::from(if is_config(&error) { EX_CONFIG } else { 1 })
        }
        Err(error) => {
            eprintln!("{name}: cannot start: {error}");
            ExitCode::from(EX_USAGE)
        }
    }
}

/// The command-line options every service binary takes, flattened into its own `Args`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// A TOML configuration file; `JOBPIPE__SECTION__KEY` environment variables override it.
    #[arg(long, env = "JOBPIPE_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Check the configuration, print the result and exit.
    #[arg(long)]
    pub check_config: bool,
}

impl ConfigArgs {
    /// Loads the configuration with `load` (given the file, if any). `Err` carries the exit
    /// status when the process is done: [`EX_USAGE`] with one line naming the bad key, or success
    /// after `--check-config`.
    pub fn load<C, E: std::fmt::Display>(
        &self,
        name: &str,
        load: impl FnOnce(Option<&std::path::Path>) -> Result<C, E>,
    ) -> Result<C, std::process::ExitCode> {
        use std::process::ExitCode;
        match load(self.config.as_deref()) {
            Err(error) => {
                eprintln!("{name}: invalid configuration: {error}");
                Err(ExitCode::from(EX_USAGE))
            }
            Ok(_) if self.check_config => {
                println!("{name}: configuration is valid");
                Err(ExitCode::SUCCESS)
            }
            Ok(config) => Ok(config),
        }
    }
}

//! The process around a service: what every jobpipe binary's `main` does besides loading its
//! configuration. Keeps `main` thin and the binaries alike.

use crate::{
    shutdown,
    telemetry::{self, LogConfig, TelemetryConfig, TelemetryError},
};
use std::{future::Future, os::unix::process::CommandExt};
use tokio_util::sync::CancellationToken;

/// Exit status for an unusable configuration (EX_USAGE).
pub const EX_USAGE: u8 = 64;
/// Exit status when the broker refuses the configuration: objects that disagree with it, or a
/// missing permission (EX_CONFIG).
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

/// Gives every thread a stack for the deepest frame of `frame_max` bytes (see
/// [`ensure_frame_parser_stack`]), then builds the Tokio runtime, installs logging and tracing for
/// `name`, arms the shutdown signal, runs `service` until it returns, and flushes buffered spans.
/// Returns what `service` returned.
pub fn serve<F, Fut, T>(
    name: &'static str,
    log: &LogConfig,
    telemetry: &TelemetryConfig,
    frame_max: u32,
    service: F,
) -> Result<T, StartError>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = T>,
{
    ensure_frame_parser_stack(frame_max)?;
    // Tokio's threads take the same stack: a delivery's nested headers are cloned and dropped
    // (recursively) on them.
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

/// Makes sure the threads lapin spawns can parse any frame of up to `frame_max` bytes. lapin reads
/// the connection on a thread of its own with std's default stack (2 MiB), and the frame parser
/// recurses once per level of nested header tables: a header frame the broker accepts can nest
/// thousands of levels (five bytes each) and overflow that stack, which aborts the process. std
/// sizes such threads from `RUST_MIN_STACK`, read once, at the first spawn; so while no thread
/// exists yet, a process whose `RUST_MIN_STACK` is too small executes itself again with it set.
/// Only address space is reserved: a stack's pages cost memory when a deep frame touches them.
/// Embedders of the consumer call this first thing in `main`, or set `RUST_MIN_STACK` (see
/// [`frame_parser_stack`]).
pub fn ensure_frame_parser_stack(frame_max: u32) -> std::io::Result<()> {
    const VARIABLE: &str = "RUST_MIN_STACK";
    let needed = frame_parser_stack(frame_max);
    let set = std::env::var(VARIABLE)
        .ok()
        .and_then(|value| value.parse::<usize>().ok());
    if set.is_some_and(|set| set >= needed) {
        return Ok(());
    }
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(std::env::current_exe()?);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    // `exec` returns only when it failed.
    Err(command.args(args).env(VARIABLE, needed.to_string()).exec())
}

/// The stack the frame parser needs for a frame of `frame_max` bytes, nested as deep as its
/// bytes allow. Measured with the consumer reading a 128 KiB header frame of nested arrays (5
/// bytes a level, the densest nesting) and of nested tables: 22 MB in a release build, 300 MB in
/// a debug one; here about twice and 1.3 times that, per byte of frame, plus the base every
/// thread needs.
pub fn frame_parser_stack(frame_max: u32) -> usize {
    const PER_FRAME_BYTE: usize = if cfg!(debug_assertions) { 3_000 } else { 320 };
    const BASE: usize = 2 << 20;
    BASE + usize::try_from(frame_max).unwrap_or(usize::MAX / PER_FRAME_BYTE) * PER_FRAME_BYTE
}

/// The exit status for what [`serve`] returned, with any error printed as one line: 0 on a clean
/// stop, what `code` says for the service's error ([`EX_CONFIG`] when the broker refuses the
/// configuration: objects that disagree with it, a missing permission; [`EX_USAGE`] for a
/// configuration the service itself cannot use; else 1), [`EX_USAGE`] when the service could
/// not start.
pub fn exit_status<E: std::fmt::Display>(
    name: &str,
    served: Result<Result<(), E>, StartError>,
    code: impl Fn(&E) -> u8,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    match served {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("{name}: {error}");
            ExitCode::from(code(&error))
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

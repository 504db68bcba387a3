//! `jobpipe-producer`: reads the configuration, starts logging, and runs the producer until
//! SIGTERM or Ctrl-C.

use clap::Parser;
use jobpipe_producer::{ProducerError, config::Config};
use jobpipe_runtime::{settings::Env, shutdown, telemetry};
use std::{path::PathBuf, process::ExitCode};

/// Exit status for an unusable configuration (EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit status when the broker's objects disagree with the configuration (EX_CONFIG).
const EX_CONFIG: u8 = 78;

/// Accepts jobs over gRPC and publishes them to RabbitMQ with publisher confirms.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// A TOML configuration file; `JOBPIPE__SECTION__KEY` environment variables override it.
    #[arg(long, env = "JOBPIPE_CONFIG")]
    config: Option<PathBuf>,
    /// Check the configuration, print the result and exit.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref(), Env::Process) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("jobpipe-producer: invalid configuration: {error}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if args.check_config {
        println!("jobpipe-producer: configuration is valid");
        return ExitCode::SUCCESS;
    }
    if let Err(error) = telemetry::init(&config.log) {
        eprintln!("jobpipe-producer: {error}");
        return ExitCode::from(EX_USAGE);
    }
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("jobpipe-producer: {error:#}");
            let topology = matches!(
                error.downcast_ref::<ProducerError>(),
                Some(ProducerError::Topology(_))
            );
            ExitCode::from(if topology { EX_CONFIG } else { 1 })
        }
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = shutdown::on_signals()?;
        jobpipe_producer::run(config, shutdown).await?;
        Ok(())
    })
}

//! `jobpipe-producer`: reads the configuration and runs the producer until SIGTERM or Ctrl-C.

use clap::Parser;
use jobpipe_producer::{ProducerError, config::Config};
use jobpipe_runtime::{
    process::{self, EX_CONFIG, EX_USAGE},
    settings::Env,
};
use std::{path::PathBuf, process::ExitCode};

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
    let (log, telemetry) = (config.log.clone(), config.telemetry.clone());
    let served = process::serve("jobpipe-producer", &log, &telemetry, |shutdown| {
        jobpipe_producer::run(config, shutdown)
    });
    match served {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("jobpipe-producer: {error}");
            let topology = matches!(error, ProducerError::Topology(_));
            ExitCode::from(if topology { EX_CONFIG } else { 1 })
        }
        Err(error) => {
            eprintln!("jobpipe-producer: cannot start: {error}");
            ExitCode::from(EX_USAGE)
        }
    }
}

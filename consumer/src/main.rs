//! `jobpipe-consumer`: reads the configuration, registers the configured built-in handlers, and
//! consumes until SIGTERM or Ctrl-C.

use clap::Parser;
use jobpipe_consumer::{ConsumerError, Handlers, builtin::Builtin, config::Config};
use jobpipe_proto::names::JobType;
use jobpipe_runtime::{
    process::{self, EX_CONFIG, EX_USAGE},
    settings::Env,
};
use std::{path::PathBuf, process::ExitCode};

/// Processes jobs from RabbitMQ: retries with backoff, dead-letters with a failure record.
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
            eprintln!("jobpipe-consumer: invalid configuration: {error}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if args.check_config {
        println!("jobpipe-consumer: configuration is valid");
        return ExitCode::SUCCESS;
    }
    let handlers = builtin_handlers(&config);
    let (log, telemetry) = (config.log.clone(), config.telemetry.clone());
    let served = process::serve("jobpipe-consumer", &log, &telemetry, |shutdown| {
        jobpipe_consumer::run(config, handlers, shutdown)
    });
    match served {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("jobpipe-consumer: {error}");
            let topology = matches!(error, ConsumerError::Topology(_));
            ExitCode::from(if topology { EX_CONFIG } else { 1 })
        }
        Err(error) => {
            eprintln!("jobpipe-consumer: cannot start: {error}");
            ExitCode::from(EX_USAGE)
        }
    }
}

/// The built-in handlers named in the configuration (names checked when it loaded).
fn builtin_handlers(config: &Config) -> Handlers {
    let mut handlers = Handlers::new();
    for builtin in config
        .handlers
        .builtin
        .iter()
        .filter_map(|name| Builtin::from_name(name))
    {
        if let Ok(job_type) = JobType::try_new(builtin.name()) {
            handlers.register(job_type, builtin);
        }
    }
    handlers
}

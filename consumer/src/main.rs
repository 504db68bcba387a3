//! `jobpipe-consumer`: reads the configuration, registers the configured built-in handlers, and
//! consumes until SIGTERM or Ctrl-C.

use clap::Parser;
use jobpipe_consumer::{ConsumerError, Handlers, builtin::Builtin, config::Config};
use jobpipe_proto::names::JobType;
use jobpipe_runtime::{
    process::{self, ConfigArgs},
    settings::Env,
};
use std::process::ExitCode;

/// Processes jobs from RabbitMQ: retries with backoff, dead-letters with a failure record.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match args
        .config
        .load("jobpipe-consumer", |file| Config::load(file, Env::Process))
    {
        Ok(config) => config,
        Err(done) => return done,
    };
    let handlers = builtin_handlers(&config);
    let (log, telemetry, frame_max) = (
        config.log.clone(),
        config.telemetry.clone(),
        config.amqp.frame_max,
    );
    let served = process::serve(
        "jobpipe-consumer",
        &log,
        &telemetry,
        frame_max,
        |shutdown| jobpipe_consumer::run(config, handlers, shutdown),
    );
    process::exit_status("jobpipe-consumer", served, |error| match error {
        ConsumerError::Config(_) => process::EX_USAGE,
        ConsumerError::Broker(_) | ConsumerError::AccessRefused(_) => process::EX_CONFIG,
        _ => 1,
    })
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

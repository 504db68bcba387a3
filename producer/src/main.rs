//! `jobpipe-producer`: reads the configuration and runs the producer until SIGTERM or Ctrl-C.

use clap::Parser;
use jobpipe_producer::{ProducerError, config::Config};
use jobpipe_runtime::{
    amqp::{
        LinkError,
        link::{connection_name, declare_once},
    },
    process::{self, ConfigArgs, StartError},
    settings::Env,
};
use std::process::ExitCode;

/// Accepts jobs over gRPC and publishes them to RabbitMQ with publisher confirms.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Declare the topology (exchanges, queues of `topology.queues`, the delay ladder) once and
    /// exit: for a deploy job, when the services run with `topology.declare = false`.
    #[arg(long)]
    declare_topology: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match args
        .config
        .load("jobpipe-producer", |file| Config::load(file, Env::Process))
    {
        Ok(config) => config,
        Err(done) => return done,
    };
    if args.declare_topology {
        return declare_topology(&config);
    }
    let (log, telemetry, frame_max) = (
        config.log.clone(),
        config.telemetry.clone(),
        config.amqp.frame_max,
    );
    let served = process::serve(
        "jobpipe-producer",
        &log,
        &telemetry,
        frame_max,
        |shutdown| jobpipe_producer::run(config, shutdown),
    );
    process::exit_status("jobpipe-producer", served, |error| match error {
        ProducerError::Broker(_) => process::EX_CONFIG,
        _ => 1,
    })
}

/// Declares the topology once and reports the outcome, with the services' exit statuses.
fn declare_topology(config: &Config) -> ExitCode {
    let plan = config.topology.plan();
    let declared = tokio::runtime::Runtime::new()
        .map_err(StartError::from)
        .map(|runtime| {
            runtime.block_on(declare_once(
                &config.amqp,
                &plan,
                connection_name("jobpipe-topology"),
            ))
        });
    if let Ok(Ok(())) = declared {
        println!(
            "jobpipe-producer: topology '{}' declared ({} queues, {} exchanges)",
            config.topology.prefix,
            plan.queues.len(),
            plan.exchanges.len()
        );
    }
    process::exit_status("jobpipe-producer", declared, |error| match error {
        LinkError::Topology(_) => process::EX_CONFIG,
        _ => 1,
    })
}

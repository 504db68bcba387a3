//! `jobpipe-example-embedded`: the jobpipe consumer embedded in a program of your own. It runs
//! `thumbnail.resize` (a handler of its own, in `thumbnail.rs`) and the built-in `noop`, and
//! otherwise behaves exactly like `jobpipe-consumer`: same configuration, same retries and dead
//! letters, same `/metrics`, same shutdown. Copy this crate to start your own.

mod thumbnail;

use clap::Parser;
use jobpipe_consumer::{ConsumerError, Handlers, JobType, builtin::Builtin, config::Config};
use jobpipe_runtime::{
    process::{self, ConfigArgs},
    settings::Env,
};
use std::process::ExitCode;

/// The name in logs, metrics' build info and error lines: your program's.
const NAME: &str = "jobpipe-example-embedded";

/// Resizes images into thumbnails: a jobpipe consumer with a handler of its own.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    // `--config FILE` (or `JOBPIPE_CONFIG`, which the Helm chart sets) and `--check-config`.
    #[command(flatten)]
    config: ConfigArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The consumer's own configuration: defaults, then the file, then `JOBPIPE__SECTION__KEY`
    // variables. A bad key exits 64 with one line naming it; `--check-config` exits here.
    let config = match args
        .config
        .load(NAME, |file| Config::load(file, Env::Process))
    {
        Ok(config) => config,
        Err(done) => return done,
    };
    let handlers = match handlers() {
        Ok(handlers) => handlers,
        Err(error) => {
            eprintln!("{NAME}: {error}");
            return ExitCode::from(process::EX_USAGE);
        }
    };
    // `serve` sizes the stack for the AMQP frame parser, starts the Tokio runtime and logging,
    // arms SIGTERM / Ctrl-C (the first drains, a second forces), and runs the consumer.
    let (log, telemetry, frame_max) = (
        config.log.clone(),
        config.telemetry.clone(),
        config.amqp.frame_max,
    );
    let served = process::serve(NAME, &log, &telemetry, frame_max, |shutdown| {
        jobpipe_consumer::run(config, handlers, shutdown)
    });
    // The same exit statuses as jobpipe-consumer, so the chart's probes and alerts read alike.
    process::exit_status(NAME, served, |error| match error {
        ConsumerError::Config(_) => process::EX_USAGE,
        ConsumerError::Broker(_) | ConsumerError::AccessRefused(_) => process::EX_CONFIG,
        _ => 1,
    })
}

/// The job types this program runs. A job of any other type is dead-lettered as `no_handler`.
/// The configuration's `handlers.builtin` is what `jobpipe-consumer` registers: an embedding
/// program chooses its handlers here, in code.
fn handlers() -> Result<Handlers, Box<dyn std::error::Error>> {
    let mut handlers = Handlers::new();
    handlers
        .register(JobType::try_new("thumbnail.resize")?, thumbnail::Resizer)
        .register(JobType::try_new(Builtin::Noop.name())?, Builtin::Noop);
    Ok(handlers)
}

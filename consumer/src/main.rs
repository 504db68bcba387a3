//! `jobpipe-consumer`: reads the configuration, registers the configured built-in handlers,
//! starts logging, and consumes until SIGTERM or Ctrl-C.

use clap::Parser;
use jobpipe_consumer::{ConsumerError, Handlers, builtin::Builtin, config::Config};
use jobpipe_proto::names::JobType;
use jobpipe_runtime::{settings::Env, shutdown, telemetry};
use std::{path::PathBuf, process::ExitCode};

/// Exit status for an unusable configuration (EX_USAGE).
const EX_USAGE: u8 = 64;
/// Exit status when the broker's objects disagree with the configuration (EX_CONFIG).
const EX_CONFIG: u8 = 78;

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
    if let Err(error) = telemetry::init(&config.log) {
        eprintln!("jobpipe-consumer: {error}");
        return ExitCode::from(EX_USAGE);
    }
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("jobpipe-consumer: {error:#}");
            let topology = matches!(
                error.downcast_ref::<ConsumerError>(),
                Some(ConsumerError::Topology(_))
            );
            ExitCode::from(if topology { EX_CONFIG } else { 1 })
        }
    }
}

/// The built-in handlers named in the configuration (validated when it loaded).
fn builtin_handlers(config: &Config) -> anyhow::Result<Handlers> {
    let mut handlers = Handlers::new();
    for name in &config.handlers.builtin {
        let builtin = Builtin::from_name(name)
            .ok_or_else(|| anyhow::anyhow!("unknown built-in handler {name:?}"))?;
        handlers.register(JobType::try_new(builtin.name())?, builtin);
    }
    Ok(handlers)
}

fn serve(config: Config) -> anyhow::Result<()> {
    let handlers = builtin_handlers(&config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = shutdown::on_signals()?;
        jobpipe_consumer::run(config, handlers, shutdown).await?;
        Ok(())
    })
}

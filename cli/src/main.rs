//! `jobpipe`: submit jobs to a jobpipe producer and check on it, from a terminal.

/// `println!` that returns the error instead of panicking when standard output is gone (a
/// closed pipe: `jobpipe submit --count 1000 | head`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

mod demo;
mod health;
mod permissions;
mod submit;
mod target;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// A command-line client for a jobpipe producer.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    target: target::Target,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit one job, or `--count` copies of it in batches; prints each job id.
    Submit(Box<submit::SubmitArgs>),
    /// Ask the producer whether it is serving (it is while its broker link is up).
    Health,
    /// Submit a small mixed workload and follow it live through the consumers' metrics.
    Demo(demo::DemoArgs),
    /// Print the `rabbitmqctl set_permissions` commands giving each broker user of an
    /// installation exactly what it needs.
    BrokerPermissions(permissions::PermissionsArgs),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Submit(args) => submit::run(&cli.target, *args).await,
        Command::Health => health::run(&cli.target).await,
        Command::Demo(args) => demo::run(&cli.target, args).await,
        Command::BrokerPermissions(args) => permissions::run(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("jobpipe: {error:#}");
            ExitCode::FAILURE
        }
    }
}

//! `jobpipe`: submit jobs to a jobpipe producer and check on it, from a terminal.

mod demo;
mod health;
mod submit;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// A command-line client for a jobpipe producer.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The producer's gRPC address.
    #[arg(
        long,
        env = "JOBPIPE_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    addr: String,
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
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Submit(args) => submit::run(&cli.addr, *args).await,
        Command::Health => health::run(&cli.addr).await,
        Command::Demo(args) => demo::run(&cli.addr, args).await,
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("jobpipe: {error:#}");
            ExitCode::FAILURE
        }
    }
}

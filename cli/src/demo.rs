//! `jobpipe demo`: submits a small mixed workload and shows, live, what the consumers make of it:
//! successes, retries with growing backoff, dead letters, and a scheduled job arriving late.
//! Progress comes from the consumers' `/metrics`, so the CLI needs nothing but gRPC and HTTP.

use anyhow::Context;
use clap::Args;
use jobpipe_proto::v1::{
    JobSpec, SubmitJobRequest, SubmitJobsRequest, job_service_client::JobServiceClient,
};
use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    process::ExitCode,
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the consumers' metrics are.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Admin endpoints of the consumers (`host:port`), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:9091,127.0.0.1:9092"
    )]
    consumers: Vec<String>,
    /// Give up waiting after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "90s")]
    timeout: Duration,
}

/// Counts by outcome, summed over the consumers.
type Tally = HashMap<String, f64>;

/// The workload: (label, job type, payload, copies, max attempts, delay in seconds).
const WORKLOAD: &[(&str, &str, &str, usize, u32, i64)] = &[
    ("succeed at once", "noop", "", 20, 0, 0),
    ("fail twice, then succeed", "fail", "2", 3, 0, 0),
    ("fail permanently", "fail", "permanent", 1, 0, 0),
    ("fail every time (3 attempts)", "fail", "always", 1, 3, 0),
    ("scheduled 10 s ahead", "noop", "", 1, 0, 10),
];

/// Submits the workload and follows it until every job has finished.
pub(crate) async fn run(addr: &str, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let mut client = JobServiceClient::connect(addr.to_owned())
        .await
        .with_context(|| format!("cannot reach the producer at {addr}"))?;
    let before = tally(&args.consumers).await?;
    println!("Submitting:");
    for &(label, job_type, payload, copies, max_attempts, delay) in WORKLOAD {
        let spec = JobSpec {
            r#type: job_type.into(),
            payload: payload.as_bytes().to_vec().into(),
            max_attempts,
            delay: (delay > 0).then_some(prost_types::Duration {
                seconds: delay,
                nanos: 0,
            }),
            ..JobSpec::default()
        };
        if copies == 1 {
            client
                .submit_job(SubmitJobRequest { job: Some(spec) })
                .await?;
        } else {
            client
                .submit_jobs(SubmitJobsRequest {
                    jobs: vec![spec; copies],
                })
                .await?;
        }
        println!("  {copies:>2} × {job_type:<5} {payload:<10} {label}");
    }
    let succeed: usize = WORKLOAD
        .iter()
        .filter(|w| w.2 != "permanent" && w.2 != "always")
        .map(|w| w.3)
        .sum();
    let dead = 2.0;
    println!(
        "\nAll {} jobs confirmed by the broker. Following the consumers:",
        succeed + 2
    );
    let started = Instant::now();
    let live = std::io::stdout().is_terminal();
    let mut shown = None;
    loop {
        let now = delta(&tally(&args.consumers).await?, &before);
        let count = |outcome: &str| now.get(outcome).copied().unwrap_or(0.0);
        let counts = [count("succeeded"), count("retried"), count("dead_lettered")];
        let line = format!(
            "  [{:>4.1}s] succeeded {:>2}/{succeed}  retried {:>2}  dead-lettered {}/{dead}",
            started.elapsed().as_secs_f64(),
            counts[0],
            counts[1],
            counts[2],
        );
        // A terminal gets one line redrawn in place; a pipe gets a line per change.
        if live {
            print!("\r{line}");
            std::io::stdout().flush()?;
        } else if shown != Some(counts) {
            println!("{line}");
        }
        shown = Some(counts);
        if counts[0] >= succeed as f64 && counts[2] >= dead {
            break;
        }
        if started.elapsed() > args.timeout {
            println!(
                "\nGave up after {:?}: are the consumers running?",
                args.timeout
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "\n\nDone. The retried jobs waited 1 s, then 2 s (exponential backoff through the delay ladder);"
    );
    println!("the two failed jobs are in the dead-letter queue with their whole failure history:");
    println!("  rabbitmqctl list_queues name messages | grep dead");
    Ok(ExitCode::SUCCESS)
}

/// Sums `jobpipe_consumer_jobs_total` by outcome over every consumer.
async fn tally(consumers: &[String]) -> anyhow::Result<Tally> {
    let mut tally = Tally::new();
    for consumer in consumers {
        let text = http_get(consumer, "/metrics")
            .await
            .with_context(|| format!("cannot read the metrics of the consumer at {consumer}"))?;
        for line in text
            .lines()
            .filter(|l| l.starts_with("jobpipe_consumer_jobs_total{"))
        {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let outcome = series
                .split_once("outcome=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(outcome, _)| outcome.to_owned());
            if let (Some(outcome), Ok(value)) = (outcome, value.parse::<f64>()) {
                *tally.entry(outcome).or_default() += value;
            }
        }
    }
    Ok(tally)
}

fn delta(now: &Tally, before: &Tally) -> Tally {
    now.iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

async fn http_get(host: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

//! `jobpipe demo`: submits a small mixed workload and shows, live, what the consumers make of it:
//! successes, retries with growing backoff, dead letters, and a scheduled job arriving late.
//! Progress comes from the consumers' `/metrics`, so the CLI needs nothing but gRPC and HTTP.

use crate::target::Target;
use anyhow::Context;
use clap::Args;
use jobpipe_proto::v1::{JobSpec, SubmitJobsRequest, job_service_client::JobServiceClient};
use std::{
    collections::HashMap,
    io::{IsTerminal, Write},
    process::ExitCode,
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

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
    /// Also submit `greet` jobs, for consumers that route them to a worker of their own (the
    /// example Python HTTP worker in `make run`).
    #[arg(long)]
    with_worker: bool,
}

/// How long one metrics read may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// Counts by outcome, summed over the consumers.
type Tally = HashMap<String, f64>;

/// One kind of job in the demo.
struct Jobs {
    label: &'static str,
    job_type: &'static str,
    payload: &'static str,
    copies: usize,
    max_attempts: u32,
    delay_secs: i64,
    /// Whether these jobs end dead-lettered rather than succeeded.
    dead: bool,
}

const WORKLOAD: &[Jobs] = &[
    Jobs {
        label: "succeed at once",
        job_type: "noop",
        payload: "",
        copies: 20,
        max_attempts: 0,
        delay_secs: 0,
        dead: false,
    },
    Jobs {
        label: "fail twice, then succeed",
        job_type: "fail",
        payload: "2",
        copies: 3,
        max_attempts: 0,
        delay_secs: 0,
        dead: false,
    },
    Jobs {
        label: "fail permanently",
        job_type: "fail",
        payload: "permanent",
        copies: 1,
        max_attempts: 0,
        delay_secs: 0,
        dead: true,
    },
    Jobs {
        label: "fail every time (3 attempts)",
        job_type: "fail",
        payload: "always",
        copies: 1,
        max_attempts: 3,
        delay_secs: 0,
        dead: true,
    },
    Jobs {
        label: "scheduled 10 s ahead",
        job_type: "noop",
        payload: "",
        copies: 1,
        max_attempts: 0,
        delay_secs: 10,
        dead: false,
    },
];

/// Jobs for the example worker (`--with-worker`), which reads its payload as a name or a plan.
const WORKER_LOAD: &[Jobs] = &[
    Jobs {
        label: "greeted by the Python worker",
        job_type: "greet",
        payload: "Ada",
        copies: 5,
        max_attempts: 0,
        delay_secs: 0,
        dead: false,
    },
    Jobs {
        label: "the worker answers 503 once, then 204",
        job_type: "greet",
        payload: "fail:1",
        copies: 1,
        max_attempts: 0,
        delay_secs: 0,
        dead: false,
    },
];

/// Submits the workload and follows it until every job has finished.
pub(crate) async fn run(target: &Target, args: DemoArgs) -> anyhow::Result<ExitCode> {
    let mut client = JobServiceClient::new(target.connect().await?);
    let before = tally(&args.consumers).await?;
    let workload: Vec<&Jobs> = WORKLOAD
        .iter()
        .chain(if args.with_worker { WORKER_LOAD } else { &[] })
        .collect();
    out!("Submitting:");
    for &jobs in &workload {
        let spec = JobSpec {
            r#type: jobs.job_type.into(),
            payload: jobs.payload.as_bytes().to_vec().into(),
            max_attempts: jobs.max_attempts,
            delay: (jobs.delay_secs > 0).then_some(prost_types::Duration {
                seconds: jobs.delay_secs,
                nanos: 0,
            }),
            ..JobSpec::default()
        };
        let results = client
            .submit_jobs(SubmitJobsRequest {
                jobs: vec![spec; jobs.copies],
            })
            .await?
            .into_inner()
            .results;
        // The demo's counts assume every job was accepted: stop at the first refusal.
        if let Some(refused) = results.iter().find(|result| result.code != Code::Ok as i32) {
            anyhow::bail!(
                "the producer refused a job: {:?}: {}",
                Code::from_i32(refused.code),
                refused.message
            );
        }
        let Jobs {
            label,
            job_type,
            payload,
            copies,
            ..
        } = jobs;
        out!("  {copies:>2} × {job_type:<5} {payload:<10} {label}");
    }
    let expected = |dead: bool| -> usize {
        workload
            .iter()
            .filter(|jobs| jobs.dead == dead)
            .map(|jobs| jobs.copies)
            .sum()
    };
    let (succeed, dead) = (expected(false), expected(true));
    out!(
        "\nAll {} jobs confirmed by the broker. Following the consumers:",
        succeed + dead
    );
    let started = Instant::now();
    let live = std::io::stdout().is_terminal();
    let mut shown = None;
    loop {
        let now = delta(&tally(&args.consumers).await?, &before);
        let count = |outcome: &str| now.get(outcome).copied().unwrap_or(0.0);
        let counts = [
            count("succeeded"),
            count("retried"),
            count("dead_lettered"),
            count(WORKER_CALLS),
        ];
        let mut line = format!(
            "  [{:>4.1}s] succeeded {:>2}/{succeed}  retried {:>2}  dead-lettered {}/{dead}",
            started.elapsed().as_secs_f64(),
            counts[0],
            counts[1],
            counts[2],
        );
        if args.with_worker {
            line.push_str(&format!("  worker calls {:>2}", counts[3]));
        }
        // A terminal gets one line redrawn in place; a pipe gets a line per change.
        if live {
            write!(std::io::stdout().lock(), "\r{line}")?;
            std::io::stdout().flush()?;
        } else if shown != Some(counts) {
            out!("{line}");
        }
        shown = Some(counts);
        if counts[0] >= succeed as f64 && counts[2] >= dead as f64 {
            break;
        }
        if started.elapsed() > args.timeout {
            out!(
                "\nGave up after {:?}: are the consumers running?",
                args.timeout
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    out!(
        "\n\nDone. The retried jobs waited 1 s, then 2 s (exponential backoff through the delay \
         ladder; `make run` turns the jitter off to show it);"
    );
    out!("the {dead} failed jobs are in the dead-letter queue with their whole failure history:");
    out!("  jobpipe dlq list                       # what failed, and why");
    out!("  jobpipe dlq show <JOB ID>              # one of them, every attempt");
    out!("  jobpipe dlq replay --job-id <JOB ID>   # run it again as a fresh first attempt");
    Ok(ExitCode::SUCCESS)
}

/// The tally's key for calls to remote workers, whatever their outcome.
const WORKER_CALLS: &str = "worker calls";

/// Sums `jobpipe_consumer_jobs_total` by outcome over every consumer, and the calls to remote
/// workers (`jobpipe_worker_requests_total`) under [`WORKER_CALLS`].
async fn tally(consumers: &[String]) -> anyhow::Result<Tally> {
    let mut tally = Tally::new();
    for consumer in consumers {
        let text = http_get(consumer, "/metrics")
            .await
            .with_context(|| format!("cannot read the metrics of the consumer at {consumer}"))?;
        for line in text
            .lines()
            .filter(|l| l.starts_with("jobpipe_worker_requests_total{"))
        {
            if let Some(Ok(value)) = line.rsplit_once(' ').map(|(_, v)| v.parse::<f64>()) {
                *tally.entry(WORKER_CALLS.to_owned()).or_default() += value;
            }
        }
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

/// A minimal HTTP/1.0 GET of the body, bounded: a consumer that accepts but never answers must
/// not hold the demo past its timeout.
async fn http_get(host: &str, path: &str) -> anyhow::Result<String> {
    let response = tokio::time::timeout(HTTP_TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(host).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    })
    .await
    .context("no answer in time")??;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

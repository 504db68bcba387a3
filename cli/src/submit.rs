//! `jobpipe submit`: one job, or many copies of it sent as pipelined batches.

use crate::target::{Grpc, Target};
use anyhow::{Context, bail};
use clap::Args;
use jobpipe_proto::v1::{
    JobSpec, SubmitJobRequest, SubmitJobsRequest, job_service_client::JobServiceClient,
};
use std::{collections::HashMap, path::PathBuf, process::ExitCode, time::Instant};
use tonic::Code;

/// Jobs per SubmitJobs call when `--count` asks for many (the producer's default limit).
const BATCH: usize = 1000;

/// What to submit.
#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// The job type (the handler name), e.g. `noop`, `sleep`, `fail`.
    job_type: String,
    /// The payload, as text.
    #[arg(long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// The payload, read from a file.
    #[arg(long)]
    payload_file: Option<PathBuf>,
    /// The target queue (default: `default`).
    #[arg(long)]
    queue: Option<String>,
    /// The job id (default: a generated UUIDv7). Ignored with `--count` above 1.
    #[arg(long)]
    job_id: Option<String>,
    /// The payload's MIME type.
    #[arg(long)]
    content_type: Option<String>,
    /// Attempts before the job is dead-lettered (default: the producer's).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Run no sooner than this from now, e.g. `10s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<std::time::Duration>,
    /// The per-attempt deadline, e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<std::time::Duration>,
    /// Metadata, `key=value`; repeatable.
    #[arg(long = "meta", value_parser = parse_pair)]
    metadata: Vec<(String, String)>,
    /// Submit this many copies, in batches of 1000.
    #[arg(long, default_value_t = 1)]
    count: usize,
}

/// Submits and prints the job ids; exits non-zero if any job was refused.
pub(crate) async fn run(target: &Target, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let mut client = JobServiceClient::new(target.connect().await?);
    let spec = spec(&args)?;
    if args.count <= 1 {
        return submit_one(&mut client, spec).await;
    }
    submit_many(&mut client, spec, args.count).await
}

async fn submit_one(
    client: &mut JobServiceClient<Grpc>,
    spec: JobSpec,
) -> anyhow::Result<ExitCode> {
    match client
        .submit_job(SubmitJobRequest { job: Some(spec) })
        .await
    {
        Ok(response) => {
            out!("{}", response.into_inner().job_id);
            Ok(ExitCode::SUCCESS)
        }
        Err(status) => {
            eprintln!("refused: {:?}: {}", status.code(), status.message());
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn submit_many(
    client: &mut JobServiceClient<Grpc>,
    spec: JobSpec,
    count: usize,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let (mut confirmed, mut refused) = (0usize, 0usize);
    let mut remaining = count;
    while remaining > 0 {
        let size = remaining.min(BATCH);
        remaining -= size;
        let jobs = vec![
            JobSpec {
                job_id: String::new(),
                ..spec.clone()
            };
            size
        ];
        let results = client
            .submit_jobs(SubmitJobsRequest { jobs })
            .await
            .map_err(|status| anyhow::anyhow!("{:?}: {}", status.code(), status.message()))?
            .into_inner()
            .results;
        for result in results {
            if result.code == Code::Ok as i32 {
                confirmed += 1;
                out!("{}", result.job_id);
            } else {
                refused += 1;
                eprintln!(
                    "refused: {:?}: {}",
                    Code::from_i32(result.code),
                    result.message
                );
            }
        }
    }
    eprintln!(
        "{confirmed} confirmed, {refused} refused in {:.0?}",
        started.elapsed()
    );
    Ok(if refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn spec(args: &SubmitArgs) -> anyhow::Result<JobSpec> {
    let payload = match (&args.payload, &args.payload_file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) => {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?
        }
        (None, None) => Vec::new(),
    };
    let duration =
        |d: Option<std::time::Duration>| -> anyhow::Result<Option<prost_types::Duration>> {
            d.map(prost_types::Duration::try_from)
                .transpose()
                .context("duration out of range")
        };
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    Ok(JobSpec {
        job_id: args.job_id.clone().unwrap_or_default(),
        r#type: args.job_type.clone(),
        queue: args.queue.clone().unwrap_or_default(),
        payload: payload.into(),
        content_type: args.content_type.clone().unwrap_or_default(),
        max_attempts: args.max_attempts.unwrap_or(0),
        delay: duration(args.delay)?,
        timeout: duration(args.timeout)?,
        metadata: args.metadata.iter().cloned().collect::<HashMap<_, _>>(),
    })
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}

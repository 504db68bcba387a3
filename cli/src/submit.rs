//! `jobpipe submit`: one job, or many copies of it sent as pipelined batches. The command line
//! is checked, and the payload read, before anything connects.

use crate::{
    Error, Failure, describe,
    target::{Grpc, Target},
};
use clap::Args;
use jobpipe_proto::v1::{
    JobSpec, SubmitJobRequest, SubmitJobsRequest, job_service_client::JobServiceClient,
};
use std::{
    collections::HashMap,
    io::Read,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use tonic::{Code, Status};

/// Jobs per SubmitJobs call when `--count` asks for many (the producer's default limit).
const BATCH: usize = 1000;

/// The most payload read from a file or standard input: far above any producer's limit (1 MiB
/// by default), and bounded, so `--payload-file /dev/zero` fails instead of filling memory.
const MAX_PAYLOAD: u64 = 64 * 1024 * 1024;

/// What to submit.
#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    /// The job type (the handler name), e.g. `noop`, `sleep`, `fail`.
    job_type: String,
    /// The payload, as text.
    #[arg(long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// The payload, read from a file; `-` reads standard input to its end.
    #[arg(long)]
    payload_file: Option<PathBuf>,
    /// The target queue (default: `default`).
    #[arg(long)]
    queue: Option<String>,
    /// The job id, the key to retry with (default: a generated UUIDv7). One job only: not with
    /// `--count` above 1.
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
    delay: Option<Duration>,
    /// The job's deadline per attempt at the consumer, e.g. `30s` (this call's own is
    /// `jobpipe --timeout`).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Metadata, `key=value`; repeatable.
    #[arg(long = "meta", value_parser = parse_pair)]
    metadata: Vec<(String, String)>,
    /// Submit this many copies, in batches of 1000.
    #[arg(long, default_value_t = 1, value_parser = parse_count)]
    count: usize,
}

/// Submits and prints the job ids. Fails if any job was refused: with the worst refusal's kind
/// when there are several (refused for good before retryable).
pub(crate) async fn run(target: &Target, args: SubmitArgs) -> Result<(), Error> {
    let spec = spec(&args)?;
    let mut client = JobServiceClient::new(target.connect().await?);
    if args.count == 1 {
        let request = SubmitJobRequest { job: Some(spec) };
        let job = target.call("SubmitJob", client.submit_job(request)).await?;
        out!("{}", job.job_id);
        return Ok(());
    }
    submit_many(target, &mut client, spec, args.count).await
}

async fn submit_many(
    target: &Target,
    client: &mut JobServiceClient<Grpc>,
    spec: JobSpec,
    count: usize,
) -> Result<(), Error> {
    let started = Instant::now();
    let (mut confirmed, mut refused) = (0usize, 0usize);
    let mut worst: Option<Failure> = None;
    let mut remaining = count;
    while remaining > 0 {
        let size = remaining.min(BATCH);
        remaining -= size;
        let jobs = vec![spec.clone(); size];
        let results = target
            .call("SubmitJobs", client.submit_jobs(SubmitJobsRequest { jobs }))
            .await
            .map_err(|error| error.note(&format!("{confirmed} of {count} jobs confirmed before")))?
            .results;
        for result in results {
            let code = Code::from_i32(result.code);
            match Failure::of(code) {
                None => {
                    confirmed += 1;
                    out!("{}", result.job_id);
                }
                Some(failure) => {
                    refused += 1;
                    worst = worst.max(Some(failure));
                    let status = describe(&Status::new(code, result.message));
                    let line = match result.job_id.as_str() {
                        "" => format!("refused: {status}"),
                        id => format!("refused: job {id}: {status}"),
                    };
                    // One line, whatever the server put into it.
                    eprintln!("{}", line.replace(char::is_control, " "));
                }
            }
        }
    }
    eprintln!(
        "{confirmed} confirmed, {refused} refused in {:.0?}",
        started.elapsed()
    );
    match worst {
        None => Ok(()),
        Some(failure) => Err(Error::new(
            failure,
            format!(
                "SubmitJobs at {}: {refused} of {count} jobs refused",
                target.addr
            ),
        )),
    }
}

/// The job the arguments describe (its id empty for `--count` copies), or a usage error.
fn spec(args: &SubmitArgs) -> Result<JobSpec, Error> {
    if args.count > 1 && args.job_id.is_some() {
        return Err(Error::usage(format!(
            "--job-id names one job: it cannot be used with --count {} (each copy gets an id of \
             its own)",
            args.count
        )));
    }
    let payload = match (&args.payload, &args.payload_file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) => read_payload(path)?,
        (None, None) => Vec::new(),
    };
    let duration =
        |flag: &str, d: Option<Duration>| -> Result<Option<prost_types::Duration>, Error> {
            d.map(prost_types::Duration::try_from)
                .transpose()
                .map_err(|_| Error::usage(format!("{flag}: out of range")))
        };
    Ok(JobSpec {
        job_id: args.job_id.clone().unwrap_or_default(),
        r#type: args.job_type.clone(),
        queue: args.queue.clone().unwrap_or_default(),
        payload: payload.into(),
        content_type: args.content_type.clone().unwrap_or_default(),
        max_attempts: args.max_attempts.unwrap_or(0),
        delay: duration("--delay", args.delay)?,
        timeout: duration("--timeout", args.timeout)?,
        metadata: args.metadata.iter().cloned().collect::<HashMap<_, _>>(),
    })
}

/// The payload from the file at `path`, or from standard input for `-`, up to [`MAX_PAYLOAD`].
fn read_payload(path: &Path) -> Result<Vec<u8>, Error> {
    let stdin = path == Path::new("-");
    let source = if stdin {
        "standard input".to_owned()
    } else {
        path.display().to_string()
    };
    let cannot = |error: std::io::Error| {
        Error::usage(format!("--payload-file: cannot read {source}: {error}"))
    };
    let mut payload = Vec::new();
    let reader: Box<dyn Read> = if stdin {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(path).map_err(cannot)?)
    };
    reader
        .take(MAX_PAYLOAD + 1)
        .read_to_end(&mut payload)
        .map_err(cannot)?;
    if payload.len() as u64 > MAX_PAYLOAD {
        return Err(Error::usage(format!(
            "--payload-file: {source} holds more than {} MiB",
            MAX_PAYLOAD / 1024 / 1024
        )));
    }
    Ok(payload)
}

/// A count of at least 1.
fn parse_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(count) => Ok(count),
        Err(error) => Err(error.to_string()),
    }
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected key=value, got {text:?}"))
}

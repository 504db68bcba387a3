//! The load generator: submits jobs to the producer over gRPC, in batches, one per call, or at a
//! fixed rate, and remembers when each confirmed job was submitted.

use crate::{Options, Pace};
use jobpipe_proto::v1::{
    JobSpec, SubmitJobRequest, SubmitJobsRequest, job_service_client::JobServiceClient,
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::SystemTime,
};
use tokio::{sync::Semaphore, task::JoinSet};
use tonic::transport::Channel;

/// How the jobs are sent.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    /// `SubmitJobs` batches, several in flight.
    Batched,
    /// `SubmitJob` from many concurrent callers.
    Single,
    /// `SubmitJob` at a fixed rate.
    Paced(Pace),
}

/// Confirmed jobs by id, with the time each was submitted.
pub(crate) type Submitted = HashMap<String, SystemTime>;

/// What the producer answered: the jobs it confirmed, and how many it refused (a paced load does
/// not slow down for refusals, so they are counted, not retried).
#[derive(Debug, Default)]
pub(crate) struct Answered {
    pub(crate) confirmed: Submitted,
    pub(crate) refused: usize,
}

impl Answered {
    /// One answer: the id of a job confirmed, submitted `at`, or `None` for a refusal.
    fn record(&mut self, confirmed: Option<String>, at: SystemTime) {
        match confirmed {
            Some(job_id) => {
                self.confirmed.insert(job_id, at);
            }
            None => self.refused += 1,
        }
    }
}

/// HTTP/2 connections to spread calls over (one connection serialises on one socket).
const CONNECTIONS: usize = 4;
/// The most paced calls in flight at once.
const PACED_IN_FLIGHT: usize = 2048;

/// Submits `jobs` jobs (`noop`, or `sleep` with `--sleep`) to the producer at `grpc`.
pub(crate) async fn submit(
    grpc: SocketAddr,
    opts: &Options,
    jobs: usize,
    mode: Mode,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Answered> {
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = Channel::from_shared(format!("http://{grpc}"))?
            .connect()
            .await?;
        clients.push(JobServiceClient::new(channel));
    }
    let template = Arc::new(JobSpec {
        r#type: opts.job_type().into(),
        payload: opts.payload().into(),
        ..JobSpec::default()
    });
    let spec = move |index: usize| JobSpec {
        job_id: format!("j{index}"),
        ..(*template).clone()
    };
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(Mutex::new(Answered {
        confirmed: Submitted::with_capacity(jobs),
        refused: 0,
    }));
    let mut tasks = JoinSet::new();
    let workers = match mode {
        Mode::Batched => opts.batches_in_flight,
        Mode::Single => opts.callers,
        Mode::Paced(_) => 1,
    };
    for worker in 0..workers {
        let mut client = clients[worker % CONNECTIONS].clone();
        let (next, answered, spec, bar) =
            (next.clone(), answered.clone(), spec.clone(), bar.clone());
        let batch = opts.batch_size;
        let clients = clients.clone();
        tasks.spawn(async move {
            match mode {
                Mode::Batched => loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= jobs {
                        break;
                    }
                    let batch: Vec<JobSpec> =
                        (first..(first + batch).min(jobs)).map(&spec).collect();
                    let at = SystemTime::now();
                    let results = client
                        .submit_jobs(SubmitJobsRequest { jobs: batch })
                        .await?
                        .into_inner()
                        .results;
                    let mut answered = answered.lock().expect("lock");
                    for result in results {
                        answered.record((result.code == 0).then_some(result.job_id), at);
                    }
                    bar.set_message(format!("{} submitted", answered.confirmed.len()));
                },
                Mode::Single => loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= jobs {
                        break;
                    }
                    let at = SystemTime::now();
                    let request = SubmitJobRequest {
                        job: Some(spec(index)),
                    };
                    let confirmed = client.submit_job(request).await.ok();
                    answered
                        .lock()
                        .expect("lock")
                        .record(confirmed.map(|r| r.into_inner().job_id), at);
                },
                Mode::Paced(pace) => {
                    let mut pacer = pace.pacer();
                    let in_flight = Arc::new(Semaphore::new(PACED_IN_FLIGHT));
                    let mut calls = JoinSet::new();
                    for index in 0..jobs {
                        pacer.wait_turn(index).await;
                        let permit = in_flight.clone().acquire_owned().await?;
                        let mut client = clients[index % CONNECTIONS].clone();
                        let (answered, request) = (
                            answered.clone(),
                            SubmitJobRequest {
                                job: Some(spec(index)),
                            },
                        );
                        calls.spawn(async move {
                            let at = SystemTime::now();
                            let confirmed = client.submit_job(request).await.ok();
                            answered
                                .lock()
                                .expect("lock")
                                .record(confirmed.map(|r| r.into_inner().job_id), at);
                            drop(permit);
                        });
                    }
                    while calls.join_next().await.is_some() {}
                }
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(std::mem::take(&mut *answered.lock().expect("lock")))
}

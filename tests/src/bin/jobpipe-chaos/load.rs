//! The load: jobs submitted one per call at a steady pace, each with a client job id and retried
//! with that id until the producer confirms it, as a careful client does. What the producer said
//! and how long each call was held are kept for the report.

use jobpipe_proto::v1::{JobSpec, SubmitJobRequest, job_service_client::JobServiceClient};
use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};
use tonic::transport::Channel;

/// The most calls in flight at once (a broker outage parks them in retries).
const IN_FLIGHT: usize = 512;
/// The pause before a refused job is submitted again.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// The deadline of one call: far beyond anything the producer should hold a call.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a job is designed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `noop`: succeeds at once (85 %).
    Noop,
    /// `fail` with payload `1`: fails its first attempt, succeeds on the second (10 %).
    FailOnce,
    /// `sleep 50ms` (5 %).
    Sleep,
    /// `fail permanent`: designed to be dead-lettered (one in a thousand).
    Doomed,
}

impl Kind {
    /// The kind of job `index`.
    pub(crate) fn of(index: usize) -> Self {
        if index % 1000 == 999 {
            return Self::Doomed;
        }
        match index % 20 {
            17 | 18 => Self::FailOnce,
            19 => Self::Sleep,
            _ => Self::Noop,
        }
    }

    fn spec(self, index: usize) -> JobSpec {
        let (job_type, payload) = match self {
            Self::Noop => ("noop", ""),
            Self::FailOnce => ("fail", "1"),
            Self::Sleep => ("sleep", "50ms"),
            Self::Doomed => ("fail", "permanent"),
        };
        JobSpec {
            job_id: job_id(index),
            r#type: job_type.into(),
            payload: payload.as_bytes().to_vec().into(),
            ..JobSpec::default()
        }
    }
}

/// The id of job `index`.
pub(crate) fn job_id(index: usize) -> String {
    format!("chaos-{index}")
}

/// What the load saw.
#[derive(Debug, Default)]
pub(crate) struct Submitted {
    /// Jobs the producer confirmed.
    pub(crate) confirmed: HashSet<String>,
    /// Jobs that took more than one call (a refusal whose job may have been queued anyway is
    /// what makes a duplicate without a consumer fault).
    pub(crate) resubmitted: HashSet<String>,
    /// Refused calls by gRPC code name (each was retried).
    pub(crate) refusals: BTreeMap<String, usize>,
    /// The longest any one call was held.
    pub(crate) longest_call: Duration,
}

/// Submits jobs `0..jobs` to the producer at `grpc`, `rate` per second; returns once every one
/// was confirmed.
pub(crate) async fn run(grpc: SocketAddr, jobs: usize, rate: f64) -> anyhow::Result<Submitted> {
    let channel = Channel::from_shared(format!("http://{grpc}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(CALL_TIMEOUT)
        .connect_lazy();
    let client = JobServiceClient::new(channel);
    let seen = Arc::new(Mutex::new(Submitted::default()));
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for index in 0..jobs {
        tokio::time::sleep_until(start + Duration::from_secs_f64(index as f64 / rate)).await;
        let permit = permits.clone().acquire_owned().await?;
        let (client, seen) = (client.clone(), seen.clone());
        tasks.spawn(async move {
            submit(client, Kind::of(index).spec(index), &seen).await;
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let seen = std::mem::take(&mut *seen.lock().expect("load lock"));
    Ok(seen)
}

/// Submits one job until it is confirmed.
async fn submit(mut client: JobServiceClient<Channel>, spec: JobSpec, seen: &Mutex<Submitted>) {
    let id = spec.job_id.clone();
    loop {
        let started = Instant::now();
        let answer = client
            .submit_job(SubmitJobRequest {
                job: Some(spec.clone()),
            })
            .await;
        let held = started.elapsed();
        {
            let mut seen = seen.lock().expect("load lock");
            seen.longest_call = seen.longest_call.max(held);
            match answer {
                Ok(_) => {
                    seen.confirmed.insert(id);
                    return;
                }
                Err(status) => {
                    *seen
                        .refusals
                        .entry(format!("{:?}", status.code()))
                        .or_default() += 1;
                    seen.resubmitted.insert(id.clone());
                }
            }
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

//! `jobpipe.v1.JobService`: check each job, publish it with confirms, answer only once the broker
//! has spoken.

use crate::{
    error::SubmitError,
    metrics::{Method, Outcome, ProducerMetrics},
    queues::KnownQueues,
    submission::{Rules, Submission},
};
use futures::future::join_all;
use jobpipe_proto::{
    delay::LEVELS,
    names::{JobId, QueueName},
    topology::Topology,
    v1::{
        JobResult, JobSpec, SubmitJobRequest, SubmitJobResponse, SubmitJobsRequest,
        SubmitJobsResponse, job_service_server,
    },
};
use jobpipe_runtime::amqp::{Link, PublishError, Session};
use lapin::types::ShortString;
use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};
use tonic::{Code, Request, Response, Status};

/// The gRPC service. Cheap to clone: tonic clones it per connection.
#[derive(Clone, Debug)]
pub struct JobService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    link: Link,
    rules: Rules,
    /// `{prefix}.jobs`, built once: every publish needs it.
    jobs_exchange: ShortString,
    /// `{prefix}.delay.NN` by level, for scheduled jobs.
    delay_levels: Vec<ShortString>,
    queues: KnownQueues,
    metrics: ProducerMetrics,
}

impl JobService {
    /// A service publishing through `link` to the exchanges of `topology`; `configured` are the
    /// queues it declared itself.
    pub fn new(
        link: Link,
        rules: Rules,
        topology: Topology,
        configured: Vec<QueueName>,
        metrics: ProducerMetrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                link,
                rules,
                jobs_exchange: topology.jobs_exchange().into(),
                delay_levels: (0..LEVELS)
                    .map(|level| topology.delay_level(level).into())
                    .collect(),
                queues: KnownQueues::new(topology, configured),
                metrics,
            }),
        }
    }
}

#[tonic::async_trait]
impl job_service_server::JobService for JobService {
    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        let answer = self.inner.submit_one(request.into_inner()).await;
        let code = answer.as_ref().map_or_else(SubmitError::code, |_| Code::Ok);
        self.inner.metrics.rpc(Method::SubmitJob, code);
        answer
            .map(|job_id| {
                Response::new(SubmitJobResponse {
                    job_id: job_id.to_string(),
                })
            })
            .map_err(Status::from)
    }

    async fn submit_jobs(
        &self,
        request: Request<SubmitJobsRequest>,
    ) -> Result<Response<SubmitJobsResponse>, Status> {
        let answer = self.inner.submit_batch(request.into_inner().jobs).await;
        let code = answer.as_ref().map_or_else(SubmitError::code, |_| Code::Ok);
        self.inner.metrics.rpc(Method::SubmitJobs, code);
        answer
            .map(|results| Response::new(SubmitJobsResponse { results }))
            .map_err(Status::from)
    }
}

impl Inner {
    async fn submit_one(&self, request: SubmitJobRequest) -> Result<JobId, SubmitError> {
        let spec = request
            .job
            .ok_or_else(|| SubmitError::BadRequest("job: required".into()))?;
        let submission = self.check(spec)?;
        let session = self.session()?;
        self.publish(&session, submission).await
    }

    async fn submit_batch(&self, jobs: Vec<JobSpec>) -> Result<Vec<JobResult>, SubmitError> {
        let limit = self.rules.max_batch_jobs();
        if jobs.is_empty() || jobs.len() > limit {
            return Err(SubmitError::BadRequest(format!(
                "jobs: a batch holds 1 to {limit} jobs, not {}",
                jobs.len()
            )));
        }
        // Down before anything was published: fail the call as a whole, retrying it is safe.
        let session = self.session()?;
        let now = SystemTime::now();
        // All publishes go out at once and their confirms are awaited together (pipelined).
        let results = jobs
            .into_iter()
            .enumerate()
            .map(|(index, spec)| self.submit_in_batch(&session, index, spec, now));
        Ok(join_all(results).await)
    }

    async fn submit_in_batch(
        &self,
        session: &Session,
        index: usize,
        spec: JobSpec,
        now: SystemTime,
    ) -> JobResult {
        let client_id = spec.job_id.clone();
        let outcome = match self.rules.check(spec, now) {
            Ok(submission) => {
                let job_id = submission.properties.id.to_string();
                (job_id, self.publish(session, submission).await.map(drop))
            }
            Err(error) => {
                self.metrics.job(None, Outcome::Invalid);
                // Echo the client's id only if it is valid: never reflect arbitrary input.
                let job_id =
                    JobId::try_new(client_id).map_or_else(|_| String::new(), |id| id.to_string());
                (job_id, Err(error))
            }
        };
        match outcome {
            (job_id, Ok(())) => JobResult {
                job_id,
                code: Code::Ok as i32,
                message: String::new(),
            },
            (job_id, Err(error)) => JobResult {
                job_id,
                code: error.code() as i32,
                message: error.describe(&format!("jobs[{index}]")),
            },
        }
    }

    fn check(&self, spec: JobSpec) -> Result<Submission, SubmitError> {
        self.rules.check(spec, SystemTime::now()).inspect_err(|_| {
            self.metrics.job(None, Outcome::Invalid);
        })
    }

    fn session(&self) -> Result<Session, SubmitError> {
        self.link
            .session()
            .ok_or(SubmitError::Publish(PublishError::Unavailable))
    }

    async fn publish(
        &self,
        session: &Session,
        submission: Submission,
    ) -> Result<JobId, SubmitError> {
        let Submission {
            queue,
            delay,
            properties,
            payload,
        } = submission;
        // A scheduled job goes into the delay ladder at the level of its delay's highest bit.
        // The ladder routes it whatever its destination, so the destination is checked first.
        let (exchange, routing_key) = match delay {
            None => (self.jobs_exchange.clone(), queue.as_str().into()),
            Some(delay) => {
                match self.queues.exists(session, &queue).await {
                    Ok(true) => {}
                    Ok(false) => return self.refused(queue, PublishError::Unroutable),
                    Err(error) => return self.refused(queue, error),
                }
                let level = usize::from(delay.entry_level());
                (
                    self.delay_levels[level].clone(),
                    delay.routing_key(&queue).into(),
                )
            }
        };
        let started = Instant::now();
        let published = session
            .publisher()
            .publish(exchange, routing_key, &payload, properties.encode())
            .await;
        self.record(&queue, published, started);
        published
            .map(|()| properties.id)
            .map_err(|error| SubmitError::from_publish(error, &queue))
    }

    fn refused(&self, queue: QueueName, error: PublishError) -> Result<JobId, SubmitError> {
        self.record(&queue, Err(error), Instant::now());
        Err(SubmitError::from_publish(error, &queue))
    }

    fn record(&self, queue: &QueueName, published: Result<(), PublishError>, started: Instant) {
        let outcome = match published {
            Ok(()) => Outcome::Confirmed,
            Err(PublishError::Unroutable) => Outcome::Unroutable,
            Err(PublishError::Nacked) => Outcome::Nacked,
            Err(PublishError::Timeout) => Outcome::Timeout,
            Err(PublishError::Unavailable | PublishError::Blocked) => Outcome::Unavailable,
        };
        if matches!(
            outcome,
            Outcome::Confirmed | Outcome::Nacked | Outcome::Unroutable
        ) {
            self.metrics.confirm_latency(started.elapsed());
        }
        self.metrics.job(Some(queue), outcome);
    }
}

//! `jobpipe.v1.JobService`: check each job, publish it with confirms, answer only once the broker
//! has spoken.

use crate::{
    error::SubmitError,
    metrics::{Method, Outcome, ProducerMetrics},
    queues::KnownQueues,
    spans,
    submission::{Rules, Submission},
};
use futures::{StreamExt, future::join_all, stream};
use jobpipe_proto::{
    delay::LEVELS,
    job::TraceContext,
    names::{JobId, QueueName},
    topology::Topology,
    v1::{
        JobResult, JobSpec, SubmitJobRequest, SubmitJobResponse, SubmitJobsRequest,
        SubmitJobsResponse, job_service_server,
    },
};
use jobpipe_runtime::amqp::{Link, Pending, PublishError, Session};
use lapin::types::ShortString;
use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};
use tonic::{Code, Request, Response, Status};
use tracing::{Instrument, Span};

/// Publishes of one batch sent at once: enough to keep the connection busy, few enough that the
/// rest of the batch waits as compact `JobSpec`s rather than as in-flight publishes.
const SEND_WINDOW: usize = 64;

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
    /// How long a scheduled job's destination check may take.
    confirm_timeout: std::time::Duration,
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
        confirm_timeout: std::time::Duration,
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
                confirm_timeout,
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
        let (span, caller) = spans::rpc(Method::SubmitJob, request.metadata());
        let answer = self
            .inner
            .submit_one(request.into_inner(), caller.as_ref())
            .instrument(span.clone())
            .await;
        let code = answer.as_ref().map_or_else(SubmitError::code, |_| Code::Ok);
        spans::rpc_done(&span, code);
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
        let (span, caller) = spans::rpc(Method::SubmitJobs, request.metadata());
        let answer = self
            .inner
            .submit_batch(request.into_inner().jobs, caller.as_ref())
            .instrument(span.clone())
            .await;
        let code = answer.as_ref().map_or_else(SubmitError::code, |_| Code::Ok);
        spans::rpc_done(&span, code);
        self.inner.metrics.rpc(Method::SubmitJobs, code);
        answer
            .map(|results| Response::new(SubmitJobsResponse { results }))
            .map_err(Status::from)
    }
}

impl Inner {
    async fn submit_one(
        &self,
        request: SubmitJobRequest,
        caller: Option<&TraceContext>,
    ) -> Result<JobId, SubmitError> {
        let spec = request
            .job
            .ok_or_else(|| SubmitError::BadRequest("job: required".into()))?;
        let submission = self.check(spec, SystemTime::now())?;
        let session = self.session()?;
        let sent = self.send(&session, submission, caller).await?;
        self.confirm(sent).await
    }

    /// Publishes a batch in two stages. Jobs are checked and sent a window at a time, in order;
    /// once sent, a job is only its pending confirm (a few hundred bytes), so a large batch does
    /// not hold every payload and property set until the last confirm. Then all the confirms,
    /// in flight since their send, are awaited together.
    async fn submit_batch(
        &self,
        jobs: Vec<JobSpec>,
        caller: Option<&TraceContext>,
    ) -> Result<Vec<JobResult>, SubmitError> {
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
        let sent: Vec<(usize, String, Result<Sent, SubmitError>)> = stream::iter(jobs)
            .enumerate()
            .map(|(index, spec)| self.send_in_batch(&session, index, spec, now, caller))
            .buffered(SEND_WINDOW)
            .collect()
            .await;
        let results = sent.into_iter().map(|(index, job_id, sent)| async move {
            let confirmed = match sent {
                Ok(sent) => self.confirm(sent).await.map(drop),
                Err(error) => Err(error),
            };
            match confirmed {
                Ok(()) => JobResult {
                    job_id,
                    code: Code::Ok as i32,
                    message: String::new(),
                },
                Err(error) => JobResult {
                    job_id,
                    code: error.code() as i32,
                    message: error.describe(&format!("jobs[{index}]")),
                },
            }
        });
        Ok(join_all(results).await)
    }

    /// Checks and sends one job of a batch; returns its index, its id for the answer, and its
    /// pending confirm or refusal.
    async fn send_in_batch(
        &self,
        session: &Session,
        index: usize,
        spec: JobSpec,
        now: SystemTime,
        caller: Option<&TraceContext>,
    ) -> (usize, String, Result<Sent, SubmitError>) {
        let client_id = spec.job_id.clone();
        match self.check(spec, now) {
            Ok(submission) => {
                let job_id = submission.properties.id.to_string();
                (index, job_id, self.send(session, submission, caller).await)
            }
            Err(error) => {
                // Echo the client's id only if it is valid: never reflect arbitrary input.
                let job_id =
                    JobId::try_new(client_id).map_or_else(|_| String::new(), |id| id.to_string());
                (index, job_id, Err(error))
            }
        }
    }

    fn check(&self, spec: JobSpec, now: SystemTime) -> Result<Submission, SubmitError> {
        self.rules.check(spec, now).inspect_err(|_| {
            self.metrics.job(None, Outcome::Invalid);
        })
    }

    fn session(&self) -> Result<Session, SubmitError> {
        self.link
            .session()
            .ok_or(SubmitError::Publish(PublishError::Unavailable))
    }

    /// Hands a job to the broker. A scheduled job goes into the delay ladder at the level of
    /// its delay's highest bit; the ladder routes it whatever its destination, so the
    /// destination is checked first.
    async fn send(
        &self,
        session: &Session,
        submission: Submission,
        caller: Option<&TraceContext>,
    ) -> Result<Sent, SubmitError> {
        let Submission {
            queue,
            delay,
            mut properties,
            payload,
        } = submission;
        let (exchange, routing_key): (ShortString, ShortString) = match delay {
            None => (self.jobs_exchange.clone(), queue.as_str().into()),
            Some(delay) => {
                match self
                    .queues
                    .exists(session, &queue, self.confirm_timeout)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return Err(self.refused(&queue, PublishError::Unroutable)),
                    Err(error) => return Err(self.refused(&queue, error)),
                }
                let level = usize::from(delay.entry_level());
                (
                    self.delay_levels[level].clone(),
                    delay.routing_key(&queue).into(),
                )
            }
        };
        let span = spans::publish(exchange.as_str(), routing_key.as_str(), &properties.id);
        properties.trace = spans::job_context(&span, caller);
        let started = Instant::now();
        let pending = session
            .publisher()
            .send(exchange, routing_key, &payload, properties.encode())
            .instrument(span.clone())
            .await
            .map_err(|error| {
                spans::publish_done(&span, Err(error));
                self.refused(&queue, error)
            })?;
        Ok(Sent {
            job_id: properties.id,
            queue,
            pending,
            started,
            span,
        })
    }

    /// Waits for a sent job's confirm.
    async fn confirm(&self, sent: Sent) -> Result<JobId, SubmitError> {
        let Sent {
            job_id,
            queue,
            pending,
            started,
            span,
        } = sent;
        let confirmed = pending.confirmed().instrument(span.clone()).await;
        spans::publish_done(&span, confirmed);
        self.record(&queue, confirmed, started);
        confirmed
            .map(|()| job_id)
            .map_err(|error| SubmitError::from_publish(error, &queue))
    }

    fn refused(&self, queue: &QueueName, error: PublishError) -> SubmitError {
        self.record(queue, Err(error), Instant::now());
        SubmitError::from_publish(error, queue)
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

/// A job handed to the broker, awaiting its confirm.
#[derive(Debug)]
struct Sent {
    job_id: JobId,
    queue: QueueName,
    pending: Pending,
    started: Instant,
    /// The publish span, open until the confirm.
    span: Span,
}

//! `jobpipe.v1.JobService`: check each job, publish it with confirms, answer only once the broker
//! has spoken.

use crate::{
    auth::{Identity, identity},
    error::SubmitError,
    metrics::{Method, Outcome, ProducerMetrics},
    queues::KnownQueues,
    spans,
    submission::{Rules, Submission},
};
use futures::{StreamExt, stream};
use jobpipe_proto::{
    job::TraceContext,
    names::{JobId, QueueName},
    topology::Topology,
    v1::{
        JobResult, JobSpec, SubmitJobRequest, SubmitJobResponse, SubmitJobsRequest,
        SubmitJobsResponse, job_service_server,
    },
};
use jobpipe_runtime::amqp::{Link, Pending, PublishError, Routes, Session};
use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};
use tonic::{Code, Request, Response, Status};
use tracing::{Instrument, Span};

/// Publishes of one batch being sent at once: enough to keep the connection busy, few enough
/// that a large batch never holds more than this many encoded jobs and frames.
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
    routes: Routes,
    queues: KnownQueues,
    /// How long a scheduled job's destination check may take.
    confirm_timeout: std::time::Duration,
    metrics: ProducerMetrics,
}

impl JobService {
    /// A service publishing through `link` to the exchanges of `topology`; `configured` are the
    /// queues the link declares or verifies.
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
                routes: Routes::new(&topology),
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
        let identity = identity(&request);
        let answer = self
            .inner
            .submit_one(request.into_inner(), &identity, caller.as_ref())
            .instrument(span.clone())
            .await;
        let code = answer.as_ref().map_or_else(SubmitError::code, |_| Code::Ok);
        spans::rpc_done(&span, code);
        self.inner
            .metrics
            .rpc(Method::SubmitJob, code, identity.name());
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
        let identity = identity(&request);
        let answer = self
            .inner
            .submit_batch(request.into_inner().jobs, &identity, caller.as_ref())
            .instrument(span.clone())
            .await;
        let code = answer.as_ref().map_or_else(SubmitError::code, |_| Code::Ok);
        spans::rpc_done(&span, code);
        self.inner
            .metrics
            .rpc(Method::SubmitJobs, code, identity.name());
        answer
            .map(|results| Response::new(SubmitJobsResponse { results }))
            .map_err(Status::from)
    }
}

impl Inner {
    async fn submit_one(
        &self,
        request: SubmitJobRequest,
        identity: &Identity,
        caller: Option<&TraceContext>,
    ) -> Result<JobId, SubmitError> {
        let spec = request
            .job
            .ok_or_else(|| SubmitError::BadRequest("job: required".into()))?;
        let submission = self.check(spec, identity, SystemTime::now())?;
        let session = self.session()?;
        let sent = self.send(&session, submission, caller).await?;
        self.confirm(sent).await
    }

    /// Publishes a batch as one pipeline: jobs are checked and sent a window at a time, and each
    /// sent job waits for its confirm as only its pending confirm (a few hundred bytes), so a
    /// large batch never holds every encoded job until the last confirm. Results keep the
    /// request's order.
    async fn submit_batch(
        &self,
        jobs: Vec<JobSpec>,
        identity: &Identity,
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
        let results = stream::iter(jobs)
            .map(|spec| self.send_in_batch(&session, spec, identity, now, caller))
            .buffered(SEND_WINDOW)
            .enumerate()
            .map(|(index, (job_id, sent))| self.answer(index, job_id, sent))
            .buffered(limit)
            .collect()
            .await;
        Ok(results)
    }

    /// Checks and sends one job of a batch; returns its id for the answer, and its pending
    /// confirm or refusal.
    async fn send_in_batch(
        &self,
        session: &Session,
        spec: JobSpec,
        identity: &Identity,
        now: SystemTime,
        caller: Option<&TraceContext>,
    ) -> (String, Result<Sent, SubmitError>) {
        let client_id = spec.job_id.clone();
        match self.check(spec, identity, now) {
            Ok(submission) => {
                let job_id = submission.properties.id.to_string();
                (job_id, self.send(session, submission, caller).await)
            }
            Err(error) => {
                // Echo the client's id only if it is valid: never reflect arbitrary input.
                let job_id =
                    JobId::try_new(client_id).map_or_else(|_| String::new(), |id| id.to_string());
                (job_id, Err(error))
            }
        }
    }

    /// The result of the batch's job `index` once the broker has spoken.
    async fn answer(
        &self,
        index: usize,
        job_id: String,
        sent: Result<Sent, SubmitError>,
    ) -> JobResult {
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
    }

    /// The job, checked against the rules and against what the caller may submit; the caller's
    /// name rides on it.
    fn check(
        &self,
        spec: JobSpec,
        identity: &Identity,
        now: SystemTime,
    ) -> Result<Submission, SubmitError> {
        let checked = self.rules.check(spec, now).and_then(|mut submission| {
            let properties = &mut submission.properties;
            if let Some((field, reason)) = identity.refuses(&submission.queue, &properties.job_type)
            {
                return Err(SubmitError::Forbidden { field, reason });
            }
            properties.submitted_by = identity.caller.as_ref().map(|caller| caller.name.clone());
            Ok(submission)
        });
        checked.inspect_err(|_| self.metrics.job(None, Outcome::Invalid))
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
        if delay.is_some() {
            self.queues
                .check(session, &queue, self.confirm_timeout)
                .await
                .map_err(|error| self.refused(&queue, error))?;
        }
        let (exchange, routing_key) = self.routes.job(&queue, delay);
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

    /// A job refused before any confirm: counted, but no confirm latency to observe.
    fn refused(&self, queue: &QueueName, error: PublishError) -> SubmitError {
        self.metrics.job(Some(queue), outcome(Err(error)));
        SubmitError::from_publish(error, queue)
    }

    fn record(&self, queue: &QueueName, published: Result<(), PublishError>, started: Instant) {
        let outcome = outcome(published);
        if matches!(
            outcome,
            Outcome::Confirmed | Outcome::Nacked | Outcome::Unroutable
        ) {
            self.metrics.confirm_latency(started.elapsed());
        }
        self.metrics.job(Some(queue), outcome);
    }
}

fn outcome(published: Result<(), PublishError>) -> Outcome {
    match published {
        Ok(()) => Outcome::Confirmed,
        Err(PublishError::Unroutable) => Outcome::Unroutable,
        Err(PublishError::Nacked) => Outcome::Nacked,
        Err(PublishError::Timeout) => Outcome::Timeout,
        Err(PublishError::Unavailable | PublishError::Blocked) => Outcome::Unavailable,
        Err(PublishError::Lost) => Outcome::Lost,
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

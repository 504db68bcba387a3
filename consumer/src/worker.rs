//! One delivery's life: decode it, run its handler under a deadline, decide, and settle — only
//! once the outcome is known, and only once.
//!
//! A retry or a dead letter is a new publish that must be confirmed before the original is
//! acknowledged: a crash between the two leaves a duplicate, never a loss.

use crate::{
    context::Context,
    dispatch::Runner,
    handler::{Handler, Job, JobError},
    inbound::Inbound,
    metrics::{Outcome, UNKNOWN},
    outcome::{Attempt, Decision, decide},
    remote,
    republish::{Republished, republish},
    settler::Settled,
    spans,
};
use futures::future::BoxFuture;
use jobpipe_proto::{
    delay::LadderDelay,
    failure::{self, AttemptRecord, FailureKind},
    job::JobProperties,
};
use jobpipe_runtime::propagation;
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, Level, Span, debug, info, warn};

/// Processes one delivery to its settlement; `permit` is its slot under `consumer.concurrency`.
pub(crate) async fn process(ctx: Arc<Context>, inbound: Inbound, permit: OwnedSemaphorePermit) {
    let mut permit = Some(permit);
    let queue = inbound.queue().as_str();
    if inbound.redelivered() {
        ctx.metrics.redelivered(queue);
    }
    if inbound.is_stale() {
        // Delivered before the link failed: the broker has requeued it; running it now would
        // only make a duplicate that cannot be acknowledged.
        debug!(queue, "Skipping a delivery from before a reconnect.");
        ctx.metrics.job(queue, UNKNOWN, Outcome::Returned, None);
        return;
    }
    match JobProperties::decode(inbound.properties()) {
        Ok(job) => {
            let span = spans::attempt(&inbound, &job, &ctx.topology);
            run(&ctx, inbound, job, span.clone(), &mut permit)
                .instrument(span)
                .await;
        }
        Err(error) => {
            // The delivery goes to the dead letter: keep its queue's name for what follows.
            let queue = inbound.queue().clone();
            let record = record(&ctx, 0, FailureKind::Decode, error.to_string());
            warn!(%queue, %error, "Message is not a readable job; dead-lettering it.");
            let outcome = dead_letter(&ctx, inbound, record, FailureKind::Decode).await;
            ctx.metrics
                .job(queue.as_str(), UNKNOWN, outcome, Some(FailureKind::Decode));
        }
    }
}

async fn run(
    ctx: &Context,
    inbound: Inbound,
    mut job: JobProperties,
    span: Span,
    permit: &mut Option<OwnedSemaphorePermit>,
) {
    let queue = inbound.queue().as_str().to_owned();
    let waited = SystemTime::now()
        .duration_since(job.due_at)
        .unwrap_or_default();
    ctx.metrics.queue_wait(&queue, waited);
    // Its own target, so the benchmark can follow job starts without every other debug event.
    debug!(target: STARTED_TARGET, job_id = %job.id, wait_us = micros(waited), "Job started.");
    let started = Instant::now();
    let attempt = attempt(ctx, &inbound, &mut job, &span, permit).await;
    let elapsed = started.elapsed();
    ctx.metrics
        .handler_time(&queue, job.job_type.as_str(), elapsed);
    let (outcome, reason) = settle(ctx, inbound, &job, attempt).await;
    spans::attempt_done(&span, outcome, reason);
    ctx.metrics
        .job(&queue, job.job_type.as_str(), outcome, reason);
    if matches!(outcome, Outcome::Succeeded | Outcome::DeadLettered) {
        ctx.metrics.finished_after(&queue, job.attempt);
    }
    // One event per job outcome, self-contained: a JSON line carries every field on its own,
    // the trace ids included, so logs and traces join. The ids cost work: only when logged.
    if !tracing::enabled!(Level::INFO) {
        return;
    }
    let trace = propagation::ids(&span, job.trace.as_ref());
    info!(
        job_id = %job.id,
        job_type = %job.job_type,
        attempt = job.attempt,
        queue,
        duration_us = micros(elapsed),
        outcome = outcome.as_str(),
        reason = reason.map_or("", FailureKind::as_str),
        trace_id = trace.trace_id,
        span_id = trace.span_id,
        "Job finished."
    );
}

/// The target of the per-job "Job started." debug event.
pub const STARTED_TARGET: &str = "jobpipe_consumer::started";

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Runs the job: a handler in this process, or a call to the route's worker. The job's content
/// type and metadata move into the handler's input: nothing after the attempt reads them.
/// `permit` is this job's slot under `consumer.concurrency`.
async fn attempt(
    ctx: &Context,
    inbound: &Inbound,
    job: &mut JobProperties,
    span: &Span,
    permit: &mut Option<OwnedSemaphorePermit>,
) -> Attempt {
    let Some(runner) = ctx.dispatch.runner(&job.job_type) else {
        return Attempt::Failed {
            kind: FailureKind::NoHandler,
            error: format!(
                "no handler or route is configured for job type '{}'",
                job.job_type
            ),
            retry_after: None,
        };
    };
    // A job may ask for more than this consumer allows (a foreign or old message): an attempt
    // held past RabbitMQ's consumer timeout would cost the whole channel.
    let timeout = job.timeout.min(ctx.max_timeout);
    let input = Job {
        id: job.id.clone(),
        job_type: job.job_type.clone(),
        queue: inbound.queue().clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        payload: inbound.payload().clone(),
        content_type: std::mem::take(&mut job.content_type),
        metadata: std::mem::take(&mut job.metadata),
        submitted_at: job.submitted_at,
        deadline: Instant::now() + timeout,
    };
    match runner {
        Runner::Local(handler) => run_local(ctx, handler, input, timeout).await,
        Runner::Remote(remote) => {
            // The worker's spans join the consumer's span, or the job's trace when spans are
            // not exported.
            let trace = propagation::context_of(span).or_else(|| job.trace.clone());
            let call = remote::call(ctx, &remote, input, timeout, trace.as_ref(), permit);
            Box::pin(call).await
        }
    }
}

/// Runs `handler` in a task of its own, so a deadline abandons it even when it never yields and
/// a panic is caught rather than taking the consumer down.
async fn run_local(
    ctx: &Context,
    handler: Arc<dyn Handler>,
    input: Job,
    timeout: Duration,
) -> Attempt {
    let attempt = input.attempt;
    ctx.metrics.in_flight.inc();
    let mut task = tokio::spawn(async move { handler.handle(input).await });
    let result = tokio::time::timeout(timeout, &mut task).await;
    ctx.metrics.in_flight.dec();
    match result {
        Ok(Ok(result)) => from_result(result),
        Ok(Err(join_error)) => Attempt::Failed {
            kind: FailureKind::Panic,
            error: panic_message(join_error),
            retry_after: None,
        },
        Err(_elapsed) => {
            task.abort();
            Attempt::Failed {
                kind: FailureKind::Timeout,
                error: format!(
                    "attempt {attempt} ran past its {} deadline",
                    humantime::format_duration(timeout)
                ),
                retry_after: None,
            }
        }
    }
}

/// A handler's or worker's answer as the attempt's outcome.
pub(crate) fn from_result(result: Result<(), JobError>) -> Attempt {
    let (kind, error, retry_after) = match result {
        Ok(()) => return Attempt::Succeeded,
        Err(JobError::Transient(error)) => (FailureKind::Transient, error, None),
        Err(JobError::Permanent(error)) => (FailureKind::Permanent, error, None),
        Err(JobError::RetryAfter { error, after }) => (FailureKind::Transient, error, Some(after)),
    };
    Attempt::Failed {
        kind,
        error,
        retry_after,
    }
}

/// Settles the delivery after its attempt; returns the outcome to count and, for a failure, the
/// kind to report (the dead letter's kind when the job is given up).
async fn settle(
    ctx: &Context,
    inbound: Inbound,
    job: &JobProperties,
    attempt: Attempt,
) -> (Outcome, Option<FailureKind>) {
    let (kind, error, retry_after) = match attempt {
        Attempt::Succeeded => return (settled(inbound.ack().await, Outcome::Succeeded), None),
        Attempt::Withdrawn => {
            inbound.requeue().await;
            return (Outcome::Returned, None);
        }
        Attempt::Failed {
            kind,
            error,
            retry_after,
        } => (kind, error, retry_after),
    };
    let record = record(ctx, job.attempt, kind, error);
    let decision = decide(
        kind,
        job.attempt,
        job.max_attempts,
        retry_after,
        &ctx.retry,
        &mut rand::rng(),
    );
    match decision {
        Decision::Retry { after } => (retry(ctx, inbound, job, record, after).await, Some(kind)),
        Decision::DeadLetter { kind } => {
            (dead_letter(ctx, inbound, record, kind).await, Some(kind))
        }
    }
}

// Retries and dead letters publish, and a publish future is kilobytes: they are boxed so that a
// job task's one allocation stays small and a success never carries them.
fn retry<'a>(
    ctx: &'a Context,
    inbound: Inbound,
    job: &'a JobProperties,
    failed: AttemptRecord,
    after: LadderDelay,
) -> BoxFuture<'a, Outcome> {
    Box::pin(async move {
        let properties = failure::for_retry(
            inbound.properties(),
            &failed,
            job.attempt + 1,
            SystemTime::now() + after.duration(),
        );
        let route = ctx.routes.job(inbound.queue(), Some(after));
        match republish(ctx, &inbound, &route, properties).await {
            Republished::Confirmed => {
                info!(retry_in_s = after.secs(), error = %failed.error, "Job scheduled for retry.");
                settled(inbound.ack().await, Outcome::Retried)
            }
            Republished::Stale => Outcome::Returned,
            Republished::Failed(error) => {
                // Without the retry on the broker, the original must stay: hand it back. This
                // costs one delivery of the queue's limit, after a wait, never in a loop.
                warn!(%error, "Retry publish failed; returning the job to its queue.");
                inbound.requeue().await;
                Outcome::Returned
            }
        }
    })
}

fn dead_letter(
    ctx: &Context,
    inbound: Inbound,
    last: AttemptRecord,
    kind: FailureKind,
) -> BoxFuture<'_, Outcome> {
    Box::pin(async move {
        let queue = inbound.queue();
        let properties =
            failure::for_dead_letter(inbound.properties(), &last, kind, queue.as_str());
        let route = ctx.routes.dead_letter(queue);
        match republish(ctx, &inbound, &route, properties).await {
            Republished::Confirmed => {
                warn!(kind = kind.as_str(), error = %last.error, "Job dead-lettered.");
                settled(inbound.ack().await, Outcome::DeadLettered)
            }
            Republished::Stale => Outcome::Returned,
            Republished::Failed(error) => {
                // The queue's own dead-lettering still catches it, without our failure record.
                warn!(%error, kind = kind.as_str(), "Dead-letter publish failed; rejecting the job.");
                settled(inbound.reject().await, Outcome::DeadLettered)
            }
        }
    })
}

fn settled(settled: Settled, outcome: Outcome) -> Outcome {
    match settled {
        Settled::Done => outcome,
        Settled::ChannelGone => Outcome::Returned,
    }
}

fn record(ctx: &Context, attempt: u32, kind: FailureKind, error: String) -> AttemptRecord {
    AttemptRecord {
        attempt,
        at: SystemTime::now(),
        kind,
        error,
        consumer: ctx.instance.clone(),
    }
}

fn panic_message(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return "the handler task was cancelled".into();
    }
    let payload = error.into_panic();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic".into());
    format!("handler panicked: {text}")
}

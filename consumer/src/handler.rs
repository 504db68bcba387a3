//! The one open extension point: a [`Handler`] runs the jobs of one type. Register handlers in
//! [`Handlers`] and pass them to [`crate::Consumer`] to embed the consumer in your own binary.

use async_trait::async_trait;
use bytes::Bytes;
use jobpipe_proto::names::{JobId, JobType, QueueName};
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::Arc,
    time::{Instant, SystemTime},
};

/// Runs jobs of one type. Called once per attempt; the same job can arrive more than once
/// (delivery is at-least-once), so make the work idempotent on [`Job::id`].
///
/// An attempt that outlives [`Job::deadline`] is abandoned (its task aborted at the next await)
/// and counts as a timeout; a panic is retried like a transient failure and recorded as kind
/// `panic`.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Does the work. `Ok` acknowledges the job; a [`JobError`] says whether to retry.
    async fn handle(&self, job: Job) -> Result<(), JobError>;
}

/// A job as a handler receives it: decoded and validated.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job's id: the same for every attempt and every duplicate.
    pub id: JobId,
    /// The job type (the name this handler is registered under).
    pub job_type: JobType,
    /// The queue it came from.
    pub queue: QueueName,
    /// This attempt, 1-based.
    pub attempt: u32,
    /// The attempts the job gets in all.
    pub max_attempts: u32,
    /// The payload, as submitted.
    pub payload: Bytes,
    /// The payload's MIME type.
    pub content_type: String,
    /// The client's metadata pairs.
    pub metadata: BTreeMap<String, String>,
    /// When the client submitted the job.
    pub submitted_at: SystemTime,
    /// When this attempt is abandoned.
    pub deadline: Instant,
}

/// Why an attempt failed: whether another attempt could succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Worth retrying (a timeout upstream, a lock held): the job is retried with backoff until its
    /// attempts run out, then dead-lettered as `exhausted`.
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help (bad input): the job is dead-lettered at once as `permanent`.
    #[error("{0}")]
    Permanent(String),
    /// Worth retrying, but not before `after` (a worker's `Retry-After`): like `Transient`, with
    /// this delay instead of the backoff (rounded up to whole seconds, capped at
    /// `retry.max_delay`).
    #[error("{error}")]
    RetryAfter {
        /// The error text.
        error: String,
        /// The least delay before the next attempt.
        after: std::time::Duration,
    },
}

impl JobError {
    /// A transient failure with `error`'s text.
    pub fn transient(error: impl fmt::Display) -> Self {
        Self::Transient(error.to_string())
    }

    /// A permanent failure with `error`'s text.
    pub fn permanent(error: impl fmt::Display) -> Self {
        Self::Permanent(error.to_string())
    }
}

/// The handlers of a consumer, by job type.
#[derive(Clone, Default)]
pub struct Handlers {
    by_type: HashMap<JobType, Arc<dyn Handler>>,
}

impl Handlers {
    /// No handlers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for jobs of `job_type`, replacing any earlier one.
    pub fn register(&mut self, job_type: JobType, handler: impl Handler) -> &mut Self {
        self.by_type.insert(job_type, Arc::new(handler));
        self
    }

    /// The handler for `job_type`, if one is registered.
    pub fn get(&self, job_type: &JobType) -> Option<Arc<dyn Handler>> {
        self.by_type.get(job_type).cloned()
    }

    /// The registered job types.
    pub fn types(&self) -> impl Iterator<Item = &JobType> {
        self.by_type.keys()
    }
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.by_type.keys()).finish()
    }
}

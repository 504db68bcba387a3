//! Jobs run by a worker of the user's, in any language, over HTTP (`http.rs`) or gRPC
//! (`grpc.rs`, the `jobpipe.v1.Worker` contract). A [`Remote`] is one route's worker: its client
//! (connections pooled), its concurrency limit, the token it sends, and its [`Health`]: a worker
//! that cannot be reached has not run the job, so the attempt is held, not counted.

mod grpc;
mod health;
mod http;

pub(crate) use health::Health;

use crate::{
    context::Context,
    handler::{Job, JobError},
    metrics::WorkerSeries,
    outcome::Attempt,
    routes::{self, Route, Target},
    worker::from_result,
};
use jobpipe_proto::job::TraceContext;
use jobpipe_runtime::{readiness::Blockers, settings::ConfigError, tls::TlsKeys};
use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The most bytes of a worker's error (a response body, a status message) kept as the error text.
pub(crate) const MAX_ERROR_BYTES: usize = 1024;

/// How a call to a worker ended.
#[derive(Debug)]
pub(crate) enum Called {
    /// The worker answered (or the call failed after the request was sent): the attempt happened.
    Answered(Result<(), JobError>),
    /// The worker could not be reached (refused, no such host, TLS handshake failed): the job
    /// did not run.
    Unreachable(String),
}

/// How a worker answered, for the requests metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Answer {
    /// An HTTP status class (`2xx` … `5xx`).
    Http(u16),
    /// A gRPC status code.
    Grpc(tonic::Code),
    /// No answer: unreachable, reset, or timed out.
    None,
}

impl Answer {
    /// The `status` label: `2xx`, a gRPC code in snake case, or `none`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Http(100..=199) => "1xx",
            Self::Http(200..=299) => "2xx",
            Self::Http(300..=399) => "3xx",
            Self::Http(400..=499) => "4xx",
            Self::Http(_) => "5xx",
            Self::Grpc(code) => grpc::code_label(code),
            Self::None => "none",
        }
    }
}

/// One route's worker.
#[derive(Debug)]
pub(crate) struct Remote {
    /// The route's pattern, the metrics' `route` label.
    pub(crate) label: &'static str,
    client: Client,
    /// Requests in flight to this worker at most.
    pub(crate) permits: Arc<Semaphore>,
    /// The longest one request may take.
    timeout: Option<Duration>,
    /// `Bearer …`, read from the route's token file.
    authorization: Option<Authorization>,
    /// Whether the worker can be reached.
    pub(crate) health: Arc<Health>,
    /// Its metric series, once registered.
    series: OnceLock<WorkerSeries>,
}

#[derive(Debug)]
enum Client {
    Http(http::HttpWorker),
    Grpc(grpc::GrpcWorker),
}

impl Remote {
    /// Builds the worker of route number `index` (files read now; errors name the key).
    pub(crate) fn new(
        index: usize,
        route: &Route,
        concurrency: usize,
        blockers: &Blockers,
    ) -> Result<Self, ConfigError> {
        let key = |field: &str| routes::key(index, field);
        let config = &route.config;
        let tls = match (&config.tls, route.target.tls()) {
            (_, false) => None,
            (settings, true) => {
                let settings = settings.clone().unwrap_or_default();
                let keys = TlsKeys {
                    ca_file: key("tls.ca_file"),
                    cert_file: key("tls.cert_file"),
                    key_file: key("tls.key_file"),
                };
                let client =
                    settings
                        .client_config(keys)
                        .map_err(|error| ConfigError::Invalid {
                            key: error.key,
                            reason: error.reason,
                        })?;
                Some((client, settings))
            }
        };
        let authorization = match &config.token_file {
            None => None,
            Some(path) => Some(Authorization(read_token(path).map_err(|reason| {
                ConfigError::Invalid {
                    key: key("token_file"),
                    reason,
                }
            })?)),
        };
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            key: key(field),
            reason,
        };
        let (client, address) = match &route.target {
            Target::Http { .. } if tls.as_ref().is_some_and(|(_, s)| s.server_name.is_some()) => {
                return Err(invalid(
                    "tls.server_name",
                    "applies to grpcs:// targets only: put the certificate's name in the URL"
                        .into(),
                ));
            }
            Target::Http { url, .. } => {
                let worker = http::HttpWorker::new(url, tls.map(|(client, _)| client))
                    .map_err(|reason| invalid("target", reason))?;
                let address = worker.address();
                (Client::Http(worker), address)
            }
            Target::Grpc { authority, .. } => {
                let worker = grpc::GrpcWorker::new(authority, tls.as_ref())
                    .map_err(|reason| invalid("target", reason))?;
                (Client::Grpc(worker), authority.clone())
            }
            Target::Handler(_) => {
                return Err(invalid("target", "a handler is not a remote worker".into()));
            }
        };
        let label: &'static str = Box::leak(route.pattern.to_string().into_boxed_str());
        Ok(Self {
            label,
            client,
            permits: Arc::new(Semaphore::new(config.concurrency.unwrap_or(concurrency))),
            timeout: config.timeout,
            authorization,
            health: Health::new(label, &config.target, address, blockers.clone()),
            series: OnceLock::new(),
        })
    }

    /// Reports on `series` from now on.
    pub(crate) fn attach(&self, series: WorkerSeries) {
        self.health.report_on(series.up.clone());
        let _ = self.series.set(series);
    }

    /// Runs one attempt of `job` at the worker, within `limit` (the attempt's time left), the
    /// route's own timeout, if shorter, applying too. `trace` is the context the worker's spans
    /// join.
    pub(crate) async fn call(
        &self,
        job: &Job,
        trace: Option<&TraceContext>,
        limit: Duration,
    ) -> (Called, Answer) {
        let limit = self.timeout.map_or(limit, |cap| cap.min(limit));
        let authorization = self.authorization.as_ref().map(|a| a.0.as_str());
        match &self.client {
            Client::Http(worker) => worker.call(job, trace, authorization, limit).await,
            Client::Grpc(worker) => worker.call(job, trace, authorization, limit).await,
        }
    }
}

/// Runs one attempt of `job` at `remote`'s worker. Waiting for the worker (while it is
/// unreachable) or for a slot of its route, the job holds no slot of `consumer.concurrency`
/// (`permit` is given back and taken again), so a slow or absent worker never starves the other
/// routes. A worker that cannot be reached has not run the job: the job waits, uncounted, until
/// the prober sees the worker back, at most `consumer.max_timeout`, and is then withdrawn
/// (returned to its queue), as it is when the consumer drains.
pub(crate) async fn call(
    ctx: &Context,
    remote: &Remote,
    mut job: Job,
    timeout: Duration,
    trace: Option<&TraceContext>,
    permit: &mut Option<OwnedSemaphorePermit>,
) -> Attempt {
    let hold_until = tokio::time::Instant::now() + ctx.max_timeout;
    loop {
        if !remote.health.is_up() {
            *permit = None;
            tokio::select! {
                () = remote.health.wait_up() => {}
                () = ctx.shutdown.cancelled() => return Attempt::Withdrawn,
                () = tokio::time::sleep_until(hold_until) => return Attempt::Withdrawn,
            }
        }
        let route_permit = match Arc::clone(&remote.permits).try_acquire_owned() {
            Ok(route_permit) => route_permit,
            Err(_) => {
                *permit = None;
                tokio::select! {
                    acquired = Arc::clone(&remote.permits).acquire_owned() => match acquired {
                        Ok(route_permit) => route_permit,
                        Err(_) => return Attempt::Withdrawn,
                    },
                    () = ctx.shutdown.cancelled() => return Attempt::Withdrawn,
                }
            }
        };
        if permit.is_none() {
            tokio::select! {
                acquired = Arc::clone(&ctx.permits).acquire_owned() => match acquired {
                    Ok(acquired) => *permit = Some(acquired),
                    Err(_) => return Attempt::Withdrawn,
                },
                () = ctx.shutdown.cancelled() => return Attempt::Withdrawn,
            }
        }
        // The attempt's time starts when it can run.
        let started = Instant::now();
        job.deadline = started + timeout;
        let series = remote.series.get();
        ctx.metrics.in_flight.inc();
        if let Some(series) = series {
            series.in_flight.inc();
        }
        let (called, answer) = remote.call(&job, trace, timeout).await;
        if let Some(series) = series {
            series.in_flight.dec();
        }
        ctx.metrics.in_flight.dec();
        drop(route_permit);
        if let Some(series) = series {
            series.seconds.observe(started.elapsed().as_secs_f64());
        }
        let attempt = match called {
            Called::Answered(result) => Some(from_result(result)),
            Called::Unreachable(error) => {
                remote.health.down(&error);
                None
            }
        };
        let counted = attempt.as_ref().unwrap_or(&Attempt::Withdrawn);
        ctx.metrics.worker_request(remote.label, counted, answer);
        if let Some(attempt) = attempt {
            return attempt;
        }
    }
}

/// An `authorization` value: its `Debug` never shows it.
struct Authorization(String);

impl std::fmt::Debug for Authorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"Bearer ***\"")
    }
}

/// Reads a bearer token file: one line, visible ASCII.
fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|c| c.is_ascii_graphic()) {
        // Never the content: it is a secret.
        return Err(format!(
            "{} must hold one token of visible ASCII characters",
            path.display()
        ));
    }
    Ok(format!("Bearer {token}"))
}

/// A worker's error text fit for a failure record and a log line: at most [`MAX_ERROR_BYTES`],
/// invalid UTF-8 replaced, control characters as spaces, trimmed.
pub(crate) fn sanitize(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(MAX_ERROR_BYTES)];
    let text = String::from_utf8_lossy(bytes);
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    // A replaced byte takes three: cut again.
    bounded(cleaned.trim().to_owned())
}

/// `text` cut to [`MAX_ERROR_BYTES`] on a character boundary.
pub(crate) fn bounded(mut text: String) -> String {
    let end = jobpipe_proto::metadata::truncate(&text, MAX_ERROR_BYTES).len();
    text.truncate(end);
    text
}

/// A worker that did not answer within `limit`: a transient failure of the attempt.
fn no_answer(limit: Duration) -> Called {
    Called::Answered(Err(JobError::transient(format!(
        "the worker did not answer within {}",
        humantime::format_duration(limit)
    ))))
}

/// The retry a worker asked for, as a job error.
fn retry_after(error: String, after: Duration) -> JobError {
    JobError::RetryAfter { error, after }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_errors_are_bounded_and_printable() {
        let cases: [(&[u8], &str); 4] = [
            (b"  plain text \n", "plain text"),
            (b"line\r\nbreak\x1b[31m", "line  break [31m"),
            (b"bad \xff utf8", "bad \u{fffd} utf8"),
            (b"", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(sanitize(input), expected);
        }
        let long = vec![b'a'; 5 * MAX_ERROR_BYTES];
        assert_eq!(sanitize(&long).len(), MAX_ERROR_BYTES);
        // Invalid bytes become three-byte replacement characters, still within the bound.
        let invalid = vec![0xff; MAX_ERROR_BYTES];
        let text = sanitize(&invalid);
        assert!(text.len() <= MAX_ERROR_BYTES && text.starts_with('\u{fffd}'));
    }

    #[test]
    fn token_files() {
        let dir = tempfile_dir();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        assert_eq!(
            read_token(&write("ok", "s3cret\n")).unwrap(),
            "Bearer s3cret"
        );
        for bad in ["", "two words", "tab\there"] {
            let error = read_token(&write("bad", bad)).unwrap_err();
            assert!(
                error.ends_with("must hold one token of visible ASCII characters"),
                "{error}"
            );
        }
        assert!(read_token(&dir.join("missing")).is_err());
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("jobpipe-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

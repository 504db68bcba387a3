//! The HTTP worker contract: one `POST` per attempt, the payload as the body, the job's fields as
//! headers (jobpipe's own, W3C trace context, CloudEvents binary mode), the status read as the
//! outcome. Connections are pooled (HTTP/1.1 keep-alive, or HTTP/2 over TLS when the worker
//! offers it); a response body is never read past a bound.

use super::{Answer, Called, MAX_ERROR_BYTES, bounded, no_answer, retry_after, sanitize};
use crate::handler::{Job, JobError};
use jobpipe_proto::job::TraceContext;
use reqwest::{
    Client, Response, StatusCode, Url,
    header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
};
use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

/// The most of a successful response's body read (so the connection can be reused); a longer
/// one is dropped with its connection.
const MAX_DRAINED_BYTES: usize = 64 * 1024;

/// Header names of the contract (README, "The HTTP worker contract").
pub(crate) mod names {
    /// The job's id.
    pub(crate) const JOB_ID: &str = "jobpipe-job-id";
    /// The job type.
    pub(crate) const JOB_TYPE: &str = "jobpipe-job-type";
    /// The queue it came from.
    pub(crate) const QUEUE: &str = "jobpipe-queue";
    /// This attempt, 1-based.
    pub(crate) const ATTEMPT: &str = "jobpipe-attempt";
    /// The attempts the job gets.
    pub(crate) const MAX_ATTEMPTS: &str = "jobpipe-max-attempts";
    /// When the attempt is abandoned, RFC 3339 (a route's `timeout` may end the request sooner).
    pub(crate) const DEADLINE: &str = "jobpipe-deadline";
    /// When the job was submitted, RFC 3339.
    pub(crate) const SUBMITTED_AT: &str = "jobpipe-submitted-at";
    /// The prefix of a metadata pair's header.
    pub(crate) const META_PREFIX: &str = "jobpipe-meta-";
}

/// A worker reached over HTTP.
#[derive(Debug)]
pub(crate) struct HttpWorker {
    client: Client,
    url: Url,
}

impl HttpWorker {
    /// A client for `url`, over `tls` for `https`.
    pub(crate) fn new(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Self, String> {
        let url = Url::parse(url).map_err(|error| format!("not a valid URL: {error}"))?;
        let mut builder = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5));
        builder = match tls {
            // HTTP/2 when the worker offers it, else HTTP/1.1.
            Some(config) => {
                let mut config = (*config).clone();
                config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                builder.tls_backend_preconfigured(config).https_only(true)
            }
            // The client insists on a TLS setup even for plaintext: one that trusts nothing.
            None => builder
                .tls_backend_preconfigured(trusts_nothing()?)
                .http1_only(),
        };
        let client = builder
            .build()
            .map_err(|error| format!("cannot build the HTTP client: {error}"))?;
        Ok(Self { client, url })
    }

    /// `host:port` for the prober.
    pub(crate) fn address(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        let port = self.url.port_or_known_default().unwrap_or(80);
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }

    /// One attempt: `POST`, then the status read as the outcome.
    pub(crate) async fn call(
        &self,
        job: &Job,
        trace: Option<&TraceContext>,
        authorization: Option<&str>,
        limit: Duration,
    ) -> (Called, Answer) {
        let request = self
            .client
            .post(self.url.clone())
            .headers(headers(job, trace, authorization))
            .body(job.payload.clone())
            .timeout(limit);
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let answered = outcome(response).await;
                (Called::Answered(answered), Answer::Http(status.as_u16()))
            }
            Err(error) if error.is_connect() => {
                (Called::Unreachable(describe(&error)), Answer::None)
            }
            Err(error) if error.is_timeout() => (no_answer(limit), Answer::None),
            Err(error) => (
                Called::Answered(Err(JobError::transient(format!(
                    "the request to the worker failed: {}",
                    describe(&error)
                )))),
                Answer::None,
            ),
        }
    }
}

/// The request's headers.
fn headers(job: &Job, trace: Option<&TraceContext>, authorization: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(16 + job.metadata.len());
    let mut put = |name: HeaderName, value: &str| {
        // Every value here is validated ASCII or encoded; one that is not is left out rather
        // than sent broken.
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    let deadline = wall_clock(job.deadline);
    let id = job.id.as_str();
    let job_type = job.job_type.as_str();
    put(CONTENT_TYPE, &job.content_type);
    put(HeaderName::from_static(names::JOB_ID), id);
    put(HeaderName::from_static(names::JOB_TYPE), job_type);
    put(HeaderName::from_static(names::QUEUE), job.queue.as_str());
    put(
        HeaderName::from_static(names::ATTEMPT),
        &job.attempt.to_string(),
    );
    put(
        HeaderName::from_static(names::MAX_ATTEMPTS),
        &job.max_attempts.to_string(),
    );
    put(
        HeaderName::from_static(names::DEADLINE),
        &humantime::format_rfc3339_millis(deadline).to_string(),
    );
    let submitted = humantime::format_rfc3339_millis(job.submitted_at).to_string();
    put(HeaderName::from_static(names::SUBMITTED_AT), &submitted);
    // CloudEvents 1.0, HTTP binary content mode.
    put(HeaderName::from_static("ce-specversion"), "1.0");
    put(HeaderName::from_static("ce-id"), id);
    put(HeaderName::from_static("ce-type"), job_type);
    put(
        HeaderName::from_static("ce-source"),
        &format!("/jobpipe/queues/{}", job.queue),
    );
    put(HeaderName::from_static("ce-time"), &submitted);
    if let Some(trace) = trace {
        put(HeaderName::from_static("traceparent"), &trace.traceparent);
        if !trace.tracestate.is_empty() {
            put(HeaderName::from_static("tracestate"), &trace.tracestate);
        }
    }
    if let Some(Ok(mut value)) = authorization.map(HeaderValue::from_str) {
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    for (key, value) in &job.metadata {
        // Keys follow the metadata rule ([A-Za-z0-9_.-]), so they are valid header names.
        if let Ok(name) = HeaderName::try_from(format!("{}{key}", names::META_PREFIX))
            && let Ok(value) = HeaderValue::from_str(&percent_encode(value))
        {
            headers.insert(name, value);
        }
    }
    headers
}

/// A TLS client configuration with no trusted roots: every handshake fails.
fn trusts_nothing() -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

/// The response's status as the attempt's outcome.
async fn outcome(mut response: Response) -> Result<(), JobError> {
    let status = response.status();
    if status.is_success() {
        drain(&mut response).await;
        return Ok(());
    }
    let delay = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, SystemTime::now()));
    let body = read_prefix(&mut response).await;
    let error = bounded(describe_status(status, &body));
    match status.as_u16() {
        429 | 503 if delay.is_some() => Err(retry_after(error, delay.unwrap_or_default())),
        300..=399 => Err(JobError::permanent(bounded(format!(
            "redirects are not followed, point the route at the final URL: {error}"
        )))),
        408 | 429 | 500..=599 => Err(JobError::Transient(error)),
        _ => Err(JobError::Permanent(error)),
    }
}

/// `HTTP 503 Service Unavailable: <the body's start>`.
fn describe_status(status: StatusCode, body: &str) -> String {
    let mut text = format!("HTTP {}", status.as_u16());
    if let Some(reason) = status.canonical_reason() {
        text.push(' ');
        text.push_str(reason);
    }
    if !body.is_empty() {
        text.push_str(": ");
        text.push_str(body);
    }
    text
}

/// Reads a successful response's body up to a bound, so its connection goes back to the pool.
async fn drain(response: &mut Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read > MAX_DRAINED_BYTES {
            return;
        }
    }
}

/// The first [`MAX_ERROR_BYTES`] of the body, sanitized; the rest is never read.
async fn read_prefix(response: &mut Response) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    sanitize(&body)
}

/// `Retry-After` as a delay from `now`: seconds, or an HTTP date (a date in the past is 0).
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

/// `deadline` on the wall clock, for the worker.
fn wall_clock(deadline: Instant) -> SystemTime {
    SystemTime::now() + deadline.saturating_duration_since(Instant::now())
}

/// Percent-encodes what a header value cannot carry as is: bytes outside visible ASCII and space,
/// and `%` itself.
fn percent_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (b' '..=b'~').contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A reqwest error without its URL (which may carry a query the operator keeps private), with
/// its causes.
fn describe(error: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(error) = source {
        let part = error.to_string();
        if !part.starts_with("error sending request") && !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
        source = error.source();
    }
    if text.is_empty() {
        text = "the request failed".into();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_values() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let cases = [
            ("120", Some(Duration::from_secs(120))),
            (" 0 ", Some(Duration::ZERO)),
            (
                "Sun, 06 Nov 1994 08:50:07 GMT",
                Some(Duration::from_secs(30)),
            ),
            ("Sun, 06 Nov 1994 08:00:00 GMT", Some(Duration::ZERO)),
            ("-5", None),
            ("soon", None),
            ("1.5", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_retry_after(value, now), expected, "{value}");
        }
    }

    #[test]
    fn metadata_values_are_percent_encoded() {
        let cases = [
            ("plain value", "plain value"),
            ("50%", "50%25"),
            ("line\nbreak", "line%0Abreak"),
            ("été", "%C3%A9t%C3%A9"),
        ];
        for (value, expected) in cases {
            assert_eq!(percent_encode(value), expected);
        }
    }

    #[test]
    fn status_texts() {
        assert_eq!(
            describe_status(StatusCode::SERVICE_UNAVAILABLE, "busy"),
            "HTTP 503 Service Unavailable: busy"
        );
        assert_eq!(
            describe_status(StatusCode::from_u16(599).unwrap(), ""),
            "HTTP 599"
        );
    }
}

//! The gRPC worker contract (`proto/jobpipe/v1/worker.proto`): one `Worker.Handle` call per
//! attempt on one HTTP/2 channel per worker, the attempt's deadline as the call's, the status
//! read as the outcome. The channel connects through this module's connector, over the route's
//! `tls` settings (the shape of `amqp.tls`), so a connection that cannot be made is told apart
//! from a call that failed.

use super::{Answer, Called, bounded, no_answer, retry_after, sanitize};
use crate::handler::{Job, JobError};
use jobpipe_proto::{
    job::TraceContext,
    v1::{HandleRequest, worker_client::WorkerClient},
};
use jobpipe_runtime::tls::ClientTlsConfig;
use rustls_pki_types::ServerName;
use std::{
    error::Error,
    fmt, io,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};
use tokio::net::TcpStream;
use tonic::{
    Code, Request, Status, TimeoutExpired,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt;

/// A worker reached over gRPC.
#[derive(Debug, Clone)]
pub(crate) struct GrpcWorker {
    client: WorkerClient<Channel>,
}

/// The connection to the worker could not be made: it has not seen the call.
#[derive(Debug)]
struct ConnectFailed(io::Error);

impl fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for ConnectFailed {}

impl GrpcWorker {
    /// A channel to `authority`, over `tls` for `grpcs`; it connects on first use.
    pub(crate) fn new(
        authority: &str,
        tls: Option<&(Arc<rustls::ClientConfig>, ClientTlsConfig)>,
    ) -> Result<Self, String> {
        // The connector below does the TLS, so the channel itself is told `http`: tonic would
        // refuse an `https` endpoint without TLS settings of its own.
        let endpoint = Endpoint::from_shared(format!("http://{authority}"))
            .map_err(|error| format!("not a valid address: {error}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = match tls {
            None => None,
            Some((config, settings)) => {
                let name = settings.server_name.clone().unwrap_or(host);
                let name = ServerName::try_from(name)
                    .map_err(|_| "the server name is not a valid DNS name or IP".to_owned())?;
                let mut config = (**config).clone();
                config.alpn_protocols = vec![b"h2".to_vec()];
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
        };
        let address = authority.to_owned();
        let connector = tower::service_fn(move |_: http::Uri| {
            let (address, tls) = (address.clone(), tls.clone());
            async move { connect(&address, tls).await.map_err(ConnectFailed) }
        });
        let channel = endpoint.connect_with_connector_lazy(connector);
        Ok(Self {
            client: WorkerClient::new(channel),
        })
    }

    /// One attempt: `Handle`, then the status read as the outcome.
    pub(crate) async fn call(
        &self,
        job: &Job,
        trace: Option<&TraceContext>,
        authorization: Option<&str>,
        limit: Duration,
    ) -> (Called, Answer) {
        let mut request = Request::new(handle_request(job));
        request.set_timeout(limit);
        let metadata = request.metadata_mut();
        if let Some(trace) = trace {
            if let Ok(value) = MetadataValue::try_from(trace.traceparent.as_str()) {
                metadata.insert("traceparent", value);
            }
            if let Ok(value) = MetadataValue::try_from(trace.tracestate.as_str())
                && !trace.tracestate.is_empty()
            {
                metadata.insert("tracestate", value);
            }
        }
        if let Some(Ok(mut value)) = authorization.map(MetadataValue::try_from) {
            value.set_sensitive(true);
            metadata.insert("authorization", value);
        }
        // A clone of the client is a handle on the same channel. The channel enforces the
        // deadline itself; the outer bound only backs it up.
        let answer = tokio::time::timeout(limit, self.client.clone().handle(request)).await;
        match answer {
            Ok(Ok(_)) => (Called::Answered(Ok(())), Answer::Grpc(Code::Ok)),
            Ok(Err(status)) if caused_by::<TimeoutExpired>(&status) => {
                (no_answer(limit), Answer::None)
            }
            Ok(Err(status)) if caused_by::<ConnectFailed>(&status) => (
                Called::Unreachable(status.message().to_owned()),
                Answer::None,
            ),
            Ok(Err(status)) => (
                Called::Answered(Err(outcome(&status))),
                Answer::Grpc(status.code()),
            ),
            Err(_elapsed) => (no_answer(limit), Answer::None),
        }
    }
}

async fn connect(
    address: &str,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
) -> io::Result<Box<dyn Connection>> {
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    Ok(match tls {
        None => Box::new(hyper_util::rt::TokioIo::new(tcp)),
        Some((connector, name)) => {
            let stream = connector.connect(name, tcp).await?;
            Box::new(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

/// A connection the channel can use, plaintext or TLS.
trait Connection: hyper::rt::Read + hyper::rt::Write + Send + Unpin {}
impl<T: hyper::rt::Read + hyper::rt::Write + Send + Unpin> Connection for T {}

/// Whether the call failed because of an `E` on the client's side: a connection that could not
/// be made ([`ConnectFailed`]), or the deadline ([`TimeoutExpired`]).
fn caused_by<E: Error + 'static>(status: &Status) -> bool {
    let mut source: Option<&(dyn Error + 'static)> = status.source();
    while let Some(error) = source {
        if error.is::<E>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// The job as the worker receives it.
fn handle_request(job: &Job) -> HandleRequest {
    let deadline = SystemTime::now() + job.deadline.saturating_duration_since(Instant::now());
    HandleRequest {
        job_id: job.id.as_str().to_owned(),
        r#type: job.job_type.as_str().to_owned(),
        queue: job.queue.as_str().to_owned(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        payload: job.payload.clone(),
        content_type: job.content_type.clone(),
        metadata: job
            .metadata
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        submitted_at: Some(prost_types::Timestamp::from(job.submitted_at)),
        deadline: Some(prost_types::Timestamp::from(deadline)),
    }
}

/// A failed call's status as the attempt's outcome.
fn outcome(status: &Status) -> JobError {
    let message = sanitize(status.message().as_bytes());
    let error = bounded(format!("gRPC {}: {message}", code_label(status.code())));
    if let Some(delay) = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
    {
        return retry_after(error, delay);
    }
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::Unknown => JobError::Transient(error),
        _ => JobError::Permanent(error),
    }
}

/// A gRPC code's label, in snake case.
pub(crate) fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::MAX_ERROR_BYTES;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn statuses() {
        let transient = [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::Internal,
            Code::Unknown,
        ];
        for code in transient {
            let error = outcome(&Status::new(code, "busy"));
            assert_eq!(
                error,
                JobError::Transient(format!("gRPC {}: busy", code_label(code)))
            );
        }
        for code in [Code::InvalidArgument, Code::NotFound, Code::Unauthenticated] {
            assert!(matches!(
                outcome(&Status::new(code, "no")),
                JobError::Permanent(_)
            ));
        }
        let asked = Status::with_error_details(
            Code::InvalidArgument,
            "later",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(7))),
        );
        assert_eq!(
            outcome(&asked),
            JobError::RetryAfter {
                error: "gRPC invalid_argument: later".into(),
                after: Duration::from_secs(7),
            }
        );
        let long = Status::new(Code::Internal, "é\n".repeat(4096));
        let JobError::Transient(text) = outcome(&long) else {
            panic!("transient expected");
        };
        assert!(text.len() <= MAX_ERROR_BYTES && !text.contains('\n'));
    }
}

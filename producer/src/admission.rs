//! What the gRPC port admits before any service sees a request: gRPC only (a `POST` with an
//! `application/grpc` content type; anything else gets HTTP 405 or 415, as the gRPC spec asks);
//! a caller that proves who it is and holds the role the call needs (`UNAUTHENTICATED`,
//! `PERMISSION_DENIED` naming the role; health is open to all, for probes); at most
//! `grpc.max_concurrent_calls` calls at once (health aside, so probes answer under load; one
//! more gets `RESOURCE_EXHAUSTED`), each finished within `grpc.request_timeout`, or
//! `grpc.admin_request_timeout` for `AdminService`, whose reads take a whole dead-letter queue
//! (a client that stops sending its request gets `DEADLINE_EXCEEDED` and its buffer is freed); and one message
//! per call to `JobService`, whose calls are all unary (a second is `INTERNAL`, as for any
//! request that is not well-formed gRPC). The caller's [`Identity`] rides on the request.

use crate::{
    auth::{Authenticated, Authenticator, Identity, Role, unauthenticated},
    metrics::{ProducerMetrics, Refusal},
};
use bytes::{Buf, Bytes};
use http_body::{Body, Frame};
use jobpipe_runtime::listener::PeerInfo;
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::sync::Semaphore;
use tonic::{
    Status,
    codegen::{BoxFuture, Service, http},
};
use tower::Layer;

/// The path prefix of the job service, whose calls are unary.
const JOB_SERVICE: &str = "/jobpipe.v1.JobService/";
/// The path prefix of the operations service.
const ADMIN_SERVICE: &str = "/jobpipe.v1.AdminService/";
/// The operations methods that only read, which the `read` role may call; every other
/// AdminService method changes dead letters and needs `admin`.
const READ_METHODS: [&str; 3] = [
    "/jobpipe.v1.AdminService/ListDeadLetters",
    "/jobpipe.v1.AdminService/GetDeadLetter",
    "/jobpipe.v1.AdminService/GetQueues",
];
/// The path prefix of gRPC health, open to every caller and never refused for load.
const HEALTH: &str = "/grpc.health.v1.Health/";
/// The path prefix of server reflection (both versions).
const REFLECTION: &str = "/grpc.reflection.";

/// Admission for every service of the gRPC server.
#[derive(Debug, Clone)]
pub(crate) struct AdmissionLayer {
    calls: Arc<Semaphore>,
    timeout: Duration,
    admin_timeout: Duration,
    /// `None`: authentication is off, every caller holds every role.
    authenticator: Option<Authenticator>,
    metrics: ProducerMetrics,
}

impl AdmissionLayer {
    /// At most `max_calls` at once, each within `timeout` (`admin_timeout` for the operations
    /// service), callers known to `authenticator`.
    pub(crate) fn new(
        max_calls: usize,
        (timeout, admin_timeout): (Duration, Duration),
        authenticator: Option<Authenticator>,
        metrics: ProducerMetrics,
    ) -> Self {
        Self {
            calls: Arc::new(Semaphore::new(max_calls)),
            timeout,
            admin_timeout,
            authenticator,
            metrics,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AdmissionLayer`] makes.
#[derive(Debug, Clone)]
pub(crate) struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

impl<S> Service<Request> for Admission<S>
where
    S: Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let layer = &self.layer;
        if request.method() != http::Method::POST {
            layer.metrics.refused(Refusal::NotGrpc);
            return answer(http_status(http::StatusCode::METHOD_NOT_ALLOWED));
        }
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/grpc"));
        if !grpc {
            layer.metrics.refused(Refusal::NotGrpc);
            return answer(http_status(http::StatusCode::UNSUPPORTED_MEDIA_TYPE));
        }
        let path = request.uri().path().to_owned();
        let health = path.starts_with(HEALTH);
        let identity = if health {
            unauthenticated()
        } else {
            match layer.authorize(&request, &path) {
                Ok(identity) => identity,
                Err((reason, status)) => {
                    layer.metrics.refused(reason);
                    return answer(status.into_http());
                }
            }
        };
        request.extensions_mut().insert(identity);
        let permit = if health {
            None
        } else {
            match layer.calls.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    layer.metrics.refused(Refusal::TooManyCalls);
                    let status = Status::resource_exhausted(
                        "too many calls in flight (grpc.max_concurrent_calls); retry later",
                    );
                    return answer(status.into_http());
                }
            }
        };
        let request = if path.starts_with(JOB_SERVICE) {
            request.map(|body| tonic::body::Body::new(OneMessage::new(body)))
        } else {
            request
        };
        // The service polled ready is `self.inner`; the clone takes its place for next time.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (timeout, setting) = if path.starts_with(ADMIN_SERVICE) {
            (layer.admin_timeout, "grpc.admin_request_timeout")
        } else {
            (layer.timeout, "grpc.request_timeout")
        };
        Box::pin(async move {
            let answered = tokio::time::timeout(timeout, inner.call(request)).await;
            drop(permit);
            answered.unwrap_or_else(|_| {
                Ok(
                    Status::deadline_exceeded(format!(
                        "the call did not complete within {setting}"
                    ))
                    .into_http(),
                )
            })
        })
    }
}

impl AdmissionLayer {
    /// Who calls, and whether they may make the call to `path`.
    fn authorize(&self, request: &Request, path: &str) -> Result<Identity, (Refusal, Status)> {
        let Some(authenticator) = &self.authenticator else {
            return Ok(unauthenticated());
        };
        let unauthenticated = |message: &str| {
            (
                Refusal::Unauthenticated,
                Status::unauthenticated(message.to_owned()),
            )
        };
        let token = match request.headers().get(http::header::AUTHORIZATION) {
            None => None,
            Some(value) => Some(
                value
                    .to_str()
                    .ok()
                    .and_then(|value| value.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        unauthenticated("the authorization header must be 'Bearer <token>'")
                    })?,
            ),
        };
        let certificate = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|peer| peer.certificate_name.as_deref());
        let Authenticated::As(identity) = authenticator.authenticate(token, certificate) else {
            return Err(unauthenticated("invalid credentials"));
        };
        let allowed = match required_role(path) {
            Needs::Role(role) => identity.has(role),
            Needs::Caller => identity.caller.is_some(),
        };
        if allowed {
            return Ok(identity);
        }
        if identity.caller.is_none() {
            return Err(unauthenticated("this call needs credentials"));
        }
        let needed = match required_role(path) {
            Needs::Role(role) => format!("the role '{}'", role.as_str()),
            Needs::Caller => "a listed caller".to_owned(),
        };
        Err((
            Refusal::PermissionDenied,
            Status::permission_denied(format!("caller '{}' lacks {needed}", identity.name())),
        ))
    }
}

/// What a call needs.
enum Needs {
    /// A role.
    Role(Role),
    /// Any caller from the callers file.
    Caller,
}

/// The role each service needs; a service added later is the admins' until it is listed here,
/// never open by default.
fn required_role(path: &str) -> Needs {
    if path.starts_with(JOB_SERVICE) {
        Needs::Role(Role::Submit)
    } else if READ_METHODS.contains(&path) {
        Needs::Role(Role::Read)
    } else if path.starts_with(REFLECTION) {
        Needs::Caller
    } else {
        Needs::Role(Role::Admin)
    }
}

fn answer<E: Send + 'static>(response: Response) -> BoxFuture<Response, E> {
    Box::pin(std::future::ready(Ok(response)))
}

fn http_status(status: http::StatusCode) -> Response {
    let mut response = http::Response::new(tonic::body::Body::default());
    *response.status_mut() = status;
    response
}

/// A request body that carries exactly one length-prefixed gRPC message: data past the end of the
/// first fails the call instead of being ignored.
struct OneMessage {
    inner: tonic::body::Body,
    /// The message's 5-byte prefix as it arrives (compression flag, big-endian length).
    prefix: Vec<u8>,
    /// Bytes of the message body still expected once the prefix is complete.
    remaining: Option<u64>,
}

impl OneMessage {
    fn new(inner: tonic::body::Body) -> Self {
        Self {
            inner,
            prefix: Vec::with_capacity(5),
            remaining: None,
        }
    }

    /// Accounts for `data`; `false` when it runs past the first message.
    fn take(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            match self.remaining {
                None => {
                    let wanted = 5 - self.prefix.len();
                    let (head, rest) = data.split_at(wanted.min(data.len()));
                    self.prefix.extend_from_slice(head);
                    data = rest;
                    if self.prefix.len() == 5 {
                        let length = [
                            self.prefix[1],
                            self.prefix[2],
                            self.prefix[3],
                            self.prefix[4],
                        ];
                        self.remaining = Some(u32::from_be_bytes(length).into());
                    }
                }
                Some(remaining) => {
                    let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
                    if len > remaining {
                        return false;
                    }
                    self.remaining = Some(remaining - len);
                    data = &[];
                }
            }
        }
        true
    }
}

impl Body for OneMessage {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref()
            && !self.take(data.chunk())
        {
            return Poll::Ready(Some(Err(Status::internal(
                "protocol error: a unary call carries exactly one message",
            ))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7, len as usize));
        bytes
    }

    #[test]
    fn one_message_in_any_chunks_passes_and_a_second_fails() {
        let one = message(10);
        for split in 0..one.len() {
            let mut body = OneMessage::new(tonic::body::Body::default());
            assert!(
                body.take(&one[..split]) && body.take(&one[split..]),
                "{split}"
            );
        }
        let mut two = message(3);
        two.extend(message(3));
        let mut body = OneMessage::new(tonic::body::Body::default());
        assert!(!body.take(&two));
        let mut body = OneMessage::new(tonic::body::Body::default());
        assert!(body.take(&message(0)) && !body.take(&[0]));
    }

    #[test]
    fn every_method_needs_a_role_and_unknown_ones_the_admins() {
        let cases = [
            ("/jobpipe.v1.JobService/SubmitJob", Some(Role::Submit)),
            ("/jobpipe.v1.JobService/SubmitJobs", Some(Role::Submit)),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                None,
            ),
            ("/jobpipe.v1.AdminService/ListDeadLetters", Some(Role::Read)),
            ("/jobpipe.v1.AdminService/GetDeadLetter", Some(Role::Read)),
            ("/jobpipe.v1.AdminService/GetQueues", Some(Role::Read)),
            (
                "/jobpipe.v1.AdminService/ReplayDeadLetters",
                Some(Role::Admin),
            ),
            (
                "/jobpipe.v1.AdminService/PurgeDeadLetters",
                Some(Role::Admin),
            ),
            (
                "/jobpipe.v1.AdminService/ListDeadLettersX",
                Some(Role::Admin),
            ),
            ("/anything.Else/Method", Some(Role::Admin)),
            ("/", Some(Role::Admin)),
        ];
        for (path, role) in cases {
            let needs = match required_role(path) {
                Needs::Role(role) => Some(role),
                Needs::Caller => None,
            };
            assert_eq!(needs, role, "{path}");
        }
    }
}

//! Where the producer is and how to reach it: plaintext for `http://`, verified TLS for
//! `https://` (never anything less), a client certificate for mutual TLS, a bearer token on
//! every call, and `--timeout` on everything that waits for the producer, so that no command
//! hangs on one that accepts connections and never answers.

use crate::{Error, Failure};
use clap::Args;
use std::{
    future::Future,
    path::PathBuf,
    time::{Duration, Instant},
};
use tonic::{
    Code, Request, Response, Status,
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

/// The connection options every command takes.
#[derive(Debug, Clone, Args)]
pub(crate) struct Target {
    /// The producer's gRPC address: `http://` for plaintext, `https://` for TLS.
    #[arg(
        long,
        env = "JOBPIPE_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    pub(crate) addr: String,
    /// PEM file of the CA to trust for `https://` (default: the system's roots).
    #[arg(long, env = "JOBPIPE_CA", global = true)]
    ca: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS.
    #[arg(long, env = "JOBPIPE_CERT", global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of `--cert`.
    #[arg(long, env = "JOBPIPE_KEY", global = true, requires = "cert")]
    key: Option<PathBuf>,
    /// A bearer token, sent with every call (prefer the environment: a flag shows in `ps`).
    #[arg(long, env = "JOBPIPE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// How long to wait for the producer, e.g. `30s`: to connect, and for the answer to each
    /// call (the call's deadline); 10s, and 2m for `dlq`, whose calls read a whole dead-letter
    /// queue. Give it before the command: `submit --timeout` is the job's.
    // Not `global`: `submit` and `demo` have a `--timeout` of their own.
    #[arg(long = "timeout", env = "JOBPIPE_TIMEOUT", value_parser = parse_timeout)]
    given_timeout: Option<Duration>,
    /// The timeout when none is given.
    #[arg(skip = DEFAULT_TIMEOUT)]
    default_timeout: Duration,
}

/// How long a call may take when `--timeout` says nothing.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A channel to the producer that gives every call its token and deadline.
pub(crate) type Grpc = InterceptedService<Channel, PerCall>;

impl Target {
    /// This target, waiting `default` when `--timeout` says nothing.
    pub(crate) fn waiting_by_default(&self, default: Duration) -> Self {
        Self {
            default_timeout: default,
            ..self.clone()
        }
    }

    fn timeout(&self) -> Duration {
        self.given_timeout.unwrap_or(self.default_timeout)
    }

    /// Connects, over TLS when the address says `https://`, within `--timeout`.
    pub(crate) async fn connect(&self) -> Result<Grpc, Error> {
        let addr = &self.addr;
        let tls = addr.starts_with("https://");
        if !tls && !addr.starts_with("http://") {
            return Err(Error::usage(format!(
                "--addr {addr}: expected http:// or https://"
            )));
        }
        let mut endpoint = Endpoint::from_shared(addr.clone())
            .map_err(|_| Error::usage(format!("--addr {addr}: not a valid address")))?
            // The TCP connect; the TLS handshake is bounded by the timeout around `connect`.
            .connect_timeout(self.timeout())
            // Every call, as tonic enforces it client-side (the demo's calls too).
            .timeout(self.timeout());
        if tls {
            endpoint = endpoint
                .tls_config(self.tls()?)
                .map_err(|error| Error::usage(format!("TLS settings: {}", causes(&error))))?;
        } else if self.ca.is_some() || self.cert.is_some() {
            return Err(Error::usage(format!(
                "--ca and --cert need an https:// address, not {addr}"
            )));
        }
        let token = match &self.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse::<AsciiMetadataValue>()
                    .map_err(|_| Error::usage("the token must be printable ASCII"))?,
            ),
            None => None,
        };
        let channel = match tokio::time::timeout(self.timeout(), endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => {
                return Err(Error::new(
                    Failure::Retryable,
                    format!("cannot reach the producer at {addr}: {}", causes(&error)),
                ));
            }
            Err(_) => {
                return Err(Error::new(
                    Failure::Retryable,
                    format!(
                        "cannot reach the producer at {addr}: not connected within {}",
                        humantime::format_duration(self.timeout())
                    ),
                ));
            }
        };
        let per_call = PerCall {
            token,
            timeout: self.timeout(),
        };
        Ok(InterceptedService::new(channel, per_call))
    }

    /// Awaits the answer to one call named `method` (e.g. `SubmitJob`), or an error naming it.
    /// The call carries its deadline (`--timeout`) and tonic enforces it; [`Self::within`] is
    /// the backstop should anything between the two not.
    pub(crate) async fn call<T>(
        &self,
        method: &str,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, Error> {
        self.within(method, async { call.await.map(Response::into_inner) })
            .await
    }

    /// Awaits one answer of `method` (a call's, or a stream's next message) for at most
    /// `--timeout`; a failed status becomes the error that names it.
    pub(crate) async fn within<T>(
        &self,
        method: &str,
        answer: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Error> {
        let started = Instant::now();
        match tokio::time::timeout(self.timeout(), answer).await {
            Ok(Ok(answer)) => Ok(answer),
            // tonic's own enforcement of the deadline answers CANCELLED.
            Ok(Err(status))
                if status.code() == Code::Cancelled && started.elapsed() >= self.timeout() =>
            {
                Err(self.no_answer(method))
            }
            Ok(Err(status)) => Err(Error::status(
                &format!("{method} at {}", self.addr),
                &status,
            )),
            Err(_) => Err(self.no_answer(method)),
        }
    }

    fn no_answer(&self, method: &str) -> Error {
        Error::new(
            Failure::Retryable,
            format!(
                "{method} at {}: no answer within {}",
                self.addr,
                humantime::format_duration(self.timeout())
            ),
        )
    }

    fn tls(&self) -> Result<ClientTlsConfig, Error> {
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca {
            Some(path) => tls.ca_certificate(Certificate::from_pem(read(path, "--ca")?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(
                read(cert, "--cert")?,
                read(key, "--key")?,
            ));
        }
        Ok(tls)
    }
}

/// A positive duration, e.g. `30s`.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be more than 0".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

fn read(path: &PathBuf, flag: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|error| Error::usage(format!("{flag}: cannot read {}: {error}", path.display())))
}

/// `error` and its causes, as one line (tonic's transport error says only "transport error").
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

/// Adds to every call its deadline (`grpc-timeout`, which the producer honours and tonic
/// enforces) and `authorization: Bearer <token>`, when there is a token.
#[derive(Debug, Clone)]
pub(crate) struct PerCall {
    token: Option<AsciiMetadataValue>,
    timeout: Duration,
}

impl Interceptor for PerCall {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request.set_timeout(self.timeout);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_is_a_positive_duration() {
        assert_eq!(parse_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("1m 500ms"), Ok(Duration::from_millis(60_500)));
        for text in ["0s", "", "ten seconds", "-1s"] {
            assert!(parse_timeout(text).is_err(), "{text:?}");
        }
    }
}

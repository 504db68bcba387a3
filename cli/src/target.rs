//! Where the producer is and how to reach it: plaintext for `http://`, verified TLS for
//! `https://` (never anything less), a client certificate for mutual TLS, and a bearer token on
//! every call.

use anyhow::{Context, bail};
use clap::Args;
use std::path::PathBuf;
use tonic::{
    Request, Status,
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
}

/// A channel to the producer that carries the token.
pub(crate) type Grpc = InterceptedService<Channel, BearerToken>;

impl Target {
    /// Connects, over TLS when the address says `https://`.
    pub(crate) async fn connect(&self) -> anyhow::Result<Grpc> {
        let addr = &self.addr;
        let mut endpoint = Endpoint::from_shared(addr.clone())
            .with_context(|| format!("{addr} is not a valid address"))?;
        if addr.starts_with("https://") {
            endpoint = endpoint.tls_config(self.tls()?)?;
        } else if self.ca.is_some() || self.cert.is_some() {
            bail!("--ca and --cert need an https:// address, not {addr}");
        }
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the producer at {addr}"))?;
        let token = match &self.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse::<AsciiMetadataValue>()
                    .context("the token must be printable ASCII")?,
            ),
            None => None,
        };
        Ok(InterceptedService::new(channel, BearerToken(token)))
    }

    fn tls(&self) -> anyhow::Result<ClientTlsConfig> {
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

fn read(path: &PathBuf, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
}

/// Adds `authorization: Bearer <token>` to every call, when there is a token.
#[derive(Debug, Clone)]
pub(crate) struct BearerToken(Option<AsciiMetadataValue>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

//! TLS for every hop, in one place. The client side (the broker connection, and any outbound
//! call) verifies the peer against the configured CA, or the system's roots, and its name, and
//! may present a certificate; the server side (the gRPC port) serves a certificate, may require
//! one from clients, and picks up new files when they change. Nothing here falls back to
//! plaintext: a setting that asks for TLS gets verified TLS, or an error naming the key.

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    crypto::{CryptoProvider, ring},
    server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::Deserialize;
use std::{io, path::Path, path::PathBuf, sync::Arc};

/// Client-side TLS settings: whom to trust and what to present. The broker connection
/// (`amqp.tls`) and outbound calls use the same shape.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// PEM file of the CA certificates to trust, and only those; unset: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain to present (mutual TLS); needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// The name the peer's certificate must carry, when it differs from the host in the address
    /// (connecting by IP to a certificate issued for a name). The check is never skipped.
    pub server_name: Option<String>,
}

/// The configuration keys a [`ClientTlsConfig`] was read from, for errors that name them.
#[derive(Debug, Clone, Copy)]
pub struct TlsKeys {
    /// The CA file's key, e.g. `amqp.tls.ca_file`.
    pub ca_file: &'static str,
    /// The certificate file's key.
    pub cert_file: &'static str,
    /// The key file's key.
    pub key_file: &'static str,
}

/// Why TLS settings cannot be used; the message names the key and never holds key material.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct TlsError {
    /// The configuration key.
    pub key: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl ClientTlsConfig {
    /// The rustls configuration these settings describe, with the files read now (so that a
    /// rotated client certificate is taken at the next connection).
    pub fn client_config(&self, keys: TlsKeys) -> Result<Arc<ClientConfig>, TlsError> {
        let roots = match &self.ca_file {
            Some(path) => root_store(path, keys.ca_file)?,
            None => system_roots(keys.ca_file)?,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| invalid(keys.ca_file, error))?
            .with_root_certificates(roots);
        let config = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert, keys.cert_file)?;
                let key = private_key(key, keys.key_file)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|error| invalid(keys.key_file, error))?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(invalid(keys.key_file, "is needed with the certificate"));
            }
            (None, Some(_)) => return Err(invalid(keys.cert_file, "is needed with the key")),
        };
        Ok(Arc::new(config))
    }
}

/// Says in a sentence which check a failed TLS handshake failed, for logs and readiness: never
/// key material, only what is wrong and which setting decides it.
pub fn describe_handshake_error(error: &io::Error, keys: TlsKeys) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    else {
        // With TLS 1.3 a server refusing the client's certificate may just drop the connection.
        let dropped = matches!(
            error.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
        );
        return if dropped {
            format!(
                "the server closed the connection during the TLS handshake: it may require a \
                 client certificate (set {} and {}) or refuse this one ({error})",
                keys.cert_file, keys.key_file
            )
        } else {
            format!("TLS handshake failed: {error}")
        };
    };
    match tls {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "the server's certificate is not signed by a trusted CA (set {})",
            keys.ca_file
        ),
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate is not valid for its address (its name or IP address is \
              not among the certificate's names)"
            .to_owned(),
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the server's certificate has expired".to_owned(),
        Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "the server's certificate is not valid yet".to_owned(),
        Error::AlertReceived(
            AlertDescription::CertificateRequired | AlertDescription::HandshakeFailure,
        ) => {
            format!(
                "the server refused the handshake: it may require a client certificate (set {} and {})",
                keys.cert_file, keys.key_file
            )
        }
        Error::AlertReceived(AlertDescription::UnknownCA | AlertDescription::BadCertificate) => {
            format!(
                "the server does not accept this client certificate ({})",
                keys.cert_file
            )
        }
        Error::AlertReceived(AlertDescription::CertificateExpired) => format!(
            "the server says this client certificate has expired ({})",
            keys.cert_file
        ),
        other => format!("TLS handshake failed: {other}"),
    }
}

/// Server-side TLS settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain to serve; TLS is on when this is set.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// PEM file of the CAs whose client certificates are accepted; set, every client must
    /// present one (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTlsConfig {
    /// Whether TLS is asked for.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some() || self.client_ca_file.is_some()
    }

    /// The rustls configuration, files read now, offering `alpn` protocols.
    pub fn server_config(
        &self,
        keys: TlsKeys,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) else {
            let missing = if self.cert_file.is_none() {
                keys.cert_file
            } else {
                keys.key_file
            };
            return Err(invalid(missing, "is needed for TLS"));
        };
        let chain = certificates(cert, keys.cert_file)?;
        let key = private_key(key, keys.key_file)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| invalid(keys.cert_file, error))?;
        let builder = match &self.client_ca_file {
            Some(path) => {
                let roots = Arc::new(root_store(path, keys.ca_file)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|error| invalid(keys.ca_file, error))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|error| invalid(keys.key_file, error))?;
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// The files to watch for rotation.
    pub fn files(&self) -> Vec<PathBuf> {
        [&self.cert_file, &self.key_file, &self.client_ca_file]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

/// The common name of a certificate's subject (the first one), or `None`.
pub fn subject_common_name(certificate: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref()).ok()?;
    let name = parsed
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(name)
}

/// ring: one provider for every TLS configuration, pure Rust and assembly (no C build).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn root_store(path: &Path, key: &'static str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certificates(path, key)?);
    if added == 0 {
        return Err(invalid(key, "holds no usable CA certificate"));
    }
    Ok(roots)
}

fn system_roots(key: &'static str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if roots.is_empty() {
        return Err(invalid(
            key,
            "is unset and the system has no trusted CA certificates: name the CA file",
        ));
    }
    Ok(roots)
}

fn certificates(path: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| invalid(key, format!("cannot read {}: {error}", path.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(key, format!("{} is not PEM: {error}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("{} holds no certificate", path.display()),
        ));
    }
    Ok(certs)
}

fn private_key(path: &Path, key: &'static str) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The parser's error names the problem, never the key's bytes.
    PrivateKeyDer::from_pem_file(path).map_err(|error| {
        invalid(
            key,
            format!("no private key read from {}: {error}", path.display()),
        )
    })
}

fn invalid(key: &'static str, reason: impl std::fmt::Display) -> TlsError {
    TlsError {
        key,
        reason: reason.to_string(),
    }
}

/// How often the server's certificate files are looked at for changes.
const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A server configuration that follows its files: they are read every few seconds, and the
/// configuration is rebuilt when one changed (a certificate renewed by cert-manager, a rotated
/// Secret); a set that does not load is logged and the previous configuration kept. A
/// connection takes the configuration current when it opens, so the ones already open are not
/// disturbed.
#[derive(Debug, Clone)]
pub struct ReloadingServerConfig {
    current: Arc<std::sync::RwLock<Arc<ServerConfig>>>,
}

impl ReloadingServerConfig {
    /// Loads `settings` (an error names the key) and keeps following its files until
    /// `shutdown`.
    pub fn start(
        settings: ServerTlsConfig,
        keys: TlsKeys,
        alpn: &'static [&'static [u8]],
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Self, TlsError> {
        let current = Arc::new(std::sync::RwLock::new(settings.server_config(keys, alpn)?));
        let reloading = Self { current };
        let watched = reloading.clone();
        tokio::spawn(async move {
            let mut seen = contents(&settings.files());
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RELOAD_EVERY) => {}
                }
                let now = contents(&settings.files());
                if now == seen {
                    continue;
                }
                match settings.server_config(keys, alpn) {
                    Ok(config) => {
                        *watched.current.write().unwrap_or_else(|e| e.into_inner()) = config;
                        tracing::info!("Reloaded the TLS certificate files.");
                        seen = now;
                    }
                    // A renewal may write the certificate and the key one after the other.
                    Err(error) => {
                        tracing::warn!(%error, "New TLS files do not load yet; keeping the previous ones.")
                    }
                }
            }
        });
        Ok(reloading)
    }

    /// The configuration for a connection opening now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What the files hold now (`None` for one that cannot be read).
fn contents(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|file| std::fs::read(file).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, CertificateError, Error};

    const KEYS: TlsKeys = TlsKeys {
        ca_file: "x.tls.ca_file",
        cert_file: "x.tls.cert_file",
        key_file: "x.tls.key_file",
    };

    #[test]
    fn each_failed_check_is_named_with_the_key_that_fixes_it() {
        let tls = |error: Error| io::Error::new(io::ErrorKind::InvalidData, error);
        let cases = [
            (
                tls(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
                "not signed by a trusted CA (set x.tls.ca_file)",
            ),
            (
                tls(Error::InvalidCertificate(CertificateError::NotValidForName)),
                "not valid for its address",
            ),
            (
                tls(Error::InvalidCertificate(CertificateError::Expired)),
                "the server's certificate has expired",
            ),
            (
                tls(Error::AlertReceived(AlertDescription::CertificateRequired)),
                "may require a client certificate (set x.tls.cert_file and x.tls.key_file)",
            ),
            (
                tls(Error::AlertReceived(AlertDescription::CertificateExpired)),
                "this client certificate has expired (x.tls.cert_file)",
            ),
            (
                io::Error::from(io::ErrorKind::ConnectionReset),
                "may require a client certificate (set x.tls.cert_file and x.tls.key_file)",
            ),
            (
                io::Error::from(io::ErrorKind::TimedOut),
                "TLS handshake failed",
            ),
        ];
        for (error, expected) in cases {
            let described = describe_handshake_error(&error, KEYS);
            assert!(described.contains(expected), "{error}: {described}");
        }
    }
}

//! The producer's configuration: one `Config`, loaded once by `main` (or built by a test) and
//! passed down. Every section has defaults, so an empty file is a working local setup.

use crate::auth::AuthConfig;
use jobpipe_proto::rules;
use jobpipe_runtime::{
    admin::AdminConfig,
    amqp::{AmqpConfig, TopologyConfig},
    queue_state::MetricsConfig,
    settings::{self, ConfigError, Env},
    telemetry::{LogConfig, TelemetryConfig},
    tls::{ServerTlsConfig, TlsKeys},
};
use serde::Deserialize;
use std::{net::SocketAddr, path::Path, time::Duration};

/// The largest `limits.max_payload_bytes` allowed.
const MAX_PAYLOAD_BYTES: usize = 64 << 20;

/// Everything the producer is configured with.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The gRPC endpoint.
    pub grpc: GrpcConfig,
    /// Who may call, and how they prove it.
    pub auth: AuthConfig,
    /// The admin endpoint (`/livez`, `/readyz`, `/metrics`).
    pub admin: AdminConfig,
    /// The broker.
    pub amqp: AmqpConfig,
    /// Broker object names and the queues declared at start.
    pub topology: TopologyConfig,
    /// Limits on what clients may submit.
    pub limits: Limits,
    /// Defaults and bounds for per-job settings.
    pub jobs: JobDefaults,
    /// Draining on SIGTERM.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
    /// Trace export.
    pub telemetry: TelemetryConfig,
    /// Queue depth polling for `/metrics`.
    pub metrics: MetricsConfig,
}

/// The gRPC endpoint, and what it takes from clients. Every bound has its documented error.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address and port.
    pub listen: SocketAddr,
    /// The largest request message accepted; larger requests fail with OUT_OF_RANGE before they
    /// are read. Unset: room for a job at the payload limit plus a full batch of 2 KiB jobs (see
    /// [`Config::max_request_bytes`]).
    pub max_request_bytes: Option<usize>,
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Calls in flight at once, health checks aside; more get RESOURCE_EXHAUSTED. With
    /// `max_request_bytes`, this bounds the memory requests can hold.
    pub max_concurrent_calls: usize,
    /// How long a call may take, reading its request included; then DEADLINE_EXCEEDED. Longer
    /// than `amqp.confirm_timeout`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long an `AdminService` call that reads a whole dead-letter queue may take (listing,
    /// showing, purging by filter: about 10 s per 100,000 entries); then DEADLINE_EXCEEDED.
    #[serde(with = "humantime_serde")]
    pub admin_request_timeout: Duration,
    /// How long a new connection may take to send its first byte.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How often the server pings a connection (HTTP/2 keepalive); one that does not answer within
    /// `keepalive_timeout` is closed (a peer that vanished without closing).
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// How long a connection lives, idle or busy; then the server asks the client to reconnect
    /// (HTTP/2 GOAWAY) and gives calls in flight `request_timeout` to finish (operations calls
    /// too: a replay cut there is run again, and continues where it stopped).
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
    /// TLS on the gRPC port: the certificate to serve and, for mutual TLS, the CA of client
    /// certificates. The files are read again when they change.
    pub tls: ServerTlsConfig,
    /// Serve server reflection (with authentication on, only to listed callers).
    pub reflection: bool,
}

/// The configuration keys of the gRPC port's TLS settings.
pub const GRPC_TLS_KEYS: TlsKeys = TlsKeys {
    ca_file: "grpc.tls.client_ca_file",
    cert_file: "grpc.tls.cert_file",
    key_file: "grpc.tls.key_file",
};

/// Limits on what clients may submit. Each has a documented error (see the proto).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The largest payload of one job; larger is RESOURCE_EXHAUSTED.
    pub max_payload_bytes: usize,
    /// The most jobs in one SubmitJobs call; more is INVALID_ARGUMENT.
    pub max_batch_jobs: usize,
}

/// Defaults and bounds for per-job settings a client may leave out.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobDefaults {
    /// Attempts a job gets when the client says 0.
    pub default_max_attempts: u32,
    /// The most attempts a client may ask for.
    pub max_attempts_cap: u32,
    /// The per-attempt deadline when the client gives none.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// The longest per-attempt deadline a client may ask for. Keep it below the broker's
    /// `consumer_timeout` (30 minutes by default), or the broker closes the consumer's channel.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
}

/// Draining on SIGTERM.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long in-flight RPCs may take to finish once draining starts.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Config {
    /// The largest request message: `grpc.max_request_bytes`, or room for one job at the payload
    /// limit plus a full batch of jobs of 2 KiB each (3 MiB with the default limits).
    pub fn max_request_bytes(&self) -> usize {
        self.grpc.max_request_bytes.unwrap_or_else(|| {
            self.limits
                .max_payload_bytes
                .saturating_add(self.limits.max_batch_jobs.saturating_mul(2 * 1024))
                .saturating_add(64 * 1024)
        })
    }

    /// Loads the configuration: defaults, then `file`, then `JOBPIPE__*` from `env`.
    pub fn load(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let mut config: Self = settings::load(file, env, &[])?;
        config.amqp.resolve_credentials()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules a value's type cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        let jobs = &self.jobs;
        if let Err(reason) = rules::check_max_attempts(jobs.max_attempts_cap) {
            return invalid("jobs.max_attempts_cap", &reason);
        }
        if jobs.default_max_attempts == 0 || jobs.default_max_attempts > jobs.max_attempts_cap {
            return invalid(
                "jobs.default_max_attempts",
                "must be between 1 and jobs.max_attempts_cap",
            );
        }
        if let Err(reason) = rules::check_timeout(jobs.max_timeout, rules::MAX_TIMEOUT) {
            return invalid("jobs.max_timeout", &reason);
        }
        if let Err(reason) = rules::check_timeout(jobs.default_timeout, jobs.max_timeout) {
            return invalid("jobs.default_timeout", &reason);
        }
        if self.limits.max_batch_jobs == 0 {
            return invalid("limits.max_batch_jobs", "must be at least 1");
        }
        if self.limits.max_payload_bytes > MAX_PAYLOAD_BYTES {
            return invalid(
                "limits.max_payload_bytes",
                "must be at most 67108864 (64 MiB): RabbitMQ refuses messages over 128 MiB, and \
                 large payloads belong in object storage, referenced from the job",
            );
        }
        if self.limits.max_payload_bytes >= self.max_request_bytes() {
            return invalid(
                "limits.max_payload_bytes",
                "must be below grpc.max_request_bytes",
            );
        }
        let grpc = &self.grpc;
        for (key, value) in [
            ("grpc.max_connections", grpc.max_connections),
            ("grpc.max_concurrent_calls", grpc.max_concurrent_calls),
        ] {
            if value == 0 {
                return invalid(key, "must be at least 1");
            }
        }
        for (key, value) in [
            ("grpc.handshake_timeout", grpc.handshake_timeout),
            ("grpc.keepalive_interval", grpc.keepalive_interval),
            ("grpc.keepalive_timeout", grpc.keepalive_timeout),
            ("grpc.max_connection_age", grpc.max_connection_age),
        ] {
            if value.is_zero() {
                return invalid(key, "must be positive");
            }
        }
        if grpc.tls.enabled() {
            grpc.tls
                .server_config(GRPC_TLS_KEYS, &[])
                .map_err(|error| ConfigError::Invalid {
                    key: error.key,
                    reason: error.reason,
                })?;
        }
        if let Some(path) = &self.auth.callers_file {
            crate::auth::check(path).map_err(|error| ConfigError::Invalid {
                key: "auth.callers_file",
                reason: error.to_string(),
            })?;
        }
        if grpc.request_timeout <= self.amqp.confirm_timeout {
            return invalid(
                "grpc.request_timeout",
                "must be longer than amqp.confirm_timeout: a submit waits for its confirm",
            );
        }
        if grpc.admin_request_timeout <= self.amqp.confirm_timeout {
            return invalid(
                "grpc.admin_request_timeout",
                "must be longer than amqp.confirm_timeout: a replay waits for its confirms",
            );
        }
        self.admin.validate()?;
        self.amqp.validate()?;
        self.log.validate()?;
        self.telemetry.validate()
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            max_request_bytes: None,
            max_connections: 1024,
            max_concurrent_calls: 256,
            request_timeout: Duration::from_secs(30),
            admin_request_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(600),
            tls: ServerTlsConfig::default(),
            reflection: true,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1 << 20,
            max_batch_jobs: 1000,
        }
    }
}

impl Default for JobDefaults {
    fn default() -> Self {
        Self {
            default_max_attempts: 5,
            max_attempts_cap: 25,
            default_timeout: Duration::from_secs(5 * 60),
            max_timeout: Duration::from_secs(25 * 60),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(25),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::HashMap, io::Write};

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::Map(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>(),
        )
    }

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(contents.as_bytes()).unwrap();
        file
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let file = file(
            "[topology]\nprefix = \"from-file\"\nqueues = [\"a\", \"b\"]\n\
             [limits]\nmax_batch_jobs = 10\n[amqp]\nheartbeat = \"7s\"\n",
        );
        let config = Config::load(
            Some(file.path()),
            env(&[
                ("JOBPIPE__TOPOLOGY__PREFIX", "from-env"),
                ("JOBPIPE__TOPOLOGY__QUEUES", "c,d"),
                ("JOBPIPE__SHUTDOWN__GRACE_PERIOD", "3s"),
            ]),
        )
        .unwrap();
        assert_eq!(config.topology.prefix.as_str(), "from-env");
        let queues: Vec<_> = config.topology.queues.iter().map(|q| q.as_str()).collect();
        assert_eq!(queues, ["c", "d"]);
        assert_eq!(config.limits.max_batch_jobs, 10, "from the file");
        assert_eq!(
            config.amqp.heartbeat,
            Duration::from_secs(7),
            "from the file"
        );
        assert_eq!(config.shutdown.grace_period, Duration::from_secs(3));
        assert_eq!(config.limits.max_payload_bytes, 1 << 20, "the default");
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("JOBPIPE__LIMITS__MAX_BATCH_JOBS", "many")],
                "limits.max_batch_jobs",
            ),
            (
                &[("JOBPIPE__LIMITS__MAX_BATCH_JOBS", "0")],
                "limits.max_batch_jobs",
            ),
            (
                &[("JOBPIPE__TOPOLOGY__PREFIX", "bad prefix")],
                "topology.prefix",
            ),
            (
                &[("JOBPIPE__TOPOLOGY__QUEUES", "ok,Not.Ok")],
                "topology.queues",
            ),
            (&[("JOBPIPE__AMQP__URL", "http://x")], "amqp.url"),
            (
                &[("JOBPIPE__GRPC__ADMIN_REQUEST_TIMEOUT", "0s")],
                "grpc.admin_request_timeout",
            ),
            (
                &[
                    ("JOBPIPE__AMQP__URL", "amqp://a:5672/%2f"),
                    ("JOBPIPE__AMQP__URLS", "amqp://b:5672/%2f"),
                ],
                "amqp.urls",
            ),
            (
                &[("JOBPIPE__AMQP__URLS", "amqp://a:5672/one,amqp://b:5672/two")],
                "amqp.urls",
            ),
            (
                &[(
                    "JOBPIPE__AMQP__URLS",
                    "amqps://a:5671/%2f,amqp://b:5672/%2f",
                )],
                "amqp.urls",
            ),
            (
                &[("JOBPIPE__AMQP__TLS__CA_FILE", "/etc/hostname")],
                "amqp.tls",
            ),
            (
                &[
                    ("JOBPIPE__AMQP__URL", "amqps://a:5671/%2f"),
                    ("JOBPIPE__AMQP__TLS__CA_FILE", "/nonexistent/ca.pem"),
                ],
                "amqp.tls.ca_file",
            ),
            (&[("JOBPIPE__AMQP__LOGIN", "certificate")], "amqp.login"),
            (&[("JOBPIPE__AMQP__HEARTBEAT", "soon")], "amqp.heartbeat"),
            (
                &[("JOBPIPE__JOBS__DEFAULT_MAX_ATTEMPTS", "99")],
                "jobs.default_max_attempts",
            ),
            (
                &[("JOBPIPE__JOBS__DEFAULT_TIMEOUT", "2h")],
                "jobs.default_timeout",
            ),
            (
                &[("JOBPIPE__LIMITS__MAX_PAYLOAD_BYTES", "999999999")],
                "limits.max_payload_bytes",
            ),
            (&[("JOBPIPE__GRPC__LISTEN", "nowhere")], "grpc.listen"),
            (&[("JOBPIPE__AMQP__NO_SUCH_KEY", "1")], "no_such_key"),
        ];
        for (pairs, key) in cases {
            let error = Config::load(None, env(pairs)).unwrap_err().to_string();
            assert!(
                error.contains(key),
                "{pairs:?}: {error:?} should name {key}"
            );
            assert!(!error.contains('\n'), "one line: {error:?}");
        }
    }

    #[test]
    fn several_broker_nodes_share_the_credentials_given_apart() {
        let config = Config::load(
            None,
            env(&[
                (
                    "JOBPIPE__AMQP__URLS",
                    "amqp://n1:5672/jobs,amqp://n2:5673/jobs",
                ),
                ("JOBPIPE__AMQP__USERNAME", "app"),
                ("JOBPIPE__AMQP__PASSWORD", "s3cret-pw"),
            ]),
        )
        .unwrap();
        let nodes: Vec<String> = config
            .amqp
            .addresses()
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(
            nodes,
            ["amqp://app:***@n1:5672/jobs", "amqp://app:***@n2:5673/jobs"]
        );
        let single = Config::load(None, env(&[])).unwrap();
        assert_eq!(single.amqp.addresses().len(), 1, "amqp.url alone");
    }

    #[test]
    fn the_password_stays_out_of_debug_output_and_errors() {
        let config = Config::load(
            None,
            env(&[("JOBPIPE__AMQP__URL", "amqp://u:hunter2-secret@h:5672/%2f")]),
        )
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2-secret"), "{printed}");
        assert!(printed.contains("u:***@h:5672"));
        let error = Config::load(
            None,
            env(&[("JOBPIPE__AMQP__URL", "amqp://u:hunter2-secret@h:notaport")]),
        )
        .unwrap_err()
        .to_string();
        assert!(!error.contains("hunter2-secret"), "{error}");
    }
}

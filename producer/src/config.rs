//! The producer's configuration: one `Config`, loaded once by `main` (or built by a test) and
//! passed down. Every section has defaults, so an empty file is a working local setup.

use jobpipe_proto::job::{MAX_ATTEMPTS, MAX_TIMEOUT};
use jobpipe_runtime::{
    admin::AdminConfig,
    amqp::{AmqpConfig, TopologyConfig},
    queue_state::MetricsConfig,
    settings::{self, ConfigError, Env},
    telemetry::{LogConfig, TelemetryConfig},
};
use serde::Deserialize;
use std::{net::SocketAddr, path::Path, time::Duration};

/// Everything the producer is configured with.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The gRPC endpoint.
    pub grpc: GrpcConfig,
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

/// The gRPC endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Address and port.
    pub listen: SocketAddr,
    /// The largest request message accepted; larger requests fail with OUT_OF_RANGE before they
    /// are read.
    pub max_request_bytes: usize,
}

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
        if jobs.max_attempts_cap == 0 {
            return invalid("jobs.max_attempts_cap", "must be at least 1");
        }
        if jobs.default_max_attempts == 0 || jobs.default_max_attempts > jobs.max_attempts_cap {
            return invalid(
                "jobs.default_max_attempts",
                "must be between 1 and jobs.max_attempts_cap",
            );
        }
        if jobs.max_timeout.is_zero() {
            return invalid("jobs.max_timeout", "must be positive");
        }
        if jobs.default_timeout.is_zero() || jobs.default_timeout > jobs.max_timeout {
            return invalid(
                "jobs.default_timeout",
                "must be positive and at most jobs.max_timeout",
            );
        }
        if self.limits.max_batch_jobs == 0 {
            return invalid("limits.max_batch_jobs", "must be at least 1");
        }
        if self.limits.max_payload_bytes >= self.grpc.max_request_bytes {
            return invalid(
                "limits.max_payload_bytes",
                "must be below grpc.max_request_bytes",
            );
        }
        if jobs.max_attempts_cap > MAX_ATTEMPTS {
            return invalid(
                "jobs.max_attempts_cap",
                &format!("must be at most {MAX_ATTEMPTS}"),
            );
        }
        if jobs.max_timeout > MAX_TIMEOUT {
            return invalid(
                "jobs.max_timeout",
                &format!("must be at most {}h", MAX_TIMEOUT.as_secs() / 3600),
            );
        }
        self.amqp.validate()?;
        self.log.validate()?;
        self.telemetry.validate()
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            max_request_bytes: 64 << 20,
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
                    "amqp://n1:5672/jobs,amqps://n2:5671/jobs",
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
            [
                "amqp://app:***@n1:5672/jobs",
                "amqps://app:***@n2:5671/jobs"
            ]
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

//! The consumer's configuration: one `Config`, loaded once by `main` (or built by a test) and
//! passed down.

use crate::{
    builtin::Builtin,
    retry::{RetryConfig, RetryPolicy},
    routes::{self, RouteConfig},
    scaling::ScalingConfig,
};
use jobpipe_runtime::{
    admin::AdminConfig,
    amqp::{AmqpConfig, TopologyConfig},
    queue_state::MetricsConfig,
    settings::{self, ConfigError, Env},
    telemetry::{LogConfig, TelemetryConfig},
};
use serde::Deserialize;
use std::{net::SocketAddr, path::Path, time::Duration};

/// Everything the consumer is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The admin endpoint (`/livez`, `/readyz`, `/metrics`).
    pub admin: AdminConfig,
    /// The broker.
    pub amqp: AmqpConfig,
    /// Broker object names; `topology.queues` are the queues consumed.
    pub topology: TopologyConfig,
    /// How much work runs at once.
    pub consumer: ConsumerSettings,
    /// The retry backoff.
    pub retry: RetryConfig,
    /// Which built-in handlers the binary registers.
    pub handlers: HandlerSettings,
    /// Where job types go: remote workers (HTTP, gRPC) or handlers by name (`[[routes]]`).
    pub routes: Vec<RouteConfig>,
    /// Draining on SIGTERM.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
    /// Trace export.
    pub telemetry: TelemetryConfig,
    /// Queue depth polling for `/metrics`.
    pub metrics: MetricsConfig,
    /// What the desired-replicas signal aims for.
    pub scaling: ScalingConfig,
}

/// How much work runs at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Deliveries the broker may send ahead, per queue (AMQP prefetch, per consumer).
    pub prefetch: u16,
    /// Jobs running at once in this process, across all its queues.
    pub concurrency: usize,
    /// This instance's name in failure histories and consumer tags; empty means
    /// `jobpipe-consumer@$HOSTNAME:pid`. Up to 128 printable ASCII characters.
    pub instance: String,
    /// The longest an attempt may run, whatever the job asks: keep it below RabbitMQ's
    /// `consumer_timeout` (30 minutes by default), past which the broker closes the channel.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
}

/// Which built-in handlers the binary registers (`noop`, `sleep`, `fail`, `crash`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandlerSettings {
    /// Their names. `crash` aborts the process and is meant for tests only.
    pub builtin: Vec<String>,
}

/// Draining on SIGTERM.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long running jobs may take to finish once draining starts. Keep the orchestrator's
    /// own grace period longer (the Helm chart derives it from this value).
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
}

impl Config {
    /// Loads the configuration: defaults, then `file`, then `JOBPIPE__*` from `env`.
    pub fn load(file: Option<&Path>, env: Env) -> Result<Self, ConfigError> {
        let mut config: Self = settings::load(file, env, &["handlers.builtin"])?;
        config.amqp.resolve_credentials()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules a value's type cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.topology.queues.is_empty() {
            return invalid("topology.queues", "must name at least one queue".into());
        }
        if self.consumer.prefetch == 0 {
            return invalid("consumer.prefetch", "must be at least 1".into());
        }
        if self.consumer.concurrency == 0 {
            return invalid("consumer.concurrency", "must be at least 1".into());
        }
        let instance = &self.consumer.instance;
        if instance.len() > 128 || !instance.bytes().all(|c| (b' '..=b'~').contains(&c)) {
            return invalid(
                "consumer.instance",
                "must be at most 128 printable ASCII characters".into(),
            );
        }
        if self.consumer.max_timeout.is_zero() {
            return invalid("consumer.max_timeout", "must be positive".into());
        }
        self.admin.validate()?;
        self.amqp.validate()?;
        self.log.validate()?;
        self.telemetry.validate()?;
        if let Err(error) = RetryPolicy::try_new(&self.retry) {
            return invalid(error.key(), error.to_string());
        }
        if let Some(unknown) = self
            .handlers
            .builtin
            .iter()
            .find(|name| Builtin::from_name(name).is_none())
        {
            return invalid(
                "handlers.builtin",
                format!(
                    "unknown built-in handler {unknown:?} (known: {})",
                    Builtin::ALL.map(Builtin::name).join(", ")
                ),
            );
        }
        if self.shutdown.grace_period.is_zero() {
            return invalid("shutdown.grace_period", "must be positive".into());
        }
        routes::parse(&self.routes)?;
        Ok(())
    }

    /// The instance name for failure histories.
    pub fn instance(&self) -> String {
        if self.consumer.instance.is_empty() {
            jobpipe_runtime::amqp::link::connection_name("jobpipe-consumer")
        } else {
            self.consumer.instance.clone()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            admin: AdminConfig {
                listen: SocketAddr::from(([0, 0, 0, 0], 9091)),
                ..AdminConfig::default()
            },
            amqp: AmqpConfig::default(),
            topology: TopologyConfig::default(),
            consumer: ConsumerSettings::default(),
            retry: RetryConfig::default(),
            handlers: HandlerSettings::default(),
            routes: Vec::new(),
            shutdown: ShutdownConfig::default(),
            log: LogConfig::default(),
            telemetry: TelemetryConfig::default(),
            metrics: MetricsConfig::default(),
            scaling: ScalingConfig::default(),
        }
    }
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            // Measured (BENCHMARKS.md, "Against the broker's limit"): prefetch decides how close
            // the broker gets to its limit; 128 / 64 keeps a consumer under 20 MiB with 1 KiB
            // jobs and holds the chart's sizing rule (prefetch x queues <= 2 x concurrency).
            prefetch: 128,
            concurrency: 64,
            instance: String::new(),
            max_timeout: Duration::from_secs(25 * 60),
        }
    }
}

impl Default for HandlerSettings {
    fn default() -> Self {
        Self {
            builtin: ["noop", "sleep", "fail"].map(String::from).to_vec(),
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>();
        Config::load(None, Env::Map(env))
    }

    #[test]
    fn defaults_and_overrides() {
        let config = load(&[
            ("JOBPIPE__CONSUMER__PREFETCH", "64"),
            ("JOBPIPE__RETRY__BASE", "250ms"),
            ("JOBPIPE__RETRY__JITTER", "none"),
            ("JOBPIPE__HANDLERS__BUILTIN", "noop,crash"),
        ])
        .unwrap();
        assert_eq!(config.consumer.prefetch, 64);
        assert_eq!(config.consumer.concurrency, 64, "the default");
        assert_eq!(config.retry.base, Duration::from_millis(250));
        assert_eq!(config.handlers.builtin, ["noop", "crash"]);
        assert_eq!(config.admin.listen.port(), 9091);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("JOBPIPE__CONSUMER__PREFETCH", "0", "consumer.prefetch"),
            ("JOBPIPE__CONSUMER__PREFETCH", "70000", "consumer.prefetch"),
            (
                "JOBPIPE__CONSUMER__CONCURRENCY",
                "0",
                "consumer.concurrency",
            ),
            ("JOBPIPE__RETRY__MULTIPLIER", "0.5", "retry.multiplier"),
            ("JOBPIPE__RETRY__BASE", "0s", "retry.base"),
            ("JOBPIPE__RETRY__MAX_DELAY", "10ms", "retry.max_delay"),
            ("JOBPIPE__RETRY__JITTER", "some", "retry.jitter"),
            (
                "JOBPIPE__HANDLERS__BUILTIN",
                "noop,nope",
                "handlers.builtin",
            ),
            (
                "JOBPIPE__SHUTDOWN__GRACE_PERIOD",
                "0s",
                "shutdown.grace_period",
            ),
        ];
        for (key, value, named) in cases {
            let error = load(&[(key, value)]).unwrap_err().to_string();
            assert!(error.contains(named), "{key}={value}: {error}");
        }
    }
}

//! Broker settings both services share: where the broker is, how the link is supervised, and how
//! the topology is named and declared.

use crate::{
    settings::ConfigError,
    tls::{ClientTlsConfig, TlsKeys},
};
use jobpipe_proto::{
    names::{Prefix, QueueName},
    topology::{Plan, QueueOptions, QueueType, Topology},
};
use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};
use serde::Deserialize;
use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

/// RabbitMQ's default `frame_max`: the largest frame it accepts from a publisher, and so the
/// largest it forwards to a consumer.
pub const MIN_FRAME_MAX: u32 = 128 * 1024;

/// How to reach the broker and how patiently.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost`. The password never appears in logs or errors.
    pub url: AmqpUrl,
    /// Several nodes of one cluster, instead of `url`: connections go to the first that answers
    /// and move to the next when the node in use fails. Same vhost for all.
    pub urls: Vec<AmqpUrl>,
    /// Start with a random node of `urls` rather than the first, so that the services' connections
    /// spread over the cluster.
    pub shuffle_urls: bool,
    /// The user name, overriding the URL's (for credentials kept apart from the address, as a
    /// Kubernetes Secret holds them). Empty: the URL's.
    pub username: String,
    /// The password, overriding the URL's. Empty: the URL's (or `password_file`'s).
    pub password: Secret,
    /// A file holding the password (a mounted Secret), read at start; a trailing newline is
    /// ignored. Wins over `password`.
    pub password_file: Option<PathBuf>,
    /// How the service logs in: with the password, or (`external`) with its TLS client
    /// certificate, RabbitMQ's `EXTERNAL` mechanism (the `rabbitmq_auth_mechanism_ssl` plugin).
    pub login: Login,
    /// TLS for `amqps://` URLs: the CA to trust (default: the system's roots), a client
    /// certificate, the name to verify. Set for a plain `amqp://` URL, it is refused.
    pub tls: ClientTlsConfig,
    /// AMQP heartbeat: a dead link is noticed within about two of these.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// How long one connection attempt may take.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long a publish may wait for the broker's confirm before its outcome is called unknown.
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// How long one step of (re)connecting may take: the AMQP handshake, declaring the topology,
    /// opening the publisher channel. Past it the attempt is abandoned and the next one starts.
    #[serde(with = "humantime_serde")]
    pub recovery_timeout: Duration,
    /// The largest AMQP frame asked of the broker, in bytes: at least RabbitMQ's own limit
    /// (131072 by default), so that every message the broker accepted from any publisher can be
    /// read. A message's properties travel in one frame; jobpipe's own stay under 48 KiB.
    pub frame_max: u32,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: AmqpUrl::local(),
            urls: Vec::new(),
            shuffle_urls: false,
            username: String::new(),
            password: Secret::default(),
            password_file: None,
            login: Login::Password,
            tls: ClientTlsConfig::default(),
            heartbeat: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            confirm_timeout: Duration::from_secs(10),
            recovery_timeout: Duration::from_secs(30),
            frame_max: MIN_FRAME_MAX,
        }
    }
}

impl AmqpConfig {
    /// Checks the rules the types cannot express; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if self.heartbeat < Duration::from_secs(1) {
            // AMQP heartbeats are whole seconds; below one, none would be sent.
            return invalid("amqp.heartbeat", "must be at least 1s");
        }
        for (key, value) in [
            ("amqp.connect_timeout", self.connect_timeout),
            ("amqp.confirm_timeout", self.confirm_timeout),
            ("amqp.recovery_timeout", self.recovery_timeout),
        ] {
            if value.is_zero() {
                return invalid(key, "must be positive");
            }
        }
        if !self.urls.is_empty() && self.url.0 != AmqpUrl::local().0 {
            return invalid("amqp.urls", "set amqp.url or amqp.urls, not both");
        }
        if let Some(first) = self.urls.first()
            && self.urls.iter().any(|url| url.0.vhost != first.0.vhost)
        {
            return invalid("amqp.urls", "every node must name the same vhost");
        }
        let encrypted = self
            .addresses()
            .iter()
            .map(|url| url.0.scheme == AMQPScheme::AMQPS);
        let encrypted: Vec<bool> = encrypted.collect();
        if encrypted.iter().any(|tls| *tls) {
            if encrypted.iter().any(|tls| !tls) {
                return invalid("amqp.urls", "every node must use amqps:// when one does");
            }
            self.tls
                .client_config(TLS_KEYS)
                .map_err(|error| ConfigError::Invalid {
                    key: error.key,
                    reason: error.reason,
                })?;
        } else if self.tls != ClientTlsConfig::default() {
            return invalid(
                "amqp.tls",
                "is set, but the broker URL is not amqps://: use amqps:// (TLS is never skipped)",
            );
        }
        if self.login == Login::Certificate
            && (self.tls.cert_file.is_none() || !encrypted.iter().any(|tls| *tls))
        {
            return invalid(
                "amqp.login",
                "certificate login needs an amqps:// URL and amqp.tls.cert_file",
            );
        }
        if self.frame_max < MIN_FRAME_MAX {
            return invalid(
                "amqp.frame_max",
                "must be at least 131072 (RabbitMQ's limit for publishers): a message whose \
                 properties fill a frame the broker accepted must not be too large to read",
            );
        }
        Ok(())
    }

    /// The URI to connect to for node `url`, with this configuration's connection settings.
    pub(crate) fn connection_uri(&self, url: &AmqpUrl) -> AMQPUri {
        let mut uri = url.uri().clone();
        uri.query.heartbeat = Some(u16::try_from(self.heartbeat.as_secs()).unwrap_or(60));
        uri.query.connection_timeout = u64::try_from(self.connect_timeout.as_millis()).ok();
        uri.query.frame_max = Some(self.frame_max);
        if self.login == Login::Certificate {
            uri.query.auth_mechanism = Some(SASLMechanism::External);
        }
        uri
    }

    /// The broker nodes to connect to, in order: `urls`, or `url` alone.
    pub fn addresses(&self) -> &[AmqpUrl] {
        if self.urls.is_empty() {
            std::slice::from_ref(&self.url)
        } else {
            &self.urls
        }
    }

    /// The index of the node to try first: 0, or a random one with `shuffle_urls`.
    pub(crate) fn first_address(&self) -> usize {
        let count = self.addresses().len();
        if !self.shuffle_urls || count < 2 {
            return 0;
        }
        // Random enough to spread connections: the clock's nanoseconds and the process id.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |now| now.subsec_nanos());
        (nanos as usize ^ std::process::id() as usize) % count
    }

    /// Folds `username`, `password` and `password_file` into the URL the connection uses.
    /// Called once when the configuration loads; the error names the key.
    pub fn resolve_credentials(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Invalid {
                key: "amqp.password_file",
                reason: format!("cannot read {}: {}", path.display(), error.kind()),
            })?;
            self.password = Secret(text.trim_end_matches(['\n', '\r']).to_owned());
        }
        let nodes = if self.urls.is_empty() {
            std::slice::from_mut(&mut self.url)
        } else {
            &mut self.urls[..]
        };
        for url in nodes {
            let userinfo = &mut url.0.authority.userinfo;
            if !self.username.is_empty() {
                userinfo.username.clone_from(&self.username);
            }
            if !self.password.0.is_empty() {
                userinfo.password.clone_from(&self.password.0);
            }
        }
        Ok(())
    }
}

/// The configuration keys of the broker's TLS settings.
pub const TLS_KEYS: TlsKeys = TlsKeys {
    ca_file: "amqp.tls.ca_file",
    cert_file: "amqp.tls.cert_file",
    key_file: "amqp.tls.key_file",
};

/// How a service logs in to the broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Login {
    /// User name and password (`PLAIN`).
    #[default]
    Password,
    /// The TLS client certificate (`EXTERNAL`): the broker takes the user from it.
    Certificate,
}

/// A secret string: its `Debug` never shows it.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// Which broker objects a service declares, and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopologyConfig {
    /// The prefix of every exchange and queue name.
    pub prefix: Prefix,
    /// The work queues this service declares at start (the consumer also consumes them).
    pub queues: Vec<QueueName>,
    /// The work queues' type. Every service sharing a queue must agree.
    pub queue_type: QueueType,
    /// Deliveries of one message before the broker dead-letters it (quorum queues).
    pub delivery_limit: u32,
    /// The most ready messages a work queue holds; 0 = unbounded. Beyond it, submissions fail
    /// with RESOURCE_EXHAUSTED.
    pub max_length: u64,
    /// Declare the topology at start (and after reconnects). When false, only check that it
    /// exists: an operator or a deploy job owns it, and the service may hold fewer permissions.
    pub declare: bool,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        Self {
            prefix: Prefix::try_new("jobpipe").expect("the default prefix is valid"),
            queues: vec![QueueName::default_queue()],
            queue_type: QueueType::Quorum,
            delivery_limit: 5,
            max_length: 0,
            declare: true,
        }
    }
}

impl TopologyConfig {
    /// The names of this installation's broker objects.
    pub fn topology(&self) -> Topology {
        Topology::new(self.prefix.clone())
    }

    /// Every broker object of this configuration: its queues, their dead-letter queues and the
    /// delay ladder.
    pub fn plan(&self) -> Plan {
        self.topology().plan(&self.queues, &self.queue_options())
    }

    /// How work queues are declared.
    pub fn queue_options(&self) -> QueueOptions {
        QueueOptions {
            queue_type: self.queue_type,
            delivery_limit: self.delivery_limit,
            max_length: (self.max_length > 0).then_some(self.max_length),
        }
    }
}

/// A broker URL whose password is redacted whenever it is printed.
#[derive(Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct AmqpUrl(AMQPUri);

impl AmqpUrl {
    /// The local broker with RabbitMQ's default credentials.
    pub fn local() -> Self {
        Self::from_str("amqp://guest:guest@127.0.0.1:5672/%2f").expect("the default URL is valid")
    }

    /// The parsed URI, for connecting. Never log it: lapin's types print the password.
    pub(crate) fn uri(&self) -> &AMQPUri {
        &self.0
    }

    /// Whether it asks for TLS (`amqps://`).
    pub fn is_tls(&self) -> bool {
        self.0.scheme == AMQPScheme::AMQPS
    }

    /// Host and port, for logs and messages.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.0.authority.host, self.0.authority.port)
    }
}

impl FromStr for AmqpUrl {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        // The parser's own message may quote the URL, password included: say only what is wrong.
        AMQPUri::from_str(value)
            .map(Self)
            .map_err(|_| "not a valid amqp:// or amqps:// URL".to_owned())
    }
}

impl TryFrom<String> for AmqpUrl {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let uri = &self.0;
        let user = &uri.authority.userinfo.username;
        write!(
            f,
            "{}://{user}:***@{}/{}",
            uri.scheme,
            self.endpoint(),
            uri.vhost
        )
    }
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AmqpUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printing_never_shows_the_password() {
        let url: AmqpUrl = "amqp://app:s3cr3t-pw@broker:5673/prod".parse().unwrap();
        for printed in [
            url.to_string(),
            format!("{url:?}"),
            format!(
                "{:?}",
                AmqpConfig {
                    url: url.clone(),
                    ..AmqpConfig::default()
                }
            ),
        ] {
            assert!(!printed.contains("s3cr3t-pw"), "{printed}");
            assert!(printed.contains("app:***@broker:5673"), "{printed}");
        }
    }

    #[test]
    fn parse_errors_do_not_quote_the_url() {
        let error = "http://u:s3cr3t@h".parse::<AmqpUrl>().err().unwrap();
        assert!(!error.contains("s3cr3t"));
    }

    #[test]
    fn credentials_apart_from_the_url_override_it_and_stay_hidden() {
        let dir = std::env::temp_dir().join(format!("jobpipe-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "from-file-secret\n").unwrap();
        let mut config = AmqpConfig {
            url: "amqp://guest:guest@broker:5672/%2f".parse().unwrap(),
            username: "app".into(),
            password: Secret("from-env-secret".into()),
            password_file: Some(file.clone()),
            ..AmqpConfig::default()
        };
        assert!(!format!("{config:?}").contains("from-env-secret"));
        config.resolve_credentials().unwrap();
        let userinfo = &config.url.uri().authority.userinfo;
        assert_eq!(
            (userinfo.username.as_str(), userinfo.password.as_str()),
            ("app", "from-file-secret")
        );
        let printed = format!("{config:?}");
        assert!(
            !printed.contains("from-file-secret") && !printed.contains("from-env-secret"),
            "{printed}"
        );
        let missing = AmqpConfig {
            password_file: Some(dir.join("nope")),
            ..AmqpConfig::default()
        }
        .resolve_credentials()
        .unwrap_err()
        .to_string();
        assert!(
            missing.starts_with("amqp.password_file: cannot read"),
            "{missing}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn max_length_zero_means_unbounded() {
        let config = TopologyConfig::default();
        assert_eq!(config.queue_options().max_length, None);
        let bounded = TopologyConfig {
            max_length: 10,
            ..config
        };
        assert_eq!(bounded.queue_options().max_length, Some(10));
    }
}

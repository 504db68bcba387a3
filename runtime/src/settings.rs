//! Layered configuration for every binary: built-in defaults, then an optional TOML file, then
//! `JOBPIPE__SECTION__KEY` environment variables. Each binary owns one `Config` type and loads it
//! here, once.

use config::{Config, Environment, File, FileFormat};
use serde::de::DeserializeOwned;
use std::{collections::HashMap, path::Path};

/// The environment variable prefix (`JOBPIPE__AMQP__URL` sets `amqp.url`).
pub const ENV_PREFIX: &str = "JOBPIPE";

/// Where environment overrides come from.
#[derive(Debug, Clone)]
pub enum Env {
    /// The process environment.
    Process,
    /// A fixed map, for tests: `JOBPIPE__...` names to values.
    Map(HashMap<String, String>),
}

/// Why configuration was refused. The message names the key and fits on one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read, or a value has the wrong type or shape.
    #[error("{0}")]
    Load(String),
    /// A value has the right type but breaks a rule.
    #[error("{key}: {reason}")]
    Invalid {
        /// The dotted key, e.g. `shutdown.grace_period`.
        key: &'static str,
        /// The rule it breaks.
        reason: String,
    },
}

/// The list keys of the sections every service shares.
const SHARED_LIST_KEYS: [&str; 2] = ["amqp.urls", "topology.queues"];

/// Loads `T` from its serde defaults, `file` (if given) and `env`. `list_keys` are the service's
/// own dotted keys whose environment value is a comma-separated list (`JOBPIPE__TOPOLOGY__QUEUES=a,b`
/// is one of the shared ones).
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    env: Env,
    list_keys: &[&str],
) -> Result<T, ConfigError> {
    let mut builder = Config::builder();
    if let Some(path) = file {
        builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
    }
    let mut environment = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",");
    for key in SHARED_LIST_KEYS.iter().chain(list_keys) {
        environment = environment.with_list_parse_key(key);
    }
    if let Env::Map(map) = env {
        environment = environment.source(Some(map));
    }
    builder
        .add_source(environment)
        .build()
        .and_then(Config::try_deserialize)
        .map_err(|error| ConfigError::Load(one_line(&error.to_string())))
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

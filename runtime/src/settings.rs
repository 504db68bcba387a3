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
        .map_err(|error| ConfigError::Load(describe(&error)))
}

/// One line naming the key and what it must be, never the value given: a password typed into
/// the wrong key, or a TOML file with a password on a broken line, must not reach a log.
fn describe(error: &config::ConfigError) -> String {
    use config::ConfigError as E;
    match error {
        E::Type { key, expected, .. } => {
            format!(
                "{}: expected {expected}",
                key.as_deref().unwrap_or("a value")
            )
        }
        E::At { error, key, .. } => match key {
            Some(key) => format!("{key}: {}", describe_inner(error)),
            None => describe(error),
        },
        E::FileParse { uri, cause } => {
            // The parser's first line says where; the lines after it quote the file.
            let first = cause
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            format!(
                "{}: {first}",
                uri.as_deref().unwrap_or("the configuration file")
            )
        }
        other => redact_quotes(&one_line(&other.to_string())),
    }
}

/// [`describe`] for an error that a key already prefixes.
fn describe_inner(error: &config::ConfigError) -> String {
    match error {
        config::ConfigError::Type { expected, .. } => format!("expected {expected}"),
        other => describe(other),
    }
}

/// The text with every quoted part replaced: serde quotes the value it could not take.
fn redact_quotes(text: &str) -> String {
    let mut redacted = String::with_capacity(text.len());
    let mut quoted = false;
    for c in text.chars() {
        if c == '"' {
            if !quoted {
                redacted.push_str("\"…");
            } else {
                redacted.push('"');
            }
            quoted = !quoted;
        } else if !quoted {
            redacted.push(c);
        }
    }
    redacted
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Sample {
        #[serde(default)]
        port: u16,
        #[serde(default, with = "humantime_serde")]
        wait: std::time::Duration,
    }

    #[test]
    fn errors_name_the_key_and_never_the_value() {
        let secret = "hunter2-Secret";
        for (key, value) in [("JOBPIPE__PORT", secret), ("JOBPIPE__WAIT", secret)] {
            let env = Env::Map([(key.to_owned(), value.to_owned())].into());
            let error = load::<Sample>(None, env, &[]).unwrap_err().to_string();
            assert!(!error.contains("hunter2"), "{error}");
            let named = key.trim_start_matches("JOBPIPE__").to_lowercase();
            assert!(error.contains(&named), "{error}");
        }
        let dir = std::env::temp_dir().join(format!("jobpipe-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("broken.toml");
        std::fs::write(&file, format!("port = \"{secret}\nwait = 1\n")).unwrap();
        let error = load::<Sample>(Some(&file), Env::Map(Default::default()), &[])
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert!(!error.contains('\n'), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! Who is calling and what they may do. Callers are listed in a file (a mounted Secret, read
//! again when it changes): each has a name, roles, optionally the queues and job types it may
//! submit to, and the credentials that prove it: the SHA-256 of a bearer token (never the token
//! itself) and/or the common name of its client certificate (mutual TLS).
//!
//! ```toml
//! [[callers]]
//! name = "billing"
//! roles = ["submit"]
//! queues = ["emails"]            # may submit only here (default: anywhere)
//! job_types = ["email.*"]        # exact names or a trailing `*` (default: any)
//! token_sha256 = "9f86d0…"       # `printf %s "$TOKEN" | sha256sum`
//! certificate = "billing"        # its client certificate's subject CN
//! ```
//!
//! Roles: `submit` (the job service), `read` (seeing queues and dead letters), `admin`
//! (replaying and purging dead letters). Health is open to everyone, for probes.

use jobpipe_proto::names::{JobType, QueueName};
use serde::Deserialize;
use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the callers file is read for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// A permission a caller may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submitting jobs (`jobpipe.v1.JobService`).
    Submit,
    /// Reading queues and dead letters.
    Read,
    /// Changing dead letters: replaying and purging.
    Admin,
}

impl Role {
    /// The name in the callers file and in refusals.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Read => "read",
            Self::Admin => "admin",
        }
    }
}

/// Authentication settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The callers file. Set, every call but health needs a credential (or the anonymous
    /// roles); unset, authentication is off and every caller holds every role.
    pub callers_file: Option<PathBuf>,
    /// Roles of callers that present no credential, with authentication on. None by default.
    pub anonymous_roles: Vec<Role>,
}

/// One caller from the callers file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caller {
    /// Its name in logs, metrics and a job's `x-jobpipe-submitted-by`.
    pub name: JobType,
    /// What it may do.
    pub roles: Vec<Role>,
    /// The queues it may submit to; empty: any.
    #[serde(default)]
    pub queues: Vec<QueueName>,
    /// The job types it may submit; exact names or a prefix ending in `*`; empty: any.
    #[serde(default)]
    pub job_types: Vec<String>,
    /// The SHA-256 of its bearer token, in hex.
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// The subject common name of its client certificate.
    #[serde(default)]
    pub certificate: Option<String>,
}

/// Who made a call: a listed caller, or anonymous.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The caller, `None` for anonymous.
    pub caller: Option<Arc<Caller>>,
    /// Its roles.
    pub roles: Vec<Role>,
}

/// The name anonymous callers go by.
pub const ANONYMOUS: &str = "anonymous";

impl Identity {
    /// The name for logs, metrics and headers.
    pub fn name(&self) -> &str {
        self.caller
            .as_ref()
            .map_or(ANONYMOUS, |caller| caller.name.as_str())
    }

    /// Whether it holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Why it may not submit a job of `job_type` to `queue`, if it may not.
    pub fn refuses(&self, queue: &QueueName, job_type: &JobType) -> Option<(&'static str, String)> {
        let caller = self.caller.as_ref()?;
        if !caller.queues.is_empty() && !caller.queues.contains(queue) {
            return Some((
                "queue",
                format!("caller '{}' may not submit to queue '{queue}'", caller.name),
            ));
        }
        let allowed = |pattern: &String| match pattern.strip_suffix('*') {
            Some(prefix) => job_type.as_str().starts_with(prefix),
            None => pattern == job_type.as_str(),
        };
        if !caller.job_types.is_empty() && !caller.job_types.iter().any(allowed) {
            return Some((
                "type",
                format!(
                    "caller '{}' may not submit jobs of type '{job_type}'",
                    caller.name
                ),
            ));
        }
        None
    }
}

/// Why the callers file cannot be used; names the file and the caller, never a credential.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(String);

/// The callers of a callers file, each with its token's SHA-256 when it has one.
type Callers = Vec<(Arc<Caller>, Option<[u8; 32]>)>;

/// The callers, kept current with their file.
#[derive(Debug, Clone)]
pub struct Authenticator {
    callers: Arc<RwLock<Arc<Callers>>>,
    anonymous_roles: Vec<Role>,
}

/// The outcome of looking at a call's credentials.
#[derive(Debug)]
pub enum Authenticated {
    /// Known (or anonymous without credentials).
    As(Identity),
    /// A credential was presented and matches no caller.
    Refused,
}

impl Authenticator {
    /// Reads the callers file (an error names it) and follows it until `shutdown`.
    pub fn start(
        config: &AuthConfig,
        shutdown: CancellationToken,
    ) -> Result<Option<Self>, AuthError> {
        let Some(path) = config.callers_file.clone() else {
            return Ok(None);
        };
        let authenticator = Self {
            callers: Arc::new(RwLock::new(Arc::new(load(&path)?))),
            anonymous_roles: config.anonymous_roles.clone(),
        };
        let watched = authenticator.clone();
        tokio::spawn(async move {
            let mut seen = std::fs::read(&path).ok();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RELOAD_EVERY) => {}
                }
                let now = std::fs::read(&path).ok();
                if now == seen {
                    continue;
                }
                match load(&path) {
                    Ok(callers) => {
                        info!(callers = callers.len(), "Reloaded the callers file.");
                        *watched.callers.write().unwrap_or_else(|e| e.into_inner()) =
                            Arc::new(callers);
                        seen = now;
                    }
                    Err(error) => {
                        warn!(%error, "The callers file does not load; keeping the previous callers.")
                    }
                }
            }
        });
        Ok(Some(authenticator))
    }

    /// Who presents `token` (a bearer token) and/or a client certificate named `certificate`.
    /// Every token hash is compared, in constant time, whatever matches.
    pub fn authenticate(&self, token: Option<&str>, certificate: Option<&str>) -> Authenticated {
        let callers = self
            .callers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let found = match token {
            Some(token) => {
                let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
                let mut found = None;
                for (caller, hash) in callers.iter() {
                    if hash.is_some_and(|hash| constant_time_eq(&hash, digest.as_ref())) {
                        found = Some(caller.clone());
                    }
                }
                let Some(caller) = found else {
                    return Authenticated::Refused;
                };
                Some(caller)
            }
            None => certificate.and_then(|name| {
                callers
                    .iter()
                    .find(|(caller, _)| caller.certificate.as_deref() == Some(name))
                    .map(|(caller, _)| caller.clone())
            }),
        };
        Authenticated::As(match found {
            Some(caller) => Identity {
                roles: caller.roles.clone(),
                caller: Some(caller),
            },
            None => Identity {
                caller: None,
                roles: self.anonymous_roles.clone(),
            },
        })
    }
}

/// The identity of every call when authentication is off: anonymous, with every role.
pub fn unauthenticated() -> Identity {
    Identity {
        caller: None,
        roles: vec![Role::Submit, Role::Read, Role::Admin],
    }
}

/// The caller the admission layer identified on `request` (anonymous with every role when it
/// did not run: authentication off, or a test calling a service directly).
pub fn identity<T>(request: &tonic::Request<T>) -> Identity {
    request
        .extensions()
        .get::<Identity>()
        .cloned()
        .unwrap_or_else(unauthenticated)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallersFile {
    #[serde(default)]
    callers: Vec<Caller>,
}

/// Checks that the callers file loads (for `--check-config` and start-up).
pub fn check(path: &Path) -> Result<(), AuthError> {
    load(path).map(drop)
}

fn load(path: &Path) -> Result<Callers, AuthError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| AuthError(format!("cannot read {}: {}", path.display(), error.kind())))?;
    // The parser's first line says where; the lines after it would quote the file.
    let file: CallersFile = toml::from_str(&text).map_err(|error| {
        let first = error
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        AuthError(format!("{}: {first}", path.display()))
    })?;
    let mut callers = Vec::with_capacity(file.callers.len());
    for caller in file.callers {
        if callers
            .iter()
            .any(|(known, _): &(Arc<Caller>, _)| known.name == caller.name)
        {
            return Err(AuthError(format!(
                "caller '{}' is listed twice",
                caller.name
            )));
        }
        let hash = match &caller.token_sha256 {
            Some(hex) => Some(parse_sha256(hex).ok_or_else(|| {
                AuthError(format!(
                    "caller '{}': token_sha256 must be 64 hex digits",
                    caller.name
                ))
            })?),
            None => None,
        };
        if hash.is_none() && caller.certificate.is_none() {
            return Err(AuthError(format!(
                "caller '{}' has no credential (token_sha256 or certificate)",
                caller.name
            )));
        }
        callers.push((Arc::new(caller), hash));
    }
    Ok(callers)
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.trim().as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut hash = [0; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        hash[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(hash)
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(text: &str) -> Authenticator {
        let dir = std::env::temp_dir().join(format!(
            "jobpipe-auth-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("callers.toml");
        std::fs::write(&path, text).unwrap();
        let callers = load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        Authenticator {
            callers: Arc::new(RwLock::new(Arc::new(callers))),
            anonymous_roles: vec![],
        }
    }

    fn sha256_hex(text: &str) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn tokens_and_certificates_name_callers_and_bound_what_they_submit() {
        let text = format!(
            "[[callers]]\nname = \"billing\"\nroles = [\"submit\"]\nqueues = [\"emails\"]\n\
             job_types = [\"email.*\"]\ntoken_sha256 = \"{}\"\n\n\
             [[callers]]\nname = \"ops\"\nroles = [\"read\", \"admin\"]\ncertificate = \"ops-cn\"\n",
            sha256_hex("s3cret-token")
        );
        let auth = authenticator(&text);
        let Authenticated::As(billing) = auth.authenticate(Some("s3cret-token"), None) else {
            panic!("the token is known");
        };
        assert_eq!(billing.name(), "billing");
        assert!(billing.has(Role::Submit) && !billing.has(Role::Admin));
        let queue = |name: &str| QueueName::try_new(name).unwrap();
        let kind = |name: &str| JobType::try_new(name).unwrap();
        assert_eq!(billing.refuses(&queue("emails"), &kind("email.send")), None);
        assert_eq!(
            billing
                .refuses(&queue("default"), &kind("email.send"))
                .map(|r| r.0),
            Some("queue")
        );
        assert_eq!(
            billing
                .refuses(&queue("emails"), &kind("sms.send"))
                .map(|r| r.0),
            Some("type")
        );
        assert!(matches!(
            auth.authenticate(Some("wrong"), None),
            Authenticated::Refused
        ));
        let Authenticated::As(ops) = auth.authenticate(None, Some("ops-cn")) else {
            panic!("the certificate is known");
        };
        assert!(ops.has(Role::Admin));
        let Authenticated::As(nobody) = auth.authenticate(None, Some("stranger")) else {
            panic!("anonymous");
        };
        assert_eq!((nobody.name(), nobody.roles.len()), (ANONYMOUS, 0));
    }

    #[test]
    fn a_broken_callers_file_names_the_problem_and_no_credential() {
        let dir = std::env::temp_dir().join(format!("jobpipe-auth-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (text, expected) in [
            (
                "[[callers]]\nname = \"a\"\nroles = [\"submit\"]\n",
                "has no credential",
            ),
            (
                "[[callers]]\nname = \"a\"\nroles = [\"submit\"]\ntoken_sha256 = \"abc\"\n",
                "64 hex digits",
            ),
            (
                "[[callers]]\nname = \"a\"\nroles = [\"root\"]\ncertificate = \"x\"\n",
                "callers.toml",
            ),
            ("token = \"hunter2-secret\n", "callers.toml"),
        ] {
            let path = dir.join("callers.toml");
            std::fs::write(&path, text).unwrap();
            let error = load(&path).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! Where each job type goes: the `[[routes]]` table from a job type pattern (exact, `email.*`,
//! `*`) to a target (an HTTP or gRPC worker, or a handler registered under a name), the most
//! specific pattern winning. Pure: parsing and matching, no I/O.

use jobpipe_proto::names::JobType;
use jobpipe_runtime::{settings::ConfigError, tls::ClientTlsConfig};
use serde::Deserialize;
use std::{cmp::Reverse, fmt, path::PathBuf, time::Duration};

/// One `[[routes]]` entry as configured.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The job types it takes: a type (`email.send`), a prefix and a wildcard (`email.*`), or `*`.
    pub job_type: String,
    /// `http://` or `https://` URL, `grpc://host:port` or `grpcs://host:port` of a
    /// `jobpipe.v1.Worker`, or the name of a registered handler (`noop`).
    pub target: String,
    /// Requests in flight to this route at most; unset: `consumer.concurrency`.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// The longest one request may take; the attempt's deadline wins when it is sooner.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// TLS for `https` / `grpcs` targets (the same settings as `amqp.tls`).
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// A file holding a bearer token sent to the worker (`authorization: Bearer …`), read at
    /// start; never logged.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl RouteConfig {
    /// A route of `job_type` to `target`, every other setting at its default.
    pub fn new(job_type: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            job_type: job_type.into(),
            target: target.into(),
            concurrency: None,
            timeout: None,
            tls: None,
            token_file: None,
        }
    }
}

/// Which job types a route takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// Exactly this type.
    Exact(String),
    /// Types starting with this, the dot included (`email.*` is `Prefix("email.")`).
    Prefix(String),
    /// Every type.
    Any,
}

impl Pattern {
    /// Parses `email.send`, `email.*` or `*`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::Any);
        }
        let (name, wildcard) = match text.strip_suffix(".*") {
            Some(prefix) => (prefix, true),
            None => (text, false),
        };
        if JobType::try_new(name).is_err() || name.contains('*') {
            return Err(format!(
                "{text:?} must be a job type ([A-Za-z0-9_.:-]{{1,128}}), a job type followed by \".*\", or \"*\""
            ));
        }
        Ok(if wildcard {
            Self::Prefix(format!("{name}."))
        } else {
            Self::Exact(name.to_owned())
        })
    }

    /// Whether `job_type` is one of this pattern's.
    pub(crate) fn matches(&self, job_type: &str) -> bool {
        match self {
            Self::Exact(name) => name == job_type,
            Self::Prefix(prefix) => job_type.starts_with(prefix.as_str()),
            Self::Any => true,
        }
    }

    /// Higher is more specific: an exact type, then longer prefixes, then `*`.
    fn specificity(&self) -> (u8, usize) {
        match self {
            Self::Exact(_) => (2, 0),
            Self::Prefix(prefix) => (1, prefix.len()),
            Self::Any => (0, 0),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
            Self::Any => f.write_str("*"),
        }
    }
}

/// Where a route sends its jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// An HTTP worker: `POST` to this URL.
    Http {
        /// The URL, as configured.
        url: String,
        /// `https`.
        tls: bool,
    },
    /// A `jobpipe.v1.Worker` gRPC service at `http(s)://authority`.
    Grpc {
        /// `host:port`.
        authority: String,
        /// `grpcs`.
        tls: bool,
    },
    /// A handler registered in this process under this name.
    Handler(JobType),
}

impl Target {
    /// Parses a target; the error says what a target may be.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return JobType::try_new(text).map(Self::Handler).map_err(|_| {
                format!(
                    "{text:?} is neither a URL (http://, https://, grpc://, grpcs://) nor a handler name"
                )
            });
        };
        let uri: http::Uri = text
            .parse()
            .map_err(|error| format!("not a valid URL: {error}"))?;
        let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
            return Err("the URL names no host".into());
        };
        if authority.as_str().contains('@') {
            return Err("credentials in the URL are not allowed: use token_file".into());
        }
        match scheme {
            "http" | "https" => Ok(Self::Http {
                url: text.to_owned(),
                tls: scheme == "https",
            }),
            "grpc" | "grpcs" => {
                if !matches!(rest.strip_prefix(authority.as_str()), Some("" | "/")) {
                    return Err("a gRPC target is host:port only, without a path".into());
                }
                if authority.port().is_none() {
                    return Err("a gRPC target needs a port (grpc://host:port)".into());
                }
                Ok(Self::Grpc {
                    authority: authority.to_string(),
                    tls: scheme == "grpcs",
                })
            }
            other => Err(format!(
                "unknown scheme {other:?} (http, https, grpc or grpcs)"
            )),
        }
    }

    /// Whether the target is called over TLS.
    pub(crate) fn tls(&self) -> bool {
        matches!(
            self,
            Self::Http { tls: true, .. } | Self::Grpc { tls: true, .. }
        )
    }
}

/// One parsed route.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// Its place in `[[routes]]`, for errors that name it (`routes[2]`).
    pub(crate) index: usize,
    /// Which job types.
    pub(crate) pattern: Pattern,
    /// Where to.
    pub(crate) target: Target,
    /// Its `[[routes]]` entry.
    pub(crate) config: RouteConfig,
}

/// The configuration key `routes[index].field`, for errors that name it. Leaked: made at
/// start-up only, a few per route, so that `ConfigError` keeps its `&'static str` key.
pub(crate) fn key(index: usize, field: &str) -> &'static str {
    Box::leak(format!("routes[{index}].{field}").into_boxed_str())
}

/// Parses and checks `[[routes]]`; each error names the entry's key (`routes[2].target`).
pub(crate) fn parse(routes: &[RouteConfig]) -> Result<Vec<Route>, ConfigError> {
    let mut parsed: Vec<Route> = Vec::with_capacity(routes.len());
    for (index, config) in routes.iter().enumerate() {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            key: key(index, field),
            reason,
        };
        let pattern = Pattern::parse(&config.job_type).map_err(|r| invalid("job_type", r))?;
        if let Some(earlier) = parsed.iter().find(|route| route.pattern == pattern) {
            return Err(invalid(
                "job_type",
                format!("{pattern} is routed twice (also routes[{}])", earlier.index),
            ));
        }
        let target = Target::parse(&config.target).map_err(|r| invalid("target", r))?;
        if config.concurrency == Some(0) {
            return Err(invalid("concurrency", "must be at least 1".into()));
        }
        if config.timeout.is_some_and(|timeout| timeout.is_zero()) {
            return Err(invalid("timeout", "must be positive".into()));
        }
        let remote = !matches!(target, Target::Handler(_));
        if config.tls.is_some() && !target.tls() {
            return Err(invalid(
                "tls",
                "TLS settings need an https:// or grpcs:// target".into(),
            ));
        }
        if !remote && (config.token_file.is_some() || config.timeout.is_some()) {
            return Err(invalid(
                "target",
                "token_file and timeout apply to http(s) and grpc(s) targets only".into(),
            ));
        }
        parsed.push(Route {
            index,
            pattern,
            target,
            config: config.clone(),
        });
    }
    // Most specific first, so the first match wins.
    parsed.sort_by_key(|route| Reverse(route.pattern.specificity()));
    Ok(parsed)
}

/// The index of the route for `job_type` in routes from [`parse`] (most specific first).
pub(crate) fn find(routes: &[Route], job_type: &str) -> Option<usize> {
    routes
        .iter()
        .position(|route| route.pattern.matches(job_type))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(job_type: &str, target: &str) -> RouteConfig {
        RouteConfig::new(job_type, target)
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let routes = parse(&[
            route("*", "http://any/"),
            route("email.*", "http://email/"),
            route("email.send", "grpc://send:50051"),
            route("email.send.*", "http://deeper/"),
            route("report", "noop"),
        ])
        .unwrap();
        let cases = [
            ("email.send", "grpc://send:50051"),
            ("email.send.bulk", "http://deeper/"),
            ("email.receive", "http://email/"),
            ("email", "http://any/"),
            ("emails.x", "http://any/"),
            ("report", "noop"),
            ("report.x", "http://any/"),
        ];
        for (job_type, target) in cases {
            let found = find(&routes, job_type).map(|i| routes[i].config.target.as_str());
            assert_eq!(found, Some(target), "{job_type}");
        }
        let without_any = parse(&[route("email.*", "noop")]).unwrap();
        assert_eq!(find(&without_any, "report"), None);
    }

    #[test]
    fn targets() {
        let http = |url: &str, tls| {
            Ok(Target::Http {
                url: url.into(),
                tls,
            })
        };
        let grpc = |authority: &str, tls| {
            Ok(Target::Grpc {
                authority: authority.into(),
                tls,
            })
        };
        let cases = [
            (
                "http://127.0.0.1:8080/",
                http("http://127.0.0.1:8080/", false),
            ),
            (
                "https://worker.svc/jobs?x=1",
                http("https://worker.svc/jobs?x=1", true),
            ),
            ("grpc://worker:50051", grpc("worker:50051", false)),
            ("grpcs://[::1]:50051/", grpc("[::1]:50051", true)),
            (
                "noop",
                Ok(Target::Handler(JobType::try_new("noop").unwrap())),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(Target::parse(text), expected, "{text}");
        }
        let refused = [
            ("ftp://host/", "unknown scheme \"ftp\""),
            ("grpc://worker", "needs a port"),
            ("grpc://worker:1/path", "without a path"),
            ("http://user:pw@host/", "credentials in the URL"),
            ("http:///nohost", "not a valid URL"),
            ("not a name", "neither a URL"),
        ];
        for (text, reason) in refused {
            let error = Target::parse(text).unwrap_err();
            assert!(error.contains(reason), "{text}: {error}");
            assert!(!error.contains("pw"), "{error}");
        }
    }

    #[test]
    fn bad_entries_name_their_key() {
        let with = |change: fn(&mut RouteConfig)| {
            let mut config = route("email.*", "http://w/");
            change(&mut config);
            config
        };
        let cases: [(Vec<RouteConfig>, &str, &str); 7] = [
            (
                vec![route("email.**", "noop")],
                "routes[0].job_type",
                "must be a job type",
            ),
            (
                vec![route("*.send", "noop")],
                "routes[0].job_type",
                "must be a job type",
            ),
            (
                vec![route("a", "noop"), route("a", "http://w/")],
                "routes[1].job_type",
                "routed twice (also routes[0])",
            ),
            (
                vec![route("a", "smtp://w/")],
                "routes[0].target",
                "unknown scheme",
            ),
            (
                vec![with(|c| c.concurrency = Some(0))],
                "routes[0].concurrency",
                "at least 1",
            ),
            (
                vec![with(|c| c.tls = Some(ClientTlsConfig::default()))],
                "routes[0].tls",
                "https:// or grpcs://",
            ),
            (
                vec![with(|c| c.timeout = Some(Duration::ZERO))],
                "routes[0].timeout",
                "positive",
            ),
        ];
        for (routes, key, reason) in cases {
            match parse(&routes) {
                Err(ConfigError::Invalid { key: k, reason: r }) => {
                    assert_eq!(k, key);
                    assert!(r.contains(reason), "{key}: {r}");
                }
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    proptest! {
        /// Whatever the order of the table, a job goes to a route that matches it and no matching
        /// route is more specific.
        #[test]
        fn order_does_not_matter(
            patterns in proptest::sample::subsequence(
                vec!["*", "a.*", "a.b.*", "a.b", "a.b.c", "b.*", "a"], 0..7),
            job_type in "(a|b)(\\.(a|b|c)){0,3}",
            seed in any::<u64>(),
        ) {
            let mut configs: Vec<RouteConfig> =
                patterns.iter().map(|p| route(p, "noop")).collect();
            let mut state = seed;
            for i in (1..configs.len()).rev() {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                configs.swap(i, (state >> 33) as usize % (i + 1));
            }
            let routes = parse(&configs).unwrap();
            let best = patterns
                .iter()
                .map(|p| Pattern::parse(p).unwrap())
                .filter(|p| p.matches(&job_type))
                .map(|p| p.specificity())
                .max();
            let found = find(&routes, &job_type).map(|i| routes[i].pattern.specificity());
            prop_assert_eq!(found, best);
        }
    }
}

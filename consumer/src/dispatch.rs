//! Who runs a job of a given type: the route that matches it best (a remote worker or a handler
//! named by the route), else the handler registered under exactly that type, else nobody
//! (`no_handler`). Built once at start, from `[[routes]]` and the registered handlers.

use crate::{
    handler::{Handler, Handlers},
    remote::Remote,
    routes::{self, Route, RouteConfig, Target},
};
use jobpipe_proto::names::JobType;
use jobpipe_runtime::{readiness::Blockers, settings::ConfigError};
use std::sync::Arc;

/// What runs a job.
#[derive(Clone)]
pub(crate) enum Runner {
    /// A handler in this process.
    Local(Arc<dyn Handler>),
    /// A worker of the user's, over HTTP or gRPC.
    Remote(Arc<Remote>),
}

/// The routes table and the handlers, resolved.
pub(crate) struct Dispatch {
    /// Most specific first.
    routes: Vec<Route>,
    /// What each route runs, by the route's index.
    runners: Vec<Runner>,
    handlers: Handlers,
}

impl Dispatch {
    /// Resolves `routes` against `handlers`; remote workers get `concurrency` requests in flight
    /// unless their route says otherwise, and mark themselves unreachable in `blockers`.
    pub(crate) fn new(
        routes: &[RouteConfig],
        handlers: Handlers,
        concurrency: usize,
        blockers: &Blockers,
    ) -> Result<Self, ConfigError> {
        let routes = routes::parse(routes)?;
        let runners = routes
            .iter()
            .map(|route| {
                let index = route.index;
                match &route.target {
                    Target::Handler(name) => {
                        handlers
                            .get(name)
                            .map(Runner::Local)
                            .ok_or_else(|| ConfigError::Invalid {
                                key: routes::key(index, "target"),
                                reason: format!(
                                    "no handler is registered as \"{name}\" (registered: {})",
                                    handler_names(&handlers)
                                ),
                            })
                    }
                    Target::Http { .. } | Target::Grpc { .. } => {
                        Remote::new(index, route, concurrency, blockers)
                            .map(|remote| Runner::Remote(Arc::new(remote)))
                    }
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            routes,
            runners,
            handlers,
        })
    }

    /// What runs jobs of `job_type`, if anything does.
    pub(crate) fn runner(&self, job_type: &JobType) -> Option<Runner> {
        match routes::find(&self.routes, job_type.as_str()) {
            Some(index) => self.runners.get(index).cloned(),
            None => self.handlers.get(job_type).map(Runner::Local),
        }
    }

    /// The remote workers, for their metrics.
    pub(crate) fn remotes(&self) -> impl Iterator<Item = &Remote> {
        self.runners.iter().filter_map(|runner| match runner {
            Runner::Remote(remote) => Some(remote.as_ref()),
            Runner::Local(_) => None,
        })
    }

    /// The label values of job types worth their own series: registered handlers and exact
    /// routes.
    pub(crate) fn known_types(&self) -> Vec<String> {
        let mut types: Vec<String> = self.handlers.types().map(|t| t.to_string()).collect();
        types.extend(self.routes.iter().filter_map(|route| match &route.pattern {
            routes::Pattern::Exact(name) => Some(name.clone()),
            _ => None,
        }));
        types
    }
}

fn handler_names(handlers: &Handlers) -> String {
    let mut names: Vec<&str> = handlers.types().map(|t| t.as_str()).collect();
    names.sort_unstable();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch")
            .field(
                "routes",
                &self
                    .routes
                    .iter()
                    .map(|r| r.pattern.to_string())
                    .collect::<Vec<_>>(),
            )
            .field("handlers", &self.handlers)
            .finish()
    }
}

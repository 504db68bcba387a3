//! What both jobpipe services run on.
//!
//! - [`amqp`]: broker I/O — the supervised link, topology declaration, confirmed publishing.
//! - [`settings`]: layered configuration (defaults, file, `JOBPIPE__*` environment).
//! - [`shutdown`]: the signal that starts a drain.
//! - [`readiness`], [`admin`] and [`metrics`]: what `/readyz`, gRPC health and `/metrics` report.
//! - Logs, as JSON or text: [`telemetry`].
//!
//! The broker is always real: there is no broker trait to stub it out.

pub mod admin;
pub mod amqp;
pub mod metrics;
pub mod readiness;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

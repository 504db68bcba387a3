//! What both jobpipe services run on.
//!
//! - [`amqp`]: broker I/O — the supervised link, topology declaration, confirmed publishing.
//! - [`base`]: what every service runs beside its work (the link, the admin endpoint), started
//!   and stopped as one.
//! - [`settings`]: layered configuration (defaults, file, `JOBPIPE__*` environment).
//! - [`shutdown`]: the signal that starts a drain; [`process`]: what every binary's `main` does.
//! - [`readiness`], [`admin`], [`metrics`] and [`queue_state`]: what `/readyz`, gRPC health and
//!   `/metrics` report; [`listener`]: accepting connections within limits, for both ports.
//! - [`tls`]: verified TLS for the broker connection and outbound calls, and the gRPC port's
//!   certificates, reloaded when their files change.
//! - Logs and traces: [`telemetry`] (JSON or text logs, OTLP export) and [`propagation`] (trace
//!   context in AMQP headers).
//!
//! The broker is always real: there is no broker trait to stub it out.

pub mod admin;
pub mod amqp;
pub mod base;
pub mod listener;
pub mod metrics;
pub mod process;
pub mod propagation;
pub mod queue_state;
pub mod readiness;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

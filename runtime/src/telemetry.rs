//! Logs and traces. Logs are JSON lines when stdout is not a terminal (collectors parse them) and
//! readable text when it is; the level comes from `RUST_LOG` when set, else from the
//! configuration. Traces go over OTLP/gRPC when an endpoint is configured
//! (`telemetry.otlp_endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`); otherwise no
//! exporter, no background thread, and no span is built for tracing's sake alone.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use serde::Deserialize;
use std::io::IsTerminal;
use tracing::Level;
use tracing_subscriber::{
    EnvFilter, Layer, filter::Targets, fmt, prelude::*, registry::LookupSpan,
};

/// The target of the spans jobpipe opens for traces (per RPC, per publish, per attempt). Logs
/// never show them (their fields would bury every line); the trace exporter takes them, and when
/// nothing is exported no layer wants them, so they cost nothing.
pub const SPANS: &str = "jobpipe::spans";

/// How a service logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `info,jobpipe_consumer=debug`.
    pub level: String,
    /// The line format.
    pub format: LogFormat,
}

/// The log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, text when it is.
    #[default]
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Where traces go.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// An OTLP/gRPC collector, e.g. `http://otel-collector:4317`. Empty: use
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` if set, else export
    /// nothing.
    pub otlp_endpoint: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

impl LogConfig {
    /// Checks that the level is a valid filter, so `--check-config` catches it.
    pub fn validate(&self) -> Result<(), crate::settings::ConfigError> {
        EnvFilter::try_new(&self.level).map(drop).map_err(|error| {
            crate::settings::ConfigError::Invalid {
                key: "log.level",
                reason: error.to_string(),
            }
        })
    }
}

impl TelemetryConfig {
    /// Checks that the endpoint, if any, is an http(s) URL.
    pub fn validate(&self) -> Result<(), crate::settings::ConfigError> {
        let endpoint = &self.otlp_endpoint;
        if endpoint.is_empty()
            || endpoint.starts_with("http://")
            || endpoint.starts_with("https://")
        {
            return Ok(());
        }
        Err(crate::settings::ConfigError::Invalid {
            key: "telemetry.otlp_endpoint",
            reason: "must be an http:// or https:// URL, e.g. http://otel-collector:4317".into(),
        })
    }
}

/// Why logging or tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The level is not a valid filter.
    #[error("log.level: {0}")]
    Filter(String),
    /// The OTLP exporter could not be built.
    #[error("telemetry.otlp_endpoint: {0}")]
    Exporter(String),
    /// A global subscriber was installed already.
    #[error("logging is already initialised")]
    AlreadyInitialised,
}

/// The installed telemetry. [`shutdown`](Self::shutdown) flushes the spans still buffered; call
/// it before the process exits.
#[derive(Debug)]
#[must_use = "shut telemetry down to flush buffered spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The SDK's shutdown blocks until the export thread is done: keep it off the runtime.
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Installs logging and, when configured, trace export for `service` (`jobpipe-producer`). Call
/// it inside the Tokio runtime: the OTLP exporter's client lives on it.
pub fn init(
    log: &LogConfig,
    telemetry: &TelemetryConfig,
    service: &'static str,
) -> Result<Telemetry, TelemetryError> {
    let provider = tracer_provider(telemetry, service)?;
    let traces = provider.as_ref().map(|provider| {
        // Only jobpipe's own spans: the RPC, each publish, each attempt. Not lapin's or h2's.
        let ours = Targets::new()
            .with_target(SPANS, Level::TRACE)
            .with_target("jobpipe_producer", Level::DEBUG)
            .with_target("jobpipe_consumer", Level::DEBUG)
            .with_target("jobpipe_runtime", Level::DEBUG);
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            // Source locations, thread names and busy/idle timings would ride on every span.
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(ours)
    });
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(log_layer(log)?)
        .with(traces)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialised)?;
    Ok(Telemetry { provider })
}

fn log_layer<S>(log: &LogConfig) -> Result<Box<dyn Layer<S> + Send + Sync>, TelemetryError>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => EnvFilter::try_new(from_env),
        _ => EnvFilter::try_new(&log.level),
    }
    .map_err(|error| TelemetryError::Filter(error.to_string()))?
    .add_directive(directive(&format!("{SPANS}=off"))?);
    // The AMQP library stays silent whatever the level: at trace it prints every frame, the
    // login's password among them, and amq-protocol-tcp the broker URI with it; at error it
    // reports a closing connection (a clean shutdown included) and repeats what the link
    // supervisor logs once, with the reason, for every connection that fails.
    let filter = ["lapin=off", "amq_protocol=off", "amq_protocol_tcp=off"]
        .iter()
        .try_fold(filter, |filter, cap| {
            Ok(filter.add_directive(directive(cap)?))
        })?;
    let json = match log.format {
        LogFormat::Auto => !std::io::stdout().is_terminal(),
        LogFormat::Json => true,
        LogFormat::Text => false,
    };
    Ok(if json {
        // Each event carries its own fields (job events name the job and its trace), so a line
        // stands alone without the span stack.
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(filter)
            .boxed()
    } else {
        fmt::layer().with_filter(filter).boxed()
    })
}

fn directive(text: &str) -> Result<tracing_subscriber::filter::Directive, TelemetryError> {
    text.parse()
        .map_err(|error: tracing_subscriber::filter::ParseError| {
            TelemetryError::Filter(error.to_string())
        })
}

fn tracer_provider(
    telemetry: &TelemetryConfig,
    service: &'static str,
) -> Result<Option<SdkTracerProvider>, TelemetryError> {
    let from_env = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|value| !value.is_empty()));
    if telemetry.otlp_endpoint.is_empty() && !from_env {
        return Ok(None);
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if !telemetry.otlp_endpoint.is_empty() {
        exporter = exporter.with_endpoint(telemetry.otlp_endpoint.clone());
    }
    let exporter = exporter
        .build()
        .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build(),
    ))
}

//! A real OTLP collector for trace tests: `rotel` (from PyPI), receiving OTLP/gRPC and printing
//! every span it gets, which the test reads back.

use crate::{
    eventually,
    process::{self, free_port},
    tools::venv_tool,
    within,
};
use std::{collections::HashMap, path::PathBuf, process::Stdio, time::Duration};
use tokio::process::{Child, Command};

/// One span as the collector printed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanRecord {
    /// `service.name` of the process that sent it.
    pub service: String,
    /// Hex trace id.
    pub trace_id: String,
    /// Hex id of the parent span (empty for a root).
    pub parent_id: String,
    /// Hex span id.
    pub span_id: String,
    /// The span's name.
    pub name: String,
    /// `SPAN_KIND_SERVER`, `SPAN_KIND_PRODUCER`, ...
    pub kind: String,
    /// Start, in nanoseconds since the epoch.
    pub start: u64,
    /// `STATUS_CODE_UNSET`, `STATUS_CODE_ERROR`, ...
    pub status: String,
    /// Attribute values, as printed (`Str(x)` becomes `x`).
    pub attributes: HashMap<String, String>,
}

/// A running collector, stopped when dropped.
#[derive(Debug)]
pub struct Collector {
    /// The OTLP/gRPC endpoint, `http://127.0.0.1:<port>`.
    pub endpoint: String,
    output: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Collector {
    /// Starts rotel on free loopback ports and waits until it listens.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let output = dir.path().join("spans.log");
        let grpc = free_port();
        let file = std::fs::File::create(&output).expect("log file");
        let agent = rotel_agent();
        let child = Command::new(agent)
            .args(["start", "--otlp-grpc-endpoint", &grpc.to_string()])
            .args(["--otlp-http-endpoint", &free_port().to_string()])
            .args(["--exporter", "blackhole", "--debug-log", "traces"])
            .args(["--debug-log-verbosity", "detailed"])
            .stdout(Stdio::from(file.try_clone().expect("clone")))
            .stderr(Stdio::from(file))
            .kill_on_drop(true)
            .spawn()
            .expect("start rotel");
        eventually(
            Duration::from_secs(20),
            "the collector to listen",
            || async move { tokio::net::TcpStream::connect(grpc).await.is_ok() },
        )
        .await;
        Self {
            endpoint: format!("http://{grpc}"),
            output,
            child,
            _dir: dir,
        }
    }

    /// Waits until at least `count` spans of `trace_id` arrived; returns them.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        count: usize,
        limit: Duration,
    ) -> Vec<SpanRecord> {
        within(
            limit,
            &format!("{count} spans of trace {trace_id}"),
            async {
                loop {
                    let spans: Vec<SpanRecord> = self
                        .spans()
                        .into_iter()
                        .filter(|span| span.trace_id == trace_id)
                        .collect();
                    if spans.len() >= count {
                        return spans;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        )
        .await
    }

    /// Stops the collector and returns every span it received. rotel stops gracefully on
    /// SIGTERM: its receivers close, its pipelines print what they still hold, and it exits. So
    /// once the senders have exited (their exports answered), counts taken from this are exact:
    /// no span can still be on its way.
    pub async fn stop(mut self, limit: Duration) -> Vec<SpanRecord> {
        process::signal(self.child.id().expect("the collector is running"), "TERM");
        let status = within(limit, "the collector to stop", self.child.wait())
            .await
            .expect("wait");
        assert!(
            status.success(),
            "the collector stopped cleanly: {status:?}"
        );
        self.spans()
    }

    /// Every span printed so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        parse(&std::fs::read_to_string(&self.output).unwrap_or_default())
    }
}

/// The collector binary inside the rotel wheel, whatever the venv's Python version.
fn rotel_agent() -> PathBuf {
    let lib = venv_tool("python")
        .parent()
        .and_then(|bin| bin.parent())
        .map(|venv| venv.join("lib"))
        .expect("venv layout");
    std::fs::read_dir(&lib)
        .expect("venv lib")
        .flatten()
        .map(|python| python.path().join("site-packages/rotel/rotel-agent"))
        .find(|agent| agent.exists())
        .unwrap_or_else(|| {
            panic!(
                "rotel is missing from {}: run tests/tools/install.sh",
                lib.display()
            )
        })
}

/// Reads rotel's detailed debug output.
fn parse(text: &str) -> Vec<SpanRecord> {
    let mut spans = Vec::new();
    let mut service = String::new();
    let mut current: Option<SpanRecord> = None;
    let mut in_attributes = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("ResourceSpans #") {
            spans.extend(current.take());
            in_attributes = false;
        } else if let Some(name) = trimmed.strip_prefix("-> service.name: ") {
            service = value(name);
        } else if trimmed.starts_with("Span #") {
            spans.extend(current.take());
            current = Some(SpanRecord {
                service: service.clone(),
                ..SpanRecord::default()
            });
            in_attributes = false;
        } else if let Some(span) = current.as_mut() {
            match trimmed.split_once(':').map(|(k, v)| (k.trim(), v.trim())) {
                _ if trimmed == "Attributes:" => in_attributes = true,
                _ if trimmed == "Events:" || trimmed == "Links:" => in_attributes = false,
                Some(("Trace ID", v)) => span.trace_id = v.into(),
                Some(("Parent ID", v)) => span.parent_id = v.into(),
                Some(("ID", v)) => span.span_id = v.into(),
                Some(("Name", v)) => span.name = v.into(),
                Some(("Kind", v)) => span.kind = v.into(),
                Some(("Start time", v)) => span.start = v.parse().unwrap_or(0),
                Some(("Status code", v)) => span.status = v.into(),
                _ if in_attributes => {
                    if let Some((key, v)) =
                        trimmed.strip_prefix("-> ").and_then(|a| a.split_once(": "))
                    {
                        span.attributes.insert(key.into(), value(v));
                    }
                }
                _ => {}
            }
        }
    }
    spans.extend(current);
    spans
}

/// `Str(x)` → `x`, `Int(3)` → `3`.
fn value(printed: &str) -> String {
    printed
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(printed)
        .to_owned()
}

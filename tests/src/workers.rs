//! The example workers in `examples/` (Python: the HTTP one with the standard library, the gRPC
//! one with grpcio and stubs generated from `proto/`), run as processes the way a user runs them.
//! Each prints one JSON line per request it handled; the test reads them as [`Request`]s.

use crate::{tools::venv_tool, within};
use serde_json::Value;
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

/// Which example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `examples/python-http-worker`.
    Http,
    /// `examples/python-grpc-worker`.
    Grpc,
}

impl Kind {
    /// Both, for tests that check each contract the same way.
    pub const ALL: [Self; 2] = [Self::Http, Self::Grpc];

    fn script(self) -> PathBuf {
        let dir = match self {
            Self::Http => "python-http-worker",
            Self::Grpc => "python-grpc-worker",
        };
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(dir)
            .join("worker.py")
    }

    /// The route target for a worker of this kind at `addr`.
    pub fn target(self, addr: SocketAddr) -> String {
        match self {
            Self::Http => format!("http://{addr}/"),
            Self::Grpc => format!("grpc://{addr}"),
        }
    }
}

/// One request as the worker logged it, and when the test read the line.
#[derive(Debug, Clone)]
pub struct Request {
    /// The worker's JSON line (`job_id`, `attempt`, `traceparent`, `in_flight`, `outcome`, ...).
    pub fields: Value,
    /// When it arrived.
    pub at: Instant,
}

impl Request {
    /// A text field, empty when absent.
    pub fn text(&self, name: &str) -> &str {
        self.fields[name].as_str().unwrap_or_default()
    }

    /// A number field, 0 when absent.
    pub fn number(&self, name: &str) -> u64 {
        self.fields[name].as_u64().unwrap_or_default()
    }
}

/// A running example worker; killed when dropped.
#[derive(Debug)]
pub struct Worker {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its kind.
    pub kind: Kind,
    child: Child,
    requests: mpsc::UnboundedReceiver<Request>,
}

impl Worker {
    /// Starts the `kind` example on `port` (0: a free one) with `args`, and waits until it
    /// listens.
    pub async fn start(kind: Kind, port: u16, args: &[&str]) -> Self {
        let mut child = Command::new(venv_tool("python"))
            .arg(kind.script())
            .args(["--port", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the example worker");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = within(
            Duration::from_secs(60),
            "the worker to listen",
            lines.next_line(),
        )
        .await
        .expect("read the worker's output")
        .expect("the worker printed where it listens");
        let listening: Value = serde_json::from_str(&first).expect("a JSON line");
        let port = listening["listening"].as_u64().expect("the port") as u16;
        let (sender, requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(fields) = serde_json::from_str::<Value>(&line) {
                    let _ = sender.send(Request {
                        fields,
                        at: Instant::now(),
                    });
                }
            }
        });
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            kind,
            child,
            requests,
        }
    }

    /// The route target of this worker.
    pub fn target(&self) -> String {
        self.kind.target(self.addr)
    }

    /// The next `count` requests, failing the test after `limit`.
    pub async fn requests(&mut self, count: usize, limit: Duration) -> Vec<Request> {
        within(limit, &format!("{count} requests at the worker"), async {
            let mut got = Vec::with_capacity(count);
            while got.len() < count {
                got.push(self.requests.recv().await.expect("the worker is running"));
            }
            got
        })
        .await
    }

    /// The requests logged so far and not yet read.
    pub fn logged(&mut self) -> Vec<Request> {
        let mut got = Vec::new();
        while let Ok(request) = self.requests.try_recv() {
            got.push(request);
        }
        got
    }

    /// Kills the worker (SIGKILL) and waits for it to be gone.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = within(
            Duration::from_secs(10),
            "the worker to die",
            self.child.wait(),
        )
        .await;
    }
}

//! jobpipe's binaries run as real processes, for what only a process shows: exit codes, signals,
//! and crashes. `make test` builds them first (`cargo build --bins`).

use crate::{broker::TestTopology, eventually, within};
use std::{
    ffi::OsStr,
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};
use tokio::process::{Child, Command};

/// The path of a workspace binary of the same profile as the running executable (a test in
/// `target/<profile>/deps/`, or a binary in `target/<profile>/`).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let mut dir = exe.parent().expect("executable directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target profile directory");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

/// A free loopback port (bound and released; the OS will not hand it out again at once).
pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// The environment every service process needs: the test broker (`JOBPIPE__AMQP__URL`),
/// `topology`'s prefix, and its admin endpoint on `admin`. Callers add their own settings.
pub fn service_env(topology: &TestTopology, admin: SocketAddr) -> Vec<(&'static str, String)> {
    vec![
        ("JOBPIPE__AMQP__URL", crate::broker::amqp_url()),
        (
            "JOBPIPE__TOPOLOGY__PREFIX",
            topology.config().prefix.to_string(),
        ),
        ("JOBPIPE__ADMIN__LISTEN", admin.to_string()),
    ]
}

/// Waits (at most 30 s) until the service whose admin endpoint is `admin` answers `/readyz`
/// with 200.
pub async fn wait_ready(admin: SocketAddr) {
    eventually(
        Duration::from_secs(30),
        &format!("the service at {admin} to be ready"),
        || async move { crate::http_get(admin, "/readyz").await.0 == 200 },
    )
    .await;
}

/// Sends `signal` (e.g. `TERM`, `INT`, `KILL`) to process `pid`, failing the test if `kill` does.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A running jobpipe binary, killed if the test drops it.
#[derive(Debug)]
pub struct Service {
    child: Child,
}

impl Service {
    /// Starts binary `name` with `args` and `env`; its output goes to the test's output.
    pub fn start(name: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        Self {
            child: service_command(name, args, env).spawn().expect("spawn"),
        }
    }

    /// Starts `command` (for binaries run under a wrapper such as a sandbox).
    pub fn spawn(mut command: Command) -> Self {
        Self {
            child: command.kill_on_drop(true).spawn().expect("spawn"),
        }
    }

    /// Starts binary `name` with its standard output piped to the caller.
    pub fn start_piped(
        name: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> (Self, tokio::process::ChildStdout) {
        let mut child = service_command(name, args, env)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("piped stdout");
        (Self { child }, stdout)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends `signal` (e.g. `TERM`, `INT`, `KILL`).
    pub fn signal(&self, signal: &str) {
        self::signal(self.pid(), signal);
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn exit(mut self, limit: Duration) -> ExitStatus {
        within(limit, "the process to exit", self.child.wait())
            .await
            .expect("wait")
    }
}

/// Binary `name` with `args` and `env`, no stdin, killed when dropped (a test that times out
/// does not leave it running).
fn command<V: AsRef<OsStr>>(name: &str, args: &[&str], env: &[(&str, V)]) -> Command {
    let mut command = Command::new(bin_path(name));
    command
        .args(args)
        .envs(env.iter().map(|(key, value)| (*key, value)))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// [`command`] for a service: text logs, unless `env` says otherwise.
fn service_command(name: &str, args: &[&str], env: &[(&str, String)]) -> Command {
    let text = [("JOBPIPE__LOG__FORMAT", "text".to_owned())];
    command(name, args, &[&text[..], env].concat())
}

/// Runs binary `name` to completion with `args` and `env`: its status and combined output.
/// Unlike a service it keeps its default log format (JSON, its output not being a terminal).
pub async fn output(name: &str, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    output_within(Duration::from_secs(30), name, args, env).await
}

/// [`output`] for a command allowed to take up to `limit`.
pub async fn output_within(
    limit: Duration,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (ExitStatus, String) {
    let output = within(
        limit,
        "the command to finish",
        command(name, args, env).output(),
    )
    .await
    .expect("run");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status, text)
}

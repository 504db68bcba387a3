//! jobpipe's binaries run as real processes, for what only a process shows: exit codes, signals,
//! and crashes. `make test` builds them first (`cargo build --bins`).

use crate::within;
use std::{
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

/// A running jobpipe binary, killed if the test drops it.
#[derive(Debug)]
pub struct Service {
    child: Child,
}

impl Service {
    /// Starts binary `name` with `args` and `env`; its output goes to the test's output.
    pub fn start(name: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        Self {
            child: command(name, args, env).spawn().expect("spawn"),
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
        let mut child = command(name, args, env)
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
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub async fn exit(mut self, limit: Duration) -> ExitStatus {
        within(limit, "the process to exit", self.child.wait())
            .await
            .expect("wait")
    }
}

fn command(name: &str, args: &[&str], env: &[(&str, String)]) -> Command {
    let mut command = Command::new(bin_path(name));
    command
        .args(args)
        .env("JOBPIPE__LOG__FORMAT", "text")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Runs binary `name` to completion with `args` and `env`: its status and combined output.
pub async fn output(name: &str, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let output = within(
        Duration::from_secs(30),
        "the command to finish",
        Command::new(bin_path(name))
            .args(args)
            .envs(env.iter().copied())
            .output(),
    )
    .await
    .expect("run");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status, text)
}

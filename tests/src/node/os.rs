//! The operating-system side of throwaway nodes: running commands under a deadline, free ports,
//! and finding, checking and killing node processes (never one that is not a test's own).

use super::{DIR_PREFIX, ROOT};
use std::{
    path::Path,
    process::{Output, Stdio},
    time::{Duration, Instant},
};
use tokio::process::Command;

/// Runs `command` to completion, at most `limit`, failing the test with its output if it
/// fails or hangs. It runs in a process group of its own, killed whole on a timeout (the
/// `rabbitmqctl` wrapper runs the Erlang VM under `su`, two processes down).
pub(super) async fn run(what: &str, limit: Duration, command: &mut Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    let group = child.id();
    let Ok(output) = tokio::time::timeout(limit, child.wait_with_output()).await else {
        if let Some(group) = group {
            let _ = std::process::Command::new("kill")
                .args(["-9", "--", &format!("-{group}")])
                .status();
        }
        panic!("timed out after {limit:?}: {what}");
    };
    let output = output.unwrap_or_else(|error| panic!("{what}: {error}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Two distinct free loopback ports, below the kernel's ephemeral range (32768 and up): an
/// outgoing connection cannot take one while a killed node is down, nor can a `bind(0)` of a
/// test running beside this one.
pub(super) fn free_ports() -> (u16, u16) {
    let free = || loop {
        let port = rand::random_range(20_000..32_000);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    };
    let amqp = free();
    let dist = std::iter::repeat_with(free)
        .find(|port| *port != amqp)
        .expect("an endless supply");
    (amqp, dist)
}

/// Kills, with SIGKILL, the nodes of test processes that no longer run (killed by a test
/// timeout before their `Drop` could run), and removes their directories.
pub(super) fn reap_orphans() {
    let Ok(entries) = std::fs::read_dir(ROOT) else {
        return;
    };
    for dir in entries.filter_map(Result::ok).map(|entry| entry.path()) {
        let is_node = dir
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with(DIR_PREFIX));
        // A directory without an owner yet is being set up.
        let Some(owner) = is_node.then(|| read_pid(&dir.join("owner"))).flatten() else {
            continue;
        };
        if alive(owner) {
            continue;
        }
        if let Some(pid) = read_pid(&dir.join("node.pid")).filter(|pid| owned_by(*pid, &dir)) {
            kill_and_wait(pid);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether process `pid` exists and is not a zombie (the VM is reparented to an init that may
/// not reap it).
pub(super) fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !state.is_some_and(|state| state.starts_with('Z'))
    })
}

/// Whether process `pid` was started for the node in `dir`: its environment names the
/// directory. This is what keeps a reused pid, or the shared broker, from being killed.
pub(super) fn owned_by(pid: u32, dir: &Path) -> bool {
    let Ok(environment) = std::fs::read(format!("/proc/{pid}/environ")) else {
        return false;
    };
    let needle = format!("RABBITMQ_PID_FILE={}/node.pid", dir.display());
    environment
        .split(|byte| *byte == 0)
        .any(|variable| variable == needle.as_bytes())
}

/// Sends SIGKILL to `pid` and waits (at most 10 s, blocking: this runs in `Drop`) for it to go.
pub(super) fn kill_and_wait(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

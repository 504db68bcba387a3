//! Throwaway RabbitMQ nodes, alone or in a cluster, for tests that break the broker on purpose:
//! stop the app, kill the process, raise a memory alarm, close connections. Each node has its
//! own name, ports and directory beside the shared broker, which nothing here ever touches.
//!
//! Nodes run as user `rabbitmq` with `HOME=/var/lib/rabbitmq`, so they share its Erlang cookie
//! and `rabbitmqctl` (which switches to that user when run as root) can reach them. [`Cluster`]
//! joins several; `os` holds the process plumbing.

mod cluster;
mod os;

pub use cluster::Cluster;

use crate::eventually;
use os::{alive, free_ports, kill_and_wait, owned_by, reap_orphans, run};
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};
use tokio::process::Command;

/// How long one `rabbitmqctl` call may take (the Erlang VM alone needs about half a second).
const CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to boot, and an app to start, until it accepts AMQP connections.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// Where node directories live: readable by user `rabbitmq`, unlike a root-only `$TMPDIR`.
const ROOT: &str = "/tmp";
/// The start of every node directory's name, so orphans of killed test runs can be found.
const DIR_PREFIX: &str = "jp-node-";

/// What kind of node to start.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// The start of the node name (`jp{stem}{pid}_{n}@{host}`): letters and digits.
    pub stem: String,
    /// Extra `rabbitmq.conf` lines; `{amqp_port}` in them becomes the node's AMQP port. Setting
    /// any `listeners.tcp` key replaces the default plain listener, so a TLS node says
    /// `listeners.tcp = none` and `listeners.ssl.default = 127.0.0.1:{amqp_port}`.
    pub config: Vec<String>,
    /// Plugins to enable (none by default), e.g. `rabbitmq_auth_mechanism_ssl`.
    pub plugins: Vec<String>,
}

impl NodeOptions {
    /// A plain node named after `stem`.
    pub fn new(stem: &str) -> Self {
        Self {
            stem: stem.to_owned(),
            ..Self::default()
        }
    }
}

/// A running throwaway node; dropping it kills the process and removes its directory, so a
/// failing test leaves nothing behind.
#[derive(Debug)]
pub struct Node {
    name: String,
    amqp_port: u16,
    dist_port: u16,
    dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node on free ports and waits (bounded) until it accepts AMQP connections.
    pub async fn start(options: NodeOptions) -> Self {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        reap_orphans();
        let host = run(
            "hostname -s",
            CTL_TIMEOUT,
            Command::new("hostname").arg("-s"),
        )
        .await;
        let short = format!(
            "jp{}{}_{}",
            options.stem,
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed) + 1
        );
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{short}-"))
            .tempdir_in(ROOT)
            .expect("a node directory");
        let (amqp_port, dist_port) = free_ports();
        // Built before anything runs, so a failure from here on drops it and stops the process.
        let node = Self {
            name: format!("{short}@{}", String::from_utf8_lossy(&host.stdout).trim()),
            amqp_port,
            dist_port,
            dir,
        };
        node.write_files(&options);
        node.launch().await;
        node.wait_ready().await;
        node
    }

    /// The Erlang node name, e.g. `jpchaos4242_1@vm`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port of the AMQP listener (plain TCP, or TLS when the options configure it so).
    pub fn amqp_port(&self) -> u16 {
        self.amqp_port
    }

    /// The AMQP listener's address, e.g. to put a [`crate::proxy::Proxy`] in front of it.
    pub fn amqp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.amqp_port))
    }

    /// `amqp://guest:guest@127.0.0.1:{port}/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// Stops the RabbitMQ application (every connection drops); the Erlang VM stays up.
    pub async fn stop_app(&self) {
        self.rabbitmqctl(&["stop_app"]).await;
    }

    /// Starts the application again and waits until it accepts AMQP connections.
    pub async fn start_app(&self) {
        self.rabbitmqctl(&["start_app"]).await;
        self.wait_amqp().await;
    }

    /// Kills the node's OS process with SIGKILL, as a crash would, and waits until it is gone.
    pub async fn kill(&self) {
        let pid = self
            .pid()
            .filter(|pid| self.owns(*pid))
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let mut command = Command::new("kill");
        run(
            "kill -9",
            CTL_TIMEOUT,
            command.args(["-9", &pid.to_string()]),
        )
        .await;
        eventually(
            Duration::from_secs(10),
            &format!("the process of {} to exit", self.name),
            || async move { !alive(pid) },
        )
        .await;
    }

    /// Starts the process again after [`Node::kill`], with the same name, ports and data, and
    /// waits until it accepts AMQP connections. A cluster member rejoins its cluster by itself.
    pub async fn restart(&self) {
        let running = self.pid().filter(|pid| alive(*pid));
        assert!(running.is_none(), "{} is running: kill it first", self.name);
        self.launch().await;
        self.wait_ready().await;
    }

    /// Raises (`true`) or clears (`false`) a memory alarm by moving the high watermark, and waits
    /// until the node reports it. While it is raised, publishing connections are blocked.
    pub async fn memory_alarm(&self, on: bool) {
        let watermark = if on { "0.0001" } else { "0.4" };
        self.rabbitmqctl(&["set_vm_memory_high_watermark", watermark])
            .await;
        eventually(
            Duration::from_secs(15),
            &format!("the memory alarm on {} to be {on}", self.name),
            || async move {
                let alarms = self
                    .rabbitmqctl(&["eval", "rabbit_alarm:get_local_alarms()."])
                    .await;
                alarms.contains("memory") == on
            },
        )
        .await;
    }

    /// Closes every client connection to this node, telling the clients `reason`.
    pub async fn close_all_connections(&self, reason: &str) {
        self.rabbitmqctl(&["close_all_connections", reason]).await;
    }

    /// The client-provided name (the `connection_name` client property, set by lapin's
    /// `ConnectionProperties::with_connection_name`) of each connection to this node; `""` where
    /// none was given. `list_connections` lists the whole cluster's, so they are told apart by
    /// the server port they came in on.
    pub async fn connection_names(&self) -> Vec<String> {
        let args = ["list_connections", "port", "client_properties"];
        let listed = self
            .rabbitmqctl(&[&args[..], &["--formatter", "json"]].concat())
            .await;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&listed)
            .unwrap_or_else(|error| panic!("list_connections gave {listed:?}: {error}"));
        rows.iter()
            .filter(|row| row["port"] == self.amqp_port)
            .map(|row| connection_name(&row["client_properties"]).unwrap_or_default())
            .collect()
    }

    /// The names of the running nodes of this node's cluster, as this node sees them.
    pub async fn running_nodes(&self) -> Vec<String> {
        let status = self
            .rabbitmqctl(&["cluster_status", "--formatter", "json"])
            .await;
        let status: serde_json::Value = serde_json::from_str(&status)
            .unwrap_or_else(|error| panic!("cluster_status gave {status:?}: {error}"));
        let running = status["running_nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        running
            .iter()
            .filter_map(|node| node.as_str().map(str::to_owned))
            .collect()
    }

    /// Runs `rabbitmqctl -n {node} {args}`: its standard output. A failure or a call longer than
    /// a minute fails the test with the command's output.
    pub async fn rabbitmqctl(&self, args: &[&str]) -> String {
        self.rabbitmqctl_within(CTL_TIMEOUT, args).await
    }

    /// [`Node::rabbitmqctl`] for a command allowed to take up to `limit`.
    async fn rabbitmqctl_within(&self, limit: Duration, args: &[&str]) -> String {
        let what = format!("rabbitmqctl -n {} {}", self.name, args.join(" "));
        let mut command = Command::new("rabbitmqctl");
        command.arg("-n").arg(&self.name).args(args);
        let output = run(&what, limit, &mut command).await;
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Stops the node cleanly (if it is running), waits for its process to exit and removes its
    /// directory.
    pub async fn stop(self) {
        if self.pid().is_some_and(alive) {
            let pid_file = self.pid_file();
            self.rabbitmqctl(&["stop", &pid_file.to_string_lossy()])
                .await;
        }
    }

    /// The directory, configuration and plugins file, owned by `rabbitmq`.
    fn write_files(&self, options: &NodeOptions) {
        let dir = self.dir.path();
        for sub in ["mnesia", "log"] {
            std::fs::create_dir(dir.join(sub)).expect("a node subdirectory");
        }
        let owner = dir.join("owner");
        std::fs::write(owner, std::process::id().to_string()).expect("the owner file");
        let plugins = format!("[{}].\n", options.plugins.join(","));
        std::fs::write(dir.join("enabled_plugins"), plugins).expect("enabled_plugins");
        let config = config_text(self.amqp_port, &options.config);
        std::fs::write(dir.join("rabbitmq.conf"), config).expect("rabbitmq.conf");
        let chown = std::process::Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(dir)
            .status()
            .expect("chown");
        assert!(
            chown.success(),
            "chown -R rabbitmq {} failed",
            dir.display()
        );
    }

    /// Starts the Erlang VM in the background (`-detached` returns at once).
    async fn launch(&self) {
        // A pid file left by a kill would make `rabbitmqctl wait` watch the dead process.
        let _ = std::fs::remove_file(self.pid_file());
        let dir = self.dir.path().display();
        let script = format!(
            "export RABBITMQ_NODENAME={name} RABBITMQ_DIST_PORT={dist} \
             RABBITMQ_MNESIA_BASE={dir}/mnesia RABBITMQ_LOG_BASE={dir}/log \
             RABBITMQ_ENABLED_PLUGINS_FILE={dir}/enabled_plugins \
             RABBITMQ_CONFIG_FILE={dir}/rabbitmq RABBITMQ_PID_FILE={dir}/node.pid \
             HOME=/var/lib/rabbitmq; cd /var/lib/rabbitmq; \
             exec /usr/lib/rabbitmq/bin/rabbitmq-server -detached",
            name = self.name,
            dist = self.dist_port,
        );
        let mut command = Command::new("su");
        command.args(["rabbitmq", "-s", "/bin/sh", "-c", &script]);
        run(
            &format!("starting {}", self.name),
            CTL_TIMEOUT,
            &mut command,
        )
        .await;
    }

    /// Waits until the VM has written its pid file, booted RabbitMQ and opened the AMQP port.
    async fn wait_ready(&self) {
        let pid_file = self.pid_file();
        let wait = ["wait", &pid_file.to_string_lossy(), "--timeout", "60"];
        self.rabbitmqctl_within(BOOT_TIMEOUT, &wait).await;
        self.wait_amqp().await;
    }

    /// Waits until the AMQP port accepts TCP connections.
    async fn wait_amqp(&self) {
        let addr = self.amqp_addr();
        eventually(
            BOOT_TIMEOUT,
            &format!("{} to accept connections on {addr}", self.name),
            || async move { tokio::net::TcpStream::connect(addr).await.is_ok() },
        )
        .await;
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("node.pid")
    }

    /// The pid in the pid file, if there is one (a clean stop removes it, a kill does not).
    fn pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.pid_file()).ok()?;
        text.trim().parse().ok()
    }

    /// Whether `pid` is this node's VM and not a process that got its pid later.
    fn owns(&self, pid: u32) -> bool {
        owned_by(pid, self.dir.path())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self
                .dir
                .path()
                .join("log")
                .join(format!("{}.log", self.name));
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            eprintln!("last lines of {}:", log.display());
            tail.iter().rev().for_each(|line| eprintln!("  {line}"));
        }
        if let Some(pid) = self.pid().filter(|pid| self.owns(*pid)) {
            kill_and_wait(pid);
        }
        // The directory goes with `self.dir`, after the process.
    }
}

/// The `rabbitmq.conf` of a node on `port`: guest may log in from anywhere, a plain listener on
/// loopback unless the `extra` lines set up listeners of their own, then the `extra` lines.
fn config_text(port: u16, extra: &[String]) -> String {
    let extra = extra
        .iter()
        .map(|line| line.replace("{amqp_port}", &port.to_string()));
    let own_listeners = extra
        .clone()
        .any(|line| line.trim_start().starts_with("listeners.tcp"));
    let listener = format!("listeners.tcp.default = 127.0.0.1:{port}");
    let lines = std::iter::once("loopback_users = none".to_owned())
        .chain((!own_listeners).then_some(listener))
        .chain(extra);
    lines.map(|line| line + "\n").collect()
}

/// The `connection_name` in a `client_properties` list as `rabbitmqctl` prints it in JSON:
/// `[name, type, value]` triples.
fn connection_name(properties: &serde_json::Value) -> Option<String> {
    properties.as_array()?.iter().find_map(|property| {
        let property = property.as_array()?;
        (property.first()?.as_str()? == "connection_name")
            .then(|| property.last()?.as_str().map(str::to_owned))?
    })
}

#[cfg(test)]
mod tests {
    use super::config_text;

    #[test]
    fn a_node_listens_on_its_port_unless_the_options_set_listeners() {
        let plain = config_text(20001, &[]);
        assert_eq!(
            plain,
            "loopback_users = none\nlisteners.tcp.default = 127.0.0.1:20001\n"
        );
        let tls = [
            "listeners.tcp = none".to_owned(),
            "listeners.ssl.default = 127.0.0.1:{amqp_port}".to_owned(),
        ];
        assert_eq!(
            config_text(20001, &tls),
            "loopback_users = none\nlisteners.tcp = none\nlisteners.ssl.default = 127.0.0.1:20001\n"
        );
    }
}

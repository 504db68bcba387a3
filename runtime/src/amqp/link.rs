//! The supervised broker link: one AMQP connection per service, kept up for the service's life.
//!
//! The supervisor connects (to the first broker node that answers, when there are several),
//! declares the topology, opens the publisher channel, and only then reports the link up. When
//! the connection fails it reports the link down at once and connects afresh, to the next node
//! first; every connection is a new [`Session`] with a new generation, so nothing made on a dead
//! connection (a channel, a consumer, a delivery) is ever mistaken for a live one. lapin's own
//! automatic recovery is off on purpose: it resumed consumers before the topology was declared
//! and held publisher confirms of a dead connection until it came back.

use super::{
    config::{AmqpConfig, AmqpUrl, TLS_KEYS},
    publisher::Publisher,
    topology::{self, AccessRefused, TopologyError},
};
use crate::tls::describe_handshake_error;
use futures::StreamExt;
use jobpipe_proto::topology::Plan;
use lapin::{
    Channel, Connection, ConnectionProperties, Event,
    options::ConfirmSelectOptions,
    tcp::{AsyncTcpStream, RustlsConnector},
    uri::AMQPUri,
};
use std::io;
use std::{sync::Arc, time::Duration};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often the supervisor looks at the connection besides lapin's events (a channel the
/// broker closed sends none). A read lock per tick costs nothing.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Reconnect backoff bounds. The ceiling keeps the link back within about a second of the
/// broker's return; an attempt against a node that is down costs one refused TCP connect.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The least time between two replacements of a suspect publisher channel.
const SUSPECT_REPLACE_EVERY: Duration = Duration::from_secs(1);
/// How often an outage is logged as a warning while it lasts (each attempt is a debug event).
const WARN_EVERY: Duration = Duration::from_secs(30);
/// How long closing a connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the link does with the topology on every (re)connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declare {
    /// Declare every object (idempotent).
    Declare,
    /// Only check that every object exists (someone else declares them).
    Verify,
}

impl Declare {
    /// The mode `topology.declare` asks for.
    pub fn from_config(declare: bool) -> Self {
        if declare { Self::Declare } else { Self::Verify }
    }
}

/// A handle on the supervised connection. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Link {
    state: watch::Receiver<LinkState>,
}

/// Where the link stands.
#[derive(Clone, Debug)]
pub enum LinkState {
    /// Not connected: not yet, or not any more. Publishing fails fast.
    Down(Option<Arc<LinkError>>),
    /// Connected with the topology declared. Sent again when the broker blocks or unblocks
    /// publishing on the same connection.
    Up(Session),
    /// Shut down for good.
    Closed,
}

/// Why the link is down.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The broker could not be reached or refused the connection.
    #[error("cannot connect to the broker at {endpoint}: {reason}")]
    Connect {
        /// Host and port (never the URL: it holds the password).
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The broker's objects disagree with this service's configuration.
    #[error(transparent)]
    Topology(#[from] TopologyError),
}

/// One established connection, with its topology declared and a confirming publisher. Cheap to
/// clone.
#[derive(Clone, Debug)]
pub struct Session(Arc<Established>);

#[derive(Debug)]
struct Established {
    connection: Arc<Connection>,
    publisher: Publisher,
    generation: u64,
    /// The node's host and port, for logs.
    endpoint: String,
    /// Its index in the configured addresses.
    address: usize,
    /// Whether the connection before this one failed on a frame lapin could not read.
    after_unreadable_frame: bool,
}

impl Session {
    /// The publisher for this connection (publisher confirms on).
    pub fn publisher(&self) -> &Publisher {
        &self.0.publisher
    }

    /// Opens a new channel on this connection.
    pub async fn open_channel(&self) -> Result<Channel, lapin::Error> {
        self.0.connection.create_channel().await
    }

    /// Counts connections made over the link's life. Channels, consumers and deliveries belong
    /// to one generation and die with its connection.
    pub fn generation(&self) -> u64 {
        self.0.generation
    }

    /// Whether the connection is up right now (the supervisor may not have noticed a failure
    /// yet while a session is held).
    pub fn is_connected(&self) -> bool {
        self.0.connection.status().connected()
    }

    /// Whether the connection before this one was dropped because the broker sent a frame the
    /// AMQP library cannot read (invalid UTF-8 in a short string, say). The message that did it
    /// is back at the head of its queue and will drop this connection too if it comes here:
    /// consumers take one delivery at a time until one arrives intact, so that it costs no other
    /// job a delivery.
    pub fn follows_unreadable_frame(&self) -> bool {
        self.0.after_unreadable_frame
    }

    /// Whether the broker accepts publishes on this connection now: connected and not blocked
    /// by a resource alarm.
    pub fn can_publish(&self) -> bool {
        let status = self.0.connection.status();
        status.connected() && !status.blocked()
    }

    /// The same connection with another publisher channel.
    fn with_publisher(&self, publisher: Publisher) -> Self {
        Self(Arc::new(Established {
            connection: self.0.connection.clone(),
            publisher,
            generation: self.0.generation,
            endpoint: self.0.endpoint.clone(),
            address: self.0.address,
            after_unreadable_frame: self.0.after_unreadable_frame,
        }))
    }
}

impl Link {
    /// Starts supervising a connection that declares `plan` on every (re)connect and checks that
    /// it may publish to `publishes_to`. The returned task ends, with the connection closed, once
    /// `shutdown` is cancelled.
    pub fn spawn(
        config: AmqpConfig,
        plan: Plan,
        declare: Declare,
        publishes_to: Vec<String>,
        connection_name: String,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (sender, state) = watch::channel(LinkState::Down(None));
        let supervisor = Supervisor {
            plan,
            declare,
            publishes_to,
            connection_name,
            shutdown,
            next: config.first_address(),
            config,
            state: sender,
            generation: 0,
        };
        (Self { state }, tokio::spawn(supervisor.run()))
    }

    /// The current session, if the link is up.
    pub fn session(&self) -> Option<Session> {
        match &*self.state.borrow() {
            LinkState::Up(session) if session.is_connected() => Some(session.clone()),
            _ => None,
        }
    }

    /// Waits until a session can publish (up, connected, not blocked by a resource alarm);
    /// `None` once the link is closed for good. Callers bound the wait.
    pub async fn publishable(&self) -> Option<Session> {
        let mut state = self.state.clone();
        loop {
            match &*state.borrow_and_update() {
                LinkState::Up(session) if session.can_publish() => return Some(session.clone()),
                LinkState::Closed => return None,
                LinkState::Up(_) | LinkState::Down(_) => {}
            }
            state.changed().await.ok()?;
        }
    }

    /// A receiver of every state change, for health reporting and consumers.
    pub fn watch(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// Waits until the link is first up, or first fails for a reason a restart will not fix
    /// (a topology mismatch, a missing permission). Transient connection errors are waited out. Returns `Ok(false)`
    /// if the link closed first.
    pub async fn wait_first_up(&self) -> Result<bool, Arc<LinkError>> {
        let mut state = self.state.clone();
        loop {
            match &*state.borrow_and_update() {
                LinkState::Up(_) => return Ok(true),
                LinkState::Closed => return Ok(false),
                LinkState::Down(Some(error)) if matches!(**error, LinkError::Topology(_)) => {
                    return Err(error.clone());
                }
                LinkState::Down(_) => {}
            }
            if state.changed().await.is_err() {
                return Ok(false);
            }
        }
    }
}

struct Supervisor {
    config: AmqpConfig,
    plan: Plan,
    declare: Declare,
    /// The exchanges this service publishes to.
    publishes_to: Vec<String>,
    connection_name: String,
    shutdown: CancellationToken,
    state: watch::Sender<LinkState>,
    generation: u64,
    /// The index in `config.addresses()` of the node to try first.
    next: usize,
}

impl Supervisor {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut down_since: Option<Instant> = None;
        let mut warned: Option<Instant> = None;
        let mut after_unreadable_frame = false;
        loop {
            let connected = tokio::select! {
                () = self.shutdown.cancelled() => break,
                connected = self.connect(after_unreadable_frame) => connected,
            };
            match connected {
                Ok(session) => {
                    self.generation = session.0.generation;
                    backoff = BACKOFF_MIN;
                    warned = None;
                    info!(
                        endpoint = %session.0.endpoint,
                        generation = session.0.generation,
                        down_ms = down_since.take().map(|since| since.elapsed().as_millis()),
                        "Connected to the broker."
                    );
                    self.state.send_replace(LinkState::Up(session.clone()));
                    match self.supervise(session).await {
                        Ended::Shutdown(session) => {
                            close(&session.0.connection).await;
                            break;
                        }
                        Ended::Lost(session, unreadable_frame) => {
                            after_unreadable_frame = unreadable_frame;
                            down_since = Some(Instant::now());
                            // The node that just failed is tried last.
                            self.next = (session.0.address + 1) % self.config.addresses().len();
                            abandon(session.0.connection.clone());
                        }
                    }
                }
                Err(error) => {
                    let since = *down_since.get_or_insert_with(Instant::now);
                    // During an outage every attempt fails alike: say so now and then, not
                    // once per attempt.
                    if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                        warn!(%error, down_s = since.elapsed().as_secs(), "Broker link is down.");
                        warned = Some(Instant::now());
                    } else {
                        debug!(%error, "Broker link is still down.");
                    }
                    self.state
                        .send_replace(LinkState::Down(Some(Arc::new(error))));
                    tokio::select! {
                        () = self.shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
        self.state.send_replace(LinkState::Closed);
    }

    /// Connects to the first node that answers, starting at `self.next`, declares the topology
    /// and opens the publisher channel. A topology error ends the round: every node of a
    /// cluster would say the same.
    async fn connect(&self, after_unreadable_frame: bool) -> Result<Session, LinkError> {
        let count = self.config.addresses().len();
        let mut last = None;
        for offset in 0..count {
            let address = (self.next + offset) % count;
            match self.connect_to(address, after_unreadable_frame).await {
                Ok(session) => return Ok(session),
                Err(error @ LinkError::Topology(_)) => return Err(error),
                Err(error) => {
                    debug!(%error, "Cannot connect to this broker node.");
                    last = Some(error);
                }
            }
        }
        Err(last.expect("there is at least one broker address"))
    }

    async fn connect_to(
        &self,
        address: usize,
        after_unreadable_frame: bool,
    ) -> Result<Session, LinkError> {
        let url = &self.config.addresses()[address];
        let connection = Arc::new(open(&self.config, url, &self.connection_name).await?);
        match bounded(&self.config, url, self.set_up(&connection, url)).await {
            Ok(publisher) => Ok(Session(Arc::new(Established {
                endpoint: url.endpoint(),
                publisher,
                connection,
                generation: self.generation + 1,
                address,
                after_unreadable_frame,
            }))),
            Err(error) => {
                abandon(connection);
                Err(error)
            }
        }
    }

    /// Declares (or verifies) the topology and opens the publisher channel; on the first
    /// connection, checks the publish permissions too.
    async fn set_up(&self, connection: &Connection, url: &AmqpUrl) -> Result<Publisher, LinkError> {
        // A refused declaration closes its channel: use one of its own.
        let channel = connection
            .create_channel()
            .await
            .map_err(|error| connect_error(url, error))?;
        let declared = match self.declare {
            Declare::Declare => topology::declare(&channel, &self.plan).await,
            Declare::Verify => topology::verify(&channel, &self.plan).await,
        };
        // The channel is closed by the broker already when a declaration was refused.
        let _ = channel.close(200, "declared".into()).await;
        declared?;
        if self.generation == 0 {
            self.check_publish(url).await?;
        }
        self.open_publisher(connection, url).await
    }

    /// Checks, once at start, that this service may publish where it publishes, so that a
    /// missing permission stops it at once instead of failing its first job. On a connection of
    /// its own: a broker blocking publishers (a resource alarm) would block the connection that
    /// published, consumers' acks included, until the alarm clears. If the broker does not
    /// answer in time, the check is skipped with a warning.
    async fn check_publish(&self, url: &AmqpUrl) -> Result<(), LinkError> {
        let name = format!("{} (permission check)", self.connection_name);
        let connection = Arc::new(open(&self.config, url, &name).await?);
        let checked = tokio::time::timeout(self.config.confirm_timeout, async {
            let channel = connection.create_channel().await?;
            topology::check_publish(&channel, &self.publishes_to).await
        })
        .await;
        abandon(connection);
        match checked {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(
                match AccessRefused::from_error(&error, "publishing needs write access") {
                    Some(refused) => TopologyError::from(refused).into(),
                    None => connect_error(url, error),
                },
            ),
            Err(_elapsed) => {
                warn!(
                    "The broker did not confirm the publish permission check in time (is it \
                     blocking publishers?); going on without it."
                );
                Ok(())
            }
        }
    }

    /// A channel in confirm mode for publishing.
    async fn open_publisher(
        &self,
        connection: &Connection,
        url: &AmqpUrl,
    ) -> Result<Publisher, LinkError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|error| connect_error(url, error))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|error| connect_error(url, error))?;
        Ok(Publisher::new(
            channel,
            connection.status().clone(),
            self.config.confirm_timeout,
        ))
    }

    /// Follows one connection until it fails or shutdown. lapin reports a failure as an event
    /// the moment it sees it (a closed socket, missed heartbeats, a broker's close), so the link
    /// is down before anyone tries to use the dead connection; a periodic look catches what
    /// sends no event. Blocked and unblocked (resource alarms) are announced as a new `Up`, so
    /// whoever waits to publish wakes up. A publisher channel the broker closed, or one that
    /// may be stuck, is replaced and announced the same way.
    async fn supervise(&self, mut session: Session) -> Ended {
        let mut events = session.0.connection.events_listener();
        let mut blocked = session.0.connection.status().blocked();
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        let mut replaced = Instant::now();
        let mut failure = None;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return Ended::Shutdown(session),
                event = events.next() => {
                    if let Some(Event::Error(error)) = event {
                        failure = Some(error);
                    }
                }
                _ = ticker.tick() => {}
            }
            let status = session.0.connection.status();
            if !status.connected() {
                let unreadable = failure
                    .as_ref()
                    .is_some_and(|error| matches!(error.kind(), lapin::ErrorKind::ParsingError(_)));
                // lapin's own logs are off: this is the one line a failed connection gets.
                let error = failure.map_or_else(|| "closed".to_owned(), |error| one_line(&error));
                if unreadable {
                    warn!(
                        endpoint = %session.0.endpoint,
                        %error,
                        "The broker sent a message the AMQP library cannot read; reconnecting. \
                         Consumers take one delivery at a time until one arrives intact. The \
                         message reaches its dead-letter queue after topology.delivery_limit \
                         such drops, without a jobpipe failure record."
                    );
                } else {
                    warn!(endpoint = %session.0.endpoint, %error, "Broker connection lost; reconnecting.");
                }
                self.state.send_replace(LinkState::Down(None));
                return Ended::Lost(session, unreadable);
            }
            if status.blocked() != blocked {
                blocked = status.blocked();
                if blocked {
                    warn!("The broker blocked publishing (resource alarm).");
                } else {
                    info!("The broker unblocked publishing.");
                }
                self.state.send_replace(LinkState::Up(session.clone()));
            }
            // The broker closed the channel itself (a deleted exchange, a refused message):
            // without a new one every publish would fail while the link looks up; declaring
            // again restores what an operator may have deleted. Or a publish was refused or
            // unconfirmed, which may be the channel's own fault (see `Publisher::is_suspect`):
            // a fresh channel costs a round trip, and at most one a second, since a full queue
            // refuses the new one too.
            let why = if session.publisher().is_closed() {
                Replace::Closed
            } else if session.publisher().is_suspect()
                && replaced.elapsed() >= SUSPECT_REPLACE_EVERY
            {
                Replace::Suspect
            } else {
                continue;
            };
            let url = &self.config.addresses()[session.0.address];
            let connection = &session.0.connection;
            let opened = bounded(&self.config, url, async {
                match why {
                    Replace::Closed => self.set_up(connection, url).await,
                    Replace::Suspect => self.open_publisher(connection, url).await,
                }
            })
            .await;
            match opened {
                Ok(publisher) => {
                    match why {
                        Replace::Closed => {
                            warn!("The broker closed the publisher channel; opened another.");
                        }
                        Replace::Suspect => debug!("Replaced a suspect publisher channel."),
                    }
                    session = session.with_publisher(publisher);
                    replaced = Instant::now();
                    self.state.send_replace(LinkState::Up(session.clone()));
                }
                Err(error) => {
                    warn!(%error, "Cannot replace the publisher channel; reconnecting.");
                    self.state.send_replace(LinkState::Down(None));
                    return Ended::Lost(session, false);
                }
            }
        }
    }
}

/// Why the publisher channel is replaced.
#[derive(Debug, Clone, Copy)]
enum Replace {
    /// The broker closed it.
    Closed,
    /// A publish on it was nacked or unconfirmed.
    Suspect,
}

/// How supervising a connection ended.
enum Ended {
    /// Shutdown: close the connection.
    Shutdown(Session),
    /// The connection failed or was given up on: connect afresh. `true` when it failed on a frame
    /// lapin could not read.
    Lost(Session, bool),
}

/// An error's text on one line (the parser's context list spans several).
fn one_line(error: &lapin::Error) -> String {
    error
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Lets go of a connection that failed or was given up on; one still open is closed in the
/// background, so reconnecting does not wait for it.
fn abandon(connection: Arc<Connection>) {
    if connection.status().connected() {
        tokio::spawn(async move { close(&connection).await });
    }
}

/// Opens an AMQP connection to `url` (TCP and handshake, no channel yet), under the connect and
/// handshake deadlines.
async fn open(config: &AmqpConfig, url: &AmqpUrl, name: &str) -> Result<Connection, LinkError> {
    let uri = config.connection_uri(url);
    // No automatic recovery: a failed connection is replaced by a new one, so a consumer never
    // receives deliveries before the link says it is up, and confirms pending on a dead
    // connection fail at once instead of waiting for a recovery.
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connecting = async {
        if !url.is_tls() {
            return Connection::connect_uri(uri, properties).await;
        }
        // TLS on our own terms: only the configured CA (or the system's roots), the name
        // always verified, and no path that hands back a plain stream.
        let tls = config
            .tls
            .client_config(TLS_KEYS)
            .map_err(|error| lapin::Error::from(io::Error::other(error)))?;
        let connector = RustlsConnector::from(tls);
        let server_name =
            (config.tls.server_name.clone()).unwrap_or_else(|| uri.authority.host.clone());
        let connect_timeout = config.connect_timeout;
        let runtime = lapin::runtime::default_runtime()?;
        Connection::connector(
            uri,
            runtime,
            async move |uri: AMQPUri, runtime| {
                let addrs =
                    runtime.to_socket_addrs((uri.authority.host.clone(), uri.authority.port));
                let tcp =
                    tokio::time::timeout(connect_timeout, AsyncTcpStream::connect(&runtime, addrs))
                        .await
                        .map_err(|_| {
                            io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out")
                        })??;
                Ok(tcp.into_rustls(&connector, &server_name).await?)
            },
            properties,
        )
        .await
    };
    // A handshake that hangs (the TCP side accepted, the broker never answers) must not stall
    // the supervisor.
    tokio::time::timeout(config.recovery_timeout, connecting)
        .await
        .map_err(|_| connect_error(url, "the AMQP handshake timed out"))?
        .map_err(|error| match error.kind() {
            lapin::ErrorKind::IOError(io) if url.is_tls() => {
                connect_error(url, describe_handshake_error(io, TLS_KEYS))
            }
            _ => connect_error(url, error),
        })
}

/// Declares `plan` once on a connection of its own and closes it: for the deploy job that owns the
/// topology when the services only check it. The first node that answers does it.
pub async fn declare_once(
    config: &AmqpConfig,
    plan: &Plan,
    connection_name: String,
) -> Result<(), LinkError> {
    let mut last = None;
    for url in config.addresses() {
        let connection = match open(config, url, &connection_name).await {
            Ok(connection) => connection,
            Err(error) => {
                last = Some(error);
                continue;
            }
        };
        let declared = bounded(config, url, async {
            let channel = connection
                .create_channel()
                .await
                .map_err(|error| connect_error(url, error))?;
            Ok(topology::declare(&channel, plan).await?)
        })
        .await;
        close(&connection).await;
        return declared;
    }
    Err(last.expect("there is at least one broker address"))
}

/// Runs a setup step under `config.recovery_timeout`: a broker that stops answering (a resource
/// alarm stops every write) must not hold the caller.
async fn bounded<T>(
    config: &AmqpConfig,
    url: &AmqpUrl,
    step: impl Future<Output = Result<T, LinkError>>,
) -> Result<T, LinkError> {
    tokio::time::timeout(config.recovery_timeout, step)
        .await
        .unwrap_or_else(|_| Err(connect_error(url, "the broker stopped answering")))
}

fn connect_error(url: &AmqpUrl, reason: impl std::fmt::Display) -> LinkError {
    LinkError::Connect {
        endpoint: url.endpoint(),
        reason: reason.to_string(),
    }
}

async fn close(connection: &Connection) {
    if connection.status().connected() {
        // Closing a connection that is already failing can fail too, and a blocked broker may
        // never answer: there is nothing more to do either way.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, "shutting down".into()))
            .await;
    }
}

/// The name a service's connection shows in RabbitMQ (`jobpipe-producer@host:pid`), so operators
/// and tests can find it.
pub fn connection_name(service: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{service}@{host}:{}", std::process::id())
}

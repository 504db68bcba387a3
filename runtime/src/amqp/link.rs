//! The supervised broker link: one AMQP connection per service, kept up for the service's life.
//!
//! lapin's automatic recovery handles short outages (it reconnects and reopens channels and
//! consumers). The supervisor here adds what recovery does not: the first connection, topology
//! declaration on every (re)connect, a bound on how long recovery may take before the connection is
//! rebuilt from scratch, and a [`LinkState`] everyone can watch to fail fast while the broker is
//! away instead of hanging.

use super::{
    config::AmqpConfig,
    publisher::Publisher,
    topology::{self, TopologyError},
};
use jobpipe_proto::topology::Plan;
use lapin::{Channel, Connection, ConnectionProperties, options::ConfirmSelectOptions};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the supervisor looks at the connection's status. lapin reports recovery only
/// through the status, so it is polled; a read lock per tick costs nothing.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// The supervisor's own reconnect backoff bounds, after lapin gave up.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long closing a connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an abandoned connection is watched before it is simply dropped.
const RETIRE_WATCH: Duration = Duration::from_secs(600);

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
    /// Connected with the topology declared.
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

/// One established connection, with its topology declared and a confirming publisher.
#[derive(Clone, Debug)]
pub struct Session {
    connection: Arc<Connection>,
    publisher: Publisher,
    generation: u64,
}

impl Session {
    /// The publisher for this connection (publisher confirms on).
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Opens a new channel on this connection.
    pub async fn open_channel(&self) -> Result<Channel, lapin::Error> {
        self.connection.create_channel().await
    }

    /// Counts connections made over the link's life; a consumer uses it to tell a rebuilt
    /// connection (its channels are gone) from one lapin recovered (its channels came back).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether the connection is up right now (it may be recovering while a session is held).
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }
}

impl Link {
    /// Starts supervising a connection that declares `plan` on every (re)connect. The returned
    /// task ends, with the connection closed, once `shutdown` is cancelled.
    pub fn spawn(
        config: AmqpConfig,
        plan: Plan,
        declare: Declare,
        connection_name: String,
        shutdown: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (sender, state) = watch::channel(LinkState::Down(None));
        let supervisor = Supervisor {
            config,
            plan,
            declare,
            connection_name,
            shutdown,
            state: sender,
            generation: AtomicU64::new(0),
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

    /// A receiver of every state change, for health reporting and consumers.
    pub fn watch(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// Waits until the link is first up, or first fails for a reason a restart will not fix
    /// (a topology mismatch). Transient connection errors are waited out. Returns `Ok(false)`
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
    connection_name: String,
    shutdown: CancellationToken,
    state: watch::Sender<LinkState>,
    generation: AtomicU64,
}

impl Supervisor {
    async fn run(self) {
        let mut backoff = BACKOFF_MIN;
        while !self.shutdown.is_cancelled() {
            let connected = tokio::select! {
                () = self.shutdown.cancelled() => break,
                connected = self.connect() => connected,
            };
            match connected {
                Ok(session) => {
                    backoff = BACKOFF_MIN;
                    info!(endpoint = %self.config.url.endpoint(), "Connected to the broker.");
                    self.state.send_replace(LinkState::Up(session.clone()));
                    match self.supervise(session).await {
                        Ended::Shutdown(session) => close(&session.connection).await,
                        Ended::Lost(session) => retire(session.connection),
                    }
                }
                Err(error) => {
                    warn!(%error, "Broker link is down.");
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

    /// Connects, declares the topology and opens the publisher channel.
    async fn connect(&self) -> Result<Session, LinkError> {
        let mut uri = self.config.url.uri().clone();
        uri.query.heartbeat = Some(u16::try_from(self.config.heartbeat.as_secs()).unwrap_or(60));
        uri.query.connection_timeout = u64::try_from(self.config.connect_timeout.as_millis()).ok();
        uri.query.frame_max = Some(self.config.frame_max);
        let properties = ConnectionProperties::default()
            .with_connection_name(self.connection_name.clone().into())
            // lapin retries the TCP connection itself with this backoff, for the first
            // connection and during recovery; past it, the supervisor rebuilds.
            .configure_backoff(|backoff| {
                backoff
                    .with_min_delay(BACKOFF_MIN)
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(8)
            })
            .enable_auto_recover();
        // A handshake that hangs (the TCP side accepted, the broker never answers) must not
        // stall the supervisor forever; lapin's own timeout covers only the TCP connect.
        let connection = tokio::time::timeout(
            self.config.recovery_timeout,
            Connection::connect_uri(uri, properties),
        )
        .await
        .map_err(|_| connect_error(&self.config, "the AMQP handshake timed out"))?
        .map_err(|error| connect_error(&self.config, error))?;
        let connection = Arc::new(connection);
        match self.set_up(&connection).await {
            Ok(publisher) => Ok(Session {
                publisher,
                connection,
                generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            }),
            Err(error) => {
                retire(connection);
                Err(error)
            }
        }
    }

    /// Declares (or verifies) the topology and opens the publisher channel, under a deadline.
    async fn set_up(&self, connection: &Connection) -> Result<Publisher, LinkError> {
        bounded(&self.config, async {
            self.declare(connection).await?;
            self.open_publisher(connection).await
        })
        .await
    }

    /// A channel in confirm mode for publishing.
    async fn open_publisher(&self, connection: &Connection) -> Result<Publisher, LinkError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|error| connect_error(&self.config, error))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|error| connect_error(&self.config, error))?;
        Ok(Publisher::new(
            channel,
            connection.status().clone(),
            self.config.confirm_timeout,
        ))
    }

    async fn declare(&self, connection: &Connection) -> Result<(), LinkError> {
        // A refused declaration closes its channel: use one of its own.
        let channel = connection
            .create_channel()
            .await
            .map_err(|error| connect_error(&self.config, error))?;
        let declared = match self.declare {
            Declare::Declare => topology::declare(&channel, &self.plan).await,
            Declare::Verify => topology::verify(&channel, &self.plan).await,
        };
        // The channel is closed by the broker already when a declaration was refused.
        let _ = channel.close(200, "declared".into()).await;
        declared.map_err(LinkError::from)
    }

    /// Follows one connection until it is gone for good, lapin's recovery took too long, or
    /// shutdown. Reports Down while lapin recovers and Up (re-declaring) when it is back, and
    /// replaces the publisher channel if the broker closes it while the connection lives.
    async fn supervise(&self, mut session: Session) -> Ended {
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        let mut down_since: Option<Instant> = None;
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return Ended::Shutdown(session),
                _ = ticker.tick() => {}
            }
            let status = session.connection.status();
            if status.connected() {
                if down_since.take().is_some() {
                    // Recovered by lapin: declare again, in case the broker lost its state.
                    let declared = bounded(&self.config, self.declare(&session.connection)).await;
                    if let Err(error) = declared {
                        warn!(%error, "Topology declaration after recovery failed.");
                        self.state
                            .send_replace(LinkState::Down(Some(Arc::new(error))));
                        return Ended::Lost(session);
                    }
                    info!("Broker connection recovered.");
                    self.state.send_replace(LinkState::Up(session.clone()));
                } else if session.publisher.is_closed() {
                    // The broker closed the channel itself (a deleted exchange, a refused
                    // message) and lapin does not reopen it: without a new one every publish
                    // would fail while the link looks up. Declaring again restores what an
                    // operator may have deleted.
                    match self.set_up(&session.connection).await {
                        Ok(publisher) => {
                            warn!("The broker closed the publisher channel; opened another.");
                            session.publisher = publisher;
                            self.state.send_replace(LinkState::Up(session.clone()));
                        }
                        Err(error) => {
                            warn!(%error, "Cannot reopen the publisher channel; reconnecting.");
                            self.state.send_replace(LinkState::Down(None));
                            return Ended::Lost(session);
                        }
                    }
                }
                continue;
            }
            if status.errored() || status.closed() {
                warn!("Broker connection lost; reconnecting.");
                self.state.send_replace(LinkState::Down(None));
                return Ended::Lost(session);
            }
            let since = *down_since.get_or_insert_with(|| {
                warn!("Broker connection lost; lapin is recovering it.");
                self.state.send_replace(LinkState::Down(None));
                Instant::now()
            });
            if since.elapsed() > self.config.recovery_timeout {
                warn!(
                    timeout = ?self.config.recovery_timeout,
                    "Broker connection recovery is taking too long; rebuilding the connection."
                );
                return Ended::Lost(session);
            }
        }
    }
}

/// How supervising a connection ended.
enum Ended {
    /// Shutdown: close the connection.
    Shutdown(Session),
    /// The connection is gone or given up on: retire it and connect afresh.
    Lost(Session),
}

/// Closes an abandoned connection for good. One that lapin is still recovering would otherwise come
/// back on its own later, reopen the channels it had, and resubscribe consumers nobody reads;
/// so it is watched until it either reconnects (then closed) or gives up (then dropped).
fn retire(connection: Arc<Connection>) {
    tokio::spawn(async move {
        let deadline = Instant::now() + RETIRE_WATCH;
        while Instant::now() < deadline {
            let status = connection.status();
            if status.connected() {
                close(&connection).await;
                return;
            }
            if status.errored() || status.closed() {
                return;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    });
}

/// Declares `plan` once on a connection of its own and closes it: for the deploy job that owns the
/// topology when the services only check it.
pub async fn declare_once(
    config: &AmqpConfig,
    plan: &Plan,
    connection_name: String,
) -> Result<(), LinkError> {
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    bounded(config, async {
        let connection = Connection::connect_uri(config.url.uri().clone(), properties)
            .await
            .map_err(|error| connect_error(config, error))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(|error| connect_error(config, error))?;
        let declared = topology::declare(&channel, plan).await;
        close(&connection).await;
        declared.map_err(LinkError::from)
    })
    .await
}

/// Runs a setup step under `config.recovery_timeout`: a broker that stops answering (a resource
/// alarm stops every write) must not hold the caller.
async fn bounded<T>(
    config: &AmqpConfig,
    step: impl Future<Output = Result<T, LinkError>>,
) -> Result<T, LinkError> {
    tokio::time::timeout(config.recovery_timeout, step)
        .await
        .unwrap_or_else(|_| Err(connect_error(config, "the broker stopped answering")))
}

fn connect_error(config: &AmqpConfig, reason: impl std::fmt::Display) -> LinkError {
    LinkError::Connect {
        endpoint: config.url.endpoint(),
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

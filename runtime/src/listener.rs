//! Accepting connections without trusting the peers: at most so many open at once (one more is
//! accepted and closed at once), a connection that sends nothing within the handshake timeout is
//! dropped (a TLS handshake gets as long), and running out of file descriptors backs off
//! instead of spinning. Both the gRPC and the admin port accept through here.

use crate::tls::{ReloadingServerConfig, subject_common_name};
use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};
use tracing::{debug, warn};

/// The first pause after the process ran out of file descriptors (or memory for a socket),
/// doubled up to [`BACKOFF_MAX`] while it lasts.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// How many connections a listener keeps, and how long a new one may stay silent.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; beyond it new ones are closed as soon as they are accepted.
    pub max_connections: usize,
    /// How long a new connection may take to send its first byte.
    pub handshake_timeout: Duration,
}

/// A listener that hands out [`Limited`] connections.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    limits: ConnectionLimits,
}

impl Listener {
    /// Wraps a bound listener.
    pub fn new(listener: TcpListener, limits: ConnectionLimits) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection within the limits. Errors of one connection (reset before it was
    /// accepted) are skipped; a lack of descriptors or memory is waited out with backoff.
    pub async fn accept(&self) -> (Limited, SocketAddr) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                        debug!(%peer, "Connection limit reached; closing a new connection.");
                        drop(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    return (
                        Limited::new(stream, permit, self.limits.handshake_timeout),
                        peer,
                    );
                }
                Err(error) if is_resource_exhaustion(&error) => {
                    warn!(%error, pause = ?backoff, "Cannot accept connections; pausing.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(error) => debug!(%error, "A connection failed before it was accepted."),
            }
        }
    }

    /// The accepted connections as a stream, for a server that takes one: plain, or, with `tls`,
    /// each after its TLS handshake (done beside the accepting, within the handshake timeout, so
    /// a slow client holds up no other).
    pub fn into_stream(
        self,
        tls: Option<ReloadingServerConfig>,
    ) -> impl futures::Stream<Item = io::Result<Connection>> + Send {
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = sender.closed() => return,
                    accepted = self.accept() => accepted,
                };
                let Some(tls) = &tls else {
                    if sender.send(Ok(Connection::Plain(stream))).await.is_err() {
                        return;
                    }
                    continue;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
                let (sender, timeout) = (sender.clone(), self.limits.handshake_timeout);
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send(Ok(Connection::Tls(Box::new(tls)))).await;
                        }
                        Ok(Err(error)) => debug!(%peer, %error, "TLS handshake failed."),
                        Err(_) => debug!(%peer, "TLS handshake timed out."),
                    }
                });
            }
        });
        futures::stream::unfold(receiver, |mut receiver| async move {
            receiver
                .recv()
                .await
                .map(|connection| (connection, receiver))
        })
    }
}

/// An accepted connection, plain or TLS.
#[derive(Debug)]
pub enum Connection {
    /// Plaintext.
    Plain(Limited),
    /// TLS, handshake done.
    Tls(Box<tokio_rustls::server::TlsStream<Limited>>),
}

/// Who is at the other end of a connection, as the transport knows it: its address, and the
/// common name of the client certificate it presented (mutual TLS). gRPC requests carry it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's address.
    pub address: Option<SocketAddr>,
    /// The subject common name of its verified client certificate.
    pub certificate_name: Option<String>,
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        match self {
            Self::Plain(stream) => PeerInfo {
                address: stream.stream.peer_addr().ok(),
                certificate_name: None,
            },
            Self::Tls(tls) => {
                let (stream, session) = tls.get_ref();
                PeerInfo {
                    address: stream.stream.peer_addr().ok(),
                    certificate_name: session
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(subject_common_name),
                }
            }
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Self::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Running out of descriptors or socket memory: every accept fails alike until something
/// closes, so the loop must wait rather than retry at once.
fn is_resource_exhaustion(error: &io::Error) -> bool {
    const EMFILE: i32 = 24;
    const ENFILE: i32 = 23;
    const ENOBUFS: i32 = 105;
    const ENOMEM: i32 = 12;
    matches!(
        error.raw_os_error(),
        Some(EMFILE | ENFILE | ENOBUFS | ENOMEM)
    )
}

/// An accepted connection holding its place under the limit until it closes. Until its first
/// byte arrives, reading fails after the handshake timeout.
#[derive(Debug)]
pub struct Limited {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Running until the first byte is read.
    handshake: Option<Pin<Box<Sleep>>>,
}

impl Limited {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, handshake: Duration) -> Self {
        Self {
            stream,
            _permit: permit,
            handshake: Some(Box::pin(tokio::time::sleep(handshake))),
        }
    }

    /// The underlying stream.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Some(handshake) = self.handshake.as_mut() {
            match &read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => self.handshake = None,
                Poll::Pending if handshake.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer sent nothing within the handshake timeout",
                    )));
                }
                _ => {}
            }
        }
        read
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

//! A TCP proxy on loopback that a test can cut and restore, to take the broker away from a
//! service without touching the shared broker, or hold, to keep the broker's answers (publish
//! confirms) from a service for a moment.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
};

/// Forwards connections to an upstream address while open; when cut, drops every connection and
/// refuses new ones (accepted and closed at once, as a dead broker would look).
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    held: watch::Sender<bool>,
    connections: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` on a free loopback port.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (open, is_open) = watch::channel(true);
        let (held, is_held) = watch::channel(false);
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*is_open.borrow() {
                    drop(client);
                    continue;
                }
                let mut cut = is_open.clone();
                let held = is_held.clone();
                let mut set = tracked.lock().expect("proxy lock");
                set.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        () = forward(client, server, held) => {}
                        _ = cut.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            open,
            held,
            connections,
            accept,
        })
    }

    /// The address to connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An `amqp://` URL through this proxy with the test broker's credentials.
    pub fn amqp_url(&self) -> String {
        let (_, user, password, vhost) = crate::broker::broker_parts();
        format!("amqp://{user}:{password}@{}/{vhost}", self.addr)
    }

    /// Drops every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.open.send_replace(false);
        self.connections.lock().expect("proxy lock").abort_all();
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }

    /// Keeps what the upstream sends from the clients (it waits in the proxy) while the
    /// connections stay open and the clients' own bytes still go through.
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Passes on what [`Proxy::hold`] kept back, and everything after it.
    pub fn release(&self) {
        self.held.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.connections.lock().map(|mut set| set.abort_all()).ok();
    }
}

/// Copies both ways until both sides are done, as `copy_bidirectional` does, except that bytes
/// from the upstream wait while `held` is true.
async fn forward(client: TcpStream, server: TcpStream, mut held: watch::Receiver<bool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    };
    let down = async {
        let mut buffer = vec![0; 64 * 1024];
        while let Ok(read @ 1..) = server_read.read(&mut buffer).await {
            // Checked after the read: what arrives while held is not passed on until released.
            if held.wait_for(|held| !*held).await.is_err()
                || client_write.write_all(&buffer[..read]).await.is_err()
            {
                break;
            }
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(up, down);
}

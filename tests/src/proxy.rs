//! A TCP proxy on loopback that a test can cut and restore, to take the broker away from a
//! service without touching the shared broker.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};
use tokio::{
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
    connections: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` on a free loopback port.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (open, is_open) = watch::channel(true);
        let connections = Arc::new(Mutex::new(JoinSet::new()));
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*is_open.borrow() {
                    drop(client);
                    continue;
                }
                let mut cut = is_open.clone();
                let mut set = tracked.lock().expect("proxy lock");
                set.spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            open,
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
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.connections.lock().map(|mut set| set.abort_all()).ok();
    }
}

//! The harness jobpipe's integration tests share: the real broker with a topology per test
//! ([`broker`]), services run in-process ([`producer`], [`consumer`], both at once: [`stack`]) or as processes ([`process`]), a
//! proxy to cut connections ([`proxy`]), throwaway RabbitMQ nodes and clusters to stop, kill and
//! alarm ([`node`]), certificates made for the test ([`certs`]), third-party clients ([`tools`]), a process's memory and CPU ([`procstat`]),
//! the example workers in other languages ([`workers`]), and a real OTLP collector ([`otlp`]). Every
//! wait is bounded by [`within`].

pub mod broker;
pub mod certs;
pub mod consumer;
pub mod node;
pub mod otlp;
pub mod process;
pub mod procstat;
pub mod producer;
pub mod proxy;
pub mod secrets;
pub mod stack;
pub mod tools;
pub mod workers;

use std::{future::Future, net::SocketAddr, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Awaits `future`, failing the test with `what` if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `condition` every 50 ms until it holds, failing the test after `limit`. For state that
/// offers no event to await (a queue's message count).
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(limit, what, async {
        while !condition().await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A gRPC channel to `addr` whose connect and every call time out (10 s and 30 s): no test
/// waits on a silent server forever.
pub async fn grpc_channel(addr: SocketAddr) -> tonic::transport::Channel {
    within(
        Duration::from_secs(15),
        "a gRPC connection",
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("valid uri")
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .connect(),
    )
    .await
    .expect("connect")
}

/// Logs of the services under test go to the test's output when `RUST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A minimal HTTP/1.0 GET: the status code and body; status 0 when nothing listens.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    within(Duration::from_secs(5), "an HTTP answer", async {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            return (0, String::new());
        };
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status line");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    })
    .await
}

/// The value of the sample `series` (name and labels, exactly as exposed) in a metrics text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

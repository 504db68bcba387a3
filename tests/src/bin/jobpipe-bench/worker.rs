//! The remote workers the dispatch phases point the consumers at: a minimal HTTP worker (hyper 1,
//! HTTP/1.1 keep-alive, reads the body, answers 204 to every POST) and a gRPC `jobpipe.v1.Worker`
//! (tonic, `Handle` returns OK). Each runs in the bench process on a runtime of its own, whose
//! threads carry one name, so its CPU time can be read apart from the load generator's.

use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use jobpipe_proto::v1::{
    HandleRequest, HandleResponse,
    worker_server::{Worker as WorkerService, WorkerServer},
};
use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{net::TcpListener, runtime::Runtime};
use tokio_util::sync::CancellationToken;

/// The name of every thread of a worker's runtime (at most 15 bytes: the kernel's `comm`).
const THREAD_NAME: &str = "bench-worker";
/// Threads of the worker's runtime: as many as the machine has cores, at most 2.
const MAX_THREADS: usize = 2;

/// Which worker contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `POST` to a URL, 2xx is success.
    Http,
    /// `jobpipe.v1.Worker/Handle`, OK is success.
    Grpc,
}

/// A worker serving in this process until stopped.
pub(crate) struct Worker {
    addr: SocketAddr,
    kind: Kind,
    runtime: Runtime,
    shutdown: CancellationToken,
    requests: Arc<AtomicU64>,
}

impl Worker {
    /// Starts a worker of `kind` on a free loopback port.
    pub(crate) fn start(kind: Kind) -> anyhow::Result<Self> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(THREAD_NAME)
            .enable_all()
            .build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let shutdown = CancellationToken::new();
        let requests = Arc::new(AtomicU64::new(0));
        match kind {
            Kind::Http => runtime.spawn(serve_http(listener, shutdown.clone(), requests.clone())),
            Kind::Grpc => runtime.spawn(serve_grpc(listener, shutdown.clone(), requests.clone())),
        };
        Ok(Self {
            addr,
            kind,
            runtime,
            shutdown,
            requests,
        })
    }

    /// The route target that reaches this worker.
    pub(crate) fn target(&self) -> String {
        match self.kind {
            Kind::Http => format!("http://{}/", self.addr),
            Kind::Grpc => format!("grpc://{}", self.addr),
        }
    }

    /// Requests answered with success so far.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// CPU time (user + system) the worker's threads have used so far.
    pub(crate) fn cpu(&self) -> Duration {
        threads_cpu(THREAD_NAME)
    }

    /// Stops serving and waits (a second at most) for the runtime's threads to end.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        let runtime = self.runtime;
        let _ =
            tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(1)))
                .await;
    }
}

/// Accepts connections and serves each over HTTP/1.1 with keep-alive.
async fn serve_http(listener: TcpListener, shutdown: CancellationToken, requests: Arc<AtomicU64>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let _ = stream.set_nodelay(true);
        let requests = requests.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, requests.clone()));
            let connection = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}

/// Reads the body to its end, then answers 204 to a POST (405 to anything else).
async fn answer(
    request: Request<Incoming>,
    requests: Arc<AtomicU64>,
) -> Result<Response<String>, Infallible> {
    let post = request.method() == Method::POST;
    let mut body = request.into_body();
    let mut complete = true;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if frame.is_err() {
            complete = false;
            break;
        }
    }
    let status = match (post, complete) {
        (true, true) => {
            requests.fetch_add(1, Ordering::Relaxed);
            StatusCode::NO_CONTENT
        }
        (true, false) => StatusCode::BAD_REQUEST,
        (false, _) => StatusCode::METHOD_NOT_ALLOWED,
    };
    let mut response = Response::new(String::new());
    *response.status_mut() = status;
    Ok(response)
}

/// `jobpipe.v1.Worker`: every job succeeds.
struct GrpcWorker {
    requests: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl WorkerService for GrpcWorker {
    async fn handle(
        &self,
        _request: tonic::Request<HandleRequest>,
    ) -> Result<tonic::Response<HandleResponse>, tonic::Status> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(HandleResponse {}))
    }
}

/// Serves `jobpipe.v1.Worker` over plaintext HTTP/2 until shut down.
async fn serve_grpc(listener: TcpListener, shutdown: CancellationToken, requests: Arc<AtomicU64>) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tonic::transport::Server::builder()
        .add_service(WorkerServer::new(GrpcWorker { requests }))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    if let Err(error) = served {
        eprintln!("jobpipe-bench: the gRPC worker failed: {error}");
    }
}

/// User plus system CPU time of this process's threads named `name`.
fn threads_cpu(name: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| {
            let (comm, cpu) = jobpipe_tests::procstat::stat_cpu(&stat)?;
            (comm == name).then_some(cpu)
        })
        .sum()
}

//! Whether a worker can be reached. The first call that cannot reach it marks it down: readiness
//! names it, `jobpipe_worker_up` drops to 0, and one prober connects to its address with backoff
//! until it answers. Jobs for it wait (holding no permit) and run when it is back.

use jobpipe_runtime::readiness::Blockers;
use prometheus_client::metrics::gauge::Gauge;
use std::{
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};
use tokio::{net::TcpStream, sync::watch};
use tracing::{info, warn};

/// The first pause between probes; it doubles up to [`MAX_PROBE_PAUSE`].
const FIRST_PROBE_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause between probes: a worker that is back runs jobs within this.
const MAX_PROBE_PAUSE: Duration = Duration::from_secs(2);
/// How long one probe's connect may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A worker that is down again this soon after a probe found it up (it accepts connections but
/// fails its TLS handshake, say) is probed at the slowest pace, not the fastest.
const FLAPPING: Duration = Duration::from_secs(10);

/// One worker's reachability.
#[derive(Debug)]
pub(crate) struct Health {
    up: watch::Sender<bool>,
    /// `host:port` to probe.
    address: String,
    /// The readiness blocker while it is down.
    reason: String,
    blockers: Blockers,
    /// `jobpipe_worker_up` for this route, once the metrics are registered.
    gauge: OnceLock<Gauge>,
    /// When a probe last found the worker up.
    recovered: Mutex<Option<Instant>>,
}

impl Health {
    /// A worker, up until a call says otherwise.
    pub(crate) fn new(route: &str, target: &str, address: String, blockers: Blockers) -> Arc<Self> {
        Arc::new(Self {
            up: watch::channel(true).0,
            address,
            reason: format!("worker for route {route} ({target}) is unreachable"),
            blockers,
            gauge: OnceLock::new(),
            recovered: Mutex::new(None),
        })
    }

    /// Reports the worker's state on `gauge` from now on.
    pub(crate) fn report_on(&self, gauge: Gauge) {
        gauge.set(i64::from(self.is_up()));
        let _ = self.gauge.set(gauge);
    }

    fn report(&self, up: bool) {
        if let Some(gauge) = self.gauge.get() {
            gauge.set(i64::from(up));
        }
    }

    /// Whether the worker is taken to be up.
    pub(crate) fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Marks the worker down after `error`, starting the prober if it was up.
    pub(crate) fn down(self: &Arc<Self>, error: &str) {
        if !self.up.send_if_modified(|up| std::mem::replace(up, false)) {
            return;
        }
        warn!(worker = %self.reason, %error, "Worker unreachable; holding its jobs and probing it.");
        self.report(false);
        self.blockers.set(&self.reason, true);
        let flapping = self
            .recovered
            .lock()
            .ok()
            .and_then(|recovered| *recovered)
            .is_some_and(|at| at.elapsed() < FLAPPING);
        let first_pause = if flapping {
            MAX_PROBE_PAUSE
        } else {
            FIRST_PROBE_PAUSE
        };
        tokio::spawn(Arc::clone(self).probe(first_pause));
    }

    /// Waits until the worker is up.
    pub(crate) async fn wait_up(&self) {
        let mut up = self.up.subscribe();
        // Only fails when `self` is gone, and `self` is borrowed here.
        let _ = up.wait_for(|up| *up).await;
    }

    async fn probe(self: Arc<Self>, first_pause: Duration) {
        let mut pause = first_pause;
        loop {
            tokio::time::sleep(pause).await;
            let connected = tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(&self.address));
            if matches!(connected.await, Ok(Ok(_))) {
                break;
            }
            pause = (pause * 2).min(MAX_PROBE_PAUSE);
        }
        info!(worker = %self.reason, "Worker reachable again; resuming its jobs.");
        if let Ok(mut recovered) = self.recovered.lock() {
            *recovered = Some(Instant::now());
        }
        self.report(true);
        self.blockers.set(&self.reason, false);
        self.up.send_replace(true);
    }
}

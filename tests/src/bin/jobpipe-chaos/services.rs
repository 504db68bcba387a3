//! jobpipe as it runs in production, on the throwaway broker: the `jobpipe-producer` and
//! `jobpipe-consumer` binaries as processes, consumers killed and started again by the faults,
//! every service's log lines filed in one ledger.

use crate::ledger::{self, Event, Line};
use jobpipe_tests::{
    http_get,
    process::{Service, free_port},
};
use std::{fs::File, net::SocketAddr, path::PathBuf, time::Duration};
use tokio::{sync::mpsc, time::Instant};

/// How long a service may take to become ready.
const READY_LIMIT: Duration = Duration::from_secs(60);

/// What every service is configured with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The broker nodes (one, or a cluster's).
    pub(crate) urls: Vec<String>,
    /// The topology prefix of this run.
    pub(crate) prefix: String,
    /// The AMQP heartbeat, in seconds.
    pub(crate) heartbeat_secs: u64,
    /// Print the services' warnings and errors.
    pub(crate) verbose: bool,
    /// Where every service's log lines are kept, if anywhere.
    pub(crate) logs: Option<PathBuf>,
}

/// The producer and the consumers.
#[derive(Debug)]
pub(crate) struct Services {
    settings: Settings,
    /// The producer's gRPC address.
    pub(crate) grpc: SocketAddr,
    producer: (Service, SocketAddr),
    /// Each consumer slot: its process while it runs, and its admin address.
    consumers: Vec<(Option<Service>, SocketAddr)>,
    log: mpsc::UnboundedSender<(Line, Option<Event>)>,
}

impl Services {
    /// Starts a producer and `consumers` consumers; their log lines go to `log`.
    pub(crate) fn start(
        settings: Settings,
        consumers: usize,
        log: mpsc::UnboundedSender<(Line, Option<Event>)>,
    ) -> Self {
        let grpc = free_port();
        let admin = free_port();
        let mut env = common(&settings, admin);
        env.push(("JOBPIPE__GRPC__LISTEN", grpc.to_string()));
        let (producer, stdout) = Service::start_piped("jobpipe-producer", &[], &env);
        // The producer logs no job events: its slot is never read.
        tokio::spawn(ledger::follow(
            stdout,
            usize::MAX,
            log.clone(),
            settings.verbose,
            copy(&settings, "producer"),
        ));
        let producer = (producer, admin);
        let mut services = Self {
            settings,
            grpc,
            producer,
            consumers: Vec::new(),
            log,
        };
        for slot in 0..consumers {
            services.consumers.push((None, free_port()));
            services.start_consumer(slot);
        }
        services
    }

    /// The number of consumer slots.
    pub(crate) fn consumer_slots(&self) -> usize {
        self.consumers.len()
    }

    /// Starts consumer `slot` (again).
    pub(crate) fn start_consumer(&mut self, slot: usize) {
        let admin = self.consumers[slot].1;
        let mut env = common(&self.settings, admin);
        env.extend([
            (
                "JOBPIPE__CONSUMER__INSTANCE",
                format!("chaos-consumer-{slot}"),
            ),
            ("JOBPIPE__RETRY__BASE", "1s".to_owned()),
            ("JOBPIPE__SHUTDOWN__GRACE_PERIOD", "10s".to_owned()),
            // "Job started." too: a job whose consumer was killed between its ack and its
            // "Job finished." line is told apart from a lost one by it.
            (
                "JOBPIPE__LOG__LEVEL",
                format!("info,{}=debug", jobpipe_consumer::STARTED_TARGET),
            ),
        ]);
        let (service, stdout) = Service::start_piped("jobpipe-consumer", &[], &env);
        tokio::spawn(ledger::follow(
            stdout,
            slot,
            self.log.clone(),
            self.settings.verbose,
            copy(&self.settings, &format!("consumer-{slot}")),
        ));
        self.consumers[slot].0 = Some(service);
    }

    /// Sends `signal` to consumer `slot` and waits for it to exit.
    pub(crate) async fn stop_consumer(&mut self, slot: usize, signal: &str) {
        if let Some(consumer) = self.consumers[slot].0.take() {
            consumer.signal(signal);
            consumer.exit(Duration::from_secs(30)).await;
        }
    }

    /// Waits until every running service answers `/readyz` with 200; how long that took.
    pub(crate) async fn wait_ready(&self) -> Duration {
        let started = Instant::now();
        let admins = std::iter::once(self.producer.1).chain(
            self.consumers
                .iter()
                .filter(|(service, _)| service.is_some())
                .map(|(_, admin)| *admin),
        );
        for admin in admins {
            while http_get(admin, "/readyz").await.0 != 200 {
                assert!(
                    started.elapsed() < READY_LIMIT,
                    "the service at {admin} is not ready after {READY_LIMIT:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        started.elapsed()
    }

    /// Stops every service (SIGTERM) and waits for each.
    pub(crate) async fn stop(mut self) {
        for slot in 0..self.consumers.len() {
            self.stop_consumer(slot, "TERM").await;
        }
        let (producer, _) = self.producer;
        producer.signal("TERM");
        producer.exit(Duration::from_secs(30)).await;
    }
}

/// The file that keeps `service`'s log lines, appended to across restarts, when asked for.
fn copy(settings: &Settings, service: &str) -> Option<File> {
    let dir = settings.logs.as_ref()?;
    std::fs::create_dir_all(dir).expect("the logs directory");
    let path = dir.join(format!("{service}.log"));
    let file = File::options().create(true).append(true).open(&path);
    Some(file.unwrap_or_else(|error| panic!("{}: {error}", path.display())))
}

/// The settings every service gets.
fn common(settings: &Settings, admin: SocketAddr) -> Vec<(&'static str, String)> {
    let urls = match settings.urls.as_slice() {
        [one] => ("JOBPIPE__AMQP__URL", one.clone()),
        several => ("JOBPIPE__AMQP__URLS", several.join(",")),
    };
    vec![
        urls,
        (
            "JOBPIPE__AMQP__HEARTBEAT",
            format!("{}s", settings.heartbeat_secs),
        ),
        ("JOBPIPE__TOPOLOGY__PREFIX", settings.prefix.clone()),
        ("JOBPIPE__ADMIN__LISTEN", admin.to_string()),
        ("JOBPIPE__LOG__FORMAT", "json".to_owned()),
        ("JOBPIPE__METRICS__QUEUE_POLL_INTERVAL", "0s".to_owned()),
    ]
}

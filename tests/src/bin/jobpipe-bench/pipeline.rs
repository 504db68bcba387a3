//! jobpipe as it runs in production: the release `jobpipe-producer` and `jobpipe-consumer`
//! binaries as processes, with the consumers' per-job log events telling the benchmark when
//! each job's handler started.

use crate::Options;
use jobpipe_tests::{
    broker::{TestTopology, amqp_url},
    eventually, http_get,
    process::{Service, free_port},
    procstat,
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, SystemTime},
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::ChildStdout,
    sync::mpsc,
};

/// A job's handler started, as a consumer logged it.
#[derive(Debug, Clone)]
pub(crate) struct JobEvent {
    /// The job's id.
    pub(crate) job_id: String,
    /// When (the log line's timestamp).
    pub(crate) at: SystemTime,
}

/// A running jobpipe: one producer and the configured number of consumers.
#[derive(Debug)]
pub(crate) struct Pipeline {
    /// The producer's gRPC address.
    pub(crate) grpc: SocketAddr,
    /// The consumers' admin addresses.
    pub(crate) consumer_admins: Vec<SocketAddr>,
    producer: Service,
    consumers: Vec<Service>,
    /// Job events from every consumer.
    pub(crate) events: mpsc::UnboundedReceiver<JobEvent>,
    topology: TestTopology,
    /// The jobs' type.
    job_type: &'static str,
    /// The consumers' configuration file, when they route to a remote worker.
    _config: Option<tempfile::NamedTempFile>,
}

impl Pipeline {
    /// Starts the processes on a topology of their own and waits until all are ready. With a
    /// `route` target (a worker's URL), the consumers get a configuration file whose single
    /// route `*` sends every job there; without one they run the in-process `noop` handler.
    pub(crate) async fn start(opts: &Options, route: Option<&str>) -> anyhow::Result<Self> {
        let topology = TestTopology::new("bench", &["default"]);
        let prefix = topology.config().prefix.to_string();
        let common = |admin: SocketAddr| {
            vec![
                ("JOBPIPE__AMQP__URL", amqp_url()),
                ("JOBPIPE__TOPOLOGY__PREFIX", prefix.clone()),
                (
                    "JOBPIPE__TOPOLOGY__QUEUE_TYPE",
                    opts.queue_type.as_str().to_owned(),
                ),
                ("JOBPIPE__ADMIN__LISTEN", admin.to_string()),
                ("JOBPIPE__LOG__FORMAT", "json".to_owned()),
            ]
        };
        let grpc = free_port();
        let mut admins = vec![free_port()];
        let mut env = common(admins[0]);
        env.push(("JOBPIPE__GRPC__LISTEN", grpc.to_string()));
        env.push(("JOBPIPE__LOG__LEVEL", "warn".to_owned()));
        env.push((
            "JOBPIPE__LIMITS__MAX_BATCH_JOBS",
            opts.batch_size.max(1000).to_string(),
        ));
        let producer = Service::start("jobpipe-producer", &[], &env);

        let config = match route {
            Some(target) => Some(routes_file(target)?),
            None => None,
        };
        let config_path = config
            .as_ref()
            .map(|file| file.path().to_string_lossy().into_owned());
        let args: Vec<&str> = match &config_path {
            Some(path) => vec!["--config", path],
            None => Vec::new(),
        };
        let (sender, events) = mpsc::unbounded_channel();
        let mut consumers = Vec::new();
        let mut consumer_admins = Vec::new();
        for index in 0..opts.consumers {
            let admin = free_port();
            admins.push(admin);
            consumer_admins.push(admin);
            let mut env = common(admin);
            env.extend([
                // Only the per-job "Job started." events (a target of their own) are needed.
                (
                    "JOBPIPE__LOG__LEVEL",
                    format!("warn,{}=debug", jobpipe_consumer::STARTED_TARGET),
                ),
                ("JOBPIPE__CONSUMER__PREFETCH", opts.prefetch.to_string()),
                (
                    "JOBPIPE__CONSUMER__CONCURRENCY",
                    opts.concurrency.to_string(),
                ),
                ("JOBPIPE__CONSUMER__INSTANCE", format!("bench-{index}")),
            ]);
            let (consumer, stdout) = Service::start_piped("jobpipe-consumer", &args, &env);
            tokio::spawn(read_events(stdout, sender.clone()));
            consumers.push(consumer);
        }
        for admin in admins {
            eventually(
                Duration::from_secs(60),
                "a jobpipe process to be ready",
                || async move { http_get(admin, "/readyz").await.0 == 200 },
            )
            .await;
        }
        Ok(Self {
            grpc,
            consumer_admins,
            producer,
            consumers,
            events,
            topology,
            job_type: opts.job_type(),
            _config: config,
        })
    }

    /// The topology the processes run on.
    pub(crate) fn topology(&self) -> &TestTopology {
        &self.topology
    }

    /// The producer's process id.
    pub(crate) fn producer_pid(&self) -> u32 {
        self.producer.pid()
    }

    /// Jobs the consumers acknowledged as succeeded, by their metrics.
    pub(crate) async fn acked(&self) -> f64 {
        let series = format!(
            r#"jobpipe_consumer_jobs_total{{queue="default",type="{}",outcome="succeeded",reason=""}}"#,
            self.job_type
        );
        let mut total = 0.0;
        for admin in &self.consumer_admins {
            total += jobpipe_tests::sample(&http_get(*admin, "/metrics").await.1, &series)
                .unwrap_or(0.0);
        }
        total
    }

    /// Resource use of the producer and of each consumer.
    pub(crate) fn usage(&self) -> (procstat::Usage, Vec<procstat::Usage>) {
        (
            procstat::usage(self.producer.pid()),
            self.consumers
                .iter()
                .map(|c| procstat::usage(c.pid()))
                .collect(),
        )
    }

    /// Stops every process (SIGTERM) and waits for them.
    pub(crate) async fn stop(self) {
        self.producer.signal("TERM");
        for consumer in &self.consumers {
            consumer.signal("TERM");
        }
        self.producer.exit(Duration::from_secs(30)).await;
        for consumer in self.consumers {
            consumer.exit(Duration::from_secs(30)).await;
        }
    }
}

/// A consumer configuration file with one route, `*`, to `target`.
fn routes_file(target: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut file = tempfile::Builder::new()
        .prefix("jobpipe-bench-")
        .suffix(".toml")
        .tempfile()?;
    // The target is a loopback URL the bench made: no quoting beyond TOML's basic string.
    writeln!(file, "[[routes]]\njob_type = \"*\"\ntarget = \"{target}\"")?;
    file.flush()?;
    Ok(file)
}

/// Collects job starts until `expected` distinct jobs started (or `limit` passes).
pub(crate) async fn collect(
    events: &mut mpsc::UnboundedReceiver<JobEvent>,
    expected: usize,
    limit: Duration,
    bar: &indicatif::ProgressBar,
) -> HashMap<String, Vec<SystemTime>> {
    let mut by_job: HashMap<String, Vec<SystemTime>> = HashMap::with_capacity(expected);
    let deadline = tokio::time::Instant::now() + limit;
    while by_job.len() < expected {
        let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await else {
            break;
        };
        let starts = by_job.entry(event.job_id).or_default();
        if starts.is_empty() {
            bar.inc(1);
        }
        starts.push(event.at);
    }
    by_job
}

async fn read_events(stdout: ChildStdout, sender: mpsc::UnboundedSender<JobEvent>) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(event) = parse(&line) {
            let _ = sender.send(event);
        }
    }
}

/// The fields of a "Job started." line the benchmark reads.
#[derive(Debug, serde::Deserialize)]
struct Line<'a> {
    timestamp: &'a str,
    message: &'a str,
    job_id: Option<&'a str>,
}

fn parse(line: &str) -> Option<JobEvent> {
    let line: Line<'_> = serde_json::from_str(line).ok()?;
    if line.message != "Job started." {
        return None;
    }
    Some(JobEvent {
        job_id: line.job_id?.to_owned(),
        at: humantime::parse_rfc3339(line.timestamp).ok()?,
    })
}

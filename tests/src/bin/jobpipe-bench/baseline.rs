//! The broker's own limit: a plain lapin publisher (persistent, a window of confirms pipelined)
//! and plain lapin consumers (one ack per message) on one queue, at the confirm window and
//! prefetch that move the most on this machine ([`sweep`]). jobpipe is measured against it. A
//! run above it comes from the machine's noise (runs differ by up to a third) or from jobpipe's
//! multiple-acks, which cost the broker less than this client's one ack per message.

use crate::{
    Options, Pace, progress,
    report::{self, Latency, Phase},
};
use futures::StreamExt;
use jobpipe_tests::{broker::amqp_url, procstat};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::Semaphore;

/// How the plain client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Settings {
    /// Publishes awaiting their confirm at once.
    pub(crate) window: usize,
    /// Deliveries each consumer may hold.
    pub(crate) prefetch: u16,
}

impl Settings {
    /// What jobpipe runs with by default: its batches in flight, its prefetch.
    pub(crate) fn jobpipe(opts: &Options) -> Self {
        Self {
            window: opts.batch_size * opts.batches_in_flight,
            prefetch: opts.prefetch,
        }
    }

    /// The same in flight as the one-job-per-RPC phase (its callers), at `limit`'s prefetch: a
    /// caller's next job waits for its confirm there too, so this is that phase's own ceiling.
    pub(crate) fn callers_window(opts: &Options, limit: Settings) -> Self {
        Self {
            window: opts.callers,
            prefetch: limit.prefetch,
        }
    }
}

/// The confirm windows and prefetches the sweep tries.
const WINDOWS: [usize; 3] = [256, 1000, 4000];
const PREFETCHES: [u16; 3] = [32, 200, 1000];

/// Tries every pairing of [`WINDOWS`] and [`PREFETCHES`] with `jobs` messages each; every
/// result, the best first.
pub(crate) async fn sweep(opts: &Options, jobs: usize) -> anyhow::Result<Vec<(Settings, f64)>> {
    let mut results = Vec::new();
    for window in WINDOWS {
        for prefetch in PREFETCHES {
            let settings = Settings { window, prefetch };
            let name = format!("sweep: window {window}, prefetch {prefetch}");
            let phase = run(&name, opts, jobs, Pace::FlatOut, settings).await?;
            results.push((settings, phase.jobs_per_sec));
        }
    }
    results.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(results)
}

/// Runs the plain client with `settings`: `jobs` messages, published as fast as confirms allow
/// or at `pace`.
pub(crate) async fn run(
    name: &str,
    opts: &Options,
    jobs: usize,
    pace: Pace,
    settings: Settings,
) -> anyhow::Result<Phase> {
    let queue = format!("bench-baseline-{:08x}", rand::random::<u32>());
    let setup = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = setup.create_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(opts.queue_type.as_str().into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(queue.as_str().into(), durable, arguments)
        .await?;
    // The queue goes, whatever happened to the measurement.
    let measured = measure(name, opts, jobs, pace, settings, &queue).await;
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = setup.close(200, "done".into()).await;
    measured
}

async fn measure(
    name: &str,
    opts: &Options,
    jobs: usize,
    pace: Pace,
    settings: Settings,
    queue: &str,
) -> anyhow::Result<Phase> {
    let bar = progress(name, jobs);
    let received: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; jobs]));
    let duplicates = Arc::new(Mutex::new(0usize));
    let done = Arc::new(tokio::sync::Notify::new());
    let mut consumers = Vec::new();
    for _ in 0..opts.consumers {
        let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(settings.prefetch, BasicQosOptions { global: false })
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (received, duplicates, done, bar) = (
            received.clone(),
            duplicates.clone(),
            done.clone(),
            bar.clone(),
        );
        consumers.push((
            connection,
            tokio::spawn(async move {
                while let Some(Ok(delivery)) = consumer.next().await {
                    let now = Instant::now();
                    let index: usize = std::str::from_utf8(&delivery.data[..8])
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(usize::MAX);
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                    let complete = {
                        let mut received = received.lock().expect("lock");
                        match received.get_mut(index) {
                            Some(slot @ None) => *slot = Some(now),
                            Some(Some(_)) => *duplicates.lock().expect("lock") += 1,
                            None => {}
                        }
                        bar.inc(1);
                        bar.position() as usize >= received.len()
                    };
                    if complete {
                        done.notify_one();
                    }
                }
            }),
        ));
    }

    let publisher = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = publisher.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let window = Arc::new(Semaphore::new(settings.window));
    let mut sent = vec![Instant::now(); jobs];
    let client_before = procstat::usage(std::process::id()).cpu;
    let started = Instant::now();
    let mut pacer = pace.pacer();
    for (index, sent_at) in sent.iter_mut().enumerate() {
        pacer.wait_turn(index).await;
        let permit = window.clone().acquire_owned().await?;
        let mut body = format!("{index:<8}").into_bytes();
        body.resize(opts.payload_bytes.max(8), b'x');
        *sent_at = Instant::now();
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?;
        tokio::spawn(async move {
            let _ = confirm.await;
            drop(permit);
        });
    }
    tokio::time::timeout(Duration::from_secs(600), done.notified()).await?;
    let client_cpu = procstat::usage(std::process::id()).cpu - client_before;
    bar.finish();

    let received = received.lock().expect("lock").clone();
    let last = received.iter().flatten().max().copied().unwrap_or(started);
    let latencies = received
        .iter()
        .zip(&sent)
        .filter_map(|(got, sent)| Some(got.as_ref()?.duration_since(*sent)))
        .collect();
    let lost = received.iter().filter(|r| r.is_none()).count();
    for (connection, task) in consumers {
        task.abort();
        let _ = connection.close(200, "done".into()).await;
    }
    let _ = publisher.close(200, "done".into()).await;
    let seconds = last.duration_since(started).as_secs_f64();
    let duplicates = *duplicates.lock().expect("lock");
    Ok(Phase {
        name: name.into(),
        jobs,
        seconds,
        jobs_per_sec: jobs as f64 / seconds,
        latency: Latency::of(latencies),
        producer_rss_mib: None,
        consumer_rss_mib: Vec::new(),
        cpu_us_per_job: None,
        client_cpu_us_per_job: Some(report::per_job(client_cpu, jobs)),
        lost,
        duplicates,
        refused: 0,
        worker_cpu_us_per_job: None,
        worker_requests: None,
        vs_noop: None,
    })
}

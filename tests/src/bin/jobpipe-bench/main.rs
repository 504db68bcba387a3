//! `jobpipe-bench` (`make bench`): end-to-end throughput, latency and memory of jobpipe, side by
//! side with the limit the broker itself sets on the same machine in the same run.
//!
//! Phases, each on a fresh topology, cleaned up afterwards:
//! 1. the broker's limit: plain lapin publisher and consumers at the confirm window and prefetch
//!    a sweep found best on this machine (`sweep`, as many jobs per pairing as every phase: a
//!    shorter run never lets the queue grow as long, and moves faster), then the same client at
//!    jobpipe's own settings and with only as many in flight as phase 3 has callers, for
//!    comparison;
//! 2. jobpipe with `SubmitJobs` batches, several in flight;
//! 3. jobpipe with one `SubmitJob` per job from many callers;
//! 4. latency below saturation at a fixed rate, the baseline then jobpipe;
//! 5. and 6. the batched load again, with the consumers dispatching every job to a remote worker
//!    in the bench process: HTTP (`http`), then gRPC (`grpc`), run right after phase 2 and
//!    reported beside it;
//! 7. dead letters at scale (`dlq`): a dead-letter queue of 100,000 entries listed, replayed and
//!    purged through the producer's `AdminService`.
//!
//! Prints a table and one JSON line; exits non-zero if any confirmed job was lost.

mod baseline;
mod dead_letters;
mod load;
mod pipeline;
mod report;
mod worker;

use clap::Parser;
use jobpipe_consumer::config::ConsumerSettings;
use jobpipe_proto::topology::QueueType;
use jobpipe_tests::procstat;
use load::Mode;
use report::{Latency, Phase};
use std::{
    process::ExitCode,
    time::{Duration, Instant, SystemTime},
};

/// Benchmark options.
#[derive(Debug, Clone, Parser)]
#[command(about = "End-to-end jobpipe benchmark against the broker's own limit")]
pub(crate) struct Options {
    /// Jobs per throughput phase.
    #[arg(long, default_value_t = 50_000)]
    jobs: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    payload_bytes: usize,
    /// Jobs per SubmitJobs call.
    #[arg(long, default_value_t = 500)]
    batch_size: usize,
    /// SubmitJobs calls in flight at once.
    #[arg(long, default_value_t = 4)]
    batches_in_flight: usize,
    /// Concurrent SubmitJob callers in the one-job-per-RPC phase.
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// Jobs per second in the latency phase.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Seconds the latency phase lasts.
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Queue type: quorum or classic.
    #[arg(long, default_value = "quorum", value_parser = parse_queue_type)]
    queue_type: QueueTypeArg,
    /// Consumer processes (and baseline consumers).
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Prefetch per consumer (default: jobpipe's).
    #[arg(long, default_value_t = ConsumerSettings::default().prefetch)]
    prefetch: u16,
    /// Handlers running at once per consumer (default: jobpipe's).
    #[arg(long, default_value_t = ConsumerSettings::default().concurrency)]
    concurrency: usize,
    /// The plain client's confirm window and prefetch when the sweep does not run.
    #[arg(long, default_value_t = 1000)]
    baseline_window: usize,
    #[arg(long, default_value_t = 200)]
    baseline_prefetch: u16,
    /// Jobs of the built-in `sleep` handler taking this long (e.g. `1ms`; the payload is then
    /// the duration's text) instead of `noop` jobs, for throughput where handlers take time.
    #[arg(long, value_parser = humantime::parse_duration)]
    sleep: Option<Duration>,
    /// Entries in the dead-letter queue of the `dlq` phase.
    #[arg(long, default_value_t = 100_000)]
    dead_letters: usize,
    /// Run only these phases (for profiling): sweep, baseline, batched, single, latency, http,
    /// grpc, dlq.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sweep,baseline,batched,single,latency,http,grpc,dlq"
    )]
    phases: Vec<String>,
}

impl Options {
    /// The jobs' type: the handler the consumers run.
    pub(crate) fn job_type(&self) -> &'static str {
        if self.sleep.is_some() {
            "sleep"
        } else {
            "noop"
        }
    }

    /// The jobs' payload.
    pub(crate) fn payload(&self) -> Vec<u8> {
        match self.sleep {
            Some(sleep) => humantime::format_duration(sleep).to_string().into_bytes(),
            None => vec![b'x'; self.payload_bytes],
        }
    }
}

/// The queue type, printable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueTypeArg(QueueType);

impl QueueTypeArg {
    fn as_str(self) -> &'static str {
        match self.0 {
            QueueType::Quorum => "quorum",
            QueueType::Classic => "classic",
        }
    }
}

fn parse_queue_type(text: &str) -> Result<QueueTypeArg, String> {
    match text {
        "quorum" => Ok(QueueTypeArg(QueueType::Quorum)),
        "classic" => Ok(QueueTypeArg(QueueType::Classic)),
        other => Err(format!("{other:?}: expected quorum or classic")),
    }
}

/// How fast to send.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pace {
    /// As fast as the pipeline takes them.
    FlatOut,
    /// This many per second.
    Rate(f64),
}

impl Pace {
    fn pacer(self) -> Pacer {
        Pacer {
            start: tokio::time::Instant::now(),
            rate: match self {
                Self::FlatOut => None,
                Self::Rate(rate) => Some(rate),
            },
        }
    }
}

/// Spaces sends evenly: job `i` goes out no sooner than `i / rate` after the start.
pub(crate) struct Pacer {
    start: tokio::time::Instant,
    rate: Option<f64>,
}

impl Pacer {
    async fn wait_turn(&mut self, index: usize) {
        if let Some(rate) = self.rate {
            let due = self.start + Duration::from_secs_f64(index as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
    }
}

/// A progress bar for a phase of `jobs` jobs (hidden when stderr is not a terminal).
pub(crate) fn progress(name: &str, jobs: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(jobs as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:<28} [{bar:30}] {pos}/{len} {per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    bar
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let opts = Options::parse();
    eprintln!(
        "jobpipe-bench: {} jobs of {} B per throughput phase, {} queues, {} consumers (prefetch {}, concurrency {}); latency at {}/s for {} s",
        opts.jobs,
        opts.payload_bytes,
        opts.queue_type.as_str(),
        opts.consumers,
        opts.prefetch,
        opts.concurrency,
        opts.rate,
        opts.latency_secs
    );
    let paced_jobs = (opts.rate * opts.latency_secs as f64) as usize;
    let wants = |phase: &str| opts.phases.iter().any(|p| p == phase);
    let rate = Pace::Rate(opts.rate);
    let sweep = match wants("sweep") {
        true => baseline::sweep(&opts, opts.jobs).await?,
        false => Vec::new(),
    };
    let limit = sweep.first().map_or(
        baseline::Settings {
            window: opts.baseline_window,
            prefetch: opts.baseline_prefetch,
        },
        |(best, _)| *best,
    );
    let (baseline, at_jobpipe_settings, at_callers) = match wants("baseline") {
        true => (
            Some(
                baseline::run(
                    "broker limit (baseline)",
                    &opts,
                    opts.jobs,
                    Pace::FlatOut,
                    limit,
                )
                .await?,
            ),
            Some(
                baseline::run(
                    "plain lapin, jobpipe settings",
                    &opts,
                    opts.jobs,
                    Pace::FlatOut,
                    baseline::Settings::jobpipe(&opts),
                )
                .await?,
            ),
            Some(
                baseline::run(
                    "plain lapin, callers' window",
                    &opts,
                    opts.jobs,
                    Pace::FlatOut,
                    baseline::Settings::callers_window(&opts, limit),
                )
                .await?,
            ),
        ),
        false => (None, None, None),
    };
    let batched = match wants("batched") {
        true => Some(jobpipe("jobpipe batched", &opts, opts.jobs, Mode::Batched).await?),
        false => None,
    };
    // Right after the in-process batched phase, which they are read against.
    let mut workers = Vec::new();
    for (phase, name, kind) in [
        ("http", "jobpipe via HTTP worker", worker::Kind::Http),
        ("grpc", "jobpipe via gRPC worker", worker::Kind::Grpc),
    ] {
        if wants(phase) {
            let mut measured = dispatch(name, &opts, kind).await?;
            measured.vs_noop = batched
                .as_ref()
                .map(|noop| measured.jobs_per_sec / noop.jobs_per_sec);
            workers.push((phase, measured));
        }
    }
    let single = match wants("single") {
        true => Some(jobpipe("jobpipe one job per RPC", &opts, opts.jobs, Mode::Single).await?),
        false => None,
    };
    let (base_paced, jobpipe_paced) = match wants("latency") {
        true => (
            Some(baseline::run("baseline at fixed rate", &opts, paced_jobs, rate, limit).await?),
            Some(
                jobpipe(
                    "jobpipe at fixed rate",
                    &opts,
                    paced_jobs,
                    Mode::Paced(rate),
                )
                .await?,
            ),
        ),
        false => (None, None),
    };
    let dlq = match wants("dlq") {
        true => Some(dead_letters::run(&opts, opts.dead_letters).await?),
        false => None,
    };

    // The broker's limit: the plain client's full phase at the settings the sweep found best,
    // one run like each jobpipe phase. The sweep's own best rate is the largest of nine noisy
    // runs, raised by the picking itself; it is reported beside the limit, not used as it.
    let sweep_best = sweep.first().map(|(_, rate)| *rate);
    let base = baseline
        .as_ref()
        .map(|b| b.jobs_per_sec)
        .or(sweep_best)
        .unwrap_or(f64::NAN);
    let rate_ratio = |p: &Option<Phase>| p.as_ref().map_or(f64::NAN, |p| p.jobs_per_sec / base);
    let rate = |p: &Option<Phase>| p.as_ref().map_or(f64::NAN, |p| p.jobs_per_sec);
    let sweep_ratio = |p: &Option<Phase>| {
        p.as_ref()
            .zip(sweep_best)
            .map_or(f64::NAN, |(p, best)| p.jobs_per_sec / best)
    };
    let p99 = |p: &Option<Phase>| {
        p.as_ref()
            .and_then(|p| p.latency)
            .map_or(f64::NAN, |l| l.p99_ms)
    };
    let p50 = |p: &Option<Phase>| {
        p.as_ref()
            .and_then(|p| p.latency)
            .map_or(f64::NAN, |l| l.p50_ms)
    };
    let cpu = |p: &Option<Phase>| {
        p.as_ref()
            .and_then(|p| p.cpu_us_per_job)
            .unwrap_or(f64::NAN)
    };
    let worker = |name: &str| {
        workers
            .iter()
            .find(|(phase, _)| *phase == name)
            .map(|(_, p)| p)
    };
    let vs_noop = |name: &str| worker(name).and_then(|p| p.vs_noop).unwrap_or(f64::NAN);
    let worker_rss = |name: &str| {
        worker(name).map_or(f64::NAN, |p| {
            p.consumer_rss_mib.iter().copied().fold(0.0, f64::max)
        })
    };
    let ratios = serde_json::json!({
        "batched": rate_ratio(&batched),
        "single": rate_ratio(&single),
        "latency_p50": p50(&jobpipe_paced) / p50(&base_paced),
        "latency_p99": p99(&jobpipe_paced) / p99(&base_paced),
        "jobpipe_settings_baseline": rate_ratio(&at_jobpipe_settings),
        "batched_vs_sweep_best": sweep_ratio(&batched),
        "single_vs_sweep_best": sweep_ratio(&single),
        "single_vs_callers_window": rate(&single) / rate(&at_callers),
        "http_vs_noop": vs_noop("http"),
        "grpc_vs_noop": vs_noop("grpc"),
    });
    let noop = batched.clone();
    let (cpu_batched, cpu_paced) = (cpu(&batched), cpu(&jobpipe_paced));
    let phases: Vec<Phase> = [
        baseline,
        at_jobpipe_settings,
        at_callers,
        batched.clone(),
        single,
        base_paced,
        jobpipe_paced,
    ]
    .into_iter()
    .flatten()
    .collect();
    report::sweep(&sweep);
    let worker_phases: Vec<Phase> = workers.iter().map(|(_, p)| p.clone()).collect();
    let table: Vec<Phase> = phases.iter().chain(&worker_phases).cloned().collect();
    report::table(&table, base);
    report::workers_table(noop.as_ref(), &worker_phases);
    let producer_rss = batched
        .as_ref()
        .and_then(|p| p.producer_rss_mib)
        .unwrap_or(f64::NAN);
    let consumer_rss = batched.as_ref().map_or(f64::NAN, |p| {
        p.consumer_rss_mib.iter().copied().fold(0.0, f64::max)
    });
    let lost: usize =
        table.iter().map(|p| p.lost).sum::<usize>() + dlq.as_ref().map_or(0, |d| d.lost);
    let ratio = |name: &str| ratios[name].as_f64().unwrap_or(f64::NAN);
    let targets = serde_json::json!({
        "batched_ge_0.85": ratio("batched") >= 0.85,
        "single_ge_0.5": ratio("single") >= 0.5,
        "latency_p50_le_2x": ratio("latency_p50") <= 2.0,
        "latency_p99_le_2x": ratio("latency_p99") <= 2.0,
        "cpu_batched_le_30us": cpu_batched <= 30.0,
        "cpu_paced_le_60us": cpu_paced <= 60.0,
        "consumer_rss_le_20mib": consumer_rss <= 20.0,
        "producer_rss_le_30mib": producer_rss <= 30.0,
        "http_ge_0.6x_noop": vs_noop("http") >= 0.6,
        "grpc_ge_0.6x_noop": vs_noop("grpc") >= 0.6,
        "http_consumer_rss_le_25mib": worker_rss("http") <= 25.0,
        "grpc_consumer_rss_le_25mib": worker_rss("grpc") <= 25.0,
        "dlq_replay_ge_2000_per_s": dlq.as_ref().is_some_and(|d| d.replay_per_sec >= 2000.0),
        "zero_lost": lost == 0,
    });
    println!(
        "\nratios to the broker's limit ({base:.0} jobs/s, window {}, prefetch {}): batched {:.2} (target >= 0.85), one per RPC {:.2} (>= 0.5), at {}/s p50 {:.2} and p99 {:.2} (<= 2); the plain client at jobpipe's settings {:.2}",
        limit.window,
        limit.prefetch,
        ratio("batched"),
        ratio("single"),
        opts.rate,
        ratio("latency_p50"),
        ratio("latency_p99"),
        ratio("jobpipe_settings_baseline"),
    );
    if let Some(best) = sweep_best {
        println!(
            "against the sweep's best run ({best:.0} jobs/s): batched {:.2}, one per RPC {:.2}",
            ratio("batched_vs_sweep_best"),
            ratio("single_vs_sweep_best"),
        );
    }
    println!(
        "one per RPC against the plain client with as many in flight ({} callers): {:.2}",
        opts.callers,
        ratio("single_vs_callers_window"),
    );
    println!(
        "jobpipe CPU per job: batched {cpu_batched:.0} µs (<= 30), at the fixed rate {cpu_paced:.0} µs (<= 60); peak RSS under batched load: producer {producer_rss:.1} MiB (<= 30), consumers {consumer_rss:.1} MiB (<= 20)"
    );
    if !worker_phases.is_empty() {
        println!(
            "remote workers over in-process noop: HTTP {:.2} (target >= 0.6), gRPC {:.2} (>= 0.6); consumer peak RSS HTTP {:.1} MiB, gRPC {:.1} MiB (<= 25)",
            vs_noop("http"),
            vs_noop("grpc"),
            worker_rss("http"),
            worker_rss("grpc"),
        );
    }
    if let Some(d) = &dlq {
        report::dead_letters(d, producer_rss);
    }
    println!(
        "{}",
        serde_json::json!({
            "bench": "jobpipe",
            "unix_time": SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "options": {
                "jobs": opts.jobs, "payload_bytes": opts.payload_bytes, "batch_size": opts.batch_size,
                "batches_in_flight": opts.batches_in_flight, "callers": opts.callers, "rate": opts.rate,
                "latency_secs": opts.latency_secs, "queue_type": opts.queue_type.as_str(),
                "consumers": opts.consumers, "prefetch": opts.prefetch, "concurrency": opts.concurrency,
            },
            "phases": phases,
            "worker_phases": worker_phases,
            "dead_letters": dlq,
            "limit": {"settings": limit, "jobs_per_sec": base, "sweep_best_jobs_per_sec": sweep_best},
            "sweep": sweep.iter().map(|(s, rate)| serde_json::json!({"window": s.window, "prefetch": s.prefetch, "jobs_per_sec": rate})).collect::<Vec<_>>(),
            "ratios": ratios,
            "targets": targets,
        })
    );
    if lost > 0 {
        eprintln!("\nFAILED: {lost} confirmed jobs were never processed.");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The batched load through consumers that dispatch every job to a worker of `kind` in this
/// process (started for the phase, stopped after it).
async fn dispatch(name: &str, opts: &Options, kind: worker::Kind) -> anyhow::Result<Phase> {
    let worker = worker::Worker::start(kind)?;
    let phase = run(name, opts, opts.jobs, Mode::Batched, Some(&worker)).await;
    worker.stop().await;
    phase
}

/// One jobpipe phase: fresh processes, the load, every job accounted for.
async fn jobpipe(name: &str, opts: &Options, jobs: usize, mode: Mode) -> anyhow::Result<Phase> {
    run(name, opts, jobs, mode, None).await
}

/// One jobpipe phase, its consumers running the `noop` handler or routing every job to `worker`.
async fn run(
    name: &str,
    opts: &Options,
    jobs: usize,
    mode: Mode,
    worker: Option<&worker::Worker>,
) -> anyhow::Result<Phase> {
    let target = worker.map(worker::Worker::target);
    let mut pipeline = pipeline::Pipeline::start(opts, target.as_deref()).await?;
    let (producer_before, consumers_before) = pipeline.usage();
    let worker_before = worker.map(|w| (w.cpu(), w.requests()));
    let client_before = procstat::usage(std::process::id()).cpu;
    let bar = progress(name, jobs);
    let started = Instant::now();
    let first_submit = SystemTime::now();
    let answered = load::submit(pipeline.grpc, opts, jobs, mode, &bar).await?;
    let submitted = answered.confirmed;
    let limit = Duration::from_secs(120).max(Duration::from_secs_f64(jobs as f64 / 500.0));
    let starts = pipeline::collect(&mut pipeline.events, submitted.len(), limit, &bar).await;
    bar.finish();
    // Every started job must also be acknowledged: wait for the consumers' counters to agree.
    let confirmed = submitted.len() as f64;
    let ack_deadline = Instant::now() + Duration::from_secs(10);
    let mut acked = pipeline.acked().await;
    while acked < confirmed && Instant::now() < ack_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        acked = pipeline.acked().await;
    }
    let (producer, consumers) = pipeline.usage();
    let worker_after = worker.map(|w| (w.cpu(), w.requests()));
    let client = procstat::usage(std::process::id()).cpu - client_before;
    let worker_cpu = worker_before
        .zip(worker_after)
        .map(|(before, after)| after.0 - before.0);
    pipeline.stop().await;

    // The last job's start; a noop handler's ack follows within microseconds.
    let last_start = starts
        .values()
        .flatten()
        .max()
        .copied()
        .unwrap_or(first_submit);
    let latencies = submitted
        .iter()
        .filter_map(|(id, at)| {
            let start = starts.get(id)?.first()?;
            Some(start.duration_since(*at).unwrap_or_default())
        })
        .collect();
    let never_started = submitted
        .keys()
        .filter(|id| !starts.contains_key(*id))
        .count();
    let lost = never_started.max((confirmed - acked).max(0.0) as usize);
    let duplicates = starts.values().filter(|s| s.len() > 1).count();
    let seconds = last_start
        .duration_since(first_submit)
        .map_or(started.elapsed().as_secs_f64(), |d| d.as_secs_f64());
    let cpu = (producer.cpu - producer_before.cpu)
        + consumers
            .iter()
            .zip(&consumers_before)
            .map(|(after, before)| after.cpu - before.cpu)
            .sum::<Duration>();
    Ok(Phase {
        name: name.into(),
        jobs: submitted.len(),
        seconds,
        jobs_per_sec: submitted.len() as f64 / seconds,
        latency: Latency::of(latencies),
        producer_rss_mib: Some(producer.peak_rss_mib),
        consumer_rss_mib: consumers.iter().map(|c| c.peak_rss_mib).collect(),
        cpu_us_per_job: Some(report::per_job(cpu, submitted.len())),
        // The bench process, its worker's threads apart.
        client_cpu_us_per_job: Some(report::per_job(
            client.saturating_sub(worker_cpu.unwrap_or_default()),
            submitted.len(),
        )),
        lost,
        duplicates,
        refused: answered.refused,
        worker_cpu_us_per_job: worker_cpu.map(|cpu| report::per_job(cpu, submitted.len())),
        worker_requests: worker_before
            .zip(worker_after)
            .map(|(before, after)| after.1 - before.1),
        vs_noop: None,
    })
}

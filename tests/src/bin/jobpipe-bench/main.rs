//! `jobpipe-bench` (`make bench`): end-to-end throughput, latency and memory of jobpipe, side by
//! side with the limit the broker itself sets on the same machine in the same run.
//!
//! Phases, each on a fresh topology, cleaned up afterwards:
//! 1. the broker's limit: plain lapin publisher and consumers;
//! 2. jobpipe with `SubmitJobs` batches, several in flight;
//! 3. jobpipe with one `SubmitJob` per job from many callers;
//! 4. latency below saturation at a fixed rate, the baseline then jobpipe.
//!
//! Prints a table and one JSON line; exits non-zero if any confirmed job was lost.

mod baseline;
mod load;
mod pipeline;
mod report;

use clap::Parser;
use jobpipe_proto::topology::QueueType;
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
    /// Prefetch per consumer (jobpipe's default).
    #[arg(long, default_value_t = 32)]
    prefetch: u16,
    /// Handlers running at once per consumer (jobpipe's default).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Run only these phases (for profiling): baseline, batched, single, latency.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,batched,single,latency"
    )]
    phases: Vec<String>,
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
    let baseline = match wants("baseline") {
        true => {
            Some(baseline::run("broker limit (baseline)", &opts, opts.jobs, Pace::FlatOut).await?)
        }
        false => None,
    };
    let batched = match wants("batched") {
        true => Some(jobpipe("jobpipe batched", &opts, opts.jobs, Mode::Batched).await?),
        false => None,
    };
    let single = match wants("single") {
        true => Some(jobpipe("jobpipe one job per RPC", &opts, opts.jobs, Mode::Single).await?),
        false => None,
    };
    let (base_paced, jobpipe_paced) = match wants("latency") {
        true => (
            Some(baseline::run("baseline at fixed rate", &opts, paced_jobs, rate).await?),
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

    let base = baseline.as_ref().map_or(f64::NAN, |b| b.jobs_per_sec);
    let rate_ratio = |p: &Option<Phase>| p.as_ref().map_or(f64::NAN, |p| p.jobs_per_sec / base);
    let p99 = |p: &Option<Phase>| {
        p.as_ref()
            .and_then(|p| p.latency)
            .map_or(f64::NAN, |l| l.p99_ms)
    };
    let ratios = serde_json::json!({
        "batched": rate_ratio(&batched),
        "single": rate_ratio(&single),
        "latency_p99": p99(&jobpipe_paced) / p99(&base_paced),
    });
    let phases: Vec<Phase> = [baseline, batched.clone(), single, base_paced, jobpipe_paced]
        .into_iter()
        .flatten()
        .collect();
    report::table(&phases, base);
    let producer_rss = batched
        .as_ref()
        .and_then(|p| p.producer_rss_mib)
        .unwrap_or(f64::NAN);
    let consumer_rss = batched.as_ref().map_or(f64::NAN, |p| {
        p.consumer_rss_mib.iter().copied().fold(0.0, f64::max)
    });
    let lost: usize = phases.iter().map(|p| p.lost).sum();
    let ratio = |name: &str| ratios[name].as_f64().unwrap_or(f64::NAN);
    let targets = serde_json::json!({
        "batched_ge_0.7": ratio("batched") >= 0.7,
        "single_ge_0.3": ratio("single") >= 0.3,
        "latency_p99_le_3x": ratio("latency_p99") <= 3.0,
        "consumer_rss_le_25mib": consumer_rss <= 25.0,
        "producer_rss_le_30mib": producer_rss <= 30.0,
        "zero_lost": lost == 0,
    });
    println!(
        "\nratios to the baseline: batched {:.2} (target >= 0.7), one per RPC {:.2} (>= 0.3), p99 at {}/s {:.2} (<= 3)",
        ratio("batched"),
        ratio("single"),
        opts.rate,
        ratio("latency_p99"),
    );
    println!(
        "peak RSS under batched load: producer {producer_rss:.1} MiB (<= 30), consumers {consumer_rss:.1} MiB (<= 25)"
    );
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

/// One jobpipe phase: fresh processes, the load, every job accounted for.
async fn jobpipe(name: &str, opts: &Options, jobs: usize, mode: Mode) -> anyhow::Result<Phase> {
    let mut pipeline = pipeline::Pipeline::start(opts).await?;
    let (producer_before, consumers_before) = pipeline.usage();
    let bar = progress(name, jobs);
    let started = Instant::now();
    let first_submit = SystemTime::now();
    let submitted = load::submit(pipeline.grpc, opts, jobs, mode, &bar).await?;
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
        cpu_us_per_job: Some(cpu.as_secs_f64() * 1e6 / submitted.len().max(1) as f64),
        lost,
        duplicates,
    })
}

//! A phase's figures, the table and the JSON line.

use serde::Serialize;
use std::time::Duration;

/// Latency percentiles over every job of a phase, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Worst.
    pub(crate) max_ms: f64,
}

impl Latency {
    /// Percentiles of `samples` (each job's latency); `None` when there are none.
    pub(crate) fn of(mut samples: Vec<Duration>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |q: usize| samples[(samples.len() * q / 100).min(samples.len() - 1)];
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Some(Self {
            p50_ms: ms(at(50)),
            p99_ms: ms(at(99)),
            max_ms: ms(*samples.last().unwrap_or(&Duration::ZERO)),
        })
    }
}

/// Everything measured in one phase.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Phase {
    /// Which phase.
    pub(crate) name: String,
    /// Jobs submitted and confirmed.
    pub(crate) jobs: usize,
    /// Seconds from the first submit to the last ack.
    pub(crate) seconds: f64,
    /// Jobs per second over that span.
    pub(crate) jobs_per_sec: f64,
    /// Submit to handler start, per job.
    pub(crate) latency: Option<Latency>,
    /// The producer's peak RSS, MiB (jobpipe phases).
    pub(crate) producer_rss_mib: Option<f64>,
    /// Each consumer's peak RSS, MiB (jobpipe phases).
    pub(crate) consumer_rss_mib: Vec<f64>,
    /// CPU time of the jobpipe processes per job, microseconds.
    pub(crate) cpu_us_per_job: Option<f64>,
    /// CPU time of the bench process per job, microseconds: the plain client itself (publisher
    /// and consumers) in the baseline phases, the load generator in jobpipe's (worker threads
    /// apart).
    pub(crate) client_cpu_us_per_job: Option<f64>,
    /// Confirmed jobs never processed.
    pub(crate) lost: usize,
    /// Jobs processed more than once.
    pub(crate) duplicates: usize,
    /// Submits the producer refused (not in `jobs`; e.g. more calls than
    /// `grpc.max_concurrent_calls` at the fixed rate).
    pub(crate) refused: usize,
    /// Remote-worker phases: the worker's own CPU time per job, microseconds. The worker runs in
    /// the bench process (threads of its own), so this is not part of `cpu_us_per_job`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) worker_cpu_us_per_job: Option<f64>,
    /// Remote-worker phases: requests the worker answered with success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) worker_requests: Option<u64>,
    /// Remote-worker phases: jobs/s over the in-process `noop` batched phase's of the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) vs_noop: Option<f64>,
}

/// `cpu` spread over `jobs`, in microseconds per job.
pub(crate) fn per_job(cpu: Duration, jobs: usize) -> f64 {
    cpu.as_secs_f64() * 1e6 / jobs.max(1) as f64
}

/// Prints the results as a table.
pub(crate) fn table(phases: &[Phase], baseline_rate: f64) {
    println!(
        "\n{:<28} {:>7} {:>9} {:>6} {:>8} {:>8} {:>8} {:>9} {:>13} {:>8} {:>9} {:>5} {:>4} {:>7}",
        "phase",
        "jobs",
        "jobs/s",
        "×base",
        "p50 ms",
        "p99 ms",
        "max ms",
        "prod MiB",
        "cons MiB",
        "CPU µs/j",
        "clnt µs/j",
        "lost",
        "dup",
        "refused"
    );
    for p in phases {
        let latency = |f: fn(&Latency) -> f64| {
            p.latency
                .as_ref()
                .map_or("-".into(), |l| format!("{:.1}", f(l)))
        };
        let consumers = consumer_rss(p);
        println!(
            "{:<28} {:>7} {:>9.0} {:>6.2} {:>8} {:>8} {:>8} {:>9} {:>13} {:>8} {:>9} {:>5} {:>4} {:>7}",
            p.name,
            p.jobs,
            p.jobs_per_sec,
            p.jobs_per_sec / baseline_rate,
            latency(|l| l.p50_ms),
            latency(|l| l.p99_ms),
            latency(|l| l.max_ms),
            p.producer_rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
            consumers,
            p.cpu_us_per_job.map_or("-".into(), |c| format!("{c:.0}")),
            p.client_cpu_us_per_job
                .map_or("-".into(), |c| format!("{c:.0}")),
            p.lost,
            p.duplicates,
            p.refused,
        );
    }
}

/// Each consumer's peak RSS, `12.3/12.1`; `-` for a phase without consumers.
fn consumer_rss(p: &Phase) -> String {
    if p.consumer_rss_mib.is_empty() {
        return "-".to_owned();
    }
    let each: Vec<String> = p
        .consumer_rss_mib
        .iter()
        .map(|m| format!("{m:.1}"))
        .collect();
    each.join("/")
}

/// Prints the remote-worker phases beside the in-process `noop` batched phase of the same run.
pub(crate) fn workers_table(noop: Option<&Phase>, workers: &[Phase]) {
    if workers.is_empty() {
        return;
    }
    println!(
        "\nremote workers, batched load, beside the in-process noop handler (worker CPU: its threads in the bench process)"
    );
    println!(
        "{:<28} {:>9} {:>6} {:>13} {:>8} {:>9} {:>5}",
        "phase", "jobs/s", "×noop", "cons MiB", "CPU µs/j", "wkr µs/j", "lost"
    );
    for (p, ratio) in noop
        .map(|p| (p, Some(1.0)))
        .into_iter()
        .chain(workers.iter().map(|p| (p, p.vs_noop)))
    {
        println!(
            "{:<28} {:>9.0} {:>6} {:>13} {:>8} {:>9} {:>5}",
            p.name,
            p.jobs_per_sec,
            ratio.map_or("-".into(), |r| format!("{r:.2}")),
            consumer_rss(p),
            p.cpu_us_per_job.map_or("-".into(), |c| format!("{c:.0}")),
            p.worker_cpu_us_per_job
                .map_or("-".into(), |c| format!("{c:.0}")),
            p.lost,
        );
    }
}

/// Prints the dead-letter phase's figures beside the producer's budget under the batched load.
pub(crate) fn dead_letters(d: &crate::dead_letters::Figures, producer_rss_mib: f64) {
    println!(
        "\ndead letters ({} entries): first page of 1,000 {:.1} s, the next {:.1} s, one job id {:.1} s; \
         replay by filter {:.1} s = {:.0} jobs/s (target >= 2,000), {} progress messages; \
         purge by filter {:.1} s, purge of all {:.2} s; producer peak RSS {:.1} MiB listing, {:.1} MiB replaying \
         (batched load: {:.1} MiB); lost {}",
        d.entries,
        d.first_page_secs,
        d.second_page_secs,
        d.one_id_secs,
        d.replay_secs,
        d.replay_per_sec,
        d.progress_messages,
        d.filtered_purge_secs,
        d.purge_all_secs,
        d.listing_peak_rss_mib,
        d.replay_peak_rss_mib,
        producer_rss_mib,
        d.lost,
    );
}

/// Prints the plain client's sweep, the best first.
pub(crate) fn sweep(results: &[(crate::baseline::Settings, f64)]) {
    if results.is_empty() {
        return;
    }
    println!("\nthe plain client's sweep (as many jobs each as every phase), the best first");
    println!("{:>8} {:>9} {:>9}", "window", "prefetch", "jobs/s");
    for (settings, rate) in results {
        println!(
            "{:>8} {:>9} {:>9.0}",
            settings.window, settings.prefetch, rate
        );
    }
}

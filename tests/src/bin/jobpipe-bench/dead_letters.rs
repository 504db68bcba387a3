//! Dead letters at scale (`dlq`): a dead-letter queue of `--dead-letters` entries, read, replayed
//! and purged through the producer's `AdminService`, with the producer's memory meanwhile.
//!
//! One producer, no consumers (replayed jobs wait in the work queue, where they are counted):
//! 1. the first page (1,000 entries) of a listing, a page further on, and a listing filtered
//!    down to one job id, each a full pass over the queue;
//! 2. a replay selected by a filter that matches every entry, unthrottled, with its progress
//!    stream;
//! 3. the queue filled again, then purged by a filter (read and removed one by one), filled
//!    once more and purged whole (the broker empties it at once).

use crate::{Options, pipeline::Pipeline, progress};
use jobpipe_proto::{
    failure::FailureKind,
    v1::{
        DeadLetterFilter, ListDeadLettersRequest, PurgeDeadLettersRequest,
        ReplayDeadLettersRequest, admin_service_client::AdminServiceClient,
    },
};
use jobpipe_tests::{
    broker::{Probe, TestTopology, dead_letter},
    procstat,
};
use serde::Serialize;
use std::time::{Duration, Instant, SystemTime};
use tonic::transport::Channel;

/// The entries a listing page asks for.
const PAGE: u32 = 1000;
/// Job types of the seeded entries; a filter naming both selects every one.
const TYPES: [&str; 2] = ["report.build", "email.send"];

/// What the phase measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figures {
    /// Entries in the dead-letter queue.
    pub(crate) entries: usize,
    /// Seconds for the first page of a listing.
    pub(crate) first_page_secs: f64,
    /// Seconds for the page after it (the token's query, another full pass).
    pub(crate) second_page_secs: f64,
    /// Seconds for a listing filtered down to one job id.
    pub(crate) one_id_secs: f64,
    /// The producer's peak RSS after the listings, MiB.
    pub(crate) listing_peak_rss_mib: f64,
    /// Seconds of the filtered replay of every entry, and its rate.
    pub(crate) replay_secs: f64,
    pub(crate) replay_per_sec: f64,
    /// Progress messages the replay's stream carried.
    pub(crate) progress_messages: usize,
    /// The producer's peak RSS after the replay, MiB.
    pub(crate) replay_peak_rss_mib: f64,
    /// Seconds of a purge selected by a filter, and of a purge of everything.
    pub(crate) filtered_purge_secs: f64,
    pub(crate) purge_all_secs: f64,
    /// Replayed entries neither in the work queue nor still dead-lettered.
    pub(crate) lost: usize,
}

/// Runs the phase with `entries` dead letters.
pub(crate) async fn run(opts: &Options, entries: usize) -> anyhow::Result<Figures> {
    let producer_only = Options {
        consumers: 0,
        ..opts.clone()
    };
    let pipeline = Pipeline::start(&producer_only, None).await?;
    let topology = pipeline.topology();
    let probe = Probe::connect().await?;
    let mut admin = AdminServiceClient::new(
        Channel::from_shared(format!("http://{}", pipeline.grpc))?
            .connect()
            .await?,
    )
    .max_decoding_message_size(64 * 1024 * 1024);
    let dead_queue = topology.dead_queue("default");
    let work_queue = topology.work_queue("default");
    let count = u32::try_from(entries)?;

    seed(&probe, topology, entries, "listing").await?;
    let list = |filter: Option<DeadLetterFilter>, page_token: String| ListDeadLettersRequest {
        queue: "default".into(),
        filter,
        page_size: PAGE,
        page_token,
        include_payload: false,
    };
    let started = Instant::now();
    let first = admin.list_dead_letters(list(None, String::new())).await?;
    let first_page_secs = started.elapsed().as_secs_f64();
    let first = first.into_inner();
    anyhow::ensure!(
        first.entries.len() == PAGE as usize,
        "the first page held {} entries",
        first.entries.len()
    );
    let started = Instant::now();
    let second = admin
        .list_dead_letters(list(None, first.next_page_token))
        .await?
        .into_inner();
    let second_page_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(second.entries.len() == PAGE as usize);
    let wanted = format!("dl-{:06}", entries / 2);
    let one_id = DeadLetterFilter {
        job_ids: vec![wanted.clone()],
        ..Default::default()
    };
    let started = Instant::now();
    let found = admin
        .list_dead_letters(list(Some(one_id), String::new()))
        .await?
        .into_inner();
    let one_id_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        found.entries.len() == 1 && found.entries[0].job_id == wanted,
        "a listing by job id {wanted} found {:?} (first page {first_page_secs:.1} s, second {second_page_secs:.1} s, {one_id_secs:.1} s)",
        found.entries.iter().map(|e| &e.job_id).collect::<Vec<_>>()
    );
    anyhow::ensure!(probe.message_count(&dead_queue).await == count);
    let listing_peak_rss_mib = procstat::usage(pipeline.producer_pid()).peak_rss_mib;

    let every_type = DeadLetterFilter {
        job_types: TYPES.iter().map(|t| (*t).to_owned()).collect(),
        ..Default::default()
    };
    let bar = progress("replay of dead letters", entries);
    let started = Instant::now();
    let mut stream = admin
        .replay_dead_letters(ReplayDeadLettersRequest {
            queue: "default".into(),
            filter: Some(every_type.clone()),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut progress_messages = 0;
    let mut last = None;
    while let Some(progress) = stream.message().await? {
        progress_messages += 1;
        bar.set_position(progress.replayed);
        last = Some(progress);
    }
    let replay_secs = started.elapsed().as_secs_f64();
    bar.finish();
    let last = last.ok_or_else(|| anyhow::anyhow!("the replay reported nothing"))?;
    anyhow::ensure!(last.done, "the replay did not finish: {last:?}");
    let replay_peak_rss_mib = procstat::usage(pipeline.producer_pid()).peak_rss_mib;
    let (in_work, still_dead) = (
        probe.message_count(&work_queue).await as usize,
        probe.message_count(&dead_queue).await as usize,
    );
    let lost = entries.saturating_sub(in_work + still_dead);

    let purge = |filter: Option<DeadLetterFilter>, all: bool| PurgeDeadLettersRequest {
        queue: "default".into(),
        filter,
        all,
        ..Default::default()
    };
    seed(&probe, topology, entries, "filtered purge").await?;
    let started = Instant::now();
    let removed = admin
        .purge_dead_letters(purge(Some(every_type), false))
        .await?
        .into_inner()
        .removed;
    let filtered_purge_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(removed >= u64::from(count) - still_dead as u64);
    seed(&probe, topology, entries, "purge of everything").await?;
    let started = Instant::now();
    admin.purge_dead_letters(purge(None, true)).await?;
    let purge_all_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(probe.message_count(&dead_queue).await == 0);
    pipeline.stop().await;

    Ok(Figures {
        entries,
        first_page_secs,
        second_page_secs,
        one_id_secs,
        listing_peak_rss_mib,
        replay_secs,
        replay_per_sec: last.replayed as f64 / replay_secs,
        progress_messages,
        replay_peak_rss_mib,
        filtered_purge_secs,
        purge_all_secs,
        lost,
    })
}

/// Fills the dead-letter queue with `entries` dead letters as consumers write them.
async fn seed(
    probe: &Probe,
    topology: &TestTopology,
    entries: usize,
    what: &str,
) -> anyhow::Result<()> {
    let bar = progress(&format!("dead letters for {what}"), entries);
    let dead_queue = topology.dead_queue("default");
    let before = probe.message_count(&dead_queue).await;
    let exchange = topology.names().dead_exchange();
    let at_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_millis() as u64;
    let payload = vec![b'x'; 1024];
    for index in 0..entries {
        probe
            .publish(&exchange, "default", &payload, entry(index, at_ms))
            .await;
        bar.inc(1);
    }
    probe
        .wait_for_count(
            &dead_queue,
            before + u32::try_from(entries)?,
            Duration::from_secs(300),
        )
        .await;
    bar.finish();
    Ok(())
}

/// Entry `index`: a job that failed `index` ms after `at_ms`.
fn entry(index: usize, at_ms: u64) -> lapin::BasicProperties {
    dead_letter(
        &format!("dl-{index:06}"),
        TYPES[index % TYPES.len()],
        FailureKind::Exhausted,
        at_ms + index as u64,
    )
}

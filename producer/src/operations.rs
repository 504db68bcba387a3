//! `jobpipe.v1.AdminService`: dead letters an operator can list, inspect, replay and purge, and
//! the queues' depths. Listing reads without changing anything; a replay publishes each entry as
//! a fresh first attempt, waits for the broker's confirm, and only then removes the dead letter,
//! so a crash in between leaves a duplicate, never a loss.

use crate::{
    auth::identity,
    dead_letters::{self, Filter, MAX_LISTED_PAYLOAD, PageToken, SortKey},
    queues::KnownQueues,
    scan::Scan,
};
use futures::{StreamExt, stream::FuturesOrdered};
use jobpipe_proto::{
    failure,
    names::QueueName,
    topology::Topology,
    v1::{
        DeadLetter, GetDeadLetterRequest, GetQueuesRequest, GetQueuesResponse,
        ListDeadLettersRequest, ListDeadLettersResponse, PurgeDeadLettersRequest,
        PurgeDeadLettersResponse, QueueState, ReplayDeadLettersRequest, ReplayProgress,
        admin_service_server,
    },
};
use jobpipe_runtime::{
    amqp::{Link, PublishError, Routes, Session},
    queue_state,
};
use lapin::options::QueuePurgeOptions;
use std::{
    collections::BinaryHeap,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

/// The page size when a request names none, and the most it may name.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;
/// The most a page with payloads may hold: 100 × 64 KiB.
const MAX_PAGE_WITH_PAYLOADS: u32 = 100;
/// Replays awaiting their confirm at once.
const REPLAY_WINDOW: usize = 256;
/// How often a replay reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Entries a dry run shows.
const SAMPLE: usize = 10;

/// The service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AdminService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    link: Link,
    topology: Topology,
    routes: Routes,
    configured: Vec<QueueName>,
    queues: KnownQueues,
    confirm_timeout: Duration,
}

impl AdminService {
    /// The service for the `configured` queues of `topology`, through `link`.
    pub fn new(
        link: Link,
        topology: Topology,
        configured: Vec<QueueName>,
        confirm_timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                routes: Routes::new(&topology),
                queues: KnownQueues::new(topology.clone(), configured.clone()),
                link,
                topology,
                configured,
                confirm_timeout,
            }),
        }
    }
}

type ProgressStream = Pin<Box<dyn futures::Stream<Item = Result<ReplayProgress, Status>> + Send>>;

#[tonic::async_trait]
impl admin_service_server::AdminService for AdminService {
    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let request = request.into_inner();
        let queue = self.inner.queue(&request.queue)?;
        let filter = parse_filter(request.filter)?;
        let max = if request.include_payload {
            MAX_PAGE_WITH_PAYLOADS
        } else {
            MAX_PAGE
        };
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE.min(max),
            size if size <= max => size,
            _ => {
                return Err(invalid(
                    "page_size",
                    &format!("must be at most {max} (with payloads: {MAX_PAGE_WITH_PAYLOADS})"),
                ));
            }
        };
        let token = PageToken::decode(&request.page_token, &filter, queue.as_str())
            .map_err(|reason| invalid("page_token", reason))?;
        let session = self.inner.session()?;
        let mut scan = self.inner.scan(&session, &queue).await?;
        // The page: the `page_size` first entries after the token, in listing order, found in
        // one pass over the whole queue with no more than a page in memory.
        let mut page: BinaryHeap<(SortKey, Listed)> = BinaryHeap::new();
        let mut more = false;
        let read = async {
            while let Some(message) = scan.next().await? {
                let summary = dead_letters::summarize(&message.properties);
                let key = summary.key();
                if !filter.matches(&summary) || !token.admits(&key) {
                    continue;
                }
                if page.len() == page_size as usize {
                    more = true;
                    if page.peek().is_some_and(|(last, _)| *last <= key) {
                        continue;
                    }
                    page.pop();
                }
                let entry = dead_letters::to_proto(
                    summary,
                    &message,
                    queue.as_str(),
                    request.include_payload.then_some(MAX_LISTED_PAYLOAD),
                );
                page.push((key, Listed(entry)));
            }
            Ok::<_, lapin::Error>(())
        }
        .await;
        scan.close().await;
        read.map_err(broker)?;
        let page = page.into_sorted_vec();
        let next_page_token = match page.last() {
            Some((last, _)) if more => token.after(last.clone()).encode(),
            _ => String::new(),
        };
        Ok(Response::new(ListDeadLettersResponse {
            entries: page.into_iter().map(|(_, Listed(entry))| entry).collect(),
            next_page_token,
        }))
    }

    async fn get_dead_letter(
        &self,
        request: Request<GetDeadLetterRequest>,
    ) -> Result<Response<DeadLetter>, Status> {
        let request = request.into_inner();
        let queue = self.inner.queue(&request.queue)?;
        if request.job_id.is_empty() {
            return Err(invalid("job_id", "is required"));
        }
        let session = self.inner.session()?;
        let mut scan = self.inner.scan(&session, &queue).await?;
        let found = async {
            while let Some(message) = scan.next().await? {
                let summary = dead_letters::summarize(&message.properties);
                if summary.job_id == request.job_id {
                    return Ok(Some(dead_letters::to_proto(
                        summary,
                        &message,
                        queue.as_str(),
                        Some(usize::MAX),
                    )));
                }
            }
            Ok::<_, lapin::Error>(None)
        }
        .await;
        scan.close().await;
        match found.map_err(broker)? {
            Some(entry) => Ok(Response::new(entry)),
            None => Err(Status::not_found(format!(
                "no dead letter of queue {queue} has job id {:?}",
                jobpipe_proto::metadata::truncate(&request.job_id, 128)
            ))),
        }
    }

    type ReplayDeadLettersStream = ProgressStream;

    async fn replay_dead_letters(
        &self,
        request: Request<ReplayDeadLettersRequest>,
    ) -> Result<Response<Self::ReplayDeadLettersStream>, Status> {
        let caller = identity(&request).name().to_owned();
        let request = request.into_inner();
        let queue = self.inner.queue(&request.queue)?;
        let filter = selection(request.filter, request.all, "replay")?;
        let target = match request.target_queue.as_str() {
            "" => queue.clone(),
            name => QueueName::try_new(name)
                .map_err(|error| invalid("target_queue", &error.to_string()))?,
        };
        let session = self.inner.session()?;
        if !request.dry_run {
            self.inner
                .queues
                .check(&session, &target, self.inner.confirm_timeout)
                .await
                .map_err(|error| match error {
                    PublishError::Unroutable => Status::failed_precondition(format!(
                        "the target queue {target} does not exist"
                    )),
                    _ => Status::unavailable(format!(
                        "the broker did not say whether the target queue {target} exists; nothing was replayed"
                    )),
                })?;
        }
        let scan = self.inner.scan(&session, &queue).await?;
        info!(%caller, %queue, %target, dry_run = request.dry_run, all = request.all,
            "Replaying dead letters.");
        let (progress, stream) = mpsc::channel(4);
        let replay = Replay {
            inner: self.inner.clone(),
            session,
            scan,
            filter,
            queue: queue.to_string(),
            target,
            caller,
            dry_run: request.dry_run,
            rate_limit: request.rate_limit,
            progress,
        };
        tokio::spawn(replay.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn purge_dead_letters(
        &self,
        request: Request<PurgeDeadLettersRequest>,
    ) -> Result<Response<PurgeDeadLettersResponse>, Status> {
        let caller = identity(&request).name().to_owned();
        let request = request.into_inner();
        let queue = self.inner.queue(&request.queue)?;
        let filter = selection(request.filter, request.all, "purge")?;
        let session = self.inner.session()?;
        let dead_queue = self.inner.topology.dead_queue(&queue);
        if filter.is_empty() && !request.dry_run {
            // Everything: the broker empties the queue at once.
            let channel = session.open_channel().await.map_err(broker)?;
            let removed = channel
                .queue_purge(dead_queue.as_str().into(), QueuePurgeOptions::default())
                .await
                .map_err(broker)?;
            let _ = channel.close(200, "purged".into()).await;
            warn!(%caller, %queue, removed, "Purged every dead letter.");
            return Ok(Response::new(PurgeDeadLettersResponse {
                removed: u64::from(removed),
            }));
        }
        let mut scan = self.inner.scan(&session, &queue).await?;
        let mut removed = 0u64;
        let purged = async {
            while let Some(message) = scan.next().await? {
                if filter.matches(&dead_letters::summarize(&message.properties)) {
                    if !request.dry_run {
                        scan.remove(message.tag).await?;
                    }
                    removed += 1;
                }
            }
            Ok::<_, lapin::Error>(())
        }
        .await;
        scan.close().await;
        purged.map_err(broker)?;
        if !request.dry_run {
            warn!(%caller, %queue, removed, "Purged dead letters.");
        }
        Ok(Response::new(PurgeDeadLettersResponse { removed }))
    }

    async fn get_queues(
        &self,
        _request: Request<GetQueuesRequest>,
    ) -> Result<Response<GetQueuesResponse>, Status> {
        let session = self.inner.session()?;
        let channel = session.open_channel().await.map_err(broker)?;
        let read =
            queue_state::read_depths(&channel, &self.inner.topology, &self.inner.configured).await;
        let _ = channel.close(200, "read".into()).await;
        let depths = read.map_err(broker)?;
        Ok(Response::new(GetQueuesResponse {
            queues: depths
                .queues
                .into_iter()
                .map(|queue| QueueState {
                    name: queue.name.to_string(),
                    ready: queue.ready,
                    dead: queue.dead,
                    consumers: queue.consumers,
                })
                .collect(),
            delayed: depths.delayed,
        }))
    }
}

impl Inner {
    /// `name`, if it is one of the configured queues (only those have a dead-letter queue the
    /// producer knows of).
    fn queue(&self, name: &str) -> Result<QueueName, Status> {
        let queue = QueueName::try_new(if name.is_empty() { "default" } else { name })
            .map_err(|error| invalid("queue", &error.to_string()))?;
        if !self.configured.contains(&queue) {
            return Err(Status::failed_precondition(format!(
                "queue {queue} is not one of this producer's queues (topology.queues)"
            )));
        }
        Ok(queue)
    }

    fn session(&self) -> Result<Session, Status> {
        self.link
            .session()
            .ok_or_else(|| Status::unavailable("the broker is unreachable"))
    }

    async fn scan(&self, session: &Session, queue: &QueueName) -> Result<Scan, Status> {
        Scan::open(session, self.topology.dead_queue(queue))
            .await
            .map_err(broker)
    }
}

/// An entry in a page being gathered, ordered by its key alone.
struct Listed(DeadLetter);

impl PartialEq for Listed {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Listed {}

impl PartialOrd for Listed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Listed {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// A replay in progress, reporting to its caller's stream.
struct Replay {
    inner: Arc<Inner>,
    session: Session,
    scan: Scan,
    filter: Filter,
    /// Whose dead letters.
    queue: String,
    target: QueueName,
    caller: String,
    dry_run: bool,
    rate_limit: u32,
    progress: mpsc::Sender<Result<ReplayProgress, Status>>,
}

impl Replay {
    async fn run(mut self) {
        let mut state = ReplayProgress::default();
        let outcome = self.replay(&mut state).await;
        let Self {
            scan,
            progress,
            caller,
            target,
            ..
        } = self;
        // Giving back what was not replayed takes a few seconds on a large queue: the caller
        // hears meanwhile that the replay is alive.
        let closed = scan.close();
        tokio::pin!(closed);
        let mut ticker = tokio::time::interval(PROGRESS_EVERY);
        loop {
            tokio::select! {
                () = &mut closed => break,
                // A caller slow to read skips a report; the entries' return never waits on it.
                _ = ticker.tick() => {
                    let _ = progress.try_send(Ok(state.clone()));
                }
            }
        }
        info!(%caller, %target, scanned = state.scanned, matched = state.matched,
            replayed = state.replayed, skipped = state.skipped, failed = state.failed,
            "Replay finished.");
        let last = match outcome {
            Ok(()) => Ok(ReplayProgress {
                done: true,
                ..state
            }),
            Err(status) => Err(status),
        };
        let _ = progress.send(last).await;
    }

    async fn replay(&mut self, state: &mut ReplayProgress) -> Result<(), Status> {
        let (exchange, routing_key) = self.inner.routes.job(&self.target, None);
        let mut pending = FuturesOrdered::new();
        let mut reported = Instant::now();
        let pace = (self.rate_limit > 0)
            .then(|| Duration::from_secs_f64(1.0 / f64::from(self.rate_limit)));
        let mut next_slot = tokio::time::Instant::now();
        while let Some(message) = self.scan.next().await.map_err(broker)? {
            state.scanned += 1;
            let summary = dead_letters::summarize(&message.properties);
            if self.filter.matches(&summary) {
                state.matched += 1;
                if self.dry_run {
                    if state.sample.len() < SAMPLE {
                        state.sample.push(dead_letters::to_proto(
                            summary,
                            &message,
                            &self.queue,
                            None,
                        ));
                    }
                } else if !summary.readable {
                    state.skipped += 1;
                } else {
                    if let Some(pace) = pace {
                        tokio::time::sleep_until(next_slot).await;
                        next_slot = tokio::time::Instant::now().max(next_slot) + pace;
                    }
                    let properties =
                        failure::for_replay(&message.properties, &self.caller, SystemTime::now());
                    let sent = self
                        .session
                        .publisher()
                        .send(
                            exchange.clone(),
                            routing_key.clone(),
                            &message.body,
                            properties,
                        )
                        .await;
                    match sent {
                        Ok(confirm) => {
                            let tag = message.tag;
                            pending.push_back(async move { (tag, confirm.confirmed().await) });
                        }
                        Err(_) => state.failed += 1,
                    }
                    while pending.len() >= REPLAY_WINDOW {
                        if let Some(confirmed) = pending.next().await {
                            self.settle(confirmed, state).await?;
                        }
                    }
                }
            }
            if reported.elapsed() >= PROGRESS_EVERY {
                reported = Instant::now();
                // A caller that went away stops the replay: what is done stays done.
                if self.progress.send(Ok(state.clone())).await.is_err() {
                    break;
                }
            }
        }
        // The last confirms: the caller still hears how it goes.
        while let Some(confirmed) = pending.next().await {
            self.settle(confirmed, state).await?;
            if reported.elapsed() >= PROGRESS_EVERY {
                reported = Instant::now();
                let _ = self.progress.send(Ok(state.clone())).await;
            }
        }
        Ok(())
    }

    /// Removes a dead letter whose replay the broker confirmed.
    async fn settle(
        &mut self,
        (tag, confirmed): (u64, Result<(), PublishError>),
        state: &mut ReplayProgress,
    ) -> Result<(), Status> {
        match confirmed {
            Ok(()) => {
                self.scan.remove(tag).await.map_err(broker)?;
                state.replayed += 1;
            }
            Err(_) => state.failed += 1,
        }
        Ok(())
    }
}

fn parse_filter(filter: Option<jobpipe_proto::v1::DeadLetterFilter>) -> Result<Filter, Status> {
    Filter::parse(filter).map_err(|(field, reason)| invalid(&field, &reason))
}

/// What a replay or purge changes: a filter that selects something, or `all` said explicitly.
fn selection(
    filter: Option<jobpipe_proto::v1::DeadLetterFilter>,
    all: bool,
    verb: &str,
) -> Result<Filter, Status> {
    let filter = parse_filter(filter)?;
    if filter.is_empty() && !all {
        return Err(invalid(
            "filter",
            &format!("selects nothing explicitly: name entries or set all to {verb} every one"),
        ));
    }
    Ok(filter)
}

fn invalid(field: &str, reason: &str) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// A broker failure as the caller sees it: the broker is away (the message names no address).
fn broker(error: lapin::Error) -> Status {
    warn!(%error, "Dead-letter operation failed on the broker.");
    Status::unavailable(
        "the broker connection failed during the operation; what was done stays done, the rest is still dead-lettered",
    )
}

//! `jobpipe-chaos` (`make chaos`): jobpipe under a paced load while the broker and the consumers
//! are broken on purpose, then an account of every job.
//!
//! A throwaway RabbitMQ node (or a three-node cluster with `--cluster`) runs beside the shared
//! broker; the release (or debug) `jobpipe-producer` and two `jobpipe-consumer` processes run on
//! it; the load submits jobs with client ids (85 % `noop`, 10 % `fail` once, 5 % `sleep 50ms`,
//! one in a thousand designed to be dead-lettered), each retried with its id until confirmed;
//! the faults run one after another. Then everything drains and is counted: confirmed jobs that
//! never succeeded (must be 0), healthy jobs in the dead-letter queue (must be 0), duplicates
//! (each explained by a fault or not), recovery after each fault, the longest submit call.
//!
//! Prints a table and one JSON line; exits non-zero if a job was lost or wrongly dead-lettered.

mod faults;
mod ledger;
mod load;
mod queues;
mod report;
mod services;

use clap::Parser;
use faults::{Fault, Injected, Injector};
use jobpipe_proto::v1::job_service_client::JobServiceClient;
use jobpipe_tests::{
    broker::Probe,
    node::{Cluster, Node, NodeOptions},
};
use ledger::Ledger;
use load::Kind;
use report::Report;
use services::{Services, Settings};
use std::{
    collections::{HashMap, HashSet},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};
use tokio::{sync::mpsc, time::Instant};

/// Chaos options.
#[derive(Debug, Clone, Parser)]
#[command(about = "jobpipe under broker and consumer faults, every job accounted for")]
struct Options {
    /// Jobs to submit.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Jobs per second.
    #[arg(long, default_value_t = 60.0)]
    rate: f64,
    /// Consumer processes.
    #[arg(long, default_value_t = 2)]
    consumers: usize,
    /// Seconds between two faults.
    #[arg(long, default_value_t = 6)]
    gap: u64,
    /// A three-node cluster instead of one node.
    #[arg(long)]
    cluster: bool,
    /// A short run: fewer faults (the jobs and rate stay as given).
    #[arg(long)]
    short: bool,
    /// Print the services' warnings and errors as they come.
    #[arg(long)]
    verbose: bool,
    /// On a failed run, keep the broker nodes this many seconds for a look inside.
    #[arg(long, default_value_t = 0)]
    linger: u64,
    /// Keep every service's log lines in this directory (`producer.log`, `consumer-<slot>.log`).
    #[arg(long)]
    logs: Option<std::path::PathBuf>,
}

/// The AMQP heartbeat the services run with, in seconds.
const HEARTBEAT_SECS: u64 = 5;
/// The producer's confirm timeout (its default).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the drain may take once the load is done.
const DRAIN_LIMIT: Duration = Duration::from_secs(180);
/// Readings of an empty broker, half a second apart, before the drain gives up on open jobs:
/// longer than level 0's TTL (1 s) and a leader election.
const IDLE_READINGS: usize = 10;

fn schedule(options: &Options) -> Vec<Fault> {
    use Fault::*;
    match (options.cluster, options.short) {
        (false, false) => vec![
            BrokerStop,
            ConsumerKill,
            BrokerKill,
            ConsumerKill,
            CloseConnections,
            ConsumerKill,
            BrokerStop,
            MemoryAlarm,
            ConsumerKill,
            BrokerKill,
            ConsumerTerm,
            ConsumerKill,
            BrokerStop,
            ConsumerKill,
        ],
        (false, true) => vec![
            BrokerStop,
            ConsumerKill,
            BrokerKill,
            CloseConnections,
            MemoryAlarm,
            ConsumerTerm,
        ],
        (true, false) => vec![
            NodeKill,
            ConsumerKill,
            CloseConnections,
            NodeKill,
            ConsumerTerm,
            NodeKill,
            MemoryAlarm,
            ConsumerKill,
        ],
        (true, true) => vec![NodeKill, ConsumerKill, NodeKill],
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let options = Options::parse();
    let report = run(&options).await?;
    report.print_table();
    println!("{}", report.json());
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn run(options: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let wall_start = SystemTime::now();
    let nodes = if options.cluster {
        Cluster::start("chaos", 3).await.nodes
    } else {
        vec![Node::start(NodeOptions::new("chaos")).await]
    };
    let settings = Settings {
        urls: nodes.iter().map(Node::amqp_url).collect(),
        prefix: format!("chaos-{:08x}", rand::random::<u32>()),
        heartbeat_secs: HEARTBEAT_SECS,
        verbose: options.verbose,
        logs: options.logs.clone(),
    };
    let prefix = settings.prefix.clone();
    let dead_queue = format!("{prefix}.default.dead");
    let (log, mut lines) = mpsc::unbounded_channel();
    let mut services = Services::start(settings, options.consumers, log);
    services.wait_ready().await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    tokio::spawn({
        let ledger = ledger.clone();
        async move {
            while let Some((line, finished)) = lines.recv().await {
                ledger.lock().expect("ledger lock").record(line, finished);
            }
        }
    });
    eprintln!(
        "chaos: {} jobs at {}/s with {} consumers",
        options.jobs, options.rate, options.consumers
    );

    let load = tokio::spawn(load::run(services.grpc, options.jobs, options.rate));
    let client = JobServiceClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", services.grpc))?.connect_lazy(),
    );
    let mut injector = Injector {
        nodes: &nodes,
        prefix: &prefix,
        services: &mut services,
        client,
        started,
        canaries: 0,
        next_consumer: 0,
    };
    let mut injected = Vec::new();
    for fault in schedule(options) {
        tokio::time::sleep(Duration::from_secs(options.gap)).await;
        let done = injector.inject(fault).await;
        eprintln!(
            "chaos: {:>6.1}s {fault}: outage {} ms, recovered in {} ms",
            done.at.as_secs_f64(),
            done.outage.as_millis(),
            done.recovery.as_millis()
        );
        injected.push(done);
    }
    let canaries = injector.canaries;
    let load_limit = Duration::from_secs_f64(options.jobs as f64 / options.rate) + DRAIN_LIMIT;
    let submitted = tokio::time::timeout(load_limit, load).await???;
    eprintln!(
        "chaos: load done, {} confirmed; draining",
        submitted.confirmed.len()
    );

    let mut expected: HashSet<String> = submitted.confirmed.clone();
    expected.extend((1..=canaries).map(|n| format!("canary-{n}")));
    let stranded = drain(&ledger, &expected, &nodes, &prefix).await;
    services.stop().await;
    let probe = Probe::connect_to(&nodes[0].amqp_url()).await?;
    let dead = ledger::dead_letters(&probe, &dead_queue).await;
    drop(probe);

    let ledger = std::mem::take(&mut *ledger.lock().expect("ledger lock"));
    let mut report = account(&ledger, &expected, &dead, &submitted, &injected, wall_start);
    report.variant = if options.cluster { "cluster" } else { "single" };
    report.jobs = options.jobs + canaries;
    report.faults = injected;
    report.elapsed = started.elapsed();
    report.stranded = stranded;
    if !report.passed() {
        // Where the missing jobs are: the run's queues as the broker sees them.
        let columns = [
            "messages",
            "messages_ready",
            "messages_unacknowledged",
            "leader",
            "online",
        ];
        report.queues = (queues::list(&nodes[0], &prefix, &columns).await.iter())
            .map(|row| row.join("\t"))
            .collect();
        if options.linger > 0 {
            let names: Vec<&str> = nodes.iter().map(Node::name).collect();
            eprintln!(
                "chaos: failed; the nodes {names:?} stay up {} s",
                options.linger
            );
            tokio::time::sleep(Duration::from_secs(options.linger)).await;
        }
    }
    for node in nodes {
        node.stop().await;
    }
    Ok(report)
}

/// Waits until every expected job succeeded or was dead-lettered, by the consumers' logs, or
/// until nothing is left to process (the broker may have dead-lettered a job on its own, and
/// a lost job never finishes): every queue but the dead-letter ones empty, with all its
/// members online, for [`IDLE_READINGS`] readings in a row.
///
/// When nothing moves for [`STALL`] while the broker still holds messages, the operator's runbook
/// for RabbitMQ's stalled dead-letter workers (deploy/README.md) is applied once: the jobs
/// waiting in a delay level are then counted as stranded, not lost. Returns how many were open
/// then (0: no stall).
async fn drain(
    ledger: &Mutex<Ledger>,
    expected: &HashSet<String>,
    nodes: &[Node],
    prefix: &str,
) -> usize {
    let deadline = Instant::now() + DRAIN_LIMIT;
    let (mut idle, mut stranded, mut step) = (0, 0, 0);
    // Every queue of the run must be listed, and empty, before the broker counts as drained.
    let mut queues = 0;
    let mut last_change = (usize::MAX, Instant::now());
    while Instant::now() < deadline {
        let open = {
            let ledger = ledger.lock().expect("ledger lock");
            (expected.iter()).filter(|id| !ledger.settled(id)).count()
        };
        if open == 0 {
            break;
        }
        let pending = pending(&nodes[0], prefix).await;
        queues = queues.max(pending.map_or(0, |(listed, _)| listed));
        idle = match pending {
            Some((listed, 0)) if listed == queues => idle + 1,
            _ => 0,
        };
        if idle == IDLE_READINGS {
            break;
        }
        if open != last_change.0 {
            last_change = (open, Instant::now());
        } else if last_change.1.elapsed() > STALL && step < 2 {
            // The runbook in deploy/README.md, one step at a time.
            stranded = stranded.max(open);
            step += 1;
            eprintln!(
                "chaos: {open} jobs open and {pending:?} (queues, messages) in the broker, nothing \
                 moved for {STALL:?}: runbook step {step}"
            );
            // Where they are held, and which members were online, before the runbook touches it.
            let columns = ["messages", "leader", "members", "online"];
            (queues::list(&nodes[0], prefix, &columns).await.iter())
                .filter(|row| row.get(1).is_some_and(|count| count != "0"))
                .for_each(|row| eprintln!("chaos:   held: {}", row.join("\t")));
            let stalled = stalled_levels(nodes, prefix).await;
            if step == 1 {
                restart_stalled_workers(nodes, &stalled).await;
            } else {
                restart_stalled_leaders(nodes, &stalled).await;
            }
            last_change = (open, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stranded
}

/// The delay levels a stalled dead-letter worker holds, with their leaders: messages none of
/// which is ready or unacknowledged. Only those whose members are all online: restarting the
/// leader of a level without a quorum elsewhere would leave it with no member running.
async fn stalled_levels(nodes: &[Node], prefix: &str) -> Vec<(String, String)> {
    let columns = [
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "leader",
        "members",
        "online",
    ];
    (queues::list(&nodes[0], prefix, &columns).await)
        .into_iter()
        .filter_map(|row| match &row[..] {
            [name, messages, ready, unacked, leader, members, online]
                if name.contains(".delay.")
                    && messages != "0"
                    && ready == "0"
                    && unacked == "0"
                    && queues::all_online(members, online) =>
            {
                Some((name.clone(), leader.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The runbook's first step: on each stalled level's leader, kills that level's dead-letter
/// worker, which the node's `rabbit_fifo_dlx_sup` starts again at once. That supervisor allows
/// one restart in 5 s: more and it exits, and at-least-once dead-lettering stops on the node
/// until its application restarts. So one worker per node, [`WORKER_RESTART_GAP`] apart.
async fn restart_stalled_workers(nodes: &[Node], stalled: &[(String, String)]) {
    let mut last_kill: HashMap<&str, Instant> = HashMap::new();
    for (level, leader) in stalled {
        let Some(node) = nodes.iter().find(|node| node.name() == leader) else {
            continue;
        };
        if let Some(at) = last_kill.get(leader.as_str()) {
            tokio::time::sleep_until(*at + WORKER_RESTART_GAP).await;
        }
        eprintln!("chaos: restarting the dead-letter worker of {level} on {leader}");
        node.rabbitmqctl(&["eval", &restart_dlx_worker(level)])
            .await;
        last_kill.insert(leader, Instant::now());
        let supervisor = node
            .rabbitmqctl(&["eval", "whereis(rabbit_fifo_dlx_sup)."])
            .await;
        if supervisor.trim() == "undefined" {
            eprintln!("chaos: {leader} has no rabbit_fifo_dlx_sup any more");
        }
    }
}

/// The runbook's second step: restarts the RabbitMQ application on each node that leads a
/// stalled level, so a new leader elsewhere starts a new dead-letter worker.
async fn restart_stalled_leaders(nodes: &[Node], stalled: &[(String, String)]) {
    let mut leaders: Vec<&str> = stalled.iter().map(|(_, leader)| leader.as_str()).collect();
    leaders.sort_unstable();
    leaders.dedup();
    for leader in leaders {
        if let Some(node) = nodes.iter().find(|node| node.name() == leader) {
            eprintln!("chaos: restarting the RabbitMQ application on {leader}");
            node.stop_app().await;
            node.start_app().await;
        }
    }
}

/// The pause between two dead-letter worker restarts on one node: longer than the 5 s in which
/// `rabbit_fifo_dlx_sup` allows one restart.
const WORKER_RESTART_GAP: Duration = Duration::from_secs(6);

/// How long the drain waits without progress before it suspects a stalled dead-letter worker:
/// many times any retry delay plus level TTL here (1 s and 1 s), short enough that both runbook
/// steps and the jobs they free fit in the short run's time.
const STALL: Duration = Duration::from_secs(15);

/// deploy/README.md's recovery for a stalled dead-letter worker: the Erlang expression, for
/// `rabbitmqctl eval` on the level's leader, that kills the level's worker (each worker's state
/// starts with the queue it serves).
fn restart_dlx_worker(level: &str) -> String {
    format!(
        "[exit(P, kill) || {{_, P, _, _}} <- supervisor:which_children(rabbit_fifo_dlx_sup), \
         element(2, sys:get_state(P)) =:= rabbit_misc:r(<<\"/\">>, queue, <<\"{level}\">>)]."
    )
}

/// What the broker says the run's queues hold (dead-letter queues aside): how many queues it
/// listed and their messages, ready or being processed. `None` while it cannot say: a queue
/// whose leader is being elected or recovering lists no count, a node that is down lists
/// nothing, and a queue with a member offline may report a count the leader no longer has
/// (after the runbook's restart a level read 0 while its jobs were moving on).
async fn pending(node: &Node, prefix: &str) -> Option<(usize, u64)> {
    let rows = queues::list(node, prefix, &["messages", "members", "online"]).await;
    let counts = (rows.iter())
        .filter(|row| !row[0].ends_with(".dead"))
        .map(|row| match &row[..] {
            [_, messages, members, online] if queues::all_online(members, online) => {
                messages.trim().parse::<u64>().ok()
            }
            _ => None,
        })
        .collect::<Option<Vec<u64>>>()?;
    (!counts.is_empty()).then(|| (counts.len(), counts.iter().sum()))
}

/// Every job's fate, against what it was designed to do.
fn account(
    ledger: &Ledger,
    expected: &HashSet<String>,
    dead: &[ledger::DeadLetter],
    submitted: &load::Submitted,
    faults: &[Injected],
    wall_start: SystemTime,
) -> Report {
    let doomed = |id: &str| {
        id.strip_prefix("chaos-")
            .and_then(|index| index.parse().ok())
            .is_some_and(|index| Kind::of(index) == Kind::Doomed)
    };
    let dead_ids: HashSet<&str> = dead.iter().map(|d| d.job_id.as_str()).collect();
    // A consumer killed with SIGKILL after acking a job and before logging it leaves a job that
    // succeeded with no line to say so: its last start was on that consumer just before.
    let killed_after_start = |id: &String| {
        let last_start = (ledger.jobs.get(id).into_iter().flatten())
            .rev()
            .find(|event| event.outcome == ledger::STARTED);
        last_start.is_some_and(|start| {
            faults.iter().any(|fault| {
                let killed = wall_start + fault.at;
                fault.fault == Fault::ConsumerKill
                    && fault.consumer == Some(start.slot)
                    && start.at <= killed
                    && killed <= start.at + Duration::from_secs(2)
            })
        })
    };
    let (unlogged, mut lost): (Vec<String>, Vec<String>) = (expected.iter())
        .filter(|id| ledger.successes(id) == 0 && !dead_ids.contains(id.as_str()))
        .cloned()
        .partition(killed_after_start);
    lost.sort();
    let healthy_dead = (dead.iter())
        .filter(|d| !doomed(&d.job_id))
        .map(|d| {
            let why = (d.kind.clone())
                .or_else(|| d.broker_reason.clone().map(|r| format!("broker: {r}")))
                .unwrap_or_default();
            (d.job_id.clone(), why)
        })
        .collect();
    let designed = expected.iter().filter(|id| doomed(id)).count();
    let designed_dead = dead_ids.iter().filter(|id| doomed(id)).count();
    // A fault explains a duplicate when one of the job's outcomes came shortly before it (an ack
    // lost with the connection) or the job's submit had to be repeated (the first may have been
    // queued).
    let near_fault = |at: SystemTime| {
        faults.iter().any(|fault| {
            let begin = wall_start + fault.at;
            let end = begin + fault.outage + Duration::from_secs(1);
            at + Duration::from_secs(2) >= begin && at <= end
        })
    };
    let duplicated: Vec<&String> = (ledger.jobs.keys())
        .filter(|id| ledger.successes(id) > 1)
        .collect();
    let explained = (duplicated.iter())
        .filter(|id| {
            submitted.resubmitted.contains(id.as_str())
                || ledger.jobs[id.as_str()]
                    .iter()
                    .any(|event| near_fault(event.at))
        })
        .count();
    Report {
        confirmed: expected.len(),
        lost,
        unlogged: unlogged.len(),
        healthy_dead,
        designed_dead: (designed, designed_dead),
        duplicates: (duplicated.len(), explained),
        refusals: submitted.refusals.clone(),
        longest_call: (
            submitted.longest_call,
            CONFIRM_TIMEOUT.max(Duration::from_secs(2 * HEARTBEAT_SECS)) + Duration::from_secs(1),
        ),
        outcomes: ledger.outcomes().into_iter().collect(),
        log_lines: (ledger.warnings, ledger.lines),
        ..Report::default()
    }
}

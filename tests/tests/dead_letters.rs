//! The operations API against the real broker: dead letters listed (filtered, paged, payloads
//! only when asked) without changing the queue, shown, replayed as fresh first attempts (by
//! filter, dry run, into another queue, through a producer killed mid-replay), purged; queue
//! depths; and an outside client (Python grpcio) listing and replaying.

use jobpipe_proto::{
    failure::{self, FailureKind},
    headers,
    job::{JobProperties, integer_header, long_string, text_header},
    v1::{
        DeadLetterFilter, GetDeadLetterRequest, GetQueuesRequest, JobSpec, ListDeadLettersRequest,
        PurgeDeadLettersRequest, ReplayDeadLettersRequest, ReplayProgress,
        admin_service_client::AdminServiceClient,
    },
};
use jobpipe_tests::{
    broker::{Probe, TestTopology, dead_letter},
    consumer::{self, RunningConsumer, next_seen, recording_handlers},
    process::{Service, free_port, service_env, wait_ready},
    producer::{self, RunningProducer},
    tools::run_script,
    within,
};
use lapin::{BasicProperties, types::FieldTable};
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};
use tokio::sync::mpsc;
use tonic::{Code, transport::Channel};

/// A seeded dead letter: job id, type, failure kind, failed-at ms.
type Seeded = (String, &'static str, FailureKind, u64);

const KINDS: [FailureKind; 5] = [
    FailureKind::Permanent,
    FailureKind::Exhausted,
    FailureKind::Timeout,
    FailureKind::NoHandler,
    FailureKind::Decode,
];

/// Puts `entries` (id, type, kind, failed-at ms) into `queue`'s dead-letter queue, in order.
async fn seed(probe: &Probe, topology: &TestTopology, entries: &[Seeded]) {
    let names = topology.names();
    let dead_queue = topology.dead_queue("default");
    let before = probe.message_count(&dead_queue).await;
    for (id, job_type, kind, at) in entries {
        probe
            .publish(
                &names.dead_exchange(),
                "default",
                id.as_bytes(),
                dead_letter(id, job_type, *kind, *at),
            )
            .await;
    }
    probe
        .wait_for_count(
            &dead_queue,
            before + entries.len() as u32,
            Duration::from_secs(60),
        )
        .await;
}

fn entries(count: usize) -> Vec<Seeded> {
    (0..count)
        .map(|i| {
            let job_type = ["a", "b", "c"][i % 3];
            (
                format!("job-{i:05}"),
                job_type,
                KINDS[i % KINDS.len()],
                1_000_000 + i as u64 * 1000,
            )
        })
        .collect()
}

async fn admin(producer: &RunningProducer) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(producer.channel().await)
}

/// Every job id the listing returns, page by page of `page_size`.
async fn list_all(
    client: &mut AdminServiceClient<Channel>,
    filter: DeadLetterFilter,
    page_size: u32,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_dead_letters(ListDeadLettersRequest {
                queue: "default".into(),
                filter: Some(filter.clone()),
                page_size,
                page_token,
                include_payload: false,
            })
            .await
            .expect("list")
            .into_inner();
        assert!(
            page.entries.iter().all(|e| e.payload.is_empty()),
            "no payload unless asked"
        );
        ids.extend(page.entries.into_iter().map(|e| e.job_id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        page_token = page.next_page_token;
    }
}

/// Runs a replay to its end; the last progress.
async fn replay(
    client: &mut AdminServiceClient<Channel>,
    request: ReplayDeadLettersRequest,
) -> ReplayProgress {
    let mut stream = client
        .replay_dead_letters(request)
        .await
        .expect("replay")
        .into_inner();
    within(Duration::from_secs(120), "the replay to finish", async {
        let mut last = None;
        while let Some(progress) = stream.message().await.expect("progress") {
            last = Some(progress);
        }
        last.expect("at least the final progress")
    })
    .await
}

#[tokio::test]
async fn listing_filters_and_pages_and_changes_nothing() {
    let topology = TestTopology::new("dlq-list", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let probe = Probe::connect().await.expect("probe");
    let seeded = entries(60);
    seed(&probe, &topology, &seeded).await;
    // One the broker dead-lettered by itself: no jobpipe record.
    let mut table = FieldTable::default();
    table.insert("x-first-death-reason".into(), long_string("delivery_limit"));
    probe
        .publish(
            &topology.names().dead_exchange(),
            "default",
            b"?",
            BasicProperties::default()
                .with_message_id("crashed".into())
                .with_headers(table),
        )
        .await;
    probe
        .wait_for_count(&topology.dead_queue("default"), 61, Duration::from_secs(10))
        .await;
    let mut client = admin(&producer).await;

    let ids = |f: &dyn Fn(&Seeded) -> bool| -> Vec<String> {
        seeded
            .iter()
            .filter(|e| f(e))
            .map(|e| e.0.clone())
            .collect()
    };
    let at = |ms: u64| {
        Some(prost_types::Timestamp::from(
            std::time::UNIX_EPOCH + Duration::from_millis(ms),
        ))
    };
    let cases: Vec<(DeadLetterFilter, Vec<String>)> = vec![
        (
            DeadLetterFilter {
                job_types: vec!["b".into()],
                ..Default::default()
            },
            ids(&|e| e.1 == "b"),
        ),
        (
            DeadLetterFilter {
                kinds: vec!["timeout".into(), "decode".into()],
                ..Default::default()
            },
            ids(&|e| matches!(e.2, FailureKind::Timeout | FailureKind::Decode)),
        ),
        (
            DeadLetterFilter {
                job_ids: vec!["job-00007".into(), "job-00042".into()],
                ..Default::default()
            },
            vec!["job-00007".into(), "job-00042".into()],
        ),
        (
            DeadLetterFilter {
                failed_after: at(1_010_000),
                failed_before: at(1_020_000),
                ..Default::default()
            },
            ids(&|e| (1_010_000..1_020_000).contains(&e.3)),
        ),
        (
            DeadLetterFilter {
                kinds: vec!["delivery_limit".into()],
                ..Default::default()
            },
            vec!["crashed".into()],
        ),
        (
            DeadLetterFilter {
                job_types: vec!["a".into()],
                kinds: vec!["permanent".into()],
                ..Default::default()
            },
            ids(&|e| e.1 == "a" && e.2 == FailureKind::Permanent),
        ),
    ];
    for (filter, expected) in cases {
        assert_eq!(
            list_all(&mut client, filter.clone(), 7).await,
            expected,
            "{filter:?}"
        );
    }
    // Every entry once, oldest failure first (the broker's own dead letter, with no time of
    // failure, before them), whatever the page size.
    let mut all = vec!["crashed".to_owned()];
    all.extend(ids(&|_| true));
    for page_size in [1, 13, 1000] {
        assert_eq!(
            list_all(&mut client, DeadLetterFilter::default(), page_size).await,
            all
        );
    }

    // One entry in full: its record, history, metadata, payload.
    let entry = client
        .get_dead_letter(GetDeadLetterRequest {
            queue: "default".into(),
            job_id: "job-00002".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (entry.r#type.as_str(), entry.kind.as_str()),
        ("c", "timeout")
    );
    assert_eq!(entry.error, "timeout on purpose");
    assert_eq!(entry.attempts, 2);
    assert_eq!(entry.history.len(), 1);
    assert_eq!(
        entry.metadata.get("tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(&entry.payload[..], b"job-00002");
    assert_eq!(entry.payload_size, 9);

    // Refusals name what is wrong, with the documented codes.
    let list = |queue: &str, filter: DeadLetterFilter, token: &str| ListDeadLettersRequest {
        queue: queue.into(),
        filter: Some(filter),
        page_size: 5,
        page_token: token.into(),
        include_payload: true,
    };
    let other_query = client
        .list_dead_letters(list("default", DeadLetterFilter::default(), ""))
        .await
        .expect("list")
        .into_inner()
        .next_page_token;
    let refusals = [
        (
            list("nosuch", DeadLetterFilter::default(), ""),
            Code::FailedPrecondition,
            "not one of this producer's queues",
        ),
        (
            list("Bad Name", DeadLetterFilter::default(), ""),
            Code::InvalidArgument,
            "queue",
        ),
        (
            list(
                "default",
                DeadLetterFilter {
                    kinds: vec!["oops".into()],
                    ..Default::default()
                },
                "",
            ),
            Code::InvalidArgument,
            "filter.kinds",
        ),
        (
            list(
                "default",
                DeadLetterFilter {
                    job_types: vec!["b".into()],
                    ..Default::default()
                },
                &other_query,
            ),
            Code::InvalidArgument,
            "page_token",
        ),
        (
            list("default", DeadLetterFilter::default(), "garbage"),
            Code::InvalidArgument,
            "page_token",
        ),
    ];
    for (request, code, text) in refusals {
        let status = client
            .list_dead_letters(request)
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(text), "{status:?}");
    }
    let missing = client
        .get_dead_letter(GetDeadLetterRequest {
            queue: "default".into(),
            job_id: "nope".into(),
        })
        .await
        .expect_err("missing");
    assert_eq!(missing.code(), Code::NotFound);
    let unselected = client
        .replay_dead_letters(ReplayDeadLettersRequest {
            queue: "default".into(),
            ..Default::default()
        })
        .await
        .expect_err("nothing selected");
    assert_eq!(unselected.code(), Code::InvalidArgument);

    // Nothing changed, and the queue's order is intact.
    assert_eq!(
        probe.message_count(&topology.dead_queue("default")).await,
        61
    );
    assert_eq!(
        list_all(&mut client, DeadLetterFilter::default(), 61).await,
        all
    );
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn paging_through_five_thousand_entries_returns_each_once() {
    let topology = TestTopology::new("dlq-paging", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let probe = Probe::connect().await.expect("probe");
    let seeded = entries(5000);
    seed(&probe, &topology, &seeded).await;
    let mut client = admin(&producer).await;
    let listed = list_all(&mut client, DeadLetterFilter::default(), 1000).await;
    let expected: Vec<String> = seeded.into_iter().map(|e| e.0).collect();
    assert_eq!(listed.len(), 5000);
    assert_eq!(listed, expected);
    assert_eq!(
        probe.message_count(&topology.dead_queue("default")).await,
        5000
    );
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn replay_and_purge_move_exactly_the_selected_entries() {
    let topology = TestTopology::new("dlq-replay", &["default", "parking"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let probe = Probe::connect().await.expect("probe");
    let seeded = entries(30);
    seed(&probe, &topology, &seeded).await;
    let mut client = admin(&producer).await;
    let dead = topology.dead_queue("default");
    let parking = topology.work_queue("parking");

    // A dry run counts and samples, and changes nothing.
    let dry = replay(
        &mut client,
        ReplayDeadLettersRequest {
            queue: "default".into(),
            filter: Some(DeadLetterFilter {
                job_types: vec!["a".into()],
                ..Default::default()
            }),
            dry_run: true,
            target_queue: "parking".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(dry.done);
    assert_eq!((dry.scanned, dry.matched, dry.replayed), (30, 10, 0));
    assert_eq!(dry.sample.len(), 10);
    assert_eq!(probe.message_count(&dead).await, 30);

    // Replaying type "a" moves exactly those (decode ones are not jobs: skipped, left in place).
    let done = replay(
        &mut client,
        ReplayDeadLettersRequest {
            queue: "default".into(),
            filter: Some(DeadLetterFilter {
                job_types: vec!["a".into()],
                ..Default::default()
            }),
            target_queue: "parking".into(),
            ..Default::default()
        },
    )
    .await;
    let expected: HashSet<String> = seeded
        .iter()
        .filter(|e| e.1 == "a")
        .map(|e| e.0.clone())
        .collect();
    // The seeded entries are all readable jobs, whatever kind they failed as.
    assert_eq!(
        (done.matched, done.replayed, done.skipped, done.failed),
        (10, 10, 0, 0)
    );
    probe
        .wait_for_count(&parking, 10, Duration::from_secs(10))
        .await;
    assert_eq!(probe.message_count(&dead).await, 20);
    let mut replayed = HashSet::new();
    for message in probe.drain(&parking).await {
        let props = message.delivery.properties;
        let table = props.headers().clone().expect("headers");
        replayed.insert(props.message_id().clone().expect("id").to_string());
        // A fresh first attempt, its failure record gone, its history kept with the replay.
        assert_eq!(
            integer_header(&table, headers::ATTEMPT).expect("int"),
            Some(1)
        );
        assert!(text_header(&table, headers::ERROR_KIND).is_none());
        let history = failure::history(&table);
        assert_eq!(history.len(), 2, "{history:?}");
        assert_eq!(history[1]["kind"], "replayed");
        assert_eq!(history[1]["by"], "anonymous");
        assert!(JobProperties::decode(&props).is_ok());
    }
    assert_eq!(replayed, expected);
    let remaining: HashSet<String> = list_all(&mut client, DeadLetterFilter::default(), 100)
        .await
        .into_iter()
        .collect();
    assert!(remaining.is_disjoint(&expected));
    assert_eq!(remaining.len(), 20);

    // Purging by filter removes exactly the matching entries; a dry run counts them first.
    let purge = |dry_run| PurgeDeadLettersRequest {
        queue: "default".into(),
        filter: Some(DeadLetterFilter {
            kinds: vec!["timeout".into()],
            ..Default::default()
        }),
        all: false,
        dry_run,
    };
    let counted = client
        .purge_dead_letters(purge(true))
        .await
        .expect("dry purge")
        .into_inner();
    let timeouts = seeded
        .iter()
        .filter(|e| e.1 != "a" && e.2 == FailureKind::Timeout)
        .count() as u64;
    assert_eq!(counted.removed, timeouts);
    assert_eq!(probe.message_count(&dead).await, 20);
    let removed = client
        .purge_dead_letters(purge(false))
        .await
        .expect("purge")
        .into_inner();
    assert_eq!(removed.removed, timeouts);
    let left = list_all(&mut client, DeadLetterFilter::default(), 100).await;
    assert_eq!(left.len() as u64, 20 - timeouts);
    let everything = client
        .purge_dead_letters(PurgeDeadLettersRequest {
            queue: "default".into(),
            all: true,
            ..Default::default()
        })
        .await
        .expect("purge all")
        .into_inner();
    assert_eq!(everything.removed, 20 - timeouts);
    assert_eq!(probe.message_count(&dead).await, 0);

    let queues = client
        .get_queues(GetQueuesRequest {})
        .await
        .expect("queues")
        .into_inner();
    let names: Vec<&str> = queues.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(names, ["default", "parking"]);
    assert_eq!(queues.queues[0].dead, 0);
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_replayed_job_whose_cause_was_fixed_succeeds_on_its_first_new_attempt() {
    let topology = TestTopology::new("dlq-fixed", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    // No handler for "report" yet: the job is dead-lettered as no_handler.
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let consumer = RunningConsumer::start(
        consumer::config(&topology, "c"),
        recording_handlers("c", &seen_tx),
    )
    .await;
    let id = producer
        .submit(JobSpec {
            r#type: "report".into(),
            ..JobSpec::default()
        })
        .await;
    let probe = Probe::connect().await.expect("probe");
    probe
        .wait_for_count(&topology.dead_queue("default"), 1, Duration::from_secs(20))
        .await;
    consumer.stop().await.expect("clean stop");

    // The fix: a consumer that runs "report" (the recorded noop, routed by name).
    let mut config = consumer::config(&topology, "c2");
    config.routes = vec![jobpipe_consumer::routes::RouteConfig::new("report", "noop")];
    let consumer = RunningConsumer::start(config, recording_handlers("c2", &seen_tx)).await;
    let mut client = admin(&producer).await;
    let done = replay(
        &mut client,
        ReplayDeadLettersRequest {
            queue: "default".into(),
            filter: Some(DeadLetterFilter {
                job_ids: vec![id.clone()],
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(done.replayed, 1);
    let ran = next_seen(&mut seen, 1, Duration::from_secs(20)).await;
    assert_eq!((ran[0].job_id.as_str(), ran[0].attempt), (id.as_str(), 1));
    assert_eq!(
        probe.message_count(&topology.dead_queue("default")).await,
        0
    );
    consumer.stop().await.expect("clean stop");
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_replay_whose_jobs_fail_again_ends_after_one_pass() {
    let topology = TestTopology::new("dlq-again", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    // No handler for "report", before the replay and during it: every replayed job comes
    // straight back to the dead-letter queue the replay is reading.
    let (seen_tx, _seen) = mpsc::unbounded_channel();
    let consumer = RunningConsumer::start(
        consumer::config(&topology, "c"),
        recording_handlers("c", &seen_tx),
    )
    .await;
    const JOBS: u32 = 40;
    for _ in 0..JOBS {
        producer
            .submit(JobSpec {
                r#type: "report".into(),
                ..JobSpec::default()
            })
            .await;
    }
    let probe = Probe::connect().await.expect("probe");
    let dead_queue = topology.dead_queue("default");
    probe
        .wait_for_count(&dead_queue, JOBS, Duration::from_secs(20))
        .await;
    let mut client = admin(&producer).await;
    let done = replay(
        &mut client,
        ReplayDeadLettersRequest {
            queue: "default".into(),
            all: true,
            ..Default::default()
        },
    )
    .await;
    assert!(done.done, "{done:?}");
    assert_eq!(
        (done.scanned, done.replayed),
        (u64::from(JOBS), u64::from(JOBS))
    );
    // Each failed once more, with exactly one replay in its history.
    probe
        .wait_for_count(&dead_queue, JOBS, Duration::from_secs(20))
        .await;
    for entry in probe.drain(&dead_queue).await {
        let table = entry.properties.headers().clone().unwrap_or_default();
        let history = failure::history(&table);
        let replays = history.iter().filter(|h| h["kind"] == "replayed").count();
        assert_eq!(replays, 1, "{history:?}");
    }
    consumer.stop().await.expect("clean stop");
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_producer_killed_mid_replay_loses_nothing() {
    let topology = TestTopology::new("dlq-kill", &["default", "parking"]);
    let (grpc, admin_addr) = (free_port(), free_port());
    let mut env = service_env(&topology, admin_addr);
    env.push(("JOBPIPE__GRPC__LISTEN", grpc.to_string()));
    env.push(("JOBPIPE__TOPOLOGY__QUEUES", "default,parking".into()));
    let producer = Service::start("jobpipe-producer", &[], &env);
    wait_ready(admin_addr).await;
    let probe = Probe::connect().await.expect("probe");
    let seeded = entries(10_000);
    seed(&probe, &topology, &seeded).await;
    let mut client = AdminServiceClient::new(jobpipe_tests::grpc_channel(grpc).await);
    let mut stream = client
        .replay_dead_letters(ReplayDeadLettersRequest {
            queue: "default".into(),
            all: true,
            rate_limit: 2000,
            target_queue: "parking".into(),
            ..Default::default()
        })
        .await
        .expect("replay")
        .into_inner();
    within(Duration::from_secs(60), "a thousand replays", async {
        while let Some(progress) = stream.message().await.expect("progress") {
            if progress.replayed >= 1000 {
                return;
            }
        }
        panic!("the replay ended early");
    })
    .await;
    producer.signal("KILL");
    producer.exit(Duration::from_secs(10)).await;

    // Every entry is dead-lettered still, or replayed; some may be both (duplicates), none lost.
    let dead = topology.dead_queue("default");
    let parking = topology.work_queue("parking");
    let mut ids: HashMap<String, u32> = HashMap::new();
    for queue in [&dead, &parking] {
        for message in probe.drain(queue).await {
            let id = message
                .delivery
                .properties
                .message_id()
                .clone()
                .expect("id")
                .to_string();
            *ids.entry(id).or_default() += 1;
        }
    }
    let missing: Vec<&String> = seeded
        .iter()
        .map(|e| &e.0)
        .filter(|id| !ids.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let duplicates = ids.values().filter(|n| **n > 1).count();
    assert!(
        duplicates <= 300,
        "{duplicates} duplicates: at most the 256 replays awaiting confirms and the acks on the wire"
    );
    eprintln!(
        "killed mid-replay: {} entries, {duplicates} duplicated",
        ids.len()
    );
}

#[tokio::test]
async fn an_outside_client_lists_and_replays() {
    let topology = TestTopology::new("dlq-python", &["default", "parking"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let probe = Probe::connect().await.expect("probe");
    seed(&probe, &topology, &entries(6)).await;
    let target = producer.grpc_addr.to_string();
    let listed = run_script(
        "grpc_client.py",
        &[&target, "dlq-list", "--queue", "default", "--type", "b"],
    )
    .await;
    let listed: serde_json::Value = serde_json::from_str(listed.trim()).expect("json");
    assert_eq!(listed["code"], "OK", "{listed}");
    let ids: Vec<&str> = listed["job_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(ids, ["job-00001", "job-00004"]);
    let replayed = run_script(
        "grpc_client.py",
        &[
            &target,
            "dlq-replay",
            "--queue",
            "default",
            "--type",
            "b",
            "--to",
            "parking",
        ],
    )
    .await;
    let replayed: serde_json::Value = serde_json::from_str(replayed.trim()).expect("json");
    assert_eq!(replayed["code"], "OK", "{replayed}");
    assert_eq!(replayed["replayed"], 2);
    probe
        .wait_for_count(&topology.work_queue("parking"), 2, Duration::from_secs(10))
        .await;
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_cli_shows_a_dead_letter_replays_it_and_purges_the_rest() {
    let mut stack = jobpipe_tests::stack::Stack::start("dlq-cli").await;
    let id = stack
        .submit(JobSpec {
            r#type: "fail".into(),
            payload: b"permanent".to_vec().into(),
            ..JobSpec::default()
        })
        .await;
    next_seen(&mut stack.seen, 1, Duration::from_secs(20)).await;
    let probe = Probe::connect().await.expect("probe");
    let dead = stack.topology.dead_queue("default");
    probe
        .wait_for_count(&dead, 1, Duration::from_secs(20))
        .await;
    let addr = format!("http://{}", stack.producer.grpc_addr);
    let cli = |args: &'static [&'static str]| {
        let addr = addr.clone();
        async move {
            let mut all = vec!["--addr", addr.as_str()];
            all.extend_from_slice(args);
            jobpipe_tests::process::output("jobpipe", &all, &[]).await
        }
    };

    let (status, listed) = cli(&["dlq", "list", "-o", "json"]).await;
    assert!(status.success(), "{listed}");
    let listed: serde_json::Value = serde_json::from_str(listed.trim()).expect("json");
    assert_eq!(listed["entries"][0]["job_id"], id.as_str());
    assert_eq!(listed["entries"][0]["kind"], "permanent");
    let (status, table) = cli(&["dlq", "list"]).await;
    assert!(
        status.success() && table.contains(&id) && table.contains("fail: permanent failure"),
        "{table}"
    );

    let show: Vec<&str> = vec![
        "--addr",
        addr.as_str(),
        "dlq",
        "show",
        id.as_str(),
        "-o",
        "json",
    ];
    let (status, shown) = jobpipe_tests::process::output("jobpipe", &show, &[]).await;
    assert!(status.success(), "{shown}");
    let shown: serde_json::Value = serde_json::from_str(shown.trim()).expect("json");
    assert_eq!(shown["history"][0]["kind"], "permanent");
    assert_eq!(shown["history"][0]["consumer"], "c");

    // Replaying selects explicitly; the job runs again as attempt 1.
    let (status, text) = cli(&["dlq", "replay"]).await;
    assert_eq!(status.code(), Some(64), "{text}");
    let replay: Vec<&str> = vec![
        "--addr",
        addr.as_str(),
        "dlq",
        "replay",
        "--job-id",
        id.as_str(),
    ];
    let (status, text) = jobpipe_tests::process::output("jobpipe", &replay, &[]).await;
    assert!(status.success(), "{text}");
    assert!(text.contains("Replayed 1 dead letter(s)"), "{text}");
    let again = next_seen(&mut stack.seen, 1, Duration::from_secs(20)).await;
    assert_eq!(
        (again[0].job_id.as_str(), again[0].attempt),
        (id.as_str(), 1)
    );
    probe
        .wait_for_count(&dead, 1, Duration::from_secs(20))
        .await;

    // Purging asks first; a script says --yes.
    let (status, text) = cli(&["dlq", "purge", "--all"]).await;
    assert_eq!(status.code(), Some(64), "{text}");
    assert_eq!(probe.message_count(&dead).await, 1);
    let (status, text) = cli(&["dlq", "purge", "--all", "--yes", "-o", "json"]).await;
    assert!(status.success(), "{text}");
    assert!(text.contains("\"removed\":1"), "{text}");
    let (status, queues) = cli(&["queues", "-o", "json"]).await;
    assert!(status.success(), "{queues}");
    let queues: serde_json::Value = serde_json::from_str(queues.trim()).expect("json");
    assert_eq!(queues["queues"][0]["name"], "default");
    assert_eq!(queues["queues"][0]["dead"], 0);
    stack.stop().await;
}

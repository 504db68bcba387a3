//! The process path against the real broker: competing consumers, retries with growing backoff
//! through the delay ladder, dead letters with their failure record, scheduled jobs.

use jobpipe_proto::{
    failure, headers,
    job::{JobProperties, integer_header, text_header},
    names::{JobId, JobType},
    v1::{JobSpec, SubmitJobRequest},
};
use jobpipe_tests::{
    broker::{Probe, TestTopology},
    consumer::{self, RunningConsumer, next_seen, recording_handlers},
    eventually,
    producer::{self, RunningProducer},
    sample,
    stack::Stack,
};
use lapin::BasicProperties;
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant, SystemTime},
};
use tokio::sync::mpsc;

fn job(job_type: &str, payload: &str) -> JobSpec {
    JobSpec {
        r#type: job_type.into(),
        payload: payload.as_bytes().to_vec().into(),
        ..JobSpec::default()
    }
}

#[tokio::test]
async fn competing_consumers_share_the_work_and_ack_everything() {
    let topology = TestTopology::new("compete", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mut consumers = Vec::new();
    for name in ["a", "b"] {
        let mut config = consumer::config(&topology, name);
        config.consumer.prefetch = 4;
        consumers.push(RunningConsumer::start(config, recording_handlers(name, &seen_tx)).await);
    }
    let jobs = (0..300)
        .map(|i| job("sleep", &format!("{}", i % 3)))
        .collect();
    let submitted: HashSet<String> = producer.submit_all(jobs).await.into_iter().collect();

    let attempts = next_seen(&mut seen, 300, Duration::from_secs(60)).await;
    let processed: HashSet<String> = attempts.iter().map(|s| s.job_id.clone()).collect();
    assert_eq!(processed, submitted, "every job processed");
    let per_instance = |name: &str| attempts.iter().filter(|s| s.instance == name).count();
    assert!(
        per_instance("a") > 0 && per_instance("b") > 0,
        "both did work: a={}, b={}",
        per_instance("a"),
        per_instance("b")
    );

    let succeeded = || async {
        let metrics = futures::future::join_all(consumers.iter().map(|c| c.metrics())).await;
        metrics
            .iter()
            .filter_map(|m| {
                sample(
                    m,
                    r#"jobpipe_consumer_jobs_total{queue="default",type="sleep",outcome="succeeded",reason=""}"#,
                )
            })
            .sum::<f64>()
    };
    eventually(
        Duration::from_secs(10),
        "300 acks to be counted",
        || async { succeeded().await >= 300.0 },
    )
    .await;
    assert_eq!(succeeded().await, 300.0, "acked exactly once each");
    for consumer in consumers {
        consumer.stop().await.expect("clean stop");
    }
    let probe = Probe::connect().await.expect("probe");
    assert_eq!(
        probe.message_count(&topology.work_queue("default")).await,
        0,
        "nothing unacked came back"
    );
    assert_eq!(
        probe.message_count(&topology.dead_queue("default")).await,
        0
    );
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn transient_failures_retry_with_growing_backoff_until_success() {
    let mut stack = Stack::start("retry").await;

    let id = stack.submit(job("fail", "2")).await;
    let attempts = next_seen(&mut stack.seen, 3, Duration::from_secs(30)).await;
    assert!(attempts.iter().all(|a| a.job_id == id));
    assert_eq!(
        attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let first_gap = attempts[1].at - attempts[0].at;
    let second_gap = attempts[2].at - attempts[1].at;
    eprintln!("retry gaps: {first_gap:?}, {second_gap:?} (base 1 s, multiplier 2, no jitter)");
    assert!(
        first_gap >= Duration::from_secs(1),
        "first gap {first_gap:?}"
    );
    assert!(
        second_gap >= Duration::from_secs(2),
        "second gap {second_gap:?}"
    );
    assert!(second_gap > first_gap, "gaps grow");

    let series = |metrics: &str, outcome: &str, reason: &str| {
        sample(
            metrics,
            &format!(
                r#"jobpipe_consumer_jobs_total{{queue="default",type="fail",outcome="{outcome}",reason="{reason}"}}"#
            ),
        )
    };
    eventually(
        Duration::from_secs(5),
        "the success to be counted",
        || async { series(&stack.consumer.metrics().await, "succeeded", "") == Some(1.0) },
    )
    .await;
    let metrics = stack.consumer.metrics().await;
    assert_eq!(series(&metrics, "retried", "transient"), Some(2.0));
    let probe = Probe::connect().await.expect("probe");
    assert_eq!(
        probe
            .message_count(&stack.topology.dead_queue("default"))
            .await,
        0
    );
    stack.stop().await;
}

#[tokio::test]
async fn permanent_and_exhausted_failures_are_dead_lettered_with_their_history() {
    let mut stack = Stack::start("deadletter").await;

    let permanent = stack
        .submit(JobSpec {
            job_id: "perm".into(),
            ..job("fail", "permanent")
        })
        .await;
    let exhausted = stack
        .submit(JobSpec {
            job_id: "exh".into(),
            max_attempts: 2,
            metadata: HashMap::from([("tenant".into(), "acme".into())]),
            ..job("fail", "always")
        })
        .await;
    next_seen(&mut stack.seen, 3, Duration::from_secs(30)).await;

    let probe = Probe::connect().await.expect("probe");
    let dead_queue = stack.topology.dead_queue("default");
    probe
        .wait_for_count(&dead_queue, 2, Duration::from_secs(10))
        .await;
    let drained: Vec<BasicProperties> = probe
        .drain(&dead_queue)
        .await
        .into_iter()
        .map(|m| m.delivery.properties)
        .collect();
    let id_of = |props: &BasicProperties| props.message_id().clone().expect("id").to_string();
    let mut ids: Vec<String> = drained.iter().map(id_of).collect();
    ids.sort();
    let mut expected = vec![permanent.clone(), exhausted.clone()];
    expected.sort();
    assert_eq!(ids, expected, "exactly one dead letter per job");
    let mut dead: HashMap<String, BasicProperties> = drained
        .into_iter()
        .map(|props| (id_of(&props), props))
        .collect();

    let record = |props: &BasicProperties, name: &str| {
        text_header(props.headers().as_ref().expect("headers"), name).map(|s| s.into_owned())
    };
    let perm = dead.remove(&permanent).expect("the permanent failure");
    assert_eq!(
        record(&perm, headers::ERROR_KIND).as_deref(),
        Some("permanent")
    );
    assert_eq!(
        record(&perm, headers::ERROR).as_deref(),
        Some("fail: permanent failure, as asked")
    );
    assert_eq!(
        record(&perm, headers::ORIGIN_QUEUE).as_deref(),
        Some("default")
    );
    let history = failure::history(perm.headers().as_ref().expect("headers"));
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["kind"], "permanent");
    assert_eq!(history[0]["consumer"], "c");

    let exh = dead.remove(&exhausted).expect("the exhausted job");
    let table = exh.headers().clone().expect("headers");
    assert_eq!(
        record(&exh, headers::ERROR_KIND).as_deref(),
        Some("exhausted")
    );
    assert_eq!(
        record(&exh, headers::ERROR).as_deref(),
        Some("fail: attempt 2 failed, as always")
    );
    assert!(
        integer_header(&table, headers::FAILED_AT_MS)
            .expect("int")
            .is_some()
    );
    let history = failure::history(&table);
    let summary: Vec<(String, String)> = history
        .iter()
        .map(|e| (e["attempt"].clone(), e["kind"].clone()))
        .collect();
    assert_eq!(
        summary,
        [
            ("1".into(), "transient".into()),
            ("2".into(), "transient".into())
        ]
    );
    assert!(
        !table.contains_key(headers::X_DEATH),
        "broker bookkeeping stripped"
    );
    let job = JobProperties::decode(&exh).expect("still a readable job");
    assert_eq!(
        job.metadata.get("tenant").map(String::as_str),
        Some("acme"),
        "metadata kept"
    );
    stack.stop().await;
}

#[tokio::test]
async fn unknown_types_and_unreadable_messages_are_dead_lettered_after_one_delivery() {
    let mut stack = Stack::start("unreadable").await;

    let probe = Probe::connect().await.expect("probe");
    let queue = stack.topology.work_queue("default");
    let nobody = JobProperties {
        id: JobId::try_new("nobody-1").expect("id"),
        job_type: JobType::try_new("nobody.handles.this").expect("type"),
        content_type: "text/plain".into(),
        attempt: 1,
        max_attempts: 5,
        timeout: Duration::from_secs(5),
        submitted_at: SystemTime::now(),
        due_at: SystemTime::now(),
        metadata: BTreeMap::new(),
        trace: None,
        submitted_by: None,
    };
    probe.publish("", &queue, b"x", nobody.encode()).await;
    let garbled = BasicProperties::default().with_message_id("garbled-1".into());
    probe
        .publish("", &queue, b"\xff\x00 not a job", garbled)
        .await;

    let dead_queue = stack.topology.dead_queue("default");
    probe
        .wait_for_count(&dead_queue, 2, Duration::from_secs(10))
        .await;
    let mut kinds = HashMap::new();
    for message in probe.drain(&dead_queue).await {
        let props = &message.delivery.properties;
        let table = props.headers().clone().expect("headers");
        let id = props.message_id().clone().expect("id").to_string();
        let kind = text_header(&table, headers::ERROR_KIND)
            .expect("kind")
            .into_owned();
        assert_eq!(
            failure::history(&table).len(),
            1,
            "{id}: one delivery, one entry"
        );
        if id == "garbled-1" {
            assert_eq!(
                message.delivery.data, b"\xff\x00 not a job",
                "body kept as it was"
            );
        }
        kinds.insert(id, kind);
    }
    assert_eq!(
        kinds,
        HashMap::from([
            ("nobody-1".to_owned(), "no_handler".to_owned()),
            ("garbled-1".to_owned(), "decode".to_owned()),
        ])
    );

    // Each was delivered once and settled once, by the consumer's own count.
    let metrics = stack.consumer.metrics().await;
    let series = |reason: &str| {
        format!(
            r#"jobpipe_consumer_jobs_total{{queue="default",type="unknown",outcome="dead_lettered",reason="{reason}"}}"#
        )
    };
    assert_eq!(
        sample(&metrics, &series("no_handler")),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, &series("decode")), Some(1.0), "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            r#"jobpipe_consumer_redeliveries_total{queue="default"}"#
        ),
        Some(0.0),
        "never redelivered"
    );
    assert!(!metrics.contains(r#"outcome="returned""#), "{metrics}");

    let id = stack.submit(job("noop", "")).await;
    let after = next_seen(&mut stack.seen, 1, Duration::from_secs(10)).await;
    assert_eq!(after[0].job_id, id, "the consumer keeps running");
    stack.stop().await;
}

#[tokio::test]
async fn a_scheduled_job_runs_after_its_delay_and_not_before() {
    let mut stack = Stack::start("delay").await;

    let submitted = Instant::now();
    let spec = JobSpec {
        delay: Some(prost_types::Duration {
            seconds: 3,
            nanos: 0,
        }),
        ..job("noop", "")
    };
    let id = stack.submit(spec).await;
    let seen = next_seen(&mut stack.seen, 1, Duration::from_secs(15)).await;
    let waited = seen[0].at - submitted;
    eprintln!("scheduled 3 s ahead, ran after {waited:?}");
    assert_eq!(seen[0].job_id, id);
    assert!(
        waited >= Duration::from_secs(3),
        "ran early, after {waited:?}"
    );

    let unknown = stack
        .producer
        .client()
        .await
        .submit_job(SubmitJobRequest {
            job: Some(JobSpec {
                queue: "nosuchqueue".into(),
                delay: Some(prost_types::Duration {
                    seconds: 3,
                    nanos: 0,
                }),
                ..job("noop", "")
            }),
        })
        .await
        .expect_err("no such queue");
    assert_eq!(
        unknown.code(),
        tonic::Code::FailedPrecondition,
        "{unknown:?}"
    );
    stack.stop().await;
}

#[tokio::test]
async fn panics_and_timeouts_are_failures_with_their_own_kind() {
    let mut stack = Stack::start("panic").await;

    stack
        .submit(JobSpec {
            job_id: "panics".into(),
            max_attempts: 2,
            ..job("fail", "panic")
        })
        .await;
    stack
        .submit(JobSpec {
            job_id: "slow".into(),
            max_attempts: 1,
            timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..job("sleep", "30s")
        })
        .await;
    next_seen(&mut stack.seen, 3, Duration::from_secs(30)).await;
    let probe = Probe::connect().await.expect("probe");
    let dead_queue = stack.topology.dead_queue("default");
    probe
        .wait_for_count(&dead_queue, 2, Duration::from_secs(10))
        .await;
    let mut found = HashMap::new();
    for message in probe.drain(&dead_queue).await {
        let props = message.delivery.properties;
        let table = props.headers().clone().expect("headers");
        let kinds: Vec<String> = failure::history(&table)
            .iter()
            .map(|e| e["kind"].clone())
            .collect();
        found.insert(
            props.message_id().clone().expect("id").to_string(),
            (
                text_header(&table, headers::ERROR_KIND)
                    .expect("kind")
                    .into_owned(),
                kinds,
            ),
        );
    }
    assert_eq!(
        found["panics"],
        (
            "exhausted".to_owned(),
            vec!["panic".to_owned(), "panic".to_owned()]
        )
    );
    assert_eq!(
        found["slow"],
        ("timeout".to_owned(), vec!["timeout".to_owned()])
    );
    stack.stop().await;
}

#[tokio::test]
async fn a_delayed_job_whose_queue_vanished_is_caught_and_does_not_stall_its_level() {
    let topology = TestTopology::new("vanish", &["kept", "gone"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let mut config = consumer::config(&topology, "c");
    config.topology.queues.retain(|q| q.as_str() == "kept");
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let consumer = RunningConsumer::start(config, recording_handlers("c", &seen_tx)).await;

    let in_two_seconds = |queue: &str, id: &str| JobSpec {
        job_id: id.into(),
        queue: queue.into(),
        delay: Some(prost_types::Duration {
            seconds: 2,
            nanos: 0,
        }),
        ..job("noop", "")
    };
    // The orphan goes first: it reaches the head of the level queue before the other job.
    for spec in [
        in_two_seconds("gone", "orphan"),
        in_two_seconds("kept", "survivor"),
    ] {
        producer.submit(spec).await;
    }
    let probe = Probe::connect().await.expect("probe");
    probe.delete_queue(&topology.work_queue("gone")).await;

    let seen = next_seen(&mut seen, 1, Duration::from_secs(15)).await;
    assert_eq!(seen[0].job_id, "survivor", "the level kept flowing");
    let unroutable = topology.names().delay_unroutable();
    // The orphan is caught.
    probe
        .wait_for_count(&unroutable, 1, Duration::from_secs(10))
        .await;
    let orphan = probe.get(&unroutable).await.expect("orphan");
    assert_eq!(
        orphan
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("orphan")
    );
    consumer.stop().await.expect("clean stop");
    producer.stop().await.expect("clean stop");
}

//! The consumer when things go wrong: the broker link cut and restored, a memory alarm while a job
//! fails, SIGTERM mid-job, SIGKILL mid-job, and a job that crashes every consumer that takes it.

use jobpipe_proto::{headers, job::text_header, v1::JobSpec};
use jobpipe_runtime::amqp::AmqpUrl;
use jobpipe_tests::{
    broker::{Probe, TestTopology},
    consumer::{self, RunningConsumer, next_seen, recording_handlers},
    eventually, http_get,
    node::{Node, NodeOptions},
    process::{Service, free_port, service_env, wait_ready},
    producer::{self, RunningProducer},
    proxy::Proxy,
    sample,
};
use lapin::types::AMQPValue;
use std::{
    collections::HashSet,
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

fn job(job_type: &str, payload: &str) -> JobSpec {
    JobSpec {
        r#type: job_type.into(),
        payload: payload.as_bytes().to_vec().into(),
        ..JobSpec::default()
    }
}

/// A consumer binary on `topology`, its admin endpoint on `admin`.
fn consumer_process(
    topology: &TestTopology,
    admin: SocketAddr,
    extra: &[(&str, String)],
) -> Service {
    let mut env = service_env(topology, admin);
    env.push(("JOBPIPE__RETRY__JITTER", "none".to_owned()));
    env.extend(extra.iter().cloned());
    Service::start("jobpipe-consumer", &[], &env)
}

/// A consumer process on `topology` running `spec`, submitted through `producer`: the job's id,
/// the consumer's admin address, the process.
async fn consumer_running(
    topology: &TestTopology,
    producer: &RunningProducer,
    spec: JobSpec,
) -> (String, SocketAddr, Service) {
    let admin = free_port();
    let consumer = consumer_process(topology, admin, &[]);
    wait_ready(admin).await;
    let id = producer.submit(spec).await;
    wait_for_in_flight(admin, 1.0).await;
    (id, admin, consumer)
}

async fn wait_for_in_flight(admin: SocketAddr, jobs: f64) {
    eventually(
        Duration::from_secs(30),
        "a job to be running",
        || async move {
            let metrics = http_get(admin, "/metrics").await.1;
            sample(&metrics, "jobpipe_consumer_jobs_in_flight") == Some(jobs)
        },
    )
    .await;
}

#[tokio::test]
async fn consumption_resumes_after_the_broker_link_is_cut_and_nothing_is_lost() {
    let topology = TestTopology::new("cut", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let proxy = Proxy::start(jobpipe_tests::broker::broker_parts().0)
        .await
        .expect("proxy");
    let mut config = consumer::config(&topology, "c");
    config.amqp.url = proxy.amqp_url().parse().expect("url");
    config.consumer.prefetch = 4;
    config.consumer.concurrency = 4;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let consumer = RunningConsumer::start(config, recording_handlers("c", &seen_tx)).await;

    let ids: HashSet<String> = producer
        .submit_all((0..60).map(|_| job("sleep", "50ms")).collect())
        .await
        .into_iter()
        .collect();
    let mut processed: HashSet<String> = next_seen(&mut seen, 5, Duration::from_secs(20))
        .await
        .into_iter()
        .map(|s| s.job_id)
        .collect();
    proxy.cut();
    eventually(
        Duration::from_secs(20),
        "the consumer to notice",
        || async { http_get(consumer.admin_addr, "/readyz").await.0 == 503 },
    )
    .await;
    proxy.restore();
    consumer.wait_ready().await;

    let started = Instant::now();
    while processed != ids {
        let remaining = Duration::from_secs(60).saturating_sub(started.elapsed());
        let attempt = next_seen(&mut seen, 1, remaining).await;
        processed.insert(attempt[0].job_id.clone());
    }
    consumer.stop().await.expect("clean stop");
    let probe = Probe::connect().await.expect("probe");
    assert_eq!(
        probe.message_count(&topology.work_queue("default")).await,
        0,
        "nothing left"
    );
    assert_eq!(
        probe.message_count(&topology.dead_queue("default")).await,
        0
    );
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_failed_job_waits_out_a_memory_alarm_instead_of_spending_its_delivery_limit() {
    let node = Node::start(NodeOptions::new("alarm")).await;
    let url: AmqpUrl = node.amqp_url().parse().expect("url");
    let topology = TestTopology::new("alarm", &["default"]);
    let mut config = producer::config(&topology);
    config.amqp.url = url.clone();
    config.topology.delivery_limit = 2;
    let producer = RunningProducer::start(config).await;
    let id = producer.submit(job("fail", "1")).await;

    // The job is queued; now the broker blocks publishers, and a consumer takes the job.
    node.memory_alarm(true).await;
    let mut config = consumer::config(&topology, "c");
    config.amqp.url = url;
    config.topology.delivery_limit = 2;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let consumer = RunningConsumer::start(config, recording_handlers("c", &seen_tx)).await;
    let first = next_seen(&mut seen, 1, Duration::from_secs(20)).await;
    assert_eq!(
        (first[0].job_id.as_str(), first[0].attempt),
        (id.as_str(), 1)
    );
    // The broker blocks the consumer's connection at its retry publish and reads nothing more
    // from it: the consumer holds the delivery, longer than the confirm timeout (5 s here),
    // rather than return it (attempt 1 again, and the delivery limit of 2 spent) or publish the
    // retry twice.
    let again = tokio::time::timeout(Duration::from_secs(8), seen.recv()).await;
    assert!(
        again.is_err(),
        "attempted again during the alarm: {again:?}"
    );

    node.memory_alarm(false).await;
    let second = next_seen(&mut seen, 1, Duration::from_secs(20)).await;
    assert_eq!(
        (second[0].job_id.as_str(), second[0].attempt),
        (id.as_str(), 2)
    );
    let metrics = consumer.metrics().await;
    for (series, expected) in [
        (
            r#"jobpipe_consumer_jobs_total{queue="default",type="fail",outcome="retried",reason="transient"}"#,
            1.0,
        ),
        (
            r#"jobpipe_consumer_jobs_total{queue="default",type="fail",outcome="returned",reason="transient"}"#,
            0.0,
        ),
        (
            r#"jobpipe_consumer_redeliveries_total{queue="default"}"#,
            0.0,
        ),
    ] {
        let value = sample(&metrics, series).unwrap_or(0.0);
        assert_eq!(value, expected, "{series} in\n{metrics}");
    }
    let probe = Probe::connect_to(&node.amqp_url()).await.expect("probe");
    assert_eq!(
        probe.message_count(&topology.dead_queue("default")).await,
        0
    );
    consumer.stop().await.expect("clean stop");
    producer.stop().await.expect("clean stop");
    node.stop().await;
}

/// A consumer the broker stops serving (seen on RabbitMQ 3.10 after a quorum queue's leader
/// moved: still registered, never delivered to again) notices that its queue keeps jobs ready
/// while it receives none, and subscribes again on a new channel. Here its channel is suspended
/// inside the broker: the first job is delivered into it and never arrives, so with a prefetch
/// of 1 the broker keeps the second ready while the consumer, its hands empty, waits.
#[tokio::test]
async fn a_subscription_the_broker_stops_serving_is_replaced() {
    let node = Node::start(NodeOptions::new("held")).await;
    let url: AmqpUrl = node.amqp_url().parse().expect("url");
    let topology = TestTopology::new("held", &["default"]);
    let mut config = producer::config(&topology);
    config.amqp.url = url.clone();
    let producer = RunningProducer::start(config).await;
    let mut config = consumer::config(&topology, "c");
    config.amqp.url = url;
    config.consumer.prefetch = 1;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let consumer = RunningConsumer::start(config, recording_handlers("c", &seen_tx)).await;
    let first = producer.submit(job("noop", "")).await;
    assert_eq!(
        next_seen(&mut seen, 1, Duration::from_secs(20)).await[0].job_id,
        first
    );

    let suspended = node
        .rabbitmqctl(&[
            "eval",
            "[sys:suspend(P) || P <- rabbit_channel:list(), \
            proplists:get_value(consumer_count, rabbit_channel:info(P, [consumer_count])) > 0].",
        ])
        .await;
    assert_eq!(suspended.trim(), "[ok]", "one consuming channel");
    let _swallowed = producer.submit(job("noop", "")).await;
    let third = producer.submit(job("noop", "")).await;
    // Two checks 5 s apart find the third ready, the stuck consumer's cancel times out (10 s),
    // then a new subscription takes it.
    let again = next_seen(&mut seen, 1, Duration::from_secs(45)).await;
    assert_eq!(
        (again[0].job_id.as_str(), again[0].attempt),
        (third.as_str(), 1)
    );
    let held_back = sample(
        &consumer.metrics().await,
        r#"jobpipe_consumer_held_back_total{queue="default"}"#,
    );
    assert_eq!(held_back, Some(1.0));

    node.rabbitmqctl(&["eval", "[sys:resume(P) || P <- rabbit_channel:list()]."])
        .await;
    consumer.stop().await.expect("clean stop");
    producer.stop().await.expect("clean stop");
    node.stop().await;
}

#[tokio::test]
async fn sigterm_lets_the_running_job_finish_and_returns_the_prefetched_ones() {
    let topology = TestTopology::new("term", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let admin = free_port();
    let draining = consumer_process(
        &topology,
        admin,
        &[
            ("JOBPIPE__CONSUMER__CONCURRENCY", "1".into()),
            ("JOBPIPE__CONSUMER__PREFETCH", "10".into()),
            ("JOBPIPE__SHUTDOWN__GRACE_PERIOD", "10s".into()),
        ],
    );
    wait_ready(admin).await;
    let long = producer.submit(job("sleep", "3s")).await;
    wait_for_in_flight(admin, 1.0).await;
    let waiting: HashSet<String> = producer
        .submit_all((0..4).map(|_| job("noop", "")).collect())
        .await
        .into_iter()
        .collect();
    let probe = Probe::connect().await.expect("probe");
    // The rest are prefetched.
    probe
        .wait_for_count(&topology.work_queue("default"), 0, Duration::from_secs(10))
        .await;

    let signalled = Instant::now();
    draining.signal("TERM");
    let status = draining.exit(Duration::from_secs(15)).await;
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        took < Duration::from_secs(10),
        "exited within the grace period ({took:?})"
    );
    // The prefetched jobs are back (the running one was acked).
    probe
        .wait_for_count(&topology.work_queue("default"), 4, Duration::from_secs(10))
        .await;

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let other = RunningConsumer::start(
        consumer::config(&topology, "other"),
        recording_handlers("other", &seen_tx),
    )
    .await;
    let processed: HashSet<String> = next_seen(&mut seen, 4, Duration::from_secs(20))
        .await
        .into_iter()
        .map(|s| s.job_id)
        .collect();
    assert_eq!(
        processed, waiting,
        "another instance processed the returned jobs"
    );
    assert!(!processed.contains(&long));
    other.stop().await.expect("clean stop");
    assert_eq!(
        probe.message_count(&topology.work_queue("default")).await,
        0,
        "the long job is not redelivered"
    );
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn sigkill_mid_job_means_another_instance_gets_it() {
    let topology = TestTopology::new("kill", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let (id, _admin, doomed) = consumer_running(&topology, &producer, job("sleep", "2s")).await;
    doomed.signal("KILL");
    doomed.exit(Duration::from_secs(5)).await;

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let other = RunningConsumer::start(
        consumer::config(&topology, "other"),
        recording_handlers("other", &seen_tx),
    )
    .await;
    let seen = next_seen(&mut seen, 1, Duration::from_secs(20)).await;
    assert_eq!(seen[0].job_id, id);
    assert_eq!(seen[0].attempt, 1, "a redelivery, not a retry");
    eventually(
        Duration::from_secs(10),
        "the redelivery to be counted",
        || async {
            sample(
                &other.metrics().await,
                r#"jobpipe_consumer_redeliveries_total{queue="default"}"#,
            ) == Some(1.0)
        },
    )
    .await;
    other.stop().await.expect("clean stop");
    producer.stop().await.expect("clean stop");
}

/// The consumer acknowledges a run of finished jobs with one multiple-ack, which covers every
/// earlier delivery of the channel: a job still running before the run must stay unacknowledged
/// while the jobs after it are acknowledged, and come back when its consumer dies.
#[tokio::test]
async fn acks_of_later_jobs_never_cover_one_still_running() {
    let topology = TestTopology::new("ackrun", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let (slow, admin, doomed) = consumer_running(&topology, &producer, job("sleep", "60s")).await;
    let fast = producer
        .submit_all((0..200).map(|_| job("noop", "")).collect())
        .await
        .len() as f64;
    eventually(
        Duration::from_secs(30),
        "the later jobs to succeed",
        || async move {
            let metrics = http_get(admin, "/metrics").await.1;
            let noop = r#"jobpipe_consumer_jobs_total{queue="default",type="noop",outcome="succeeded",reason=""}"#;
            sample(&metrics, noop) == Some(fast)
        },
    )
    .await;
    doomed.signal("KILL");
    doomed.exit(Duration::from_secs(5)).await;

    // Only the running job returns to the queue: every later one was acknowledged, none covered it.
    let probe = Probe::connect().await.expect("probe");
    let queue = topology.work_queue("default");
    probe
        .wait_for_count(&queue, 1, Duration::from_secs(10))
        .await;
    let returned: Vec<String> = (probe.drain(&queue).await.iter())
        .filter_map(|message| {
            message
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
        })
        .collect();
    assert_eq!(returned, [slow]);
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_job_that_crashes_its_consumer_ends_in_the_dead_letter_queue() {
    let topology = TestTopology::new("crash", &["default"]);
    let mut config = producer::config(&topology);
    config.topology.delivery_limit = 2;
    let producer = RunningProducer::start(config).await;
    producer
        .submit(JobSpec {
            job_id: "crasher".into(),
            ..job("crash", "")
        })
        .await;

    let probe = Probe::connect().await.expect("probe");
    let dead_queue = topology.dead_queue("default");
    let mut crashes = 0;
    while probe.message_count(&dead_queue).await == 0 {
        assert!(
            crashes < 6,
            "still not dead-lettered after {crashes} crashes"
        );
        let consumer = consumer_process(
            &topology,
            free_port(),
            &[
                ("JOBPIPE__HANDLERS__BUILTIN", "crash".into()),
                ("JOBPIPE__TOPOLOGY__DELIVERY_LIMIT", "2".into()),
            ],
        );
        let status = consumer.exit(Duration::from_secs(30)).await;
        assert!(
            !status.success(),
            "the handler aborts the process: {status:?}"
        );
        crashes += 1;
        // The broker needs a moment to return the dead consumer's delivery and dead-letter it.
        eventually(
            Duration::from_secs(5),
            "the delivery to be returned",
            || async {
                probe.message_count(&topology.work_queue("default")).await == 1
                    || probe.message_count(&dead_queue).await == 1
            },
        )
        .await;
    }
    assert_eq!(crashes, 3, "a delivery limit of 2 allows three deliveries");
    let message = probe.get(&dead_queue).await.expect("dead letter");
    let table = message
        .delivery
        .properties
        .headers()
        .clone()
        .expect("headers");
    let Some(AMQPValue::FieldArray(deaths)) = table.inner().get(headers::X_DEATH) else {
        panic!("no x-death: {table:?}");
    };
    let reasons: Vec<String> = deaths
        .as_slice()
        .iter()
        .filter_map(|death| match death {
            AMQPValue::FieldTable(death) => text_header(death, "reason").map(|r| r.into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, ["delivery_limit"]);
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_second_interrupt_forces_the_exit_without_waiting_for_running_jobs() {
    let topology = TestTopology::new("force", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let admin = free_port();
    let consumer = consumer_process(
        &topology,
        admin,
        &[("JOBPIPE__SHUTDOWN__GRACE_PERIOD", "60s".into())],
    );
    wait_ready(admin).await;
    producer.submit(job("sleep", "60s")).await;
    wait_for_in_flight(admin, 1.0).await;

    consumer.signal("INT");
    // Draining has begun (readiness off) while the 60 s job keeps running.
    eventually(Duration::from_secs(10), "the drain to start", || async {
        http_get(admin, "/readyz").await.0 == 503
    })
    .await;
    let forced = Instant::now();
    consumer.signal("INT");
    let status = consumer.exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(forced.elapsed() < Duration::from_secs(5), "forced at once");
    // The unfinished job was never acked: the broker has it back.
    let probe = Probe::connect().await.expect("probe");
    probe
        .wait_for_count(&topology.work_queue("default"), 1, Duration::from_secs(10))
        .await;
    producer.stop().await.expect("clean stop");
}

//! The desired-replicas signal (`jobpipe_consumer_desired_replicas`) against a real backlog
//! through a real consumer: zero when idle, one (and no more) for a job waiting in the delay
//! ladder, never zero while a job runs, rising with the backlog, and back to zero only once
//! nothing is ready, running or delayed.

use jobpipe_proto::v1::JobSpec;
use jobpipe_tests::{
    broker::{Probe, TestTopology},
    eventually, http_get,
    process::{Service, free_port, service_env, wait_ready},
    producer::{self, RunningProducer},
    sample,
};
use lapin::options::QueuePurgeOptions;
use std::{net::SocketAddr, time::Duration};

const DESIRED: &str = "jobpipe_consumer_desired_replicas";
const IN_FLIGHT: &str = "jobpipe_consumer_jobs_in_flight";

fn sleep(payload: &str) -> JobSpec {
    JobSpec {
        r#type: "sleep".into(),
        payload: payload.as_bytes().to_vec().into(),
        ..JobSpec::default()
    }
}

/// The signal and the jobs in flight, from one scrape.
async fn read(admin: SocketAddr) -> (f64, f64) {
    let metrics = http_get(admin, "/metrics").await.1;
    let value = |name| sample(&metrics, name).unwrap_or_else(|| panic!("{name} in {metrics}"));
    (value(DESIRED), value(IN_FLIGHT))
}

async fn wait_for_desired(admin: SocketAddr, what: &str, wanted: impl Fn(f64) -> bool + Copy) {
    eventually(Duration::from_secs(30), what, || async move {
        wanted(read(admin).await.0)
    })
    .await;
}

#[tokio::test]
async fn the_desired_replicas_follow_the_work_and_ignore_the_delay_ladder() {
    let topology = TestTopology::new("scaling", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let admin = free_port();
    let mut env = service_env(&topology, admin);
    env.extend([
        ("JOBPIPE__CONSUMER__CONCURRENCY", "4".to_owned()),
        ("JOBPIPE__CONSUMER__PREFETCH", "4".to_owned()),
        ("JOBPIPE__METRICS__QUEUE_POLL_INTERVAL", "200ms".to_owned()),
        ("JOBPIPE__SCALING__TARGET_DRAIN_TIME", "1s".to_owned()),
    ]);
    let consumer = Service::start("jobpipe-consumer", &[], &env);
    wait_ready(admin).await;
    let probe = Probe::connect().await.expect("probe");
    wait_for_desired(admin, "no replica wanted for no work", |d| d == 0.0).await;

    // A job in the delay ladder: one replica, to run it when due, and no more.
    producer
        .submit(JobSpec {
            r#type: "noop".into(),
            delay: Some(prost_types::Duration {
                seconds: 3,
                nanos: 0,
            }),
            ..JobSpec::default()
        })
        .await;
    wait_for_desired(admin, "one replica for a delayed job", |d| d == 1.0).await;
    let ladder: Vec<String> = (0..jobpipe_proto::delay::LEVELS)
        .map(|level| topology.names().delay_level(level))
        .collect();
    let delayed = || async {
        let mut total = 0;
        for queue in &ladder {
            total += probe.message_count(queue).await;
        }
        total
    };
    while delayed().await > 0 {
        assert!(read(admin).await.0 <= 1.0, "a delayed job adds no replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_desired(admin, "zero once the delayed job ran", |d| d == 0.0).await;

    // Running jobs alone: the replica running them is not spare.
    producer
        .submit_all((0..4).map(|_| sleep("2s")).collect())
        .await;
    eventually(Duration::from_secs(30), "four jobs running", || async {
        read(admin).await.1 == 4.0
    })
    .await;
    wait_for_desired(admin, "the busy replica counted", |d| d >= 1.0).await;

    // A backlog behind them (measured once they finish: 4 slots, 2 s each), then a larger one.
    producer
        .submit_all((0..40).map(|_| sleep("2s")).collect())
        .await;
    wait_for_desired(admin, "more replicas for 40 waiting", |d| d >= 2.0).await;
    let (some, _) = read(admin).await;
    producer
        .submit_all((0..400).map(|_| sleep("2s")).collect())
        .await;
    wait_for_desired(admin, "more replicas for 440 waiting", move |d| d > some).await;

    // The backlog taken away: the signal falls to zero only once nothing is ready or running.
    let work_queue = topology.work_queue("default");
    probe
        .channel
        .queue_purge(work_queue.as_str().into(), QueuePurgeOptions::default())
        .await
        .expect("purge");
    eventually(
        Duration::from_secs(30),
        "the signal back to zero",
        || async {
            let (desired, in_flight) = read(admin).await;
            if desired == 0.0 {
                assert_eq!(in_flight, 0.0, "zero wanted while a job runs");
                assert_eq!(probe.message_count(&work_queue).await, 0);
            }
            desired == 0.0
        },
    )
    .await;
    consumer.signal("TERM");
    assert!(consumer.exit(Duration::from_secs(15)).await.success());
    producer.stop().await.expect("clean stop");
}

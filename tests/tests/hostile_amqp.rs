//! Messages no jobpipe producer would write, published by a raw AMQP client
//! (`tests/tools/amqp_raw.py`) into a work queue that two consumer processes read: headers nested
//! as deep as a frame allows, a header set larger than 64 KiB, invalid UTF-8 where the AMQP
//! library refuses it, a message without jobpipe's headers. No consumer dies; what the library
//! can read is dead-lettered after one delivery with a `decode` record; what it cannot is
//! dead-lettered by the broker after a bounded number of deliveries, each logged once, without
//! charging the jobs in flight beside it more than once; a canary job passes after each.

use jobpipe_proto::v1::JobSpec;
use jobpipe_tests::{
    broker::{Probe, TestTopology, broker_parts},
    eventually, http_get,
    process::{Service, free_port, service_env, wait_ready},
    producer::{self, RunningProducer},
    sample,
    tools::run_script,
};
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Two consumer processes and what they logged.
struct Consumers {
    processes: Vec<(Service, SocketAddr, u32)>,
    /// Lines logged, all consumers together.
    lines: Arc<AtomicUsize>,
}

impl Consumers {
    async fn start(topology: &TestTopology) -> Self {
        let lines = Arc::new(AtomicUsize::new(0));
        let mut processes = Vec::new();
        for slot in 0..2 {
            let admin = free_port();
            let mut env = service_env(topology, admin);
            env.extend([
                ("JOBPIPE__CONSUMER__INSTANCE", format!("hostile-{slot}")),
                ("JOBPIPE__CONSUMER__PREFETCH", "8".to_owned()),
                ("JOBPIPE__CONSUMER__CONCURRENCY", "8".to_owned()),
            ]);
            let (service, stdout) = Service::start_piped("jobpipe-consumer", &[], &env);
            let counter = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(_)) = reader.next_line().await {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
            let pid = service.pid();
            processes.push((service, admin, pid));
        }
        for (_, admin, _) in &processes {
            wait_ready(*admin).await;
        }
        Self { processes, lines }
    }

    /// The sum of `series` over both consumers' metrics.
    async fn total(&self, series: &str) -> f64 {
        let mut total = 0.0;
        for (_, admin, _) in &self.processes {
            total += sample(&http_get(*admin, "/metrics").await.1, series).unwrap_or(0.0);
        }
        total
    }

    /// Both processes still run, with the pids they started with.
    fn assert_alive(&self) {
        for (_, _, pid) in &self.processes {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            assert!(
                !state.is_empty() && !state.contains(") Z"),
                "consumer {pid} died"
            );
        }
    }
}

/// Publishes a hostile message to the work queue `default` through the jobs exchange.
async fn publish(topology: &TestTopology, case: &str, size: usize) {
    let (addr, user, password, vhost) = broker_parts();
    let vhost = if vhost == "%2f" {
        "/".to_owned()
    } else {
        vhost
    };
    let exchange = topology.names().jobs_exchange();
    let size = size.to_string();
    let out = run_script(
        "amqp_raw.py",
        &[
            &addr.ip().to_string(),
            &addr.port().to_string(),
            &user,
            &password,
            &vhost,
            &exchange,
            "default",
            case,
            &size,
        ],
    )
    .await;
    assert_eq!(out.trim(), "ack", "the broker took {case}");
}

const SUCCEEDED: &str =
    r#"jobpipe_consumer_jobs_total{queue="default",type="noop",outcome="succeeded",reason=""}"#;
const DECODE: &str = r#"jobpipe_consumer_jobs_total{queue="default",type="unknown",outcome="dead_lettered",reason="decode"}"#;

/// Submits a canary and waits until a consumer ran it.
async fn canary(producer: &RunningProducer, consumers: &Consumers, passed: &mut f64) {
    producer
        .submit(JobSpec {
            r#type: "noop".into(),
            ..JobSpec::default()
        })
        .await;
    *passed += 1.0;
    let expected = *passed;
    eventually(
        Duration::from_secs(30),
        "the canary to pass",
        || async move { consumers.total(SUCCEEDED).await >= expected },
    )
    .await;
}

#[tokio::test]
async fn poison_messages_never_crash_or_flood_a_consumer_and_end_in_the_dead_letter_queue() {
    let topology = TestTopology::new("poison", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let consumers = Consumers::start(&topology).await;
    let probe = Probe::connect().await.expect("probe");
    let dead = topology.dead_queue("default");
    let mut passed = 0.0;
    canary(&producer, &consumers, &mut passed).await;

    // What the AMQP library reads: dead-lettered by jobpipe after one delivery, kind `decode`.
    let readable = [
        ("nested-array", 26_000),
        ("nested-table", 18_500),
        ("large-headers", 120_000),
        ("not-a-job", 0),
    ];
    for (index, (case, size)) in readable.iter().enumerate() {
        publish(&topology, case, *size).await;
        let expected = f64::from(u32::try_from(index + 1).expect("small"));
        let decoded = &consumers;
        eventually(Duration::from_secs(60), case, || async move {
            decoded.total(DECODE).await == expected
        })
        .await;
        canary(&producer, &consumers, &mut passed).await;
        consumers.assert_alive();
    }
    let redelivered = consumers
        .total(r#"jobpipe_consumer_redeliveries_total{queue="default"}"#)
        .await;
    assert_eq!(redelivered, 0.0, "each was delivered once");

    // What it refuses (invalid UTF-8 in a short string): each drop of the connection is logged
    // once, and the broker's delivery limit (5) dead-letters the message after six deliveries.
    let lines_before = consumers.lines.load(Ordering::Relaxed);
    for (index, case) in ["utf8-message-id", "utf8-content-type", "utf8-header-name"]
        .iter()
        .enumerate()
    {
        publish(&topology, case, 0).await;
        let expected = u32::try_from(readable.len() + index + 1).expect("small");
        probe
            .wait_for_count(&dead, expected, Duration::from_secs(60))
            .await;
        canary(&producer, &consumers, &mut passed).await;
        consumers.assert_alive();
    }
    let logged = consumers.lines.load(Ordering::Relaxed) - lines_before;
    assert!(
        logged < 3 * 6 * 12,
        "{logged} lines for three unreadable messages: a flood"
    );
    producer.stop().await.expect("clean stop");
    for (consumer, _, _) in consumers.processes {
        consumer.signal("TERM");
        consumer.exit(Duration::from_secs(30)).await;
    }
}

#[tokio::test]
async fn an_unreadable_message_costs_the_jobs_in_flight_beside_it_at_most_one_delivery() {
    let topology = TestTopology::new("collateral", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let consumers = Consumers::start(&topology).await;
    // Twenty jobs keep both consumers' prefetch busy while the poison arrives, and after.
    let jobs: Vec<JobSpec> = (0..20)
        .map(|_| JobSpec {
            r#type: "sleep".into(),
            payload: b"300ms".to_vec().into(),
            ..JobSpec::default()
        })
        .collect();
    producer.submit_all(jobs).await;
    publish(&topology, "utf8-message-id", 0).await;
    let probe = Probe::connect().await.expect("probe");
    probe
        .wait_for_count(&topology.dead_queue("default"), 1, Duration::from_secs(60))
        .await;
    let series = r#"jobpipe_consumer_jobs_total{queue="default",type="sleep",outcome="succeeded",reason=""}"#;
    eventually(Duration::from_secs(60), "every job to succeed", || async {
        consumers.total(series).await == 20.0
    })
    .await;
    // (The dead letter itself is as unreadable to this test's AMQP library as to the consumers'.)
    // Each consumer dropped its connection once with its full prefetch in flight, then took one
    // delivery at a time: no job was handed out more than three times (two drops).
    let redelivered = consumers
        .total(r#"jobpipe_consumer_redeliveries_total{queue="default"}"#)
        .await;
    assert!(redelivered <= 2.0 * 8.0, "{redelivered} redeliveries");
    consumers.assert_alive();
    producer.stop().await.expect("clean stop");
    for (consumer, _, _) in consumers.processes {
        consumer.signal("TERM");
        consumer.exit(Duration::from_secs(30)).await;
    }
}

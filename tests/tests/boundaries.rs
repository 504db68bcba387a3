//! One rule, both sides: each limit on a job's properties walked at its boundary through submit
//! and consume. What the producer accepts, a consumer runs (never dead-letters as unreadable);
//! what it refuses gets INVALID_ARGUMENT naming the field.

use jobpipe_proto::v1::JobSpec;
use jobpipe_tests::{
    broker::TestTopology,
    consumer::{self, RunningConsumer, next_seen, recording_handlers},
    producer::{self, RunningProducer},
};
use prost_types::Duration as WireDuration;
use std::{collections::HashMap, time::Duration};
use tokio::sync::mpsc;
use tonic::Code;

fn wire(seconds: i64, nanos: i32) -> Option<WireDuration> {
    Some(WireDuration { seconds, nanos })
}

fn noop() -> JobSpec {
    JobSpec {
        r#type: "noop".into(),
        ..JobSpec::default()
    }
}

#[tokio::test]
async fn every_limit_the_producer_accepts_at_its_boundary_a_consumer_runs() {
    let topology = TestTopology::new("bounds", &["default"]);
    // The wire's own maxima: 100 attempts, 24-hour attempts.
    let mut config = producer::config(&topology);
    config.jobs.max_attempts_cap = 100;
    config.jobs.max_timeout = Duration::from_secs(24 * 3600);
    let producer = RunningProducer::start(config).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let consumer = RunningConsumer::start(
        consumer::config(&topology, "c"),
        recording_handlers("c", &seen_tx),
    )
    .await;

    let day = 24 * 3600;
    let full_metadata: HashMap<String, String> = (0..32)
        .map(|i| (format!("{i:02}{}", "k".repeat(62)), "v".repeat(1024)))
        .collect();
    let too_much_metadata: HashMap<String, String> =
        (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
    let cases: Vec<(&str, JobSpec, Option<&str>)> = vec![
        (
            "timeout 1 ms",
            JobSpec {
                timeout: wire(0, 1_000_000),
                ..noop()
            },
            None,
        ),
        (
            "timeout 1 ms and 1 ns",
            JobSpec {
                timeout: wire(0, 1_000_001),
                ..noop()
            },
            None,
        ),
        (
            "timeout 24 h",
            JobSpec {
                timeout: wire(day, 0),
                ..noop()
            },
            None,
        ),
        (
            "timeout under 1 ms",
            JobSpec {
                timeout: wire(0, 999_999),
                ..noop()
            },
            Some("timeout"),
        ),
        (
            "timeout 0",
            JobSpec {
                timeout: wire(0, 0),
                ..noop()
            },
            Some("timeout"),
        ),
        (
            "timeout 24 h and 1 ms",
            JobSpec {
                timeout: wire(day, 1_000_000),
                ..noop()
            },
            Some("timeout"),
        ),
        (
            "timeout of mixed signs",
            JobSpec {
                timeout: wire(5, -1),
                ..noop()
            },
            Some("timeout"),
        ),
        (
            "timeout nanos out of range",
            JobSpec {
                timeout: wire(0, 1_000_000_000),
                ..noop()
            },
            Some("timeout"),
        ),
        (
            "1 attempt",
            JobSpec {
                max_attempts: 1,
                ..noop()
            },
            None,
        ),
        (
            "100 attempts",
            JobSpec {
                max_attempts: 100,
                ..noop()
            },
            None,
        ),
        (
            "101 attempts",
            JobSpec {
                max_attempts: 101,
                ..noop()
            },
            Some("max_attempts"),
        ),
        (
            "delay 1 ns (1 s)",
            JobSpec {
                delay: wire(0, 1),
                ..noop()
            },
            None,
        ),
        (
            "delay 2^28 s",
            JobSpec {
                delay: wire(1 << 28, 0),
                ..noop()
            },
            Some("delay"),
        ),
        (
            "delay of mixed signs",
            JobSpec {
                delay: wire(-1, 5),
                ..noop()
            },
            Some("delay"),
        ),
        (
            "128-character content type",
            JobSpec {
                content_type: "t".repeat(128),
                ..noop()
            },
            None,
        ),
        (
            "129-character content type",
            JobSpec {
                content_type: "t".repeat(129),
                ..noop()
            },
            Some("content_type"),
        ),
        (
            "32 metadata entries, each at its limits",
            JobSpec {
                metadata: full_metadata,
                ..noop()
            },
            None,
        ),
        (
            "33 metadata entries",
            JobSpec {
                metadata: too_much_metadata,
                ..noop()
            },
            Some("metadata"),
        ),
    ];
    let mut client = producer.client().await;
    let mut accepted = HashMap::new();
    for (case, spec, refused) in cases {
        let answer = client
            .submit_job(jobpipe_proto::v1::SubmitJobRequest { job: Some(spec) })
            .await;
        match (answer, refused) {
            (Ok(response), None) => {
                accepted.insert(response.into_inner().job_id, case);
            }
            (Err(status), Some(field)) => {
                assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
                assert!(
                    status.message().starts_with(&format!("job.{field}:")),
                    "{case}: {}",
                    status.message()
                );
            }
            (answer, refused) => panic!("{case}: {answer:?}, expected refusal of {refused:?}"),
        }
    }
    let ran = next_seen(&mut seen, accepted.len(), Duration::from_secs(30)).await;
    for attempt in &ran {
        let case = accepted
            .remove(&attempt.job_id)
            .unwrap_or_else(|| panic!("{} ran twice or was not accepted", attempt.job_id));
        assert_eq!(attempt.attempt, 1, "{case} ran on its first attempt");
    }
    assert!(accepted.is_empty(), "never ran: {accepted:?}");
    let metrics = consumer.metrics().await;
    assert!(
        !metrics.contains("reason=\"decode\""),
        "nothing accepted was unreadable:\n{metrics}"
    );
    consumer.stop().await.expect("clean stop");
    producer.stop().await.expect("clean stop");
}

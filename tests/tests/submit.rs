//! The submit path against the real broker: what a confirmed job looks like in its queue, batches,
//! and every documented refusal.

use jobpipe_proto::{
    headers,
    job::{JobProperties, integer_header},
    v1::{JobSpec, SubmitJobRequest, SubmitJobsRequest},
};
use jobpipe_tests::{
    broker::{Probe, TestTopology},
    producer::{self, RunningProducer},
};
use std::collections::HashMap;
use tonic::Code;

fn job(job_type: &str, payload: &[u8]) -> JobSpec {
    JobSpec {
        r#type: job_type.into(),
        payload: payload.to_vec().into(),
        ..JobSpec::default()
    }
}

fn single(spec: JobSpec) -> SubmitJobRequest {
    SubmitJobRequest { job: Some(spec) }
}

#[tokio::test]
async fn a_confirmed_job_waits_in_its_queue_with_the_documented_properties() {
    let topology = TestTopology::new("props", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let payload: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let spec = JobSpec {
        job_id: "order-42".into(),
        content_type: "application/x-test".into(),
        max_attempts: 3,
        timeout: Some(prost_types::Duration {
            seconds: 7,
            nanos: 0,
        }),
        metadata: HashMap::from([("tenant".into(), "acme".into())]),
        ..job("email.send", &payload)
    };
    let response = producer
        .client()
        .await
        .submit_job(single(spec))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(response.job_id, "order-42");

    let probe = Probe::connect().await.expect("probe");
    let message = probe
        .get(&topology.work_queue("default"))
        .await
        .expect("the job is in the queue");
    assert_eq!(
        message.delivery.data, payload,
        "body is the payload, byte for byte"
    );
    let props = &message.delivery.properties;
    assert_eq!(
        props.message_id().as_ref().map(|s| s.as_str()),
        Some("order-42")
    );
    assert_eq!(
        props.kind().as_ref().map(|s| s.as_str()),
        Some("email.send")
    );
    assert_eq!(
        props.content_type().as_ref().map(|s| s.as_str()),
        Some("application/x-test")
    );
    assert_eq!(*props.delivery_mode(), Some(2), "persistent");
    assert!(props.timestamp().is_some());
    let table = props.headers().as_ref().expect("headers");
    assert_eq!(integer_header(table, headers::ATTEMPT), Ok(Some(1)));
    assert_eq!(integer_header(table, headers::MAX_ATTEMPTS), Ok(Some(3)));
    assert_eq!(integer_header(table, headers::TIMEOUT_MS), Ok(Some(7000)));
    let decoded = JobProperties::decode(props).expect("decodes");
    assert_eq!(
        decoded.metadata.get("tenant").map(String::as_str),
        Some("acme")
    );
    assert_eq!(
        probe.message_count(&topology.work_queue("default")).await,
        0
    );
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_batch_of_a_thousand_is_queued_whole() {
    let topology = TestTopology::new("batch", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let jobs: Vec<JobSpec> = (0..1000)
        .map(|i| job("noop", format!("job {i}").as_bytes()))
        .collect();
    let started = std::time::Instant::now();
    let results = producer
        .client()
        .await
        .submit_jobs(SubmitJobsRequest { jobs })
        .await
        .expect("submit batch")
        .into_inner()
        .results;
    eprintln!("SubmitJobs of 1000 confirmed in {:?}", started.elapsed());
    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(|r| r.code == 0), "all confirmed");
    let ids: std::collections::HashSet<_> = results.iter().map(|r| r.job_id.clone()).collect();
    assert_eq!(ids.len(), 1000, "distinct generated ids");

    let probe = Probe::connect().await.expect("probe");
    let queued = probe.drain(&topology.work_queue("default")).await;
    let queued_ids: std::collections::HashSet<_> = queued
        .iter()
        .map(|m| {
            m.delivery
                .properties
                .message_id()
                .clone()
                .expect("id")
                .to_string()
        })
        .collect();
    assert_eq!(queued.len(), 1000, "none extra");
    assert_eq!(queued_ids, ids, "none missing");
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn bad_requests_get_their_documented_code_and_nothing_is_published() {
    let topology = TestTopology::new("bad", &["default"]);
    let mut config = producer::config(&topology);
    config.limits.max_payload_bytes = 1024;
    config.limits.max_batch_jobs = 5;
    let producer = RunningProducer::start(config).await;
    let mut client = producer.client().await;
    let oversized_meta = HashMap::from([("k".to_owned(), "v".repeat(1025))]);
    let cases: Vec<(&str, SubmitJobRequest, Code, &str)> = vec![
        (
            "no job",
            SubmitJobRequest { job: None },
            Code::InvalidArgument,
            "job",
        ),
        (
            "empty type",
            single(job("", b"")),
            Code::InvalidArgument,
            "job.type",
        ),
        (
            "type charset",
            single(job("a b", b"")),
            Code::InvalidArgument,
            "job.type",
        ),
        (
            "queue charset",
            single(JobSpec {
                queue: "A.B".into(),
                ..job("t", b"")
            }),
            Code::InvalidArgument,
            "job.queue",
        ),
        (
            "job id charset",
            single(JobSpec {
                job_id: "a/b".into(),
                ..job("t", b"")
            }),
            Code::InvalidArgument,
            "job.job_id",
        ),
        (
            "oversized payload",
            single(job("t", &[0; 1025])),
            Code::ResourceExhausted,
            "job.payload",
        ),
        (
            "oversized metadata",
            single(JobSpec {
                metadata: oversized_meta,
                ..job("t", b"")
            }),
            Code::InvalidArgument,
            "job.metadata",
        ),
        (
            "reserved metadata key",
            single(JobSpec {
                metadata: HashMap::from([("x-death".into(), "v".into())]),
                ..job("t", b"")
            }),
            Code::InvalidArgument,
            "job.metadata",
        ),
        (
            "attempts over the cap",
            single(JobSpec {
                max_attempts: 1000,
                ..job("t", b"")
            }),
            Code::InvalidArgument,
            "job.max_attempts",
        ),
        (
            "unknown queue",
            single(JobSpec {
                queue: "nosuchqueue".into(),
                ..job("t", b"")
            }),
            Code::FailedPrecondition,
            "queue 'nosuchqueue' does not exist",
        ),
    ];
    for (case, request, code, mention) in cases {
        let status = client.submit_job(request).await.expect_err(case);
        assert_eq!(status.code(), code, "{case}: {status:?}");
        assert!(
            status.message().contains(mention),
            "{case}: {:?}",
            status.message()
        );
    }

    let too_many = SubmitJobsRequest {
        jobs: (0..6).map(|_| job("t", b"")).collect(),
    };
    let status = client
        .submit_jobs(too_many)
        .await
        .expect_err("batch over the limit");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("jobs:"),
        "{}",
        status.message()
    );
    let empty = client.submit_jobs(SubmitJobsRequest { jobs: vec![] }).await;
    assert_eq!(
        empty.expect_err("empty batch").code(),
        Code::InvalidArgument
    );

    let probe = Probe::connect().await.expect("probe");
    assert_eq!(
        probe.message_count(&topology.work_queue("default")).await,
        0,
        "nothing was published"
    );
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn one_bad_job_does_not_fail_its_batch() {
    let topology = TestTopology::new("mixed", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let jobs = vec![
        JobSpec {
            job_id: "good-1".into(),
            ..job("t", b"1")
        },
        JobSpec {
            job_id: "bad-type".into(),
            ..job("no spaces", b"2")
        },
        JobSpec {
            job_id: "lost".into(),
            queue: "nosuchqueue".into(),
            ..job("t", b"3")
        },
        JobSpec {
            job_id: "good-2".into(),
            ..job("t", b"4")
        },
    ];
    let results = producer
        .client()
        .await
        .submit_jobs(SubmitJobsRequest { jobs })
        .await
        .expect("batch")
        .into_inner()
        .results;
    let summary: Vec<(&str, Code)> = results
        .iter()
        .map(|r| (r.job_id.as_str(), Code::from_i32(r.code)))
        .collect();
    assert_eq!(
        summary,
        [
            ("good-1", Code::Ok),
            ("bad-type", Code::InvalidArgument),
            ("lost", Code::FailedPrecondition),
            ("good-2", Code::Ok),
        ]
    );
    assert!(
        results[1].message.starts_with("jobs[1].type:"),
        "{}",
        results[1].message
    );
    let probe = Probe::connect().await.expect("probe");
    let queued: Vec<String> = probe
        .drain(&topology.work_queue("default"))
        .await
        .iter()
        .map(|m| {
            m.delivery
                .properties
                .message_id()
                .clone()
                .expect("id")
                .to_string()
        })
        .collect();
    assert_eq!(queued, ["good-1", "good-2"]);
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_full_queue_refuses_with_resource_exhausted() {
    let topology = TestTopology::new("full", &["default"]);
    let mut config = producer::config(&topology);
    config.topology.max_length = 2;
    let producer = RunningProducer::start(config).await;
    let mut client = producer.client().await;
    let mut accepted = 0;
    let status = loop {
        match client.submit_job(single(job("t", b"x"))).await {
            Ok(_) => accepted += 1,
            Err(status) => break status,
        }
        assert!(accepted < 10, "the queue never refused");
    };
    // Quorum queues apply the limit after the enqueue, so one message may go over it.
    assert!(
        (2..=3).contains(&accepted),
        "accepted {accepted} with a limit of 2"
    );
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let probe = Probe::connect().await.expect("probe");
    assert_eq!(
        probe.message_count(&topology.work_queue("default")).await,
        accepted
    );
    producer.stop().await.expect("clean stop");
}

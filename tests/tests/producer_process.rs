//! The producer binary as operators run it: configuration errors, the config check, and SIGTERM.

use jobpipe_proto::v1::{JobSpec, SubmitJobRequest, job_service_client::JobServiceClient};
use jobpipe_tests::{
    broker::{TestTopology, amqp_url},
    eventually,
    process::{Service, free_port, output, service_env},
};
use std::time::Duration;

#[tokio::test]
async fn bad_configuration_exits_64_with_one_line_naming_the_key() {
    let cases = [
        (
            "JOBPIPE__LIMITS__MAX_BATCH_JOBS",
            "lots",
            "limits.max_batch_jobs",
        ),
        ("JOBPIPE__TOPOLOGY__QUEUES", "a,B.C", "topology.queues"),
        (
            "JOBPIPE__AMQP__URL",
            "amqp://u:pw-secret@h:notaport",
            "amqp.url",
        ),
    ];
    for (key, value, named) in cases {
        let (status, text) = output("jobpipe-producer", &["--check-config"], &[(key, value)]).await;
        assert_eq!(status.code(), Some(64), "{key}={value}: {text}");
        assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
        assert!(text.contains(named), "{text}");
        assert!(!text.contains("pw-secret"), "{text}");
    }
    let (status, text) = output("jobpipe-producer", &["--check-config"], &[]).await;
    assert_eq!(status.code(), Some(0), "{text}");
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let topology = TestTopology::new("sigterm", &["default"]);
    let grpc = free_port();
    let mut env = service_env(&topology, free_port());
    env.push(("JOBPIPE__GRPC__LISTEN", grpc.to_string()));
    env.push(("JOBPIPE__SHUTDOWN__GRACE_PERIOD", "5s".into()));
    let producer = Service::start("jobpipe-producer", &[], &env);
    let endpoint = format!("http://{grpc}");
    eventually(
        Duration::from_secs(20),
        "the producer to accept a job",
        || {
            let endpoint = endpoint.clone();
            async move {
                let Ok(mut client) = JobServiceClient::connect(endpoint).await else {
                    return false;
                };
                let job = JobSpec {
                    r#type: "noop".into(),
                    ..JobSpec::default()
                };
                client
                    .submit_job(SubmitJobRequest { job: Some(job) })
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    producer.signal("TERM");
    let status = producer.exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn with_declaring_left_to_a_job_the_producer_checks_and_waits_for_it() {
    use jobpipe_tests::producer::{self, RunningProducer};
    let topology = TestTopology::new("verify", &["default"]);
    let mut config = producer::config(&topology);
    config.topology.declare = false;
    let missing = RunningProducer::spawn(config.clone())
        .await
        .stopped()
        .await
        .expect_err("nothing declared yet")
        .to_string();
    assert!(missing.contains("does not exist"), "{missing}");
    assert!(
        missing.contains("--declare-topology"),
        "says what to do: {missing}"
    );

    let prefix = topology.config().prefix.to_string();
    let (status, said) = output(
        "jobpipe-producer",
        &["--declare-topology"],
        &[
            ("JOBPIPE__AMQP__URL", &amqp_url()),
            ("JOBPIPE__TOPOLOGY__PREFIX", &prefix),
        ],
    )
    .await;
    assert!(status.success(), "{said}");
    assert!(said.contains("declared"), "{said}");

    let producer = RunningProducer::start(config).await;
    // Served once the topology exists.
    producer
        .submit(JobSpec {
            r#type: "noop".into(),
            ..JobSpec::default()
        })
        .await;
    producer.stop().await.expect("clean stop");
}

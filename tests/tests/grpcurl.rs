//! grpcurl, a client written by someone else, finds the API through reflection (v1alpha, the only
//! protocol grpcurl 1.8.6 speaks) and submits a job.

use jobpipe_tests::{
    broker::{Probe, TestTopology},
    producer::{self, RunningProducer},
    tools::venv_tool,
    within,
};
use std::time::Duration;
use tokio::process::Command;

async fn grpcurl(args: &[&str]) -> String {
    let output = within(
        Duration::from_secs(20),
        "grpcurl",
        Command::new(venv_tool("grpcurl")).args(args).output(),
    )
    .await
    .expect("run grpcurl");
    assert!(
        output.status.success(),
        "grpcurl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn grpcurl_lists_the_services_and_submits_a_job() {
    let topology = TestTopology::new("grpcurl", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let addr = producer.grpc_addr.to_string();

    let services = grpcurl(&["-plaintext", &addr, "list"]).await;
    assert!(services.contains("jobpipe.v1.JobService"), "{services}");
    assert!(services.contains("grpc.health.v1.Health"), "{services}");

    let health = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]).await;
    assert!(health.contains("SERVING"), "{health}");

    let body = r#"{"job":{"job_id":"from-grpcurl","type":"email.send","payload":"aGVsbG8="}}"#;
    let answer = grpcurl(&[
        "-plaintext",
        "-d",
        body,
        &addr,
        "jobpipe.v1.JobService/SubmitJob",
    ])
    .await;
    assert!(answer.contains(r#""jobId": "from-grpcurl""#), "{answer}");
    let probe = Probe::connect().await.expect("probe");
    let message = probe
        .get(&topology.work_queue("default"))
        .await
        .expect("queued");
    assert_eq!(message.delivery.data, b"hello");
    producer.stop().await.expect("clean stop");
}

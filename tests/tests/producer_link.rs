//! The producer and its broker link: failing fast while the broker is away, recovering without a
//! restart, health and readiness that follow the link, reflection, and a clear stop on a topology
//! that disagrees with the configuration.

use jobpipe_proto::v1::{JobSpec, SubmitJobRequest, SubmitJobsRequest};
use jobpipe_runtime::amqp::AmqpUrl;
use jobpipe_tests::{
    broker::{Probe, TestTopology},
    eventually,
    producer::{self, RunningProducer},
    proxy::Proxy,
    within,
};
use lapin::{options::QueueDeclareOptions, types::FieldTable};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

fn request() -> SubmitJobRequest {
    SubmitJobRequest {
        job: Some(JobSpec {
            r#type: "noop".into(),
            ..JobSpec::default()
        }),
    }
}

fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

async fn closed_port() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("addr")
}

#[tokio::test]
async fn an_unreachable_broker_means_unavailable_at_once_and_not_serving() {
    let topology = TestTopology::new("unreach", &["default"]);
    let mut config = producer::config(&topology);
    config.amqp.url = format!("amqp://guest:guest@{}/%2f", closed_port().await)
        .parse::<AmqpUrl>()
        .expect("url");
    let producer = RunningProducer::spawn(config).await;

    assert_eq!(producer.health().await, ServingStatus::NotServing);
    assert_eq!(producer.admin_get("/readyz").await.0, 503);
    assert_eq!(producer.admin_get("/livez").await.0, 200);
    let started = Instant::now();
    let status = producer
        .client()
        .await
        .submit_job(with_deadline(request(), Duration::from_secs(2)))
        .await
        .expect_err("no broker");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered in {:?}, not at once",
        started.elapsed()
    );
    assert!(
        status.message().contains("same job_id"),
        "{}",
        status.message()
    );
    assert!(
        !status.message().contains("guest"),
        "no credentials in messages"
    );
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn the_producer_recovers_when_the_broker_returns() {
    let topology = TestTopology::new("recover", &["default"]);
    let proxy = Proxy::start(jobpipe_tests::broker::broker_parts().0)
        .await
        .expect("proxy");
    let mut config = producer::config(&topology);
    config.amqp.url = proxy.amqp_url().parse().expect("url");
    let producer = RunningProducer::start(config).await;
    let mut client = producer.client().await;
    client.submit_job(request()).await.expect("before the cut");

    proxy.cut();
    producer.wait_for_health(ServingStatus::NotServing).await;
    assert_eq!(producer.admin_get("/readyz").await.0, 503);
    let status = client
        .submit_job(with_deadline(request(), Duration::from_secs(2)))
        .await
        .expect_err("broker away");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    proxy.restore();
    producer.wait_for_health(ServingStatus::Serving).await;
    assert_eq!(producer.admin_get("/readyz").await.0, 200);
    client.submit_job(request()).await.expect("after recovery");
    let probe = Probe::connect().await.expect("probe");
    assert_eq!(
        probe.message_count(&topology.work_queue("default")).await,
        2
    );
    let metrics = producer.admin_get("/metrics").await.1;
    assert!(
        metrics.contains("jobpipe_producer_jobs_total{queue=\"default\",outcome=\"confirmed\"} 2"),
        "{metrics}"
    );
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn reflection_lists_the_job_service_in_both_protocol_versions() {
    use tonic_reflection::pb::{v1, v1alpha};
    let topology = TestTopology::new("reflect", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;

    let mut client =
        v1::server_reflection_client::ServerReflectionClient::new(producer.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("v1 answer")
        .expect("one answer");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("not a service list: {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"jobpipe.v1.JobService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(producer.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = alpha
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("v1alpha answer")
        .expect("one answer");
    assert!(format!("{response:?}").contains("jobpipe.v1.JobService"));
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_topology_mismatch_stops_the_producer_naming_the_queue_and_argument() {
    let topology = TestTopology::new("mismatch", &["default"]);
    let queue = topology.work_queue("default");
    let probe = Probe::connect().await.expect("probe");
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    probe
        .channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .expect("pre-declare without the jobpipe arguments");

    let producer = RunningProducer::spawn(producer::config(&topology)).await;
    let error = producer
        .stopped()
        .await
        .expect_err("refuses to run")
        .to_string();
    assert!(error.contains(&format!("queue '{queue}'")), "{error}");
    assert!(
        error.contains("x-dead-letter-exchange") || error.contains("x-delivery-limit"),
        "{error}"
    );
    assert!(!error.contains("406"), "{error}");
}

#[tokio::test]
async fn draining_finishes_the_batch_in_flight() {
    let topology = TestTopology::new("drain", &["default"]);
    // Through a proxy that holds the broker's confirms back: the batch is certainly still in
    // flight (so the drain, and the admin endpoint, certainly last) until the test releases it.
    let proxy = Proxy::start(jobpipe_tests::broker::broker_parts().0)
        .await
        .expect("proxy");
    let mut config = producer::config(&topology);
    config.amqp.url = proxy.amqp_url().parse().expect("url");
    config.limits.max_batch_jobs = 5000;
    let producer = RunningProducer::start(config).await;
    let mut client = producer.client().await;
    let jobs = (0..5000)
        .map(|_| JobSpec {
            r#type: "noop".into(),
            ..JobSpec::default()
        })
        .collect();
    proxy.hold();
    let batch = tokio::spawn(async move { client.submit_jobs(SubmitJobsRequest { jobs }).await });
    let probe = Probe::connect().await.expect("probe");
    let queue = topology.work_queue("default");
    eventually(Duration::from_secs(10), "the batch to start", || async {
        probe.message_count(&queue).await > 0
    })
    .await;
    // Draining starts: readiness turns off while the batch is still being confirmed.
    let admin = producer.admin_addr;
    let stopping = tokio::spawn(producer.stop());
    eventually(Duration::from_secs(5), "readiness to turn off", || async {
        match jobpipe_tests::http_get(admin, "/readyz").await.0 {
            503 => true,
            200 => false,
            status => panic!("/readyz answered {status} (0: nothing listens) before 503"),
        }
    })
    .await;
    proxy.release();
    within(Duration::from_secs(30), "the drain", stopping)
        .await
        .expect("task")
        .expect("drained cleanly");
    let results = within(Duration::from_secs(10), "the batch answer", batch)
        .await
        .expect("task")
        .expect("the batch in flight was answered")
        .into_inner()
        .results;
    assert!(results.iter().all(|r| r.code == 0), "every job confirmed");
    assert_eq!(probe.message_count(&queue).await, 5000);
}

#[tokio::test]
async fn a_publisher_channel_the_broker_closed_is_replaced_without_a_restart() {
    let topology = TestTopology::new("reopen", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let mut client = producer.client().await;
    client.submit_job(request()).await.expect("before");

    // Deleting the jobs exchange makes the next publish a channel error (404): the broker
    // closes the producer's publishing channel.
    let probe = Probe::connect().await.expect("probe");
    probe
        .delete_exchange(&topology.names().jobs_exchange())
        .await
        .expect("delete the exchange");
    let status = client.submit_job(request()).await.expect_err("no exchange");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // The link notices, declares the topology again and opens another channel.
    eventually(Duration::from_secs(10), "submissions to work again", || {
        let mut client = client.clone();
        async move { client.submit_job(request()).await.is_ok() }
    })
    .await;
    assert_eq!(producer.health().await, ServingStatus::Serving);
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_confirm_pending_when_the_connection_dies_fails_at_once_as_outcome_unknown() {
    let topology = TestTopology::new("lost", &["default"]);
    let proxy = Proxy::start(jobpipe_tests::broker::broker_parts().0)
        .await
        .expect("proxy");
    let mut config = producer::config(&topology);
    config.amqp.url = proxy.amqp_url().parse().expect("url");
    config.amqp.confirm_timeout = Duration::from_secs(20);
    let producer = RunningProducer::start(config).await;
    let mut client = producer.client().await;
    client.submit_job(request()).await.expect("before the cut");

    // The job reaches the broker, its confirm does not reach the producer; then the link dies.
    proxy.hold();
    let submit = tokio::spawn(async move { client.submit_job(request()).await });
    let probe = Probe::connect().await.expect("probe");
    probe
        .wait_for_count(&topology.work_queue("default"), 2, Duration::from_secs(10))
        .await;
    let cut = Instant::now();
    proxy.cut();
    let status = within(Duration::from_secs(10), "the submit's answer", submit)
        .await
        .expect("task")
        .expect_err("no confirm");
    assert!(
        cut.elapsed() < Duration::from_secs(2),
        "held {:?} after the connection died (confirm timeout 20 s)",
        cut.elapsed()
    );
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("outcome is unknown"),
        "{}",
        status.message()
    );
    let metrics = producer.admin_get("/metrics").await.1;
    assert!(
        metrics.contains("jobpipe_producer_jobs_total{queue=\"default\",outcome=\"lost\"} 1"),
        "{metrics}"
    );
    producer.stop().await.expect("clean stop");
}

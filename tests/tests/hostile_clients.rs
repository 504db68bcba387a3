//! The services' ports against clients that break the rules. On the producer's gRPC port, from a
//! raw HTTP/2 client (the `h2` package, `tests/tools/grpc_raw.py`): requests that are not gRPC,
//! malformed messages, a second message in a unary call, uploads that stall, connections that
//! stay silent or idle, too many connections and calls, and a process out of file descriptors.
//! On the admin port: slow and silent HTTP clients and too many connections. Every case gets its
//! documented answer, nothing malformed is queued, memory stays bounded, and probes keep
//! answering.

use jobpipe_proto::v1::{JobSpec, SubmitJobRequest};
use jobpipe_tests::{
    broker::{Probe, TestTopology},
    eventually,
    process::{Service, free_port, service_env},
    procstat,
    producer::{self, RunningProducer},
    tools::{python_script, run_script},
    within,
};
use prost::Message;
use serde_json::Value;
use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const SUBMIT: &str = "/jobpipe.v1.JobService/SubmitJob";

/// A raw request and the answer it must get: name, method, content type, body (hex), HTTP
/// status, gRPC status.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    String,
    Option<u64>,
    Option<u64>,
);
/// The HTTP/2 connection preface: what a gRPC client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `message` as one length-prefixed gRPC frame, in hex.
fn framed(message: &[u8]) -> String {
    let mut bytes = vec![0];
    bytes.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    bytes.extend_from_slice(message);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn submit_request(job_type: &str) -> Vec<u8> {
    SubmitJobRequest {
        job: Some(JobSpec {
            r#type: job_type.into(),
            ..JobSpec::default()
        }),
    }
    .encode_to_vec()
}

async fn raw_request(addr: SocketAddr, method: &str, content_type: &str, body_hex: &str) -> Value {
    let target = addr.to_string();
    let out = run_script(
        "grpc_raw.py",
        &[&target, "request", SUBMIT, method, content_type, body_hex],
    )
    .await;
    serde_json::from_str(out.trim()).unwrap_or_else(|error| panic!("{out}: {error}"))
}

/// Reads (and drops) whatever the server sends until it closes the connection.
async fn until_closed(mut connection: TcpStream) {
    let mut buffer = [0; 4096];
    while let Ok(1..) = connection.read(&mut buffer).await {}
}

async fn health(addr: SocketAddr) -> ServingStatus {
    let channel = jobpipe_tests::grpc_channel(addr).await;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: jobpipe_producer::SERVICE_NAME.into(),
        })
        .await
        .expect("health answers");
    ServingStatus::try_from(answer.into_inner().status).expect("a status")
}

#[tokio::test]
async fn requests_that_are_not_well_formed_grpc_get_their_documented_answer_and_queue_nothing() {
    let topology = TestTopology::new("malformed", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let addr = producer.grpc_addr;
    let valid = framed(&submit_request("noop"));
    // A JobSpec whose `type` (field 2) is not UTF-8, in a SubmitJobRequest (field 1).
    let bad_utf8 = framed(&[0x0a, 0x06, 0x12, 0x04, b'n', 0xff, b'o', b'p']);
    // (case, method, content type, body, HTTP status, gRPC status)
    let cases: [Case; 8] = [
        (
            "a GET",
            "GET",
            "application/grpc",
            valid.clone(),
            Some(405),
            None,
        ),
        (
            "JSON",
            "POST",
            "application/json",
            valid.clone(),
            Some(415),
            None,
        ),
        (
            "no content type",
            "POST",
            "",
            valid.clone(),
            Some(415),
            None,
        ),
        (
            "two messages",
            "POST",
            "application/grpc",
            format!("{valid}{valid}"),
            Some(200),
            Some(13),
        ),
        (
            "random bytes",
            "POST",
            "application/grpc",
            format!("0000000008{}", "ff".repeat(8)),
            Some(200),
            Some(13),
        ),
        (
            "a truncated message",
            "POST",
            "application/grpc",
            "0000000064aabb".into(),
            Some(200),
            Some(13),
        ),
        (
            "invalid UTF-8 in a string",
            "POST",
            "application/grpc",
            bad_utf8,
            Some(200),
            Some(13),
        ),
        (
            "a message declared over the limit",
            "POST",
            "application/grpc",
            "00ffffffff00".into(),
            Some(200),
            Some(11),
        ),
    ];
    for (case, method, content_type, body, http, grpc) in cases {
        let answer = raw_request(addr, method, content_type, &body).await;
        assert_eq!(answer["http"].as_u64(), http, "{case}: {answer}");
        assert_eq!(answer["grpc_status"].as_u64(), grpc, "{case}: {answer}");
    }
    let answer = raw_request(addr, "POST", "application/grpc", &valid).await;
    assert_eq!(answer["grpc_status"], 0, "the well-formed call: {answer}");
    let probe = Probe::connect().await.expect("probe");
    assert_eq!(
        probe.message_count(&topology.work_queue("default")).await,
        1,
        "only the well-formed call queued a job"
    );
    producer.stop().await.expect("clean stop");
}

/// A producer process with a small gRPC budget, for measuring it from outside.
fn producer_process(topology: &TestTopology, grpc: SocketAddr, extra: &[(&str, &str)]) -> Service {
    let mut env = service_env(topology, free_port());
    env.push(("JOBPIPE__GRPC__LISTEN", grpc.to_string()));
    env.extend(extra.iter().map(|(key, value)| (*key, (*value).to_owned())));
    Service::start("jobpipe-producer", &[], &env)
}

async fn wait_serving(grpc: SocketAddr) {
    eventually(
        Duration::from_secs(30),
        "the producer to serve",
        || async move {
            TcpStream::connect(grpc).await.is_ok() && health(grpc).await == ServingStatus::Serving
        },
    )
    .await;
}

#[tokio::test]
async fn stalled_uploads_hold_bounded_memory_then_time_out_and_calls_beyond_the_limit_are_refused()
{
    let topology = TestTopology::new("stall", &["default"]);
    let grpc = free_port();
    let producer = producer_process(
        &topology,
        grpc,
        &[
            ("JOBPIPE__GRPC__REQUEST_TIMEOUT", "12s"),
            ("JOBPIPE__GRPC__MAX_CONCURRENT_CALLS", "8"),
        ],
    );
    wait_serving(grpc).await;
    let before = procstat::usage(producer.pid()).rss_mib;

    // Eight calls each declaring the largest message allowed (3 MiB by default) and sending what
    // HTTP/2 flow control lets through, then nothing.
    let mut stall = python_script("grpc_raw.py")
        .args([&grpc.to_string(), "stall", SUBMIT, "8", "3162112", "60000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the staller");
    let mut lines = BufReader::new(stall.stdout.take().expect("stdout")).lines();
    let stalled = within(
        Duration::from_secs(20),
        "the uploads to stall",
        lines.next_line(),
    )
    .await
    .expect("read")
    .expect("a line");
    assert!(stalled.contains("\"stalled\": 8"), "{stalled}");
    let started = Instant::now();

    // Meanwhile: health answers, one call more is refused, memory stays within the budget.
    assert_eq!(health(grpc).await, ServingStatus::Serving);
    let refused = raw_request(
        grpc,
        "POST",
        "application/grpc",
        &framed(&submit_request("noop")),
    )
    .await;
    assert_eq!(
        refused["grpc_status"], 8,
        "RESOURCE_EXHAUSTED beyond 8 calls: {refused}"
    );
    let during = procstat::usage(producer.pid()).rss_mib;
    assert!(
        during - before < 8.0 * 3.1 + 8.0,
        "the stalled uploads hold {:.1} MiB (from {before:.1} to {during:.1})",
        during - before
    );

    // Each ends with DEADLINE_EXCEEDED at grpc.request_timeout.
    for _ in 0..8 {
        let line = within(
            Duration::from_secs(30),
            "a stalled call to end",
            lines.next_line(),
        )
        .await
        .expect("read")
        .expect("a line");
        let ended: Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(ended["grpc_status"], 4, "{line}");
    }
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(10)..Duration::from_secs(20)).contains(&took),
        "ended after {took:?}, the timeout being 12 s"
    );
    let answer = raw_request(
        grpc,
        "POST",
        "application/grpc",
        &framed(&submit_request("noop")),
    )
    .await;
    assert_eq!(
        answer["grpc_status"], 0,
        "calls are admitted again: {answer}"
    );
    stall.wait().await.expect("staller exits");
    producer.signal("TERM");
    producer.exit(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn silent_idle_and_surplus_connections_are_closed_while_probes_answer() {
    let topology = TestTopology::new("conns", &["default"]);
    let grpc = free_port();
    let producer = producer_process(
        &topology,
        grpc,
        &[
            ("JOBPIPE__GRPC__HANDSHAKE_TIMEOUT", "1s"),
            ("JOBPIPE__GRPC__MAX_CONNECTION_AGE", "3s"),
            ("JOBPIPE__AMQP__CONFIRM_TIMEOUT", "2s"),
            ("JOBPIPE__GRPC__REQUEST_TIMEOUT", "3s"),
            ("JOBPIPE__GRPC__MAX_CONNECTIONS", "10"),
        ],
    );
    wait_serving(grpc).await;

    // A connection that never sends a byte (the server's own settings aside) is closed after the
    // handshake timeout.
    let silent = TcpStream::connect(grpc).await.expect("connect");
    let started = Instant::now();
    within(
        Duration::from_secs(5),
        "the silent connection to close",
        until_closed(silent),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // An HTTP/2 connection that goes idle is asked to leave (GOAWAY) and closed at its age.
    let mut idle = TcpStream::connect(grpc).await.expect("connect");
    idle.write_all(PREFACE).await.expect("preface");
    idle.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("settings");
    within(
        Duration::from_secs(20),
        "the idle connection to close",
        until_closed(idle),
    )
    .await;

    // Ten connections are the limit: one more is closed at once (the server's HTTP/2 settings
    // answer a connection it keeps), and a client holding one of the ten gets health answers.
    let channel = jobpipe_tests::grpc_channel(grpc).await;
    let mut held = Vec::new();
    let refused_at = within(
        Duration::from_secs(20),
        "a connection to be refused",
        async {
            loop {
                let mut connection = TcpStream::connect(grpc).await.expect("connect");
                connection.write_all(PREFACE).await.expect("preface");
                match connection.read(&mut [0; 64]).await {
                    Ok(0) | Err(_) => return held.len(),
                    Ok(_) => held.push(connection),
                }
            }
        },
    )
    .await;
    assert!(
        (8..=9).contains(&refused_at),
        "refused after {refused_at} more connections (limit 10, one held by the client)"
    );
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health over a held connection");
    assert_eq!(answer.into_inner().status, ServingStatus::Serving as i32);
    drop(held);
    producer.signal("TERM");
    producer.exit(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn running_out_of_file_descriptors_backs_off_instead_of_spinning() {
    let topology = TestTopology::new("nofile", &["default"]);
    let grpc = free_port();
    let mut env = service_env(&topology, free_port());
    env.push(("JOBPIPE__GRPC__LISTEN", grpc.to_string()));
    env.push(("JOBPIPE__GRPC__HANDSHAKE_TIMEOUT", "60s".into()));
    let mut command = tokio::process::Command::new("prlimit");
    command
        .args(["--nofile=64:64", "--"])
        .arg(jobpipe_tests::process::bin_path("jobpipe-producer"))
        .envs(env.iter().map(|(key, value)| (*key, value)))
        .env("JOBPIPE__LOG__FORMAT", "text")
        .stdin(Stdio::null());
    let producer = Service::spawn(command);
    wait_serving(grpc).await;

    // Hold connections until the producer can accept no more.
    let mut held = Vec::new();
    for _ in 0..100 {
        held.push(
            TcpStream::connect(grpc)
                .await
                .expect("the backlog takes it"),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = procstat::usage(producer.pid()).cpu;
    // No event marks "idle while starved": measure the CPU over a window.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spent = procstat::usage(producer.pid()).cpu - before;
    assert!(
        spent < Duration::from_millis(300),
        "the producer used {spent:?} of CPU in 3 s without descriptors"
    );
    drop(held);
    wait_serving(grpc).await;
    producer.signal("TERM");
    producer.exit(Duration::from_secs(30)).await;
}

#[tokio::test]
async fn the_admin_port_drops_slow_silent_and_surplus_clients_and_keeps_answering() {
    let topology = TestTopology::new("admin", &["default"]);
    let mut config = producer::config(&topology);
    config.admin.request_timeout = Duration::from_secs(1);
    config.admin.max_connections = 4;
    let producer = RunningProducer::start(config).await;
    let admin = producer.admin_addr;

    // A request head that never ends, and a connection that never speaks, are cut off.
    let mut slow = TcpStream::connect(admin).await.expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let silent = TcpStream::connect(admin).await.expect("connect");
    let started = Instant::now();
    within(
        Duration::from_secs(5),
        "the slow client to be cut off",
        until_closed(slow),
    )
    .await;
    within(
        Duration::from_secs(5),
        "the silent client to be cut off",
        until_closed(silent),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // Four connections are the limit: a fifth is closed at once.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut connection = TcpStream::connect(admin).await.expect("connect");
        connection
            .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut answer = [0; 12];
        connection.read_exact(&mut answer).await.expect("an answer");
        assert_eq!(&answer, b"HTTP/1.1 200");
        held.push(connection);
    }
    let surplus = TcpStream::connect(admin).await.expect("connect");
    within(
        Duration::from_secs(2),
        "the surplus client to be closed",
        until_closed(surplus),
    )
    .await;
    drop(held);
    eventually(
        Duration::from_secs(5),
        "/livez to answer again",
        || async move { jobpipe_tests::http_get(admin, "/livez").await.0 == 200 },
    )
    .await;
    producer.stop().await.expect("clean stop");
}

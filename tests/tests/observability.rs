//! Observability against real peers: one trace from the gRPC call to the last retry in a real
//! OTLP collector, metrics that count a known workload exactly and pass `promtool`, and JSON logs
//! that name the job without leaking its payload.

use jobpipe_proto::v1::{JobSpec, SubmitJobRequest, job_service_client::JobServiceClient};
use jobpipe_tests::{
    broker::{TestTopology, broker_parts},
    consumer::{self, RunningConsumer, next_seen, recording_handlers},
    eventually, grpc_channel, http_get,
    otlp::{Collector, SpanRecord},
    process::{Service, free_port, service_env, wait_ready},
    producer::{self, RunningProducer},
    sample, within,
};
use std::time::Duration;
use tokio::{io::AsyncReadExt, sync::mpsc};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn job(job_type: &str, payload: &str) -> JobSpec {
    JobSpec {
        r#type: job_type.into(),
        payload: payload.as_bytes().to_vec().into(),
        ..JobSpec::default()
    }
}

fn traced(spec: JobSpec) -> tonic::Request<SubmitJobRequest> {
    let mut request = tonic::Request::new(SubmitJobRequest { job: Some(spec) });
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("ascii"));
    request
}

#[tokio::test]
async fn one_trace_follows_a_job_from_the_call_to_its_last_attempt() {
    let topology = TestTopology::new("trace", &["default"]);
    let collector = Collector::start().await;
    let prefix = topology.config().prefix.to_string();
    let common = |admin: std::net::SocketAddr| {
        let mut env = service_env(&topology, admin);
        env.push((
            "JOBPIPE__TELEMETRY__OTLP_ENDPOINT",
            collector.endpoint.clone(),
        ));
        env
    };
    let grpc = free_port();
    let (producer_admin, consumer_admin) = (free_port(), free_port());
    let mut env = common(producer_admin);
    env.push(("JOBPIPE__GRPC__LISTEN", grpc.to_string()));
    let producer = Service::start("jobpipe-producer", &[], &env);
    let mut env = common(consumer_admin);
    env.push(("JOBPIPE__RETRY__JITTER", "none".into()));
    let consumer = Service::start("jobpipe-consumer", &[], &env);
    wait_ready(producer_admin).await;
    wait_ready(consumer_admin).await;

    let mut client = JobServiceClient::new(grpc_channel(grpc).await);
    let job_id = client
        .submit_job(traced(job("fail", "1")))
        .await
        .expect("submitted")
        .into_inner()
        .job_id;
    eventually(Duration::from_secs(20), "the second attempt to succeed", || async {
        let metrics = http_get(consumer_admin, "/metrics").await.1;
        sample(&metrics, r#"jobpipe_consumer_jobs_total{queue="default",type="fail",outcome="succeeded",reason=""}"#)
            == Some(1.0)
    })
    .await;
    // Stopping flushes the spans still buffered by the exporters.
    producer.signal("TERM");
    consumer.signal("TERM");
    assert!(producer.exit(Duration::from_secs(20)).await.success());
    assert!(consumer.exit(Duration::from_secs(20)).await.success());

    collector
        .wait_for_trace(TRACE_ID, 4, Duration::from_secs(20))
        .await;
    // Stopping the collector prints whatever it still holds: the exact counts below see every
    // span of the trace, not just the first four to arrive.
    let spans: Vec<SpanRecord> = collector
        .stop(Duration::from_secs(20))
        .await
        .into_iter()
        .filter(|span| span.trace_id == TRACE_ID)
        .collect();
    let of_kind =
        |kind: &str| -> Vec<&SpanRecord> { spans.iter().filter(|s| s.kind == kind).collect() };
    let [server] = of_kind("SPAN_KIND_SERVER")[..] else {
        panic!("one server span: {spans:#?}");
    };
    assert_eq!(server.service, "jobpipe-producer");
    assert_eq!(server.name, "jobpipe.v1.JobService/SubmitJob");
    assert_eq!(
        server.parent_id, CALLER_SPAN,
        "continues the caller's trace"
    );
    assert_eq!(server.attributes["rpc.system"], "grpc");
    assert_eq!(server.attributes["rpc.grpc.status_code"], "0");

    let [publish] = of_kind("SPAN_KIND_PRODUCER")[..] else {
        panic!("one producer span: {spans:#?}");
    };
    assert_eq!(publish.parent_id, server.span_id);
    assert_eq!(publish.attributes["messaging.system"], "rabbitmq");
    assert_eq!(publish.attributes["messaging.operation.type"], "send");
    assert_eq!(publish.attributes["messaging.message.id"], job_id);
    assert_eq!(
        publish.attributes["messaging.rabbitmq.destination.routing_key"],
        "default"
    );

    let mut attempts = of_kind("SPAN_KIND_CONSUMER");
    attempts.sort_by_key(|span| span.start);
    let [first, second] = attempts[..] else {
        panic!("two consumer spans: {spans:#?}");
    };
    for (span, attempt) in [(first, "1"), (second, "2")] {
        assert_eq!(span.service, "jobpipe-consumer");
        assert_eq!(
            span.parent_id, publish.span_id,
            "every attempt hangs off the publish"
        );
        assert_eq!(span.name, format!("process {prefix}.default"));
        assert_eq!(span.attributes["messaging.system"], "rabbitmq");
        assert_eq!(span.attributes["messaging.operation.type"], "process");
        assert_eq!(span.attributes["messaging.message.id"], job_id);
        assert_eq!(span.attributes["jobpipe.job.type"], "fail");
        assert_eq!(span.attributes["jobpipe.attempt"], attempt);
    }
    assert_eq!(first.attributes["jobpipe.outcome"], "retried");
    assert_eq!(first.attributes["error.type"], "transient");
    assert_eq!(first.status, "STATUS_CODE_ERROR");
    assert_eq!(second.attributes["jobpipe.outcome"], "succeeded");
    assert!(!second.attributes.contains_key("error.type"));
    let backoff = Duration::from_nanos(second.start - first.start);
    assert!(
        backoff >= Duration::from_secs(1),
        "the backoff shows as the gap: {backoff:?}"
    );
}

#[tokio::test]
async fn metrics_count_a_known_workload_exactly_and_pass_promtool() {
    let topology = TestTopology::new("metrics", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mut config = consumer::config(&topology, "c");
    config.metrics.queue_poll_interval = Duration::from_millis(200);
    let consumer = RunningConsumer::start(config, recording_handlers("c", &seen_tx)).await;

    let specs = [
        job("noop", ""),
        job("noop", ""),
        job("noop", ""),
        job("fail", "1"),
        job("fail", "permanent"),
    ];
    for spec in specs {
        producer.submit(spec).await;
    }
    let refused = producer
        .client()
        .await
        .submit_job(SubmitJobRequest {
            job: Some(job("", "")),
        })
        .await;
    assert_eq!(
        refused.expect_err("no type").code(),
        tonic::Code::InvalidArgument
    );
    // 3 noops, the flaky job twice, the permanent failure once.
    next_seen(&mut seen, 6, Duration::from_secs(20)).await;

    let series = |outcome: &str, job_type: &str, reason: &str| {
        format!(
            r#"jobpipe_consumer_jobs_total{{queue="default",type="{job_type}",outcome="{outcome}",reason="{reason}"}}"#
        )
    };
    let expected = [
        (series("succeeded", "noop", ""), 3.0),
        (series("succeeded", "fail", ""), 1.0),
        (series("retried", "fail", "transient"), 1.0),
        (series("dead_lettered", "fail", "permanent"), 1.0),
        (
            r#"jobpipe_consumer_attempts_count{queue="default"}"#.to_owned(),
            5.0,
        ),
        (
            r#"jobpipe_consumer_attempts_sum{queue="default"}"#.to_owned(),
            6.0,
        ),
        (
            r#"jobpipe_consumer_handler_seconds_count{queue="default",type="noop"}"#.to_owned(),
            3.0,
        ),
        (
            r#"jobpipe_queue_dead_messages{queue="default"}"#.to_owned(),
            1.0,
        ),
        (
            r#"jobpipe_queue_consumers{queue="default"}"#.to_owned(),
            1.0,
        ),
        ("jobpipe_consumer_jobs_in_flight".to_owned(), 0.0),
        ("jobpipe_broker_connected".to_owned(), 1.0),
        (
            r#"jobpipe_build_info{service="jobpipe-consumer",version="0.1.0"}"#.to_owned(),
            1.0,
        ),
    ];
    eventually(
        Duration::from_secs(10),
        "the consumer's counters to settle",
        || async {
            let metrics = consumer.metrics().await;
            expected
                .iter()
                .all(|(name, value)| sample(&metrics, name) == Some(*value))
        },
    )
    .await;

    let producer_metrics = producer.admin_get("/metrics").await.1;
    let producer_expected = [
        (
            r#"jobpipe_producer_rpcs_total{method="SubmitJob",code="OK",caller="anonymous"}"#,
            5.0,
        ),
        (
            r#"jobpipe_producer_rpcs_total{method="SubmitJob",code="INVALID_ARGUMENT",caller="anonymous"}"#,
            1.0,
        ),
        (
            r#"jobpipe_producer_jobs_total{queue="default",outcome="confirmed"}"#,
            5.0,
        ),
        (
            r#"jobpipe_producer_jobs_total{queue="other",outcome="invalid"}"#,
            1.0,
        ),
        ("jobpipe_producer_publish_confirm_seconds_count", 5.0),
        ("jobpipe_broker_connected", 1.0),
    ];
    for (name, value) in producer_expected {
        assert_eq!(
            sample(&producer_metrics, name),
            Some(value),
            "{name}\n{producer_metrics}"
        );
    }
    for metrics in [producer_metrics, consumer.metrics().await] {
        promtool_check_metrics(&metrics).await;
    }
    consumer.stop().await.expect("clean stop");
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn job_logs_are_json_lines_with_the_documented_fields_and_no_payload() {
    let topology = TestTopology::new("logs", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let admin = free_port();
    let mut env = service_env(&topology, admin);
    env.push(("JOBPIPE__LOG__FORMAT", "json".to_owned()));
    let (consumer, mut stdout) = Service::start_piped("jobpipe-consumer", &[], &env);
    // Read as it comes: a pipe nobody reads fills up and blocks the consumer's logging.
    let logs = tokio::spawn(async move {
        let mut output = String::new();
        stdout.read_to_string(&mut output).await.map(|_| output)
    });
    wait_ready(admin).await;
    let marker = "PAYLOAD-MARKER-7f3a";
    let job_id = producer
        .client()
        .await
        .submit_job(traced(JobSpec {
            job_id: "logged-1".into(),
            ..job("sleep", &format!("10ms {marker}"))
        }))
        .await;
    // The payload is not a duration, so the sleep handler fails permanently: a failure line too.
    assert_eq!(job_id.expect("submitted").into_inner().job_id, "logged-1");
    eventually(Duration::from_secs(10), "the job to be dead-lettered", || async {
        let metrics = http_get(admin, "/metrics").await.1;
        sample(&metrics, r#"jobpipe_consumer_jobs_total{queue="default",type="sleep",outcome="dead_lettered",reason="permanent"}"#)
            == Some(1.0)
    })
    .await;
    consumer.signal("TERM");
    assert!(consumer.exit(Duration::from_secs(20)).await.success());
    let output = within(Duration::from_secs(5), "the log output", logs)
        .await
        .expect("log reader")
        .expect("read logs");

    assert!(
        !output.contains(marker),
        "the payload never reaches the logs:\n{output}"
    );
    let lines: Vec<serde_json::Value> = output
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let finished = lines
        .iter()
        .find(|line| line["message"] == "Job finished.")
        .unwrap_or_else(|| panic!("no outcome line in:\n{output}"));
    assert_eq!(finished["level"], "INFO");
    assert_eq!(finished["job_id"], "logged-1");
    assert_eq!(finished["job_type"], "sleep");
    assert_eq!(finished["attempt"], 1);
    assert_eq!(finished["queue"], "default");
    assert_eq!(finished["outcome"], "dead_lettered");
    assert_eq!(finished["reason"], "permanent");
    assert_eq!(
        finished["trace_id"], TRACE_ID,
        "logs join the caller's trace"
    );
    assert!(finished["duration_us"].is_u64(), "{finished}");
    assert!(finished["timestamp"].is_string(), "{finished}");
    let (_, _, password, _) = broker_parts();
    assert!(!output.contains(&password), "no credentials");
    producer.stop().await.expect("clean stop");
}

async fn promtool_check_metrics(exposition: &str) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool (tests/tools/install.sh installs it)");
    let mut stdin = child.stdin.take().expect("stdin");
    // Written while promtool runs, and bounded with it: a stuck promtool cannot block the write.
    let write = async move {
        stdin.write_all(exposition.as_bytes()).await.expect("write");
    };
    let ((), output) = within(Duration::from_secs(10), "promtool", async {
        tokio::join!(write, child.wait_with_output())
    })
    .await;
    let output = output.expect("promtool ran");
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n{exposition}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_dashboard_and_alerts_use_only_metrics_the_services_export() {
    let topology = TestTopology::new("dashboard", &["default"]);
    let mut config = producer::config(&topology);
    config.metrics.queue_poll_interval = Duration::from_millis(200);
    let producer = RunningProducer::start(config).await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mut config = consumer::config(&topology, "c");
    config.metrics.queue_poll_interval = Duration::from_millis(200);
    let consumer = RunningConsumer::start(config, recording_handlers("c", &seen_tx)).await;
    producer.submit(job("fail", "1")).await;
    next_seen(&mut seen, 2, Duration::from_secs(20)).await;
    let exposition = || async {
        format!(
            "{}\n{}",
            producer.admin_get("/metrics").await.1,
            consumer.metrics().await
        )
    };
    eventually(
        Duration::from_secs(10),
        "queue depths and the finished job",
        || async {
            let text = exposition().await;
            text.contains("jobpipe_queue_ready_messages{")
                && text.contains("jobpipe_consumer_attempts_sum{")
        },
    )
    .await;
    let exposition = exposition().await;
    let exported: std::collections::HashSet<&str> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let known = |name: &str| {
        exported.contains(name)
            || ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .any(|suffix| {
                    name.strip_suffix(suffix)
                        .is_some_and(|base| exported.contains(base))
                })
    };

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/observability");
    let dashboard =
        std::fs::read_to_string(root.join("grafana-dashboard.json")).expect("dashboard");
    let alerts = std::fs::read_to_string(root.join("alerts.yml")).expect("alerts");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .chain(
            alerts
                .lines()
                .filter_map(|l| l.trim().strip_prefix("expr: ").map(str::to_owned)),
        )
        .collect();
    assert!(exprs.len() > 20, "{} expressions", exprs.len());
    let mut used = std::collections::BTreeSet::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("jobpipe_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            used.insert(name);
        }
    }
    let unknown: Vec<&String> = used.iter().filter(|name| !known(name)).collect();
    assert!(
        unknown.is_empty(),
        "not exported: {unknown:?}\nexported: {exported:?}"
    );
    assert!(used.len() >= 14, "the panels cover the pipeline: {used:?}");

    let checked = within(
        Duration::from_secs(30),
        "promtool check rules",
        tokio::process::Command::new("promtool")
            .args(["check", "rules"])
            .arg(root.join("alerts.yml"))
            .output(),
    )
    .await
    .expect("promtool");
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    consumer.stop().await.expect("clean stop");
    producer.stop().await.expect("clean stop");
}

//! Workers in other languages: the consumer dispatching jobs over HTTP and gRPC to the Python
//! example workers in `examples/` (which jobpipe did not write for itself: the HTTP one uses the
//! standard library, the gRPC one grpcio with stubs generated from `proto/`), each contract's
//! outcomes read as documented, a worker that is down costing no attempt, and route concurrency.

use jobpipe_consumer::{
    Handlers, JobType, builtin::Builtin, config::Config as ConsumerConfig, routes::RouteConfig,
};
use jobpipe_proto::{
    headers,
    job::text_header,
    v1::{JobSpec, SubmitJobRequest},
};
use jobpipe_runtime::tls::ClientTlsConfig;
use jobpipe_tests::{
    broker::{Probe, TestTopology},
    certs::{Ca, CertDir},
    consumer::{self, RunningConsumer, recording_handlers},
    eventually, http_get,
    process::{free_port, output_within},
    producer::{self, RunningProducer},
    sample,
    workers::{Kind, Request, Worker},
};
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

fn route(job_type: &str, target: &str) -> RouteConfig {
    RouteConfig::new(job_type, target)
}

fn job(job_type: &str, payload: &str, max_attempts: u32) -> JobSpec {
    JobSpec {
        r#type: job_type.into(),
        payload: payload.as_bytes().to_vec().into(),
        max_attempts,
        ..JobSpec::default()
    }
}

/// A consumer for `topology` whose routes are `routes`; retries after 1 s, 2 s.
fn consumer_config(topology: &TestTopology, routes: Vec<RouteConfig>) -> ConsumerConfig {
    let mut config = consumer::config(topology, "c");
    config.routes = routes;
    config.retry.max_delay = std::time::Duration::from_secs(2);
    config
}

fn noop_handlers() -> Handlers {
    let mut handlers = Handlers::new();
    handlers.register(JobType::try_new("noop").expect("valid"), Builtin::Noop);
    handlers
}

/// The dead letters of `queue`, by job id: (kind, error).
async fn dead_letters(
    probe: &Probe,
    topology: &TestTopology,
    count: u32,
) -> HashMap<String, (String, String)> {
    let queue = topology.dead_queue("default");
    probe
        .wait_for_count(&queue, count, Duration::from_secs(30))
        .await;
    probe
        .drain(&queue)
        .await
        .into_iter()
        .map(|message| {
            let props = message.delivery.properties;
            let table = props.headers().clone().expect("headers");
            let text = |name| {
                text_header(&table, name)
                    .map(|s| s.into_owned())
                    .unwrap_or_default()
            };
            let id = props.message_id().clone().expect("id").to_string();
            (id, (text(headers::ERROR_KIND), text(headers::ERROR)))
        })
        .collect()
}

fn by_job(requests: &[Request]) -> HashMap<String, Vec<&Request>> {
    let mut by_job: HashMap<String, Vec<&Request>> = HashMap::new();
    for request in requests {
        by_job
            .entry(request.text("job_id").to_owned())
            .or_default()
            .push(request);
    }
    by_job
}

#[tokio::test]
async fn each_outcome_of_both_contracts_is_read_as_documented() {
    for kind in Kind::ALL {
        outcomes(kind).await;
    }
}

async fn outcomes(kind: Kind) {
    let topology = TestTopology::new(&format!("workers-{kind:?}").to_lowercase(), &["default"]);
    let mut worker = Worker::start(kind, 0, &[]).await;
    let mut slow = route("slow.*", &worker.target());
    slow.timeout = Some(Duration::from_millis(1500));
    let routes = vec![route("*", &worker.target()), slow];
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let consumer =
        RunningConsumer::start(consumer_config(&topology, routes), noop_handlers()).await;

    let mut jobs = vec![
        ("greet", "Ada", 3),
        ("work", "fail:1", 3),
        ("work", "permanent", 3),
        ("work", "retry-after:2", 3),
        ("slow.sleep", "sleep:10000", 1),
        ("work", "big-error", 1),
        ("slow.endless", "endless", 1),
    ];
    if kind == Kind::Http {
        jobs.push(("work", "redirect", 3));
    }
    let mut ids = HashMap::new();
    for (job_type, payload, attempts) in &jobs {
        let mut spec = job(job_type, payload, *attempts);
        spec.metadata = HashMap::from([("tenant".into(), "acmé 100%".into())]);
        let id = producer.submit(spec).await;
        ids.insert(*payload, id);
    }
    // Every job once, fail:1 and retry-after:2 twice.
    let requests = worker
        .requests(jobs.len() + 2, Duration::from_secs(60))
        .await;
    let seen = by_job(&requests);
    let id = |payload: &str| ids[payload].clone();

    // What the worker was given.
    let greet = seen[&id("Ada")][0];
    assert_eq!(greet.text("type"), "greet");
    assert_eq!(greet.text("queue"), "default");
    assert_eq!(greet.number("attempt"), 1);
    assert_eq!(greet.number("max_attempts"), 3);
    assert_eq!(greet.number("payload_len"), 3);
    assert_eq!(greet.fields["metadata"]["tenant"], "acmé 100%", "{kind:?}");
    assert!(!greet.text("deadline").is_empty(), "{:?}", greet.fields);
    if kind == Kind::Http {
        assert_eq!(greet.text("ce_id"), id("Ada"));
        assert_eq!(greet.text("ce_type"), "greet");
        assert_eq!(greet.text("ce_specversion"), "1.0");
        assert_eq!(greet.text("content_type"), "application/octet-stream");
    }

    // A transient failure is retried with backoff, a Retry-After honoured (1 s resolution).
    let attempts = |payload: &str| -> Vec<u64> {
        seen[&id(payload)]
            .iter()
            .map(|r| r.number("attempt"))
            .collect()
    };
    assert_eq!(attempts("fail:1"), [1, 2], "{kind:?}");
    assert_eq!(attempts("retry-after:2"), [1, 2], "{kind:?}");
    let asked = &seen[&id("retry-after:2")];
    let waited = asked[1].at - asked[0].at;
    assert!(
        waited >= Duration::from_millis(1900),
        "{kind:?}: retried after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "{kind:?}: retried after {waited:?}"
    );

    // Everything else ran once and was dead-lettered with the worker's words.
    let probe = Probe::connect().await.expect("probe");
    let expected_dead = if kind == Kind::Http { 5 } else { 4 };
    let dead = dead_letters(&probe, &topology, expected_dead).await;
    let permanent = &dead[&id("permanent")];
    assert_eq!(permanent.0, "permanent", "{kind:?}");
    assert!(
        permanent.1.contains("cannot process this payload"),
        "{kind:?}: {}",
        permanent.1
    );
    let timed_out = &dead[&id("sleep:10000")];
    assert_eq!(timed_out.0, "exhausted", "{kind:?}");
    assert!(
        timed_out.1.contains("did not answer within 1s 500ms"),
        "{kind:?}: {}",
        timed_out.1
    );
    let big = &dead[&id("big-error")];
    assert_eq!(big.0, "exhausted");
    assert!(
        big.1.len() <= 1100 && big.1.contains("big error"),
        "{kind:?}: {} bytes",
        big.1.len()
    );
    let endless = &dead[&id("endless")];
    assert_eq!(endless.0, "exhausted", "{kind:?}: {}", endless.1);
    if kind == Kind::Http {
        let redirect = &dead[&id("redirect")];
        assert_eq!(redirect.0, "permanent");
        assert!(
            redirect.1.contains("HTTP 307") && redirect.1.contains("redirects are not followed")
        );
    }

    let metrics = consumer.metrics().await;
    let series = |outcome: &str, status: &str| {
        sample(
            &metrics,
            &format!(r#"jobpipe_worker_requests_total{{route="*",outcome="{outcome}",status="{status}"}}"#),
        )
        .unwrap_or_default()
    };
    let (ok, transient) = match kind {
        Kind::Http => ("2xx", "5xx"),
        Kind::Grpc => ("ok", "unavailable"),
    };
    assert!(series("succeeded", ok) >= 3.0, "{kind:?}: {metrics}");
    assert_eq!(
        series("transient", transient),
        if kind == Kind::Http { 2.0 } else { 1.0 },
        "{kind:?}"
    );
    assert_eq!(
        series(
            "retry_after",
            if kind == Kind::Http {
                "4xx"
            } else {
                "resource_exhausted"
            }
        ),
        1.0
    );
    consumer.stop().await.expect("clean stop");
    producer.stop().await.expect("clean stop");
    worker.kill().await;
}

#[tokio::test]
async fn the_worker_joins_the_submits_trace() {
    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    for kind in Kind::ALL {
        let topology = TestTopology::new(
            &format!("workers-trace-{kind:?}").to_lowercase(),
            &["default"],
        );
        let mut worker = Worker::start(kind, 0, &[]).await;
        let producer = RunningProducer::start(producer::config(&topology)).await;
        let consumer = RunningConsumer::start(
            consumer_config(&topology, vec![route("*", &worker.target())]),
            noop_handlers(),
        )
        .await;
        let mut request = tonic::Request::new(SubmitJobRequest {
            job: Some(job("traced", "x", 1)),
        });
        let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().expect("ascii"));
        producer
            .client()
            .await
            .submit_job(request)
            .await
            .expect("submitted");
        let seen = worker.requests(1, Duration::from_secs(30)).await;
        let worker_parent = seen[0].text("traceparent");
        assert_eq!(
            worker_parent.split('-').nth(1),
            Some(TRACE_ID),
            "{kind:?}: {worker_parent}"
        );
        consumer.stop().await.expect("clean stop");
        producer.stop().await.expect("clean stop");
        worker.kill().await;
    }
}

#[tokio::test]
async fn a_worker_that_is_down_costs_no_attempt_and_its_jobs_run_when_it_is_back() {
    for kind in Kind::ALL {
        let topology = TestTopology::new(
            &format!("workers-down-{kind:?}").to_lowercase(),
            &["default"],
        );
        let port = free_port().port();
        let target = kind.target(([127, 0, 0, 1], port).into());
        let producer = RunningProducer::start(producer::config(&topology)).await;
        let consumer = RunningConsumer::start(
            consumer_config(&topology, vec![route("*", &target)]),
            noop_handlers(),
        )
        .await;
        let ids = producer
            .submit_all((0..6).map(|_| job("work", "ok", 2)).collect())
            .await;

        // The consumer says which worker it waits for.
        let admin = consumer.admin_addr;
        eventually(
            Duration::from_secs(20),
            "readiness to name the worker",
            || async move {
                let (status, body) = http_get(admin, "/readyz").await;
                status == 503
                    && body.contains("worker for route * (")
                    && body.contains("is unreachable")
            },
        )
        .await;
        assert_eq!(
            sample(&consumer.metrics().await, r#"jobpipe_worker_up{route="*"}"#),
            Some(0.0)
        );
        // Longer than every retry delay (1 s, 2 s) and the prober's pauses: a job whose attempts
        // were spent would be dead by now.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let probe = Probe::connect().await.expect("probe");
        assert_eq!(
            probe.message_count(&topology.dead_queue("default")).await,
            0,
            "{kind:?}"
        );

        let mut worker = Worker::start(kind, port, &[]).await;
        let requests = worker.requests(ids.len(), Duration::from_secs(30)).await;
        assert!(
            requests.iter().all(|r| r.number("attempt") == 1),
            "{kind:?}: {requests:?}"
        );
        let mut seen: Vec<&str> = requests.iter().map(|r| r.text("job_id")).collect();
        seen.sort_unstable();
        let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
        expected.sort_unstable();
        assert_eq!(seen, expected, "{kind:?}");
        consumer.wait_ready().await;
        assert_eq!(
            sample(&consumer.metrics().await, r#"jobpipe_worker_up{route="*"}"#),
            Some(1.0)
        );
        assert_eq!(
            probe.message_count(&topology.dead_queue("default")).await,
            0
        );
        consumer.stop().await.expect("clean stop");
        producer.stop().await.expect("clean stop");
        worker.kill().await;
    }
}

#[tokio::test]
async fn a_slow_worker_gets_at_most_its_routes_concurrency_and_other_routes_keep_flowing() {
    let topology = TestTopology::new("workers-slow", &["default"]);
    let mut worker = Worker::start(Kind::Http, 0, &[]).await;
    let mut slow = route("slow", &worker.target());
    slow.concurrency = Some(4);
    let mut config = consumer_config(&topology, vec![slow, route("fast", "noop")]);
    config.consumer.prefetch = 64;
    config.consumer.concurrency = 8;
    let producer = RunningProducer::start(producer::config(&topology)).await;
    // `fast` jobs run the recorded noop handler, routed by name.
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let consumer = RunningConsumer::start(config, recording_handlers("c", &seen_tx)).await;

    let slow_jobs: Vec<JobSpec> = (0..16).map(|_| job("slow", "sleep:500", 1)).collect();
    let fast_jobs: Vec<JobSpec> = (0..10).map(|_| job("fast", "", 1)).collect();
    producer.submit_all(slow_jobs).await;
    let started = Instant::now();
    producer.submit_all(fast_jobs).await;
    // The fast route is not held behind the slow one: all ten run while the slow jobs (16 of
    // 500 ms, 4 at a time: 2 s) are still going.
    let fast_done =
        jobpipe_tests::consumer::next_seen(&mut seen, 10, Duration::from_secs(30)).await;
    let fast_time = fast_done.last().expect("ten").at - started;
    let slow_requests = worker.requests(16, Duration::from_secs(30)).await;
    let slow_last = slow_requests.last().expect("sixteen").at;
    assert!(
        fast_done.last().expect("ten").at < slow_last,
        "fast jobs took {fast_time:?}"
    );
    let most = slow_requests.iter().map(|r| r.number("in_flight")).max();
    assert_eq!(most, Some(4), "requests in flight at the worker");
    consumer.stop().await.expect("clean stop");
    producer.stop().await.expect("clean stop");
    worker.kill().await;
}

#[tokio::test]
async fn bad_routes_refuse_to_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases = [
        (
            "job_type = \"a\"\ntarget = \"smtp://mail/\"",
            "routes[0].target: unknown scheme \"smtp\"",
        ),
        (
            "job_type = \"a.**\"\ntarget = \"noop\"",
            "routes[0].job_type",
        ),
        (
            "job_type = \"a\"\ntarget = \"grpc://worker\"",
            "routes[0].target: a gRPC target needs a port",
        ),
        (
            "job_type = \"a\"\ntarget = \"nosuchhandler\"",
            "routes[0].target: no handler is registered as \"nosuchhandler\"",
        ),
        (
            "job_type = \"a\"\ntarget = \"http://w/\"\ntoken_file = \"/nonexistent/token\"",
            "routes[0].token_file: cannot read /nonexistent/token",
        ),
        (
            "job_type = \"a\"\ntarget = \"https://w/\"\n[routes.tls]\nca_file = \"/nonexistent/ca.pem\"",
            "routes[0].tls.ca_file",
        ),
    ];
    for (index, (entry, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("consumer-{index}.toml"));
        std::fs::write(&file, format!("[[routes]]\n{entry}\n")).expect("write config");
        let path = file.to_string_lossy().into_owned();
        let (status, stderr) = output_within(
            Duration::from_secs(30),
            "jobpipe-consumer",
            &["--config", &path],
            &[("JOBPIPE__ADMIN__LISTEN", "127.0.0.1:0")],
        )
        .await;
        assert_eq!(status.code(), Some(64), "{entry}: {stderr}");
        assert!(stderr.contains(expected), "{entry}: {stderr}");
    }
    // Two entries for one pattern.
    let file = dir.path().join("twice.toml");
    std::fs::write(
        &file,
        "[[routes]]\njob_type = \"a.*\"\ntarget = \"noop\"\n[[routes]]\njob_type = \"a.*\"\ntarget = \"http://w/\"\n",
    )
    .expect("write config");
    let path = file.to_string_lossy().into_owned();
    let (status, stderr) = output_within(
        Duration::from_secs(30),
        "jobpipe-consumer",
        &["--config", &path],
        &[],
    )
    .await;
    assert_eq!(status.code(), Some(64));
    assert!(
        stderr.contains("routes[1].job_type: a.* is routed twice (also routes[0])"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_worker_that_dies_mid_request_costs_that_attempt_and_the_job_runs_again() {
    for kind in Kind::ALL {
        let topology = TestTopology::new(
            &format!("workers-dies-{kind:?}").to_lowercase(),
            &["default"],
        );
        let mut worker = Worker::start(kind, 0, &[]).await;
        let port = worker.addr.port();
        let producer = RunningProducer::start(producer::config(&topology)).await;
        let consumer = RunningConsumer::start(
            consumer_config(&topology, vec![route("*", &worker.target())]),
            noop_handlers(),
        )
        .await;
        let id = producer.submit(job("work", "sleep:3000", 3)).await;
        let first = worker.requests(1, Duration::from_secs(30)).await;
        assert_eq!(first[0].number("attempt"), 1);
        worker.kill().await;
        // The worker may have done part of the job: that attempt failed. Its retry, 1 s later,
        // finds the worker gone and waits for it without spending another.
        let admin = consumer.admin_addr;
        eventually(
            Duration::from_secs(20),
            "the retry to wait for the worker",
            || async move { http_get(admin, "/readyz").await.0 == 503 },
        )
        .await;
        let mut worker = Worker::start(kind, port, &[]).await;
        let again = worker.requests(1, Duration::from_secs(30)).await;
        assert_eq!(again[0].text("job_id"), id, "{kind:?}");
        assert_eq!(again[0].number("attempt"), 2, "{kind:?}");
        let succeeded = r#"jobpipe_consumer_jobs_total{queue="default",type="unknown",outcome="succeeded",reason=""}"#;
        let admin = consumer.admin_addr;
        eventually(
            Duration::from_secs(20),
            "the job to succeed",
            || async move {
                let metrics = http_get(admin, "/metrics").await.1;
                sample(&metrics, succeeded) == Some(1.0)
            },
        )
        .await;
        let probe = Probe::connect().await.expect("probe");
        assert_eq!(
            probe.message_count(&topology.dead_queue("default")).await,
            0
        );
        consumer.stop().await.expect("clean stop");
        producer.stop().await.expect("clean stop");
        worker.kill().await;
    }
}

#[tokio::test]
async fn tls_workers_are_verified_and_one_that_fails_the_check_runs_nothing() {
    let dir = CertDir::new();
    let ca = Ca::new(dir.path(), "workers");
    let stranger = Ca::new(dir.path(), "stranger");
    let pem = ca.server("worker", &["127.0.0.1"]);
    let (cert, key) = (pem.cert.to_string_lossy(), pem.key.to_string_lossy());
    for kind in Kind::ALL {
        let topology = TestTopology::new(
            &format!("workers-tls-{kind:?}").to_lowercase(),
            &["default"],
        );
        let mut worker = Worker::start(kind, 0, &["--tls-cert", &cert, "--tls-key", &key]).await;
        let target = match kind {
            Kind::Http => format!("https://{}/", worker.addr),
            Kind::Grpc => format!("grpcs://{}", worker.addr),
        };
        let with_ca = |job_type: &str, ca_file: &std::path::Path| RouteConfig {
            tls: Some(ClientTlsConfig {
                ca_file: Some(ca_file.to_owned()),
                ..ClientTlsConfig::default()
            }),
            ..route(job_type, &target)
        };
        let routes = vec![
            with_ca("trusted", &ca.cert),
            with_ca("untrusted", &stranger.cert),
        ];
        let producer = RunningProducer::start(producer::config(&topology)).await;
        let consumer =
            RunningConsumer::start(consumer_config(&topology, routes), noop_handlers()).await;

        let trusted = producer.submit(job("trusted", "ok", 3)).await;
        let seen = worker.requests(1, Duration::from_secs(30)).await;
        assert_eq!(seen[0].text("job_id"), trusted, "{kind:?}");

        // A worker whose certificate the route does not trust is never sent the job: it waits,
        // and readiness says which worker fails the check.
        let untrusted = producer.submit(job("untrusted", "ok", 3)).await;
        let admin = consumer.admin_addr;
        eventually(
            Duration::from_secs(20),
            "readiness to name the untrusted worker",
            || async move {
                let (status, body) = http_get(admin, "/readyz").await;
                status == 503 && body.contains("worker for route untrusted (")
            },
        )
        .await;
        let metrics = consumer.metrics().await;
        let unreachable = sample(
            &metrics,
            r#"jobpipe_worker_requests_total{route="untrusted",outcome="unreachable",status="none"}"#,
        );
        assert!(unreachable.is_some_and(|n| n >= 1.0), "{kind:?}: {metrics}");
        assert!(
            worker
                .logged()
                .iter()
                .all(|r| r.text("job_id") != untrusted),
            "{kind:?}"
        );
        consumer.stop().await.expect("clean stop");
        // Drained, the waiting job went back to its queue, its attempt unspent.
        let probe = Probe::connect().await.expect("probe");
        probe
            .wait_for_count(&topology.work_queue("default"), 1, Duration::from_secs(10))
            .await;
        assert_eq!(
            probe.message_count(&topology.dead_queue("default")).await,
            0
        );
        producer.stop().await.expect("clean stop");
        worker.kill().await;
    }
}

#[tokio::test]
async fn a_route_sends_its_token_and_a_worker_refusing_a_caller_is_a_permanent_failure() {
    const TOKEN: &str = "wkr-7c1e93b0a4d2";
    let dir = tempfile::tempdir().expect("temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the token");
    let token_arg = token_file.to_string_lossy().into_owned();
    for kind in Kind::ALL {
        let topology = TestTopology::new(
            &format!("workers-token-{kind:?}").to_lowercase(),
            &["default"],
        );
        let mut worker = Worker::start(kind, 0, &["--token-file", &token_arg]).await;
        let mut with_token = route("signed", &worker.target());
        with_token.token_file = Some(token_file.clone());
        let routes = vec![with_token, route("anonymous", &worker.target())];
        let producer = RunningProducer::start(producer::config(&topology)).await;
        let consumer =
            RunningConsumer::start(consumer_config(&topology, routes), noop_handlers()).await;
        let signed = producer.submit(job("signed", "ok", 3)).await;
        let anonymous = producer.submit(job("anonymous", "ok", 3)).await;
        let seen = worker.requests(2, Duration::from_secs(30)).await;
        let seen = by_job(&seen);
        assert_eq!(seen[&signed][0].fields["authorization"], true, "{kind:?}");
        assert_eq!(seen[&signed][0].text("outcome"), "success", "{kind:?}");
        assert_eq!(
            seen[&anonymous][0].fields["authorization"], false,
            "{kind:?}"
        );
        let probe = Probe::connect().await.expect("probe");
        let dead = dead_letters(&probe, &topology, 1).await;
        let (why, error) = &dead[&anonymous];
        assert_eq!(why, "permanent", "{kind:?}: {error}");
        let expected = match kind {
            Kind::Http => "HTTP 401 Unauthorized",
            Kind::Grpc => "gRPC unauthenticated",
        };
        assert!(error.starts_with(expected), "{kind:?}: {error}");
        // The token is nowhere the consumer shows.
        for path in ["/metrics", "/readyz"] {
            assert!(!http_get(consumer.admin_addr, path).await.1.contains(TOKEN));
        }
        consumer.stop().await.expect("clean stop");
        producer.stop().await.expect("clean stop");
        worker.kill().await;
    }
}

//! The `jobpipe` CLI as a script runs it: never longer than `--timeout` against a producer that
//! does not answer, exit statuses to branch on (0 success, 1 refused, 64 usage, 75 retry later),
//! one line on standard error per error, and a payload read from standard input.

use jobpipe_runtime::amqp::AmqpUrl;
use jobpipe_tests::{
    broker::{Probe, TestTopology},
    certs::{Ca, CertDir},
    process::bin_path,
    producer::{self, RunningProducer},
    within,
};
use std::{
    net::SocketAddr,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};
use tokio::{io::AsyncWriteExt, net::TcpListener, process::Command};

/// The most any one run of the CLI may take before the test fails: far above every timeout the
/// tests give it, so that a CLI that ignores its timeout fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(60);

/// The `--timeout` of the runs against a silent producer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// One finished run of the CLI.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The one line the CLI printed to standard error, failing the test if it printed another
    /// number of lines.
    fn error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:?}");
        assert!(lines[0].starts_with("jobpipe: "), "{self:?}");
        lines[0]
    }
}

/// Runs `jobpipe` with `args`, `env` and `stdin` (closed after it is written), in an
/// environment without the caller's `JOBPIPE_*` settings, for at most [`LIMIT`].
async fn jobpipe(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Run {
    let mut command = Command::new(bin_path("jobpipe"));
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for key in [
        "JOBPIPE_ADDR",
        "JOBPIPE_CA",
        "JOBPIPE_CERT",
        "JOBPIPE_KEY",
        "JOBPIPE_TOKEN",
        "JOBPIPE_TIMEOUT",
    ] {
        command.env_remove(key);
    }
    command.envs(env.iter().copied());
    let started = Instant::now();
    let mut child = command.spawn().expect("spawn jobpipe");
    let mut input = child.stdin.take().expect("piped stdin");
    let bytes = stdin.to_vec();
    // Written beside the wait, so a CLI that does not read its input cannot block the test.
    let writer = tokio::spawn(async move {
        // A CLI that exits without reading closes the pipe: not the writer's failure.
        let _ = input.write_all(&bytes).await;
    });
    let output = within(LIMIT, "jobpipe to exit", child.wait_with_output())
        .await
        .expect("jobpipe's output");
    let took = started.elapsed();
    within(LIMIT, "the stdin writer", writer)
        .await
        .expect("stdin writer");
    Run {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took,
    }
}

/// A TCP listener that accepts every connection and never sends a byte: a hung producer.
async fn silent_producer() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A loopback port nothing listens on (bound, then released).
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// A run of the CLI and what its error line must say.
struct Case<'a> {
    what: &'a str,
    args: Vec<&'a str>,
    env: &'a [(&'a str, &'a str)],
    says: &'a str,
}

#[tokio::test]
async fn a_producer_that_never_answers_costs_at_most_the_timeout() {
    let silent = silent_producer().await;
    let dir = CertDir::new();
    let ca = Ca::new(dir.path(), "cli");
    let ca_file = ca.cert.to_str().expect("UTF-8 path").to_owned();
    let http = format!("http://{silent}");
    let https = format!("https://{silent}");
    let timeout = humantime::format_duration(TIMEOUT).to_string();
    let flag: &[&str] = &["--timeout", &timeout];
    let from_env = [("JOBPIPE_TIMEOUT", timeout.as_str())];
    let cases = [
        Case {
            what: "health, plaintext: the call is never answered",
            args: [&["--addr", &http], flag, &["health"]].concat(),
            env: &[],
            says: "Health.Check",
        },
        Case {
            what: "submit, plaintext: the call is never answered",
            args: [&["--addr", &http], flag, &["submit", "noop"]].concat(),
            env: &[],
            says: "SubmitJob",
        },
        Case {
            what: "health, TLS: the handshake is never answered",
            args: [&["--addr", &https, "--ca", &ca_file], flag, &["health"]].concat(),
            env: &[],
            says: "cannot reach the producer",
        },
        Case {
            what: "submit, the timeout from the environment",
            args: vec!["--addr", &http, "submit", "noop"],
            env: &from_env,
            says: "SubmitJob",
        },
    ];
    for Case {
        what,
        args,
        env,
        says,
    } in cases
    {
        let run = jobpipe(&args, env, b"").await;
        assert_eq!(run.code(), Some(75), "{what}: {run:?}");
        let line = run.error_line();
        assert!(line.contains(says), "{what}: {line}");
        assert!(
            line.contains(&format!("within {timeout}")),
            "{what}: {line}"
        );
        // It waited for its timeout, and not much longer: each step (connect, call) is bounded
        // by it, and only one of them waited here.
        assert!(run.took >= TIMEOUT, "{what}: gave up after {:?}", run.took);
        assert!(
            run.took < TIMEOUT + Duration::from_secs(3),
            "{what}: took {:?} with --timeout {timeout}",
            run.took
        );
    }
}

#[tokio::test]
async fn a_closed_port_is_worth_retrying() {
    let addr = format!("http://{}", closed_port().await);
    for command in [&["health"][..], &["submit", "noop"]] {
        let run = jobpipe(&[&["--addr", &addr][..], command].concat(), &[], b"").await;
        assert_eq!(run.code(), Some(75), "{command:?}: {run:?}");
        let line = run.error_line();
        assert!(
            line.contains(&format!("cannot reach the producer at {addr}")),
            "{line}"
        );
        assert!(run.took < Duration::from_secs(5), "{run:?}");
    }
}

#[tokio::test]
async fn usage_errors_exit_64_before_anything_connects() {
    // Nothing listens there: a CLI that connected before checking its arguments would exit 75.
    let addr = format!("http://{}", closed_port().await);
    // (arguments, words the error line names)
    let cases: [(&[&str], &[&str]); 10] = [
        (
            &["submit", "noop", "--job-id", "x", "--count", "2"],
            &["--job-id", "--count 2"],
        ),
        (
            &["submit", "noop", "--payload", "p", "--payload-file", "-"],
            &["--payload ", "--payload-file"],
        ),
        (&["submit", "noop", "--count", "0"], &["--count"]),
        (
            &["submit", "noop", "--payload-file", "/nonexistent/payload"],
            &["--payload-file", "/nonexistent/payload"],
        ),
        (&["submit"], &["<JOB_TYPE>"]),
        (&["--timeout", "0s", "health"], &["--timeout"]),
        (&["health", "--timeout", "5s"], &["goes before the command"]),
        (&["--addr", "127.0.0.1:50051", "health"], &["--addr"]),
        (&["--ca", "/nonexistent/ca.pem", "health"], &["--ca"]),
        (&["frobnicate"], &["frobnicate"]),
    ];
    for (args, names) in cases {
        let run = jobpipe(&[&["--addr", &addr][..], args].concat(), &[], b"").await;
        assert_eq!(run.code(), Some(64), "{args:?}: {run:?}");
        let line = run.error_line();
        for name in names {
            assert!(line.contains(name), "{args:?} should name {name}: {line}");
        }
        assert_eq!(run.stdout, "", "{args:?}");
    }
    // Help is not an error.
    let help = jobpipe(&["--help"], &[], b"").await;
    assert_eq!(help.code(), Some(0), "{help:?}");
    assert!(help.stdout.contains("--timeout"), "{help:?}");
}

#[tokio::test]
async fn the_producer_s_answers_become_exit_statuses() {
    let topology = TestTopology::new("cli-codes", &["default"]);
    let mut config = producer::config(&topology);
    config.limits.max_payload_bytes = 1024;
    let producer = RunningProducer::start(config).await;
    let addr = format!("http://{}", producer.grpc_addr);
    let marker = "PAYLOAD-MARKER-".repeat(100);

    let health = jobpipe(&["--addr", &addr, "health"], &[], b"").await;
    assert_eq!(health.code(), Some(0), "{health:?}");
    assert_eq!(health.stdout, "SERVING\n");

    let accepted = jobpipe(&["--addr", &addr, "submit", "noop"], &[], b"").await;
    assert_eq!(accepted.code(), Some(0), "{accepted:?}");
    assert_eq!(accepted.stdout.lines().count(), 1, "{accepted:?}");
    assert_eq!(accepted.stderr, "", "{accepted:?}");

    // (arguments, status, what the last error line says)
    let cases: [(&[&str], i32, &[&str]); 4] = [
        (
            &["submit", "bad type!"],
            1,
            &["SubmitJob", "INVALID_ARGUMENT", "job.type"],
        ),
        (
            &["submit", "noop", "--queue", "nosuchqueue"],
            1,
            &["SubmitJob", "FAILED_PRECONDITION"],
        ),
        // Over the payload limit: "retry later" in the API's contract (or shrink it).
        (
            &["submit", "noop", "--payload", &marker],
            75,
            &["SubmitJob", "RESOURCE_EXHAUSTED"],
        ),
        // Every copy refused: one line per job, the count, then the error.
        (
            &["submit", "bad type!", "--count", "3"],
            1,
            &["SubmitJobs", "3 of 3 jobs refused"],
        ),
    ];
    for (args, code, says) in cases {
        let run = jobpipe(&[&["--addr", &addr][..], args].concat(), &[], b"").await;
        assert_eq!(run.code(), Some(code), "{args:?}: {run:?}");
        assert_eq!(run.stdout, "", "{args:?}: no job id");
        let last = run.stderr.lines().last().expect("an error line");
        assert!(last.starts_with("jobpipe: "), "{args:?}: {run:?}");
        for word in says {
            assert!(last.contains(word), "{args:?} should say {word}: {last}");
        }
        assert!(!run.stderr.contains("PAYLOAD-MARKER"), "{run:?}");
    }
    let batch = jobpipe(
        &["--addr", &addr, "submit", "bad type!", "--count", "3"],
        &[],
        b"",
    )
    .await;
    let refusals = batch
        .stderr
        .lines()
        .filter(|line| line.starts_with("refused: ") && line.contains("INVALID_ARGUMENT"))
        .count();
    assert_eq!(refusals, 3, "a line per copy: {batch:?}");

    // Only the accepted job was queued: 1 promises that nothing was.
    let probe = Probe::connect().await.expect("probe");
    assert_eq!(
        probe.message_count(&topology.work_queue("default")).await,
        1
    );
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_producer_without_its_broker_is_worth_retrying() {
    let topology = TestTopology::new("cli-nobroker", &["default"]);
    let mut config = producer::config(&topology);
    config.amqp.url = format!("amqp://guest:guest@{}/%2f", closed_port().await)
        .parse::<AmqpUrl>()
        .expect("url");
    let producer = RunningProducer::spawn(config).await;
    let addr = format!("http://{}", producer.grpc_addr);

    let health = jobpipe(&["--addr", &addr, "health"], &[], b"").await;
    assert_eq!(health.code(), Some(75), "{health:?}");
    assert_eq!(health.stdout, "NOT_SERVING\n");
    assert!(health.error_line().contains("not serving"), "{health:?}");

    let submit = jobpipe(&["--addr", &addr, "submit", "noop"], &[], b"").await;
    assert_eq!(submit.code(), Some(75), "{submit:?}");
    assert!(submit.error_line().contains("UNAVAILABLE"), "{submit:?}");
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn payload_file_dash_submits_standard_input_byte_for_byte() {
    // No consumer: the jobs stay in the work queue for the probe to read.
    let topology = TestTopology::new("cli-stdin", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let addr = format!("http://{}", producer.grpc_addr);
    let queue = topology.work_queue("default");
    let probe = Probe::connect().await.expect("probe");

    let from_stdin: &[u8] = b"\x00\xff not UTF-8,\nseveral lines\r\n\x7f";
    let run = jobpipe(
        &[
            "--addr",
            &addr,
            "submit",
            "noop",
            "--payload-file",
            "-",
            "--job-id",
            "from-stdin",
        ],
        &[],
        from_stdin,
    )
    .await;
    assert_eq!(run.code(), Some(0), "{run:?}");
    assert_eq!(run.stdout, "from-stdin\n");
    probe
        .wait_for_count(&queue, 1, Duration::from_secs(10))
        .await;
    let message = probe.get(&queue).await.expect("the job in the work queue");
    assert_eq!(message.delivery.data, from_stdin);
    assert_eq!(
        message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str()),
        Some("from-stdin")
    );

    // A path reads the file, and standard input is left alone.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("payload.bin");
    std::fs::write(&path, b"from a file").expect("write");
    let run = jobpipe(
        &[
            "--addr",
            &addr,
            "submit",
            "noop",
            "--payload-file",
            path.to_str().expect("UTF-8 path"),
        ],
        &[],
        b"not this",
    )
    .await;
    assert_eq!(run.code(), Some(0), "{run:?}");
    probe
        .wait_for_count(&queue, 1, Duration::from_secs(10))
        .await;
    let message = probe.get(&queue).await.expect("the second job");
    assert_eq!(message.delivery.data, b"from a file");
    assert!(probe.get(&queue).await.is_none(), "two jobs, no more");
    producer.stop().await.expect("clean stop");
}

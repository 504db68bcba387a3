//! TLS and identities on the gRPC port, from clients the project did not write (Python grpcio
//! with stubs generated from the proto) and from the `jobpipe` CLI: tokens, roles and the
//! queues a token may submit to, mutual TLS with a certificate's name as identity and an expired
//! certificate refused, a rotated server certificate served without a restart or a dropped
//! connection, health open to probes, and `https://` never spoken as plaintext.

use jobpipe_producer::auth::AuthConfig;
use jobpipe_runtime::tls::ServerTlsConfig;
use jobpipe_tests::{
    broker::TestTopology,
    certs::{Ca, CertDir, Pem},
    eventually,
    process::output,
    producer::{self, RunningProducer},
    tools::{python_script, run_script},
    within,
};
use serde_json::Value;
use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The longest any step here waits.
const WAIT: Duration = Duration::from_secs(30);

fn sha256_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

const SUBMITTER: &str = "submitter-token-4f1c9a";
const READER: &str = "reader-token-77be02";

/// A callers file: `submitter` may submit to `default` only, `reader` may only read, `ops` is
/// known by its client certificate.
fn callers_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("callers.toml");
    let text = format!(
        "[[callers]]\nname = \"submitter\"\nroles = [\"submit\"]\nqueues = [\"default\"]\n\
         token_sha256 = \"{}\"\n\n\
         [[callers]]\nname = \"reader\"\nroles = [\"read\"]\ntoken_sha256 = \"{}\"\n\n\
         [[callers]]\nname = \"ops\"\nroles = [\"submit\"]\ncertificate = \"ops-client\"\n",
        sha256_hex(SUBMITTER),
        sha256_hex(READER)
    );
    std::fs::write(&path, text).expect("callers file");
    path
}

/// Runs the Python client against `addr` (by name, for the certificate) with `args`.
async fn python(addr: SocketAddr, args: &[&str]) -> Value {
    let target = format!("localhost:{}", addr.port());
    let mut all = vec![target.as_str()];
    all.extend_from_slice(args);
    let out = run_script("grpc_client.py", &all).await;
    serde_json::from_str(out.trim()).unwrap_or_else(|error| panic!("{out}: {error}"))
}

fn path(path: &Path) -> String {
    path.display().to_string()
}

async fn tls_producer(
    topology: &TestTopology,
    server: &Pem,
    client_ca: Option<&Ca>,
    callers: &Path,
) -> RunningProducer {
    let mut config = producer::config(topology);
    config.grpc.tls = ServerTlsConfig {
        cert_file: Some(server.cert.clone()),
        key_file: Some(server.key.clone()),
        client_ca_file: client_ca.map(|ca| ca.cert.clone()),
    };
    config.auth = AuthConfig {
        callers_file: Some(callers.to_owned()),
        anonymous_roles: vec![],
    };
    RunningProducer::start(config).await
}

#[tokio::test]
async fn tokens_roles_and_queues_decide_who_submits_over_tls() {
    let dir = CertDir::new();
    let ca = Ca::new(dir.path(), "grpc");
    let server = ca.server("server", &["localhost", "127.0.0.1"]);
    let callers = callers_file(dir.path());
    let topology = TestTopology::new("grpctls", &["default", "other"]);
    let producer = tls_producer(&topology, &server, None, &callers).await;
    let addr = producer.grpc_addr;
    let ca_file = path(&ca.cert);
    let with = |extra: &[&'static str]| -> Vec<String> {
        let mut args = vec!["submit".to_owned(), "--ca".to_owned(), ca_file.clone()];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    };
    let cases: [(&str, Vec<String>, &str, &str); 5] = [
        ("no token", with(&[]), "UNAUTHENTICATED", "credentials"),
        (
            "a wrong token",
            with(&["--token", "not-a-token"]),
            "UNAUTHENTICATED",
            "invalid credentials",
        ),
        (
            "a token without the role",
            with(&["--token", READER]),
            "PERMISSION_DENIED",
            "'submit'",
        ),
        (
            "a queue outside the token's list",
            with(&["--token", SUBMITTER, "--queue", "other"]),
            "PERMISSION_DENIED",
            "may not submit to queue 'other'",
        ),
        ("the right token", with(&["--token", SUBMITTER]), "OK", ""),
    ];
    for (case, args, code, details) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let answer = python(addr, &args).await;
        assert_eq!(answer["code"], code, "{case}: {answer}");
        let said = answer["details"].as_str().unwrap_or_default();
        assert!(said.contains(details), "{case}: {answer}");
        for secret in [SUBMITTER, READER] {
            assert!(!said.contains(secret), "{case}: {answer}");
        }
    }
    // Probes need no credentials.
    let health = python(addr, &["health", "--ca", &ca_file]).await;
    assert_eq!(health["status"], "SERVING", "{health}");
    let metrics = producer.admin_get("/metrics").await.1;
    assert!(
        metrics.contains(
            r#"jobpipe_producer_rpcs_total{method="SubmitJob",code="OK",caller="submitter"} 1"#
        ),
        "{metrics}"
    );

    // The CLI: TLS for https://, the token from the environment.
    let addr_url = format!("https://localhost:{}", addr.port());
    let (status, text) = output(
        "jobpipe",
        &["--addr", &addr_url, "--ca", &ca_file, "submit", "noop"],
        &[("JOBPIPE_TOKEN", SUBMITTER)],
    )
    .await;
    assert!(status.success(), "{text}");
    assert!(!text.contains(SUBMITTER), "{text}");

    // A renewed certificate is served to new connections without a restart, and a connection
    // opened before keeps working.
    let mut open = python_script("grpc_client.py");
    open.args([&format!("localhost:{}", addr.port()), "submit", "--again"])
        .args(["--ca", &ca_file, "--token", SUBMITTER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut open = open.spawn().expect("python client");
    let mut answers = BufReader::new(open.stdout.take().expect("stdout")).lines();
    let next_answer = |line: Option<String>| -> Value {
        serde_json::from_str(&line.expect("an answer")).expect("JSON")
    };
    let first = next_answer(
        within(WAIT, "the first call", answers.next_line())
            .await
            .unwrap(),
    );
    assert_eq!(first["code"], "OK", "{first}");
    let before = served_certificate(addr).await;
    let renewed = ca.server("renewed", &["localhost", "127.0.0.1"]);
    std::fs::copy(&renewed.key, &server.key).expect("key");
    std::fs::copy(&renewed.cert, &server.cert).expect("cert");
    eventually(WAIT, "the renewed certificate to be served", || async {
        served_certificate(addr).await != before
    })
    .await;
    let mut stdin = open.stdin.take().expect("stdin");
    stdin
        .write_all(b"again\n")
        .await
        .expect("signal the client");
    let second = next_answer(
        within(WAIT, "the second call", answers.next_line())
            .await
            .unwrap(),
    );
    assert_eq!(second["code"], "OK", "{second}");
    assert_eq!(
        second["states"],
        serde_json::json!(["READY"]),
        "the connection opened before the renewal was never dropped: {second}"
    );
    let after = python(
        addr,
        &with(&["--token", SUBMITTER])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(after["code"], "OK", "{after}");
    producer.stop().await.expect("clean stop");
}

/// The DER of the certificate the server presents now, fetched with openssl.
async fn served_certificate(addr: SocketAddr) -> String {
    let connect = format!("127.0.0.1:{}", addr.port());
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo | openssl s_client -connect {connect} -servername localhost 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .await
        .expect("openssl");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn a_client_certificate_names_the_caller_and_an_expired_one_is_refused() {
    let dir = CertDir::new();
    let ca = Ca::new(dir.path(), "server");
    let clients = Ca::new(dir.path(), "clients");
    let server = ca.server("server", &["localhost", "127.0.0.1"]);
    let ops = clients.client("ops", "ops-client", false);
    let expired = clients.client("expired", "ops-client", true);
    let callers = callers_file(dir.path());
    let topology = TestTopology::new("mtls", &["default"]);
    let producer = tls_producer(&topology, &server, Some(&clients), &callers).await;
    let addr = producer.grpc_addr;
    let ca_file = path(&ca.cert);
    let (ops_cert, ops_key) = (path(&ops.cert), path(&ops.key));
    let answer = python(
        addr,
        &[
            "submit", "--ca", &ca_file, "--cert", &ops_cert, "--key", &ops_key,
        ],
    )
    .await;
    assert_eq!(
        answer["code"], "OK",
        "the certificate names caller 'ops': {answer}"
    );
    let (old_cert, old_key) = (path(&expired.cert), path(&expired.key));
    let answer = python(
        addr,
        &[
            "submit", "--ca", &ca_file, "--cert", &old_cert, "--key", &old_key,
        ],
    )
    .await;
    assert_eq!(
        answer["code"], "UNAVAILABLE",
        "an expired certificate fails the handshake: {answer}"
    );
    let answer = python(addr, &["submit", "--ca", &ca_file, "--token", SUBMITTER]).await;
    assert_eq!(
        answer["code"], "UNAVAILABLE",
        "no client certificate, no connection: {answer}"
    );
    let metrics = producer.admin_get("/metrics").await.1;
    assert!(metrics.contains(r#"caller="ops""#), "{metrics}");
    producer.stop().await.expect("clean stop");
}

#[tokio::test]
async fn https_against_a_plaintext_server_fails_instead_of_speaking_plaintext() {
    let topology = TestTopology::new("plain", &["default"]);
    let producer = RunningProducer::start(producer::config(&topology)).await;
    let addr = format!("https://127.0.0.1:{}", producer.grpc_addr.port());
    let (status, text) = output("jobpipe", &["--addr", &addr, "health"], &[]).await;
    assert!(!status.success(), "{text}");
    assert!(text.contains("cannot reach the producer"), "{text}");
    let metrics = producer.admin_get("/metrics").await.1;
    assert!(
        !metrics.contains("jobpipe_producer_rpcs_total{"),
        "no call got through: {metrics}"
    );
    producer.stop().await.expect("clean stop");
}

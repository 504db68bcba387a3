//! TLS to the broker, against a real TLS listener on a throwaway RabbitMQ node that requires a
//! client certificate, with certificates the test makes: a good CA works end to end (a job is
//! submitted and processed over `amqps://`), and a wrong CA, a wrong name, a missing client
//! certificate each fail saying which check failed. Certificate-only login (`EXTERNAL`) works.
//! And an `amqps://` URL against a plain listener never falls back to plaintext.

use jobpipe_proto::v1::JobSpec;
use jobpipe_tests::{
    broker::TestTopology,
    certs::{Ca, CertDir, Pem},
    consumer::{self, RunningConsumer, next_seen, recording_handlers},
    node::{Node, NodeOptions},
    process::output,
    producer::{self, RunningProducer},
    within,
};
use std::{path::Path, time::Duration};
use tokio::{io::AsyncReadExt, net::TcpListener, sync::mpsc};

/// Environment overrides for one run of a binary.
type Env = Vec<(&'static str, String)>;

/// A node whose only listener is TLS, requiring a client certificate from `ca`, serving
/// `server`, and accepting certificate-only login.
async fn tls_node(ca: &Ca, server: &Pem) -> Node {
    let path = |path: &Path| path.display().to_string();
    Node::start(NodeOptions {
        stem: "tls".into(),
        config: vec![
            "listeners.tcp = none".into(),
            "listeners.ssl.default = 127.0.0.1:{amqp_port}".into(),
            format!("ssl_options.cacertfile = {}", path(&ca.cert)),
            format!("ssl_options.certfile = {}", path(&server.cert)),
            format!("ssl_options.keyfile = {}", path(&server.key)),
            "ssl_options.verify = verify_peer".into(),
            "ssl_options.fail_if_no_peer_cert = true".into(),
            "auth_mechanisms.1 = PLAIN".into(),
            "auth_mechanisms.2 = EXTERNAL".into(),
            "ssl_cert_login_from = common_name".into(),
        ],
        plugins: vec!["rabbitmq_auth_mechanism_ssl".into()],
    })
    .await
}

/// `jobpipe-producer --declare-topology` with `env`: whether it succeeded, and what it said.
async fn declare(env: &[(&str, String)]) -> (bool, String) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, text) = output("jobpipe-producer", &["--declare-topology"], &env).await;
    (status.success(), text)
}

#[tokio::test]
async fn tls_to_the_broker_is_verified_and_each_failed_check_is_named() {
    let dir = CertDir::new();
    let ca = Ca::new(dir.path(), "good");
    let other = Ca::new(dir.path(), "other");
    let server = ca.server("server", &["localhost", "127.0.0.1"]);
    let client = ca.client("client", "jobpipe-ext", false);
    let node = tls_node(&ca, &server).await;
    let url = format!("amqps://guest:guest@localhost:{}/%2f", node.amqp_port());
    let path = |path: &Path| path.display().to_string();
    let with = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("JOBPIPE__AMQP__URL", url.clone()),
            ("JOBPIPE__AMQP__TLS__CA_FILE", path(&ca.cert)),
            ("JOBPIPE__AMQP__TLS__CERT_FILE", path(&client.cert)),
            ("JOBPIPE__AMQP__TLS__KEY_FILE", path(&client.key)),
            ("JOBPIPE__AMQP__RECOVERY_TIMEOUT", "10s".into()),
            (
                "JOBPIPE__TOPOLOGY__PREFIX",
                format!("tls{}", std::process::id()),
            ),
        ];
        for (key, value) in extra {
            env.retain(|(known, _)| known != key);
            env.push((key, value.clone()));
        }
        env
    };

    let (ok, text) = declare(&with(&[])).await;
    assert!(ok, "the good CA: {text}");

    let cases: [(&str, Env, &str); 3] = [
        (
            "a CA that did not sign the broker's certificate",
            vec![("JOBPIPE__AMQP__TLS__CA_FILE", path(&other.cert))],
            "not signed by a trusted CA (set amqp.tls.ca_file)",
        ),
        (
            "a name the certificate does not carry",
            vec![("JOBPIPE__AMQP__TLS__SERVER_NAME", "broker.example".into())],
            "not valid for its address",
        ),
        (
            "no client certificate",
            vec![
                ("JOBPIPE__AMQP__TLS__CERT_FILE", String::new()),
                ("JOBPIPE__AMQP__TLS__KEY_FILE", String::new()),
            ],
            "require a client certificate",
        ),
    ];
    for (case, extra, expected) in cases {
        let env: Vec<_> = with(&extra)
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .collect();
        let (ok, text) = declare(&env).await;
        assert!(!ok, "{case}: should fail");
        assert!(text.contains(expected), "{case}: {text}");
        assert!(!text.contains("guest:guest"), "{case}: {text}");
    }

    // Certificate-only login: the broker takes the user from the certificate's CN.
    node.rabbitmqctl(&["add_user", "jobpipe-ext", "unused-password-1f9"])
        .await;
    node.rabbitmqctl(&["set_permissions", "jobpipe-ext", ".*", ".*", ".*"])
        .await;
    let external = with(&[
        (
            "JOBPIPE__AMQP__URL",
            format!("amqps://localhost:{}/%2f", node.amqp_port()),
        ),
        ("JOBPIPE__AMQP__LOGIN", "certificate".into()),
    ]);
    let (ok, text) = declare(&external).await;
    assert!(ok, "certificate login: {text}");

    // The whole path over TLS: a job submitted and processed.
    let topology = TestTopology::new("tlsjob", &["default"]);
    let tls = jobpipe_runtime::tls::ClientTlsConfig {
        ca_file: Some(ca.cert.clone()),
        cert_file: Some(client.cert.clone()),
        key_file: Some(client.key.clone()),
        server_name: None,
    };
    let mut config = producer::config(&topology);
    config.amqp.url = url.parse().expect("url");
    config.amqp.tls = tls.clone();
    let producer = RunningProducer::start(config).await;
    let mut config = consumer::config(&topology, "c");
    config.amqp.url = url.parse().expect("url");
    config.amqp.tls = tls;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let consumer = RunningConsumer::start(config, recording_handlers("c", &seen_tx)).await;
    let id = producer
        .submit(JobSpec {
            r#type: "noop".into(),
            ..JobSpec::default()
        })
        .await;
    let ran = next_seen(&mut seen, 1, Duration::from_secs(20)).await;
    assert_eq!(ran[0].job_id, id);
    consumer.stop().await.expect("clean stop");
    producer.stop().await.expect("clean stop");
    node.stop().await;
}

#[tokio::test]
async fn an_amqps_url_against_a_plain_listener_never_speaks_plaintext() {
    let dir = CertDir::new();
    let ca = Ca::new(dir.path(), "plain");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let topology = TestTopology::new("notls", &["default"]);
    let mut config = producer::config(&topology);
    config.amqp.url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", addr.port())
        .parse()
        .expect("url");
    config.amqp.tls.ca_file = Some(ca.cert.clone());
    let producer = RunningProducer::spawn(config).await;
    let (mut connection, _) = within(
        Duration::from_secs(10),
        "the producer to connect",
        listener.accept(),
    )
    .await
    .expect("accept");
    let mut first = [0; 3];
    within(
        Duration::from_secs(10),
        "its first bytes",
        connection.read_exact(&mut first),
    )
    .await
    .expect("read");
    // A TLS record (handshake, version 3.x), not the AMQP protocol header "AMQP".
    assert_eq!(first, [0x16, 0x03, first[2]], "{first:?}");
    assert_ne!(&first, b"AMQ");
    drop(connection);
    assert_eq!(producer.admin_get("/readyz").await.0, 503);
    producer.stop().await.expect("clean stop");
}

//! Secrets stay out of the logs at every level: both binaries run at trace level (the producer
//! through `log.level`, the consumer through a `RUST_LOG` that asks for the AMQP library's frame
//! tracing too) against a broker user with a password, take calls with right and wrong tokens,
//! reconnect, and refuse configurations that put the password where a number belongs. No line
//! holds the password or a token in any encoding.

use jobpipe_tests::{
    broker::TestTopology,
    eventually, http_get,
    node::{Node, NodeOptions},
    process::{Service, bin_path, free_port, output, wait_ready},
    secrets,
    tools::run_script,
    workers::{Kind, Worker},
};
use std::{path::Path, process::Stdio, time::Duration};

const PASSWORD: &str = "Pw-7f3c9e1ab44d";
const TOKEN: &str = "tok-5e8a0c7d2b91f6";
const WRONG_TOKEN: &str = "tok-0d4b7e2a9c13f5";
/// The token the consumer sends its workers.
const WORKER_TOKEN: &str = "wkr-3f9a61c2e8d704";

fn sha256_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Binary `name` with `env`, its standard output and error written to `log`.
fn start_logged(name: &str, env: &[(&str, String)], log: &Path) -> Service {
    let file = std::fs::File::create(log).expect("log file");
    let mut command = tokio::process::Command::new(bin_path(name));
    command
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(key, value)| (*key, value)))
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file);
    Service::spawn(command)
}

/// The sum of the consumer's `jobpipe_consumer_jobs_total` samples for `outcome`.
fn settled(metrics: &str, outcome: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("jobpipe_consumer_jobs_total{")
                && line.contains(&format!("outcome=\"{outcome}\""))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn no_log_line_at_trace_level_holds_the_password_or_a_token() {
    let node = Node::start(NodeOptions::new("secrets")).await;
    node.rabbitmqctl(&["add_user", "jp-secret", PASSWORD]).await;
    node.rabbitmqctl(&["set_permissions", "jp-secret", ".*", ".*", ".*"])
        .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let callers = dir.path().join("callers.toml");
    std::fs::write(
        &callers,
        format!(
            "[[callers]]\nname = \"app\"\nroles = [\"submit\"]\ntoken_sha256 = \"{}\"\n",
            sha256_hex(TOKEN)
        ),
    )
    .expect("callers file");
    let topology = TestTopology::new("secrets", &["default"]);
    let prefix = topology.config().prefix.to_string();
    let url = format!(
        "amqp://jp-secret:{PASSWORD}@127.0.0.1:{}/%2f",
        node.amqp_port()
    );
    let (grpc, producer_admin, consumer_admin) = (free_port(), free_port(), free_port());
    let common = [
        ("JOBPIPE__AMQP__URL", url.clone()),
        ("JOBPIPE__TOPOLOGY__PREFIX", prefix.clone()),
    ];
    let producer_log = dir.path().join("producer.log");
    let producer = start_logged(
        "jobpipe-producer",
        &[
            &common[..],
            &[
                ("JOBPIPE__LOG__LEVEL", "trace".to_owned()),
                ("JOBPIPE__GRPC__LISTEN", grpc.to_string()),
                ("JOBPIPE__ADMIN__LISTEN", producer_admin.to_string()),
                ("JOBPIPE__AUTH__CALLERS_FILE", callers.display().to_string()),
            ],
        ]
        .concat(),
        &producer_log,
    );
    // Workers that want a token, one per contract: the consumer sends it on every call.
    let worker_token = dir.path().join("worker-token");
    std::fs::write(&worker_token, WORKER_TOKEN).expect("worker token");
    let token_arg = worker_token.display().to_string();
    let mut http_worker = Worker::start(Kind::Http, 0, &["--token-file", &token_arg]).await;
    let mut grpc_worker = Worker::start(Kind::Grpc, 0, &["--token-file", &token_arg]).await;
    let consumer_config = dir.path().join("consumer.toml");
    std::fs::write(
        &consumer_config,
        format!(
            "[[routes]]\njob_type = \"secret.http\"\ntarget = \"{}\"\ntoken_file = \"{token_arg}\"\n\
             [[routes]]\njob_type = \"secret.grpc\"\ntarget = \"{}\"\ntoken_file = \"{token_arg}\"\n",
            http_worker.target(),
            grpc_worker.target(),
        ),
    )
    .expect("consumer config");
    let consumer_log = dir.path().join("consumer.log");
    let consumer = start_logged(
        "jobpipe-consumer",
        &[
            &common[..],
            &[
                (
                    "RUST_LOG",
                    "trace,lapin=trace,amq_protocol=trace,amq_protocol_tcp=trace".to_owned(),
                ),
                ("JOBPIPE__ADMIN__LISTEN", consumer_admin.to_string()),
                ("JOBPIPE_CONFIG", consumer_config.display().to_string()),
            ],
        ]
        .concat(),
        &consumer_log,
    );
    wait_ready(producer_admin).await;
    wait_ready(consumer_admin).await;

    // Calls with the right token and a wrong one, from Python and from the CLI.
    let target = grpc.to_string();
    let right = run_script("grpc_client.py", &[&target, "submit", "--token", TOKEN]).await;
    assert!(right.contains("\"OK\""), "{right}");
    let wrong = run_script(
        "grpc_client.py",
        &[&target, "submit", "--token", WRONG_TOKEN],
    )
    .await;
    assert!(wrong.contains("UNAUTHENTICATED"), "{wrong}");
    let addr = format!("http://{grpc}");
    let (status, text) = output(
        "jobpipe",
        &["--addr", &addr, "submit", "noop"],
        &[("JOBPIPE_TOKEN", TOKEN)],
    )
    .await;
    assert!(status.success(), "{text}");
    for job_type in ["secret.http", "secret.grpc"] {
        let sent = run_script(
            "grpc_client.py",
            &[&target, "submit", "--token", TOKEN, "--type", job_type],
        )
        .await;
        assert!(sent.contains("\"OK\""), "{sent}");
    }
    eventually(Duration::from_secs(20), "the four jobs to run", || async {
        settled(&http_get(consumer_admin, "/metrics").await.1, "succeeded") >= 4.0
    })
    .await;
    for worker in [&mut http_worker, &mut grpc_worker] {
        let seen = worker.requests(1, Duration::from_secs(10)).await;
        assert_eq!(seen[0].text("outcome"), "success", "{:?}", seen[0].fields);
    }

    // Every connection logs in again.
    node.close_all_connections("a test reconnects the services")
        .await;
    eventually(
        Duration::from_secs(20),
        "both services to reconnect",
        || async { node.connection_names().await.len() >= 2 },
    )
    .await;
    wait_ready(producer_admin).await;
    wait_ready(consumer_admin).await;
    producer.signal("TERM");
    consumer.signal("TERM");
    assert!(producer.exit(Duration::from_secs(30)).await.success());
    assert!(consumer.exit(Duration::from_secs(30)).await.success());

    // A password put where a number belongs.
    let mut refusals = String::new();
    for key in [
        "JOBPIPE__ADMIN__MAX_CONNECTIONS",
        "JOBPIPE__AMQP__HEARTBEAT",
    ] {
        let (status, text) = output(
            "jobpipe-producer",
            &["--check-config"],
            &[(key, PASSWORD), ("JOBPIPE__LOG__LEVEL", "trace")],
        )
        .await;
        assert!(!status.success(), "{key}: {text}");
        refusals.push_str(&text);
    }
    assert!(
        refusals.contains("admin.max_connections") && refusals.contains("amqp.heartbeat"),
        "{refusals}"
    );

    // A broker that does not answer.
    let unreachable_log = dir.path().join("unreachable.log");
    let unreachable = start_logged(
        "jobpipe-producer",
        &[
            (
                "JOBPIPE__AMQP__URL",
                format!("amqp://jp-secret:{PASSWORD}@127.0.0.1:1/%2f"),
            ),
            ("JOBPIPE__LOG__LEVEL", "trace".to_owned()),
            ("JOBPIPE__GRPC__LISTEN", "127.0.0.1:0".to_owned()),
            ("JOBPIPE__ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
        ],
        &unreachable_log,
    );
    eventually(
        Duration::from_secs(20),
        "a failed connection logged",
        || {
            let log = unreachable_log.clone();
            async move {
                std::fs::read_to_string(log).is_ok_and(|text| text.contains("Broker link is down"))
            }
        },
    )
    .await;
    unreachable.signal("KILL");
    refusals.push_str(&std::fs::read_to_string(&unreachable_log).expect("log"));

    let logs = [
        (
            "producer",
            std::fs::read_to_string(&producer_log).expect("log"),
        ),
        (
            "consumer",
            std::fs::read_to_string(&consumer_log).expect("log"),
        ),
        ("refusals", refusals),
    ];
    for (name, text) in &logs {
        for (secret_name, secret) in [
            ("the password", PASSWORD),
            ("the token", TOKEN),
            ("the wrong token", WRONG_TOKEN),
            ("the workers' token", WORKER_TOKEN),
        ] {
            assert_eq!(
                secrets::find(text, secret),
                None,
                "{name}'s output holds {secret_name}:\n{text}"
            );
        }
    }
    // The logs were at trace level (the consumer's own code has nothing to say at trace; the
    // AMQP library, asked for by RUST_LOG, would print every frame) and saw both logins.
    let (producer_text, consumer_text) = (&logs[0].1, &logs[1].1);
    assert!(
        producer_text.contains("\"level\":\"TRACE\""),
        "{producer_text}"
    );
    assert!(
        consumer_text.matches("Connected to the broker.").count() >= 2,
        "{consumer_text}"
    );
    node.stop().await;
}

//! Least privilege on the broker, on a throwaway node: each part of an installation runs with
//! exactly the permissions `jobpipe broker-permissions` prints (applied with the very commands it
//! prints), each service stops at start naming the permission it lacks, and an AMQP client with
//! other credentials cannot write into a work queue.

use jobpipe_proto::v1::JobSpec;
use jobpipe_tests::{
    broker::{Probe, TestTopology},
    consumer::{self, RunningConsumer, next_seen, recording_handlers},
    node::{Node, NodeOptions},
    process::{free_port, output, output_within},
    producer::{self, RunningProducer},
    within,
};
use lapin::{BasicProperties, options::BasicPublishOptions, options::ConfirmSelectOptions};
use std::time::Duration;
use tokio::sync::mpsc;

const USERS: [(&str, &str); 4] = [
    ("jp-topology", "topology-pw-5d1e"),
    ("jp-producer", "producer-pw-93ab"),
    ("jp-consumer", "consumer-pw-c470"),
    ("jp-outsider", "outsider-pw-0b6f"),
];

/// `amqp://user:password@node/%2f`.
fn url(node: &Node, (user, password): (&str, &str)) -> String {
    format!(
        "amqp://{user}:{password}@127.0.0.1:{}/%2f",
        node.amqp_port()
    )
}

/// Runs `jobpipe broker-permissions` for `prefix` and executes what it prints against `node`.
async fn apply_printed_permissions(node: &Node, prefix: &str) {
    let (status, commands) = output(
        "jobpipe",
        &[
            "broker-permissions",
            "--prefix",
            prefix,
            "--queue",
            "default",
            "--topology-user",
            USERS[0].0,
            "--producer-user",
            USERS[1].0,
            "--consumer-user",
            USERS[2].0,
        ],
        &[],
    )
    .await;
    assert!(status.success(), "{commands}");
    assert_eq!(commands.matches("rabbitmqctl set_permissions").count(), 3);
    let script = format!(
        "set -e\nrabbitmqctl() {{ command rabbitmqctl -n '{}' \"$@\" >/dev/null; }}\n{commands}",
        node.name()
    );
    let ran = within(
        Duration::from_secs(60),
        "the printed commands",
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output(),
    )
    .await
    .expect("sh");
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
}

/// A service binary run against `node` as `user`, only checking the topology: its exit status
/// and output (it is expected to stop by itself).
async fn run_as(
    binary: &str,
    args: &[&str],
    node: &Node,
    user: (&str, &str),
    prefix: &str,
) -> (Option<i32>, String) {
    let url = url(node, user);
    let admin = free_port().to_string();
    let mut env = vec![
        ("JOBPIPE__AMQP__URL", url.as_str()),
        ("JOBPIPE__TOPOLOGY__PREFIX", prefix),
        ("JOBPIPE__TOPOLOGY__DECLARE", "false"),
        ("JOBPIPE__ADMIN__LISTEN", admin.as_str()),
    ];
    if binary == "jobpipe-producer" {
        env.push(("JOBPIPE__GRPC__LISTEN", "127.0.0.1:0"));
    }
    let (status, text) = output_within(Duration::from_secs(60), binary, args, &env).await;
    (status.code(), text)
}

#[tokio::test]
async fn each_part_runs_with_exactly_its_permissions_and_names_what_it_lacks() {
    let node = Node::start(NodeOptions::new("perms")).await;
    for (user, password) in USERS {
        node.rabbitmqctl(&["add_user", user, password]).await;
    }
    let topology = TestTopology::new("perms", &["default"]);
    let prefix = topology.config().prefix.to_string();
    apply_printed_permissions(&node, &prefix).await;
    node.rabbitmqctl(&[
        "set_permissions",
        USERS[3].0,
        "^other\\.",
        "^other\\.",
        "^other\\.",
    ])
    .await;

    // The topology is the topology job's: a service's user cannot declare it.
    let (code, text) = run_as(
        "jobpipe-producer",
        &["--declare-topology"],
        &node,
        USERS[1],
        &prefix,
    )
    .await;
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains(&format!("access to exchange '{prefix}.jobs'"))
            && text.contains("refused for user 'jp-producer'")
            && text.contains("needs configure access")
            && text.contains("Least privilege"),
        "{text}"
    );
    let (code, text) = run_as(
        "jobpipe-producer",
        &["--declare-topology"],
        &node,
        USERS[0],
        &prefix,
    )
    .await;
    assert_eq!(code, Some(0), "{text}");

    // Each service with exactly its permissions: jobs submitted now and later, run, retried
    // through the ladder and dead-lettered.
    let mut config = producer::config(&topology);
    config.amqp.url = url(&node, USERS[1]).parse().expect("url");
    config.topology.declare = false;
    let producer = RunningProducer::start(config).await;
    let mut config = consumer::config(&topology, "c");
    config.amqp.url = url(&node, USERS[2]).parse().expect("url");
    config.topology.declare = false;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let consumer = RunningConsumer::start(config, recording_handlers("c", &seen_tx)).await;
    let job = |job_type: &str, delay: i64| JobSpec {
        r#type: job_type.into(),
        // The failing job fails every attempt, and is retried once.
        payload: b"always".to_vec().into(),
        max_attempts: 2,
        delay: (delay > 0).then_some(prost_types::Duration {
            seconds: delay,
            nanos: 0,
        }),
        ..JobSpec::default()
    };
    producer.submit(job("noop", 0)).await;
    producer.submit(job("noop", 1)).await;
    producer.submit(job("fail", 0)).await;
    // Two noops, and the failing job twice (its retry went through the ladder).
    next_seen(&mut seen, 4, Duration::from_secs(30)).await;
    let guest = Probe::connect_to(&node.amqp_url()).await.expect("guest");
    guest
        .wait_for_count(&topology.dead_queue("default"), 1, Duration::from_secs(20))
        .await;
    consumer.stop().await.expect("clean stop");
    producer.stop().await.expect("clean stop");

    // With less, each service stops at start and names what it lacks.
    let work = topology.work_queue("default");
    let escaped = prefix.replace('.', "\\.");
    let cases = [
        (
            "a producer that may not schedule",
            "jobpipe-producer",
            USERS[1].0,
            [
                "^$".to_owned(),
                format!("^{escaped}\\.jobs$"),
                "^$".to_owned(),
            ],
            format!("access to exchange '{prefix}.delay."),
        ),
        (
            "a consumer that may not dead-letter",
            "jobpipe-consumer",
            USERS[2].0,
            [
                "^$".to_owned(),
                format!("^{escaped}\\.delay\\.[0-9]{{2}}$"),
                format!("^{escaped}\\.default$"),
            ],
            format!("access to exchange '{prefix}.dead'"),
        ),
        (
            "a consumer that may not read its queue",
            "jobpipe-consumer",
            USERS[2].0,
            [
                "^$".to_owned(),
                format!("^{escaped}\\.(dead|delay\\.[0-9]{{2}})$"),
                "^$".to_owned(),
            ],
            format!("access to queue '{work}'"),
        ),
    ];
    for (case, binary, user, [configure, write, read], object) in cases {
        node.rabbitmqctl(&["set_permissions", user, &configure, &write, &read])
            .await;
        let password = USERS.iter().find(|(u, _)| *u == user).expect("user").1;
        let (code, text) = run_as(binary, &[], &node, (user, password), &prefix).await;
        assert_eq!(code, Some(78), "{case}: {text}");
        let needs = if binary == "jobpipe-producer" || case.contains("dead-letter") {
            "publishing needs write access"
        } else {
            "consuming needs read access"
        };
        assert!(
            text.contains(&object) && text.contains(needs) && text.contains("Least privilege"),
            "{case}: {text}"
        );
        assert!(!text.contains(password), "{case}: {text}");
    }

    // Other credentials cannot put anything into a work queue, not even through the default
    // exchange; neither can a service's.
    for user in [USERS[3], USERS[2], USERS[1]] {
        let client = Probe::connect_to(&url(&node, user)).await.expect("connect");
        client
            .channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let published = within(Duration::from_secs(10), "the publish", async {
            client
                .channel
                .basic_publish(
                    "".into(),
                    work.as_str().into(),
                    BasicPublishOptions::default(),
                    b"forged",
                    BasicProperties::default(),
                )
                .await?
                .await
        })
        .await;
        let error = published.expect_err("refused");
        assert!(
            error
                .to_string()
                .contains("access to exchange 'amq.default'"),
            "{}: {error}",
            user.0
        );
    }
    assert_eq!(guest.message_count(&work).await, 0);
    node.stop().await;
}

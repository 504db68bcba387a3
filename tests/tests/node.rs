//! The throwaway-node harness itself, against real nodes: a persistent message in a quorum queue
//! survives a stopped app, a memory alarm and a killed node, and a three-node cluster keeps it
//! readable when the node it was published through dies, then takes that node back.

use jobpipe_tests::{
    eventually,
    node::{Cluster, Node, NodeOptions},
    within,
};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
    options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use std::time::Duration;

const QUEUE: &str = "jp-node-test";
/// How long one AMQP operation may take.
const OP: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_quorum_message_survives_a_stopped_app_an_alarm_and_a_kill() {
    let node = Node::start(NodeOptions::new("single")).await;
    let url = node.amqp_url();

    let (first, channel) = connect(&url, "first").await;
    assert_eq!(node.connection_names().await, ["first"]);
    declare_quorum_queue(&channel).await;
    let confirm = within(OP, "the publish to be written", publish(&channel, b"one")).await;
    assert_acked(within(OP, "the first confirm", confirm).await);

    node.stop_app().await;
    eventually(OP, "the client to see the app stop", || async {
        !first.status().connected()
    })
    .await;
    node.start_app().await;
    let (_second, channel) = connect(&url, "second").await;
    assert_eq!(message_count(&channel).await, 1, "after stop_app/start_app");

    // RabbitMQ blocks a connection at its first publish while an alarm is raised.
    node.memory_alarm(true).await;
    let (blocked, channel) = connect(&url, "blocked").await;
    let mut confirm = within(OP, "the publish to be written", publish(&channel, b"two")).await;
    eventually(OP, "the connection to be blocked", || async {
        blocked.status().blocked()
    })
    .await;
    let early = tokio::time::timeout(Duration::from_secs(2), &mut confirm).await;
    assert!(early.is_err(), "a blocked publish was confirmed: {early:?}");
    node.memory_alarm(false).await;
    assert_acked(within(OP, "the confirm after the alarm", confirm).await);
    eventually(OP, "the connection to be unblocked", || async {
        !blocked.status().blocked()
    })
    .await;

    node.kill().await;
    eventually(OP, "the client to see the node die", || async {
        !blocked.status().connected()
    })
    .await;
    node.restart().await;
    let (_third, channel) = connect(&url, "third").await;
    assert_eq!(bodies(&channel).await, [b"one".to_vec(), b"two".to_vec()]);

    node.stop().await;
}

#[tokio::test]
async fn a_cluster_keeps_a_quorum_message_through_a_killed_member_and_takes_it_back() {
    let cluster = Cluster::start("trio", 3).await;
    let [first, second, _] = &cluster.nodes[..] else {
        panic!("three nodes");
    };
    let mut names: Vec<&str> = cluster.nodes.iter().map(Node::name).collect();
    names.sort_unstable();

    let (_publisher, channel) = connect(&first.amqp_url(), "publisher").await;
    declare_quorum_queue(&channel).await;
    let confirm = within(OP, "the publish to be written", publish(&channel, b"kept")).await;
    assert_acked(within(OP, "the confirm", confirm).await);
    assert_eq!(members(first).await, names, "the queue's members");
    // Each node names only the connections it serves, though the listing is cluster-wide.
    assert_eq!(first.connection_names().await, ["publisher"]);
    assert!(second.connection_names().await.is_empty());

    first.kill().await;
    let (reader, mut channel) = connect(&second.amqp_url(), "reader").await;
    assert_eq!(second.connection_names().await, ["reader"]);
    // The leader was on the dead node: until the survivors elect a new one, a get can fail (and
    // close its channel), but it must never find the queue empty.
    let body = within(
        Duration::from_secs(30),
        "the message from a survivor",
        async {
            loop {
                let options = BasicGetOptions { no_ack: true };
                match within(OP, "a basic.get", channel.basic_get(QUEUE.into(), options)).await {
                    Ok(Some(message)) => break message.delivery.data,
                    Ok(None) => panic!("the queue lost its message"),
                    Err(error) => {
                        eprintln!("basic.get through a survivor failed, again: {error}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        channel = reader.create_channel().await.expect("a channel");
                    }
                }
            }
        },
    )
    .await;
    assert_eq!(body, b"kept");

    first.restart().await;
    cluster.wait_all_running(Duration::from_secs(60)).await;
    assert_eq!(
        members(first).await,
        names,
        "the queue's members after the rejoin"
    );

    cluster.stop().await;
}

/// A named connection to `url` and a channel with publisher confirms.
async fn connect(url: &str, name: &str) -> (Connection, Channel) {
    within(OP, &format!("connection {name}"), async {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = Connection::connect(url, properties).await.expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        (connection, channel)
    })
    .await
}

async fn declare_quorum_queue(channel: &Channel) {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let declare = channel.queue_declare(QUEUE.into(), options, arguments);
    within(OP, "the queue declare", declare)
        .await
        .expect("declare");
}

/// Publishes `body` to the queue, persistent and mandatory; the confirm is the caller's to await.
async fn publish(channel: &Channel, body: &[u8]) -> PublisherConfirm {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let properties = BasicProperties::default().with_delivery_mode(2);
    (channel.basic_publish("".into(), QUEUE.into(), options, body, properties))
        .await
        .expect("publish")
}

fn assert_acked(confirmation: lapin::Result<Confirmation>) {
    let confirmation = confirmation.expect("a confirm");
    assert!(
        matches!(confirmation, Confirmation::Ack(None)),
        "not accepted: {confirmation:?}"
    );
}

async fn message_count(channel: &Channel) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declare = channel.queue_declare(QUEUE.into(), passive, FieldTable::default());
    within(OP, "a passive declare", declare)
        .await
        .expect("the queue exists")
        .message_count()
}

/// Takes every message from the queue: their bodies in queue order.
async fn bodies(channel: &Channel) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    let options = BasicGetOptions { no_ack: true };
    while let Some(message) = within(OP, "a basic.get", channel.basic_get(QUEUE.into(), options))
        .await
        .expect("basic.get")
    {
        bodies.push(message.delivery.data);
    }
    bodies
}

/// The members of the queue as `node` lists them, sorted.
async fn members(node: &Node) -> Vec<String> {
    let listed = node
        .rabbitmqctl(&["list_queues", "name", "members", "--formatter", "json"])
        .await;
    let queues: Vec<serde_json::Value> = serde_json::from_str(&listed).expect("json");
    let queue = queues
        .iter()
        .find(|queue| queue["name"] == QUEUE)
        .unwrap_or_else(|| panic!("{QUEUE} is not in {listed}"));
    let mut members: Vec<String> = queue["members"]
        .as_array()
        .expect("a member list")
        .iter()
        .map(|member| member.as_str().expect("a node name").to_owned())
        .collect();
    members.sort_unstable();
    members
}

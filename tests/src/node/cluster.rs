//! Several throwaway nodes joined into one RabbitMQ cluster.

use super::{Node, NodeOptions};
use crate::eventually;
use futures::future::join_all;
use std::time::Duration;

/// Several nodes joined into one cluster.
#[derive(Debug)]
pub struct Cluster {
    /// The members; the first is the one the others joined.
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts `size` nodes at once, joins the second and later ones to the first, enables every
    /// feature flag, and waits until every member sees all of them running.
    pub async fn start(stem: &str, size: usize) -> Self {
        assert!(size > 0, "a cluster needs a node");
        let nodes = join_all((0..size).map(|_| Node::start(NodeOptions::new(stem)))).await;
        let cluster = Self { nodes };
        let (first, rest) = cluster.nodes.split_first().expect("one node at least");
        for node in rest {
            node.stop_app().await;
            node.rabbitmqctl(&["join_cluster", first.name()]).await;
            node.start_app().await;
        }
        first.rabbitmqctl(&["enable_feature_flag", "all"]).await;
        cluster.wait_all_running(Duration::from_secs(60)).await;
        cluster
    }

    /// Each member's AMQP URL, in member order.
    pub fn amqp_urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::amqp_url).collect()
    }

    /// Waits until every member reports every member as running, failing the test after `limit`.
    pub async fn wait_all_running(&self, limit: Duration) {
        let mut all: Vec<&str> = self.nodes.iter().map(Node::name).collect();
        all.sort_unstable();
        let all = &all;
        eventually(limit, "every cluster member to run", || async move {
            for node in &self.nodes {
                let mut running = node.running_nodes().await;
                running.sort_unstable();
                if running != *all {
                    return false;
                }
            }
            true
        })
        .await;
    }

    /// Stops every member and removes their directories.
    pub async fn stop(self) {
        join_all(self.nodes.into_iter().map(Node::stop)).await;
    }
}

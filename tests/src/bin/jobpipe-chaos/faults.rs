//! The faults, and how long jobpipe takes to serve again after each. A broker fault is measured
//! from the moment the broker is back (or, in a cluster, from the moment the node died, the
//! others being up) until the producer confirms a canary job and every service is ready.

use crate::{queues, services::Services};
use jobpipe_proto::v1::{JobSpec, SubmitJobRequest, job_service_client::JobServiceClient};
use jobpipe_tests::node::Node;
use std::{fmt, time::Duration};
use tokio::time::Instant;
use tonic::transport::Channel;

/// How long a stopped or killed broker stays away.
const OUTAGE: Duration = Duration::from_secs(2);
/// How long a memory alarm lasts.
const ALARM: Duration = Duration::from_secs(3);
/// The longest recovery the run waits for before calling it failed.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

/// One thing that goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// `rabbitmqctl stop_app`, then `start_app` (every connection is closed by the broker).
    BrokerStop,
    /// `kill -9` of the broker, then a restart (sockets reset, no goodbye).
    BrokerKill,
    /// `rabbitmqctl close_all_connections`.
    CloseConnections,
    /// A memory alarm: publishers are blocked for a while.
    MemoryAlarm,
    /// A consumer killed with SIGKILL mid-work, then started again.
    ConsumerKill,
    /// A consumer stopped with SIGTERM (it drains), then started again.
    ConsumerTerm,
    /// In a cluster: `kill -9` of the node the producer is connected to; it restarts and rejoins
    /// after the services have moved to another node.
    NodeKill,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BrokerStop => "broker stop/start",
            Self::BrokerKill => "broker kill -9",
            Self::CloseConnections => "close connections",
            Self::MemoryAlarm => "memory alarm",
            Self::ConsumerKill => "consumer SIGKILL",
            Self::ConsumerTerm => "consumer SIGTERM",
            Self::NodeKill => "cluster node kill -9",
        })
    }
}

/// One fault as it happened.
#[derive(Debug, Clone)]
pub(crate) struct Injected {
    /// Which.
    pub(crate) fault: Fault,
    /// When it began, from the start of the run.
    pub(crate) at: Duration,
    /// How long the broker (or the consumer) was away.
    pub(crate) outage: Duration,
    /// From its return to serving again.
    pub(crate) recovery: Duration,
    /// The consumer slot a consumer fault hit.
    pub(crate) consumer: Option<usize>,
}

impl Injected {
    /// Whether the broker was at fault (recovery is measured against the 2 s target).
    pub(crate) fn is_broker_fault(&self) -> bool {
        !matches!(self.fault, Fault::ConsumerKill | Fault::ConsumerTerm)
    }
}

/// How long a restarted node may take to bring its quorum queue members back.
const MEMBERS_LIMIT: Duration = Duration::from_secs(60);

/// Injects faults into `services` on `nodes`.
pub(crate) struct Injector<'a> {
    /// The broker nodes (one, or a cluster).
    pub(crate) nodes: &'a [Node],
    /// The run's topology prefix.
    pub(crate) prefix: &'a str,
    /// The services under test.
    pub(crate) services: &'a mut Services,
    /// The producer, for canary jobs.
    pub(crate) client: JobServiceClient<Channel>,
    /// When the run started.
    pub(crate) started: Instant,
    /// Canary jobs submitted so far (their ids are `canary-N`).
    pub(crate) canaries: usize,
    /// The consumer slot the next consumer fault hits.
    pub(crate) next_consumer: usize,
}

impl Injector<'_> {
    /// Injects `fault`, waits until jobpipe serves again, and says how it went.
    pub(crate) async fn inject(&mut self, fault: Fault) -> Injected {
        let at = self.started.elapsed();
        let began = Instant::now();
        let mut consumer = None;
        let back = match fault {
            Fault::BrokerStop => {
                self.nodes[0].stop_app().await;
                tokio::time::sleep(OUTAGE).await;
                self.nodes[0].start_app().await;
                Instant::now()
            }
            Fault::BrokerKill => {
                self.nodes[0].kill().await;
                tokio::time::sleep(OUTAGE).await;
                self.nodes[0].restart().await;
                Instant::now()
            }
            Fault::CloseConnections => {
                for node in self.nodes {
                    node.close_all_connections("chaos").await;
                }
                Instant::now()
            }
            Fault::MemoryAlarm => {
                for node in self.nodes {
                    node.memory_alarm(true).await;
                }
                tokio::time::sleep(ALARM).await;
                for node in self.nodes {
                    node.memory_alarm(false).await;
                }
                Instant::now()
            }
            Fault::ConsumerKill | Fault::ConsumerTerm => {
                let slot = self.next_consumer % self.services.consumer_slots();
                self.next_consumer += 1;
                consumer = Some(slot);
                let signal = if fault == Fault::ConsumerKill {
                    "KILL"
                } else {
                    "TERM"
                };
                self.services.stop_consumer(slot, signal).await;
                self.services.start_consumer(slot);
                Instant::now()
            }
            Fault::NodeKill => {
                let victim = self.node_in_use().await;
                self.nodes[victim].kill().await;
                let back = Instant::now();
                let recovery = self.serving(back).await;
                self.nodes[victim].restart().await;
                // A three-node quorum survives one failure at a time: the next fault waits until
                // the restarted node's members of the run's queues are back (not timed).
                self.all_members_online(victim).await;
                return Injected {
                    fault,
                    at,
                    outage: back - began,
                    recovery,
                    consumer,
                };
            }
        };
        Injected {
            fault,
            at,
            outage: back - began,
            recovery: self.serving(back).await,
            consumer,
        }
    }

    /// Waits until every queue of the run lists all its members online, as `victim`'s
    /// neighbour sees it; says so, and goes on, if that takes longer than [`MEMBERS_LIMIT`].
    async fn all_members_online(&self, victim: usize) {
        let node = &self.nodes[(victim + 1) % self.nodes.len()];
        let deadline = Instant::now() + MEMBERS_LIMIT;
        loop {
            let rows = queues::list(node, self.prefix, &["members", "online"]).await;
            let offline: Vec<&str> = (rows.iter())
                .filter(|row| !matches!(&row[..], [_, members, online] if queues::all_online(members, online)))
                .map(|row| row[0].as_str())
                .collect();
            if offline.is_empty() && !rows.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "chaos: members still offline {MEMBERS_LIMIT:?} after a node restart: {offline:?}"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// How long after `back` the producer confirmed a canary and every service was ready.
    async fn serving(&mut self, back: Instant) -> Duration {
        self.canaries += 1;
        let request = SubmitJobRequest {
            job: Some(JobSpec {
                job_id: format!("canary-{}", self.canaries),
                r#type: "noop".into(),
                ..JobSpec::default()
            }),
        };
        loop {
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                self.client.submit_job(request.clone()),
            )
            .await;
            let refusal = match answer {
                Ok(Ok(_)) => break,
                Ok(Err(status)) => format!("{:?}: {}", status.code(), status.message()),
                Err(_) => "no answer in 5 s".to_owned(),
            };
            assert!(
                back.elapsed() < RECOVERY_LIMIT,
                "jobpipe does not serve {RECOVERY_LIMIT:?} after the fault; the last canary got {refusal}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.services.wait_ready().await;
        back.elapsed()
    }

    /// The index of the node the producer's connection is on.
    async fn node_in_use(&self) -> usize {
        for (index, node) in self.nodes.iter().enumerate() {
            let names = node.connection_names().await;
            if names
                .iter()
                .any(|name| name.starts_with("jobpipe-producer"))
            {
                return index;
            }
        }
        panic!("the producer is connected to no node");
    }
}

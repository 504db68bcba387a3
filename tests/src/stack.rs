//! A producer and a recording consumer, in process, on a topology of their own: the setup most
//! process-path tests share.

use crate::{
    broker::TestTopology,
    consumer::{self, RunningConsumer, Seen, recording_handlers},
    producer::{self, RunningProducer},
};
use jobpipe_proto::v1::JobSpec;
use tokio::sync::mpsc;

/// A running producer and consumer (instance `c`, every built-in handler recorded).
#[derive(Debug)]
pub struct Stack {
    /// The consumer; attempts it sees arrive on `seen`.
    pub consumer: RunningConsumer,
    /// The producer.
    pub producer: RunningProducer,
    /// Every attempt the consumer's handlers saw.
    pub seen: mpsc::UnboundedReceiver<Seen>,
    /// Dropped last: deletes the queues and exchanges.
    pub topology: TestTopology,
}

impl Stack {
    /// Starts both services on a fresh topology with the queue `default`.
    pub async fn start(test: &str) -> Self {
        let topology = TestTopology::new(test, &["default"]);
        let producer = RunningProducer::start(producer::config(&topology)).await;
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let consumer = RunningConsumer::start(
            consumer::config(&topology, "c"),
            recording_handlers("c", &seen_tx),
        )
        .await;
        Self {
            consumer,
            producer,
            seen,
            topology,
        }
    }

    /// Submits `spec` ([`RunningProducer::submit`]); its job id.
    pub async fn submit(&self, spec: JobSpec) -> String {
        self.producer.submit(spec).await
    }

    /// Stops both services cleanly, failing the test if either does not.
    pub async fn stop(self) {
        self.consumer.stop().await.expect("clean consumer stop");
        self.producer.stop().await.expect("clean producer stop");
    }
}

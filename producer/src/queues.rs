//! Which queues exist, for scheduled jobs. A job published into the delay ladder is routed to a
//! level queue at once, so `mandatory` cannot tell whether its destination exists; the producer
//! asks the broker (a passive declare) and remembers the answer for a while.

use jobpipe_proto::{names::QueueName, topology::Topology};
use jobpipe_runtime::amqp::{PublishError, Session};
use lapin::{options::QueueDeclareOptions, types::FieldTable};
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How long a queue seen to exist is trusted to exist.
const TRUST: Duration = Duration::from_secs(60);

/// The queues known to exist: the configured ones (declared or verified when the link came up),
/// and others found by asking, remembered for [`TRUST`].
#[derive(Debug)]
pub struct KnownQueues {
    topology: Topology,
    configured: Vec<QueueName>,
    // A std mutex: held for a map lookup, never across an await.
    seen: Mutex<HashMap<QueueName, Instant>>,
}

impl KnownQueues {
    /// Known queues of `topology`, starting with the `configured` ones.
    pub fn new(topology: Topology, configured: Vec<QueueName>) -> Self {
        Self {
            topology,
            configured,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Checks that `queue` exists, asking the broker on `session` when unsure, at most `patience`
    /// (the confirm timeout: a blocked broker answers nothing). A missing queue is
    /// [`PublishError::Unroutable`], as an immediate job to it would be.
    pub async fn check(
        &self,
        session: &Session,
        queue: &QueueName,
        patience: Duration,
    ) -> Result<(), PublishError> {
        if self.configured.contains(queue) || self.recently_seen(queue) {
            return Ok(());
        }
        tokio::time::timeout(patience, self.ask(session, queue))
            .await
            .unwrap_or(Err(PublishError::Timeout))
    }

    async fn ask(&self, session: &Session, queue: &QueueName) -> Result<(), PublishError> {
        // A failed passive declare closes its channel, so each question gets its own.
        let channel = session
            .open_channel()
            .await
            .map_err(|_| PublishError::Unavailable)?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(
                self.topology.work_queue(queue).into(),
                passive,
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(_) => {
                let _ = channel.close(200, "checked".into()).await;
                if let Ok(mut seen) = self.seen.lock() {
                    seen.insert(queue.clone(), Instant::now());
                }
                Ok(())
            }
            Err(error) if is_not_found(&error) => Err(PublishError::Unroutable),
            Err(_) => Err(PublishError::Unavailable),
        }
    }

    fn recently_seen(&self, queue: &QueueName) -> bool {
        self.seen
            .lock()
            .ok()
            .and_then(|seen| seen.get(queue).copied())
            .is_some_and(|at| at.elapsed() < TRUST)
    }
}

fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}

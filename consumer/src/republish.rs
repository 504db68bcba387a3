//! Handing a failed job back to the broker: the retry into the delay ladder, or the dead letter.
//!
//! The delivery stays in the consumer's hands until the broker confirmed the new copy. When the
//! broker cannot take it yet (the link is reconnecting, a resource alarm blocks publishing, an
//! exchange refuses it), the consumer waits and tries again rather than returning the delivery:
//! on a quorum queue every return counts towards `x-delivery-limit`, and a return hot loop would
//! dead-letter a healthy job without jobpipe's failure record. The wait ends when the delivery
//! can no longer be settled (its connection died, so the broker has it back), or after
//! `consumer.max_timeout`, below RabbitMQ's consumer timeout.

use crate::{context::Context, inbound::Inbound};
use jobpipe_runtime::amqp::{LinkState, PublishError, Route};
use lapin::BasicProperties;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, warn};

/// The first pause between refused publishes, doubled up to [`PAUSE_MAX`].
const PAUSE_MIN: Duration = Duration::from_millis(100);
const PAUSE_MAX: Duration = Duration::from_secs(5);

/// How a re-publish ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Republished {
    /// The broker confirmed the new copy: settle the original.
    Confirmed,
    /// The delivery's connection died: the broker has put it back already, nothing to settle.
    Stale,
    /// The outcome is unknown (no confirm in time), or the broker kept refusing until the hold
    /// ran out. The caller settles the original the fallback way.
    Failed(PublishError),
}

/// Publishes `properties` and `inbound`'s payload on `route`, holding the delivery until the
/// broker confirmed, as described in the module documentation.
pub(crate) async fn republish(
    ctx: &Context,
    inbound: &Inbound,
    route: &Route,
    properties: BasicProperties,
) -> Republished {
    let deadline = Instant::now() + ctx.max_timeout;
    let mut states = ctx.link.watch();
    let mut pause = PAUSE_MIN;
    let mut warned = false;
    loop {
        if inbound.is_stale() {
            return Republished::Stale;
        }
        let session = match &*states.borrow_and_update() {
            LinkState::Up(session) if session.can_publish() => Some(session.clone()),
            LinkState::Closed => return Republished::Failed(PublishError::Unavailable),
            LinkState::Up(_) | LinkState::Down(_) => None,
        };
        let Some(session) = session else {
            // Down or blocked: every change of the link is worth a look (a failed connection
            // makes the delivery stale; a new one or an unblock lets the publish through).
            tokio::select! {
                changed = states.changed() => if changed.is_err() {
                    return Republished::Failed(PublishError::Unavailable);
                },
                () = tokio::time::sleep_until(deadline) => {
                    return Republished::Failed(PublishError::Unavailable);
                }
            }
            continue;
        };
        let (exchange, routing_key) = route.clone();
        let publish = session.publisher().publish(
            exchange,
            routing_key,
            inbound.payload(),
            properties.clone(),
        );
        // The confirm wait outlasts a resource alarm (the broker reads nothing meanwhile); the
        // hold bounds it.
        let published = tokio::time::timeout_at(deadline, publish)
            .await
            .unwrap_or(Err(PublishError::Timeout));
        let error = match published {
            Ok(()) => return Republished::Confirmed,
            // It may be queued: publishing again would make copies. Only the caller's fallback
            // is left.
            Err(error @ PublishError::Timeout) => return Republished::Failed(error),
            // The connection died: the delivery is stale now, which the next turn sees.
            Err(PublishError::Lost) => continue,
            // Nothing was queued: trying again is safe.
            Err(
                error @ (PublishError::Unavailable
                | PublishError::Blocked
                | PublishError::Unroutable
                | PublishError::Nacked),
            ) => error,
        };
        if Instant::now() + pause > deadline {
            return Republished::Failed(error);
        }
        if warned {
            debug!(%error, "The broker still refuses the job's copy; holding the job.");
        } else {
            warn!(%error, "The broker refused the job's copy; holding the job and trying again.");
            warned = true;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(PAUSE_MAX);
    }
}

//! Readiness: a service is ready while its broker link is up, it is not draining, and nothing
//! else it depends on is down (a [`Blockers`] entry, e.g. a consumer's worker target). One
//! watcher feeds `/readyz`, gRPC health and the `jobpipe_broker_connected` gauge, so they never
//! disagree.

use crate::amqp::{Link, LinkState};
use prometheus_client::metrics::gauge::Gauge;
use std::{collections::BTreeSet, sync::Arc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What besides the broker link keeps a service unready, each as a sentence `/readyz` prints.
#[derive(Debug, Clone)]
pub struct Blockers(Arc<watch::Sender<BTreeSet<String>>>);

impl Default for Blockers {
    fn default() -> Self {
        Self(Arc::new(watch::channel(BTreeSet::new()).0))
    }
}

impl Blockers {
    /// Adds (`blocked`) or removes `reason`.
    pub fn set(&self, reason: &str, blocked: bool) {
        self.0.send_if_modified(|reasons| {
            if blocked {
                reasons.insert(reason.to_owned())
            } else {
                reasons.remove(reason)
            }
        });
    }

    /// The reasons now, in order.
    pub fn reasons(&self) -> Vec<String> {
        self.0.borrow().iter().cloned().collect()
    }

    fn watch(&self) -> watch::Receiver<BTreeSet<String>> {
        self.0.subscribe()
    }
}

/// Spawns the watcher; the receiver holds `true` while the service is ready. `connected` follows
/// the link alone (1 up, 0 down), draining or not.
pub fn track(
    link: &Link,
    draining: CancellationToken,
    connected: Gauge,
    blockers: &Blockers,
) -> watch::Receiver<bool> {
    let (sender, ready) = watch::channel(false);
    let mut states = link.watch();
    let mut blocked = blockers.watch();
    tokio::spawn(async move {
        loop {
            let up = matches!(*states.borrow_and_update(), LinkState::Up(_));
            let clear = blocked.borrow_and_update().is_empty();
            connected.set(i64::from(up));
            sender.send_if_modified(|ready| {
                let now = up && clear && !draining.is_cancelled();
                std::mem::replace(ready, now) != now
            });
            tokio::select! {
                changed = states.changed() => if changed.is_err() { break },
                changed = blocked.changed() => if changed.is_err() { break },
                () = draining.cancelled(), if !draining.is_cancelled() => {}
            }
        }
        sender.send_replace(false);
    });
    ready
}

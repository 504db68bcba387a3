//! Readiness: a service is ready while its broker link is up and it is not draining. One watcher
//! feeds `/readyz`, gRPC health and the `jobpipe_broker_connected` gauge, so they never disagree.

use crate::amqp::{Link, LinkState};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Spawns the watcher; the receiver holds `true` while the service is ready. `connected` follows
/// the link alone (1 up, 0 down), draining or not.
pub fn track(link: &Link, draining: CancellationToken, connected: Gauge) -> watch::Receiver<bool> {
    let (sender, ready) = watch::channel(false);
    let mut states = link.watch();
    tokio::spawn(async move {
        loop {
            let up = matches!(*states.borrow_and_update(), LinkState::Up(_));
            connected.set(i64::from(up));
            sender.send_if_modified(|ready| {
                let now = up && !draining.is_cancelled();
                std::mem::replace(ready, now) != now
            });
            tokio::select! {
                changed = states.changed() => if changed.is_err() { break },
                () = draining.cancelled(), if !draining.is_cancelled() => {}
            }
        }
        sender.send_replace(false);
    });
    ready
}

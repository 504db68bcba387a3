//! The process's shutdown signal: the first SIGTERM or Ctrl-C asks the service to drain; a second
//! Ctrl-C (or SIGTERM) stops it at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Exit status when a second signal forces the process down (128 + SIGINT).
pub const FORCED_EXIT: i32 = 130;

/// Returns a token cancelled on the first SIGTERM or SIGINT. A second one exits the process
/// immediately with [`FORCED_EXIT`]: the operator asked twice.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    let token = CancellationToken::new();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => info!("SIGTERM received; draining."),
            _ = interrupt.recv() => info!("Interrupt received; draining (press Ctrl-C again to force)."),
        }
        cancel.cancel();
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        warn!("Second signal received; exiting without draining.");
        std::process::exit(FORCED_EXIT);
    });
    Ok(token)
}

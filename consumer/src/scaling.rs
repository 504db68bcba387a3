//! The replicas the consumers need, as one number any autoscaler can use
//! (`jobpipe_consumer_desired_replicas`): enough to finish the ready backlog and the jobs in
//! flight within `scaling.target_drain_time` at the rate a replica can finish jobs (its handler
//! slots over the time an attempt takes), never fewer than the running jobs fill (a busy
//! replica is never counted as spare), one while anything waits in the delay ladder (which adds
//! no more: those jobs are not due), and zero only when there is no work at all.

use crate::metrics::ConsumerMetrics;
use jobpipe_runtime::queue_state::Depths;
use prometheus_client::{metrics::gauge::Gauge, registry::Registry};
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the desired-replicas signal aims for.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScalingConfig {
    /// How soon the backlog and the jobs in flight should be done: the replicas wanted are
    /// those that finish them within this time at the rate a replica finishes jobs.
    #[serde(with = "humantime_serde")]
    pub target_drain_time: Duration,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        Self {
            target_drain_time: Duration::from_secs(60),
        }
    }
}

/// What one replica sees at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Load {
    /// Jobs ready in this consumer's queues.
    pub(crate) backlog: u64,
    /// Jobs running in this replica.
    pub(crate) in_flight: u64,
    /// Consumer processes subscribed: the most any of its queues has, this one included.
    pub(crate) replicas: u64,
    /// Jobs waiting in the delay ladder, all queues.
    pub(crate) delayed: u64,
    /// Jobs a replica can finish per second (see [`capacity`]); 0 when unknown.
    pub(crate) rate: f64,
    /// Jobs a replica runs at once.
    pub(crate) concurrency: u64,
}

/// The replicas `load` needs to be done within `drain`.
pub(crate) fn desired_replicas(load: &Load, drain: Duration) -> u64 {
    let replicas = load.replicas.max(1);
    // The others are taken to be as busy as this one: the broker does not say what each holds.
    let in_flight = load.in_flight.saturating_mul(replicas);
    let work = load.backlog.saturating_add(in_flight);
    if work == 0 {
        return u64::from(load.delayed > 0);
    }
    let busy = in_flight.div_ceil(load.concurrency.max(1));
    let to_drain = if load.rate > 0.0 {
        let per_replica = load.rate * drain.as_secs_f64().max(0.001);
        // Saturates at u64::MAX; an autoscaler caps it at its maximum.
        (work as f64 / per_replica).ceil() as u64
    } else {
        // Nothing to measure by (just started, or nothing ran): keep what runs.
        replicas
    };
    busy.max(to_drain).max(1)
}

/// Jobs per second a replica can finish when every one of its `concurrency` slots is busy:
/// `attempts` took `busy` together, so a slot finishes one per `busy / attempts`. Measured on
/// the attempts themselves, it does not fall when the replica idles. `None` when none ran.
pub(crate) fn capacity(attempts: u64, busy: Duration, concurrency: u64) -> Option<f64> {
    (attempts > 0).then(|| {
        let per_attempt = busy.as_secs_f64().max(1e-6) / attempts as f64;
        concurrency as f64 / per_attempt
    })
}

/// The signal's gauge.
#[derive(Debug, Clone, Default)]
pub(crate) struct DesiredReplicas(Gauge);

impl DesiredReplicas {
    /// Creates the gauge, registered in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let gauge = Self::default();
        registry.register(
            "jobpipe_consumer_desired_replicas",
            "Consumer replicas needed to finish the ready backlog and the jobs in flight within \
             scaling.target_drain_time (the same on every replica: scale on the max)",
            gauge.0.clone(),
        );
        gauge
    }

    /// Sets the gauge at each reading of the queue depths until `shutdown`.
    pub(crate) async fn follow(
        self,
        mut depths: watch::Receiver<Option<Depths>>,
        metrics: ConsumerMetrics,
        concurrency: usize,
        config: ScalingConfig,
        shutdown: CancellationToken,
    ) {
        let concurrency = u64::try_from(concurrency).unwrap_or(u64::MAX);
        let counted = || (metrics.attempts_run.get(), metrics.attempt_micros.get());
        let mut last = counted();
        // The last capacity measured: long attempts finish seldom, and it holds meanwhile.
        let mut rate = 0.0;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = depths.changed() => if changed.is_err() { return },
            }
            let Some(reading) = depths.borrow_and_update().clone() else {
                continue;
            };
            let now = counted();
            let busy = Duration::from_micros(now.1 - last.1);
            if let Some(measured) = capacity(now.0 - last.0, busy, concurrency) {
                rate = measured;
            }
            last = now;
            let load = Load {
                backlog: reading.queues.iter().map(|q| q.ready).sum(),
                in_flight: u64::try_from(metrics.in_flight.get()).unwrap_or(0),
                replicas: reading
                    .queues
                    .iter()
                    .map(|q| u64::from(q.consumers))
                    .max()
                    .unwrap_or(0),
                delayed: reading.delayed,
                rate,
                concurrency,
            };
            let desired = desired_replicas(&load, config.target_drain_time);
            self.0.set(i64::try_from(desired).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn load(backlog: u64, in_flight: u64, replicas: u64, delayed: u64, rate: f64) -> Load {
        Load {
            backlog,
            in_flight,
            replicas,
            delayed,
            rate,
            concurrency: 16,
        }
    }

    #[test]
    fn desired_replicas_by_case() {
        let cases = [
            // No work at all: zero.
            (load(0, 0, 3, 0, 10.0), 0),
            // Only delayed jobs: one, to run them when due, and no more.
            (load(0, 0, 3, 50_000, 10.0), 1),
            // 6,000 ready at 10 jobs/s per replica over a minute: 10 replicas.
            (load(6_000, 0, 1, 0, 10.0), 10),
            // Backlog plus in flight: (5,370 + 3 × 10) / 600.
            (load(5_370, 10, 3, 0, 10.0), 9),
            // Busy pods are not spare: 3 replicas with every slot full stay 3 when they would
            // drain fast.
            (load(0, 16, 3, 0, 1_000.0), 3),
            // Nothing finished yet (no rate): keep what runs.
            (load(500, 0, 4, 0, 0.0), 4),
            (load(500, 0, 0, 0, 0.0), 1),
            // A trickle: one replica.
            (load(3, 1, 1, 0, 0.5), 1),
        ];
        for (load, expected) in cases {
            assert_eq!(desired_replicas(&load, MINUTE), expected, "{load:?}");
        }
    }

    #[test]
    fn capacity_is_slots_over_the_time_an_attempt_takes() {
        let second = Duration::from_secs(1);
        // 8 attempts of 2 s on 4 slots: 2 jobs/s, however long the replica idled meanwhile.
        assert_eq!(capacity(8, 16 * second, 4), Some(2.0));
        assert_eq!(capacity(1, second / 2, 16), Some(32.0));
        assert_eq!(capacity(0, second, 16), None);
        // Attempts that took no measurable time: a large capacity, not a division by zero.
        assert!(capacity(3, Duration::ZERO, 1).is_some_and(f64::is_finite));
    }

    proptest! {
        #[test]
        fn more_work_never_wants_fewer_replicas(
            backlog in 0u64..1_000_000,
            more in 0u64..1_000_000,
            in_flight in 0u64..64,
            replicas in 0u64..50,
            delayed in 0u64..1000,
            rate in 0.0f64..10_000.0,
        ) {
            let less = load(backlog, in_flight, replicas, delayed, rate);
            let more = load(backlog + more, in_flight, replicas, delayed, rate);
            let (few, many) = (desired_replicas(&less, MINUTE), desired_replicas(&more, MINUTE));
            prop_assert!(few <= many);
            // Never fewer than the running jobs fill.
            prop_assert!(few >= (in_flight * replicas.max(1)).div_ceil(16));
            // Zero exactly when there is nothing to do, now or later.
            let idle = backlog == 0 && in_flight == 0 && delayed == 0;
            prop_assert_eq!(few == 0, idle);
        }
    }
}

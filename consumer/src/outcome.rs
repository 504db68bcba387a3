//! What to do with a delivery whose attempt failed: the whole retry decision, pure. (A success
//! is simply acknowledged.)

use crate::retry::RetryPolicy;
use jobpipe_proto::{delay::LadderDelay, failure::FailureKind};
use rand::Rng;
use std::time::Duration;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The handler succeeded.
    Succeeded,
    /// The attempt failed, or never ran (no handler, unreadable message).
    Failed {
        /// Why.
        kind: FailureKind,
        /// The error text.
        error: String,
        /// The delay the handler asked for before the next attempt, instead of the backoff.
        retry_after: Option<Duration>,
    },
    /// The attempt never started and is not counted: its worker stayed unreachable past the
    /// hold limit, or the consumer is draining. The delivery goes back to its queue.
    Withdrawn,
}

/// How a failed attempt's delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Re-publish the next attempt through the delay ladder, then acknowledge.
    Retry {
        /// The backoff before the next attempt.
        after: LadderDelay,
    },
    /// Publish to the dead-letter queue with the failure record, then acknowledge.
    DeadLetter {
        /// Why the job is given up.
        kind: FailureKind,
    },
}

/// Decides what follows attempt `number` of `max_attempts`, which failed for `kind`; a retry
/// waits `retry_after` when the handler asked for it, else the backoff.
pub(crate) fn decide(
    kind: FailureKind,
    number: u32,
    max_attempts: u32,
    retry_after: Option<Duration>,
    policy: &RetryPolicy,
    rng: &mut impl Rng,
) -> Decision {
    match kind {
        FailureKind::Transient | FailureKind::Panic | FailureKind::Timeout
            if number < max_attempts =>
        {
            Decision::Retry {
                after: retry_after
                    .map_or_else(|| policy.backoff(number, rng), |delay| policy.capped(delay)),
            }
        }
        // The last attempt timed out: say so rather than the vaguer "exhausted".
        FailureKind::Timeout => Decision::DeadLetter {
            kind: FailureKind::Timeout,
        },
        FailureKind::Transient | FailureKind::Panic | FailureKind::Exhausted => {
            Decision::DeadLetter {
                kind: FailureKind::Exhausted,
            }
        }
        FailureKind::Permanent | FailureKind::NoHandler | FailureKind::Decode => {
            Decision::DeadLetter { kind }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::{Jitter, RetryConfig};
    use FailureKind::{Decode, Exhausted, NoHandler, Panic, Permanent, Timeout, Transient};
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn decisions() {
        let policy = RetryPolicy::try_new(&RetryConfig {
            jitter: Jitter::None,
            ..RetryConfig::default()
        })
        .unwrap();
        let retry = |secs| Decision::Retry {
            after: LadderDelay::clamped(secs),
        };
        let dead = |kind| Decision::DeadLetter { kind };
        let cases = [
            (Transient, 1, 3, retry(1)),
            (Transient, 2, 3, retry(2)),
            (Transient, 3, 3, dead(Exhausted)),
            (Panic, 1, 3, retry(1)),
            (Panic, 3, 3, dead(Exhausted)),
            (Timeout, 2, 3, retry(2)),
            (Timeout, 3, 3, dead(Timeout)),
            (Permanent, 1, 3, dead(Permanent)),
            (NoHandler, 1, 3, dead(NoHandler)),
            (Decode, 1, 3, dead(Decode)),
            (Transient, 1, 1, dead(Exhausted)),
        ];
        let mut rng = StdRng::seed_from_u64(7);
        for (kind, number, max, expected) in cases {
            assert_eq!(
                decide(kind, number, max, None, &policy, &mut rng),
                expected,
                "{kind:?} on {number}/{max}"
            );
        }
        // A delay the handler asks for replaces the backoff, rounded up to the ladder's
        // seconds and capped at retry.max_delay; it does not add attempts.
        let asked = [
            (Duration::from_millis(1500), retry(2)),
            (Duration::ZERO, retry(1)),
            (Duration::from_secs(999_999), retry(3600)),
        ];
        for (delay, expected) in asked {
            assert_eq!(
                decide(Transient, 1, 3, Some(delay), &policy, &mut rng),
                expected,
                "{delay:?}"
            );
        }
        assert_eq!(
            decide(
                Transient,
                3,
                3,
                Some(Duration::from_secs(5)),
                &policy,
                &mut rng
            ),
            dead(Exhausted)
        );
    }
}

//! What to do with a delivery once its attempt is over: the whole retry decision, pure.

use crate::retry::RetryPolicy;
use jobpipe_proto::failure::FailureKind;
use rand::Rng;
use std::time::Duration;

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The handler succeeded.
    Succeeded,
    /// The attempt failed, or never ran (no handler, unreadable message).
    Failed {
        /// Why.
        kind: FailureKind,
        /// The error text.
        error: String,
    },
}

/// How a delivery is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Acknowledge: the job is done.
    Ack,
    /// Re-publish the next attempt through the delay ladder, then acknowledge.
    Retry {
        /// The backoff before the next attempt.
        after: Duration,
    },
    /// Publish to the dead-letter queue with the failure record, then acknowledge.
    DeadLetter {
        /// Why the job is given up.
        kind: FailureKind,
    },
}

/// Decides what follows attempt `attempt` of `max_attempts`.
pub fn decide(
    attempt: &Attempt,
    number: u32,
    max_attempts: u32,
    policy: &RetryPolicy,
    rng: &mut impl Rng,
) -> Decision {
    let Attempt::Failed { kind, .. } = attempt else {
        return Decision::Ack;
    };
    match kind {
        FailureKind::Transient | FailureKind::Panic | FailureKind::Timeout
            if number < max_attempts =>
        {
            Decision::Retry {
                after: policy.backoff(number, rng),
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
            Decision::DeadLetter { kind: *kind }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::{Jitter, RetryConfig};
    use rand::{SeedableRng, rngs::StdRng};

    fn failed(kind: FailureKind) -> Attempt {
        Attempt::Failed {
            kind,
            error: "e".into(),
        }
    }

    #[test]
    fn decisions() {
        let policy = RetryPolicy::try_new(&RetryConfig {
            jitter: Jitter::None,
            ..RetryConfig::default()
        })
        .unwrap();
        let retry = |secs| Decision::Retry {
            after: Duration::from_secs(secs),
        };
        let dead = |kind| Decision::DeadLetter { kind };
        let cases = [
            (Attempt::Succeeded, 1, 3, Decision::Ack),
            (Attempt::Succeeded, 3, 3, Decision::Ack),
            (failed(FailureKind::Transient), 1, 3, retry(1)),
            (failed(FailureKind::Transient), 2, 3, retry(2)),
            (
                failed(FailureKind::Transient),
                3,
                3,
                dead(FailureKind::Exhausted),
            ),
            (failed(FailureKind::Panic), 1, 3, retry(1)),
            (
                failed(FailureKind::Panic),
                3,
                3,
                dead(FailureKind::Exhausted),
            ),
            (failed(FailureKind::Timeout), 2, 3, retry(2)),
            (
                failed(FailureKind::Timeout),
                3,
                3,
                dead(FailureKind::Timeout),
            ),
            (
                failed(FailureKind::Permanent),
                1,
                3,
                dead(FailureKind::Permanent),
            ),
            (
                failed(FailureKind::NoHandler),
                1,
                3,
                dead(FailureKind::NoHandler),
            ),
            (failed(FailureKind::Decode), 1, 3, dead(FailureKind::Decode)),
            (
                failed(FailureKind::Transient),
                1,
                1,
                dead(FailureKind::Exhausted),
            ),
        ];
        let mut rng = StdRng::seed_from_u64(7);
        for (attempt, number, max, expected) in cases {
            assert_eq!(
                decide(&attempt, number, max, &policy, &mut rng),
                expected,
                "{attempt:?} on {number}/{max}"
            );
        }
    }
}

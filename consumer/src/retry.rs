//! The retry schedule: exponential backoff with jitter, capped, in the delay ladder's whole
//! seconds.

use jobpipe_proto::delay::LadderDelay;
use rand::Rng;
use serde::Deserialize;
use std::time::Duration;

/// How the backoff is randomised, so that jobs that failed together do not retry together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// Uniform between zero and the ceiling (AWS's "full jitter"): the best spread.
    #[default]
    Full,
    /// Uniform between half the ceiling and the ceiling: spread, with a floor.
    Equal,
    /// Exactly the ceiling: predictable, for tests and demos.
    None,
}

/// The retry backoff settings, as configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// The ceiling of the first retry's delay.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// Each further retry's ceiling is this many times the previous one.
    pub multiplier: f64,
    /// No delay is longer than this.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// How the delay is randomised below its ceiling.
    pub jitter: Jitter,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            multiplier: 2.0,
            max_delay: Duration::from_secs(3600),
            jitter: Jitter::Full,
        }
    }
}

/// A validated retry schedule: delay = min(max_delay, base × multiplier^(attempt-1)), jittered,
/// rounded up to whole seconds (the ladder's resolution), at least one second.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    base: Duration,
    multiplier: f64,
    max_delay: Duration,
    jitter: Jitter,
}

/// Why a retry configuration was refused; [`key`](Self::key) names the setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetryPolicyError {
    /// The base is zero.
    #[error("must be positive")]
    ZeroBase,
    /// The multiplier would shrink the delay.
    #[error("must be a number of at least 1")]
    Multiplier,
    /// The cap is below the base, or beyond what the delay ladder can hold.
    #[error(
        "must be at least retry.base and at most {} seconds",
        jobpipe_proto::delay::MAX_DELAY_SECS
    )]
    MaxDelay,
}

impl RetryPolicyError {
    /// The configuration key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            Self::ZeroBase => "retry.base",
            Self::Multiplier => "retry.multiplier",
            Self::MaxDelay => "retry.max_delay",
        }
    }
}

impl RetryPolicy {
    /// Checks `config` and builds the policy.
    pub fn try_new(config: &RetryConfig) -> Result<Self, RetryPolicyError> {
        if config.base.is_zero() {
            return Err(RetryPolicyError::ZeroBase);
        }
        if !(config.multiplier.is_finite() && config.multiplier >= 1.0) {
            return Err(RetryPolicyError::Multiplier);
        }
        let ladder_max = Duration::from_secs(jobpipe_proto::delay::MAX_DELAY_SECS);
        if config.max_delay < config.base || config.max_delay > ladder_max {
            return Err(RetryPolicyError::MaxDelay);
        }
        Ok(Self {
            base: config.base,
            multiplier: config.multiplier,
            max_delay: config.max_delay,
            jitter: config.jitter,
        })
    }

    /// The ceiling of the delay after attempt `failed_attempt` (1-based) failed.
    pub fn ceiling(&self, failed_attempt: u32) -> Duration {
        let exponent = i32::try_from(failed_attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let secs = self.base.as_secs_f64() * self.multiplier.powi(exponent);
        // `powi` saturates to infinity, which `min` then caps.
        Duration::from_secs_f64(secs.min(self.max_delay.as_secs_f64()))
    }

    /// A delay a handler asked for, in the ladder's whole seconds (rounded up, at least 1) and
    /// capped at `max_delay`.
    pub fn capped(&self, delay: Duration) -> LadderDelay {
        let secs = delay.min(self.max_delay).as_secs_f64().ceil() as u64;
        LadderDelay::clamped(secs)
    }

    /// The delay before the retry of attempt `failed_attempt`, jittered with `rng`, in the
    /// ladder's whole seconds (rounded up; `try_new` keeps the cap inside the ladder).
    pub fn backoff(&self, failed_attempt: u32, rng: &mut impl Rng) -> LadderDelay {
        let ceiling = self.ceiling(failed_attempt).as_secs_f64();
        let secs = match self.jitter {
            Jitter::Full => rng.random_range(0.0..=ceiling),
            Jitter::Equal => rng.random_range(ceiling / 2.0..=ceiling),
            Jitter::None => ceiling,
        };
        LadderDelay::clamped(secs.ceil() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{SeedableRng, rngs::StdRng};

    fn policy(jitter: Jitter) -> RetryPolicy {
        RetryPolicy::try_new(&RetryConfig {
            jitter,
            ..RetryConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn ceilings_grow_then_cap() {
        let p = policy(Jitter::None);
        let cases = [
            (1, 1),
            (2, 2),
            (3, 4),
            (4, 8),
            (12, 2048),
            (13, 3600),
            (1000, 3600),
        ];
        for (attempt, secs) in cases {
            assert_eq!(
                p.ceiling(attempt),
                Duration::from_secs(secs),
                "attempt {attempt}"
            );
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let cases = [
            (
                RetryConfig {
                    base: Duration::ZERO,
                    ..RetryConfig::default()
                },
                RetryPolicyError::ZeroBase,
            ),
            (
                RetryConfig {
                    multiplier: 0.5,
                    ..RetryConfig::default()
                },
                RetryPolicyError::Multiplier,
            ),
            (
                RetryConfig {
                    multiplier: f64::NAN,
                    ..RetryConfig::default()
                },
                RetryPolicyError::Multiplier,
            ),
            (
                RetryConfig {
                    max_delay: Duration::from_millis(10),
                    ..RetryConfig::default()
                },
                RetryPolicyError::MaxDelay,
            ),
            (
                RetryConfig {
                    max_delay: Duration::from_secs(1 << 29),
                    ..RetryConfig::default()
                },
                RetryPolicyError::MaxDelay,
            ),
        ];
        for (config, error) in cases {
            assert_eq!(RetryPolicy::try_new(&config), Err(error));
        }
    }

    proptest! {
        #[test]
        fn ceilings_never_shrink_and_never_pass_the_cap(
            base_ms in 1u64..10_000,
            multiplier in 1.0f64..10.0,
            max_s in 10u64..100_000,
            attempt in 1u32..200,
        ) {
            let p = RetryPolicy::try_new(&RetryConfig {
                base: Duration::from_millis(base_ms),
                multiplier,
                max_delay: Duration::from_secs(max_s),
                jitter: Jitter::None,
            }).unwrap();
            prop_assert!(p.ceiling(attempt + 1) >= p.ceiling(attempt));
            prop_assert!(p.ceiling(attempt) <= Duration::from_secs(max_s));
        }

        #[test]
        fn jittered_delays_stay_within_their_bounds(seed in any::<u64>(), attempt in 1u32..30) {
            let mut rng = StdRng::seed_from_u64(seed);
            for (jitter, floor_fraction) in [(Jitter::Full, 0.0), (Jitter::Equal, 0.5), (Jitter::None, 1.0)] {
                let p = policy(jitter);
                let ceiling = p.ceiling(attempt).as_secs_f64();
                let delay = p.backoff(attempt, &mut rng).secs() as f64;
                prop_assert!(delay >= 1.0, "at least the ladder's one second");
                prop_assert!(delay <= ceiling.ceil().max(1.0), "{delay} over {ceiling}");
                prop_assert!(delay >= (ceiling * floor_fraction).floor(), "{delay} under the floor");
            }
        }
    }
}

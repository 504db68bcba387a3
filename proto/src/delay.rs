//! The delay ladder's arithmetic: how a delay and a destination become a routing key, and which
//! level a message enters at. RabbitMQ 3.x has no replicated delayed delivery, so delays are built
//! from 28 levels of TTL queues (level L holds a message 2^L seconds), as NServiceBus does:
//!
//! - The routing key is the delay in seconds as 28 binary digits, most significant first, each
//!   followed by a dot, then the destination queue: 10 s to `default` is
//!   `0.0.….0.1.0.1.0.default`.
//! - Level L's exchange sends a key whose digit L is 1 to its queue (which holds it 2^L s and
//!   dead-letters it to level L-1), and one whose digit L is 0 straight to level L-1's exchange.
//!   Below level 0 is the delivery exchange, bound to each work queue with `#.<queue>`.
//! - Every message in one level queue has the same TTL, so expiry order is queue order: no
//!   message waits behind a longer one.

use crate::names::QueueName;
use std::time::Duration;

/// Levels in the ladder.
pub const LEVELS: u8 = 28;
/// The longest delay, in seconds: 2^28 - 1, about 8.5 years.
pub const MAX_DELAY_SECS: u64 = (1 << LEVELS) - 1;

/// Why a delay cannot be scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("must be at most {MAX_DELAY_SECS} seconds")]
pub struct DelayTooLong;

/// A delay the ladder can carry: whole seconds, 1 to [`MAX_DELAY_SECS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LadderDelay(u64);

impl LadderDelay {
    /// The ladder delay for `delay`, rounded up to whole seconds so a job never runs early.
    /// `None` for a zero delay: such a job goes straight to its queue.
    pub fn from_duration(delay: Duration) -> Result<Option<Self>, DelayTooLong> {
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        match secs {
            0 => Ok(None),
            secs if secs <= MAX_DELAY_SECS => Ok(Some(Self(secs))),
            _ => Err(DelayTooLong),
        }
    }

    /// `secs` brought into the ladder's range: at least 1, at most [`MAX_DELAY_SECS`].
    pub fn clamped(secs: u64) -> Self {
        Self(secs.clamp(1, MAX_DELAY_SECS))
    }

    /// The delay in seconds.
    pub fn secs(self) -> u64 {
        self.0
    }

    /// The delay as a duration.
    pub fn duration(self) -> Duration {
        Duration::from_secs(self.0)
    }

    /// The level a message enters at: its delay's highest set bit.
    pub fn entry_level(self) -> u8 {
        // Non-zero and below 2^28, so the highest set bit is 0..=27.
        u8::try_from(63 - self.0.leading_zeros()).unwrap_or(LEVELS - 1)
    }

    /// The routing key carrying this delay to `destination`.
    pub fn routing_key(self, destination: &QueueName) -> String {
        let mut key = String::with_capacity(usize::from(LEVELS) * 2 + destination.as_str().len());
        for level in (0..LEVELS).rev() {
            key.push(if self.0 >> level & 1 == 1 { '1' } else { '0' });
            key.push('.');
        }
        key.push_str(destination.as_str());
        key
    }
}

/// The binding pattern from level `level`'s exchange to its own queue (digit `level` is 1).
pub fn hold_pattern(level: u8) -> String {
    pattern(level, '1')
}

/// The binding pattern from level `level`'s exchange down to the next (digit `level` is 0).
pub fn pass_pattern(level: u8) -> String {
    pattern(level, '0')
}

/// The binding pattern from the delivery exchange to `queue`.
pub fn deliver_pattern(queue: &QueueName) -> String {
    format!("#.{queue}")
}

fn pattern(level: u8, digit: char) -> String {
    format!("{}{digit}.#", "*.".repeat(usize::from(LEVELS - 1 - level)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads a ladder routing key back into its delay (seconds) and destination.
    fn parse_routing_key(key: &str) -> Option<(u64, &str)> {
        let mut secs = 0u64;
        let mut rest = key;
        for _ in 0..LEVELS {
            let (digit, tail) = rest.split_once('.')?;
            secs = secs << 1
                | match digit {
                    "0" => 0,
                    "1" => 1,
                    _ => return None,
                };
            rest = tail;
        }
        Some((secs, rest))
    }

    fn queue() -> QueueName {
        QueueName::default_queue()
    }

    #[test]
    fn durations_round_up_to_whole_seconds() {
        let cases = [
            (Duration::ZERO, Ok(None)),
            (Duration::from_millis(1), Ok(Some(1))),
            (Duration::from_millis(1000), Ok(Some(1))),
            (Duration::from_millis(2500), Ok(Some(3))),
            (
                Duration::from_secs(MAX_DELAY_SECS),
                Ok(Some(MAX_DELAY_SECS)),
            ),
            (Duration::from_secs(MAX_DELAY_SECS + 1), Err(DelayTooLong)),
        ];
        for (delay, expected) in cases {
            let got = LadderDelay::from_duration(delay).map(|d| d.map(LadderDelay::secs));
            assert_eq!(got, expected, "{delay:?}");
        }
    }

    #[test]
    fn routing_keys_spell_the_delay_in_binary() {
        let ten = LadderDelay::from_duration(Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert_eq!(
            ten.routing_key(&queue()),
            format!("{}1.0.1.0.default", "0.".repeat(24))
        );
        assert_eq!(ten.entry_level(), 3);
        let cases = [(1, 0), (2, 1), (3, 1), (1 << 27, 27), (MAX_DELAY_SECS, 27)];
        for (secs, level) in cases {
            assert_eq!(LadderDelay(secs).entry_level(), level, "{secs}");
        }
    }

    #[test]
    fn patterns_pick_one_digit() {
        assert_eq!(hold_pattern(27), "1.#");
        assert_eq!(pass_pattern(27), "0.#");
        assert_eq!(hold_pattern(0), format!("{}1.#", "*.".repeat(27)));
        assert_eq!(deliver_pattern(&queue()), "#.default");
    }

    /// Whether a topic pattern of `*`, `#` and literal words matches `key` (AMQP semantics).
    fn topic_matches(pattern: &[&str], key: &[&str]) -> bool {
        match (pattern.split_first(), key.split_first()) {
            (None, None) => true,
            (Some((&"#", rest)), _) => {
                (0..=key.len()).any(|skip| topic_matches(rest, &key[skip..]))
            }
            (Some((&"*", rest)), Some((_, key_rest))) => topic_matches(rest, key_rest),
            (Some((word, rest)), Some((k, key_rest))) => word == k && topic_matches(rest, key_rest),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn routing_keys_round_trip(secs in 1u64..=MAX_DELAY_SECS) {
            let key = LadderDelay(secs).routing_key(&queue());
            prop_assert_eq!(parse_routing_key(&key), Some((secs, "default")));
        }

        #[test]
        fn at_each_level_exactly_one_binding_matches(secs in 1u64..=MAX_DELAY_SECS, level in 0u8..LEVELS) {
            let key = LadderDelay(secs).routing_key(&queue());
            let words: Vec<&str> = key.split('.').collect();
            let hold = hold_pattern(level);
            let pass = pass_pattern(level);
            let holds = topic_matches(&hold.split('.').collect::<Vec<_>>(), &words);
            let passes = topic_matches(&pass.split('.').collect::<Vec<_>>(), &words);
            prop_assert!(holds != passes);
            prop_assert_eq!(holds, secs >> level & 1 == 1);
        }

        #[test]
        fn the_time_held_adds_up_to_the_delay(secs in 1u64..=MAX_DELAY_SECS) {
            let delay = LadderDelay(secs);
            let held: u64 = (0..=delay.entry_level())
                .filter(|level| secs >> level & 1 == 1)
                .map(|level| 1u64 << level)
                .sum();
            prop_assert_eq!(held, secs);
        }
    }
}

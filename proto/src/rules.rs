//! The rules a job's properties obey, in one place. The producer checks a submission against
//! them and the consumer checks a message against the same ones, so nothing one side accepts is
//! refused by the other. (Names have theirs in [`crate::names`], metadata in [`crate::metadata`],
//! delays in [`crate::delay`].)
//!
//! Each check returns the rule in a sentence fit for a client, without the value.

use std::time::Duration;

/// The most attempts a job may have.
pub const MAX_ATTEMPTS: u32 = 100;
/// The shortest per-attempt deadline: the wire carries whole milliseconds.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// The longest per-attempt deadline a job may carry (consumers clamp it further).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The longest content type, in characters.
pub const MAX_CONTENT_TYPE_LEN: usize = 128;

/// Checks a job's attempt count: 1 to [`MAX_ATTEMPTS`].
pub fn check_max_attempts(max_attempts: u32) -> Result<(), String> {
    if (1..=MAX_ATTEMPTS).contains(&max_attempts) {
        Ok(())
    } else {
        Err(format!("must be 1 to {MAX_ATTEMPTS}"))
    }
}

/// Checks a per-attempt deadline against `max` (at most [`MAX_TIMEOUT`]): from 1 ms, which the
/// wire can carry, to `max`.
pub fn check_timeout(timeout: Duration, max: Duration) -> Result<(), String> {
    let max = max.min(MAX_TIMEOUT);
    if (MIN_TIMEOUT..=max).contains(&timeout) {
        Ok(())
    } else {
        Err(format!("must be from 1ms to {}", humanize(max)))
    }
}

/// Checks a content type: up to [`MAX_CONTENT_TYPE_LEN`] printable ASCII characters.
pub fn check_content_type(content_type: &str) -> Result<(), String> {
    let printable = content_type.bytes().all(|c| (b' '..=b'~').contains(&c));
    if content_type.len() <= MAX_CONTENT_TYPE_LEN && printable {
        Ok(())
    } else {
        Err(format!(
            "must be at most {MAX_CONTENT_TYPE_LEN} printable ASCII characters"
        ))
    }
}

/// A `google.protobuf.Duration` as a non-negative [`Duration`], refusing what the protobuf
/// definition forbids instead of normalizing it: nanos outside ±999,999,999, or of the other
/// sign than the seconds.
pub fn duration_from_wire(wire: prost_types::Duration) -> Result<Duration, String> {
    const NANOS_PER_SECOND: i32 = 1_000_000_000;
    let prost_types::Duration { seconds, nanos } = wire;
    if nanos <= -NANOS_PER_SECOND || nanos >= NANOS_PER_SECOND {
        return Err("nanos must be within ±999,999,999".into());
    }
    if (seconds > 0 && nanos < 0) || (seconds < 0 && nanos > 0) {
        return Err("seconds and nanos must have the same sign".into());
    }
    if seconds < 0 || nanos < 0 {
        return Err("must not be negative".into());
    }
    let seconds = u64::try_from(seconds).map_err(|_| "must not be negative".to_owned())?;
    let nanos = u32::try_from(nanos).map_err(|_| "must not be negative".to_owned())?;
    Ok(Duration::new(seconds, nanos))
}

/// `25m`, `24h`, `1h 30m`: whole seconds are enough for limits.
fn humanize(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    [(hours, "h"), (minutes, "m"), (seconds, "s")]
        .iter()
        .filter(|(value, _)| *value > 0)
        .map(|(value, unit)| format!("{value}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_counts() {
        for (attempts, ok) in [(0, false), (1, true), (100, true), (101, false)] {
            assert_eq!(check_max_attempts(attempts).is_ok(), ok, "{attempts}");
        }
    }

    #[test]
    fn timeouts() {
        let max = Duration::from_secs(25 * 60);
        let cases = [
            (Duration::ZERO, false),
            (Duration::from_micros(999), false),
            (MIN_TIMEOUT, true),
            (max, true),
            (max + Duration::from_nanos(1), false),
        ];
        for (timeout, ok) in cases {
            assert_eq!(check_timeout(timeout, max).is_ok(), ok, "{timeout:?}");
        }
        assert_eq!(
            check_timeout(Duration::ZERO, max).unwrap_err(),
            "must be from 1ms to 25m"
        );
        assert!(check_timeout(MAX_TIMEOUT + MIN_TIMEOUT, Duration::MAX).is_err());
    }

    #[test]
    fn content_types() {
        let long = "a".repeat(MAX_CONTENT_TYPE_LEN + 1);
        let cases = [
            ("application/json", true),
            ("", true),
            (&long[1..], true),
            (long.as_str(), false),
            ("text/plain\n", false),
            ("tëxt", false),
        ];
        for (content_type, ok) in cases {
            assert_eq!(
                check_content_type(content_type).is_ok(),
                ok,
                "{content_type:?}"
            );
        }
    }

    #[test]
    fn wire_durations_are_taken_only_when_well_formed() {
        let wire = |seconds, nanos| prost_types::Duration { seconds, nanos };
        let cases = [
            (wire(0, 0), Ok(Duration::ZERO)),
            (wire(1, 500), Ok(Duration::new(1, 500))),
            (wire(0, 999_999_999), Ok(Duration::new(0, 999_999_999))),
            (
                wire(0, 1_000_000_000),
                Err("nanos must be within ±999,999,999"),
            ),
            (
                wire(2, -1),
                Err("seconds and nanos must have the same sign"),
            ),
            (
                wire(-2, 1),
                Err("seconds and nanos must have the same sign"),
            ),
            (wire(-1, 0), Err("must not be negative")),
            (wire(0, -1), Err("must not be negative")),
        ];
        for (wire, expected) in cases {
            let got = duration_from_wire(wire);
            assert_eq!(got, expected.map_err(str::to_owned), "{wire:?}");
        }
    }
}

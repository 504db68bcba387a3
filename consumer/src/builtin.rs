//! The handlers shipped with the binary, for the demo, the tests and the benchmark. They are a
//! closed set, so they are one enum matched here.

use crate::handler::{Handler, Job, JobError};
use async_trait::async_trait;
use std::time::Duration;

/// A built-in handler, registered under its [`name`](Builtin::name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// Succeeds at once.
    Noop,
    /// Sleeps for the payload's duration (`250ms`, `2s`, or a number of milliseconds).
    Sleep,
    /// Fails as the payload says: `N` fails the first N attempts transiently, then succeeds;
    /// `always` fails transiently every time; `permanent` fails permanently; `panic` panics.
    Fail,
    /// Aborts the whole process: a crash loop, stopped only by the queue's delivery limit. Off
    /// unless configured (`handlers.builtin`), for tests.
    Crash,
}

impl Builtin {
    /// Every built-in handler.
    pub const ALL: [Self; 4] = [Self::Noop, Self::Sleep, Self::Fail, Self::Crash];

    /// The job type it handles.
    pub fn name(self) -> &'static str {
        match self {
            Self::Noop => "noop",
            Self::Sleep => "sleep",
            Self::Fail => "fail",
            Self::Crash => "crash",
        }
    }

    /// The built-in handler called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|builtin| builtin.name() == name)
    }
}

#[async_trait]
impl Handler for Builtin {
    async fn handle(&self, job: Job) -> Result<(), JobError> {
        let text = || String::from_utf8_lossy(&job.payload).trim().to_owned();
        match self {
            Self::Noop => Ok(()),
            Self::Sleep => {
                tokio::time::sleep(sleep_duration(&text())?).await;
                Ok(())
            }
            Self::Fail => fail(&text(), job.attempt),
            Self::Crash => std::process::abort(),
        }
    }
}

fn sleep_duration(payload: &str) -> Result<Duration, JobError> {
    if let Ok(ms) = payload.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    // The error names the rule, never the payload: it goes to logs and dead-letter headers.
    humantime::parse_duration(payload).map_err(|_| {
        JobError::permanent("sleep: the payload is not a duration (250ms, 2s, or milliseconds)")
    })
}

fn fail(plan: &str, attempt: u32) -> Result<(), JobError> {
    match plan {
        "always" => Err(JobError::transient(format!(
            "fail: attempt {attempt} failed, as always"
        ))),
        "permanent" => Err(JobError::permanent("fail: permanent failure, as asked")),
        "panic" => panic!("fail: panicking on attempt {attempt}, as asked"),
        count => match count.parse::<u32>() {
            Ok(failures) if attempt <= failures => Err(JobError::transient(format!(
                "fail: attempt {attempt} of the first {failures} fails"
            ))),
            Ok(_) => Ok(()),
            Err(_) => Err(JobError::permanent(
                "fail: the payload is not a plan (N, always, permanent, panic)",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_plans() {
        let transient = |m: &str| Err(JobError::Transient(m.into()));
        let cases = [
            ("2", 1, transient("fail: attempt 1 of the first 2 fails")),
            ("2", 2, transient("fail: attempt 2 of the first 2 fails")),
            ("2", 3, Ok(())),
            ("0", 1, Ok(())),
            ("always", 9, transient("fail: attempt 9 failed, as always")),
            (
                "permanent",
                1,
                Err(JobError::Permanent(
                    "fail: permanent failure, as asked".into(),
                )),
            ),
        ];
        for (plan, attempt, expected) in cases {
            assert_eq!(fail(plan, attempt), expected, "{plan} on attempt {attempt}");
        }
        assert!(matches!(fail("x", 1), Err(JobError::Permanent(_))));
    }

    #[test]
    fn sleep_durations() {
        assert_eq!(sleep_duration("250"), Ok(Duration::from_millis(250)));
        assert_eq!(sleep_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(sleep_duration("soon").is_err());
    }

    #[test]
    fn names_round_trip() {
        for builtin in Builtin::ALL {
            assert_eq!(Builtin::from_name(builtin.name()), Some(builtin));
        }
        assert_eq!(Builtin::from_name("nope"), None);
    }
}

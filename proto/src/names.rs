//! Validated names: a value of one of these types is known to satisfy the rule that makes it safe
//! as an AMQP short string, a routing key part, and a header value.

use std::fmt;

/// Why a name was refused. The message states the rule, so it can go to a client as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The value is empty.
    #[error("must not be empty")]
    Empty,
    /// The value is longer than the rule allows.
    #[error("must be at most {max} characters")]
    TooLong {
        /// The longest allowed length.
        max: usize,
    },
    /// The value holds a character outside the rule.
    #[error("must match {rule}")]
    Charset {
        /// The rule, as a regular expression.
        rule: &'static str,
    },
}

/// Defines a validated string newtype with a `try_new` constructor and `as_str`.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, max = $max:expr, rule = $rule:expr, first = $first:expr, rest = $rest:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl $name {
            /// The rule every value satisfies, as a regular expression.
            pub const RULE: &'static str = $rule;
            /// The longest allowed value, in characters (all allowed characters are ASCII).
            pub const MAX_LEN: usize = $max;

            /// Validates `value` against [`Self::RULE`].
            pub fn try_new(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                check(&value, $max, $rule, $first, $rest)?;
                Ok(Self(value))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;

            fn try_from(value: String) -> Result<Self, NameError> {
                Self::try_new(value)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A work queue's short name, as clients give it (`default`, `emails`). No dots: the delay
    /// ladder routes on `#.<queue>`, and a dot would let one queue's binding match another's.
    QueueName,
    max = 64,
    rule = "[a-z0-9][a-z0-9_-]{0,63}",
    first = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit(),
    rest = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-'
);

name_type!(
    /// A job type: the name a handler is registered under (`email.send`).
    JobType,
    max = 128,
    rule = "[A-Za-z0-9_.:-]{1,128}",
    first = is_token_char,
    rest = is_token_char
);

name_type!(
    /// A job id: the client's idempotency key, or a generated UUIDv7.
    JobId,
    max = 128,
    rule = "[A-Za-z0-9_.:-]{1,128}",
    first = is_token_char,
    rest = is_token_char
);

name_type!(
    /// The prefix every exchange and queue name starts with, so that several jobpipe
    /// installations (or tests) share one broker without colliding.
    Prefix,
    max = 64,
    rule = "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
    first = |c: u8| c.is_ascii_alphanumeric(),
    rest = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-'
);

impl JobId {
    /// A fresh, time-ordered id for a job whose client gave none.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

impl QueueName {
    /// The queue a job goes to when the client names none.
    pub fn default_queue() -> Self {
        Self("default".to_owned())
    }
}

fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-')
}

fn check(
    value: &str,
    max: usize,
    rule: &'static str,
    first: fn(u8) -> bool,
    rest: fn(u8) -> bool,
) -> Result<(), NameError> {
    let bytes = value.as_bytes();
    let Some((&head, tail)) = bytes.split_first() else {
        return Err(NameError::Empty);
    };
    if bytes.len() > max {
        return Err(NameError::TooLong { max });
    }
    if !first(head) || !tail.iter().all(|&c| rest(c)) {
        return Err(NameError::Charset { rule });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn queue_names() {
        let cases: &[(&str, Result<(), NameError>)] = &[
            ("default", Ok(())),
            ("emails_v2-eu", Ok(())),
            ("0day", Ok(())),
            ("", Err(NameError::Empty)),
            (
                "-x",
                Err(NameError::Charset {
                    rule: QueueName::RULE,
                }),
            ),
            (
                "a.b",
                Err(NameError::Charset {
                    rule: QueueName::RULE,
                }),
            ),
            (
                "Upper",
                Err(NameError::Charset {
                    rule: QueueName::RULE,
                }),
            ),
            (
                "é",
                Err(NameError::Charset {
                    rule: QueueName::RULE,
                }),
            ),
            (&"q".repeat(65), Err(NameError::TooLong { max: 64 })),
        ];
        for (value, expected) in cases {
            assert_eq!(
                QueueName::try_new(*value).map(|_| ()),
                *expected,
                "queue {value:?}"
            );
        }
    }

    #[test]
    fn job_types_and_ids() {
        for ok in ["email.send", "a", "urn:x:y", "A_b-9"] {
            assert!(JobType::try_new(ok).is_ok(), "{ok}");
            assert!(JobId::try_new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "slash/", "new\nline"] {
            assert!(JobType::try_new(bad).is_err(), "{bad:?}");
            assert!(JobId::try_new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            JobType::try_new("t".repeat(129)),
            Err(NameError::TooLong { max: 128 })
        );
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = JobId::generate();
        let b = JobId::generate();
        assert_ne!(a, b);
        assert!(JobId::try_new(a.as_str()).is_ok());
    }

    proptest! {
        #[test]
        fn accepted_names_fit_a_short_string(value in "\\PC{0,300}") {
            for ok in [
                QueueName::try_new(value.clone()).map(|n| n.0),
                JobType::try_new(value.clone()).map(|n| n.0),
                Prefix::try_new(value.clone()).map(|n| n.0),
            ].into_iter().flatten() {
                prop_assert!(ok.len() <= 128 && ok.is_ascii());
            }
        }
    }
}

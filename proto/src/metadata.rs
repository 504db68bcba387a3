//! The rules for a job's metadata: free-form string pairs that travel as plain AMQP headers, so
//! they must stay apart from reserved header names and small beside the frame size.

use crate::headers;

/// The most metadata entries one job may carry.
pub const MAX_ENTRIES: usize = 32;
/// The longest metadata key, in characters (keys are ASCII).
pub const MAX_KEY_LEN: usize = 64;
/// The longest metadata value, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024;
/// The key rule, as a regular expression (plus: not reserved, see [`headers::is_reserved`]).
pub const KEY_RULE: &str =
    "[A-Za-z0-9_.-]{1,64}, not starting with \"x-\", not traceparent or tracestate";

/// Checks one entry; the error says what is wrong in a sentence fit for a client.
pub fn check_entry(key: &str, value: &str) -> Result<(), String> {
    let key_ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        && !headers::is_reserved(key);
    if !key_ok {
        return Err(format!("key {:?} must match {KEY_RULE}", truncate(key, 80)));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "value of {key:?} is {} bytes, over the limit of {MAX_VALUE_BYTES}",
            value.len()
        ));
    }
    Ok(())
}

/// The first `max` bytes of `text`, cut on a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries() {
        let long_value = "v".repeat(MAX_VALUE_BYTES + 1);
        let cases = [
            ("tenant", "acme", true),
            ("a.b-c_D9", "", true),
            ("", "v", false),
            ("x-custom", "v", false),
            ("traceparent", "v", false),
            ("has space", "v", false),
            ("k", long_value.as_str(), false),
            (&"k".repeat(65), "v", false),
        ];
        for (key, value, ok) in cases {
            assert_eq!(check_entry(key, value).is_ok(), ok, "{key:?}");
        }
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}

//! Finding a secret in a service's output however it was written: as text, as the decimal or
//! hexadecimal values of its bytes (a frame dump), or in base64 at any alignment (inside a SASL
//! response or a basic-auth header).

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE},
};

/// How `secret` appears in `text`, if it does.
pub fn find(text: &str, secret: &str) -> Option<&'static str> {
    let bytes = secret.as_bytes();
    if text.contains(secret) {
        return Some("text");
    }
    // Decimal bytes with any separators: "[112, 119]", "112 119", "112,119".
    let numbers: Vec<&str> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|number| !number.is_empty())
        .collect();
    let wanted: Vec<String> = bytes.iter().map(u8::to_string).collect();
    if numbers.windows(wanted.len()).any(|window| window == wanted) {
        return Some("decimal bytes");
    }
    // Hexadecimal with any separators and either case.
    let hex_digits: String = text
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if hex_digits.contains(&hex) {
        return Some("hex");
    }
    // Base64 of the secret after 0, 1 or 2 other bytes: the characters that depend on the
    // secret alone, without the group it shares with what precedes or follows it.
    for engine in [&STANDARD, &URL_SAFE] {
        for offset in 0..3 {
            let mut padded = vec![0u8; offset];
            padded.extend_from_slice(bytes);
            let encoded = engine.encode(&padded);
            let whole_groups = (padded.len() / 3) * 4;
            let core = &encoded[if offset == 0 { 0 } else { 4 }..whole_groups];
            if core.len() >= 8 && text.contains(core) {
                return Some("base64");
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "Pw-7f3c9e1ab44d";

    #[test]
    fn finds_the_secret_in_every_encoding_and_nowhere_else() {
        let sasl = |before: &str| STANDARD.encode(format!("{before}\0user\0{SECRET}"));
        let dump = format!("{:?}", SECRET.as_bytes());
        let spaced_hex: String = SECRET.bytes().map(|b| format!("{b:02X} ")).collect();
        let cases = [
            (format!("url amqp://u:{SECRET}@h"), Some("text")),
            (format!("frame {dump} end"), Some("decimal bytes")),
            (format!("bytes: {spaced_hex}"), Some("hex")),
            (format!("response {}", sasl("")), Some("base64")),
            (format!("response {}", sasl("a")), Some("base64")),
            (format!("response {}", sasl("ab")), Some("base64")),
            ("nothing here: [80, 119, 45] 50 77 2d".to_owned(), None),
            (format!("half {}", &SECRET[..7]), None),
        ];
        for (text, expected) in cases {
            assert_eq!(find(&text, SECRET), expected, "{text}");
        }
    }
}

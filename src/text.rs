//! Strings from a repository on their way to a person: whoever wrote the
//! repository chose them, so control characters (terminal escape sequences
//! among them) are shown escaped, never sent raw.

use std::borrow::Cow;

/// `s` with every control character and backslash escaped (`\u{1b}`,
/// `\n`, `\\`, ...); the string itself when it has none.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return Cow::Borrowed(s);
    }
    Cow::Owned(
        s.chars()
            .map(|c| {
                // A backslash is escaped too, so that no name prints like
                // another's escape.
                if c.is_control() || c == '\\' {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// A name that may not be UTF-8, safe to print and told apart from every
/// other: invalid bytes as `\xNN`, control characters escaped.
pub fn escape_bytes(raw: &[u8]) -> String {
    let mut out = String::new();
    for chunk in raw.utf8_chunks() {
        out.push_str(&escape(chunk.valid()));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_never_pass_raw() {
        assert_eq!(super::escape("plain-host"), "plain-host");
        let shown = super::escape("evil\u{1b}[31mhost\u{7}\n\u{9b}");
        assert!(!shown.chars().any(char::is_control), "{shown}");
        assert!(shown.contains("evil") && shown.contains("[31mhost"));
    }

    #[test]
    fn names_that_are_not_utf8_stay_apart() {
        assert_eq!(super::escape_bytes(b"a\xfe"), "a\\xfe");
        assert_ne!(super::escape_bytes(b"\xfe"), super::escape_bytes(b"\xff"));
        assert_ne!(super::escape_bytes(b"\xfe"), super::escape_bytes(b"\\xfe"));
        assert_eq!(
            super::escape_bytes("d\u{e9}j\u{e0}".as_bytes()),
            "d\u{e9}j\u{e0}"
        );
    }
}

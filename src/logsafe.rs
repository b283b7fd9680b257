//! Client-chosen text on its way into a log (SPEC §9): control characters escaped so
//! a newline cannot forge an audit line in the text format, and cut to 128
//! characters so a 16 KiB header cannot be logged per request.

use std::fmt;

/// The most characters of one client-supplied string that reach a log.
pub const MAX_CHARS: usize = 128;

/// Wraps a client-supplied string for `tracing` fields: `field = %Untrusted(s)`.
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, c) in self.0.chars().enumerate() {
            if n == MAX_CHARS {
                return f.write_str("…");
            }
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                write!(f, "{}", c.escape_unicode())?;
            } else {
                fmt::Write::write_char(f, c)?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// The cleaned text as an owned string.
pub fn clean(s: &str) -> String {
    Untrusted(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_is_cut() {
        assert_eq!(clean("RS256\nevent=login"), "RS256\\u{a}event=login");
        assert_eq!(clean("a\u{1b}[31m"), "a\\u{1b}[31m");
        let long = "k".repeat(16 * 1024);
        let out = clean(&long);
        assert_eq!(out.chars().count(), MAX_CHARS + 1);
        assert!(out.ends_with('…'));
        assert_eq!(clean("pcalice"), "pcalice");
    }
}

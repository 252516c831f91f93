//! Strings on their way into logs, events, conditions and error answers: bounded, and on one
//! line. Several of them carry what a client sent, which may be anything.

/// `s` cut to at most `max` bytes, on a character boundary, marked with `…` when cut.
pub fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mark = "…";
    let mut end = max.saturating_sub(mark.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{mark}", &s[..end])
}

/// `s` with its control characters escaped (`\n`, `\u{1b}`), so it stays one line.
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The most of a client's string a log field quotes (logged with `?`, which escapes it).
pub const QUOTE_MAX: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_are_cut_on_a_character_boundary() {
        assert_eq!(truncated("short", 10), "short");
        let cut = truncated(&"ä".repeat(600), 1024);
        assert!(cut.len() <= 1024 && cut.ends_with('…'), "{}", cut.len());
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("a\nb\u{1b}[31m"), r"a\nb\u{1b}[31m");
    }
}

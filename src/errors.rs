//! Errors as one log or condition line, with every cause.

/// `e` and each of its sources, joined by `: `, skipping a source whose text `e` already
/// carries. kube's and hyper's errors put the cause that matters to an operator (connection
/// refused, an unknown CA) only in `source()`; `Display` alone would say `client error (Connect)`.
/// Control characters are escaped: an admission webhook's denial, which the apiserver passes on,
/// may span lines.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    crate::text::escape_controls(&s)
}

/// One line on stderr for a command-line user. A stderr that cannot be written (a closed pipe)
/// loses the line, not the exit status: `eprintln!` would panic there.
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("admission webhook \"policy\" denied the request:\nrule 1 failed\nrule 2 failed")]
    struct MultiLine;

    #[test]
    fn a_multi_line_message_stays_on_one_line() {
        assert_eq!(
            chain(&MultiLine),
            "admission webhook \"policy\" denied the request:\\nrule 1 failed\\nrule 2 failed"
        );
    }

    #[test]
    fn every_cause_is_named_once() {
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(
            chain(&Outer(refused)),
            "client error (Connect): connection refused"
        );
        let plain = std::io::Error::other("no answer");
        assert_eq!(chain(&plain), "no answer");
    }
}

//! Errors as one log or condition line, with every cause.

/// `e` and each of its sources, joined by `: `, skipping a source whose text `e` already
/// carries. kube's and hyper's errors put the cause that matters to an operator (connection
/// refused, an unknown CA) only in `source()`; `Display` alone would say `client error (Connect)`.
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
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] std::io::Error);

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

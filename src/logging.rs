//! Log setup shared by both binaries: one line per event on stderr, text or JSON.

use std::io::Write;

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. debug, or info,backup_operator=debug (a
    /// target alone, backup_operator=debug, silences every other crate).
    #[arg(long, global = true, env = "LOG_LEVEL", default_value = "info", value_parser = parse_filter)]
    pub log_level: String,
}

/// An EnvFilter that means what it looks like. EnvFilter reads a bare word that is no level as
/// a target enabled at TRACE, so `warning` or `verbose` would parse, enable one target nobody
/// logs under and silence everything else, errors included.
pub fn parse_filter(s: &str) -> Result<String, String> {
    // An empty filter enables nothing, errors included (an empty LOG_LEVEL in a manifest).
    if s.trim().is_empty() {
        return Err(
            "is empty, which would silence every log line: give a level such as info".to_owned(),
        );
    }
    for directive in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains('=') && !directive.contains('[');
        if bare
            && directive
                .parse::<tracing_subscriber::filter::LevelFilter>()
                .is_err()
        {
            return Err(format!(
                "{directive:?} is not a log level: trace, debug, info, warn, error or off, or TARGET=LEVEL such as backup_operator=debug"
            ));
        }
    }
    EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("{s:?} is not a log filter: {e}"))
}

pub fn init(args: &LogArgs) {
    // parse_filter has accepted it; the fallback is for a caller that did not use clap.
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|e| {
        let _ = writeln!(
            std::io::stderr(),
            "invalid --log-level {:?} ({e}); using info",
            args.log_level
        );
        EnvFilter::new("info")
    });
    // A line that cannot be written (stderr a closed pipe) is dropped: tracing would report it
    // with eprint!, which panics when stderr is what fails.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_that_is_no_level_is_refused_instead_of_silencing_the_log() {
        for good in [
            "info",
            "WARN",
            "backup_operator=debug",
            "info,kube=warn",
            "off",
            "error,",
        ] {
            assert_eq!(parse_filter(good).as_deref(), Ok(good));
        }
        for (bad, says) in [
            ("warning", "\"warning\" is not a log level"),
            ("info,verbose", "\"verbose\" is not a log level"),
            ("backup_operator=loud", "is not a log filter"),
            ("", "would silence every log line"),
            (" ", "would silence every log line"),
        ] {
            let e = parse_filter(bad).unwrap_err();
            assert!(e.contains(says) && !e.contains('\n'), "{bad}: {e}");
        }
    }
}

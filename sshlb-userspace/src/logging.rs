//! The agent's log output: which events (`--log-level`, else `RUST_LOG`, else `info`) and in
//! which shape (`--log-format text|json`), always on stderr (journald keeps it under systemd).

use tracing_subscriber::EnvFilter;

/// The shape of log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable, timestamped line per event.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields.message`, ...), for log shippers.
    Json,
}

/// Logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The level or filter does not parse.
    #[error("log filter {filter:?}: {source} (a level — error, warn, info, debug, trace — or RUST_LOG directives such as \"info,sshlb=debug\")")]
    BadFilter {
        /// The filter as given.
        filter: String,
        /// Why it does not parse.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was already installed.
    #[error("a log subscriber is already installed")]
    AlreadySet,
}

/// The filter in force: `flag` (`--log-level`) wins over `env` (`RUST_LOG`); with neither (or
/// empty values), `info`.
pub fn filter_spec(flag: Option<&str>, env: Option<&str>) -> String {
    [flag, env].into_iter().flatten().find(|s| !s.trim().is_empty()).unwrap_or("info").to_owned()
}

/// Installs the process's log subscriber: `level` from `--log-level` (else `RUST_LOG`).
pub fn init(level: Option<&str>, format: LogFormat) -> Result<(), LogError> {
    let env = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let filter = filter_spec(level, env.as_deref());
    let parsed = EnvFilter::builder()
        .parse(&filter)
        .map_err(|source| LogError::BadFilter { filter: filter.clone(), source })?;
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(parsed);
    let installed = match format {
        LogFormat::Text => {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            builder.with_target(false).with_ansi(tty).try_init()
        }
        LogFormat::Json => builder.json().with_current_span(false).try_init(),
    };
    installed.map_err(|_| LogError::AlreadySet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_the_environment_then_info() {
        assert_eq!(filter_spec(Some("debug"), Some("error")), "debug");
        assert_eq!(filter_spec(None, Some("warn,sshlb=trace")), "warn,sshlb=trace");
        assert_eq!(filter_spec(None, Some(" ")), "info");
        assert_eq!(filter_spec(None, None), "info");
    }

    #[test]
    fn a_bad_filter_is_a_typed_error_naming_it() {
        let err = init(Some("loud=="), LogFormat::Text).expect_err("not a filter");
        assert!(matches!(err, LogError::BadFilter { .. }), "{err:?}");
        assert!(err.to_string().contains("\"loud==\""), "{err}");
    }
}

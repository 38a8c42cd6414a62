//! Process-wide logging: tracing to stderr with a level filter that can be replaced while
//! the broker runs (the admin API's log-level endpoint calls `set_filter`), as text or as
//! one JSON object per line (`ringfeed.log.format`).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// How each log line is written; the values of `ringfeed.log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, coloured only on a terminal.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `message`, the event's fields,
    /// `target`), for log pipelines.
    Json,
}

impl LogFormat {
    /// The accepted values of `ringfeed.log.format`, in the order the docs list them.
    pub const NAMES: &'static [&'static str] = &["text", "json"];

    /// Parses a value the settings table already accepted (one of `NAMES`).
    pub fn from_setting(value: &str) -> Self {
        match value {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => panic!("ringfeed.log.format {other:?} passed validation"),
        }
    }
}

/// Whether text logs carry ANSI colour: only when stderr (where logs go) is a terminal, and
/// never when `NO_COLOR` is set to a non-empty value (<https://no-color.org>). Journald, files and log
/// shippers otherwise receive escape sequences inside every line.
fn colour_wanted(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax (`info`,
/// `ringfeed_broker=debug,warn`); `RUST_LOG`, when set, wins so a developer can always get
/// more detail without touching the broker's configuration.
pub fn init(filter: &str, format: LogFormat) -> Result<(), String> {
    let initial = match EnvFilter::try_from_default_env() {
        Ok(from_env) => from_env,
        Err(_) => parse(filter)?,
    };
    let (filter_layer, handle) = reload::Layer::new(initial);
    let colour = colour_wanted(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(colour)
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            // `message` and the event's fields at the top level, not under "fields".
            .flatten_event(true)
    });
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(text)
        .with(json)
        .try_init()
        .map_err(|error| format!("installing the log subscriber: {error}"))?;
    // `init` runs once per process; a second call already failed above.
    let _ = FILTER.set(handle);
    Ok(())
}

/// Replaces the level filter of the running process.
pub fn set_filter(filter: &str) -> Result<(), String> {
    let parsed = parse(filter)?;
    let handle = FILTER
        .get()
        .ok_or_else(|| "logging is not initialised".to_string())?;
    handle
        .reload(parsed)
        .map_err(|error| format!("replacing the log filter: {error}"))
}

/// The filter in force, in the syntax `set_filter` accepts.
pub fn current_filter() -> Option<String> {
    FILTER
        .get()
        .and_then(|handle| handle.with_current(ToString::to_string).ok())
}

fn parse(filter: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(filter).map_err(|error| format!("invalid log filter {filter:?}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_wanted(true, None));
        // NO_COLOR set to an empty string does not count (no-color.org).
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None));
        assert!(!colour_wanted(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn every_format_name_parses() {
        for name in LogFormat::NAMES {
            LogFormat::from_setting(name);
        }
        assert_eq!(LogFormat::from_setting("json"), LogFormat::Json);
    }
}

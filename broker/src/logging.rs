//! Process-wide logging: tracing to stderr with a level filter that can be replaced while
//! the broker runs (the admin API's log-level endpoint calls `set_filter`).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax (`info`,
/// `ringfeed_broker=debug,warn`); `RUST_LOG`, when set, wins so a developer can always get
/// more detail without touching the broker's configuration.
pub fn init(filter: &str) -> Result<(), String> {
    let initial = match EnvFilter::try_from_default_env() {
        Ok(from_env) => from_env,
        Err(_) => parse(filter)?,
    };
    let (filter_layer, handle) = reload::Layer::new(initial);
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
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

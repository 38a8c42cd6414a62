//! The Ringfeed broker as a library: the binary (`main.rs`) parses the command line and calls
//! `server::serve`; fuzz targets and the admin CLI reach the codec and handlers through here.

pub mod admin;
pub mod admission;
pub mod check_data;
pub mod cli;
pub mod codec;
pub mod config;
pub mod connection;
pub mod controller;
#[cfg(test)]
mod crash_consistency;
pub mod disk;
pub mod error_codes;
pub mod frame;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod groups;
pub mod handlers;
pub mod limits;
pub mod log_throttle;
pub mod logging;
pub mod metadata;
pub mod metrics;
pub mod partition;
pub mod preflight;
pub mod producer_state;
pub mod recompress;
pub mod records;
pub mod registry;
pub mod request_decode;
pub mod router;
pub mod server;
pub mod settings;
pub mod shard;
#[cfg(test)]
mod simulation;
pub mod topic_config;
pub mod turns;

/// The partition log: Kafka batches in `O_DIRECT` segments (crate `ringfeed-storage`).
pub use ringfeed_storage as storage;

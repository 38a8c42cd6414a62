//! The Ringfeed broker as a library: the binary (`main.rs`) parses the command line and calls
//! `server::serve` (or `ringfeed_cli::run` for the client subcommands); fuzz targets reach the
//! request decoding and handlers through here.

pub mod acl;
pub mod admin;
pub mod admission;
pub mod budgets;
pub mod check_data;
pub mod cluster;
pub mod cluster_config;
pub mod compaction;
pub mod config;
pub mod controller;
#[cfg(test)]
mod crash_consistency;
pub mod disk;
pub mod fetch_sessions;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod groups;
pub mod handlers;
pub mod isolation;
pub mod leader_moves;
pub mod limits;
pub mod listeners;
pub mod log_throttle;
pub mod logging;
pub mod message_format;
pub mod metadata;
pub mod metrics;
pub mod partition;
pub mod preflight;
pub mod producer_state;
pub mod quotas;
pub mod recompress;
pub mod records;
pub mod replays;
pub mod replica;
pub mod request_decode;
pub mod router;
pub mod sasl;
pub mod server;
pub mod settings;
pub mod shard;
pub mod shutdown;
#[cfg(test)]
mod simulation;
pub mod sockets;
#[cfg(test)]
mod test_executor;
pub mod tls;
pub mod topic_config;
pub mod transactions;
pub mod turns;
mod wake;

/// The partition log: Kafka batches in `O_DIRECT` segments (crate `ringfeed-storage`).
pub use ringfeed_storage as storage;

// The wire codec lives in `ringfeed-protocol`; these keep the broker's `crate::frame::…`,
// `crate::codec::…` paths pointing at it.
pub use ringfeed_protocol::{codec, error_codes, frame, registry};

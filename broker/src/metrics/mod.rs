//! What the broker counts, and how the counts reach the admin listener.
//!
//! Ownership: every shard owns one [`ShardMetrics`] (plain `Cell`s and `RefCell`s, no
//! atomics, no locks) and is the only writer of it; request paths add to it in place. The
//! admin thread never reads it: on each scrape it sends every shard a [`ScrapeRequest`]
//! and the shard answers with a [`ShardSnapshot`], an owned copy built on the shard's own
//! thread between two of its tasks (`snapshot::collect`). The admin thread merges the
//! snapshots and encodes them (`exposition`). A scrape therefore costs each shard one
//! short task, and nothing on a request path ever waits for the admin plane.

pub mod error_code;
pub mod exposition;
mod shard;
pub mod snapshot;

pub use error_code::ResponseErrorCode;
pub use shard::{
    HistogramBuckets, LatencyHistogram, OpenConnection, ShardMetrics,
    LATENCY_BUCKET_BOUNDS_SECONDS, TIMED_APIS,
};
pub use snapshot::{ScrapeRequest, ShardSnapshot};

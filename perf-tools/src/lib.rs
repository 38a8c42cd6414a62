//! `ringfeed-perf`: the machine's ceilings, measured with the same care as the broker's figures,
//! so every broker figure can be quoted as a fraction of what the hardware allows.
//!
//! - [`disk`]: `O_DIRECT` sequential appends through `io_uring`, and write+fdatasync latency.
//! - [`net`]: loopback TCP ping-pong round trips and single-stream bandwidth.
//! - [`report`]: broker figures divided by those ceilings.
//! - [`document`]: the JSON every run writes (the contract the bench reads).

pub mod cli;
pub mod disk;
pub mod document;
pub mod net;
pub mod report;
pub mod summary;

//! Ringfeed's Kafka wire codec, shared by the broker, the storage crate and the clients
//! (`ringfeed-client`, the CLI, the bench). A pure codec: no IO, no async, no runtime.
//!
//! - [`frame`]: size-prefixed frames, the size checked against a limit before any body buffer.
//! - [`batch`]: record-batch framing (header layout, whole batches out of a `records` blob).
//! - [`codec`]: request and response headers and bodies around the generated `kafka-protocol`
//!   messages, for both sides of a connection.
//! - [`fetch_frame`]: the Fetch response frame as framing pieces and record batches, so the
//!   records are written to the socket without a copy.
//! - [`message_set`]: Kafka's message format v0/v1 (magic 0 and 1), CRC32 checked.
//! - [`error_codes`]: the Kafka error codes Ringfeed returns, named once.
//! - [`registry`]: the one table of APIs the broker serves with their version ranges.
//!
//! Without the default `codec` feature only `frame` and `batch` are built: the storage crate
//! needs the batch layout, not the request protocol.

pub mod batch;
#[cfg(feature = "codec")]
pub mod codec;
#[cfg(feature = "codec")]
pub mod error_codes;
#[cfg(feature = "codec")]
pub mod fetch_frame;
pub mod frame;
pub mod message_set;
#[cfg(feature = "codec")]
pub mod registry;

//! Ringfeed's Kafka client, shared by the `ringfeed` CLI and `ringfeed-bench`. It speaks the
//! Kafka protocol to any broker, Ringfeed or not: requests are the `kafka-protocol` crate's
//! generated messages framed by `ringfeed-protocol`, versions are negotiated per broker with
//! `ApiVersions` (or taken from a fixed table for brokers without it), partition requests go
//! to leaders found through `Metadata` and group requests to the coordinator found through
//! `FindCoordinator`.
//!
//! Blocking std sockets: a CLI waits for every answer anyway, and the bench's pinned threads
//! time a response from the moment `read` returns. A [`Connection`] runs one request at a
//! time; [`Connection::split`] gives a [`FrameWriter`] and a [`FrameReader`] for two threads
//! so many requests can be in flight on one connection (Kafka answers in request order).
//! Every socket operation has a timeout and every response frame a size bound.
//!
//! - [`versions`]: what a client speaks and the negotiation against what a broker serves.
//! - [`connection`]: one connection, its frames and its calls.
//! - [`cluster`]: the cluster seen from a bootstrap broker: metadata, leaders, coordinators,
//!   list offsets.
//! - [`security`]: TLS (rustls) and SASL settings, read from a Kafka client properties file;
//!   [`sasl`]: the PLAIN and SCRAM login exchanges a connection runs after `ApiVersions`.
//!
//! Typed calls, one place per API: each takes plain Rust values, builds its request for the
//! version negotiated with the broker and returns plain values, an error code becoming an
//! [`Error`] of kind [`ErrorKind::Broker`].
//!
//! - [`produce`]: `Produce`, as a call or encoded straight into a caller's frame buffer.
//! - [`fetch`]: `Fetch`, as a call or as the request for a caller that times its answer.
//! - [`admin`]: `CreateTopics`, `DeleteTopics`, `DescribeConfigs`, `IncrementalAlterConfigs`.
//! - [`groups`]: `OffsetCommit`, `OffsetFetch`, `JoinGroup`, `SyncGroup`, `Heartbeat`,
//!   `LeaveGroup`, `ListGroups`, `DescribeGroups`, `DeleteGroups`.

pub mod admin;
pub mod cluster;
pub mod connection;
pub mod error;
pub mod fetch;
pub mod groups;
pub mod produce;
pub mod sasl;
pub mod security;
pub mod transactions;
pub mod versions;

pub use cluster::{group_id, topic_name, Cluster, PartitionLayout, TopicLayout};
pub use connection::{encode_request, ConnectOptions, Connection, FrameReader, FrameWriter};
pub use error::{Error, ErrorKind, Result};
pub use fetch::FetchFrom;
pub use produce::ProduceTo;
pub use security::Security;
pub use versions::{ApiRange, Versions, VersionsMode};

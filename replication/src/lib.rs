//! Replication for Ringfeed (issue 12): one raft-rs group per partition and one for the
//! controller, driven by the shard that owns them, over a broker-to-broker wire of our own.
//!
//! The Raft log is the partition log: one Raft entry is one Kafka v2 batch as storage keeps it
//! (see `storage/FORMAT.md`), so there is no second log and no offset-translation table.
//! `docs/REPLICATION.md` holds the design; each module says which part it owns:
//! - `wire`: the broker-to-broker frame codec (`replication/WIRE.md` draws it);
//! - `driver`: `MultiRaft`, the per-shard driver of many raft-rs groups, generic over the
//!   group store (`GroupStore`) and the shard's durability barrier (`Durability`);
//! - `log_store`: raft-rs's `Storage` over a partition log (`LogStore`);
//! - `log_store_meta`: the shard's raft-meta store (hard state, conf state, snapshot point);
//! - `raft_log`: raft-rs's log lines forwarded to `tracing` (target `raft`);
//! - `fuzzing`: the entry point of the `wire_decoding` fuzz target;
//! - `voters`: `controller.quorum.voters`, the brokers and their internal addresses.
//!
//! `tests/raft_simulation.rs` runs drivers of 3 and 5 nodes over a simulated network and
//! power-cut disks and checks Raft's safety invariants on every step.

pub mod driver;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod log_store;
pub mod log_store_meta;
pub mod raft_log;
pub mod voters;
pub mod wire;

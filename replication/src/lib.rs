//! Replication for Ringfeed (issue 12): one raft-rs group per partition and one for the
//! controller, driven by the shard that owns them, over a broker-to-broker wire of our own.
//!
//! The Raft log is the partition log: one Raft entry is one Kafka v2 batch as storage keeps it
//! (see `storage/FORMAT.md`), so there is no second log and no offset-translation table.
//! `docs/REPLICATION.md` holds the design; each module says which part it owns.

pub mod driver;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod wire;

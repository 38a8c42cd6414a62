//! The shard side of replicated partitions (issue 12, `docs/REPLICATION.md` § Groups, § The
//! Raft log is the partition log, § One driver round per shard, § Kafka semantics on top).
//!
//! A partition whose replica list names more than one broker is a Raft group; each broker
//! hosting a replica drives it on the shard the controller placed the replica on. A shard
//! owns one [`ReplicaManager`] for all of them: one `MultiRaft` over `LogStore`s (the Raft
//! log is the partition log) and one `LogDurability` (one fdatasync wait per round across
//! every group of the shard). A partition with one replica never reaches this module: it
//! stays in `partition::PartitionTable` exactly as before.
//!
//! - `types`: what the shard hands in ([`HostedReplica`]) and what it gets out
//!   ([`LeadershipChange`], the outcomes of produce, fetch and list-offsets);
//! - `manager`: [`ReplicaManager`]: opening and closing groups (`reconcile`), the driver
//!   rounds, frames in and out (bounded queues), produce waits answered from the rounds,
//!   leadership reports;
//! - `catch_up`: a follower behind what the leader keeps in memory served from its log;
//! - `cleaning`: the log cleaner on the hosted logs of compacted topics (committed entries
//!   only, no transaction marker retired);
//! - `producers`: idempotent producers' sequence checks over committed and proposed batches;
//! - `retention`: `retention.ms`/`retention.bytes` on the hosted logs, never removing what
//!   the group may still need;
//! - `serve`: what clients' requests do on a replicated partition (produce, fetch,
//!   list-offsets, long-poll waits) on top of the manager.
//!
//! Owned by one shard, `!Send` (the stores hold the shard's disk handles and `Rc`s).

pub mod catch_up;
pub mod cleaning;
pub mod handover;
pub mod manager;
pub mod producers;
pub mod retention;
pub mod serve;
pub mod txns;
pub mod types;

pub use manager::{ReplicaManager, ReplicaManagerStart, OUTCOME_UNKNOWN};
pub use serve::PendingReplicaProduce;
pub use types::{
    CoordinatorRole, HostedReplica, LeadershipChange, ReplicaFetch, ReplicaOffset, ReplicaProduce,
};

#[cfg(test)]
mod cleaning_tests;
#[cfg(test)]
mod idempotence_sim_tests;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod txn_sim_tests;
#[cfg(test)]
mod txn_tests;

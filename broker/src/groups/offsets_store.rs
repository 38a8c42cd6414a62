//! Where the group coordinator's records of one `__consumer_offsets` partition go, and where
//! its replay reads them: the seam between the coordinator and the two kinds of partition
//! (`docs/REPLICATION.md` § Kafka semantics on top, "Idempotent producers and consumer
//! groups").
//!
//! - [`OffsetsStore::Plain`]: a partition with one replica, the shard's own log (as on a
//!   one-node broker): an append is answered once fdatasync'd.
//! - [`OffsetsStore::Replicated`]: a partition with several replicas, its Raft group on
//!   this shard (`replica::ReplicaManager`). The coordinator runs there only while this
//!   replica leads, in the term it loaded the partition in: each batch is proposed in that
//!   term and answered once committed in it (acks=all, after the `min.insync.replicas`
//!   check); the replay reads the committed prefix only.
//!
//! Appending is two steps, as the coordinator needs them: [`OffsetsStore::append`] puts the
//! batch in the partition's order now (under the coordinator's per-partition gate), and
//! [`PendingAppend::durable`] waits for its acknowledgement outside the gate.
//!
//! Owned by the coordinator's shard (`!Send`).

use std::rc::Rc;

use bytes::Bytes;

use crate::disk::PartitionLog;
use crate::error_codes as broker_codes;
use crate::groups::types::codes;
use crate::metadata::TopicPartition;
use crate::replica::{CoordinatorRole, PendingReplicaProduce, ReplicaManager};

/// One offsets partition as the coordinator writes and replays it. Cheap to clone.
#[derive(Clone)]
pub enum OffsetsStore {
    /// The partition's only replica: this shard's log.
    Plain(PartitionLog),
    /// One replica of the partition's Raft group, led by this broker in `term`.
    Replicated {
        replicas: Rc<ReplicaManager>,
        partition: TopicPartition,
        term: u64,
    },
}

/// An append in the partition's order, not yet acknowledged.
pub enum PendingAppend {
    Plain {
        log: PartitionLog,
        base_offset: i64,
        last_offset: i64,
    },
    Replicated(PendingReplicaProduce),
}

impl OffsetsStore {
    /// The store of replicated partition `partition` hosted by `replicas` if this replica
    /// leads it, with whether it is caught up (may be loaded now, see
    /// `replica::CoordinatorRole`); else `NOT_COORDINATOR`.
    pub fn replicated(
        replicas: Rc<ReplicaManager>,
        partition: TopicPartition,
    ) -> Result<(Self, bool), i16> {
        match replicas.coordinator_role(&partition) {
            CoordinatorRole::NotLeader => Err(codes::NOT_COORDINATOR),
            CoordinatorRole::Leader { term, caught_up } => Ok((
                Self::Replicated {
                    replicas,
                    partition,
                    term,
                },
                caught_up,
            )),
        }
    }

    /// The Raft term this store writes in; 0 for a plain log (no terms).
    pub fn term(&self) -> u64 {
        match self {
            Self::Plain(_) => 0,
            Self::Replicated { term, .. } => *term,
        }
    }

    /// Whether this store may still be written: a replicated one while its replica leads in
    /// its term.
    pub fn still_leading(&self) -> bool {
        match self {
            Self::Plain(_) => true,
            Self::Replicated {
                replicas,
                partition,
                term,
            } => matches!(
                replicas.coordinator_role(partition),
                CoordinatorRole::Leader { term: now, .. } if now == *term
            ),
        }
    }

    /// Puts `batch` in the partition's order now; the error code is the coordinator's
    /// answer.
    pub async fn append(&self, batch: Bytes) -> Result<PendingAppend, i16> {
        match self {
            Self::Plain(log) => match log.append(batch).await {
                Ok(appended) => Ok(PendingAppend::Plain {
                    log: log.clone(),
                    base_offset: appended.base_offset,
                    last_offset: appended.last_offset,
                }),
                Err(error) => {
                    tracing::error!(%error, "appending to the offsets log failed");
                    Err(codes::COORDINATOR_NOT_AVAILABLE)
                }
            },
            Self::Replicated {
                replicas,
                partition,
                term,
            } => {
                let pending = replicas.propose_as_coordinator(partition, *term, &batch);
                match pending.refusal() {
                    None => Ok(PendingAppend::Replicated(pending)),
                    Some(code) => Err(coordinator_code(code)),
                }
            }
        }
    }

    /// The first offset of the log.
    pub fn log_start_offset(&self) -> i64 {
        match self {
            Self::Plain(log) => log.log_start_offset(),
            Self::Replicated {
                replicas,
                partition,
                ..
            } => replicas
                .hosted_log(partition)
                .map_or(0, |log| log.log_start_offset()),
        }
    }

    /// The end of what a replay reads: the plain log's high watermark, or the replicated
    /// partition's committed end.
    pub fn replay_end(&self) -> i64 {
        match self {
            Self::Plain(log) => log.high_watermark(),
            Self::Replicated {
                replicas,
                partition,
                ..
            } => replicas.committed_end_of(partition).unwrap_or(0),
        }
    }

    /// Whole batches from `offset`, about `max_bytes`, below [`Self::replay_end`].
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<Vec<Bytes>, String> {
        match self {
            Self::Plain(log) => log
                .read(offset, max_bytes)
                .await
                .map_err(|error| error.to_string()),
            Self::Replicated {
                replicas,
                partition,
                ..
            } => {
                let fetched = replicas.fetch(partition, offset, max_bytes).await;
                if fetched.error_code == broker_codes::NONE {
                    Ok(fetched.batches)
                } else {
                    Err(format!("replica read error {}", fetched.error_code))
                }
            }
        }
    }

    /// The plain log, for a checkpoint (append everything live, then trim before it). A
    /// replicated partition is not checkpointed: retention and `DeleteRecords` on replicated
    /// partitions are not built (`docs/REPLICATION.md`, Status), so its log only grows.
    pub fn checkpointable(&self) -> Option<&PartitionLog> {
        match self {
            Self::Plain(log) => Some(log),
            Self::Replicated { .. } => None,
        }
    }
}

impl PendingAppend {
    /// Waits until the append is acknowledged: fdatasync'd (plain) or committed in the
    /// proposing term (replicated). The error code is the coordinator's answer, mapped as
    /// Kafka's group coordinator maps its append errors.
    pub async fn durable(self) -> Result<(), i16> {
        match self {
            Self::Plain {
                log, last_offset, ..
            } => log.wait_durable(last_offset).await.map_err(|error| {
                tracing::error!(%error, "fdatasync of the offsets log failed");
                codes::COORDINATOR_NOT_AVAILABLE
            }),
            Self::Replicated(pending) => match pending.wait().await.error_code {
                broker_codes::NONE => Ok(()),
                code => {
                    tracing::debug!(code, "offsets batch not committed");
                    Err(coordinator_code(code))
                }
            },
        }
    }

    /// The offsets the append took, for a checkpoint of a plain log.
    pub fn plain_offsets(&self) -> Option<(i64, i64)> {
        match self {
            Self::Plain {
                base_offset,
                last_offset,
                ..
            } => Some((*base_offset, *last_offset)),
            Self::Replicated(_) => None,
        }
    }
}

/// A replicated partition's refusal as the group coordinator answers it, as Kafka's
/// `GroupMetadataManager` maps its append errors: the replica no longer leads →
/// `NOT_COORDINATOR` (the client finds the new one); too few in sync, or no commit in time →
/// `COORDINATOR_NOT_AVAILABLE` (retriable).
fn coordinator_code(code: i16) -> i16 {
    match code {
        broker_codes::NOT_LEADER_OR_FOLLOWER | broker_codes::KAFKA_STORAGE_ERROR => {
            codes::NOT_COORDINATOR
        }
        _ => codes::COORDINATOR_NOT_AVAILABLE,
    }
}

//! Retention (`retention.ms`, `retention.bytes`) on replicated partitions.
//!
//! Each replica removes whole sealed segments from its own log, by the same rules as a
//! partition with one replica, but never an entry its group may still need:
//! - nothing at or above the entry last applied here (`Hosted::applied_index`): those may
//!   not be committed yet, and the applied entry's term is what raft-rs checks next;
//! - on the leader, nothing at or above the lowest `matched` index of a voter heard from
//!   within the last election timeout (raft-rs `recent_active`, kept by `check_quorum`): the
//!   leader sends each follower the entries after its `matched`, together with the term of
//!   the entry at `matched`, so a follower that is merely slow gets its entries from the log.
//!
//! A voter that is silent (down, cut off, paused) does not hold retention back, as in Kafka:
//! `retention.bytes` and `retention.ms` bound the leader's disk whatever a dead broker's
//! state. When it returns behind the leader's log start it is rebuilt from a snapshot, the
//! leader's first entry (`LogStore::snapshot`, `ReplicaManager::install_snapshot`): its log
//! starts again at the leader's log start, and what retention removed is gone from it too.
//! A follower also removes what it applied without knowing how far the others are; if it
//! later leads, a voter behind its log start is rebuilt the same way.
//!
//! Runs on the shard that owns the groups (`shard::enforce_retention_periodically`).

use raft::StateRole;

use crate::metadata::TopicPartition;
use crate::replica::ReplicaManager;
use crate::storage::StorageError;

impl ReplicaManager {
    /// One retention pass over every hosted group's log (see the module docs). Returns each
    /// partition whose pass removed segments or failed.
    pub async fn enforce_retention(&self) -> Vec<(TopicPartition, Result<usize, StorageError>)> {
        let passes: Vec<_> = {
            let driver = self.driver.borrow();
            self.groups
                .borrow()
                .iter()
                .filter_map(|(&group_id, hosted)| {
                    let raft = driver.raft(group_id)?;
                    let mut limit = hosted.applied_index.get();
                    if raft.state == StateRole::Leader {
                        for (_, progress) in raft.prs().iter().filter(|(_, p)| p.recent_active) {
                            limit = limit.min(progress.matched);
                        }
                    }
                    Some((hosted.replica.topic.clone(), hosted.log.clone(), limit))
                })
                .collect()
        };
        let mut outcomes = Vec::new();
        for (tp, log, index_limit) in passes {
            match log.enforce_retention_below_index(index_limit).await {
                Ok(0) => {}
                outcome => outcomes.push((tp, outcome)),
            }
        }
        outcomes
    }

    /// Puts every hosted log unused for `idle_after` to sleep (the storage crate's
    /// `dormancy.rs`); a Raft round that appends or reads entries wakes it again. Returns
    /// how many went dormant now.
    pub fn doze_idle_logs(&self, idle_after: std::time::Duration) -> usize {
        let logs: Vec<_> = self
            .groups
            .borrow()
            .values()
            .map(|hosted| hosted.log.clone())
            .collect();
        logs.iter()
            .filter(|log| log.doze_if_idle(idle_after) == crate::storage::Doze::Dozed)
            .count()
    }
}

#[cfg(test)]
#[path = "retention_tests.rs"]
mod tests;

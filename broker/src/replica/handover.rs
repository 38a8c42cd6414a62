//! Moving the leadership of this shard's partition groups on purpose (`docs/REPLICATION.md`
//! § Status), always with raft-rs leader transfer and always to an in-sync replica:
//!
//! - Controlled shutdown ([`ReplicaManager::hand_over_leadership`], Kafka's
//!   `controlled.shutdown.enable`): every group this replica leads goes to an in-sync
//!   follower, the preferred replica (first in the replica list) when it is one. While a
//!   transfer is under way the leader takes no proposals (raft-rs drops them), so a produce
//!   is answered `NOT_LEADER_OR_FOLLOWER` (retriable) and never hangs; produce calls already
//!   waiting are answered the same way when the term changes, and their batches, being in
//!   the log the successor caught up on before it was told to campaign, are committed by it
//!   (an idempotent producer's retry finds them as duplicates).
//! - Leader balancing ([`ReplicaManager::move_to_preferred`], Kafka's preferred leader
//!   election): a group led here whose preferred replica is another broker, in sync, and
//!   chosen by the caller (its broker's imbalance is over
//!   `leader.imbalance.per.broker.percentage`, [`imbalanced_brokers`]) goes back to it.
//!
//! A transfer raft-rs abandons (the successor did not catch up within an election timeout)
//! leaves this replica leading; the callers ask again on their next pass.

use std::collections::{BTreeMap, BTreeSet};

use crate::replica::manager::ReplicaManager;

/// A transfer this shard started: the group and the broker it goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub group_id: u64,
    pub to: u64,
}

impl ReplicaManager {
    /// The groups this replica leads now (a transfer under way included), ascending.
    pub fn led_groups(&self) -> Vec<u64> {
        // A fenced group takes no further part (no transfer either): not counted.
        let driver = self.driver.borrow();
        self.groups
            .borrow()
            .keys()
            .copied()
            .filter(|&group_id| {
                driver
                    .raft(group_id)
                    .is_some_and(|raft| raft.state == raft::StateRole::Leader)
                    && !driver.is_fenced(group_id)
            })
            .collect()
    }

    /// The in-sync follower a group led here would be handed to: its preferred replica
    /// (the first voter) when in sync, else the in-sync follower with the lowest id. `None`
    /// when no follower is in sync (the group then stays until the process stops, and its
    /// followers elect a leader as after a crash).
    pub fn successor(&self, group_id: u64) -> Option<u64> {
        let in_sync = self.in_sync(group_id);
        let preferred = self
            .groups
            .borrow()
            .get(&group_id)
            .and_then(|hosted| hosted.voters.borrow().first().copied());
        let followers = || in_sync.iter().copied().filter(|&id| id != self.node_id);
        preferred
            .filter(|&preferred| preferred != self.node_id && in_sync.contains(&preferred))
            .or_else(|| followers().min())
    }

    /// Controlled shutdown: from now on refuses leadership handed to this replica
    /// (`MultiRaft::refuse_leadership`), and starts handing every group led here to its
    /// [`Self::successor`] (a group already being transferred is left to finish). Returns
    /// how many groups led here have a transfer under way: call again until 0 (every group
    /// moved, or the rest have no follower in sync) or the shutdown's time is up.
    pub fn hand_over_leadership(&self) -> usize {
        self.driver.borrow_mut().refuse_leadership();
        let mut started = Vec::new();
        let mut under_way = 0;
        for group_id in self.led_groups() {
            if self.driver.borrow().transferring_to(group_id).is_some() {
                under_way += 1;
                continue;
            }
            let Some(to) = self.successor(group_id) else {
                continue;
            };
            if self.driver.borrow_mut().transfer_leader(group_id, to) {
                under_way += 1;
                started.push(Transfer { group_id, to });
            }
        }
        self.counts.borrow_mut().transfers_started += started.len() as u64;
        if !started.is_empty() {
            tracing::info!(transfers = ?started, "handing partition leadership over for shutdown");
            self.ring();
        }
        under_way
    }

    /// Leader balancing: hands every group led here whose preferred replica (first voter)
    /// is another broker, in sync, and `wanted`, to that replica. Returns the transfers
    /// started.
    pub fn move_to_preferred(&self, wanted: impl Fn(u64) -> bool) -> Vec<Transfer> {
        let mut started = Vec::new();
        for group_id in self.led_groups() {
            if self.driver.borrow().transferring_to(group_id).is_some() {
                continue;
            }
            let Some(preferred) = self
                .groups
                .borrow()
                .get(&group_id)
                .and_then(|hosted| hosted.voters.borrow().first().copied())
            else {
                continue;
            };
            if preferred == self.node_id
                || !wanted(preferred)
                || !self.in_sync(group_id).contains(&preferred)
            {
                continue;
            }
            if self
                .driver
                .borrow_mut()
                .transfer_leader(group_id, preferred)
            {
                started.push(Transfer {
                    group_id,
                    to: preferred,
                });
            }
        }
        self.counts.borrow_mut().transfers_started += started.len() as u64;
        if !started.is_empty() {
            tracing::info!(transfers = ?started, "moving partition leadership to preferred replicas");
            self.ring();
        }
        started
    }

    /// `ElectLeaders` (preferred election), on the preferred replica's broker: asks for the
    /// leadership of `group_id` for this replica (`MultiRaft::request_leadership`; its
    /// leader transfers it here once this replica has caught up). Returns whether this
    /// replica leads the group or asked for it.
    pub fn claim_leadership(&self, group_id: u64) -> bool {
        if !self.groups.borrow().contains_key(&group_id) {
            return false;
        }
        let asked = self.driver.borrow_mut().request_leadership(group_id);
        if asked {
            self.ring();
        }
        asked
    }

    /// Gives up the `transfers` still under way (the leader takes proposals again); returns
    /// how many were. A transfer to an in-sync replica takes a few round trips; one refused
    /// (its broker is shutting down) would otherwise block the group's produce calls until
    /// raft-rs abandons it after an election timeout.
    pub fn abort_transfers(&self, transfers: &[Transfer]) -> usize {
        let mut aborted = 0;
        for transfer in transfers {
            let mut driver = self.driver.borrow_mut();
            if driver.transferring_to(transfer.group_id) == Some(transfer.to)
                && driver.abort_transfer(transfer.group_id)
            {
                aborted += 1;
            }
        }
        self.counts.borrow_mut().transfers_aborted += aborted as u64;
        if aborted > 0 {
            tracing::info!(aborted, "leadership transfers not done in time given up");
            self.ring();
        }
        aborted
    }
}

/// What a shard's partition groups look like now, for metrics (`metrics::exposition`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicationSnapshot {
    /// Groups hosted on the shard, and those it leads.
    pub groups: u64,
    pub groups_led: u64,
    /// Groups led here with fewer replicas in sync than replicas (Kafka's
    /// `UnderReplicatedPartitions`), and with fewer than `min.insync.replicas`
    /// (`UnderMinIsrPartitionCount`: acks=all is refused).
    pub under_replicated: u64,
    pub under_min_isr: u64,
    /// Raft entries (batches) the followers of groups led here are behind the leader's
    /// last one: summed, and the most one follower is behind.
    pub follower_lag_entries: u64,
    pub follower_lag_entries_max: u64,
    /// Bytes of entry data the shard's group stores hold in memory (recent entries and
    /// catch-up reads not yet handed over), summed over every group hosted here.
    pub store_bytes: u64,
    /// Leadership transfers to this shard refused while shutting down.
    pub leadership_refused: u64,
    /// Groups ticking once in ten now (`ringfeed_replication::driver::quiet`), and how
    /// often groups went quiet and were woken again.
    pub groups_quiet: u64,
    pub groups_quieted: u64,
    pub groups_woken: u64,
    /// Frames of the shard's groups dropped on a full queue: waiting for a round, for a
    /// sender, or (set by the shard) between shards. Raft resends appends and heartbeats,
    /// not votes or a transfer's `MsgTimeoutNow`: a dropped one costs an election timeout.
    pub frames_dropped: u64,
    /// The shard's durability rounds and the group stores they wrote and synced.
    pub durability: ringfeed_replication::log_store::DurabilityStats,
    pub counts: crate::replica::manager::ReplicaCounts,
}

impl ReplicaManager {
    /// See [`ReplicationSnapshot`]. Takes no await.
    pub fn replication_snapshot(&self) -> ReplicationSnapshot {
        let mut snapshot = {
            let driver = self.driver.borrow();
            ReplicationSnapshot {
                groups: self.groups.borrow().len() as u64,
                counts: self.counts.borrow().clone(),
                leadership_refused: driver.stats().leadership_refused,
                groups_quiet: driver.quiet_groups() as u64,
                groups_quieted: driver.stats().groups_quieted,
                groups_woken: driver.stats().groups_woken,
                frames_dropped: {
                    let counts = self.counts.borrow();
                    counts.inbound_frames_dropped + counts.outbound_frames_dropped
                },
                durability: self.durability_stats(),
                store_bytes: self
                    .groups
                    .borrow()
                    .keys()
                    .filter_map(|&group_id| driver.store(group_id))
                    .map(|store| store.held_bytes() as u64)
                    .sum(),
                ..ReplicationSnapshot::default()
            }
        };
        for group_id in self.led_groups() {
            snapshot.groups_led += 1;
            let in_sync = self.in_sync(group_id).len() as u64;
            let Some(hosted) = self.groups.borrow().get(&group_id).cloned() else {
                continue;
            };
            snapshot.under_replicated += u64::from(in_sync < hosted.voters.borrow().len() as u64);
            snapshot.under_min_isr +=
                u64::from(in_sync < u64::from(hosted.replica.min_insync_replicas));
            let driver = self.driver.borrow();
            let Some(raft) = driver.raft(group_id) else {
                continue;
            };
            let last_index = raft.raft_log.last_index();
            for (&id, progress) in raft.prs().iter() {
                if id != self.node_id {
                    let lag = last_index.saturating_sub(progress.matched);
                    snapshot.follower_lag_entries += lag;
                    snapshot.follower_lag_entries_max = snapshot.follower_lag_entries_max.max(lag);
                }
            }
        }
        snapshot
    }
}

/// Kafka's leader imbalance check: for each broker that is the preferred replica of some
/// partitions, the share of them another broker leads; the brokers whose share is above
/// `percentage` (strictly, as Kafka's `leader.imbalance.per.broker.percentage`). Input: one
/// (preferred replica, leader) pair per replicated partition, leader -1 or 0 when none.
pub fn imbalanced_brokers(
    partitions: impl IntoIterator<Item = (i32, i32)>,
    percentage: u32,
) -> BTreeSet<i32> {
    // broker -> (partitions it is preferred for, of those led elsewhere)
    let mut counts: BTreeMap<i32, (u64, u64)> = BTreeMap::new();
    for (preferred, leader) in partitions {
        let entry = counts.entry(preferred).or_default();
        entry.0 += 1;
        if leader != preferred {
            entry.1 += 1;
        }
    }
    counts
        .into_iter()
        .filter(|&(_, (total, elsewhere))| elsewhere * 100 > total * u64::from(percentage))
        .map(|(broker, _)| broker)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::imbalanced_brokers;

    #[test]
    fn a_broker_is_imbalanced_only_above_the_percentage() {
        // Broker 1 preferred for 10, leads 9: 10 % elsewhere, not above 10 %.
        let mut partitions: Vec<(i32, i32)> = (0..9).map(|_| (1, 1)).collect();
        partitions.push((1, 2));
        assert!(imbalanced_brokers(partitions.clone(), 10).is_empty());
        // One more led elsewhere: 2 of 11, above.
        partitions.push((1, 3));
        assert_eq!(
            imbalanced_brokers(partitions.clone(), 10)
                .into_iter()
                .collect::<Vec<_>>(),
            [1]
        );
        // 0 %: any partition led elsewhere counts; leaderless ones too.
        assert_eq!(
            imbalanced_brokers([(2, 2), (3, -1)], 0)
                .into_iter()
                .collect::<Vec<_>>(),
            [3]
        );
        assert!(imbalanced_brokers([(2, 2), (3, 3)], 0).is_empty());
    }
}

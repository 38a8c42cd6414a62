//! A consumer group in `__consumer_offsets`: what changed since the last write as records
//! ([`ConsumerGroup::take_records`]), the whole group for a checkpoint
//! ([`ConsumerGroup::all_records`]), and the group rebuilt from them at replay
//! ([`ConsumerGroup::replay`]). The records are Kafka's split of the state (group epoch and
//! subscribed partition counts, member metadata, target assignment metadata and per member,
//! current member assignment), so a heartbeat that moves one member rewrites that member's
//! records only. Replay keeps the epochs: members that go on heartbeating continue without a
//! rebalance, their session timers restarted from the replay.

use std::time::Instant;

use super::{
    partitions_of, record_values, ConsumerGroup, ConsumerMember, ConsumerRules, MemberState,
};
use crate::groups::assignor::Assignor;
use crate::groups::records::{ConsumerGroupValue, ConsumerRecord, TargetMetadataValue};

fn state_of(code: i8) -> MemberState {
    match code {
        1 => MemberState::UnrevokedPartitions,
        2 => MemberState::UnreleasedPartitions,
        _ => MemberState::Stable,
    }
}

/// A member's three records' tombstones, in the order Kafka writes them (current
/// assignment, target, metadata).
pub(super) fn member_tombstones(group: &str, member_id: &str) -> [ConsumerRecord; 3] {
    [
        ConsumerRecord::Current {
            group: group.to_string(),
            member_id: member_id.to_string(),
            value: None,
        },
        ConsumerRecord::TargetMember {
            group: group.to_string(),
            member_id: member_id.to_string(),
            value: None,
        },
        ConsumerRecord::Member {
            group: group.to_string(),
            member_id: member_id.to_string(),
            value: None,
        },
    ]
}

impl ConsumerGroup {
    /// The records that bring a replayed copy up to this group, and forgets the changes:
    /// removed members' tombstones first, then the group epoch, member metadata, target
    /// assignment, current assignments (the order Kafka writes them in).
    pub fn take_records(&mut self, group: &str) -> Vec<ConsumerRecord> {
        let mut changes = std::mem::take(&mut self.changes);
        let mut out = Vec::new();
        for member_id in &changes.removed {
            if self.members.contains_key(member_id) {
                // Removed, then back under the same id: rewritten whole after its tombstones.
                changes.metadata.insert(member_id.clone());
                changes.current.insert(member_id.clone());
                changes.targets.insert(member_id.clone());
            }
            out.extend(member_tombstones(group, member_id));
        }
        if self.group_epoch != changes.written_epochs.0 {
            out.push(self.group_record(group));
        }
        for member_id in &changes.metadata {
            if let Some(member) = self.members.get(member_id) {
                out.push(ConsumerRecord::Member {
                    group: group.to_string(),
                    member_id: member_id.clone(),
                    value: Some(record_values(member).0),
                });
            }
        }
        if self.assignment_epoch != changes.written_epochs.1 {
            out.push(self.target_record(group));
        }
        for member_id in &changes.targets {
            if self.members.contains_key(member_id) {
                out.push(self.target_member_record(group, member_id));
            }
        }
        for member_id in &changes.current {
            if let Some(member) = self.members.get(member_id) {
                out.push(ConsumerRecord::Current {
                    group: group.to_string(),
                    member_id: member_id.clone(),
                    value: Some(record_values(member).1),
                });
            }
        }
        self.changes.written_epochs = (self.group_epoch, self.assignment_epoch);
        out
    }

    /// The whole group as records, for a checkpoint of the offsets log.
    pub fn all_records(&self, group: &str) -> Vec<ConsumerRecord> {
        let mut out = vec![self.group_record(group), self.target_record(group)];
        for (member_id, member) in &self.members {
            let (metadata, current) = record_values(member);
            out.push(ConsumerRecord::Member {
                group: group.to_string(),
                member_id: member_id.clone(),
                value: Some(metadata),
            });
            out.push(self.target_member_record(group, member_id));
            out.push(ConsumerRecord::Current {
                group: group.to_string(),
                member_id: member_id.clone(),
                value: Some(current),
            });
        }
        out
    }

    fn group_record(&self, group: &str) -> ConsumerRecord {
        ConsumerRecord::Group {
            group: group.to_string(),
            value: Some(ConsumerGroupValue {
                group_epoch: self.group_epoch,
                subscribed_partitions: self
                    .subscribed_partitions
                    .iter()
                    .map(|(topic, count)| (topic.clone(), *count))
                    .collect(),
            }),
        }
    }

    fn target_record(&self, group: &str) -> ConsumerRecord {
        ConsumerRecord::Target {
            group: group.to_string(),
            value: Some(TargetMetadataValue {
                assignment_epoch: self.assignment_epoch,
                assignor: self.assignor.map(|a| a.name().to_string()),
            }),
        }
    }

    fn target_member_record(&self, group: &str, member_id: &str) -> ConsumerRecord {
        ConsumerRecord::TargetMember {
            group: group.to_string(),
            member_id: member_id.to_string(),
            value: Some(self.target.get(member_id).cloned().unwrap_or_default()),
        }
    }

    /// Applies one record read back from the offsets log. A member first seen here gets a
    /// fresh session (`now` + the session timeout), and one with partitions pending
    /// revocation a fresh rebalance timeout: the time the broker was down is not held
    /// against it. The group's tombstone is the caller's (it drops the whole group).
    pub fn replay(&mut self, record: ConsumerRecord, rules: &ConsumerRules, now: Instant) {
        match record {
            ConsumerRecord::Group { value, .. } => {
                if let Some(value) = value {
                    self.group_epoch = value.group_epoch;
                    self.subscribed_partitions = value.subscribed_partitions.into_iter().collect();
                    self.changes.written_epochs.0 = self.group_epoch;
                }
            }
            ConsumerRecord::Target { value, .. } => {
                if let Some(value) = value {
                    self.assignment_epoch = value.assignment_epoch;
                    self.assignor = value.assignor.as_deref().and_then(Assignor::from_name);
                    // Reconciliation after a restart is measured from the replay.
                    self.target_since = Some(now);
                    self.changes.written_epochs.1 = self.assignment_epoch;
                }
            }
            ConsumerRecord::Member {
                member_id, value, ..
            } => match value {
                None => {
                    self.release(&member_id);
                    self.members.remove(&member_id);
                    self.target.remove(&member_id);
                }
                Some(value) => {
                    let member = self.replayed_member(&member_id, rules, now);
                    member.instance_id = value.instance_id;
                    member.rack_id = value.rack_id;
                    member.client_id = value.client_id;
                    member.client_host = value.client_host;
                    member.subscribed_topics = value.subscribed_topics.into_iter().collect();
                    member.subscribed_regex = value.subscribed_regex;
                    member.regex_topics =
                        std::sync::Arc::new(value.regex_topics.into_iter().collect());
                    member.rebalance_timeout = crate::groups::millis(value.rebalance_timeout_ms);
                    member.server_assignor = value.server_assignor;
                    if let Some(classic) = &value.classic {
                        // A classic member's session is its own, restarted from the replay.
                        member.session_deadline =
                            now + crate::groups::millis(classic.session_timeout_ms);
                    }
                    member.classic = value.classic;
                }
            },
            ConsumerRecord::TargetMember {
                member_id, value, ..
            } => match value {
                Some(assignment) if !assignment.is_empty() => {
                    self.target.insert(member_id, assignment);
                }
                _ => {
                    self.target.remove(&member_id);
                }
            },
            ConsumerRecord::Current {
                member_id, value, ..
            } => {
                self.release(&member_id);
                let Some(value) = value else {
                    if let Some(member) = self.members.get_mut(&member_id) {
                        member.assigned.clear();
                        member.pending_revocation.clear();
                        member.revocation_deadline = None;
                    }
                    return;
                };
                // The log's latest word wins: a partition another member still lists is
                // taken from it (the log never says so when written in order).
                let taken: Vec<(String, i32)> = partitions_of(&value.assigned)
                    .chain(partitions_of(&value.pending_revocation))
                    .collect();
                for key in &taken {
                    if let Some(holder) = self.owners.get(key).cloned() {
                        if let Some(other) = self.members.get_mut(&holder) {
                            for set in [&mut other.assigned, &mut other.pending_revocation] {
                                if let Some(partitions) = set.get_mut(&key.0) {
                                    partitions.remove(&key.1);
                                    if partitions.is_empty() {
                                        set.remove(&key.0);
                                    }
                                }
                            }
                        }
                    }
                }
                let member = self.replayed_member(&member_id, rules, now);
                member.member_epoch = value.member_epoch;
                member.previous_epoch = value.previous_epoch;
                member.state = state_of(value.state);
                member.assigned = value.assigned;
                member.pending_revocation = value.pending_revocation;
                member.revocation_deadline =
                    (!member.pending_revocation.is_empty()).then(|| now + member.rebalance_timeout);
                for key in taken {
                    self.owners.insert(key, member_id.clone());
                }
            }
        }
    }

    /// Frees every partition the member holds in `owners` (its sets are left as they are).
    fn release(&mut self, member_id: &str) {
        if let Some(member) = self.members.get(member_id) {
            for key in
                partitions_of(&member.assigned).chain(partitions_of(&member.pending_revocation))
            {
                if self
                    .owners
                    .get(&key)
                    .is_some_and(|holder| holder == member_id)
                {
                    self.owners.remove(&key);
                }
            }
        }
    }

    fn replayed_member(
        &mut self,
        member_id: &str,
        rules: &ConsumerRules,
        now: Instant,
    ) -> &mut ConsumerMember {
        self.members
            .entry(member_id.to_string())
            .or_insert_with(|| ConsumerMember::new(member_id, now + rules.session_timeout))
    }
}

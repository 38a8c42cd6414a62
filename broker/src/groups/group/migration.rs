//! KIP-848's online migration of a group between the classic and the consumer protocol
//! (`group.consumer.migration.policy`), as Kafka 4 does it:
//!
//! ```text
//!   classic group ──ConsumerGroupHeartbeat joins (epoch 0), policy allows upgrade,
//!        ▲           protocol type "consumer", size fits──▶ consumer group with classic members
//!        │                                                     │
//!        └── the last consumer-protocol member leaves or expires, only classic members
//!            remain, policy allows downgrade: a Stable classic group at the group epoch,
//!            every member's holdings as its assignment, then a rebalance (all rejoin)
//! ```
//! While the group is a consumer group, its classic members' `JoinGroup`, `SyncGroup`,
//! `Heartbeat` and `LeaveGroup` are served by the consumer group (see
//! `consumer::classic_members`). A classic `JoinGroup` on an empty consumer group deletes
//! it (tombstones written) and the group starts again as a classic one, its offsets kept.

use std::time::Instant;

use bytes::Bytes;

use super::{Group, GroupRules, GroupState, JoinRequest, JoinResult, Member, SyncResult};
use crate::error_codes as codes;
use crate::groups::consumer::classic_members::{ClassicSnapshot, CONSUMER_PROTOCOL_TYPE};
use crate::groups::consumer::{ConsumerGroup, HeartbeatAnswer, TopicCatalog};
use crate::groups::consumer_protocol;
use crate::groups::types::{codes as group_codes, GROUP_SIZE_MAX};

impl Group {
    /// Kafka's `validateOnlineUpgrade` then `convertToConsumerGroup`: the classic members
    /// move into a consumer group (see `ConsumerGroup::from_classic`); parked joins and
    /// syncs are answered `REBALANCE_IN_PROGRESS` so their members rejoin it. On refusal
    /// the answer for the heartbeat that asked, as Kafka's (`GROUP_ID_NOT_FOUND`).
    pub(super) fn upgrade_to_consumer(
        &mut self,
        rules: &GroupRules,
        now: Instant,
    ) -> Result<(), HeartbeatAnswer> {
        let refuse = |why: &str| {
            Err(HeartbeatAnswer::error(
                group_codes::GROUP_ID_NOT_FOUND,
                &format!("Group {} is not a consumer group: {why}.", self.id),
            ))
        };
        if !rules.migration.upgrades() {
            return refuse("the online upgrade is disabled");
        }
        if self.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE) {
            return refuse("it does not use the consumer embedded protocol");
        }
        if self.members.len() > rules.consumer.max_size.min(GROUP_SIZE_MAX) {
            return refuse("its size exceeds the consumer group maximum size");
        }
        let snapshots = self
            .members
            .iter()
            .map(|m| {
                // Before its first generation the group has no protocol: the member's
                // first one carries the same subscription.
                let metadata = match &self.protocol_name {
                    Some(protocol) => m.metadata_for(protocol),
                    None => m.protocols.first().map(|p| p.1.clone()).unwrap_or_default(),
                };
                ClassicSnapshot {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout: m.session_timeout,
                    rebalance_timeout: m.rebalance_timeout,
                    protocols: m.protocols.clone(),
                    metadata,
                    assignment: m.assignment.clone(),
                }
            })
            .collect();
        let consumer = match ConsumerGroup::from_classic(self.generation, snapshots, now) {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::warn!(group = %self.id, %error, "classic group not upgraded: malformed consumer protocol");
                return Err(HeartbeatAnswer::error(
                    group_codes::GROUP_ID_NOT_FOUND,
                    &format!(
                        "Cannot upgrade the classic group {}: the embedded consumer protocol is malformed ({error}).",
                        self.id
                    ),
                ));
            }
        };
        for member in &mut self.members {
            let member_id = member.member_id.clone();
            member.answer_join(JoinResult::error(
                group_codes::REBALANCE_IN_PROGRESS,
                &member_id,
            ));
            member.answer_sync(SyncResult::error(group_codes::REBALANCE_IN_PROGRESS));
        }
        tracing::info!(group = %self.id, members = self.members.len(), generation = self.generation, "classic group upgraded to a consumer group");
        self.members.clear();
        self.pending_members.clear();
        self.leader = None;
        self.protocol_name = None;
        self.protocol_type = None;
        self.rebalance_deadline = None;
        self.initial_delay = false;
        // Outside the classic state table: the classic half of the group is simply unused.
        self.state = GroupState::Empty;
        self.empty_since_ms = None;
        self.consumer = Some(Box::new(consumer));
        Ok(())
    }

    /// After a change of the consumer group: when the last member speaking the consumer
    /// protocol is gone (`consumer_members_before` > 0, none now) and classic members
    /// remain, the group goes back to the classic protocol if the policy allows (Kafka's
    /// `validateOnlineDowngradeWithFencedMember` + `convertToClassicGroup`).
    pub(super) fn maybe_downgrade(
        &mut self,
        consumer_members_before: usize,
        rules: &GroupRules,
        now: Instant,
    ) {
        let Some(consumer) = self.consumer.as_ref() else {
            return;
        };
        if consumer_members_before == 0
            || consumer.consumer_protocol_members() > 0
            || consumer.members.is_empty()
            || !rules.migration.downgrades()
            || consumer.members.len() > GROUP_SIZE_MAX
        {
            return;
        }
        let consumer = self.consumer.take().expect("checked above");
        self.consumer_records
            .extend(consumer.tombstone_records(&self.id));
        let members: Vec<Member> = consumer
            .members
            .values()
            .map(|m| {
                let classic = m.classic.clone().unwrap_or_default();
                let version = classic
                    .protocols
                    .first()
                    .map_or(0, |(_, metadata)| consumer_protocol::version_of(metadata));
                // What the member may still hold, not its target (Kafka writes the target):
                // if the group is upgraded again before the rebalance completes, these
                // bytes are read back as what it owns, and a partition it has yet to revoke
                // must not look free.
                let mut held = m.assigned.clone();
                for (topic, partitions) in &m.pending_revocation {
                    held.entry(topic.clone()).or_default().extend(partitions);
                }
                let session_timeout = crate::groups::millis(classic.session_timeout_ms);
                Member {
                    member_id: m.member_id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout,
                    rebalance_timeout: m.rebalance_timeout,
                    protocols: classic.protocols,
                    assignment: consumer_protocol::encode_assignment(version, &held),
                    heartbeat_deadline: now + session_timeout,
                    join_waiter: None,
                    sync_waiter: None,
                }
            })
            .collect();
        tracing::info!(group = %self.id, members = members.len(), epoch = consumer.group_epoch, "consumer group downgraded to a classic group");
        self.members = members;
        self.generation = consumer.group_epoch;
        self.protocol_type = Some(CONSUMER_PROTOCOL_TYPE.to_string());
        self.protocol_name = self.select_protocol();
        self.leader = self.members.first().map(|m| m.member_id.clone());
        self.pending_members.clear();
        // Outside the classic state table: the group appears Stable at the consumer group's
        // epoch, then rebalances at once so that every member rejoins.
        self.state = GroupState::Stable;
        self.empty_since_ms = None;
        self.prepare_rebalance(rules, now);
    }

    /// `JoinGroup` of a classic member while the group's members live in its consumer group.
    pub fn join_consumer_group(
        &mut self,
        request: JoinRequest,
        partitions: &dyn TopicCatalog,
        rules: &GroupRules,
        now: Instant,
    ) -> JoinResult {
        if request.session_timeout < rules.session_timeout_min
            || request.session_timeout > rules.session_timeout_max
        {
            return JoinResult::error(group_codes::INVALID_SESSION_TIMEOUT, &request.member_id);
        }
        let consumer = self
            .consumer
            .as_mut()
            .expect("routed here only with consumer members");
        let prefix = request
            .instance_id
            .clone()
            .unwrap_or_else(|| request.client_id.clone());
        let new_member_id = || format!("{prefix}-{}", uuid::Uuid::new_v4());
        let answer =
            consumer.classic_join(request, partitions, &rules.consumer, new_member_id, now);
        if answer.error_code != codes::NONE {
            return JoinResult::error(answer.error_code, &answer.member_id);
        }
        JoinResult {
            error_code: codes::NONE,
            generation: answer.generation,
            protocol_type: Some(CONSUMER_PROTOCOL_TYPE.to_string()),
            protocol_name: answer.protocol_name,
            // No leader: the coordinator assigns, every member syncs with no assignments.
            leader: String::new(),
            member_id: answer.member_id,
            members: Vec::new(),
        }
    }

    /// `SyncGroup` of a classic member inside the consumer group.
    pub fn sync_consumer_group(
        &mut self,
        member_id: &str,
        generation: i32,
        protocol: (Option<&str>, Option<&str>),
        now: Instant,
    ) -> SyncResult {
        let consumer = self
            .consumer
            .as_mut()
            .expect("routed here only with consumer members");
        match consumer.classic_sync(member_id, None, generation, protocol, now) {
            Ok((protocol_name, assignment)) => SyncResult {
                error_code: codes::NONE,
                protocol_type: Some(CONSUMER_PROTOCOL_TYPE.to_string()),
                protocol_name: Some(protocol_name),
                assignment,
            },
            Err(code) => SyncResult {
                error_code: code,
                assignment: Bytes::new(),
                ..SyncResult::default()
            },
        }
    }

    /// `Heartbeat` of a classic member inside the consumer group.
    pub fn heartbeat_consumer_group(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        self.consumer
            .as_mut()
            .expect("routed here only with consumer members")
            .classic_heartbeat(member_id, instance_id, generation, now)
    }

    /// `LeaveGroup` of a classic member inside the consumer group.
    pub fn leave_consumer_group(&mut self, member_id: &str, instance_id: Option<&str>) -> i16 {
        let consumer = self
            .consumer
            .as_mut()
            .expect("routed here only with consumer members");
        let had_members = !consumer.members.is_empty();
        let code = match consumer.classic_leave(member_id, instance_id) {
            Ok(_) => codes::NONE,
            Err(code) => code,
        };
        self.note_consumer_membership(had_members);
        code
    }

    /// A classic join on a consumer group without members: Kafka deletes the consumer
    /// group and the id starts again as a classic group (its offsets stay).
    pub(super) fn drop_empty_consumer_group(&mut self) {
        if self.consumer.as_ref().is_some_and(|c| c.members.is_empty()) {
            let consumer = self.consumer.take().expect("checked");
            self.consumer_records
                .extend(consumer.tombstone_records(&self.id));
        }
    }
}

#[cfg(test)]
mod tests;

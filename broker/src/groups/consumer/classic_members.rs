//! Members of a consumer group that speak the classic protocol (KIP-848's online upgrade
//! path): a classic group moved here ([`ConsumerGroup::from_classic`]), and the
//! `JoinGroup` / `SyncGroup` / `Heartbeat` / `LeaveGroup` of its classic members, served by
//! the consumer group's rules (Kafka's `classicGroup*ToConsumerGroup`):
//!
//! - a join updates the member from its `ConsumerProtocolSubscription` (topics, owned
//!   partitions) and reconciles it like a consumer heartbeat, the owned partitions standing
//!   for the heartbeat's; the answer's generation is the member's epoch, without a leader
//!   (the server assigns);
//! - a sync answers the member's assigned partitions as a `ConsumerProtocolAssignment`;
//! - a heartbeat answers `REBALANCE_IN_PROGRESS` while the member must rejoin: its epoch is
//!   behind the group's, it must revoke partitions, or partitions it waited for are free; a
//!   member that does not rejoin within its rebalance timeout is removed.
//!
//! So a classic member gives up a partition by rejoining without it, and gets new ones only
//! once no other member holds them: the consumer group's `owners` invariant holds for both
//! kinds of members. Classic members' sessions are their own `session.timeout.ms`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::persist::member_tombstones;
use super::{
    minus, partitions_of, record_values, ConsumerGroup, ConsumerMember, ConsumerRules, MemberState,
};
use crate::error_codes as codes;
use crate::groups::consumer::TopicCatalog;
use crate::groups::consumer_protocol::{self, SchemaError};
use crate::groups::records::{ClassicMemberValue, ConsumerRecord};
use crate::groups::types::{codes as group_codes, JoinRequest, GROUP_SIZE_MAX};

/// The protocol type of the classic groups a consumer group can take in.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// What a classic member's `JoinGroup` gets from a consumer group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassicJoinAnswer {
    pub error_code: i16,
    pub member_id: String,
    pub generation: i32,
    pub protocol_name: Option<String>,
}

impl ClassicJoinAnswer {
    fn error(error_code: i16, member_id: &str) -> Self {
        Self {
            error_code,
            member_id: member_id.to_string(),
            generation: -1,
            protocol_name: None,
        }
    }
}

/// One member of a classic group as it moves into a consumer group.
#[derive(Clone, Debug)]
pub struct ClassicSnapshot {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    /// Its subscription (metadata of the group's protocol) and its last assignment.
    pub metadata: Bytes,
    pub assignment: Bytes,
}

fn millis_i32(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

impl ConsumerGroup {
    /// A classic group of `generation` moved to the consumer protocol (Kafka's
    /// `ConsumerGroup.fromClassicGroup`): every member keeps its last assignment, plus the
    /// partitions its last join listed as owned (Kafka takes the assignment alone, which in
    /// the middle of a cooperative rebalance misses partitions not yet revoked), as both its
    /// assigned partitions and its target, at epoch `generation`, stable. The next change
    /// (the consumer member that triggered the upgrade joining) bumps the epoch and computes
    /// a new target. Malformed subscriptions or assignments, or a partition assigned to two
    /// members, refuse the upgrade.
    pub fn from_classic(
        generation: i32,
        members: Vec<ClassicSnapshot>,
        now: Instant,
    ) -> Result<Self, SchemaError> {
        let mut group = ConsumerGroup {
            group_epoch: generation,
            assignment_epoch: generation,
            target_since: Some(now),
            ..ConsumerGroup::default()
        };
        for snapshot in members {
            let subscription = consumer_protocol::decode_subscription(&snapshot.metadata)?;
            let mut assigned = consumer_protocol::decode_assignment(&snapshot.assignment)?;
            // A cooperative member still holds what its last join listed as owned until it
            // has synced and revoked: both count as held, or such a partition looks free.
            for (topic, partitions) in &subscription.owned {
                assigned
                    .entry(topic.clone())
                    .or_default()
                    .extend(partitions);
            }
            for key in partitions_of(&assigned) {
                if group
                    .owners
                    .insert(key, snapshot.member_id.clone())
                    .is_some()
                {
                    return Err(SchemaError {
                        offset: 0,
                        reason: "a partition is assigned to two members",
                    });
                }
            }
            let member_id = snapshot.member_id.clone();
            if !assigned.is_empty() {
                group.target.insert(member_id.clone(), assigned.clone());
            }
            let member = ConsumerMember {
                instance_id: snapshot.instance_id,
                rack_id: subscription.rack_id,
                client_id: snapshot.client_id,
                client_host: snapshot.client_host,
                member_epoch: generation,
                previous_epoch: generation,
                state: MemberState::Stable,
                subscribed_topics: subscription.topics.into_iter().collect(),
                rebalance_timeout: snapshot.rebalance_timeout,
                assigned,
                classic: Some(ClassicMemberValue {
                    session_timeout_ms: millis_i32(snapshot.session_timeout),
                    protocols: snapshot.protocols,
                }),
                ..ConsumerMember::new(&member_id, now + snapshot.session_timeout)
            };
            group
                .changes
                .note_member(&member_id, None, Some(record_values(&member)));
            group.changes.target_moved(&member_id);
            group.members.insert(member_id, member);
        }
        group.assert_consistent();
        Ok(group)
    }

    /// Members that speak the consumer protocol (not classic members).
    pub fn consumer_protocol_members(&self) -> usize {
        self.members
            .values()
            .filter(|m| m.classic.is_none())
            .count()
    }

    /// Kafka's `supportsClassicProtocols`: the consumer protocol type, and a protocol every
    /// classic member (and this one) supports.
    fn supports_classic(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type != CONSUMER_PROTOCOL_TYPE || protocols.is_empty() {
            return false;
        }
        protocols.iter().any(|(name, _)| {
            self.members
                .values()
                .filter_map(|m| m.classic.as_ref())
                .all(|classic| classic.protocols.iter().any(|(other, _)| other == name))
        })
    }

    /// `JoinGroup` of a classic member (see the module docs). `new_member_id` names a
    /// member that joins without an id.
    pub fn classic_join(
        &mut self,
        request: JoinRequest,
        partitions: &dyn TopicCatalog,
        rules: &ConsumerRules,
        new_member_id: impl FnOnce() -> String,
        now: Instant,
    ) -> ClassicJoinAnswer {
        let unknown = request.member_id.is_empty();
        let member_id = if unknown {
            new_member_id()
        } else {
            request.member_id.clone()
        };
        let before = self.members.get(&member_id).map(record_values);
        let answer =
            self.classic_join_checked(&member_id, unknown, request, partitions, rules, now);
        self.changes.note_member(
            &member_id,
            before,
            self.members.get(&member_id).map(record_values),
        );
        self.assert_consistent();
        answer
    }

    fn classic_join_checked(
        &mut self,
        member_id: &str,
        unknown: bool,
        request: JoinRequest,
        partitions: &dyn TopicCatalog,
        rules: &ConsumerRules,
        now: Instant,
    ) -> ClassicJoinAnswer {
        let fail = |code| ClassicJoinAnswer::error(code, member_id);
        let known = self.members.get(member_id);
        if known.is_none() && self.members.len() >= rules.max_size.min(GROUP_SIZE_MAX) {
            return fail(group_codes::GROUP_MAX_SIZE_REACHED);
        }
        if known.is_some_and(|m| m.classic.is_none()) {
            return fail(group_codes::UNKNOWN_MEMBER_ID);
        }
        if !self.supports_classic(&request.protocol_type, &request.protocols) {
            return fail(group_codes::INCONSISTENT_GROUP_PROTOCOL);
        }
        // Kafka asks only dynamic members to come back with their new id (KIP-394).
        if unknown && request.require_known_member_id && request.instance_id.is_none() {
            return fail(group_codes::MEMBER_ID_REQUIRED);
        }
        if let Some(instance_id) = &request.instance_id {
            let holder = self
                .members
                .values()
                .find(|m| m.instance_id.as_ref() == Some(instance_id) && m.member_id != member_id)
                .map(|m| m.member_id.clone());
            if let Some(holder) = holder {
                if !unknown {
                    return fail(group_codes::FENCED_INSTANCE_ID);
                }
                self.replace_static_member(&holder, member_id);
            }
        }
        let Ok(subscription) = consumer_protocol::decode_subscription(&request.protocols[0].1)
        else {
            return fail(group_codes::INCONSISTENT_GROUP_PROTOCOL);
        };
        let epoch_before = self.group_epoch;
        if !self.members.contains_key(member_id) {
            self.members
                .insert(member_id.to_string(), ConsumerMember::new(member_id, now));
            self.group_epoch += 1;
        }
        let member = self.members.get_mut(member_id).expect("inserted above");
        if request.instance_id.is_some() {
            member.instance_id.clone_from(&request.instance_id);
        }
        if subscription.rack_id.is_some() {
            member.rack_id.clone_from(&subscription.rack_id);
        }
        member.rebalance_timeout = request.rebalance_timeout;
        member.client_id.clone_from(&request.client_id);
        member.client_host.clone_from(&request.client_host);
        member.session_deadline = now + request.session_timeout;
        if member.state != MemberState::UnrevokedPartitions {
            member.revocation_deadline = None; // it rejoined (see `classic_heartbeat`)
        }
        let protocol_name = request.protocols[0].0.clone();
        member.classic = Some(ClassicMemberValue {
            session_timeout_ms: millis_i32(request.session_timeout),
            protocols: request.protocols,
        });
        let topics: BTreeSet<String> = subscription.topics.into_iter().collect();
        if topics != member.subscribed_topics {
            member.subscribed_topics = topics;
            self.group_epoch += 1;
        }
        self.refresh_subscribed_partitions(partitions);
        self.group_epoch = self.group_epoch.min(epoch_before + 1);
        if self.assignment_epoch < self.group_epoch {
            self.compute_target();
            self.target_since = Some(now);
        }
        self.reconcile(member_id, Some(&subscription.owned), now);
        ClassicJoinAnswer {
            error_code: codes::NONE,
            member_id: member_id.to_string(),
            generation: self.members[member_id].member_epoch,
            protocol_name: Some(protocol_name),
        }
    }

    /// KIP-345 inside a consumer group: a static member restarted under a new member id
    /// takes over the old one's partitions and target, from epoch 0 (the old id is gone).
    fn replace_static_member(&mut self, old_id: &str, member_id: &str) {
        let mut member = self.members.remove(old_id).expect("found by the caller");
        self.changes.removed(old_id);
        if let Some(target) = self.target.remove(old_id) {
            self.target.insert(member_id.to_string(), target);
        }
        self.changes.target_moved(member_id);
        for key in partitions_of(&member.pending_revocation) {
            self.owners.remove(&key);
        }
        for key in partitions_of(&member.assigned) {
            self.owners.insert(key, member_id.to_string());
        }
        member.member_id = member_id.to_string();
        member.member_epoch = 0;
        member.previous_epoch = 0;
        member.pending_revocation.clear();
        member.revocation_deadline = None;
        member.state = MemberState::Stable;
        self.members.insert(member_id.to_string(), member);
    }

    /// The classic member a request names: by instance id when given (another member id
    /// behind it is fenced), else by member id.
    fn classic_member_id(&self, member_id: &str, instance_id: Option<&str>) -> Result<String, i16> {
        let member = match instance_id {
            Some(instance_id) => {
                let member = self
                    .members
                    .values()
                    .find(|m| m.instance_id.as_deref() == Some(instance_id))
                    .ok_or(group_codes::UNKNOWN_MEMBER_ID)?;
                if !member_id.is_empty() && member.member_id != member_id {
                    return Err(group_codes::FENCED_INSTANCE_ID);
                }
                member
            }
            None => self
                .members
                .get(member_id)
                .ok_or(group_codes::UNKNOWN_MEMBER_ID)?,
        };
        if member.classic.is_none() {
            return Err(group_codes::UNKNOWN_MEMBER_ID);
        }
        Ok(member.member_id.clone())
    }

    /// The member's session starts again (a heartbeat, a sync).
    fn touch_classic(&mut self, member_id: &str, now: Instant) {
        let member = self.members.get_mut(member_id).expect("checked");
        let session = member
            .classic
            .as_ref()
            .map_or(0, |classic| classic.session_timeout_ms);
        member.session_deadline = now + crate::groups::millis(session);
    }

    /// `SyncGroup` of a classic member: (protocol name, `ConsumerProtocolAssignment` of its
    /// assigned partitions) or the error code.
    pub fn classic_sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol: (Option<&str>, Option<&str>),
        now: Instant,
    ) -> Result<(String, Bytes), i16> {
        let member_id = self.classic_member_id(member_id, instance_id)?;
        let member = &self.members[&member_id];
        if generation != member.member_epoch {
            return Err(group_codes::ILLEGAL_GENERATION);
        }
        let classic = member.classic.as_ref().expect("a classic member");
        let (protocol_type, protocol_name) = protocol;
        let name_known = |name: &str| classic.protocols.iter().any(|(p, _)| p == name);
        if protocol_type.is_some_and(|t| t != CONSUMER_PROTOCOL_TYPE)
            || protocol_name.is_some_and(|name| !name_known(name))
        {
            return Err(group_codes::INCONSISTENT_GROUP_PROTOCOL);
        }
        // Behind the group: rejoin first, unless it is revoking (its next join will do).
        if self.group_epoch > member.member_epoch
            && member.state != MemberState::UnrevokedPartitions
        {
            return Err(group_codes::REBALANCE_IN_PROGRESS);
        }
        let (first_name, first_metadata) = classic.protocols.first().cloned().unwrap_or_default();
        let name = protocol_name.map_or(first_name, str::to_string);
        let version = consumer_protocol::version_of(&first_metadata);
        let assignment = consumer_protocol::encode_assignment(version, &member.assigned);
        self.touch_classic(&member_id, now);
        Ok((name, assignment))
    }

    /// `Heartbeat` of a classic member: an error code; `REBALANCE_IN_PROGRESS` asks it to
    /// rejoin (see the module docs).
    pub fn classic_heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        let member_id = match self.classic_member_id(member_id, instance_id) {
            Ok(id) => id,
            Err(code) => return code,
        };
        if generation != self.members[&member_id].member_epoch {
            return group_codes::ILLEGAL_GENERATION;
        }
        self.touch_classic(&member_id, now);
        let member = &self.members[&member_id];
        let must_rejoin = member.member_epoch < self.group_epoch
            || member.state == MemberState::UnrevokedPartitions
            || (member.state == MemberState::UnreleasedPartitions
                && !self.waits_on_unreleased(&member_id));
        if must_rejoin {
            // Kafka's join timeout: a member told to rejoin that keeps heartbeating without
            // doing so is removed after its rebalance timeout (the clock's `tick`).
            let member = self.members.get_mut(&member_id).expect("checked");
            if member.revocation_deadline.is_none() {
                member.revocation_deadline = Some(now + member.rebalance_timeout);
            }
            group_codes::REBALANCE_IN_PROGRESS
        } else {
            codes::NONE
        }
    }

    /// Whether a partition of the member's target is still held by another member.
    fn waits_on_unreleased(&self, member_id: &str) -> bool {
        let (Some(member), Some(target)) =
            (self.members.get(member_id), self.target.get(member_id))
        else {
            return false;
        };
        partitions_of(&minus(target, &member.assigned)).any(|key| {
            self.owners
                .get(&key)
                .is_some_and(|holder| holder != member_id)
        })
    }

    /// `LeaveGroup` of one classic member; its member id, or the error code.
    pub fn classic_leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<String, i16> {
        let member_id = self.classic_member_id(member_id, instance_id)?;
        self.remove_member(&member_id);
        self.assert_consistent();
        Ok(member_id)
    }

    /// Tombstones of the whole group (its members' records, then the group's): written when
    /// the group goes back to the classic protocol.
    pub fn tombstone_records(&self, group: &str) -> Vec<ConsumerRecord> {
        let mut out = Vec::new();
        for member_id in self.members.keys().chain(self.changes.removed.iter()) {
            out.extend(member_tombstones(group, member_id));
        }
        out.push(ConsumerRecord::Group {
            group: group.to_string(),
            value: None,
        });
        out
    }
}

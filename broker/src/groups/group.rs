//! One consumer group of the classic protocol and Kafka's state machine for it:
//!
//! ```text
//!   Empty ──join──▶ PreparingRebalance ──all joined / rebalance timeout──▶ CompletingRebalance
//!     ▲                 ▲   │ (no member left)                   leader's SyncGroup, │
//!     └─────────────────┼───┘                           then its write (finish_sync) ▼
//!                       └────── join / leave / session timeout ◀──────────── Stable
//! ```
//! `Dead` is a deleted group. All methods are synchronous and take `now`, so the rules are
//! unit-tested without a runtime; the coordinator owns the groups of its shard and runs
//! these between awaits. Requests that must wait (a join until the rebalance completes, a
//! follower's sync until the leader's) park a one-slot channel in the member; the method
//! that completes the step answers every parked member.
//!
//! Membership is written to the offsets log at two points, as Kafka writes its
//! `GroupMetadataValue`: when a generation completes (`Stable`, every member holding its
//! assignment) and when the group empties ([`Group::take_classic_record`]). A coordinator
//! that replays the log restores the last one ([`Group::restore_classic`]): the group is
//! `Stable` at that generation, each member given a full session from the load to
//! heartbeat, so members of a coordinator that failed over or restarted carry on instead
//! of rejoining. A rebalance in progress is not written: its members find the restored
//! generation older than theirs and rejoin.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use crate::error_codes as codes;
use crate::groups::consumer::{ConsumerGroup, ConsumerRules, HeartbeatAnswer, HeartbeatRequest};
use crate::groups::records::{
    ClassicGroupMember, ClassicGroupValue, CommittedOffset, ConsumerRecord,
};
pub use crate::groups::types::JoinRequest;
use crate::groups::types::{codes as group_codes, MigrationPolicy};
use crate::storage::Clock;

pub use crate::groups::types::GROUP_SIZE_MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The name Kafka reports in `ListGroups` and `DescribeGroups`.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }

    /// The state machine of the module docs as a table: every change of a group's state goes
    /// through [`Group::set_state`], which asserts it is listed here. As in Kafka, except that
    /// the last member leaving a `Stable` or `CompletingRebalance` group empties it at once
    /// (Kafka passes through `PreparingRebalance` to the same end), and that nothing here
    /// makes a group `Dead`: a deleted group is dropped from the coordinator's map.
    pub fn can_become(self, next: GroupState) -> bool {
        use GroupState::{CompletingRebalance, Empty, PreparingRebalance, Stable};
        matches!(
            (self, next),
            (Empty | Stable | CompletingRebalance, PreparingRebalance)
                | (PreparingRebalance, CompletingRebalance | Empty)
                | (CompletingRebalance, Stable)
                | (Stable | CompletingRebalance, Empty)
        )
    }
}

/// What a parked (or immediately answered) `JoinGroup` gets.
#[derive(Clone, Debug, Default)]
pub struct JoinResult {
    pub error_code: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Only the leader gets the members: (member id, group instance id, metadata).
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinResult {
    pub fn error(error_code: i16, member_id: &str) -> Self {
        Self {
            error_code,
            generation: -1,
            member_id: member_id.to_string(),
            ..Self::default()
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct SyncResult {
    pub error_code: i16,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignment: Bytes,
}

impl SyncResult {
    pub fn error(error_code: i16) -> Self {
        Self {
            error_code,
            ..Self::default()
        }
    }
}

/// A request's answer: now, or once the group moves on.
pub enum Answer<T> {
    Now(T),
    Later(LocalReceiver<T>),
}

// Kafka calls it the member id; `id` alone would hide which id.
#[allow(clippy::struct_field_names)]
pub struct Member {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    pub heartbeat_deadline: Instant,
    join_waiter: Option<LocalSender<JoinResult>>,
    sync_waiter: Option<LocalSender<SyncResult>>,
}

impl Member {
    pub fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, metadata)| metadata.clone())
            .unwrap_or_default()
    }

    fn answer_join(&mut self, result: JoinResult) {
        if let Some(waiter) = self.join_waiter.take() {
            let _ = waiter.try_send(result);
        }
    }

    fn answer_sync(&mut self, result: SyncResult) {
        if let Some(waiter) = self.sync_waiter.take() {
            let _ = waiter.try_send(result);
        }
    }
}

/// Settings the coordinator applies to every group.
#[derive(Clone, Debug)]
pub struct GroupRules {
    pub session_timeout_min: Duration,
    pub session_timeout_max: Duration,
    /// `group.initial.rebalance.delay.ms`: the first rebalance of an empty group waits this
    /// long so members starting together land in one generation.
    pub initial_rebalance_delay: Duration,
    /// Timers of consumer-protocol groups (KIP-848).
    pub consumer: ConsumerRules,
    /// `group.consumer.migration.policy` (see `migration`).
    pub migration: MigrationPolicy,
}

pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    /// In join order: the first is the leader when the old leader is gone.
    pub members: Vec<Member>,
    /// Member ids handed out with `MEMBER_ID_REQUIRED`, valid until the deadline.
    pub pending_members: HashMap<String, Instant>,
    pub rebalance_deadline: Option<Instant>,
    /// The rebalance is in its initial delay: it completes at the deadline, not before, even
    /// when every member has joined.
    initial_delay: bool,
    pub offsets: BTreeMap<(String, i32), CommittedOffset>,
    /// When the group last became empty (for offset expiry), wall-clock ms.
    pub empty_since_ms: Option<i64>,
    /// Where `empty_since_ms` is read from: the coordinator's clock.
    wall_clock: Clock,
    /// Set once the group is used with the consumer protocol (KIP-848): its members live
    /// there, and the classic fields above stay empty while it has members.
    pub consumer: Option<Box<ConsumerGroup>>,
    /// Records of a consumer group dropped by a migration (its tombstones), until the
    /// coordinator takes them with [`Group::take_consumer_records`].
    consumer_records: Vec<ConsumerRecord>,
    /// A generation completed or the group emptied since the coordinator last took the
    /// classic record ([`Group::take_classic_record`]).
    classic_unwritten: bool,
    /// The classic membership the log holds last for this group (written or replayed),
    /// appended again by a checkpoint of the offsets log.
    pub classic_written: Option<ClassicGroupValue>,
    /// The leader's assignments are installed and the completed generation is being
    /// written: the group stays `CompletingRebalance`, its syncs parked, until
    /// [`Group::finish_sync`] (as Kafka answers `SyncGroup` after storing the group).
    assignments_awaiting_write: bool,
}

impl Group {
    pub fn new(id: &str) -> Self {
        Self {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: Vec::new(),
            pending_members: HashMap::new(),
            rebalance_deadline: None,
            initial_delay: false,
            offsets: BTreeMap::new(),
            empty_since_ms: None,
            wall_clock: Clock::System,
            consumer: None,
            consumer_records: Vec::new(),
            classic_unwritten: false,
            classic_written: None,
            assignments_awaiting_write: false,
        }
    }

    /// The classic membership to write now, if a generation completed or the group emptied
    /// since the last call: the members with their assignments (`Stable`, or the leader's
    /// assignments installed and awaiting this write), or none (`Empty`). `None` while
    /// consumer-protocol members hold the group (their own records describe it) or when the
    /// group moved on before the call.
    pub fn take_classic_record(&mut self) -> Option<ClassicGroupValue> {
        if !std::mem::take(&mut self.classic_unwritten) || self.has_consumer_members() {
            return None;
        }
        let completed = self.state == GroupState::Stable
            || (self.state == GroupState::CompletingRebalance && self.assignments_awaiting_write);
        let members = match self.state {
            _ if completed => self.members.iter().map(|m| self.member_value(m)).collect(),
            GroupState::Empty => Vec::new(),
            _ => return None,
        };
        let value = ClassicGroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone(),
            state_timestamp_ms: self.wall_clock.now_ms(),
            members,
        };
        self.classic_written = Some(value.clone());
        Some(value)
    }

    fn member_value(&self, member: &Member) -> ClassicGroupMember {
        let protocol = self.protocol_name.as_deref().unwrap_or_default();
        ClassicGroupMember {
            member_id: member.member_id.clone(),
            instance_id: member.instance_id.clone(),
            client_id: member.client_id.clone(),
            client_host: member.client_host.clone(),
            rebalance_timeout_ms: i32::try_from(member.rebalance_timeout.as_millis())
                .unwrap_or(i32::MAX),
            session_timeout_ms: i32::try_from(member.session_timeout.as_millis())
                .unwrap_or(i32::MAX),
            subscription: member.metadata_for(protocol),
            assignment: member.assignment.clone(),
        }
    }

    /// Restores the membership a replayed record holds (see the module docs): `Stable` at
    /// its generation with its members, each with a full session from `now`; `Empty` at
    /// its generation when it has none. A value that cannot be a live group (no protocol,
    /// a leader that is not a member, more members than a group may have) restores as
    /// `Empty` at its generation, with a log line: its members rejoin. Ignored while
    /// consumer-protocol members hold the group. Only for a group being replayed: nothing
    /// is parked on it.
    pub fn restore_classic(&mut self, value: ClassicGroupValue, now: Instant) {
        if self.has_consumer_members() {
            return;
        }
        assert!(
            self.members
                .iter()
                .all(|m| m.join_waiter.is_none() && m.sync_waiter.is_none()),
            "group {}: restored while calls are parked on it",
            self.id
        );
        self.members.clear();
        self.pending_members.clear();
        self.rebalance_deadline = None;
        self.initial_delay = false;
        self.classic_unwritten = false;
        self.generation = value.generation;
        let mut seen = std::collections::HashSet::new();
        let unique = value
            .members
            .iter()
            .all(|m| seen.insert(m.member_id.as_str()));
        let live = !value.members.is_empty()
            && unique
            && value.members.len() <= GROUP_SIZE_MAX
            && value.protocol_name.is_some()
            && value
                .leader
                .as_ref()
                .is_some_and(|leader| value.members.iter().any(|m| &m.member_id == leader));
        if live {
            let protocol = value.protocol_name.clone().expect("checked");
            self.members = value
                .members
                .iter()
                .map(|m| {
                    let session_timeout = crate::groups::millis(m.session_timeout_ms);
                    Member {
                        member_id: m.member_id.clone(),
                        instance_id: m.instance_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        session_timeout,
                        rebalance_timeout: crate::groups::millis(m.rebalance_timeout_ms),
                        protocols: vec![(protocol.clone(), m.subscription.clone())],
                        assignment: m.assignment.clone(),
                        heartbeat_deadline: now + session_timeout,
                        join_waiter: None,
                        sync_waiter: None,
                    }
                })
                .collect();
            self.state = GroupState::Stable;
            self.protocol_type = Some(value.protocol_type.clone());
            self.protocol_name = Some(protocol);
            self.leader.clone_from(&value.leader);
            self.empty_since_ms = None;
        } else {
            if !value.members.is_empty() {
                tracing::warn!(group = %self.id, members = value.members.len(), generation = value.generation,
                    "classic group record cannot be restored as it is; restored empty, its members rejoin");
            }
            self.state = GroupState::Empty;
            self.protocol_type = None;
            self.protocol_name = None;
            self.leader = None;
        }
        self.classic_written = Some(value);
        self.assert_consistent();
    }

    /// Forgets classic membership restored from the log once the replay finds the group's
    /// consumer-protocol members (written after it: a migration moved them there).
    pub fn drop_restored_classic_members(&mut self) {
        if self.members.is_empty() || !self.has_consumer_members() {
            return;
        }
        self.members.clear();
        self.state = GroupState::Empty;
        self.protocol_type = None;
        self.protocol_name = None;
        self.leader = None;
        self.classic_written = None;
        self.assert_consistent();
    }

    /// What changed in the group's consumer-protocol state since the last call, as records
    /// of the offsets log: a dropped consumer group's tombstones, then the live one's
    /// changes.
    pub fn take_consumer_records(&mut self) -> Vec<ConsumerRecord> {
        let mut records = std::mem::take(&mut self.consumer_records);
        if let Some(consumer) = self.consumer.as_mut() {
            records.extend(consumer.take_records(&self.id));
        }
        records
    }

    /// The group reads wall-clock time from `clock` (the shard's) instead of the system's.
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.wall_clock = clock;
        self
    }

    /// A consumer-protocol group with members (KIP-848).
    pub fn has_consumer_members(&self) -> bool {
        self.consumer
            .as_ref()
            .is_some_and(|c| !c.members.is_empty())
    }

    pub fn member(&self, member_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.member_id == member_id)
    }

    fn member_mut(&mut self, member_id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.member_id == member_id)
    }

    fn member_by_instance(&self, instance_id: &str) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.instance_id.as_deref() == Some(instance_id))
    }

    /// Protocols every member (and `candidate`, when given) supports.
    fn common_protocols(&self, candidate: Option<&[(String, Bytes)]>) -> Vec<String> {
        let mut lists = self
            .members
            .iter()
            .map(|m| m.protocols.as_slice())
            .chain(candidate);
        let Some(first) = lists.next() else {
            return Vec::new();
        };
        let mut common: Vec<String> = first.iter().map(|(name, _)| name.clone()).collect();
        for list in lists {
            common.retain(|name| list.iter().any(|(other, _)| other == name));
        }
        common
    }

    /// Kafka's vote: each member names its most preferred common protocol; most votes wins.
    fn select_protocol(&self) -> Option<String> {
        let common = self.common_protocols(None);
        let mut votes: Vec<(String, usize)> = common.iter().map(|p| (p.clone(), 0)).collect();
        for member in &self.members {
            if let Some(choice) = member
                .protocols
                .iter()
                .find(|(name, _)| common.contains(name))
            {
                if let Some(vote) = votes.iter_mut().find(|(name, _)| *name == choice.0) {
                    vote.1 += 1;
                }
            }
        }
        // max_by_key keeps the last of equals; reverse so the first-listed protocol wins ties.
        votes
            .into_iter()
            .rev()
            .max_by_key(|(_, count)| *count)
            .map(|(name, _)| name)
    }

    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && !self.common_protocols(Some(protocols)).is_empty()
    }

    /// Changes the state, asserting the change is one the state machine allows.
    fn set_state(&mut self, next: GroupState) {
        assert!(
            self.state.can_become(next),
            "group {}: no transition from {:?} to {next:?}",
            self.id,
            self.state
        );
        if self.state == GroupState::CompletingRebalance {
            // Left before (or by) the write's end: `finish_sync` finds nothing to finish.
            self.assignments_awaiting_write = false;
        }
        self.state = next;
    }

    /// Starts the next generation: when a join phase ends, or a live group loses its last
    /// member. Generations only grow, so a member of an older one is always told so.
    fn start_next_generation(&mut self) {
        assert!(
            matches!(
                self.state,
                GroupState::PreparingRebalance
                    | GroupState::CompletingRebalance
                    | GroupState::Stable
            ),
            "group {}: a new generation in state {:?}",
            self.id,
            self.state
        );
        let previous = self.generation;
        // A wrap after i32::MAX generations (as Kafka's `generationId++` wraps) is left as
        // it was; anything else must move the generation forward.
        self.generation = previous.wrapping_add(1);
        assert!(
            self.generation > previous || previous == i32::MAX,
            "group {}: generation {previous} went to {}",
            self.id,
            self.generation
        );
    }

    /// What holds between requests; checked at the end of every call that changes members
    /// or state. Linear in the members (at most [`GROUP_SIZE_MAX`]), once per request.
    fn assert_consistent(&self) {
        assert!(
            self.members.len() + self.pending_members.len() <= GROUP_SIZE_MAX,
            "group {}: {} members and {} pending ids over the limit",
            self.id,
            self.members.len(),
            self.pending_members.len()
        );
        match self.state {
            GroupState::Empty => assert!(
                self.members.is_empty() && self.leader.is_none(),
                "group {}: empty with {} members, leader {:?}",
                self.id,
                self.members.len(),
                self.leader
            ),
            GroupState::CompletingRebalance | GroupState::Stable => assert!(
                !self.members.is_empty() && self.leader.is_some(),
                "group {}: {:?} needs members and a leader",
                self.id,
                self.state
            ),
            GroupState::PreparingRebalance | GroupState::Dead => {}
        }
        if let Some(leader) = &self.leader {
            assert!(
                self.member(leader).is_some(),
                "group {}: leader {leader} is not a member",
                self.id
            );
        }
        // A join parks only until the join phase ends, a sync only until the assignment
        // arrives; every change of state answers the parked requests it ends.
        for member in &self.members {
            assert!(
                member.join_waiter.is_none() || self.state == GroupState::PreparingRebalance,
                "group {}: member {} waits on a join in {:?}",
                self.id,
                member.member_id,
                self.state
            );
            assert!(
                member.sync_waiter.is_none() || self.state == GroupState::CompletingRebalance,
                "group {}: member {} waits on a sync in {:?}",
                self.id,
                member.member_id,
                self.state
            );
        }
    }

    /// `JoinGroup`. See the module docs for when it parks.
    pub fn join(
        &mut self,
        request: JoinRequest,
        rules: &GroupRules,
        now: Instant,
    ) -> Answer<JoinResult> {
        let answer = self.join_checked(request, rules, now);
        self.assert_consistent();
        answer
    }

    /// [`Self::join`]'s checks of the request, then the join itself.
    fn join_checked(
        &mut self,
        request: JoinRequest,
        rules: &GroupRules,
        now: Instant,
    ) -> Answer<JoinResult> {
        let fail = |code| Answer::Now(JoinResult::error(code, &request.member_id));
        if self.state == GroupState::Dead {
            return fail(group_codes::COORDINATOR_NOT_AVAILABLE);
        }
        if self.has_consumer_members() {
            // Served by `join_consumer_group`; the coordinator routes it there.
            return fail(group_codes::INCONSISTENT_GROUP_PROTOCOL);
        }
        self.drop_empty_consumer_group();
        if request.session_timeout < rules.session_timeout_min
            || request.session_timeout > rules.session_timeout_max
        {
            return fail(group_codes::INVALID_SESSION_TIMEOUT);
        }
        if !self.supports(&request.protocol_type, &request.protocols) {
            return fail(group_codes::INCONSISTENT_GROUP_PROTOCOL);
        }
        if request.member_id.is_empty() {
            // A static member taking over its own identity does not grow the group.
            let known_instance = request
                .instance_id
                .as_deref()
                .is_some_and(|id| self.member_by_instance(id).is_some());
            if !known_instance && self.members.len() + self.pending_members.len() >= GROUP_SIZE_MAX
            {
                return fail(group_codes::GROUP_MAX_SIZE_REACHED);
            }
            return self.join_unknown_member(request, rules, now);
        }
        if self.pending_members.remove(&request.member_id).is_some() {
            return self.add_member_and_rebalance(request, rules, now);
        }
        let Some(member) = self.member(&request.member_id) else {
            return fail(group_codes::UNKNOWN_MEMBER_ID);
        };
        if request.instance_id.is_some() && member.instance_id != request.instance_id {
            return fail(group_codes::FENCED_INSTANCE_ID);
        }
        self.join_known_member(request, rules, now)
    }

    fn join_unknown_member(
        &mut self,
        request: JoinRequest,
        rules: &GroupRules,
        now: Instant,
    ) -> Answer<JoinResult> {
        let prefix = request
            .instance_id
            .clone()
            .unwrap_or_else(|| request.client_id.clone());
        let member_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
        if let Some(instance_id) = &request.instance_id {
            let instance_id = instance_id.clone();
            return self.join_static_member(&instance_id, member_id, request, rules, now);
        }
        if request.require_known_member_id {
            self.pending_members
                .insert(member_id.clone(), now + request.session_timeout);
            return Answer::Now(JoinResult::error(
                group_codes::MEMBER_ID_REQUIRED,
                &member_id,
            ));
        }
        self.add_member_and_rebalance(
            JoinRequest {
                member_id,
                ..request
            },
            rules,
            now,
        )
    }

    /// KIP-345: a static member rejoining under a new member id takes over its old
    /// identity. In a stable group with unchanged protocols this is done without a
    /// rebalance: the member keeps its assignment under the new id, and the old id is fenced.
    fn join_static_member(
        &mut self,
        instance_id: &str,
        member_id: String,
        request: JoinRequest,
        rules: &GroupRules,
        now: Instant,
    ) -> Answer<JoinResult> {
        let Some(old) = self.member_by_instance(instance_id) else {
            return self.add_member_and_rebalance(
                JoinRequest {
                    member_id,
                    ..request
                },
                rules,
                now,
            );
        };
        let old_id = old.member_id.clone();
        let unchanged = old.protocols == request.protocols;
        if self.state == GroupState::Stable && unchanged {
            let was_leader = self.leader.as_deref() == Some(old_id.as_str());
            let member = self.member_mut(&old_id).expect("found above");
            member.answer_join(JoinResult::error(group_codes::FENCED_INSTANCE_ID, &old_id));
            member.answer_sync(SyncResult::error(group_codes::FENCED_INSTANCE_ID));
            member.member_id.clone_from(&member_id);
            member.heartbeat_deadline = now + member.session_timeout;
            // The stable generation now has a different member id: written again, or a
            // coordinator that loads the group would not know the new id.
            self.classic_unwritten = true;
            // Answered with the old leader id (Kafka does the same): a rejoining leader must
            // not run an assignment that a stable group would never hand out.
            let result = self.join_result_for(&member_id, false);
            if was_leader {
                self.leader = Some(member_id);
            }
            return Answer::Now(result);
        }
        self.remove_member(&old_id, group_codes::FENCED_INSTANCE_ID);
        self.add_member_and_rebalance(
            JoinRequest {
                member_id,
                ..request
            },
            rules,
            now,
        )
    }

    fn join_known_member(
        &mut self,
        request: JoinRequest,
        rules: &GroupRules,
        now: Instant,
    ) -> Answer<JoinResult> {
        let is_leader = self.leader.as_deref() == Some(request.member_id.as_str());
        let member = self.member(&request.member_id).expect("checked by join");
        let unchanged = member.protocols == request.protocols;
        match self.state {
            GroupState::CompletingRebalance if unchanged => {
                // The join response was lost: answer it again.
                Answer::Now(self.join_result_for(&request.member_id, is_leader))
            }
            GroupState::Stable if unchanged && !is_leader => {
                Answer::Now(self.join_result_for(&request.member_id, false))
            }
            _ => {
                let (sender, receiver) = local_channel::new_bounded(1);
                let member = self.member_mut(&request.member_id).expect("checked");
                member.protocols = request.protocols;
                member.session_timeout = request.session_timeout;
                member.rebalance_timeout = request.rebalance_timeout;
                member.heartbeat_deadline = now + request.session_timeout;
                member.answer_join(JoinResult::error(
                    group_codes::REBALANCE_IN_PROGRESS,
                    &request.member_id,
                ));
                member.join_waiter = Some(sender);
                self.prepare_rebalance(rules, now);
                self.try_complete_join(now);
                Answer::Later(receiver)
            }
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        request: JoinRequest,
        rules: &GroupRules,
        now: Instant,
    ) -> Answer<JoinResult> {
        let (sender, receiver) = local_channel::new_bounded(1);
        if self.members.is_empty() {
            self.protocol_type = Some(request.protocol_type.clone());
        }
        self.members.push(Member {
            member_id: request.member_id,
            instance_id: request.instance_id,
            client_id: request.client_id,
            client_host: request.client_host,
            session_timeout: request.session_timeout,
            rebalance_timeout: request.rebalance_timeout,
            protocols: request.protocols,
            assignment: Bytes::new(),
            heartbeat_deadline: now + request.session_timeout,
            join_waiter: Some(sender),
            sync_waiter: None,
        });
        self.prepare_rebalance(rules, now);
        self.try_complete_join(now);
        Answer::Later(receiver)
    }

    /// Moves to `PreparingRebalance` (from Empty, Stable or `CompletingRebalance`) and sets
    /// the deadline by which members must rejoin.
    fn prepare_rebalance(&mut self, rules: &GroupRules, now: Instant) {
        if !matches!(
            self.state,
            GroupState::Empty | GroupState::Stable | GroupState::CompletingRebalance
        ) {
            return;
        }
        if self.state == GroupState::CompletingRebalance {
            for member in &mut self.members {
                member.answer_sync(SyncResult::error(group_codes::REBALANCE_IN_PROGRESS));
            }
        }
        let rebalance_timeout = self
            .members
            .iter()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        let wait = if self.state == GroupState::Empty {
            rules.initial_rebalance_delay.min(rebalance_timeout)
        } else {
            rebalance_timeout
        };
        self.rebalance_deadline = Some(now + wait);
        self.initial_delay = self.state == GroupState::Empty && !wait.is_zero();
        self.set_state(GroupState::PreparingRebalance);
        self.empty_since_ms = None;
    }

    /// Completes the join phase when every member has rejoined (and no handed-out member id
    /// is still expected), or when the rebalance deadline has passed.
    pub fn try_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let deadline_passed = self
            .rebalance_deadline
            .is_some_and(|deadline| now >= deadline);
        let all_joined =
            self.members.iter().all(|m| m.join_waiter.is_some()) && self.pending_members.is_empty();
        if deadline_passed || (all_joined && !self.initial_delay) {
            self.complete_join(now);
        }
    }

    /// Drops members that did not rejoin, starts the next generation and answers every
    /// parked join: the leader with the members' metadata, the others without.
    fn complete_join(&mut self, now: Instant) {
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.join_waiter.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for member_id in gone {
            self.remove_member(&member_id, group_codes::UNKNOWN_MEMBER_ID);
        }
        self.rebalance_deadline = None;
        self.initial_delay = false;
        self.start_next_generation();
        if self.members.is_empty() {
            self.become_empty();
            return;
        }
        self.protocol_name = self.select_protocol();
        let leader_present = self
            .leader
            .as_ref()
            .is_some_and(|leader| self.member(leader).is_some());
        if !leader_present {
            self.leader = Some(self.members[0].member_id.clone());
        }
        self.set_state(GroupState::CompletingRebalance);
        let leader = self.leader.clone().expect("set above");
        let results: Vec<JoinResult> = self
            .members
            .iter()
            .map(|m| self.join_result_for(&m.member_id, m.member_id == leader))
            .collect();
        for (member, result) in self.members.iter_mut().zip(results) {
            member.heartbeat_deadline = now + member.session_timeout;
            member.answer_join(result);
        }
    }

    fn become_empty(&mut self) {
        self.set_state(GroupState::Empty);
        self.classic_unwritten = true;
        self.protocol_name = None;
        self.protocol_type = None;
        self.leader = None;
        self.empty_since_ms = Some(self.wall_clock.now_ms());
    }

    fn join_result_for(&self, member_id: &str, with_members: bool) -> JoinResult {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let members = if with_members {
            self.members
                .iter()
                .map(|m| {
                    let metadata = m.metadata_for(&protocol);
                    (m.member_id.clone(), m.instance_id.clone(), metadata)
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResult {
            error_code: codes::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members,
        }
    }

    /// Checks a request's member and generation the way every group API does.
    fn check_member(&self, member_id: &str, generation: i32) -> Result<(), i16> {
        if self.state == GroupState::Dead {
            return Err(group_codes::COORDINATOR_NOT_AVAILABLE);
        }
        if self.member(member_id).is_none() {
            return Err(group_codes::UNKNOWN_MEMBER_ID);
        }
        if generation != self.generation {
            return Err(group_codes::ILLEGAL_GENERATION);
        }
        Ok(())
    }

    /// `SyncGroup`: followers park until the leader's assignment arrives.
    pub fn sync(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Answer<SyncResult> {
        let answer = self.sync_checked(member_id, generation, assignments, now);
        self.assert_consistent();
        answer
    }

    /// [`Self::sync`]'s checks of the request, then the sync itself.
    fn sync_checked(
        &mut self,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Answer<SyncResult> {
        if let Err(code) = self.check_member(member_id, generation) {
            return Answer::Now(SyncResult::error(code));
        }
        let member = self.member_mut(member_id).expect("checked");
        member.heartbeat_deadline = now + member.session_timeout;
        match self.state {
            GroupState::Empty | GroupState::Dead => {
                Answer::Now(SyncResult::error(group_codes::UNKNOWN_MEMBER_ID))
            }
            GroupState::PreparingRebalance => {
                Answer::Now(SyncResult::error(group_codes::REBALANCE_IN_PROGRESS))
            }
            GroupState::Stable => Answer::Now(self.sync_result_for(member_id)),
            GroupState::CompletingRebalance => {
                let (sender, receiver) = local_channel::new_bounded(1);
                self.member_mut(member_id).expect("checked").sync_waiter = Some(sender);
                if self.leader.as_deref() == Some(member_id) && !self.assignments_awaiting_write {
                    self.install_assignments(assignments);
                }
                Answer::Later(receiver)
            }
        }
    }

    /// The leader's assignments: installed now, answered once the completed generation is
    /// written (`finish_sync`).
    fn install_assignments(&mut self, assignments: Vec<(String, Bytes)>) {
        let mut assignments: HashMap<String, Bytes> = assignments.into_iter().collect();
        for member in &mut self.members {
            member.assignment = assignments.remove(&member.member_id).unwrap_or_default();
        }
        self.assignments_awaiting_write = true;
        self.classic_unwritten = true;
    }

    /// The write of the generation the leader's sync completed has ended (`written`: its
    /// error code): on success the group becomes `Stable` and every parked sync gets its
    /// assignment; on failure they get the error and the group rebalances, so the next
    /// generation is written (Kafka resets the assignments the same way). Nothing when no
    /// assignments await a write, or the group moved on meanwhile (a join or leave answered
    /// the syncs already).
    pub fn finish_sync(&mut self, written: i16, rules: &GroupRules, now: Instant) {
        if !self.assignments_awaiting_write {
            return;
        }
        if written != codes::NONE {
            for member in &mut self.members {
                member.answer_sync(SyncResult::error(written));
            }
            self.prepare_rebalance(rules, now);
            self.assert_consistent();
            return;
        }
        self.set_state(GroupState::Stable);
        let results: Vec<SyncResult> = self
            .members
            .iter()
            .map(|m| self.sync_result_for(&m.member_id))
            .collect();
        for (member, result) in self.members.iter_mut().zip(results) {
            member.answer_sync(result);
        }
        self.assert_consistent();
    }

    fn sync_result_for(&self, member_id: &str) -> SyncResult {
        SyncResult {
            error_code: codes::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment: self
                .member(member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default(),
        }
    }

    pub fn heartbeat(&mut self, member_id: &str, generation: i32, now: Instant) -> i16 {
        if self.state == GroupState::Empty {
            return group_codes::UNKNOWN_MEMBER_ID;
        }
        if let Err(code) = self.check_member(member_id, generation) {
            return code;
        }
        let member = self.member_mut(member_id).expect("checked");
        member.heartbeat_deadline = now + member.session_timeout;
        if self.state == GroupState::PreparingRebalance {
            group_codes::REBALANCE_IN_PROGRESS
        } else {
            codes::NONE
        }
    }

    /// `LeaveGroup` of one member, by member id or (static) by instance id.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        rules: &GroupRules,
        now: Instant,
    ) -> i16 {
        let code = self.leave_checked(member_id, instance_id, rules, now);
        self.assert_consistent();
        code
    }

    /// [`Self::leave`]'s checks of the request, then the leave itself.
    fn leave_checked(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        rules: &GroupRules,
        now: Instant,
    ) -> i16 {
        let member_id = match instance_id {
            Some(instance_id) => match self.member_by_instance(instance_id) {
                Some(member) if member_id.is_empty() || member.member_id == member_id => {
                    member.member_id.clone()
                }
                Some(_) => return group_codes::FENCED_INSTANCE_ID,
                None => return group_codes::UNKNOWN_MEMBER_ID,
            },
            None => member_id.to_string(),
        };
        if self.pending_members.remove(&member_id).is_some() {
            self.try_complete_join(now);
            return codes::NONE;
        }
        if self.member(&member_id).is_none() {
            return group_codes::UNKNOWN_MEMBER_ID;
        }
        self.remove_member(&member_id, group_codes::UNKNOWN_MEMBER_ID);
        self.after_member_removed(rules, now);
        codes::NONE
    }

    fn remove_member(&mut self, member_id: &str, answer_code: i16) {
        if let Some(index) = self.members.iter().position(|m| m.member_id == member_id) {
            let mut member = self.members.remove(index);
            member.answer_join(JoinResult::error(answer_code, member_id));
            member.answer_sync(SyncResult::error(answer_code));
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = None;
        }
    }

    fn after_member_removed(&mut self, rules: &GroupRules, now: Instant) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                if self.members.is_empty() {
                    self.start_next_generation();
                    self.become_empty();
                } else {
                    self.prepare_rebalance(rules, now);
                }
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    /// Runs the clock: expires members whose session ran out (a member parked in a join or
    /// sync is alive by definition), member ids never used, and a rebalance past its deadline.
    pub fn tick(&mut self, rules: &GroupRules, now: Instant) {
        self.pending_members.retain(|_, deadline| *deadline > now);
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.join_waiter.is_none() && m.sync_waiter.is_none())
            .filter(|m| m.heartbeat_deadline <= now)
            .map(|m| m.member_id.clone())
            .collect();
        for member_id in &expired {
            tracing::info!(group = %self.id, member = %member_id, "member session expired");
            self.remove_member(member_id, group_codes::UNKNOWN_MEMBER_ID);
        }
        if !expired.is_empty() {
            self.after_member_removed(rules, now);
        }
        self.try_complete_join(now);
        if let Some(consumer) = self.consumer.as_mut() {
            let had_members = !consumer.members.is_empty();
            let consumer_members = consumer.consumer_protocol_members();
            for member_id in consumer.tick(now) {
                tracing::info!(group = %self.id, member = %member_id, "consumer member session or rebalance timed out");
            }
            self.note_consumer_membership(had_members);
            self.maybe_downgrade(consumer_members, rules, now);
        }
        self.assert_consistent();
    }

    /// `ConsumerGroupHeartbeat` (KIP-848) on this group; see [`ConsumerGroup::heartbeat`].
    /// A join (epoch 0) to a classic group with members upgrades it when it can (see
    /// `migration`); the last consumer-protocol member leaving may downgrade it.
    pub fn consumer_heartbeat(
        &mut self,
        request: HeartbeatRequest,
        version: i16,
        topics: &dyn crate::groups::consumer::TopicCatalog,
        rules: &GroupRules,
        now: Instant,
    ) -> HeartbeatAnswer {
        if !self.members.is_empty() || self.state != GroupState::Empty {
            if request.member_epoch != 0 || self.members.is_empty() {
                return HeartbeatAnswer::error(
                    group_codes::GROUP_ID_NOT_FOUND,
                    &format!("Group {} is not a consumer group.", self.id),
                );
            }
            // A request the consumer group would refuse must not convert the group first.
            if let Err(answer) = crate::groups::consumer::validate(&request, version) {
                return answer;
            }
            if let Err(answer) = self.upgrade_to_consumer(rules, now) {
                return answer;
            }
        }
        let consumer = self.consumer.get_or_insert_default();
        let had_members = !consumer.members.is_empty();
        let consumer_members = consumer.consumer_protocol_members();
        let new_member_id = || uuid::Uuid::new_v4().to_string();
        let answer = consumer.heartbeat(
            request,
            version,
            topics,
            new_member_id,
            &rules.consumer,
            now,
        );
        self.note_consumer_membership(had_members);
        self.maybe_downgrade(consumer_members, rules, now);
        answer
    }

    /// Offsets of a consumer group expire counted from when its last member left.
    fn note_consumer_membership(&mut self, had_members: bool) {
        if self.has_consumer_members() {
            self.empty_since_ms = None;
        } else if had_members {
            self.empty_since_ms = Some(self.wall_clock.now_ms());
        }
    }

    /// `OffsetCommit` admission (Kafka's classic rules): a simple consumer (generation -1)
    /// may commit only to a group without members; a member must be current, except that
    /// commits stay allowed while the group prepares a rebalance.
    pub fn check_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), i16> {
        if let Some(consumer) = &self.consumer {
            if self.members.is_empty() {
                // KIP-848: the member epoch stands where the generation stood.
                return consumer.check_member_epoch(member_id, generation);
            }
        }
        match self.state {
            GroupState::Dead => Err(group_codes::COORDINATOR_NOT_AVAILABLE),
            GroupState::Empty if generation < 0 => Ok(()),
            GroupState::CompletingRebalance => Err(group_codes::REBALANCE_IN_PROGRESS),
            _ => {
                if let Some(instance_id) = instance_id {
                    match self.member_by_instance(instance_id) {
                        Some(m) if m.member_id == member_id => {}
                        Some(_) => return Err(group_codes::FENCED_INSTANCE_ID),
                        None => return Err(group_codes::UNKNOWN_MEMBER_ID),
                    }
                }
                self.check_member(member_id, generation)
            }
        }
    }

    /// Whether an admitted commit (see [`Self::check_commit`]) counts for one partition:
    /// always, except for a consumer-protocol member at its previous epoch
    /// ([`ConsumerGroup::commit_admits_partition`]).
    pub fn commit_admits_partition(
        &self,
        member_id: &str,
        generation: i32,
        topic: &str,
        partition: i32,
    ) -> bool {
        match &self.consumer {
            Some(consumer) if self.members.is_empty() => {
                consumer.commit_admits_partition(member_id, generation, topic, partition)
            }
            _ => true,
        }
    }

    /// Offsets past `offsets.retention` (KIP-211): only in a group without members, counted
    /// from when it became empty, or from each commit when that is not known (a group only
    /// ever used by simple consumers, or one replayed after a restart).
    pub fn expired_offsets(&self, now_ms: i64, retention_ms: i64) -> Vec<(String, i32)> {
        if self.state != GroupState::Empty || self.has_consumer_members() {
            return Vec::new();
        }
        self.offsets
            .iter()
            .filter(|(_, value)| {
                // An OffsetCommit v2-4 retention replaces `offsets.retention` for its offset,
                // counted from the commit (Kafka's OffsetExpirationConditionImpl).
                if let Some(expire_timestamp_ms) = value.expire_timestamp_ms {
                    return now_ms >= expire_timestamp_ms;
                }
                let base_ms = self.empty_since_ms.unwrap_or(value.commit_timestamp_ms);
                now_ms.saturating_sub(base_ms) >= retention_ms
            })
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// A group with neither members nor offsets can be forgotten.
    pub fn is_disposable(&self) -> bool {
        self.state == GroupState::Empty
            && !self.has_consumer_members()
            && self.offsets.is_empty()
            && self.pending_members.is_empty()
    }
}

mod migration;

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    pub(super) fn rules() -> GroupRules {
        GroupRules {
            session_timeout_min: Duration::from_secs(6),
            session_timeout_max: Duration::from_secs(1800),
            initial_rebalance_delay: Duration::ZERO,
            consumer: ConsumerRules::default(),
            migration: MigrationPolicy::default(),
        }
    }

    fn join_request(member_id: &str) -> JoinRequest {
        JoinRequest {
            member_id: member_id.to_string(),
            instance_id: None,
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: vec![
                ("cooperative-sticky".into(), Bytes::from_static(b"c")),
                ("range".into(), Bytes::from_static(b"r")),
            ],
            require_known_member_id: true,
        }
    }

    fn now_answer<T>(answer: Answer<T>) -> T {
        match answer {
            Answer::Now(result) => result,
            Answer::Later(_) => panic!("expected an immediate answer"),
        }
    }

    fn parked<T>(answer: Answer<T>) -> LocalReceiver<T> {
        match answer {
            Answer::Now(_) => panic!("expected a parked answer"),
            Answer::Later(receiver) => receiver,
        }
    }

    #[test]
    fn join_sync_heartbeat_leave_through_the_states() {
        glommio::LocalExecutor::default().run(async {
            let (rules, now) = (rules(), Instant::now());
            let mut group = Group::new("g");
            let required = now_answer(group.join(join_request(""), &rules, now));
            assert_eq!(required.error_code, group_codes::MEMBER_ID_REQUIRED);
            let member = required.member_id;
            let joined = parked(group.join(join_request(&member), &rules, now));
            let joined = joined
                .recv()
                .await
                .expect("answered when the join completes");
            assert_eq!(group.state, GroupState::CompletingRebalance);
            assert_eq!(
                (joined.generation, joined.leader.as_str()),
                (1, member.as_str())
            );
            assert_eq!(joined.protocol_name.as_deref(), Some("cooperative-sticky"));
            assert_eq!(joined.members.len(), 1, "the leader sees the members");

            assert_eq!(
                group.heartbeat(&member, 1, now),
                codes::NONE,
                "allowed while completing"
            );
            let assignment = vec![(member.clone(), Bytes::from_static(b"p0"))];
            let synced = parked(group.sync(&member, 1, assignment, now));
            assert_eq!(
                group.state,
                GroupState::CompletingRebalance,
                "answered only once the generation is written"
            );
            assert!(synced.recv().now_or_never().is_none(), "still parked");
            group.finish_sync(codes::NONE, &rules, now);
            let synced = synced.recv().await;
            assert_eq!(synced.expect("answered").assignment, &b"p0"[..]);
            assert_eq!(group.state, GroupState::Stable);
            assert_eq!(
                group.heartbeat(&member, 0, now),
                group_codes::ILLEGAL_GENERATION
            );
            assert_eq!(group.check_commit(&member, None, 1), Ok(()));
            assert_eq!(
                group.check_commit("", None, -1),
                Err(group_codes::UNKNOWN_MEMBER_ID),
                "a simple commit needs an empty group"
            );

            assert_eq!(group.leave(&member, None, &rules, now), codes::NONE);
            assert_eq!((group.state, group.generation), (GroupState::Empty, 2));
            assert_eq!(group.check_commit("", None, -1), Ok(()));
        });
    }

    #[test]
    fn an_expired_session_triggers_a_rebalance_without_the_member() {
        glommio::LocalExecutor::default().run(async {
            // With an initial delay both members land in the first generation.
            let rules = GroupRules {
                initial_rebalance_delay: Duration::from_secs(1),
                ..rules()
            };
            let now = Instant::now();
            let mut group = Group::new("g");
            let a = now_answer(group.join(join_request(""), &rules, now)).member_id;
            let b = now_answer(group.join(join_request(""), &rules, now)).member_id;
            let a_joined = parked(group.join(join_request(&a), &rules, now));
            let b_joined = parked(group.join(join_request(&b), &rules, now));
            group.tick(&rules, now + Duration::from_millis(500));
            assert_eq!(
                group.state,
                GroupState::PreparingRebalance,
                "still in the delay"
            );
            group.tick(&rules, now + Duration::from_secs(1));
            assert_eq!(a_joined.recv().await.unwrap().generation, 1);
            assert_eq!(b_joined.recv().await.unwrap().generation, 1);
            let _sync = parked(group.sync(&a, 1, vec![], now));
            group.finish_sync(codes::NONE, &rules, now);
            assert_eq!(group.state, GroupState::Stable);

            // A keeps heartbeating, B goes silent past its 10 s session.
            let later = now + Duration::from_secs(8);
            assert_eq!(group.heartbeat(&a, 1, later), codes::NONE);
            group.tick(&rules, now + Duration::from_secs(11));
            assert!(group.member(&b).is_none());
            assert_eq!(group.state, GroupState::PreparingRebalance);
            assert_eq!(
                group.heartbeat(&a, 1, now + Duration::from_secs(11)),
                group_codes::REBALANCE_IN_PROGRESS
            );
        });
    }

    #[test]
    fn a_group_stops_handing_out_member_ids_at_its_size_limit() {
        let (rules, now) = (rules(), Instant::now());
        let mut group = Group::new("g");
        for _ in 0..GROUP_SIZE_MAX {
            let answer = now_answer(group.join(join_request(""), &rules, now));
            assert_eq!(answer.error_code, group_codes::MEMBER_ID_REQUIRED);
        }
        let refused = now_answer(group.join(join_request(""), &rules, now));
        assert_eq!(refused.error_code, group_codes::GROUP_MAX_SIZE_REACHED);
        // Unused ids expire with their session and make room again.
        group.tick(&rules, now + Duration::from_secs(11));
        let answer = now_answer(group.join(join_request(""), &rules, now));
        assert_eq!(answer.error_code, group_codes::MEMBER_ID_REQUIRED);
    }

    #[test]
    #[should_panic(expected = "no transition from Empty to Stable")]
    fn a_state_change_outside_the_table_panics() {
        // A group must pass through a rebalance before it can be stable.
        Group::new("g").set_state(GroupState::Stable);
    }

    /// Seeded random sequences of joins, syncs, heartbeats, leaves and clock ticks, with
    /// member ids right, stale and made up: whatever clients send, the group's own
    /// assertions (state table, generations, leader, parked requests) never fire.
    #[test]
    fn random_requests_keep_the_group_consistent() {
        glommio::LocalExecutor::default().run(async {
            let rules = GroupRules {
                initial_rebalance_delay: Duration::from_millis(300),
                ..rules()
            };
            let start = Instant::now();
            let mut states_seen = Vec::new();
            let (mut records_written, mut completions, mut failed_writes) = (0, 0_usize, 0);
            for seed in 0..200 {
                let mut rng = crate::storage::sim::SeededRng::new(seed);
                let mut group = Group::new("g");
                // Every member id seen, current or long gone, and one never handed out.
                let mut seen: Vec<String> = vec!["made-up".into()];
                let mut now = start;
                let mut written: Option<ClassicGroupValue> = None;
                for _ in 0..300 {
                    let member = seen[rng.below(seen.len() as u64) as usize].clone();
                    let generation = group.generation - rng.below(2) as i32;
                    match rng.below(6) {
                        0 | 1 => {
                            let mut request =
                                join_request(if rng.below(2) == 0 { "" } else { &member });
                            request.require_known_member_id = rng.below(2) == 0;
                            if rng.below(3) == 0 {
                                request.instance_id = Some(format!("i{}", rng.below(3)));
                            }
                            if rng.below(4) == 0 {
                                request.protocols.reverse();
                            }
                            if let Answer::Now(answer) = group.join(request, &rules, now) {
                                seen.push(answer.member_id);
                            }
                        }
                        2 => {
                            let assignments = vec![(member.clone(), Bytes::from_static(b"a"))];
                            drop(group.sync(&member, generation, assignments, now));
                        }
                        3 => {
                            group.heartbeat(&member, generation, now);
                        }
                        4 => {
                            let instance_id = format!("i{}", rng.below(3));
                            let instance_id = (rng.below(3) == 0).then_some(instance_id.as_str());
                            group.leave(&member, instance_id, &rules, now);
                        }
                        _ => {
                            now += Duration::from_millis(rng.below(12_000));
                            group.tick(&rules, now);
                        }
                    }
                    for id in group.members.iter().map(|m| &m.member_id) {
                        if !seen.contains(id) {
                            seen.push(id.clone());
                        }
                    }
                    // The log's model: the last classic record written. Whenever the group
                    // is settled (Stable or Empty), a coordinator restoring that record
                    // gets this very membership. Every other completed generation's write
                    // fails: its syncs get the error and the group rebalances.
                    let completing = group.state == GroupState::CompletingRebalance;
                    if let Some(value) = group.take_classic_record() {
                        completions += usize::from(completing);
                        if completing && completions % 2 == 0 {
                            group.finish_sync(codes::KAFKA_STORAGE_ERROR, &rules, now);
                            failed_writes += 1;
                        } else {
                            records_written += 1;
                            written = Some(value);
                        }
                    }
                    group.finish_sync(codes::NONE, &rules, now);
                    if matches!(group.state, GroupState::Stable | GroupState::Empty) {
                        let mut restored = Group::new("g");
                        match written.clone() {
                            Some(value) => restored.restore_classic(value, now),
                            None => assert_eq!(group.generation, 0, "seed {seed}: nothing written"),
                        }
                        assert_eq!(
                            membership(&restored),
                            membership(&group),
                            "seed {seed}: the log is behind the settled group"
                        );
                    }
                    if !states_seen.contains(&group.state) {
                        states_seen.push(group.state);
                    }
                }
            }
            assert_eq!(
                states_seen.len(),
                4,
                "every live state was reached: {states_seen:?}"
            );
            assert!(
                records_written > 40,
                "{records_written} classic records written"
            );
            println!("{records_written} classic records written, {completions} generations completed, {failed_writes} of their writes failed");
            assert!(failed_writes >= 10, "{failed_writes} writes failed");
        });
    }

    /// What a classic record carries of a group: (state, generation, protocol, leader,
    /// [(member id, instance id, assignment)]).
    #[allow(clippy::type_complexity)]
    fn membership(
        group: &Group,
    ) -> (
        GroupState,
        i32,
        Option<String>,
        Option<String>,
        Vec<(String, Option<String>, Bytes)>,
    ) {
        let members = group
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.clone(),
                    m.instance_id.clone(),
                    m.assignment.clone(),
                )
            })
            .collect();
        (
            group.state,
            group.generation,
            group.protocol_name.clone(),
            group.leader.clone(),
            members,
        )
    }

    /// A completed generation is written with its members and a restored group carries on
    /// at it: heartbeats and commits of that generation pass, an older one is refused, and
    /// the members keep a full session from the load. Emptying writes the group again.
    #[test]
    fn a_completed_generation_is_written_and_restored_with_its_members() {
        glommio::LocalExecutor::default().run(async {
            let (rules, now) = (rules(), Instant::now());
            let mut group = Group::new("g");
            let member = now_answer(group.join(join_request(""), &rules, now)).member_id;
            let joined = parked(group.join(join_request(&member), &rules, now));
            joined.recv().await.expect("join completes");
            assert_eq!(
                group.take_classic_record(),
                None,
                "nothing while completing"
            );
            let assignment = vec![(member.clone(), Bytes::from_static(b"p0"))];
            let synced = parked(group.sync(&member, 1, assignment, now));
            let written = group
                .take_classic_record()
                .expect("the generation completed");
            group.finish_sync(codes::NONE, &rules, now);
            synced.recv().await.expect("answered once written");
            assert_eq!(group.take_classic_record(), None, "taken once");
            assert_eq!((written.generation, written.members.len()), (1, 1));
            assert_eq!(written.members[0].assignment, &b"p0"[..]);
            assert_eq!(written.protocol_type, "consumer");

            let later = now + Duration::from_secs(3600);
            let mut restored = Group::new("g");
            restored.restore_classic(written, later);
            assert_eq!(membership(&restored), membership(&group));
            assert_eq!(restored.heartbeat(&member, 1, later), codes::NONE);
            assert_eq!(
                restored.heartbeat(&member, 0, later),
                group_codes::ILLEGAL_GENERATION
            );
            assert_eq!(restored.check_commit(&member, None, 1), Ok(()));
            let session = restored.members[0].session_timeout;
            let just_before = session.checked_sub(Duration::from_millis(1)).expect("10 s");
            restored.tick(&rules, later + just_before);
            assert_eq!(
                restored.state,
                GroupState::Stable,
                "a full session from the load"
            );
            restored.tick(&rules, later + session);
            assert_eq!(
                restored.state,
                GroupState::Empty,
                "then the session runs out"
            );
            let emptied = restored.take_classic_record().expect("emptying is written");
            assert_eq!((emptied.generation, emptied.members.len()), (2, 0));
            let mut reloaded = Group::new("g");
            reloaded.restore_classic(emptied, later);
            assert_eq!(membership(&reloaded), membership(&restored));
        });
    }

    /// KIP-345: a static member that restarts under a new member id takes over its place
    /// in a stable group without a rebalance; the generation's record is written again with
    /// the new id, or a coordinator loading the group would refuse the member.
    #[test]
    fn a_static_member_replaced_in_a_stable_group_is_written_again() {
        glommio::LocalExecutor::default().run(async {
            let (rules, now) = (rules(), Instant::now());
            let mut group = Group::new("g");
            let static_join = |member_id: &str| JoinRequest {
                instance_id: Some("pod-1".into()),
                require_known_member_id: false,
                ..join_request(member_id)
            };
            let joined = parked(group.join(static_join(""), &rules, now));
            let first = joined.recv().await.expect("join completes").member_id;
            let assignment = vec![(first.clone(), Bytes::from_static(b"p0"))];
            let synced = parked(group.sync(&first, 1, assignment, now));
            assert!(group.take_classic_record().is_some());
            group.finish_sync(codes::NONE, &rules, now);
            synced.recv().await.expect("answered once written");

            let replaced = now_answer(group.join(static_join(""), &rules, now));
            assert_eq!(replaced.error_code, codes::NONE);
            assert_ne!(replaced.member_id, first);
            assert_eq!(group.state, GroupState::Stable, "no rebalance");
            let written = group.take_classic_record().expect("written again");
            assert_eq!(written.members[0].member_id, replaced.member_id);
            assert_eq!(written.generation, 1);
        });
    }

    /// A record that cannot describe a live group (a leader that is not a member, no
    /// protocol, a member id twice, more members than a group may have) restores the group
    /// empty at its generation instead of breaking the group's invariants.
    #[test]
    fn a_classic_record_that_cannot_be_live_restores_empty() {
        let member = |id: &str| ClassicGroupMember {
            member_id: id.into(),
            session_timeout_ms: -5,
            ..ClassicGroupMember::default()
        };
        let good = ClassicGroupValue {
            protocol_type: "consumer".into(),
            generation: 7,
            protocol_name: Some("range".into()),
            leader: Some("a".into()),
            state_timestamp_ms: 0,
            members: vec![member("a"), member("b")],
        };
        let mut restored = Group::new("g");
        restored.restore_classic(good.clone(), Instant::now());
        assert_eq!(
            (restored.state, restored.members.len()),
            (GroupState::Stable, 2)
        );
        assert_eq!(
            restored.members[0].session_timeout,
            Duration::ZERO,
            "negative reads as 0"
        );
        let broken = [
            ClassicGroupValue {
                leader: Some("z".into()),
                ..good.clone()
            },
            ClassicGroupValue {
                protocol_name: None,
                ..good.clone()
            },
            ClassicGroupValue {
                members: vec![member("a"), member("a")],
                ..good.clone()
            },
            ClassicGroupValue {
                members: (0..=GROUP_SIZE_MAX)
                    .map(|n| member(&n.to_string()))
                    .collect(),
                leader: Some("0".into()),
                ..good.clone()
            },
        ];
        for value in broken {
            let mut restored = Group::new("g");
            restored.restore_classic(value, Instant::now());
            assert_eq!(
                (restored.state, restored.generation, restored.members.len()),
                (GroupState::Empty, 7, 0)
            );
        }
    }

    #[test]
    fn offsets_expire_only_in_an_empty_group_after_the_retention() {
        let mut group = Group::new("g");
        let offset = |commit_timestamp_ms| CommittedOffset {
            offset: 1,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms,
            expire_timestamp_ms: None,
        };
        group.offsets.insert(("t".into(), 0), offset(1_000));
        group.offsets.insert(("t".into(), 1), offset(5_000));
        assert_eq!(group.expired_offsets(6_000, 4_000), vec![("t".into(), 0)]);
        group.empty_since_ms = Some(5_500);
        assert!(
            group.expired_offsets(6_000, 4_000).is_empty(),
            "counted from emptiness"
        );
        group.state = GroupState::Stable;
        assert!(group.expired_offsets(100_000, 4_000).is_empty());
    }

    #[test]
    fn an_offset_commit_retention_replaces_the_broker_retention() {
        let mut group = Group::new("g");
        let offset = |expire_timestamp_ms| CommittedOffset {
            offset: 1,
            leader_epoch: -1,
            metadata: String::new(),
            commit_timestamp_ms: 1_000,
            expire_timestamp_ms,
        };
        group.offsets.insert(("t".into(), 0), offset(Some(2_000)));
        group.offsets.insert(("t".into(), 1), offset(Some(900_000)));
        group.offsets.insert(("t".into(), 2), offset(None));
        let mut expired = group.expired_offsets(2_000, 100_000);
        expired.sort();
        assert_eq!(
            expired,
            vec![("t".into(), 0)],
            "its own expiry, not the broker's"
        );
        let mut expired = group.expired_offsets(200_000, 100_000);
        expired.sort();
        assert_eq!(expired, vec![("t".into(), 0), ("t".into(), 2)]);
        group.state = GroupState::Stable;
        assert!(
            group.expired_offsets(1_000_000, 100_000).is_empty(),
            "only once empty"
        );
    }
}

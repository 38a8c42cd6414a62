//! One consumer group of KIP-848's consumer protocol (`ConsumerGroupHeartbeat`): the group
//! epoch, the target assignment and its epoch, and the members reconciling towards it.
//!
//! ```text
//!  member:  Stable ──target changed, owns partitions now others'──▶ UnrevokedPartitions
//!             ▲  ▲                                                      │ heartbeat no longer
//!             │  └── new partitions all free ◀── UnreleasedPartitions ◀─┘ owns them (epoch
//!             └───────────────────────────────────────────────────────────  := target epoch)
//! ```
//! Rules (Kafka's `GroupMetadataManager.consumerGroupHeartbeat` and
//! `CurrentAssignmentBuilder`): any change of membership, subscriptions or subscribed
//! topics' partition counts bumps the group epoch; the next heartbeat recomputes the target
//! assignment at that epoch. A member keeps its epoch while it must revoke partitions; once a
//! heartbeat shows it no longer owns them it moves to the target epoch and receives the new
//! partitions that no other member still holds. So a partition never has two owners: every
//! partition is in at most one member's assigned or pending-revocation set (`owners`).
//! Pure and synchronous (takes `now`), owned by the coordinator of the group's shard.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error_codes as codes;
use crate::groups::assignor::{Assignment, Assignor, MemberSpec};
use crate::groups::types::{codes as group_codes, GROUP_SIZE_MAX};
pub use topic_regex::{TopicCatalog, TopicVisibility, SUBSCRIBED_REGEX_BYTES_MAX};

/// Error codes of KIP-848 the classic code does not use.
pub mod consumer_codes {
    use kafka_protocol::error::ResponseError;

    pub const FENCED_MEMBER_EPOCH: i16 = ResponseError::FencedMemberEpoch.code();
    pub const UNRELEASED_INSTANCE_ID: i16 = ResponseError::UnreleasedInstanceId.code();
    pub const UNSUPPORTED_ASSIGNOR: i16 = ResponseError::UnsupportedAssignor.code();
    pub const STALE_MEMBER_EPOCH: i16 = ResponseError::StaleMemberEpoch.code();
    pub const INVALID_REGULAR_EXPRESSION: i16 = ResponseError::InvalidRegularExpression.code();
}
use consumer_codes::{FENCED_MEMBER_EPOCH, UNRELEASED_INSTANCE_ID, UNSUPPORTED_ASSIGNOR};

/// The member epoch that leaves the group.
pub const LEAVE_EPOCH: i32 = -1;
/// The member epoch a static member leaves with: its assignment waits for its replacement.
pub const STATIC_LEAVE_EPOCH: i32 = -2;

/// Topic names one member may subscribe to by name. With `GROUP_SIZE_MAX` members and
/// names of at most 249 bytes, a group's subscriptions stay under 250 MB even so; the
/// group-wide bound below keeps them to ~25 MB.
pub const SUBSCRIBED_TOPICS_PER_MEMBER_MAX: usize = 1_000;
/// Topic names subscribed by name, summed over a group's members.
pub const SUBSCRIBED_TOPICS_PER_GROUP_MAX: usize = 100_000;
/// Partitions a heartbeat may say its member owns (it cannot own more than the target
/// gave it; this bounds the work on a lying request).
pub const OWNED_PARTITIONS_PER_MEMBER_MAX: usize = 100_000;
/// Longest topic name (Kafka's 249).
const TOPIC_NAME_BYTES_MAX: usize = crate::groups::types::TOPIC_NAME_BYTES_MAX;

/// Timers of consumer groups (`group.consumer.*`).
#[derive(Clone, Debug)]
pub struct ConsumerRules {
    pub session_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// `group.consumer.max.size` (never above `GROUP_SIZE_MAX`).
    pub max_size: usize,
}

impl Default for ConsumerRules {
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(5),
            max_size: GROUP_SIZE_MAX,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    Stable,
    UnrevokedPartitions,
    UnreleasedPartitions,
}

#[derive(Clone, Debug)]
pub struct ConsumerMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub member_epoch: i32,
    pub previous_epoch: i32,
    pub state: MemberState,
    /// Subscribed by name.
    pub subscribed_topics: BTreeSet<String>,
    /// `SubscribedTopicRegex`, and the topics it resolved to (as this member's principal
    /// may see them; shared with the members of the same pattern and principal).
    pub subscribed_regex: Option<String>,
    pub regex_topics: Arc<BTreeSet<String>>,
    /// The topic catalog's version `regex_topics` was resolved at (`None`: replayed).
    pub regex_version: Option<u64>,
    /// Whose rights resolve the pattern: from the member's latest heartbeat (`None` after
    /// a replay until it heartbeats again; its resolution is then kept as replayed).
    pub visibility: Option<TopicVisibility>,
    pub server_assignor: Option<String>,
    pub rebalance_timeout: Duration,
    pub assigned: Assignment,
    pub pending_revocation: Assignment,
    pub session_deadline: Instant,
    /// While partitions are pending revocation (or a classic member was told to rejoin):
    /// the member is removed if it has not released them (rejoined) by then (its
    /// rebalance timeout).
    pub revocation_deadline: Option<Instant>,
    /// A member speaking the classic protocol (`JoinGroup`/`SyncGroup`/`Heartbeat`) inside
    /// this group: its session timeout and protocols (see `classic_members`).
    pub classic: Option<crate::groups::records::ClassicMemberValue>,
}

impl ConsumerMember {
    /// A member that owns and subscribes to nothing yet.
    pub(crate) fn new(member_id: &str, session_deadline: Instant) -> Self {
        Self {
            member_id: member_id.to_string(),
            instance_id: None,
            rack_id: None,
            client_id: String::new(),
            client_host: String::new(),
            member_epoch: 0,
            previous_epoch: 0,
            state: MemberState::Stable,
            subscribed_topics: BTreeSet::new(),
            subscribed_regex: None,
            regex_topics: Arc::default(),
            regex_version: None,
            visibility: None,
            server_assignor: None,
            rebalance_timeout: Duration::ZERO,
            assigned: Assignment::new(),
            pending_revocation: Assignment::new(),
            session_deadline,
            revocation_deadline: None,
            classic: None,
        }
    }

    /// Every topic the member subscribes to: by name and through its pattern.
    pub fn topics(&self) -> impl Iterator<Item = &String> {
        self.subscribed_topics
            .iter()
            .chain(self.regex_topics.iter())
    }
}

/// A `ConsumerGroupHeartbeat` as the group takes it (topic ids already resolved to names).
#[derive(Clone, Debug, Default)]
pub struct HeartbeatRequest {
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub subscribed_topics: Option<Vec<String>>,
    /// `Some("")`: no pattern any more (librdkafka sends "" for none).
    pub subscribed_regex: Option<String>,
    pub server_assignor: Option<String>,
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
    /// The topics the sender's principal may describe.
    pub visibility: TopicVisibility,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeartbeatAnswer {
    pub error_code: i16,
    pub error_message: Option<String>,
    pub member_id: String,
    pub member_epoch: i32,
    pub heartbeat_interval_ms: i32,
    /// Sent when it changed, on a join and on a full request (as Kafka does).
    pub assignment: Option<Assignment>,
}

impl HeartbeatAnswer {
    pub fn error(error_code: i16, message: &str) -> Self {
        Self {
            error_code,
            error_message: Some(message.to_string()),
            ..Self::default()
        }
    }
}

/// A consumer-protocol group as `ConsumerGroupDescribe` shows it: each member with its
/// target assignment.
#[derive(Debug, Clone)]
pub struct ConsumerGroupDescription {
    pub state: &'static str,
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: &'static str,
    pub members: Vec<(ConsumerMember, Assignment)>,
}

#[derive(Clone, Debug, Default)]
pub struct ConsumerGroup {
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub assignor: Option<Assignor>,
    pub target: BTreeMap<String, Assignment>,
    pub members: BTreeMap<String, ConsumerMember>,
    /// Partition counts of the subscribed topics the target was computed from.
    pub subscribed_partitions: BTreeMap<String, i32>,
    /// Every partition held (assigned or pending revocation), and by whom.
    owners: BTreeMap<(String, i32), String>,
    /// What changed since the last [`ConsumerGroup::take_records`] (see `persist`).
    changes: changes::Changes,
    /// When the current target assignment was computed (or replayed).
    target_since: Option<Instant>,
    /// How long members took from a new target assignment to reaching it (epoch at the
    /// assignment epoch, nothing left to revoke or wait for), since the coordinator last
    /// took them for its metrics. At most `RECONCILED_KEPT`.
    pub reconciled: Vec<Duration>,
    /// When the members' patterns were last resolved again together (`None`: never since
    /// the group was created or replayed).
    regexes_refreshed_at: Option<Instant>,
}

/// Reconciliation times kept until the coordinator takes them (it does after every
/// heartbeat; the bound only matters for a group driven without one, as in tests).
const RECONCILED_KEPT: usize = 1024;

fn partitions_of(assignment: &Assignment) -> impl Iterator<Item = (String, i32)> + '_ {
    assignment
        .iter()
        .flat_map(|(topic, set)| set.iter().map(move |p| (topic.clone(), *p)))
}

fn minus(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (topic, p) in partitions_of(a) {
        if !b.get(&topic).is_some_and(|set| set.contains(&p)) {
            out.entry(topic).or_default().insert(p);
        }
    }
    out
}

fn intersects(a: &Assignment, b: &Assignment) -> bool {
    a.iter()
        .any(|(topic, set)| b.get(topic).is_some_and(|other| !set.is_disjoint(other)))
}

fn invalid(message: &str) -> HeartbeatAnswer {
    HeartbeatAnswer::error(group_codes::INVALID_REQUEST, message)
}

impl ConsumerGroup {
    /// Kafka's consumer group states: `Empty`, `Assigning` (the target is behind the group
    /// epoch), `Reconciling` (a member is not yet at the target), `Stable`.
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.assignment_epoch < self.group_epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .filter(|m| m.member_epoch != STATIC_LEAVE_EPOCH)
            .any(|m| m.member_epoch != self.assignment_epoch || m.state != MemberState::Stable)
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// Who holds a partition now (assigned or pending revocation).
    pub fn owner_of(&self, topic: &str, partition: i32) -> Option<&str> {
        self.owners
            .get(&(topic.to_string(), partition))
            .map(String::as_str)
    }

    /// `OffsetCommit` / `OffsetFetch` admission of a member by its epoch. The member's
    /// previous epoch is admitted too: a heartbeat answer that moved it on is sent only once
    /// the change is durable, and a commit sent meanwhile carries the epoch before. A member's
    /// epoch moves on only after it acknowledged its revocations, so such a commit is for
    /// partitions it still owns; only a client that commits a partition after releasing it
    /// could slip through. Kafka's KIP-1251 checks this per partition, which we do not yet;
    /// Kafka 4.1 is strict here.
    pub fn check_member_epoch(&self, member_id: &str, member_epoch: i32) -> Result<(), i16> {
        if member_epoch < 0 && member_id.is_empty() {
            // An admin or simple client: allowed only without members.
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(group_codes::UNKNOWN_MEMBER_ID)
            };
        }
        let member = self
            .members
            .get(member_id)
            .ok_or(group_codes::UNKNOWN_MEMBER_ID)?;
        if member.classic.is_some() {
            // A classic member commits with its generation: Kafka's classic rule.
            return if member_epoch == member.member_epoch {
                Ok(())
            } else {
                Err(group_codes::ILLEGAL_GENERATION)
            };
        }
        match member_epoch.cmp(&member.member_epoch) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Greater => Err(FENCED_MEMBER_EPOCH),
            std::cmp::Ordering::Less
                if member_epoch == member.previous_epoch && member_epoch > 0 =>
            {
                Ok(())
            }
            std::cmp::Ordering::Less => Err(consumer_codes::STALE_MEMBER_EPOCH),
        }
    }

    /// The per-partition half of the commit rule, after [`Self::check_member_epoch`]
    /// admitted the request: a commit at the member's previous epoch (its answer moving it on
    /// may still be on the way) counts only for partitions it still holds, assigned or
    /// pending revocation. A partition it released at that epoch change may already be
    /// another member's, whose offsets a late commit must not overwrite (KIP-1251's rule,
    /// with holding now standing for the per-partition assignment epoch it records).
    pub fn commit_admits_partition(
        &self,
        member_id: &str,
        member_epoch: i32,
        topic: &str,
        partition: i32,
    ) -> bool {
        let Some(member) = self.members.get(member_id) else {
            return true; // no member named: the group-level check decided
        };
        if member_epoch == member.member_epoch {
            return true;
        }
        let holds = |assignment: &Assignment| {
            assignment
                .get(topic)
                .is_some_and(|partitions| partitions.contains(&partition))
        };
        holds(&member.assigned) || holds(&member.pending_revocation)
    }

    /// `ConsumerGroupHeartbeat`. `version` is the request's; `partitions` gives a topic's
    /// partition count (`None`: no such topic); `new_member_id` a fresh id for a v0 join.
    pub fn heartbeat(
        &mut self,
        request: HeartbeatRequest,
        version: i16,
        topics: &dyn TopicCatalog,
        new_member_id: impl FnOnce() -> String,
        rules: &ConsumerRules,
        now: Instant,
    ) -> HeartbeatAnswer {
        let asked_id = request.member_id.clone();
        let before = self.members.get(&asked_id).map(record_values);
        let mut answer =
            self.heartbeat_checked(request, version, topics, new_member_id, rules, now);
        let member_id = if answer.member_id.is_empty() {
            asked_id
        } else {
            answer.member_id.clone()
        };
        self.changes.note_member(
            &member_id,
            before,
            self.members.get(&member_id).map(record_values),
        );
        answer.heartbeat_interval_ms =
            i32::try_from(rules.heartbeat_interval.as_millis()).unwrap_or(i32::MAX);
        self.assert_consistent();
        answer
    }

    fn heartbeat_checked(
        &mut self,
        mut request: HeartbeatRequest,
        version: i16,
        topics: &dyn TopicCatalog,
        new_member_id: impl FnOnce() -> String,
        rules: &ConsumerRules,
        now: Instant,
    ) -> HeartbeatAnswer {
        if let Err(answer) = validate(&request, version) {
            return answer;
        }
        if request.member_epoch == LEAVE_EPOCH || request.member_epoch == STATIC_LEAVE_EPOCH {
            return self.leave(&request);
        }
        if request.member_id.is_empty() {
            request.member_id = new_member_id();
        }
        let joining = request.member_epoch == 0;
        let full_request = request.rebalance_timeout_ms != -1
            && (request.subscribed_topics.is_some() || request.subscribed_regex.is_some())
            && request.owned.is_some();
        let new_regex = match self.changed_regex(&request) {
            Ok(regex) => regex,
            Err(answer) => return answer,
        };
        if let Err(message) = self.check_subscription_totals(&request) {
            return invalid(&message);
        }
        // A join that also subscribes to new topics is one change of the group: one bump.
        let epoch_before = self.group_epoch;
        if joining {
            if let Err(answer) = self.admit_join(&request, rules, now) {
                return answer;
            }
        } else if let Err(code) = self.check_heartbeat_epoch(&request) {
            return HeartbeatAnswer::error(code, "member epoch or member id is not current");
        }
        let before = self.members[&request.member_id].assigned.clone();
        // A new pattern is resolved at once, and the stale ones with it (Kafka refreshes
        // every pattern of the group when a new one comes).
        let new_pattern = matches!(new_regex, PatternChange::New(_));
        self.update_member(&request, new_regex, topics, rules, now);
        if new_pattern {
            self.regexes_refreshed_at = None;
        }
        self.refresh_regexes(topics, now);
        self.refresh_subscribed_partitions(topics);
        self.group_epoch = self.group_epoch.min(epoch_before + 1);
        if self.assignment_epoch < self.group_epoch {
            self.compute_target();
            self.target_since = Some(now);
        }
        self.reconcile(&request.member_id, request.owned.as_ref(), now);
        let member = &self.members[&request.member_id];
        let changed = member.assigned != before;
        HeartbeatAnswer {
            error_code: codes::NONE,
            error_message: None,
            member_id: member.member_id.clone(),
            member_epoch: member.member_epoch,
            heartbeat_interval_ms: 0,
            assignment: (joining || full_request || changed).then(|| member.assigned.clone()),
        }
    }

    /// A member joining (epoch 0): new, rejoining, or replacing a static member that left.
    fn admit_join(
        &mut self,
        request: &HeartbeatRequest,
        rules: &ConsumerRules,
        now: Instant,
    ) -> Result<(), HeartbeatAnswer> {
        if let Some(instance_id) = &request.instance_id {
            let holder = self
                .members
                .values()
                .find(|m| m.instance_id.as_ref() == Some(instance_id))
                .map(|m| (m.member_id.clone(), m.member_epoch));
            if let Some((holder, epoch)) = holder {
                if holder != request.member_id {
                    if epoch != STATIC_LEAVE_EPOCH {
                        return Err(HeartbeatAnswer::error(
                            UNRELEASED_INSTANCE_ID,
                            "the static member holding this instance id has not left",
                        ));
                    }
                    // Its replacement takes over the partitions it held, from epoch 0.
                    let mut old = self.members.remove(&holder).expect("found");
                    self.changes.removed(&holder);
                    self.target
                        .remove(&holder)
                        .map(|t| self.target.insert(request.member_id.clone(), t));
                    self.changes.target_moved(&request.member_id);
                    for (topic, p) in partitions_of(&old.pending_revocation) {
                        self.owners.remove(&(topic, p));
                    }
                    for (topic, p) in partitions_of(&old.assigned) {
                        self.owners.insert((topic, p), request.member_id.clone());
                    }
                    old.member_id.clone_from(&request.member_id);
                    old.member_epoch = 0;
                    old.previous_epoch = 0;
                    old.pending_revocation.clear();
                    old.revocation_deadline = None;
                    old.state = MemberState::Stable;
                    self.members.insert(request.member_id.clone(), old);
                    return Ok(());
                }
            }
        }
        if let Some(member) = self.members.get_mut(&request.member_id) {
            // A member rejoining with epoch 0 owns nothing any more (it was fenced or
            // lost its state): what it held is free again.
            let held: Vec<(String, i32)> = partitions_of(&member.assigned)
                .chain(partitions_of(&member.pending_revocation))
                .collect();
            member.assigned.clear();
            member.pending_revocation.clear();
            member.revocation_deadline = None;
            member.member_epoch = 0;
            member.previous_epoch = 0;
            member.state = MemberState::Stable;
            for key in held {
                self.owners.remove(&key);
            }
            return Ok(());
        }
        let max_size = rules.max_size.min(GROUP_SIZE_MAX);
        if self.members.len() >= max_size {
            return Err(HeartbeatAnswer::error(
                group_codes::GROUP_MAX_SIZE_REACHED,
                &format!(
                    "The consumer group has reached its maximum capacity of {max_size} members."
                ),
            ));
        }
        let mut member = ConsumerMember::new(&request.member_id, now + rules.session_timeout);
        member.instance_id.clone_from(&request.instance_id);
        member.client_id.clone_from(&request.client_id);
        member.client_host.clone_from(&request.client_host);
        self.members.insert(request.member_id.clone(), member);
        self.group_epoch += 1;
        Ok(())
    }

    /// Kafka's `throwIfMemberEpochIsInvalid`: a member may lag one epoch only when it shows
    /// it owns exactly what it was assigned (the answer that moved it on was lost).
    fn check_heartbeat_epoch(&self, request: &HeartbeatRequest) -> Result<(), i16> {
        let member = self
            .members
            .get(&request.member_id)
            .ok_or(group_codes::UNKNOWN_MEMBER_ID)?;
        if member.member_epoch == STATIC_LEAVE_EPOCH {
            return Err(group_codes::UNKNOWN_MEMBER_ID);
        }
        if request.instance_id.is_some() && request.instance_id != member.instance_id {
            return Err(group_codes::FENCED_INSTANCE_ID);
        }
        let epoch = request.member_epoch;
        if epoch > member.member_epoch {
            return Err(FENCED_MEMBER_EPOCH);
        }
        if epoch < member.member_epoch
            && (epoch != member.previous_epoch || request.owned.as_ref() != Some(&member.assigned))
        {
            return Err(FENCED_MEMBER_EPOCH);
        }
        Ok(())
    }

    fn update_member(
        &mut self,
        request: &HeartbeatRequest,
        new_regex: PatternChange,
        topics: &dyn TopicCatalog,
        rules: &ConsumerRules,
        now: Instant,
    ) {
        let member = self.members.get_mut(&request.member_id).expect("admitted");
        member.session_deadline = now + rules.session_timeout;
        member.visibility = Some(request.visibility.clone());
        if request.rebalance_timeout_ms >= 0 {
            member.rebalance_timeout = crate::groups::millis(request.rebalance_timeout_ms);
        }
        if request.rack_id.is_some() {
            member.rack_id.clone_from(&request.rack_id);
        }
        if !request.client_id.is_empty() {
            member.client_id.clone_from(&request.client_id);
            member.client_host.clone_from(&request.client_host);
        }
        let mut bump = false;
        if let Some(topics) = &request.subscribed_topics {
            let topics: BTreeSet<String> = topics.iter().cloned().collect();
            if topics != member.subscribed_topics {
                member.subscribed_topics = topics;
                bump = true;
            }
        }
        let resolved = match new_regex {
            PatternChange::Unchanged => None,
            PatternChange::Dropped => Some(BTreeSet::new()),
            // A new pattern is resolved at once, with this member's rights.
            PatternChange::New(regex) => {
                Some(topic_regex::resolve(&regex, topics, &request.visibility))
            }
        };
        if let Some(resolved) = resolved {
            member.subscribed_regex = request.subscribed_regex.clone().filter(|r| !r.is_empty());
            member.regex_version = Some(topics.version());
            if *member.regex_topics != resolved {
                member.regex_topics = Arc::new(resolved);
                bump = true;
            }
        }
        if let Some(assignor) = &request.server_assignor {
            if member.server_assignor.as_ref() != Some(assignor) {
                member.server_assignor = Some(assignor.clone());
                bump = true;
            }
        }
        if bump {
            self.group_epoch += 1;
        }
    }

    /// A subscribed topic created, deleted or grown bumps the group epoch.
    fn refresh_subscribed_partitions(&mut self, catalog: &dyn TopicCatalog) {
        let topics: BTreeSet<&String> = self
            .members
            .values()
            .flat_map(ConsumerMember::topics)
            .collect();
        let current: BTreeMap<String, i32> = topics
            .into_iter()
            .filter_map(|t| catalog.partitions(t).map(|count| (t.clone(), count)))
            .collect();
        if current != self.subscribed_partitions {
            self.subscribed_partitions = current;
            self.group_epoch += 1;
        }
    }

    /// The assignor most members ask for, else the first configured (`uniform`).
    fn choose_assignor(&self) -> Assignor {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for name in self
            .members
            .values()
            .filter_map(|m| m.server_assignor.as_deref())
        {
            *votes.entry(name).or_default() += 1;
        }
        votes
            .into_iter()
            .max_by_key(|(_, count)| *count)
            .and_then(|(name, _)| Assignor::from_name(name))
            .unwrap_or(Assignor::ALL[0])
    }

    fn compute_target(&mut self) {
        let assignor = self.choose_assignor();
        let specs: BTreeMap<String, MemberSpec> = self
            .members
            .iter()
            .map(|(id, m)| {
                let spec = MemberSpec {
                    topics: m.topics().cloned().collect(),
                    previous: self.target.get(id).cloned().unwrap_or_default(),
                };
                (id.clone(), spec)
            })
            .collect();
        let target = assignor.assign(&specs, &self.subscribed_partitions);
        self.changes.note_target(&self.target, &target);
        self.target = target;
        self.assignor = Some(assignor);
        self.assignment_epoch = self.group_epoch;
    }

    /// Moves one member as far towards its target as the other members allow.
    fn reconcile(&mut self, member_id: &str, owned: Option<&Assignment>, now: Instant) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let assignment_epoch = self.assignment_epoch;
        let member = self
            .members
            .get_mut(member_id)
            .expect("reconciled member exists");
        if member.state == MemberState::UnrevokedPartitions {
            let released =
                owned.is_some_and(|owned| !intersects(owned, &member.pending_revocation));
            if !released {
                return;
            }
            for key in partitions_of(&member.pending_revocation) {
                self.owners.remove(&key);
            }
            member.pending_revocation.clear();
            member.revocation_deadline = None;
        } else if member.state == MemberState::Stable && member.member_epoch == assignment_epoch {
            return;
        }
        let revoking = minus(&member.assigned, &target);
        if !revoking.is_empty() {
            member.assigned = minus(&member.assigned, &revoking);
            member.pending_revocation = revoking;
            member.state = MemberState::UnrevokedPartitions;
            member.revocation_deadline = Some(now + member.rebalance_timeout);
            return;
        }
        let mut unreleased = false;
        for (topic, p) in partitions_of(&minus(&target, &member.assigned)) {
            let key = (topic, p);
            match self.owners.get(&key) {
                Some(holder) if holder != member_id => unreleased = true,
                _ => {
                    self.owners.insert(key.clone(), member_id.to_string());
                    member.assigned.entry(key.0).or_default().insert(key.1);
                }
            }
        }
        if member.member_epoch != assignment_epoch {
            member.previous_epoch = member.member_epoch;
            member.member_epoch = assignment_epoch;
        }
        member.state = if unreleased {
            MemberState::UnreleasedPartitions
        } else {
            MemberState::Stable
        };
        if member.state == MemberState::Stable && self.reconciled.len() < RECONCILED_KEPT {
            let since = self.target_since.unwrap_or(now);
            self.reconciled.push(now.saturating_duration_since(since));
        }
    }

    /// `member_epoch` -1 (leave) or -2 (a static member leaving for now).
    fn leave(&mut self, request: &HeartbeatRequest) -> HeartbeatAnswer {
        let member_id = match (&request.instance_id, request.member_epoch) {
            (Some(instance_id), STATIC_LEAVE_EPOCH) => {
                match self
                    .members
                    .values()
                    .find(|m| m.instance_id.as_ref() == Some(instance_id))
                {
                    Some(m) if m.member_id == request.member_id => m.member_id.clone(),
                    Some(_) => {
                        return HeartbeatAnswer::error(
                            group_codes::FENCED_INSTANCE_ID,
                            "instance id held by another member",
                        )
                    }
                    None => {
                        return HeartbeatAnswer::error(
                            group_codes::UNKNOWN_MEMBER_ID,
                            "unknown member",
                        )
                    }
                }
            }
            _ => request.member_id.clone(),
        };
        let Some(member) = self.members.get_mut(&member_id) else {
            return HeartbeatAnswer::error(group_codes::UNKNOWN_MEMBER_ID, "unknown member");
        };
        if request.member_epoch == STATIC_LEAVE_EPOCH {
            // Kept, with its assignment, for a replacement with the same instance id until
            // its session expires.
            member.member_epoch = STATIC_LEAVE_EPOCH;
            for key in partitions_of(&member.pending_revocation) {
                self.owners.remove(&key);
            }
            member.pending_revocation.clear();
            member.revocation_deadline = None;
            member.state = MemberState::Stable;
        } else {
            self.remove_member(&member_id);
        }
        HeartbeatAnswer {
            member_id,
            member_epoch: request.member_epoch,
            ..HeartbeatAnswer::default()
        }
    }

    /// Frees what the member held and bumps the group epoch.
    pub fn remove_member(&mut self, member_id: &str) {
        let Some(member) = self.members.remove(member_id) else {
            return;
        };
        for key in partitions_of(&member.assigned).chain(partitions_of(&member.pending_revocation))
        {
            self.owners.remove(&key);
        }
        self.target.remove(member_id);
        self.changes.removed(member_id);
        self.group_epoch += 1;
    }

    /// Removes members whose session expired or that did not revoke in time; their ids.
    pub fn tick(&mut self, now: Instant) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                m.session_deadline <= now || m.revocation_deadline.is_some_and(|d| d <= now)
            })
            .map(|m| m.member_id.clone())
            .collect();
        for member_id in &expired {
            self.remove_member(member_id);
        }
        self.assert_consistent();
        expired
    }

    /// Every held partition has exactly one holder, and `owners` says who.
    fn assert_consistent(&self) {
        let mut held = 0;
        for member in self.members.values() {
            for key in
                partitions_of(&member.assigned).chain(partitions_of(&member.pending_revocation))
            {
                held += 1;
                assert_eq!(
                    self.owners.get(&key).map(String::as_str),
                    Some(member.member_id.as_str()),
                    "partition {key:?} held by {} but owned by another",
                    member.member_id
                );
            }
        }
        assert_eq!(held, self.owners.len(), "an owner without a holder");
    }
}

/// Kafka's request validation (`throwIfConsumerGroupHeartbeatRequestIsInvalid`).
pub(super) fn validate(request: &HeartbeatRequest, version: i16) -> Result<(), HeartbeatAnswer> {
    if version >= 1 && request.member_id.is_empty() {
        return Err(invalid("MemberId can't be empty."));
    }
    if request.member_epoch == 0 {
        if request.rebalance_timeout_ms == -1 {
            return Err(invalid(
                "RebalanceTimeoutMs must be provided in first request.",
            ));
        }
        if request.owned.as_ref().is_none_or(|owned| !owned.is_empty()) {
            return Err(invalid("TopicPartitions must be empty when (re-)joining."));
        }
        if request.subscribed_topics.is_none() && request.subscribed_regex.is_none() {
            return Err(invalid(
                "SubscribedTopicNames or SubscribedTopicRegex must be set in first request.",
            ));
        }
    } else if request.member_epoch == STATIC_LEAVE_EPOCH {
        if request.instance_id.is_none() {
            return Err(invalid("InstanceId can't be null."));
        }
    } else if request.member_epoch < STATIC_LEAVE_EPOCH {
        return Err(invalid("MemberEpoch is invalid."));
    } else if version == 0 && request.member_id.is_empty() {
        return Err(invalid("MemberId can't be empty."));
    }
    check_bounds(request)?;
    if let Some(name) = &request.server_assignor {
        if Assignor::from_name(name).is_none() {
            return Err(HeartbeatAnswer::error(
                UNSUPPORTED_ASSIGNOR,
                &format!(
                    "ServerAssignor {name} is not supported. Supported assignors: uniform, range."
                ),
            ));
        }
    }
    Ok(())
}

/// What a heartbeat does to its member's `SubscribedTopicRegex`.
enum PatternChange {
    /// Not sent, or the same as before.
    Unchanged,
    /// "": no pattern any more.
    Dropped,
    /// A new valid pattern (or any pattern on a join).
    New(regex::Regex),
}

/// Bounds on what one heartbeat may carry (network input): names subscribed, their length,
/// and partitions said to be owned. `INVALID_REQUEST`, as Kafka answers a malformed one.
fn check_bounds(request: &HeartbeatRequest) -> Result<(), HeartbeatAnswer> {
    if let Some(names) = &request.subscribed_topics {
        if names.len() > SUBSCRIBED_TOPICS_PER_MEMBER_MAX {
            return Err(invalid(&format!(
                "SubscribedTopicNames has {} topics; at most {SUBSCRIBED_TOPICS_PER_MEMBER_MAX} are accepted.",
                names.len()
            )));
        }
        if names.iter().any(|n| n.len() > TOPIC_NAME_BYTES_MAX) {
            return Err(invalid(&format!(
                "SubscribedTopicNames has a name longer than {TOPIC_NAME_BYTES_MAX} bytes."
            )));
        }
    }
    let owned = request
        .owned
        .as_ref()
        .map_or(0, |o| o.values().map(BTreeSet::len).sum::<usize>());
    if owned > OWNED_PARTITIONS_PER_MEMBER_MAX {
        return Err(invalid(&format!(
            "TopicPartitions has {owned} partitions; at most {OWNED_PARTITIONS_PER_MEMBER_MAX} are accepted."
        )));
    }
    Ok(())
}

impl ConsumerGroup {
    /// How this request changes the member's pattern (a join sets it anew). An invalid one
    /// is `INVALID_REGULAR_EXPRESSION`, before the member is admitted.
    fn changed_regex(&self, request: &HeartbeatRequest) -> Result<PatternChange, HeartbeatAnswer> {
        let Some(pattern) = &request.subscribed_regex else {
            return Ok(PatternChange::Unchanged);
        };
        let current = self
            .members
            .get(&request.member_id)
            .and_then(|m| m.subscribed_regex.as_deref());
        let joining = request.member_epoch == 0;
        if !joining && current.unwrap_or("") == pattern.as_str() {
            return Ok(PatternChange::Unchanged);
        }
        if pattern.is_empty() {
            return Ok(PatternChange::Dropped);
        }
        match topic_regex::compile(pattern) {
            Ok(regex) => Ok(PatternChange::New(regex)),
            Err(message) => Err(HeartbeatAnswer::error(
                consumer_codes::INVALID_REGULAR_EXPRESSION,
                &message,
            )),
        }
    }

    /// The group-wide bound on names subscribed: this request's names in place of the
    /// member's.
    fn check_subscription_totals(&self, request: &HeartbeatRequest) -> Result<(), String> {
        let Some(names) = &request.subscribed_topics else {
            return Ok(());
        };
        let others: usize = self
            .members
            .values()
            .filter(|m| m.member_id != request.member_id)
            .map(|m| m.subscribed_topics.len())
            .sum();
        if others + names.len() > SUBSCRIBED_TOPICS_PER_GROUP_MAX {
            return Err(format!(
                "The group's members subscribe to more than {SUBSCRIBED_TOPICS_PER_GROUP_MAX} topic names in all."
            ));
        }
        Ok(())
    }

    /// Resolves the members' patterns again when the topics changed since they were last
    /// resolved, at most once per [`topic_regex::REGEX_REFRESH_INTERVAL`]: all of them
    /// together, so a topic created later is one bump of the group epoch. A member replayed
    /// and not heard from since keeps its resolution (its principal's rights are not known
    /// here).
    fn refresh_regexes(&mut self, catalog: &dyn TopicCatalog, now: Instant) {
        let version = catalog.version();
        let stale = |m: &ConsumerMember| {
            m.subscribed_regex.is_some()
                && m.visibility.is_some()
                && m.regex_version != Some(version)
        };
        if self.regexes_refreshed_at.is_some_and(|at| {
            now.saturating_duration_since(at) < topic_regex::REGEX_REFRESH_INTERVAL
        }) {
            return;
        }
        if !self.members.values().any(stale) {
            // The new pattern just resolved counts as this refresh.
            if self.regexes_refreshed_at.is_none() {
                self.regexes_refreshed_at = Some(now);
            }
            return;
        }
        let mut resolver = topic_regex::Resolver::default();
        let mut changed = false;
        for member in self.members.values_mut().filter(|m| stale(m)) {
            let (Some(pattern), Some(visibility)) = (&member.subscribed_regex, &member.visibility)
            else {
                continue;
            };
            member.regex_version = Some(version);
            if let Some(topics) = resolver.resolve(pattern, catalog, visibility) {
                if topics != member.regex_topics {
                    member.regex_topics = topics;
                    self.changes.metadata.insert(member.member_id.clone());
                    changed = true;
                }
            }
        }
        self.regexes_refreshed_at = Some(now);
        if changed {
            self.group_epoch += 1;
        }
    }
}

/// A member as its two records hold it.
fn record_values(member: &ConsumerMember) -> changes::MemberValues {
    let metadata = crate::groups::records::MemberMetadataValue {
        instance_id: member.instance_id.clone(),
        rack_id: member.rack_id.clone(),
        client_id: member.client_id.clone(),
        client_host: member.client_host.clone(),
        subscribed_topics: member.subscribed_topics.iter().cloned().collect(),
        subscribed_regex: member.subscribed_regex.clone(),
        regex_topics: member.regex_topics.iter().cloned().collect(),
        rebalance_timeout_ms: i32::try_from(member.rebalance_timeout.as_millis())
            .unwrap_or(i32::MAX),
        server_assignor: member.server_assignor.clone(),
        classic: member.classic.clone(),
    };
    let current = crate::groups::records::CurrentAssignmentValue {
        member_epoch: member.member_epoch,
        previous_epoch: member.previous_epoch,
        state: match member.state {
            MemberState::Stable => 0,
            MemberState::UnrevokedPartitions => 1,
            MemberState::UnreleasedPartitions => 2,
        },
        assigned: member.assigned.clone(),
        pending_revocation: member.pending_revocation.clone(),
    };
    (metadata, current)
}

mod changes;
pub mod classic_members;
mod persist;
mod topic_regex;

#[cfg(test)]
mod tests;

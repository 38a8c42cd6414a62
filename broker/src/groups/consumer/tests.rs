//! Guards the consumer group's reconciliation against a model of its clients: members that
//! join, heartbeat, leave and crash in a seeded random order, each client owning exactly what
//! the last answer assigned it. Safety: no partition is owned by two live clients at once.
//! Liveness: once the churn stops, a few heartbeat rounds leave every partition owned and
//! the group `Stable`. Persistence: every change is written as records, through the offsets
//! log's encoding, to a replica that must equal the group after each step; a restart rebuilds
//! the group from the whole log or a checkpoint, and its clients carry on without a rebalance.
//! Plus the request rules and fencing of KIP-848 one by one.

use super::*;
use crate::groups::records::{
    decode_batch, encode_batch, CurrentAssignmentValue, MemberMetadataValue, OffsetsRecord,
};
use proptest::prelude::*;

const TOPIC: &str = "t";
const PARTITIONS: i32 = 12;

fn rules() -> ConsumerRules {
    ConsumerRules {
        session_timeout: Duration::from_secs(45),
        heartbeat_interval: Duration::from_secs(5),
        max_size: GROUP_SIZE_MAX,
    }
}

fn counts(topic: &str) -> Option<i32> {
    match topic {
        TOPIC => Some(PARTITIONS),
        "u" => Some(4),
        _ => None,
    }
}

fn join(member_id: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        member_id: member_id.into(),
        member_epoch: 0,
        rebalance_timeout_ms: 300_000,
        subscribed_topics: Some(vec![TOPIC.into()]),
        owned: Some(Assignment::new()),
        ..HeartbeatRequest::default()
    }
}

/// A client of the model: what it owns and the epoch it last got.
#[derive(Clone, Debug)]
struct Client {
    member_id: String,
    epoch: i32,
    owned: Assignment,
    instance_id: Option<String>,
}

struct Sim {
    group: ConsumerGroup,
    clients: BTreeMap<usize, Client>,
    now: Instant,
    /// Every record the group has written, through the offsets log's encoding.
    log: Vec<OffsetsRecord>,
    /// A copy kept only by replaying `log` as it grows.
    replica: ConsumerGroup,
}

/// The state persistence must carry over: everything but the timers.
type Persisted = (
    i32,
    i32,
    Option<&'static str>,
    BTreeMap<String, i32>,
    BTreeMap<String, Assignment>,
    BTreeMap<String, (MemberMetadataValue, CurrentAssignmentValue)>,
    BTreeMap<(String, i32), String>,
);

fn persisted(group: &ConsumerGroup) -> Persisted {
    (
        group.group_epoch,
        group.assignment_epoch,
        group.assignor.map(Assignor::name),
        group.subscribed_partitions.clone(),
        group
            .target
            .iter()
            .filter(|(_, a)| !a.is_empty())
            .map(|(id, a)| (id.clone(), a.clone()))
            .collect(),
        group
            .members
            .iter()
            .map(|(id, m)| (id.clone(), super::record_values(m)))
            .collect(),
        group.owners.clone(),
    )
}

/// `records` through one stored batch and back, applied to `group`.
fn replay_into(group: &mut ConsumerGroup, records: &[OffsetsRecord], now: Instant) {
    if records.is_empty() {
        return;
    }
    let (decoded, skipped) = decode_batch(&encode_batch(records, 0));
    assert_eq!(skipped, 0);
    assert_eq!(decoded, records);
    for record in decoded {
        let OffsetsRecord::Consumer(record) = record else {
            panic!("only consumer records here");
        };
        group.replay(record, &rules(), now);
    }
    group.assert_consistent();
}

impl Sim {
    fn new() -> Self {
        Self {
            group: ConsumerGroup::default(),
            clients: BTreeMap::new(),
            now: Instant::now(),
            log: Vec::new(),
            replica: ConsumerGroup::default(),
        }
    }

    /// Writes what changed; the replica replaying it must equal the group.
    fn write(&mut self) {
        let records: Vec<OffsetsRecord> = self
            .group
            .take_records("g")
            .into_iter()
            .map(OffsetsRecord::Consumer)
            .collect();
        replay_into(&mut self.replica, &records, self.now);
        self.log.extend(records);
        assert_eq!(persisted(&self.replica), persisted(&self.group));
    }

    /// The broker restarts: the group is rebuilt from the whole log or, alternately, from a
    /// checkpoint (`all_records`). Clients carry on heartbeating with what they had.
    fn restart(&mut self, from_checkpoint: bool) {
        self.write();
        let mut restarted = ConsumerGroup::default();
        if from_checkpoint {
            let records: Vec<OffsetsRecord> = self
                .group
                .all_records("g")
                .into_iter()
                .map(OffsetsRecord::Consumer)
                .collect();
            replay_into(&mut restarted, &records, self.now);
        } else {
            let log = self.log.clone();
            replay_into(&mut restarted, &log, self.now);
        }
        assert_eq!(persisted(&restarted), persisted(&self.group));
        assert!(
            restarted.take_records("g").is_empty(),
            "replay is not a change"
        );
        let epoch = self.group.group_epoch;
        self.group = restarted;
        // A heartbeat of a member that was stable is no rebalance.
        if let Some((&index, _)) = self.clients.iter().next() {
            self.heartbeat(index);
            assert_eq!(
                self.group.group_epoch, epoch,
                "no rebalance after a restart"
            );
        }
    }

    fn send(&mut self, request: HeartbeatRequest) -> HeartbeatAnswer {
        self.group.heartbeat(
            request,
            1,
            &counts,
            || unreachable!("v1 ids come from clients"),
            &rules(),
            self.now,
        )
    }

    fn send_and_write(&mut self, request: HeartbeatRequest) -> HeartbeatAnswer {
        let answer = self.send(request);
        self.write();
        answer
    }

    fn join(&mut self, index: usize) {
        if self.clients.contains_key(&index) {
            return;
        }
        let member_id = format!("member-{index}");
        let answer = self.send_and_write(join(&member_id));
        assert_eq!(answer.error_code, 0, "{answer:?}");
        let client = Client {
            member_id,
            epoch: answer.member_epoch,
            owned: answer
                .assignment
                .expect("a join is answered with its assignment"),
            instance_id: None,
        };
        self.clients.insert(index, client);
        self.check_disjoint();
    }

    fn heartbeat(&mut self, index: usize) {
        let Some(client) = self.clients.get(&index).cloned() else {
            return;
        };
        let answer = self.send_and_write(HeartbeatRequest {
            member_id: client.member_id.clone(),
            member_epoch: client.epoch,
            rebalance_timeout_ms: -1,
            owned: Some(client.owned.clone()),
            instance_id: client.instance_id.clone(),
            ..HeartbeatRequest::default()
        });
        assert_eq!(answer.error_code, 0, "{answer:?}");
        let client = self.clients.get_mut(&index).expect("present");
        client.epoch = answer.member_epoch;
        if let Some(assignment) = answer.assignment {
            client.owned = assignment;
        }
        self.check_disjoint();
    }

    fn leave(&mut self, index: usize) {
        let Some(client) = self.clients.remove(&index) else {
            return;
        };
        let answer = self.send_and_write(HeartbeatRequest {
            member_id: client.member_id,
            member_epoch: LEAVE_EPOCH,
            ..HeartbeatRequest::default()
        });
        assert_eq!((answer.error_code, answer.member_epoch), (0, LEAVE_EPOCH));
    }

    /// The client dies silently; its session runs out (the model's clock stands still, so
    /// only its deadline is moved).
    fn crash(&mut self, index: usize) {
        if let Some(client) = self.clients.remove(&index) {
            let member = self
                .group
                .members
                .get_mut(&client.member_id)
                .expect("member");
            member.session_deadline = self.now;
            let expired = self.group.tick(self.now);
            assert_eq!(expired, vec![client.member_id]);
            self.write();
        }
    }

    fn check_disjoint(&self) {
        let mut seen = BTreeSet::new();
        for client in self.clients.values() {
            for (topic, set) in &client.owned {
                for p in set {
                    assert!(
                        seen.insert((topic.clone(), *p)),
                        "{topic}-{p} owned by two clients"
                    );
                }
            }
        }
    }

    /// Heartbeats every client until nothing changes; then all is owned and stable.
    fn settle(&mut self) {
        for _ in 0..10 {
            let indexes: Vec<usize> = self.clients.keys().copied().collect();
            for index in indexes {
                self.heartbeat(index);
            }
        }
        if self.clients.is_empty() {
            return;
        }
        let owned: usize = self
            .clients
            .values()
            .map(|c| c.owned.values().map(BTreeSet::len).sum::<usize>())
            .sum();
        assert_eq!(
            owned, PARTITIONS as usize,
            "every partition owned once settled"
        );
        assert_eq!(self.group.state_name(), "Stable");
        let loads: Vec<usize> = self
            .clients
            .values()
            .map(|c| c.owned.values().map(BTreeSet::len).sum())
            .collect();
        assert!(loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1);
        for client in self.clients.values() {
            assert_eq!(client.epoch, self.group.assignment_epoch);
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Join(usize),
    Heartbeat(usize),
    Leave(usize),
    Crash(usize),
    Restart { from_checkpoint: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0_usize..6).prop_map(Op::Join),
        4 => (0_usize..6).prop_map(Op::Heartbeat),
        1 => (0_usize..6).prop_map(Op::Leave),
        1 => (0_usize..6).prop_map(Op::Crash),
        1 => any::<bool>().prop_map(|from_checkpoint| Op::Restart { from_checkpoint }),
    ]
}

proptest! {
    #[test]
    fn reconciliation_never_double_assigns_and_converges(ops in prop::collection::vec(op(), 1..120)) {
        let mut sim = Sim::new();
        for op in ops {
            match op {
                Op::Join(i) => sim.join(i),
                Op::Heartbeat(i) => sim.heartbeat(i),
                Op::Leave(i) => sim.leave(i),
                Op::Crash(i) => sim.crash(i),
                Op::Restart { from_checkpoint } => sim.restart(from_checkpoint),
            }
        }
        sim.settle();
    }
}

#[test]
fn reconciliation_time_runs_from_the_new_target_to_the_member_reaching_it() {
    let mut sim = Sim::new();
    sim.join(0);
    assert_eq!(
        sim.group.reconciled,
        vec![Duration::ZERO],
        "a lone join is at once"
    );
    sim.group.reconciled.clear();
    sim.now += Duration::from_secs(1);
    // The second join bumps the epoch: member 1 waits for member 0 to revoke half.
    sim.join(1);
    assert!(
        sim.group.reconciled.is_empty(),
        "member 1 waits for partitions"
    );
    sim.now += Duration::from_secs(2);
    sim.heartbeat(0); // told to revoke
    sim.now += Duration::from_secs(3);
    sim.heartbeat(0); // revoked: at the target, 5 s after it was computed
    sim.heartbeat(1); // its partitions are free now
    assert_eq!(
        sim.group.reconciled,
        vec![Duration::from_secs(5), Duration::from_secs(5)]
    );
}

#[test]
fn a_join_beyond_group_consumer_max_size_is_refused() {
    let mut group = ConsumerGroup::default();
    let rules = ConsumerRules {
        max_size: 2,
        ..rules()
    };
    let now = Instant::now();
    let send = |group: &mut ConsumerGroup, member: &str| {
        group.heartbeat(join(member), 1, &counts, || unreachable!(), &rules, now)
    };
    assert_eq!(send(&mut group, "a").error_code, 0);
    assert_eq!(send(&mut group, "b").error_code, 0);
    let refused = send(&mut group, "c");
    assert_eq!(refused.error_code, group_codes::GROUP_MAX_SIZE_REACHED);
    assert!(!group.members.contains_key("c"));
    // A member already in the group rejoining is no new member.
    assert_eq!(send(&mut group, "a").error_code, 0);
}

#[test]
fn three_members_share_twelve_partitions_after_revocation() {
    let mut sim = Sim::new();
    sim.join(0);
    assert_eq!(sim.clients[&0].owned[TOPIC].len(), 12);
    sim.join(1);
    // The newcomer waits: every partition is still owned by member 0.
    assert!(sim.clients[&1].owned.is_empty());
    sim.heartbeat(0); // member 0 is told to give up half; keeps its epoch meanwhile
    assert_eq!(sim.clients[&0].owned[TOPIC].len(), 6);
    assert_eq!(sim.clients[&0].epoch, 1);
    sim.heartbeat(0); // acknowledges the revocation: moves to the target epoch
    assert_eq!(sim.clients[&0].epoch, 2);
    sim.heartbeat(1);
    assert_eq!(sim.clients[&1].owned[TOPIC].len(), 6);
    sim.join(2);
    sim.settle();
}

#[test]
fn stale_and_future_epochs_are_fenced() {
    let mut sim = Sim::new();
    sim.join(0);
    sim.join(1);
    let member = sim.clients[&0].clone();
    let mut request = HeartbeatRequest {
        member_id: member.member_id.clone(),
        member_epoch: member.epoch + 5,
        rebalance_timeout_ms: -1,
        ..HeartbeatRequest::default()
    };
    assert_eq!(sim.send(request.clone()).error_code, FENCED_MEMBER_EPOCH);
    sim.heartbeat(0);
    sim.heartbeat(0);
    // Epoch moved from 1 to 2; an epoch-1 heartbeat (the previous epoch) passes only when
    // it shows what it owns.
    request.member_epoch = 1;
    assert_eq!(sim.send(request.clone()).error_code, FENCED_MEMBER_EPOCH);
    request.owned = Some(sim.group.members[&member.member_id].assigned.clone());
    assert_eq!(sim.send(request).error_code, 0);
    let unknown = HeartbeatRequest {
        member_id: "nobody".into(),
        member_epoch: 3,
        ..HeartbeatRequest::default()
    };
    assert_eq!(sim.send(unknown).error_code, group_codes::UNKNOWN_MEMBER_ID);
    // Commits: the previous epoch passes (its answer may still be on the way), older not.
    assert_eq!(sim.group.check_member_epoch(&member.member_id, 1), Ok(()));
    assert_eq!(
        sim.group.check_member_epoch(&member.member_id, 0),
        Err(consumer_codes::STALE_MEMBER_EPOCH)
    );
    assert_eq!(
        sim.group.check_member_epoch(&member.member_id, 99),
        Err(FENCED_MEMBER_EPOCH)
    );
    assert_eq!(
        sim.group.check_member_epoch("", -1),
        Err(group_codes::UNKNOWN_MEMBER_ID)
    );
    // ... and at the previous epoch only for partitions the member still holds: one it
    // released at the epoch change may already be another member's.
    let state = &sim.group.members[&member.member_id];
    let (held_topic, held_partitions) = state
        .assigned
        .iter()
        .next()
        .expect("member 0 holds partitions");
    let held_partition = *held_partitions.iter().next().expect("a partition");
    let pending = state.pending_revocation.get(held_topic);
    let other_partition = (0..i32::MAX)
        .find(|p| !held_partitions.contains(p) && !pending.is_some_and(|set| set.contains(p)))
        .expect("a partition member 0 does not hold");
    let other_topic = held_topic;
    let epoch = sim.group.members[&member.member_id].member_epoch;
    for (member_epoch, topic, partition, admitted) in [
        (1, held_topic, held_partition, true),
        (1, other_topic, other_partition, false),
        (epoch, other_topic, other_partition, true), // current epoch: KIP-848's rule alone
    ] {
        assert_eq!(
            sim.group
                .commit_admits_partition(&member.member_id, member_epoch, topic, partition),
            admitted,
            "epoch {member_epoch}, {topic}-{partition}"
        );
    }
}

#[test]
fn join_requests_are_validated() {
    let mut sim = Sim::new();
    let mut request = join("");
    assert_eq!(
        sim.send(request.clone()).error_code,
        group_codes::INVALID_REQUEST,
        "v1 needs an id"
    );
    request.member_id = "m".into();
    request.rebalance_timeout_ms = -1;
    assert_eq!(
        sim.send(request.clone()).error_code,
        group_codes::INVALID_REQUEST
    );
    request.rebalance_timeout_ms = 1000;
    request.subscribed_topics = None;
    assert_eq!(
        sim.send(request.clone()).error_code,
        group_codes::INVALID_REQUEST
    );
    request.subscribed_topics = Some(vec![TOPIC.into()]);
    request.server_assignor = Some("sticky".into());
    assert_eq!(sim.send(request.clone()).error_code, UNSUPPORTED_ASSIGNOR);
    request.server_assignor = Some("range".into());
    request.owned = None;
    assert_eq!(
        sim.send(request.clone()).error_code,
        group_codes::INVALID_REQUEST
    );
    request.owned = Some(Assignment::new());
    // v0: the broker names the member.
    request.member_id = String::new();
    let answer = sim.group.heartbeat(
        request,
        0,
        &counts,
        || "server-made".into(),
        &rules(),
        sim.now,
    );
    assert_eq!(
        (answer.error_code, answer.member_id.as_str()),
        (0, "server-made")
    );
    assert_eq!(sim.group.assignor, Some(Assignor::Range));
}

#[test]
fn static_member_is_replaced_and_keeps_its_partitions() {
    let mut sim = Sim::new();
    let mut request = join("a");
    request.instance_id = Some("instance".into());
    let first = sim.send(request.clone());
    assert_eq!(first.error_code, 0);
    // Another member id with the same instance id while "a" is active.
    request.member_id = "b".into();
    assert_eq!(sim.send(request.clone()).error_code, UNRELEASED_INSTANCE_ID);
    let leave = HeartbeatRequest {
        member_id: "a".into(),
        member_epoch: STATIC_LEAVE_EPOCH,
        instance_id: Some("instance".into()),
        ..HeartbeatRequest::default()
    };
    assert_eq!(sim.send(leave).member_epoch, STATIC_LEAVE_EPOCH);
    let epoch_before = sim.group.group_epoch;
    let replaced = sim.send(request);
    assert_eq!(replaced.error_code, 0);
    assert_eq!(replaced.assignment, first.assignment);
    assert_eq!(
        sim.group.group_epoch, epoch_before,
        "a replacement is no rebalance"
    );
    assert!(!sim.group.members.contains_key("a"));
}

#[test]
fn new_topic_partitions_bump_the_epoch_and_revocation_times_out() {
    let mut sim = Sim::new();
    let mut first = join("first");
    first.rebalance_timeout_ms = 1000;
    let owned = sim.send(first).assignment.expect("assignment");
    let epoch = sim.group.group_epoch;
    let mut request = join("late");
    request.subscribed_topics = Some(vec![TOPIC.into(), "u".into()]);
    sim.send(request);
    assert_eq!(
        sim.group.group_epoch,
        epoch + 1,
        "member and topic u: one change"
    );
    let heartbeat = HeartbeatRequest {
        member_id: "first".into(),
        member_epoch: 1,
        rebalance_timeout_ms: -1,
        owned: Some(owned),
        ..HeartbeatRequest::default()
    };
    // Told to revoke; it never acknowledges (keeps sending what it owned).
    sim.send(heartbeat.clone());
    sim.send(heartbeat);
    assert_eq!(
        sim.group.members["first"].state,
        MemberState::UnrevokedPartitions
    );
    sim.now += Duration::from_millis(500);
    assert!(sim.group.tick(sim.now).is_empty());
    sim.now += Duration::from_millis(600);
    assert_eq!(sim.group.tick(sim.now), vec!["first".to_string()]);
}

/// Network input is bounded: names per member and in the whole group, name length, and the
/// partitions a heartbeat says its member owns.
#[test]
fn subscriptions_and_owned_partitions_are_bounded() {
    let mut group = ConsumerGroup::default();
    let now = Instant::now();
    let mut send = |request: HeartbeatRequest| {
        group.heartbeat(request, 1, &counts, || unreachable!(), &rules(), now)
    };
    let names = |n: usize| Some((0..n).map(|i| format!("t{i}")).collect::<Vec<_>>());
    let answer = send(HeartbeatRequest {
        subscribed_topics: names(SUBSCRIBED_TOPICS_PER_MEMBER_MAX + 1),
        ..join("m")
    });
    assert_eq!(answer.error_code, group_codes::INVALID_REQUEST);
    let answer = send(HeartbeatRequest {
        subscribed_topics: Some(vec!["x".repeat(250)]),
        ..join("m")
    });
    assert_eq!(answer.error_code, group_codes::INVALID_REQUEST);
    let answer = send(HeartbeatRequest {
        subscribed_topics: names(SUBSCRIBED_TOPICS_PER_MEMBER_MAX),
        ..join("m")
    });
    assert_eq!(answer.error_code, 0, "at the bound");
    let lying: Assignment = [(
        "t0".to_string(),
        (0..=i32::try_from(OWNED_PARTITIONS_PER_MEMBER_MAX).expect("fits")).collect(),
    )]
    .into();
    let refused = send(HeartbeatRequest {
        member_id: "m".into(),
        member_epoch: answer.member_epoch,
        rebalance_timeout_ms: -1,
        owned: Some(lying),
        ..HeartbeatRequest::default()
    });
    assert_eq!(refused.error_code, group_codes::INVALID_REQUEST);
    // The group-wide bound: members of 1,000 names each, up to 100,000 names in all.
    let members_at_bound = SUBSCRIBED_TOPICS_PER_GROUP_MAX / SUBSCRIBED_TOPICS_PER_MEMBER_MAX;
    for i in 1..members_at_bound {
        let answer = send(HeartbeatRequest {
            subscribed_topics: names(SUBSCRIBED_TOPICS_PER_MEMBER_MAX),
            ..join(&format!("m{i}"))
        });
        assert_eq!(answer.error_code, 0);
    }
    let answer = send(HeartbeatRequest {
        subscribed_topics: names(1),
        ..join("one-too-many")
    });
    assert_eq!(answer.error_code, group_codes::INVALID_REQUEST);
    assert!(!group.members.contains_key("one-too-many"));
    assert_eq!(group.members.len(), members_at_bound);
}

mod regex_subscriptions;

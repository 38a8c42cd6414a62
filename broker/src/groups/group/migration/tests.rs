//! Guards KIP-848's online migration against a model of its clients. Classic clients
//! (cooperative or eager, as librdkafka behaves: rejoin on `REBALANCE_IN_PROGRESS`, lose
//! their partitions on `ILLEGAL_GENERATION` / `UNKNOWN_MEMBER_ID`, a cooperative one rejoins
//! after revoking; the leader's assignor never hands out a partition another member still
//! lists as owned) and consumer-protocol clients share one group in a seeded random order,
//! rolling from one protocol to the other, crashing, and the broker restarting (the group
//! rebuilt from its records). Safety: no partition is ever owned by two live clients, through
//! upgrade, mixed membership and downgrade. Liveness: once the churn stops, every partition
//! is owned again. Plus the conversions one by one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use glommio::channels::local_channel::LocalReceiver;

use super::super::tests::rules;
use super::super::{Answer, Group, GroupRules, JoinRequest, JoinResult, SyncResult};
use crate::groups::assignor::Assignment;
use crate::groups::consumer::{ConsumerGroup, HeartbeatRequest, LEAVE_EPOCH};
use crate::groups::consumer_protocol::{
    decode_assignment, decode_subscription, encode_assignment, encode_subscription,
};
use crate::groups::records::{decode_batch, encode_batch, ConsumerRecord, OffsetsRecord};
use crate::groups::types::{codes, MigrationPolicy};
use crate::storage::sim::SeededRng;

const TOPIC: &str = "t";
const PARTITIONS: i32 = 12;
/// Steps a failure's message shows.
const HISTORY_KEPT: usize = 40;

fn counts(topic: &str) -> Option<i32> {
    (topic == TOPIC).then_some(PARTITIONS)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Consumer,
    Cooperative,
    Eager,
}

enum Phase {
    /// Must (re)join.
    Join,
    Joining(LocalReceiver<JoinResult>),
    /// Joined at this generation; the leader carries the assignments to send.
    Sync(i32, Vec<(String, Bytes)>),
    Syncing(i32, LocalReceiver<SyncResult>),
    Stable(i32),
}

struct Client {
    kind: Kind,
    member_id: String,
    owned: Assignment,
    phase: Phase,
}

fn owned_count(owned: &Assignment) -> usize {
    owned.values().map(BTreeSet::len).sum()
}

fn minus(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (topic, set) in a {
        for p in set {
            if !b.get(topic).is_some_and(|s| s.contains(p)) {
                out.entry(topic.clone()).or_default().insert(*p);
            }
        }
    }
    out
}

struct Sim {
    group: Group,
    rules: GroupRules,
    clients: BTreeMap<usize, Client>,
    now: Instant,
    log: Vec<OffsetsRecord>,
    rng: SeededRng,
    next_id: usize,
    upgrades: usize,
    downgrades: usize,
    /// What happened, for a failure's message.
    history: Vec<String>,
}

impl Sim {
    fn new(seed: u64) -> Self {
        Self {
            group: Group::new("g"),
            rules: rules(),
            clients: BTreeMap::new(),
            now: Instant::now(),
            log: Vec::new(),
            rng: SeededRng::new(seed),
            next_id: 0,
            upgrades: 0,
            downgrades: 0,
            history: Vec::new(),
        }
    }

    fn is_consumer_group(&self) -> bool {
        self.group.consumer.is_some() && self.group.members.is_empty()
    }

    /// Writes what the group changed through the offsets log's encoding.
    fn write(&mut self) {
        let was_consumer = self.is_consumer_group();
        let records: Vec<OffsetsRecord> = self
            .group
            .take_consumer_records()
            .into_iter()
            .map(OffsetsRecord::Consumer)
            .collect();
        if records.is_empty() {
            return;
        }
        let (decoded, skipped) = decode_batch(&encode_batch(&records, 0));
        assert_eq!((skipped, &decoded), (0, &records));
        let _ = was_consumer;
        self.log.extend(decoded);
    }

    /// Every live client's partitions are disjoint from every other's.
    fn check_disjoint(&self) {
        let mut seen = BTreeMap::new();
        for (index, client) in &self.clients {
            for (topic, set) in &client.owned {
                for p in set {
                    if let Some(other) = seen.insert((topic.clone(), *p), *index) {
                        let tail = self.history.len().saturating_sub(HISTORY_KEPT);
                        panic!(
                            "{topic}-{p} owned by clients {other} and {index}; last steps:\n{}",
                            self.history[tail..].join("\n")
                        );
                    }
                }
            }
        }
    }

    fn spawn(&mut self, index: usize, kind: Kind) {
        self.clients.insert(
            index,
            Client {
                kind,
                member_id: String::new(),
                owned: Assignment::new(),
                phase: Phase::Join,
            },
        );
    }

    fn classic_protocols(kind: Kind, owned: &Assignment) -> Vec<(String, Bytes)> {
        let topics = vec![TOPIC.to_string()];
        match kind {
            Kind::Cooperative => vec![(
                "cooperative-sticky".into(),
                encode_subscription(1, &topics, owned),
            )],
            _ => vec![("range".into(), encode_subscription(0, &topics, owned))],
        }
    }

    /// One step of client `index`: what its library would do next.
    fn note(&mut self, what: &str) {
        let owned: Vec<String> = self
            .clients
            .iter()
            .map(|(i, c)| format!("{i}:{:?}", c.owned.get(TOPIC).cloned().unwrap_or_default()))
            .collect();
        let group = match &self.group.consumer {
            Some(c) if self.group.members.is_empty() => format!(
                "consumer e{} a{} {:?}",
                c.group_epoch,
                c.assignment_epoch,
                c.members
                    .values()
                    .map(|m| format!(
                        "{}@{}{:?} {:?}/{:?} cl={}",
                        m.member_id,
                        m.member_epoch,
                        m.state,
                        m.assigned.get(TOPIC).cloned().unwrap_or_default(),
                        m.pending_revocation.get(TOPIC).cloned().unwrap_or_default(),
                        m.classic.is_some()
                    ))
                    .collect::<Vec<_>>()
            ),
            _ => format!(
                "classic g{} {:?} {:?}",
                self.group.generation,
                self.group.state,
                self.group
                    .members
                    .iter()
                    .map(|m| &m.member_id)
                    .collect::<Vec<_>>()
            ),
        };
        if self.history.len() >= 2 * HISTORY_KEPT {
            self.history.drain(..HISTORY_KEPT);
        }
        self.history
            .push(format!("{what} -> {group} owned {}", owned.join(" ")));
    }

    fn step(&mut self, index: usize) {
        let Some(kind) = self.clients.get(&index).map(|c| c.kind) else {
            return;
        };
        let id = self.clients[&index].member_id.clone();
        let phase = match &self.clients[&index].phase {
            Phase::Join => "join".to_string(),
            Phase::Joining(_) => "joining".to_string(),
            Phase::Sync(g, _) => format!("sync@{g}"),
            Phase::Syncing(g, _) => format!("syncing@{g}"),
            Phase::Stable(g) => format!("stable@{g}"),
        };
        self.history
            .push(format!("step {index} {kind:?} {id} {phase}"));
        if kind == Kind::Consumer {
            self.consumer_step(index);
        } else {
            self.classic_step(index);
        }
        self.write();
        self.note("  after");
        self.check_disjoint();
    }

    fn consumer_step(&mut self, index: usize) {
        let client = self.clients.get_mut(&index).expect("present");
        let joining = matches!(client.phase, Phase::Join);
        let epoch = match client.phase {
            Phase::Stable(epoch) => epoch,
            _ => 0,
        };
        if joining && client.member_id.is_empty() {
            client.member_id = format!("consumer-{}", self.next_id);
            self.next_id += 1;
        }
        let request = HeartbeatRequest {
            member_id: client.member_id.clone(),
            member_epoch: epoch,
            rebalance_timeout_ms: if joining { 30_000 } else { -1 },
            subscribed_topics: joining.then(|| vec![TOPIC.to_string()]),
            owned: Some(client.owned.clone()),
            ..HeartbeatRequest::default()
        };
        let was_consumer = self.is_consumer_group();
        let had_classic = !self.group.members.is_empty();
        let answer = self
            .group
            .consumer_heartbeat(request, 1, &counts, &self.rules, self.now);
        if had_classic && self.is_consumer_group() && !was_consumer {
            self.upgrades += 1;
        }
        let client = self.clients.get_mut(&index).expect("present");
        if answer.error_code != crate::error_codes::NONE {
            // Fenced, unknown or refused: the client loses what it had and joins again.
            client.owned.clear();
            client.phase = Phase::Join;
            return;
        }
        client.phase = Phase::Stable(answer.member_epoch);
        if let Some(assignment) = answer.assignment {
            client.owned = assignment;
        }
    }

    fn lose_and_rejoin(client: &mut Client, forget_id: bool) {
        client.owned.clear();
        if forget_id {
            client.member_id.clear();
        }
        client.phase = Phase::Join;
    }

    fn classic_step(&mut self, index: usize) {
        let client = self.clients.get_mut(&index).expect("present");
        let phase = std::mem::replace(&mut client.phase, Phase::Join);
        match phase {
            Phase::Join => {
                if client.kind == Kind::Eager {
                    client.owned.clear(); // eager: revoke everything before joining
                }
                let request = JoinRequest {
                    member_id: client.member_id.clone(),
                    instance_id: None,
                    client_id: "rdkafka".into(),
                    client_host: "/127.0.0.1".into(),
                    session_timeout: Duration::from_secs(10),
                    rebalance_timeout: Duration::from_secs(30),
                    protocol_type: "consumer".into(),
                    protocols: Self::classic_protocols(client.kind, &client.owned),
                    require_known_member_id: true,
                };
                let answer = if self.group.has_consumer_members() {
                    Answer::Now(self.group.join_consumer_group(
                        request,
                        &counts,
                        &self.rules,
                        self.now,
                    ))
                } else {
                    self.group.join(request, &self.rules, self.now)
                };
                match answer {
                    Answer::Now(result) => self.joined(index, result),
                    Answer::Later(receiver) => {
                        self.clients.get_mut(&index).expect("present").phase =
                            Phase::Joining(receiver);
                    }
                }
            }
            Phase::Joining(receiver) => match receiver.recv().now_or_never() {
                None => client.phase = Phase::Joining(receiver),
                Some(result) => {
                    let result =
                        result.unwrap_or_else(|| JoinResult::error(codes::UNKNOWN_MEMBER_ID, ""));
                    self.joined(index, result);
                }
            },
            Phase::Sync(generation, assignments) => {
                let member_id = client.member_id.clone();
                let answer = if self.group.has_consumer_members() {
                    Answer::Now(self.group.sync_consumer_group(
                        &member_id,
                        generation,
                        (Some("consumer"), None),
                        self.now,
                    ))
                } else {
                    let answer = self
                        .group
                        .sync(&member_id, generation, assignments, self.now);
                    // As the coordinator does once the completed generation is written.
                    drop(self.group.take_classic_record());
                    self.group
                        .finish_sync(crate::error_codes::NONE, &self.rules, self.now);
                    answer
                };
                match answer {
                    Answer::Now(result) => self.synced(index, generation, &result),
                    Answer::Later(receiver) => {
                        self.clients.get_mut(&index).expect("present").phase =
                            Phase::Syncing(generation, receiver);
                    }
                }
            }
            Phase::Syncing(generation, receiver) => match receiver.recv().now_or_never() {
                None => client.phase = Phase::Syncing(generation, receiver),
                Some(result) => {
                    let result =
                        result.unwrap_or_else(|| SyncResult::error(codes::UNKNOWN_MEMBER_ID));
                    self.synced(index, generation, &result);
                }
            },
            Phase::Stable(generation) => {
                client.phase = Phase::Stable(generation);
                let member_id = client.member_id.clone();
                let code = if self.group.has_consumer_members() {
                    self.group
                        .heartbeat_consumer_group(&member_id, None, generation, self.now)
                } else {
                    self.group.heartbeat(&member_id, generation, self.now)
                };
                let client = self.clients.get_mut(&index).expect("present");
                match code {
                    crate::error_codes::NONE => {}
                    codes::REBALANCE_IN_PROGRESS => client.phase = Phase::Join,
                    codes::UNKNOWN_MEMBER_ID => Self::lose_and_rejoin(client, true),
                    _ => Self::lose_and_rejoin(client, false),
                }
            }
        }
    }

    fn joined(&mut self, index: usize, result: JoinResult) {
        let client = self.clients.get_mut(&index).expect("present");
        match result.error_code {
            crate::error_codes::NONE => {}
            codes::MEMBER_ID_REQUIRED => {
                client.member_id = result.member_id;
                client.phase = Phase::Join;
                return;
            }
            codes::UNKNOWN_MEMBER_ID => return Self::lose_and_rejoin(client, true),
            codes::REBALANCE_IN_PROGRESS => {
                client.phase = Phase::Join;
                return;
            }
            _ => return Self::lose_and_rejoin(client, false),
        }
        client.member_id = result.member_id.clone();
        let assignments = if result.leader == result.member_id {
            leader_assignments(&result.members)
        } else {
            Vec::new()
        };
        client.phase = Phase::Sync(result.generation, assignments);
    }

    fn synced(&mut self, index: usize, generation: i32, result: &SyncResult) {
        let client = self.clients.get_mut(&index).expect("present");
        match result.error_code {
            crate::error_codes::NONE => {}
            codes::REBALANCE_IN_PROGRESS => {
                client.phase = Phase::Join;
                return;
            }
            codes::UNKNOWN_MEMBER_ID => return Self::lose_and_rejoin(client, true),
            _ => return Self::lose_and_rejoin(client, false),
        }
        let assigned =
            decode_assignment(&result.assignment).expect("the broker writes valid bytes");
        let revoked = minus(&client.owned, &assigned);
        client.owned = assigned;
        client.phase = if client.kind == Kind::Cooperative && !revoked.is_empty() {
            Phase::Join // cooperative: rejoin after revoking
        } else {
            Phase::Stable(generation)
        };
    }

    /// The client leaves cleanly (its library's close).
    fn leave(&mut self, index: usize) {
        let Some(client) = self.clients.remove(&index) else {
            return;
        };
        if client.member_id.is_empty() {
            return;
        }
        if client.kind == Kind::Consumer {
            let consumer_members_before = self.is_consumer_group();
            let request = HeartbeatRequest {
                member_id: client.member_id,
                member_epoch: LEAVE_EPOCH,
                ..HeartbeatRequest::default()
            };
            let _ = self
                .group
                .consumer_heartbeat(request, 1, &counts, &self.rules, self.now);
            if consumer_members_before && !self.group.members.is_empty() {
                self.downgrades += 1;
            }
        } else if self.group.has_consumer_members() {
            self.group.leave_consumer_group(&client.member_id, None);
        } else {
            self.group
                .leave(&client.member_id, None, &self.rules, self.now);
        }
        self.write();
    }

    /// The client dies: its session runs out on the broker.
    fn crash(&mut self, index: usize) {
        let Some(client) = self.clients.remove(&index) else {
            return;
        };
        let was_consumer = self.is_consumer_group();
        if let Some(consumer) = self.group.consumer.as_mut() {
            if let Some(member) = consumer.members.get_mut(&client.member_id) {
                member.session_deadline = self.now;
            }
        }
        if let Some(member) = self
            .group
            .members
            .iter_mut()
            .find(|m| m.member_id == client.member_id)
        {
            member.heartbeat_deadline = self.now;
            member.join_waiter = None;
            member.sync_waiter = None;
        }
        self.group.tick(&self.rules, self.now);
        if was_consumer && !self.group.members.is_empty() {
            self.downgrades += 1;
        }
        self.write();
        self.forget_zombies();
    }

    /// Time passes: the group's timers run.
    fn tick(&mut self, millis: u64) {
        let was_consumer = self.is_consumer_group();
        self.now += Duration::from_millis(millis);
        self.group.tick(&self.rules, self.now);
        if was_consumer && !self.group.members.is_empty() {
            self.downgrades += 1;
        }
        self.write();
        self.forget_zombies();
    }

    /// A client whose member the broker removed on a timer (session, rebalance) or lost in
    /// a restart (classic membership) is a zombie: whatever it still consumes, the group
    /// has given up on it, so it counts as owning nothing, and answers parked for the old
    /// member are dropped (its next request tells it so).
    fn forget_zombies(&mut self) {
        let known: BTreeSet<&String> = self
            .group
            .members
            .iter()
            .map(|m| &m.member_id)
            .chain(self.group.consumer.iter().flat_map(|c| c.members.keys()))
            .collect();
        for client in self.clients.values_mut() {
            if !known.contains(&client.member_id) {
                // Answers parked for it belong to the member that is gone.
                client.owned.clear();
                client.phase = Phase::Join;
            }
        }
    }

    /// The broker restarts: the consumer group comes back from its records; classic
    /// membership is not persisted (those members rejoin). The group keeps its type.
    fn restart(&mut self) {
        self.write();
        let was_consumer = self.is_consumer_group();
        let mut restarted = Group::new("g");
        for record in self.log.clone() {
            let OffsetsRecord::Consumer(record) = record else {
                continue;
            };
            if let ConsumerRecord::Group { value: None, .. } = &record {
                restarted.consumer = None;
                continue;
            }
            restarted.consumer.get_or_insert_default().replay(
                record,
                &self.rules.consumer,
                self.now,
            );
        }
        let replayed_members = restarted.consumer.as_ref().map(|c| c.members.len());
        let live_members = self.group.consumer.as_ref().map(|c| c.members.len());
        if was_consumer {
            assert_eq!(
                replayed_members, live_members,
                "the consumer group comes back whole"
            );
        } else {
            assert!(
                !restarted.has_consumer_members(),
                "a classic group stays classic"
            );
        }
        assert!(
            restarted.take_consumer_records().is_empty(),
            "replay is not a change"
        );
        // Parked classic requests die with the broker's connections.
        for client in self.clients.values_mut() {
            if matches!(client.phase, Phase::Joining(_) | Phase::Syncing(..)) {
                client.phase = Phase::Join;
            }
        }
        self.group = restarted;
        self.forget_zombies();
    }
}

/// A cooperative-safe assignor, as the classic leader's: partitions spread round-robin
/// over the members, none given to a member while another still lists it as owned.
fn leader_assignments(members: &[(String, Option<String>, Bytes)]) -> Vec<(String, Bytes)> {
    let mut ids: Vec<&String> = members.iter().map(|m| &m.0).collect();
    ids.sort();
    let owned: BTreeMap<&String, Assignment> = members
        .iter()
        .map(|(id, _, metadata)| {
            (
                id,
                decode_subscription(metadata)
                    .map(|s| s.owned)
                    .unwrap_or_default(),
            )
        })
        .collect();
    let mut out: BTreeMap<&String, Assignment> =
        ids.iter().map(|id| (*id, Assignment::new())).collect();
    for p in 0..PARTITIONS {
        let wanted = ids[p as usize % ids.len()];
        let held_by_other = owned
            .iter()
            .any(|(id, o)| *id != wanted && o.get(TOPIC).is_some_and(|s| s.contains(&p)));
        if !held_by_other {
            out.get_mut(wanted)
                .expect("listed")
                .entry(TOPIC.into())
                .or_default()
                .insert(p);
        }
    }
    out.into_iter()
        .map(|(id, a)| (id.clone(), encode_assignment(1, &a)))
        .collect()
}

fn run(seed: u64) -> (usize, usize) {
    let mut sim = Sim::new(seed);
    let classic_kind = if seed % 2 == 0 {
        Kind::Cooperative
    } else {
        Kind::Eager
    };
    for index in 0..3 {
        sim.spawn(index, classic_kind);
    }
    for _ in 0..600 {
        let index = sim.rng.below(4) as usize;
        match sim.rng.below(20) {
            0 => {
                // Roll: the client restarts with the other protocol.
                let kind = sim.clients.get(&index).map(|c| c.kind);
                sim.leave(index);
                let next = match kind {
                    Some(Kind::Consumer) | None => classic_kind,
                    Some(_) => Kind::Consumer,
                };
                sim.spawn(index, next);
            }
            1 => {
                sim.crash(index);
                let kind = if sim.rng.below(2) == 0 {
                    classic_kind
                } else {
                    Kind::Consumer
                };
                sim.spawn(index, kind);
            }
            2 => {
                let millis = sim.rng.below(12_000);
                sim.tick(millis);
            }
            3 => sim.restart(),
            _ => sim.step(index),
        }
    }
    // Churn stops: every client runs until the group settles.
    for round in 0..200 {
        let indexes: Vec<usize> = sim.clients.keys().copied().collect();
        for index in indexes {
            sim.step(index);
        }
        if round % 10 == 9 {
            sim.tick(1_000);
        }
    }
    let owned: usize = sim.clients.values().map(|c| owned_count(&c.owned)).sum();
    assert_eq!(
        owned, PARTITIONS as usize,
        "seed {seed}: every partition owned once settled"
    );
    (sim.upgrades, sim.downgrades)
}

#[test]
fn no_partition_has_two_owners_through_upgrade_mixed_membership_and_downgrade() {
    glommio::LocalExecutor::default().run(async {
        let (mut upgrades, mut downgrades) = (0, 0);
        for seed in 0..40 {
            let (u, d) = run(seed);
            upgrades += u;
            downgrades += d;
        }
        println!("{upgrades} upgrades, {downgrades} downgrades");
        assert!(
            upgrades > 10 && downgrades > 10,
            "both ways exercised: {upgrades} upgrades, {downgrades} downgrades"
        );
    });
}

fn classic_member(sim: &mut Sim, index: usize) {
    sim.spawn(index, Kind::Cooperative);
    for _ in 0..6 {
        sim.step(index);
    }
}

#[test]
fn a_consumer_member_upgrades_a_classic_group_that_keeps_its_assignments() {
    glommio::LocalExecutor::default().run(async {
        let mut sim = Sim::new(1);
        classic_member(&mut sim, 0);
        assert_eq!(owned_count(&sim.clients[&0].owned), PARTITIONS as usize);
        let generation = sim.group.generation;
        sim.spawn(1, Kind::Consumer);
        sim.step(1);
        assert!(sim.is_consumer_group(), "upgraded");
        let consumer = sim.group.consumer.as_ref().expect("consumer group");
        assert_eq!(consumer.members.len(), 2);
        assert_eq!(
            consumer.group_epoch,
            generation + 1,
            "the join moved the epoch on"
        );
        assert_eq!(owned_count(&sim.clients[&1].owned), 0, "nothing free yet");
        // The classic member is told to rejoin, revokes half, then the new member gets it.
        for _ in 0..8 {
            sim.step(0);
            sim.step(1);
        }
        assert_eq!(owned_count(&sim.clients[&0].owned), 6);
        assert_eq!(owned_count(&sim.clients[&1].owned), 6);
        let records = sim.log.len();
        assert!(records > 0, "the upgrade was written");
        sim.restart();
        assert!(
            sim.is_consumer_group(),
            "still a consumer group after a restart"
        );
        for _ in 0..3 {
            sim.step(0);
            sim.step(1);
        }
        assert_eq!(
            owned_count(&sim.clients[&0].owned),
            6,
            "the classic member carried on"
        );
    });
}

#[test]
fn the_last_consumer_member_leaving_downgrades_and_the_classic_members_rejoin() {
    glommio::LocalExecutor::default().run(async {
        let mut sim = Sim::new(2);
        classic_member(&mut sim, 0);
        sim.spawn(1, Kind::Consumer);
        for _ in 0..8 {
            sim.step(1);
            sim.step(0);
        }
        assert!(sim.is_consumer_group());
        let epoch = sim
            .group
            .consumer
            .as_ref()
            .map(|c| c.group_epoch)
            .expect("consumer");
        sim.leave(1);
        assert!(
            !sim.is_consumer_group() && sim.group.consumer.is_none(),
            "downgraded"
        );
        assert_eq!(sim.group.members.len(), 1);
        assert_eq!(sim.group.state.name(), "PreparingRebalance");
        assert!(sim.group.generation >= epoch);
        assert!(
            matches!(
                sim.log.last(),
                Some(OffsetsRecord::Consumer(ConsumerRecord::Group {
                    value: None,
                    ..
                }))
            ),
            "the consumer group's tombstone is written"
        );
        for _ in 0..6 {
            sim.step(0);
        }
        assert_eq!(owned_count(&sim.clients[&0].owned), PARTITIONS as usize);
        assert_eq!(sim.group.state.name(), "Stable");
    });
}

#[test]
fn the_policy_and_malformed_subscriptions_refuse_the_upgrade() {
    glommio::LocalExecutor::default().run(async {
        let mut sim = Sim::new(3);
        sim.rules.migration = MigrationPolicy::Downgrade;
        classic_member(&mut sim, 0);
        sim.spawn(1, Kind::Consumer);
        sim.step(1);
        assert!(!sim.is_consumer_group(), "upgrade disabled");
        assert_eq!(owned_count(&sim.clients[&0].owned), PARTITIONS as usize);

        sim.rules.migration = MigrationPolicy::Bidirectional;
        // A join the consumer group would refuse does not convert the group first.
        let invalid = HeartbeatRequest {
            member_id: "invalid".into(),
            member_epoch: 0,
            rebalance_timeout_ms: -1,
            subscribed_topics: Some(vec![TOPIC.into()]),
            owned: Some(Assignment::new()),
            ..HeartbeatRequest::default()
        };
        let answer = sim
            .group
            .consumer_heartbeat(invalid, 1, &counts, &sim.rules, sim.now);
        assert_eq!(answer.error_code, codes::INVALID_REQUEST);
        assert!(!sim.is_consumer_group() && sim.group.consumer.is_none());
        // A classic member whose subscription bytes are garbage: no upgrade, no panic.
        let member = &mut sim.group.members[0];
        member.protocols = vec![(
            "cooperative-sticky".into(),
            Bytes::from_static(b"\x00\x01\x7f\xff\xff\xff"),
        )];
        sim.step(1);
        assert!(
            !sim.is_consumer_group(),
            "malformed metadata refuses the upgrade"
        );
        assert!(sim
            .group
            .consumer
            .as_ref()
            .is_none_or(|c| c.members.is_empty()));
    });
}

#[test]
fn an_empty_consumer_group_is_deleted_by_a_classic_join() {
    glommio::LocalExecutor::default().run(async {
        let mut sim = Sim::new(4);
        sim.spawn(1, Kind::Consumer);
        sim.step(1);
        sim.leave(1);
        assert!(sim
            .group
            .consumer
            .as_ref()
            .is_some_and(|c| c.members.is_empty()));
        classic_member(&mut sim, 0);
        assert!(
            sim.group.consumer.is_none(),
            "the empty consumer group is gone"
        );
        assert!(
            sim.log.iter().any(|r| matches!(
                r,
                OffsetsRecord::Consumer(ConsumerRecord::Group { value: None, .. })
            )),
            "with its tombstone"
        );
        assert_eq!(owned_count(&sim.clients[&0].owned), PARTITIONS as usize);
    });
}

#[test]
fn consumer_group_from_classic_refuses_a_partition_assigned_twice() {
    use crate::groups::consumer::classic_members::ClassicSnapshot;
    let assignment: Assignment = [(TOPIC.to_string(), [0].into())].into();
    let snapshot = |id: &str| ClassicSnapshot {
        member_id: id.into(),
        instance_id: None,
        client_id: "c".into(),
        client_host: "h".into(),
        session_timeout: Duration::from_secs(10),
        rebalance_timeout: Duration::from_secs(30),
        protocols: vec![],
        metadata: encode_subscription(1, &[TOPIC.to_string()], &Assignment::new()),
        assignment: encode_assignment(0, &assignment),
    };
    let converted =
        ConsumerGroup::from_classic(3, vec![snapshot("a"), snapshot("b")], Instant::now());
    assert!(converted.is_err());
    assert!(ConsumerGroup::from_classic(3, vec![snapshot("a")], Instant::now()).is_ok());
}

#[test]
fn a_classic_member_inside_a_consumer_group_commits_with_its_generation() {
    glommio::LocalExecutor::default().run(async {
        let mut sim = Sim::new(5);
        classic_member(&mut sim, 0);
        sim.spawn(1, Kind::Consumer);
        for _ in 0..8 {
            sim.step(1);
            sim.step(0);
        }
        assert!(sim.is_consumer_group());
        let Phase::Stable(generation) = sim.clients[&0].phase else {
            panic!("the classic member settled");
        };
        let member_id = sim.clients[&0].member_id.clone();
        assert_eq!(sim.group.check_commit(&member_id, None, generation), Ok(()));
        assert_eq!(
            sim.group.check_commit(&member_id, None, generation - 1),
            Err(codes::ILLEGAL_GENERATION),
            "Kafka's classic rule: the generation must be the member epoch"
        );
        assert_eq!(
            sim.group.check_commit("nobody", None, generation),
            Err(codes::UNKNOWN_MEMBER_ID)
        );
    });
}

#[test]
fn a_static_classic_member_restarted_takes_over_its_partitions() {
    glommio::LocalExecutor::default().run(async {
        let mut sim = Sim::new(6);
        classic_member(&mut sim, 0);
        sim.spawn(1, Kind::Consumer);
        for _ in 0..8 {
            sim.step(1);
            sim.step(0);
        }
        assert!(sim.is_consumer_group());
        let old_id = sim.clients[&0].member_id.clone();
        let consumer = sim.group.consumer.as_mut().expect("consumer group");
        consumer
            .members
            .get_mut(&old_id)
            .expect("classic member")
            .instance_id = Some("i1".into());
        let held = consumer.members[&old_id].assigned.clone();
        assert!(!held.is_empty());
        // The process restarts: no member id, the same instance id, owning nothing.
        let request = JoinRequest {
            member_id: String::new(),
            instance_id: Some("i1".into()),
            client_id: "rdkafka".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: Sim::classic_protocols(Kind::Cooperative, &Assignment::new()),
            require_known_member_id: true,
        };
        let joined = sim
            .group
            .join_consumer_group(request, &counts, &sim.rules, sim.now);
        assert_eq!(joined.error_code, crate::error_codes::NONE, "{joined:?}");
        assert_ne!(joined.member_id, old_id);
        let consumer = sim.group.consumer.as_ref().expect("consumer group");
        assert!(
            !consumer.members.contains_key(&old_id),
            "the old id is gone"
        );
        assert_eq!(consumer.members[&joined.member_id].assigned, held);
        for (topic, partitions) in &held {
            for p in partitions {
                assert_eq!(
                    consumer.owner_of(topic, *p),
                    Some(joined.member_id.as_str())
                );
            }
        }
        // A known member id that is not the holder's is fenced.
        let mut request = JoinRequest {
            member_id: "someone-else".into(),
            instance_id: Some("i1".into()),
            client_id: "rdkafka".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: Sim::classic_protocols(Kind::Cooperative, &Assignment::new()),
            require_known_member_id: true,
        };
        let fenced = sim
            .group
            .join_consumer_group(request.clone(), &counts, &sim.rules, sim.now);
        assert_eq!(fenced.error_code, codes::FENCED_INSTANCE_ID);
        request.member_id = joined.member_id.clone();
        let again = sim
            .group
            .join_consumer_group(request, &counts, &sim.rules, sim.now);
        assert_eq!(again.error_code, crate::error_codes::NONE);
    });
}

#[test]
fn a_classic_member_that_never_rejoins_is_removed_after_its_rebalance_timeout() {
    glommio::LocalExecutor::default().run(async {
        let mut sim = Sim::new(7);
        classic_member(&mut sim, 0);
        sim.spawn(1, Kind::Consumer);
        for _ in 0..8 {
            sim.step(1);
            sim.step(0);
        }
        let Phase::Stable(generation) = sim.clients[&0].phase else {
            panic!("the classic member settled");
        };
        let member_id = sim.clients[&0].member_id.clone();
        sim.spawn(2, Kind::Consumer);
        sim.step(2); // a new member: the group epoch moves on
        let start = sim.now;
        // It heartbeats on (so its session lives) but never rejoins.
        for second in 1..=35 {
            sim.now = start + Duration::from_secs(second);
            let code = sim
                .group
                .heartbeat_consumer_group(&member_id, None, generation, sim.now);
            sim.group.tick(&sim.rules, sim.now);
            sim.write();
            sim.forget_zombies();
            sim.step(1);
            sim.step(2);
            let present = sim
                .group
                .consumer
                .as_ref()
                .is_some_and(|c| c.members.contains_key(&member_id));
            if second < 30 {
                assert_eq!(code, codes::REBALANCE_IN_PROGRESS);
                assert!(present, "still a member after {second} s");
            } else if second > 30 {
                assert!(!present, "removed after its 30 s rebalance timeout");
            }
        }
    });
}

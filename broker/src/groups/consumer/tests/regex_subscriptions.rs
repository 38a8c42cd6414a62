//! Guards regex subscriptions against a model: members subscribe with `orders-.*` (some
//! with a principal that may not see `orders-c`), topics are created and deleted while they
//! heartbeat (never re-sending the pattern), and the broker restarts. Safety after every
//! step: no partition owned by two clients; a client owns only topics it may see. Once the
//! churn stops and the refresh interval has passed: every partition of every existing
//! matching topic that some member may see is owned exactly once, by a member that may see
//! it, and nothing else is owned. Persistence: the replica replaying the written records
//! equals the group after each step. Plus the request rules of patterns.

use super::*;
use crate::groups::consumer::topic_regex::REGEX_REFRESH_INTERVAL;

const PATTERN: &str = "orders-.*";
/// Topics the model creates and deletes; `orders` and `audit` never match the pattern.
const NAMES: [&str; 5] = ["orders-a", "orders-b", "orders-c", "orders", "audit"];
const HIDDEN: &str = "orders-c";

/// The broker's topics as the model changes them.
#[derive(Clone, Debug, Default)]
struct Catalog {
    topics: BTreeMap<String, i32>,
    version: u64,
}

impl TopicCatalog for Catalog {
    fn partitions(&self, topic: &str) -> Option<i32> {
        self.topics.get(topic).copied()
    }
    fn version(&self) -> u64 {
        self.version
    }
    fn names(&self) -> Vec<&str> {
        self.topics.keys().map(String::as_str).collect()
    }
}

fn may_see(restricted: bool, topic: &str) -> bool {
    !(restricted && topic == HIDDEN)
}

fn visibility(restricted: bool) -> TopicVisibility {
    if restricted {
        TopicVisibility::new(
            Arc::from("User:restricted"),
            Arc::new(|topic: &str| may_see(true, topic)),
        )
    } else {
        TopicVisibility::everything()
    }
}

#[derive(Clone, Debug)]
struct RegexClient {
    member_id: String,
    epoch: i32,
    owned: Assignment,
    restricted: bool,
}

struct RegexSim {
    group: ConsumerGroup,
    replica: ConsumerGroup,
    log: Vec<OffsetsRecord>,
    catalog: Catalog,
    clients: BTreeMap<usize, RegexClient>,
    now: Instant,
}

impl RegexSim {
    fn new() -> Self {
        let mut catalog = Catalog::default();
        catalog.topics.insert("orders-a".into(), 3);
        catalog.topics.insert("orders".into(), 2);
        Self {
            group: ConsumerGroup::default(),
            replica: ConsumerGroup::default(),
            log: Vec::new(),
            catalog,
            clients: BTreeMap::new(),
            now: Instant::now(),
        }
    }

    fn send(&mut self, request: HeartbeatRequest) -> HeartbeatAnswer {
        let answer = self.group.heartbeat(
            request,
            1,
            &self.catalog,
            || unreachable!("v1 ids come from clients"),
            &rules(),
            self.now,
        );
        let records: Vec<OffsetsRecord> = self
            .group
            .take_records("g")
            .into_iter()
            .map(OffsetsRecord::Consumer)
            .collect();
        replay_into(&mut self.replica, &records, self.now);
        self.log.extend(records);
        assert_eq!(persisted(&self.replica), persisted(&self.group));
        answer
    }

    fn join(&mut self, index: usize, restricted: bool) {
        if self.clients.contains_key(&index) {
            return;
        }
        let member_id = format!("member-{index}");
        let answer = self.send(HeartbeatRequest {
            subscribed_topics: Some(Vec::new()),
            subscribed_regex: Some(PATTERN.into()),
            visibility: visibility(restricted),
            ..join(&member_id)
        });
        assert_eq!(answer.error_code, 0, "{answer:?}");
        let owned = answer
            .assignment
            .expect("a join is answered with its assignment");
        let client = RegexClient {
            member_id,
            epoch: answer.member_epoch,
            owned,
            restricted,
        };
        self.clients.insert(index, client);
        self.check_safe();
    }

    /// A heartbeat that carries neither names nor the pattern (librdkafka's usual one).
    fn heartbeat(&mut self, index: usize) {
        let Some(client) = self.clients.get(&index).cloned() else {
            return;
        };
        let answer = self.send(HeartbeatRequest {
            member_id: client.member_id.clone(),
            member_epoch: client.epoch,
            rebalance_timeout_ms: -1,
            owned: Some(client.owned.clone()),
            visibility: visibility(client.restricted),
            ..HeartbeatRequest::default()
        });
        assert_eq!(answer.error_code, 0, "{answer:?}");
        let client = self.clients.get_mut(&index).expect("present");
        client.epoch = answer.member_epoch;
        if let Some(assignment) = answer.assignment {
            client.owned = assignment;
        }
        self.check_safe();
    }

    fn leave(&mut self, index: usize) {
        if let Some(client) = self.clients.remove(&index) {
            let answer = self.send(HeartbeatRequest {
                member_id: client.member_id,
                member_epoch: LEAVE_EPOCH,
                ..HeartbeatRequest::default()
            });
            assert_eq!(answer.error_code, 0);
        }
    }

    fn create(&mut self, topic: usize, partitions: i32) {
        let name = NAMES[topic % NAMES.len()];
        if !self.catalog.topics.contains_key(name) {
            self.catalog.topics.insert(name.into(), partitions);
            self.catalog.version += 1;
        }
    }

    fn delete(&mut self, topic: usize) {
        if self
            .catalog
            .topics
            .remove(NAMES[topic % NAMES.len()])
            .is_some()
        {
            self.catalog.version += 1;
        }
    }

    /// Rebuilt from the log; members keep their resolutions (their rights come back with
    /// their next heartbeat).
    fn restart(&mut self) {
        let mut restarted = ConsumerGroup::default();
        let log = self.log.clone();
        replay_into(&mut restarted, &log, self.now);
        assert_eq!(persisted(&restarted), persisted(&self.group));
        self.group = restarted;
    }

    fn check_safe(&self) {
        let mut seen = BTreeSet::new();
        for client in self.clients.values() {
            for (topic, p) in partitions_of(&client.owned) {
                assert!(
                    may_see(client.restricted, &topic),
                    "{} owns {topic} it may not see",
                    client.member_id
                );
                assert!(seen.insert((topic.clone(), p)), "{topic}-{p} owned twice");
            }
        }
    }

    /// Past the refresh interval, heartbeats until nothing changes; then the model's
    /// expectation holds exactly.
    fn settle(&mut self) {
        // Two intervals: members replayed and heard from only after the first refresh
        // are resolved in the second.
        for _ in 0..2 {
            self.now += REGEX_REFRESH_INTERVAL;
            for _ in 0..5 {
                let indexes: Vec<usize> = self.clients.keys().copied().collect();
                for index in indexes {
                    self.heartbeat(index);
                }
            }
        }
        let mut expected = BTreeSet::new();
        for (topic, &count) in &self.catalog.topics {
            let matches = topic.starts_with("orders-");
            let seen_by_some = self.clients.values().any(|c| may_see(c.restricted, topic));
            if matches && seen_by_some {
                expected.extend((0..count).map(|p| (topic.clone(), p)));
            }
        }
        let owned: BTreeSet<(String, i32)> = self
            .clients
            .values()
            .flat_map(|c| partitions_of(&c.owned))
            .collect();
        assert_eq!(owned, expected);
        if !self.clients.is_empty() {
            assert_eq!(self.group.state_name(), "Stable");
        }
    }
}

#[derive(Clone, Debug)]
enum RegexOp {
    Join(usize, bool),
    Heartbeat(usize),
    Leave(usize),
    Create(usize, i32),
    Delete(usize),
    Wait,
    Restart,
}

fn regex_op() -> impl Strategy<Value = RegexOp> {
    prop_oneof![
        2 => (0_usize..4, any::<bool>()).prop_map(|(i, r)| RegexOp::Join(i, r)),
        5 => (0_usize..4).prop_map(RegexOp::Heartbeat),
        1 => (0_usize..4).prop_map(RegexOp::Leave),
        2 => (0_usize..5, 1_i32..5).prop_map(|(t, n)| RegexOp::Create(t, n)),
        1 => (0_usize..5).prop_map(RegexOp::Delete),
        1 => Just(RegexOp::Wait),
        1 => Just(RegexOp::Restart),
    ]
}

proptest! {
    #[test]
    fn regex_topics_are_owned_exactly_once_by_members_that_may_see_them(
        ops in prop::collection::vec(regex_op(), 1..80),
    ) {
        let mut sim = RegexSim::new();
        for op in ops {
            match op {
                RegexOp::Join(i, restricted) => sim.join(i, restricted),
                RegexOp::Heartbeat(i) => sim.heartbeat(i),
                RegexOp::Leave(i) => sim.leave(i),
                RegexOp::Create(t, n) => sim.create(t, n),
                RegexOp::Delete(t) => sim.delete(t),
                RegexOp::Wait => sim.now += Duration::from_secs(4),
                RegexOp::Restart => sim.restart(),
            }
        }
        sim.settle();
    }
}

/// A topic created after the members joined is assigned without any member re-sending its
/// pattern, with one rebalance for the whole group, once the refresh interval has passed.
#[test]
fn a_matching_topic_created_later_is_assigned_with_one_epoch_bump() {
    let mut sim = RegexSim::new();
    sim.join(0, false);
    sim.join(1, false);
    sim.settle();
    let epoch = sim.group.group_epoch;
    sim.create(4, 1); // audit: no match, but the patterns are resolved again
    sim.heartbeat(0);
    assert_eq!(
        sim.group.group_epoch, epoch,
        "nothing matched: no rebalance"
    );
    sim.create(1, 4); // orders-b
    sim.heartbeat(0);
    sim.heartbeat(1);
    assert_eq!(
        sim.group.group_epoch, epoch,
        "not before the refresh interval"
    );
    sim.now += REGEX_REFRESH_INTERVAL;
    sim.heartbeat(0);
    assert_eq!(
        sim.group.group_epoch,
        epoch + 1,
        "one bump for both members"
    );
    sim.heartbeat(1);
    assert_eq!(sim.group.group_epoch, epoch + 1);
    sim.settle();
    let owned: usize = sim
        .clients
        .values()
        .map(|c| c.owned.get("orders-b").map_or(0, BTreeSet::len))
        .sum();
    assert_eq!(owned, 4);
    // Deleted: its partitions leave the assignment.
    sim.delete(1);
    sim.settle();
    assert!(sim
        .clients
        .values()
        .all(|c| !c.owned.contains_key("orders-b")));
}

#[test]
fn an_invalid_pattern_is_refused_before_the_member_is_admitted() {
    let mut sim = RegexSim::new();
    let answer = sim.send(HeartbeatRequest {
        subscribed_regex: Some("orders-(".into()),
        ..join("m")
    });
    assert_eq!(
        answer.error_code,
        consumer_codes::INVALID_REGULAR_EXPRESSION
    );
    assert_eq!(answer.error_code, 128);
    let message = answer.error_message.expect("a message");
    assert!(
        message.starts_with("SubscribedTopicRegex `orders-(` is not a valid regular expression"),
        "{message}"
    );
    assert!(sim.group.members.is_empty());
    assert_eq!(sim.group.group_epoch, 0);
}

#[test]
fn an_empty_pattern_drops_the_regex_subscription() {
    let mut sim = RegexSim::new();
    sim.join(0, false);
    sim.settle();
    assert!(sim.clients[&0].owned.contains_key("orders-a"));
    let client = sim.clients[&0].clone();
    let answer = sim.send(HeartbeatRequest {
        member_id: client.member_id.clone(),
        member_epoch: client.epoch,
        rebalance_timeout_ms: -1,
        subscribed_regex: Some(String::new()),
        owned: Some(client.owned.clone()),
        ..HeartbeatRequest::default()
    });
    assert_eq!(answer.error_code, 0);
    assert_eq!(sim.group.members["member-0"].subscribed_regex, None);
    sim.clients.get_mut(&0).expect("client").epoch = answer.member_epoch;
    if let Some(assignment) = answer.assignment {
        sim.clients.get_mut(&0).expect("client").owned = assignment;
    }
    for _ in 0..3 {
        sim.heartbeat(0);
    }
    assert!(sim.clients[&0].owned.is_empty());
}

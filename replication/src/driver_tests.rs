//! Guards the driver's contract on raft-rs's memory store: groups elect and commit over
//! encoded frames, a round sends at most one frame per peer, an idle cluster's traffic is all
//! coalesced heartbeats, proposals at a follower are refused with the leader, and a peer's
//! message that makes raft-rs panic fences its group instead of the broker.

use bytes::BytesMut;
use raft::eraftpb::{ConfState, Message, MessageType};
use raft::storage::MemStorage;

use super::quiet::QUIET_TICK_EVERY;
use super::*;

const GROUPS: u64 = 200;

struct Cluster {
    drivers: Vec<MultiRaft<MemStorage>>,
    durability: Vec<ImmediateDurability>,
    in_flight: Vec<Vec<u8>>,
    applied: BTreeMap<(u64, u64), Vec<Vec<u8>>>,
}

/// What one round of every node sent.
#[derive(Default)]
struct RoundTraffic {
    frames: usize,
    full_messages: usize,
    heartbeats: usize,
    bytes: usize,
}

impl Cluster {
    fn new(nodes: u64) -> Self {
        let voters: Vec<u64> = (1..=nodes).collect();
        let mut drivers = Vec::new();
        for node in 1..=nodes {
            let mut driver = MultiRaft::new(node, 1, WireLimits::default(), node);
            for group in 0..GROUPS {
                let store =
                    MemStorage::new_with_conf_state(ConfState::from((voters.clone(), vec![])));
                driver.add_group(group, store, 0).expect("group starts");
            }
            drivers.push(driver);
        }
        Self {
            durability: (0..nodes).map(|_| ImmediateDurability::default()).collect(),
            drivers,
            in_flight: Vec::new(),
            applied: BTreeMap::new(),
        }
    }

    /// Delivers what the last round sent, runs one round on every node (ticking them when
    /// `tick`), and returns what this round sent.
    fn round(&mut self, tick: bool) -> RoundTraffic {
        for bytes in std::mem::take(&mut self.in_flight) {
            let frame = Frame::decode(&bytes, &WireLimits::default()).expect("a valid frame");
            self.drivers[(frame.to_node - 1) as usize].receive(frame);
        }
        let mut traffic = RoundTraffic::default();
        for (driver, durability) in self.drivers.iter_mut().zip(&mut self.durability) {
            if tick {
                driver.tick();
            }
            let node = driver.node_id();
            let applied = &mut self.applied;
            let frames = driver.round(durability, |group, entry| {
                if !entry.data.is_empty() {
                    applied
                        .entry((node, group))
                        .or_default()
                        .push(entry.data.to_vec());
                }
            });
            let mut peers: Vec<u64> = frames.iter().map(|frame| frame.to_node).collect();
            peers.dedup();
            assert_eq!(
                peers.len(),
                frames.len(),
                "more than one frame to a peer in a round"
            );
            for frame in frames {
                traffic.frames += 1;
                traffic.full_messages += frame.messages.len();
                traffic.heartbeats += frame.heartbeats.len();
                traffic.bytes += frame.encoded_size();
                let mut bytes = BytesMut::new();
                frame.encode(&mut bytes);
                self.in_flight.push(bytes.to_vec());
            }
        }
        traffic
    }

    fn leader(&self, group: u64) -> Option<usize> {
        self.drivers
            .iter()
            .position(|driver| driver.raft(group).expect("hosted").state == StateRole::Leader)
    }

    /// Ticked rounds until `reached`, at most `ticks_max` of them.
    fn run_until(&mut self, ticks_max: usize, what: &str, reached: impl Fn(&Self) -> bool) {
        for _ in 0..ticks_max {
            self.round(true);
            if reached(self) {
                return;
            }
        }
        panic!("{what} not reached after {ticks_max} ticks");
    }

    fn run_until_every_group_has_a_leader(&mut self) {
        self.run_until(200, "a leader for every group", |cluster| {
            (0..GROUPS).all(|group| cluster.leader(group).is_some())
        });
    }
}

#[test]
fn groups_elect_and_commit_over_frames_and_idle_traffic_is_coalesced_heartbeats() {
    let mut cluster = Cluster::new(3);
    cluster.run_until_every_group_has_a_leader();
    for group in 0..GROUPS {
        let leader = cluster.leader(group).expect("a leader");
        let proposed = cluster.drivers[leader]
            .propose(group, format!("record of {group}").into_bytes().into())
            .expect("the leader accepts");
        assert!(proposed.index > 1, "after the leader's empty entry");
    }
    for _ in 0..10 {
        cluster.round(false);
    }
    for node in 1..=3 {
        for group in 0..GROUPS {
            assert_eq!(
                cluster.applied.get(&(node, group)),
                Some(&vec![format!("record of {group}").into_bytes()]),
                "node {node} group {group}"
            );
        }
    }
    // Idle: ticks only. Every message is a heartbeat or its response, in the compact list.
    let mut idle = RoundTraffic::default();
    for _ in 0..(10 * HEARTBEAT_TICKS) {
        let traffic = cluster.round(true);
        idle.frames += traffic.frames;
        idle.full_messages += traffic.full_messages;
        idle.heartbeats += traffic.heartbeats;
        idle.bytes += traffic.bytes;
    }
    let idle_ticks = 10 * HEARTBEAT_TICKS as u64;
    let idle_ms = idle_ticks * TICK_INTERVAL_MS;
    println!(
        "idle, {GROUPS} groups on 3 nodes: {} frames, {} heartbeat records, {} bytes in {idle_ms} ms \
         ({} bytes/s for the cluster)",
        idle.frames,
        idle.heartbeats,
        idle.bytes,
        idle.bytes as u64 * 1000 / idle_ms
    );
    assert_eq!(idle.full_messages, 0, "idle groups sent full messages");
    assert!(idle.heartbeats > 0);
    // 200 groups, 3 nodes: at most 6 ordered pairs of frames a round.
    assert!(idle.frames <= 6 * 10 * HEARTBEAT_TICKS);
}

#[test]
fn a_follower_refuses_proposals_and_names_the_leader() {
    let mut cluster = Cluster::new(3);
    cluster.run_until_every_group_has_a_leader();
    // Let followers hear the leader.
    for _ in 0..4 {
        cluster.round(true);
    }
    let leader = cluster.leader(7).expect("a leader");
    let follower = (leader + 1) % 3;
    assert_eq!(
        cluster.drivers[follower].propose(7, bytes::Bytes::from_static(b"x")),
        Err(ProposeError::NotLeader {
            group_id: 7,
            leader_hint: leader as u64 + 1
        })
    );
    assert_eq!(
        cluster.drivers[follower].propose(GROUPS, bytes::Bytes::from_static(b"x")),
        Err(ProposeError::UnknownGroup(GROUPS))
    );
}

#[test]
fn a_message_raft_rs_panics_on_fences_its_group_not_the_shard() {
    let mut cluster = Cluster::new(3);
    cluster.run_until_every_group_has_a_leader();
    let leader = cluster.leader(3).expect("a leader");
    let follower = (leader + 1) % 3;
    let term = cluster.drivers[leader].raft(3).expect("hosted").term;
    // No correct leader sends a commit index past the follower's log: raft-rs `fatal!`s.
    let mut frame = Frame::new(leader as u64 + 1, follower as u64 + 1, 1);
    frame.push(
        3,
        Message {
            msg_type: MessageType::MsgHeartbeat as i32,
            from: leader as u64 + 1,
            to: follower as u64 + 1,
            term,
            commit: 1_000_000,
            ..Message::default()
        },
    );
    cluster.drivers[follower].receive(frame);
    cluster.round(true);
    assert!(cluster.drivers[follower].is_fenced(3));
    assert_eq!(cluster.drivers[follower].stats().groups_fenced, 1);
    assert!(!cluster.drivers[follower].is_fenced(4));
    // The shard goes on: the other groups still commit through that follower.
    let leader_of_4 = cluster.leader(4).expect("a leader");
    cluster.drivers[leader_of_4]
        .propose(4, bytes::Bytes::from_static(b"after"))
        .expect("accepted");
    for _ in 0..10 {
        cluster.round(false);
    }
    assert_eq!(
        cluster.applied.get(&(follower as u64 + 1, 4)),
        Some(&vec![b"after".to_vec()])
    );
}

/// A group removed while its messages are queued and readies wait for a sync is forgotten
/// whole: the next rounds neither panic on it nor send for it, and its later messages count
/// as for an unknown group; the shard's other groups carry on.
#[test]
fn a_removed_group_leaves_nothing_behind() {
    let mut cluster = Cluster::new(3);
    cluster.run_until_every_group_has_a_leader();
    let leader = cluster.leader(7).expect("a leader");
    cluster.drivers[leader]
        .propose(7, bytes::Bytes::from_static(b"queued"))
        .expect("the leader accepts");
    // Every node has the group's messages queued or staged now.
    cluster.round(false);
    for driver in &mut cluster.drivers {
        assert!(driver.remove_group(7));
        assert!(!driver.remove_group(7), "removed once");
        assert!(driver.raft(7).is_none());
    }
    for _ in 0..5 {
        cluster.round(true);
    }
    let leader_of_8 = cluster.leader(8).expect("a leader");
    cluster.drivers[leader_of_8]
        .propose(8, bytes::Bytes::from_static(b"still served"))
        .expect("the leader accepts");
    for _ in 0..5 {
        cluster.round(false);
    }
    for node in 1..=3 {
        assert_eq!(
            cluster.applied.get(&(node, 8)),
            Some(&vec![b"still served".to_vec()])
        );
        assert!(!cluster.applied.contains_key(&(node, 7)));
    }
}

/// Every node told that every other node is live, in incarnation 1.
fn all_live(cluster: &mut Cluster) {
    let nodes = cluster.drivers.len() as u64;
    for driver in &mut cluster.drivers {
        let me = driver.node_id();
        driver.set_live_peers(
            (1..=nodes)
                .filter(|id| *id != me)
                .map(|id| (id, 1))
                .collect(),
        );
    }
}

fn run_until_every_group_is_quiet(cluster: &mut Cluster) {
    cluster.run_until(100, "every group quiet", |cluster| {
        cluster
            .drivers
            .iter()
            .all(|driver| driver.quiet_groups() == GROUPS as usize)
    });
}

/// The wake rules of `quiet`, each on its own: a follower wakes the moment its leader's
/// broker stops being live (not at its next slow tick), a leader when a follower's broker
/// restarts, both when something is proposed, and they settle again once it is committed.
#[test]
fn quiet_groups_wake_on_liveness_changes_and_proposals_and_settle_again() {
    let mut cluster = Cluster::new(3);
    all_live(&mut cluster);
    cluster.run_until_every_group_has_a_leader();
    run_until_every_group_is_quiet(&mut cluster);
    let led_by = |cluster: &Cluster, node: usize| -> Vec<u64> {
        (0..GROUPS)
            .filter(|group| cluster.leader(*group) == Some(node))
            .collect()
    };
    let led_by_1 = led_by(&cluster, 0);
    let (led_by_2, led_by_3) = (led_by(&cluster, 1), led_by(&cluster, 2));
    assert!(!led_by_1.is_empty() && !led_by_2.is_empty() && !led_by_3.is_empty());

    // Node 2 stops hearing node 1, at once: its followers of node 1's groups wake, and its
    // leaders (node 1 follows them); its followers of node 3's groups stay quiet.
    cluster.drivers[1].set_live_peers(LivePeers::from([(3, 1)]));
    for group in 0..GROUPS {
        assert_eq!(
            cluster.drivers[1].is_quiet(group),
            led_by_3.contains(&group),
            "group {group} on node 2"
        );
    }
    cluster.drivers[1].set_live_peers(LivePeers::from([(1, 1), (3, 1)]));
    run_until_every_group_is_quiet(&mut cluster);

    // Node 1 hears node 3 in a new incarnation (a restart faster than the liveness
    // timeout): its leaders wake (node 3 follows them), and its followers of node 3's
    // groups; its followers of node 2's groups stay quiet.
    cluster.drivers[0].set_live_peers(LivePeers::from([(2, 1), (3, 2)]));
    for group in 0..GROUPS {
        assert_eq!(
            cluster.drivers[0].is_quiet(group),
            led_by_2.contains(&group),
            "group {group} on node 1"
        );
    }
    run_until_every_group_is_quiet(&mut cluster);

    // A proposal wakes its leader; the append wakes the followers; committed everywhere,
    // all settle again.
    let group = led_by_1[0];
    cluster.drivers[0]
        .propose(group, Bytes::from_static(b"wakes"))
        .expect("the leader accepts");
    assert!(!cluster.drivers[0].is_quiet(group));
    cluster.round(false);
    cluster.round(false);
    assert!(!cluster.drivers[1].is_quiet(group) && !cluster.drivers[2].is_quiet(group));
    run_until_every_group_is_quiet(&mut cluster);
    for node in 1..=3 {
        assert_eq!(
            cluster.applied.get(&(node, group)),
            Some(&vec![b"wakes".to_vec()]),
            "node {node}"
        );
    }
}

/// Without liveness no group with peers is calm: a driver that is never told of live peers
/// (the controller group's) keeps ticking every group every tick.
#[test]
fn without_liveness_no_group_goes_quiet() {
    let mut cluster = Cluster::new(3);
    cluster.run_until_every_group_has_a_leader();
    for _ in 0..100 {
        cluster.round(true);
    }
    for driver in &cluster.drivers {
        assert_eq!(driver.quiet_groups(), 0);
        assert_eq!(driver.stats().groups_quieted, 0);
    }
}

/// A driver whose groups are all quiet tells its task how long it may sleep: until the next
/// slow tick, since no tick before it makes any group do anything. Any wake ends that.
#[test]
fn a_driver_of_quiet_groups_needs_only_its_slow_ticks() {
    let mut cluster = Cluster::new(3);
    all_live(&mut cluster);
    assert_eq!(
        cluster.drivers[0].ticks_until_needed(),
        None,
        "nothing ticked yet"
    );
    cluster.run_until_every_group_has_a_leader();
    assert_eq!(
        cluster.drivers[0].ticks_until_needed(),
        None,
        "groups awake"
    );
    run_until_every_group_is_quiet(&mut cluster);
    let until = cluster.drivers[0]
        .ticks_until_needed()
        .expect("every group quiet");
    assert!((1..=QUIET_TICK_EVERY).contains(&until));
    // The ticks before the slow one: no group of node 1 ticks, so it sends nothing.
    for _ in 1..until {
        cluster.drivers[0].tick();
    }
    let mut durability = ImmediateDurability::default();
    let frames = cluster.drivers[0].round(&mut durability, |_, _| {});
    assert!(
        frames.is_empty(),
        "a tick before the slow one made a quiet group speak"
    );
    assert_eq!(cluster.drivers[0].ticks_until_needed(), Some(1));
    cluster.drivers[0].tick();
    cluster.drivers[0].round(&mut durability, |_, _| {});
    assert_eq!(
        cluster.drivers[0].ticks_until_needed(),
        Some(QUIET_TICK_EVERY)
    );
    // A proposal wakes its group: every tick matters again.
    let led = (0..GROUPS)
        .find(|group| cluster.leader(*group) == Some(0))
        .expect("node 1 leads a group");
    cluster.drivers[0]
        .propose(led, Bytes::from_static(b"wakes"))
        .expect("the leader accepts");
    assert_eq!(cluster.drivers[0].ticks_until_needed(), None);
}

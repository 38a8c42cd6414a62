//! Guards group 0 over the real transport on loopback: three brokers elect one controller,
//! a change proposed on it is applied by all three in the same order, a follower is refused
//! with the leader's id, a restarted broker recovers the committed state from its own log,
//! and when the leader stops the other two elect a new one that commits further changes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel;
use ringfeed_storage::sim::SimDisk;

use super::*;
use crate::cluster::transport::{Transport, TransportSettings};
use crate::controller::store::{PartitionRecord, ReplicaRecord, TopicRecord};

struct Node {
    group: Rc<ControllerGroup<SimDisk>>,
    _transport: Rc<Transport>,
    applied: Rc<RefCell<Vec<ClusterState>>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_node(
    node_id: u64,
    ports: &BTreeMap<u64, u16>,
    disk: SimDisk,
    incarnation: u64,
) -> (Node, Option<ClusterState>) {
    let applied = Rc::new(RefCell::new(Vec::new()));
    let sink = applied.clone();
    let (group, recovered) = ControllerGroup::open(
        ControllerGroupStart {
            node_id,
            voters: ports.keys().copied().collect(),
            incarnation,
            disk,
            data_dir: "/data".into(),
            election_seed: node_id * 7919 + incarnation,
        },
        Box::new(move |state| sink.borrow_mut().push(state)),
    )
    .await
    .unwrap();
    let peers: BTreeMap<u64, String> = ports
        .iter()
        .filter(|(id, _)| **id != node_id)
        .map(|(id, port)| (*id, format!("127.0.0.1:{port}")))
        .collect();
    let (inbound, received) = local_channel::new_bounded(INBOUND_FRAMES_MAX);
    let settings = TransportSettings {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..TransportSettings::new(node_id, peers.len())
    };
    let listen = SocketAddr::from(([127, 0, 0, 1], ports[&node_id]));
    let transport = Transport::start(settings, listen, &peers, inbound).unwrap();
    group.attach(transport.clone(), received);
    let node = Node {
        group,
        _transport: transport,
        applied,
    };
    (node, recovered)
}

fn state(epoch: u64, topics: &[&str]) -> ClusterState {
    ClusterState {
        epoch,
        cluster_id: "ringfeed-test".into(),
        topics: topics
            .iter()
            .map(|name| TopicRecord {
                name: (*name).to_string(),
                id: [1; 16],
                partitions: [(1, 0), (2, 1)]
                    .into_iter()
                    .enumerate()
                    .map(|(group, (broker, shard))| {
                        PartitionRecord::placed(
                            vec![ReplicaRecord { broker, shard }],
                            group as u64 + 1,
                        )
                    })
                    .collect(),
                overrides: Vec::new(),
            })
            .collect(),
        ..ClusterState::default()
    }
}

/// Waits until exactly one of `nodes` is ready to propose and every one agrees on it.
async fn elected(nodes: &BTreeMap<u64, Node>) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready: Vec<u64> = nodes
            .iter()
            .filter(|(_, node)| node.group.ready_to_propose())
            .map(|(id, _)| *id)
            .collect();
        if let [leader] = ready[..] {
            if nodes
                .values()
                .all(|node| node.group.leader() == Some(leader))
            {
                return leader;
            }
        }
        assert!(Instant::now() < deadline, "no controller elected in 10 s");
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

async fn all_applied(nodes: &BTreeMap<u64, Node>, expected: &ClusterState) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !nodes
        .values()
        .all(|node| node.applied.borrow().last() == Some(expected))
    {
        assert!(Instant::now() < deadline, "not applied everywhere in 5 s");
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn three_brokers_elect_a_controller_replicate_changes_and_survive_its_loss() {
    glommio::LocalExecutorBuilder::default()
        .io_memory(4 << 20)
        .spawn(|| async {
            let ports: BTreeMap<u64, u16> = (1..=3).map(|id| (id, free_port())).collect();
            let disks: BTreeMap<u64, SimDisk> = (1..=3).map(|id| (id, SimDisk::new())).collect();
            let mut nodes = BTreeMap::new();
            for id in 1..=3 {
                let (node, recovered) = start_node(id, &ports, disks[&id].clone(), 1).await;
                assert_eq!(recovered, None, "a fresh log holds no state");
                nodes.insert(id, node);
            }
            let leader = elected(&nodes).await;
            let first = state(2, &["orders"]);
            nodes[&leader].group.propose(&first).await.unwrap();
            all_applied(&nodes, &first).await;
            let follower = (1..=3).find(|id| *id != leader).unwrap();
            assert_eq!(
                nodes[&follower].group.propose(&state(9, &[])).await,
                Err(ProposalError::NotController {
                    leader: Some(leader)
                })
            );

            // A follower restarts: it recovers the committed state from its own log.
            let restarted = nodes.remove(&follower).unwrap();
            restarted.group.stop();
            drop(restarted);
            let (node, recovered) = start_node(follower, &ports, disks[&follower].clone(), 2).await;
            assert_eq!(recovered, Some(first.clone()));
            nodes.insert(follower, node);

            // The leader stops: the other two elect a successor that commits a new change.
            let stopped_at = Instant::now();
            let old = nodes.remove(&leader).unwrap();
            old.group.stop();
            drop(old);
            let successor = elected(&nodes).await;
            let election = stopped_at.elapsed();
            assert_ne!(successor, leader);
            assert!(
                election < Duration::from_secs(5),
                "election took {election:?}"
            );
            let second = state(3, &["orders", "payments"]);
            nodes[&successor].group.propose(&second).await.unwrap();
            all_applied(&nodes, &second).await;
            eprintln!("controller re-elected {election:?} after its leader stopped");
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn entry_values_round_trip_and_foreign_batches_are_refused() {
    let encoded = store::encode(&state(5, &["a", "b"]));
    let batch = build::batch(&[build::Record {
        key: Some(b"k"),
        value: Some(&encoded),
        timestamp_ms: 1,
    }]);
    assert_eq!(state_of_entry(&batch).unwrap(), state(5, &["a", "b"]));
    let two = build::batch(&[
        build::Record {
            key: None,
            value: Some(&encoded),
            timestamp_ms: 1,
        },
        build::Record {
            key: None,
            value: Some(&encoded),
            timestamp_ms: 1,
        },
    ]);
    assert!(state_of_entry(&two).is_err());
    assert!(state_of_entry(&batch[..batch.len() - 1]).is_err());
    let not_a_state = build::batch(&[build::Record {
        key: None,
        value: Some(b"hello"),
        timestamp_ms: 1,
    }]);
    assert!(state_of_entry(&not_a_state).is_err());
}

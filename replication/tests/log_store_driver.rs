//! Guards the partition log under the shard driver: three brokers' `MultiRaft`s drive two
//! groups each over `LogStore`s (partition logs on simulated disks) with `LogDurability` as
//! the shard's barrier (staged writes written and fdatasync'd, hard states saved in the
//! raft-meta store, one worker). Leaders are elected, batches proposed on them commit, the
//! three replicas of each group hold byte-identical logs, and every node's raft-meta store
//! holds each group's hard state.

use std::collections::BTreeMap;
use std::path::Path;

use raft::eraftpb::ConfState;
use raft::storage::RaftState;
use raft::StateRole;
use ringfeed_replication::driver::MultiRaft;
use ringfeed_replication::log_store::{LogDurability, LogStore, LogStoreStart};
use ringfeed_replication::log_store_meta::RaftMetaStore;
use ringfeed_replication::wire::WireLimits;
use ringfeed_storage::batch::build;
use ringfeed_storage::sim::{yield_once, SimDisk};
use ringfeed_storage::{Clock, LogConfig, PartitionLog};

const GROUPS: u64 = 2;

fn producer_batch(i: u64) -> Vec<u8> {
    let value = format!("group-batch-{i}-").repeat(30);
    build::batch(&[build::Record {
        key: None,
        value: Some(value.as_bytes()),
        timestamp_ms: 5_000 + i as i64,
    }])
    .to_vec()
}

struct Node {
    driver: MultiRaft<LogStore<SimDisk>>,
    durability: LogDurability<SimDisk>,
    stores: BTreeMap<u64, LogStore<SimDisk>>,
    disk: SimDisk,
}

async fn node(id: u64) -> Node {
    let disk = SimDisk::new();
    let meta = RaftMetaStore::open(disk.clone(), Path::new("/data"))
        .await
        .expect("meta");
    let durability = LogDurability::new(meta);
    let mut driver = MultiRaft::new(id, 1, WireLimits::default(), id);
    let mut stores = BTreeMap::new();
    for group in 0..GROUPS {
        let dir = format!("/data/topic-{group}");
        let (log, _) = PartitionLog::open_on(
            disk.clone(),
            Path::new(&dir),
            LogConfig::default(),
            Clock::System,
        )
        .await
        .expect("log");
        let start = LogStoreStart {
            raft_state: RaftState::new(
                raft::eraftpb::HardState::default(),
                ConfState::from((vec![1, 2, 3], vec![])),
            ),
            recent_bytes_max: 1 << 20,
            ..LogStoreStart::default()
        };
        let store = LogStore::open(log, start).await.expect("store");
        durability.register(group, store.clone());
        driver.add_group(group, store.clone(), 0).expect("group");
        stores.insert(group, store);
    }
    Node {
        driver,
        durability,
        stores,
        disk,
    }
}

#[test]
fn groups_commit_through_log_stores_under_the_driver() {
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(|| async {
            let mut nodes = Vec::new();
            for id in 1..=3 {
                nodes.push(node(id).await);
            }
            let mut in_flight = Vec::new();
            let mut committed: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
            let mut proposed = BTreeMap::new();
            for round in 0..600_u64 {
                for frame in std::mem::take(&mut in_flight) {
                    let frame: ringfeed_replication::wire::Frame = frame;
                    nodes[(frame.to_node - 1) as usize].driver.receive(frame);
                }
                for node in &mut nodes {
                    node.driver.tick();
                    for group in 0..GROUPS {
                        let leads = node
                            .driver
                            .raft(group)
                            .is_some_and(|raft| raft.state == StateRole::Leader);
                        let count = proposed.entry(group).or_insert(0_u64);
                        if leads && *count < 10 && round % 5 == 0 {
                            let data = producer_batch(group * 100 + *count);
                            if node.driver.propose(group, data.into()).is_ok() {
                                *count += 1;
                            }
                        }
                    }
                    let id = node.driver.node_id();
                    let frames = node.driver.round(&mut node.durability, |group, entry| {
                        if !entry.data.is_empty() {
                            committed
                                .entry((id, group))
                                .or_default()
                                .push(entry.data.to_vec());
                        }
                    });
                    in_flight.extend(frames);
                }
                // The durability worker writes and syncs between rounds.
                for _ in 0..64 {
                    yield_once().await;
                }
            }
            for node in &nodes {
                assert!(node.durability.failed().is_none());
            }
            for group in 0..GROUPS {
                assert_eq!(proposed[&group], 10, "group {group} had a leader");
                let logs: Vec<_> = replica_logs(&nodes, group).await;
                assert!(
                    logs[0].len() >= 11,
                    "group {group}: {} entries",
                    logs[0].len()
                );
                assert_eq!(logs[0], logs[1], "group {group}: replicas 1 and 2");
                assert_eq!(logs[0], logs[2], "group {group}: replicas 1 and 3");
                for id in 1..=3 {
                    let batches = committed.get(&(id, group)).map_or(0, Vec::len);
                    assert!(
                        batches >= 10,
                        "node {id} applied {batches} of group {group}"
                    );
                }
            }
            for node in &nodes {
                let meta = RaftMetaStore::open(node.disk.clone(), Path::new("/data"))
                    .await
                    .expect("meta");
                for group in 0..GROUPS {
                    let saved = meta.get(group).expect("hard state saved");
                    assert!(saved.hard_state.term >= 1 && saved.hard_state.commit >= 11);
                }
            }
        })
        .expect("executor")
        .join()
        .expect("test task");
}

/// Every replica's entries of `group`, as stored.
async fn replica_logs(nodes: &[Node], group: u64) -> Vec<Vec<ringfeed_storage::StoredEntry>> {
    let mut logs = Vec::new();
    for node in nodes {
        let log = node.stores[&group].log();
        logs.push(
            log.read_entries(1, log.last_index() + 1, usize::MAX)
                .await
                .expect("entries"),
        );
    }
    logs
}

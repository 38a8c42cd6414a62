//! Guards raft-rs's `Storage` over the partition log (`replication/src/log_store.rs`) and the
//! shard's raft-meta store (`log_store_meta.rs`):
//! - entries of every kind (a leader's empty entry, producer batches, configuration changes)
//!   go in as batches and come back as the same entries, from memory or from disk;
//! - old entries are fetched asynchronously (`LogTemporarilyUnavailable`, then `fetch`),
//!   unapplied ones always answer synchronously, also after a restart;
//! - a conflicting suffix is truncated before new entries are stored;
//! - the stores of a shard share one budget for their applied entries, unapplied ones stay;
//! - a one-node `RawNode` elects itself, commits a batch through the store, and after a power
//!   cut starts again with the same log and hard state;
//! - three `RawNode`s: a follower cut off while the others commit catches up from the leader's
//!   disk through the asynchronous fetch, and all three logs hold identical bytes;
//! - the raft-meta store keeps the last record per group, ignores a torn tail, refuses damage
//!   before valid records, and compacts.

mod common;

use std::path::Path;

use common::run;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType, HardState};
use raft::protocompat::PbMessage;
use raft::storage::{GetEntriesContext, RaftState, Storage};
use raft::{Config, RawNode, StorageError as RaftStorageError};
use ringfeed_replication::log_store::{LogStore, LogStoreStart, RecentBudget};
use ringfeed_replication::log_store_meta::{GroupMeta, RaftMetaStore, RAFT_META_FILE};
use ringfeed_storage::batch::build;
use ringfeed_storage::sim::{CrashMode, SimDisk};
use ringfeed_storage::{Clock, LogConfig, PartitionLog};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 16 << 10,
        preallocate_step_bytes: 16 << 10,
        tail_cache_bytes_max: 0,
        ..LogConfig::default()
    }
}

async fn open_log(disk: &SimDisk) -> PartitionLog<SimDisk> {
    PartitionLog::open_on(
        disk.clone(),
        Path::new("/data/t-0"),
        config(),
        Clock::System,
    )
    .await
    .expect("open")
    .0
}

fn producer_batch(i: usize) -> Vec<u8> {
    let value = format!("value-{i}-").repeat(40);
    build::batch(&[build::Record {
        key: None,
        value: Some(value.as_bytes()),
        timestamp_ms: 1_000 + i as i64,
    }])
    .to_vec()
}

fn entry(index: u64, term: u64, kind: EntryType, data: Vec<u8>) -> Entry {
    let mut entry = Entry {
        index,
        term,
        data: data.into(),
        ..Entry::default()
    };
    entry.set_entry_type(kind);
    entry
}

/// Index 1: a leader's empty entry; 2..=30: producer batches; 31: a configuration change.
fn sample_entries() -> Vec<Entry> {
    let mut entries = vec![entry(1, 1, EntryType::EntryNormal, Vec::new())];
    entries.extend((2..=30).map(|i| {
        entry(
            i,
            1 + i / 10,
            EntryType::EntryNormal,
            producer_batch(i as usize),
        )
    }));
    let change = ConfChangeV2::default().encode_to_vec();
    entries.push(entry(31, 4, EntryType::EntryConfChangeV2, change));
    entries
}

/// The entry as it reads back from disk: a producer batch stamped by the log.
fn same(read: &Entry, written: &Entry) -> bool {
    let data_matches = if written.entry_type() == EntryType::EntryNormal && !written.data.is_empty()
    {
        read.data.len() == written.data.len() && read.data[16..] == written.data[16..]
    } else {
        read.data == written.data
    };
    (read.index, read.term, read.entry_type())
        == (written.index, written.term, written.entry_type())
        && data_matches
}

fn start(commit: u64, recent_bytes_max: usize) -> LogStoreStart {
    LogStoreStart {
        raft_state: RaftState::new(
            HardState {
                term: 4,
                vote: 1,
                commit,
            },
            ConfState {
                voters: vec![1],
                ..ConfState::default()
            },
        ),
        recent_bytes_max,
        ..LogStoreStart::default()
    }
}

#[test]
fn entries_round_trip_from_memory_and_from_disk() {
    run(|| async {
        let disk = SimDisk::new();
        let store = LogStore::open(open_log(&disk).await, start(0, 0))
            .await
            .expect("store");
        let written = sample_entries();
        store.append(&written).await.expect("append");
        store.sync().await.expect("sync");
        assert_eq!(
            (store.first_index().unwrap(), store.last_index().unwrap()),
            (1, 31)
        );
        assert_eq!(store.term(0).unwrap(), 0);
        assert_eq!(store.term(15).unwrap(), 2);
        assert_eq!(store.term(31).unwrap(), 4);
        let sync_context = GetEntriesContext::empty(false);
        let from_memory = store
            .entries(1, 32, None, sync_context)
            .expect("unapplied are in memory");
        assert_eq!(from_memory, written);

        // Applied entries leave memory (budget 0); a request that may wait gets them later.
        store.advance_applied(31);
        let async_context = GetEntriesContext::empty(true);
        assert!(matches!(
            store.entries(1, 32, None, async_context),
            Err(raft::Error::Store(
                RaftStorageError::LogTemporarilyUnavailable
            ))
        ));
        assert!(store.fetch().await.expect("fetch").is_some());
        let from_disk = store.entries(1, 32, None, async_context).expect("fetched");
        assert_eq!(from_disk.len(), 31);
        for (read, written) in from_disk.iter().zip(&written) {
            assert!(same(read, written), "{read:?} vs {written:?}");
        }
        let limited = store
            .entries(1, 32, Some(1), async_context)
            .expect("fetched");
        assert_eq!(limited.len(), 1, "max_size keeps at least one");

        // A restart with commit 20: 21..=31 answer synchronously at once.
        drop(store);
        let image = disk.crash_image(CrashMode::PowerCut);
        let store = LogStore::open(open_log(&image).await, start(20, 0))
            .await
            .expect("reopen");
        let unapplied = store
            .entries(21, 32, None, sync_context)
            .expect("loaded at open");
        assert_eq!(unapplied.len(), 11);
        for (read, written) in unapplied.iter().zip(&written[20..]) {
            assert!(same(read, written));
        }
    });
}

#[test]
fn the_stores_of_a_shard_share_one_budget_for_applied_entries() {
    run(|| async {
        const SHARD_BYTES: usize = 8 << 10;
        let budget = RecentBudget::new(SHARD_BYTES);
        let mut stores = Vec::new();
        for _ in 0..4 {
            let start = LogStoreStart {
                recent_budget: Some(budget.clone()),
                ..start(0, 1 << 20)
            };
            let store = LogStore::open(open_log(&SimDisk::new()).await, start)
                .await
                .expect("store");
            stores.push(store);
        }
        assert_eq!((budget.stores(), budget.share()), (4, SHARD_BYTES / 4));
        let written = sample_entries();
        for store in &stores {
            store.append(&written).await.expect("append");
            store.sync().await.expect("sync");
            // Unapplied entries stay whatever the budget: raft-rs reads them synchronously.
            assert!(store.recent_bytes() > SHARD_BYTES);
        }
        for store in &stores {
            store.advance_applied(31);
            let held = store.recent_bytes();
            assert!(held <= SHARD_BYTES / 4 && held > 0, "{held} bytes held");
        }
        // What left memory comes back from the log, the same.
        let context = GetEntriesContext::empty(true);
        let store = &stores[0];
        assert!(store.entries(1, 32, None, context).is_err());
        assert!(store.fetch().await.expect("fetch").is_some());
        let read = store.entries(1, 32, None, context).expect("fetched");
        assert!(read.iter().zip(&written).all(|(r, w)| same(r, w)));
        store.release_fetched();

        // The stores that go give their shares back: the one left keeps more.
        stores.truncate(1);
        assert_eq!((budget.stores(), budget.share()), (1, SHARD_BYTES));
        let store = &stores[0];
        let more: Vec<Entry> = (32..=60)
            .map(|i| entry(i, 4, EntryType::EntryNormal, producer_batch(i as usize)))
            .collect();
        store.append(&more).await.expect("append");
        store.sync().await.expect("sync");
        store.advance_applied(60);
        let held = store.recent_bytes();
        assert!(
            held <= SHARD_BYTES && held > SHARD_BYTES / 2,
            "{held} bytes held"
        );
    });
}

#[test]
fn a_conflicting_suffix_is_replaced() {
    run(|| async {
        let disk = SimDisk::new();
        let store = LogStore::open(open_log(&disk).await, start(0, 1 << 20))
            .await
            .expect("store");
        store.append(&sample_entries()[..20]).await.expect("append");
        let replacement: Vec<Entry> = (12..=14)
            .map(|i| {
                entry(
                    i,
                    7,
                    EntryType::EntryNormal,
                    producer_batch(100 + i as usize),
                )
            })
            .collect();
        store
            .append(&replacement)
            .await
            .expect("append over a conflict");
        store.sync().await.expect("sync");
        assert_eq!(store.last_index().unwrap(), 14);
        assert_eq!(store.term(11).unwrap(), 2);
        assert_eq!(store.term(12).unwrap(), 7);
        let read = store
            .entries(12, 15, None, GetEntriesContext::empty(false))
            .expect("entries");
        assert_eq!(read, replacement);
        let image = disk.crash_image(CrashMode::PowerCut);
        let log = open_log(&image).await;
        assert_eq!((log.last_index(), log.last_term()), (14, 7));
    });
}

/// A one-node group: campaign, propose, persist every Ready through the store and the meta
/// store, apply; then a power cut, and the group restarts where it was.
#[test]
fn a_one_node_group_commits_through_the_store_and_restarts() {
    run(|| async {
        let disk = SimDisk::new();
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raft_config = |applied| Config {
            id: 1,
            applied,
            ..Config::default()
        };
        let mut meta = RaftMetaStore::open(disk.clone(), Path::new("/data"))
            .await
            .expect("meta");
        let initial = GroupMeta {
            conf_state: ConfState {
                voters: vec![1],
                ..ConfState::default()
            },
            ..GroupMeta::default()
        };
        meta.save(&[(7, initial.clone())]).await.expect("save");
        let store_start = LogStoreStart {
            raft_state: RaftState::new(HardState::default(), initial.conf_state.clone()),
            recent_bytes_max: 1 << 20,
            ..LogStoreStart::default()
        };
        let store = LogStore::open(open_log(&disk).await, store_start)
            .await
            .expect("store");
        let mut node = RawNode::new(&raft_config(0), store, &logger).expect("node");
        let (proposed, committed_data) = drive(&mut node, &mut meta, &initial).await;
        assert!(proposed, "the node became leader");
        assert!(
            committed_data
                .iter()
                .any(|data| !data.is_empty() && data[16..] == producer_batch(1)[16..]),
            "the batch was committed"
        );
        let last = (
            node.raft.raft_log.last_index(),
            node.raft.raft_log.last_term(),
        );
        assert_eq!(last.0, 2, "the leader's empty entry and the batch");
        drop(node);

        let image = disk.crash_image(CrashMode::PowerCut);
        let meta = RaftMetaStore::open(image.clone(), Path::new("/data"))
            .await
            .expect("meta");
        let saved = meta.get(7).expect("group 7").clone();
        assert_eq!(saved.hard_state.commit, 2);
        let store_start = LogStoreStart {
            raft_state: RaftState::new(saved.hard_state.clone(), saved.conf_state.clone()),
            recent_bytes_max: 1 << 20,
            ..LogStoreStart::default()
        };
        let store = LogStore::open(open_log(&image).await, store_start)
            .await
            .expect("store");
        let node =
            RawNode::new(&raft_config(saved.hard_state.commit), store, &logger).expect("restart");
        assert_eq!(
            (
                node.raft.raft_log.last_index(),
                node.raft.raft_log.last_term()
            ),
            last
        );
        assert_eq!(node.raft.term, saved.hard_state.term);
    });
}

/// Runs a one-node group for a few rounds: campaigns, proposes one batch once leader, and
/// persists every `Ready` (entries through the store, hard state through the meta store)
/// before advancing. Returns whether it proposed, and the data of the committed entries.
async fn drive(
    node: &mut RawNode<LogStore<SimDisk>>,
    meta: &mut RaftMetaStore<SimDisk>,
    initial: &GroupMeta,
) -> (bool, Vec<Vec<u8>>) {
    node.campaign().expect("campaign");
    let mut proposed = false;
    let mut committed_data = Vec::new();
    for _ in 0..20 {
        if node.raft.state == raft::StateRole::Leader && !proposed {
            node.propose(Vec::new(), producer_batch(1))
                .expect("propose");
            proposed = true;
        }
        if !node.has_ready() {
            continue;
        }
        let mut ready = node.ready();
        node.store()
            .append(ready.entries())
            .await
            .expect("persist entries");
        if let Some(hard_state) = ready.hs() {
            let group = GroupMeta {
                hard_state: hard_state.clone(),
                ..initial.clone()
            };
            meta.save(&[(7, group)]).await.expect("hard state");
            node.store().set_hard_state(hard_state.clone());
        }
        node.store().sync().await.expect("durable");
        for entry in ready.take_committed_entries() {
            committed_data.push(entry.data.to_vec());
        }
        let mut light = node.advance(ready);
        if let Some(commit) = light.commit_index() {
            let group = GroupMeta {
                hard_state: HardState {
                    commit,
                    ..node.raft.hard_state()
                },
                ..initial.clone()
            };
            meta.save(&[(7, group)]).await.expect("commit");
        }
        for entry in light.take_committed_entries() {
            committed_data.push(entry.data.to_vec());
        }
        node.advance_apply();
    }
    (proposed, committed_data)
}

#[test]
fn the_meta_store_keeps_the_last_record_per_group() {
    run(|| async {
        let disk = SimDisk::new();
        let dir = Path::new("/data");
        let mut store = RaftMetaStore::open(disk.clone(), dir).await.expect("open");
        let meta = |term, commit| GroupMeta {
            hard_state: HardState {
                term,
                vote: 2,
                commit,
            },
            conf_state: ConfState {
                voters: vec![1, 2, 3],
                ..ConfState::default()
            },
            snapshot_index: 5,
            snapshot_term: 1,
        };
        for round in 0..300_u64 {
            store
                .save(&[(1, meta(round, round)), (2, meta(round + 1, 0))])
                .await
                .expect("save");
        }
        let image = disk.crash_image(CrashMode::PowerCut);
        let reopened = RaftMetaStore::open(image.clone(), dir)
            .await
            .expect("reopen");
        assert_eq!(reopened.get(1), Some(&meta(299, 299)));
        assert_eq!(reopened.get(2), Some(&meta(300, 0)));
        assert_eq!(reopened.get(3), None);

        // A torn last record is a tail never acknowledged; damage before a valid one is not.
        let path = dir.join(RAFT_META_FILE);
        let len = image
            .contents(&path)
            .expect("file")
            .iter()
            .rposition(|&b| b != 0)
            .expect("data");
        let torn = image.crash_image(CrashMode::ProcessCrash);
        torn.corrupt(&path, |bytes| bytes[len] ^= 0xff);
        let after_tear = RaftMetaStore::open(torn, dir)
            .await
            .expect("torn tail ignored");
        assert_eq!(
            after_tear.get(2),
            Some(&meta(299, 0)),
            "the record before the tear"
        );
        let damaged = image.crash_image(CrashMode::ProcessCrash);
        damaged.corrupt(&path, |bytes| bytes[20] ^= 0xff);
        assert!(
            RaftMetaStore::open(damaged, dir).await.is_err(),
            "damage before valid records"
        );
    });
}

#[test]
fn the_meta_store_compacts_when_old_records_dominate() {
    run(|| async {
        let disk = SimDisk::new();
        let dir = Path::new("/data");
        let mut store = RaftMetaStore::open(disk.clone(), dir).await.expect("open");
        let meta = |commit| GroupMeta {
            hard_state: HardState {
                term: 1,
                vote: 1,
                commit,
            },
            ..GroupMeta::default()
        };
        for commit in 0..20_000_u64 {
            store.save(&[(9, meta(commit))]).await.expect("save");
        }
        let size = disk.file_len(&dir.join(RAFT_META_FILE)).expect("file");
        assert!(size < 2 << 20, "compacted to {size} bytes");
        let reopened = RaftMetaStore::open(disk.crash_image(CrashMode::PowerCut), dir)
            .await
            .expect("reopen");
        assert_eq!(reopened.get(9), Some(&meta(19_999)));
    });
}

/// Runs one `Ready` of `node` (persisting through its store) and returns the messages it
/// sends; then serves an entry fetch raft-rs asked for, if any.
async fn step_ready(node: &mut RawNode<LogStore<SimDisk>>) -> Vec<raft::eraftpb::Message> {
    let mut out = Vec::new();
    if node.has_ready() {
        let mut ready = node.ready();
        out.extend(ready.take_messages());
        node.store().append(ready.entries()).await.expect("persist");
        if let Some(hard_state) = ready.hs() {
            node.store().set_hard_state(hard_state.clone());
        }
        node.store().sync().await.expect("durable");
        out.extend(ready.take_persisted_messages());
        let applied = ready.committed_entries().last().map(|e| e.index);
        let mut light = node.advance(ready);
        out.extend(light.take_messages());
        let applied = light
            .committed_entries()
            .last()
            .map(|e| e.index)
            .or(applied);
        if let Some(index) = applied {
            node.store().advance_applied(index);
        }
        node.advance_apply();
    }
    if let Some(context) = node.store().fetch().await.expect("fetch") {
        node.on_entries_fetched(context);
    }
    out
}

/// Three nodes; node 2 is cut off while nodes 1 and 3 commit 30 entries and node 1 lets them
/// leave memory. Healed, node 2 catches up from node 1's disk through the asynchronous fetch
/// (`LogTemporarilyUnavailable`, `fetch`, `on_entries_fetched`), and the three logs hold the
/// same bytes: every replica stamps an entry alike.
#[test]
fn a_lagging_follower_catches_up_from_disk_and_the_logs_are_identical() {
    run(|| async {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let voters = ConfState {
            voters: vec![1, 2, 3],
            ..ConfState::default()
        };
        let mut nodes = Vec::new();
        for id in 1..=3_u64 {
            let start = LogStoreStart {
                raft_state: RaftState::new(HardState::default(), voters.clone()),
                recent_bytes_max: 0,
                ..LogStoreStart::default()
            };
            let store = LogStore::open(open_log(&SimDisk::new()).await, start)
                .await
                .expect("store");
            let config = Config {
                id,
                ..Config::default()
            };
            nodes.push(RawNode::new(&config, store, &logger).expect("node"));
        }
        nodes[0].campaign().expect("campaign");
        let mut proposals = 0;
        for round in 0..400 {
            let healed = round >= 150;
            if nodes[0].raft.state == raft::StateRole::Leader && proposals < 30 && round % 3 == 0 {
                nodes[0]
                    .propose(Vec::new(), producer_batch(proposals))
                    .expect("propose");
                proposals += 1;
            }
            if round == 150 {
                assert_eq!(nodes[1].store().log().last_index(), 0, "node 2 was cut off");
                assert!(
                    nodes[0].store().log().last_index() >= 31,
                    "nodes 1 and 3 went on"
                );
            }
            if healed {
                nodes[0].tick();
            }
            let mut mail = Vec::new();
            for node in &mut nodes {
                mail.extend(step_ready(node).await);
            }
            for message in mail {
                if !healed && (message.to == 2 || message.from == 2) {
                    continue;
                }
                let to = message.to as usize - 1;
                let _ = nodes[to].step(message);
            }
        }
        assert!(
            nodes[0].store().fetches() > 0,
            "node 1 served node 2 from disk"
        );
        let leader_last = nodes[0].store().log().last_index();
        assert!(leader_last >= 31, "the empty entry and 30 batches");
        let mut logs = Vec::new();
        for node in &nodes {
            let log = node.store().log();
            assert_eq!(
                log.last_index(),
                leader_last,
                "node {} caught up",
                node.raft.id
            );
            let entries = log
                .read_entries(1, leader_last + 1, usize::MAX)
                .await
                .expect("entries");
            logs.push(entries);
        }
        assert_eq!(logs[0], logs[1], "the follower that caught up from disk");
        assert_eq!(logs[0], logs[2]);
    });
}

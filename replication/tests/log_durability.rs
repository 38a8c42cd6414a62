//! Guards the shard's durability barrier over many groups (`LogDurability` in
//! `replication/src/log_store.rs`):
//! - a round visits only the stores that staged something since the previous round, so a
//!   shard's quiet groups cost a busy one nothing;
//! - the fdatasyncs of a round are in flight together, not one after another;
//! - a seeded simulation against a model: stores stage entries and hard states at random,
//!   tickets are requested at random, and whenever a ticket completes, a power cut at that
//!   moment keeps every entry and hard state staged before the ticket was requested.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::run;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState};
use raft::storage::RaftState;
use ringfeed_replication::driver::{Durability, GroupStore};
use ringfeed_replication::log_store::{DurabilityStats, LogDurability, LogStore, LogStoreStart};
use ringfeed_replication::log_store_meta::RaftMetaStore;
use ringfeed_storage::batch::build;
use ringfeed_storage::sim::{yield_once, CrashMode, SeededRng, SimDisk};
use ringfeed_storage::{Clock, LogConfig, PartitionLog};

fn log_dir(group: u64) -> PathBuf {
    PathBuf::from(format!("/data/t-{group}"))
}

async fn open_log(disk: &SimDisk, group: u64) -> PartitionLog<SimDisk> {
    let config = LogConfig {
        segment_bytes_max: 64 << 10,
        preallocate_step_bytes: 16 << 10,
        tail_cache_bytes_max: 0,
        ..LogConfig::default()
    };
    PartitionLog::open_on(disk.clone(), &log_dir(group), config, Clock::System)
        .await
        .expect("open")
        .0
}

async fn open_store(disk: &SimDisk, group: u64) -> LogStore<SimDisk> {
    let start = LogStoreStart {
        raft_state: RaftState::new(
            HardState::default(),
            ConfState::from((vec![1, 2, 3], vec![])),
        ),
        recent_bytes_max: 1 << 20,
        ..LogStoreStart::default()
    };
    LogStore::open(open_log(disk, group).await, start)
        .await
        .expect("store")
}

fn data_entry(group: u64, index: u64) -> Entry {
    let value = format!("g{group}-i{index}-").repeat(20);
    let batch = build::batch(&[build::Record {
        key: None,
        value: Some(value.as_bytes()),
        timestamp_ms: 1_000 + index as i64,
    }]);
    let mut entry = Entry {
        index,
        term: 1,
        data: batch.to_vec().into(),
        ..Entry::default()
    };
    entry.set_entry_type(EntryType::EntryNormal);
    entry
}

/// A shard with `groups` registered stores on one simulated disk.
struct Shard {
    disk: SimDisk,
    durability: LogDurability<SimDisk>,
    stores: Vec<LogStore<SimDisk>>,
}

async fn shard(groups: u64) -> Shard {
    let disk = SimDisk::new();
    let meta = RaftMetaStore::open(disk.clone(), Path::new("/data"))
        .await
        .expect("meta");
    let durability = LogDurability::new(meta);
    let mut stores = Vec::new();
    for group in 0..groups {
        let store = open_store(&disk, group).await;
        durability.register(group, store.clone());
        stores.push(store);
    }
    Shard {
        disk,
        durability,
        stores,
    }
}

/// Lets the worker run until `ticket` completes.
async fn wait_for(durability: &mut LogDurability<SimDisk>, ticket: u64) {
    for _ in 0..100_000 {
        if durability.durable_ticket() >= ticket {
            return;
        }
        yield_once().await;
    }
    panic!(
        "ticket {ticket} did not complete: {:?}",
        durability.failed()
    );
}

#[test]
fn a_round_visits_only_the_stores_that_staged() {
    run(|| async {
        let mut shard = shard(100).await;
        // The first round takes every store: registering queues whatever it staged before.
        let ticket = shard.durability.start_sync();
        wait_for(&mut shard.durability, ticket).await;
        let after_registering = shard.durability.stats();
        assert_eq!(after_registering.stores_synced, 100);

        for group in [3_u64, 50, 97] {
            let store = &mut shard.stores[group as usize];
            store.stage(&[data_entry(group, 1)]).expect("stage");
            // A store staging twice is visited once.
            store
                .stage_hard_state(&HardState {
                    term: 1,
                    vote: 1,
                    commit: 0,
                })
                .expect("stage");
        }
        let ticket = shard.durability.start_sync();
        wait_for(&mut shard.durability, ticket).await;
        assert_eq!(
            shard.durability.stats(),
            DurabilityStats {
                rounds: after_registering.rounds + 1,
                stores_synced: 100 + 3,
            }
        );
        for group in [3_u64, 50, 97] {
            let log = shard.stores[group as usize].log();
            assert_eq!(log.last_index(), 1);
            assert!(log.durable_offset() >= log.log_end_offset());
        }

        // Nothing staged: a round with no store in it.
        let ticket = shard.durability.start_sync();
        wait_for(&mut shard.durability, ticket).await;
        assert_eq!(shard.durability.stats().stores_synced, 100 + 3);

        // An unregistered store is left out even though it staged.
        shard.stores[3].stage(&[data_entry(3, 2)]).expect("stage");
        shard.durability.unregister(3);
        let ticket = shard.durability.start_sync();
        wait_for(&mut shard.durability, ticket).await;
        assert_eq!(shard.durability.stats().stores_synced, 100 + 3);
        assert_eq!(shard.stores[3].log().last_index(), 1);

        // Unregistered and registered again (a new store over the same log) before a round:
        // the group's id is queued twice and the round takes its store once.
        shard.stores[50].stage(&[data_entry(50, 2)]).expect("stage");
        shard.durability.unregister(50);
        let reopened = open_store(&shard.disk, 50).await;
        shard.durability.register(50, reopened.clone());
        reopened.stage(&[data_entry(50, 2)]).expect("stage");
        let ticket = shard.durability.start_sync();
        wait_for(&mut shard.durability, ticket).await;
        assert_eq!(shard.durability.stats().stores_synced, 100 + 3 + 1);
        assert_eq!(reopened.log().last_index(), 2);
    });
}

#[test]
fn a_round_waits_for_its_fdatasyncs_together() {
    run(|| async {
        let mut shard = shard(8).await;
        let ticket = shard.durability.start_sync();
        wait_for(&mut shard.durability, ticket).await;

        shard.disk.stall_fdatasyncs();
        for group in 0..5_u64 {
            shard.stores[group as usize]
                .stage(&[data_entry(group, 1)])
                .expect("stage");
        }
        let ticket = shard.durability.start_sync();
        for _ in 0..1_000 {
            yield_once().await;
        }
        assert_eq!(
            shard.disk.stalled_fdatasyncs(),
            5,
            "the five stores' fdatasyncs are in flight at once"
        );
        assert!(shard.durability.durable_ticket() < ticket);
        shard.disk.release_fdatasyncs();
        wait_for(&mut shard.durability, ticket).await;
        assert_eq!(shard.disk.stalled_fdatasyncs(), 0);
    });
}

/// What the model says each store has staged: its last entry index and hard state.
#[derive(Debug, Clone, Default, PartialEq)]
struct StagedModel {
    last_index: u64,
    hard_state: Option<HardState>,
}

#[test]
fn a_completed_ticket_survives_a_power_cut_seeded() {
    const GROUPS: u64 = 12;
    for seed in 0..12_u64 {
        run(move || async move {
            let mut rng = SeededRng::new(seed);
            let mut shard = shard(GROUPS).await;
            let mut staged = vec![StagedModel::default(); GROUPS as usize];
            // Ticket -> what was staged when it was requested.
            let mut requested: BTreeMap<u64, Vec<StagedModel>> = BTreeMap::new();
            let mut checked_up_to = 0;
            for _ in 0..400 {
                let group = rng.below(GROUPS);
                let model = &mut staged[group as usize];
                let store = &mut shard.stores[group as usize];
                match rng.below(10) {
                    0..=3 => {
                        let count = rng.range(1, 3);
                        let entries: Vec<Entry> = (1..=count)
                            .map(|i| data_entry(group, model.last_index + i))
                            .collect();
                        store.stage(&entries).expect("stage");
                        model.last_index += count;
                    }
                    4..=5 => {
                        let hard_state = HardState {
                            term: 1,
                            vote: 1,
                            commit: model.last_index,
                        };
                        store.stage_hard_state(&hard_state).expect("stage");
                        model.hard_state = Some(hard_state);
                    }
                    6..=7 => {
                        let ticket = shard.durability.start_sync();
                        requested.insert(ticket, staged.clone());
                    }
                    _ => {
                        for _ in 0..rng.below(20) {
                            yield_once().await;
                        }
                    }
                }
                let durable = shard.durability.durable_ticket();
                if durable > checked_up_to {
                    // The newest completed ticket bounds the older ones.
                    let expected = requested[&durable].clone();
                    check_power_cut(&shard.disk, &expected).await;
                    checked_up_to = durable;
                }
            }
            assert!(checked_up_to > 0, "seed {seed}: no ticket completed");
            assert!(shard.durability.failed().is_none());
        });
    }
}

/// A power cut now keeps, for every group, at least the entries and the hard state the
/// model had staged (hard states only move forward here, so a later one may have landed).
async fn check_power_cut(disk: &SimDisk, expected: &[StagedModel]) {
    let image = disk.crash_image(CrashMode::PowerCut);
    let meta = RaftMetaStore::open(image.clone(), Path::new("/data"))
        .await
        .expect("meta after the power cut");
    for (group, model) in (0_u64..).zip(expected) {
        let log = open_log(&image, group).await;
        assert!(
            log.last_index() >= model.last_index,
            "group {group}: {} entries survived, {} were acknowledged",
            log.last_index(),
            model.last_index
        );
        if let Some(hard_state) = &model.hard_state {
            let saved = meta
                .get(group)
                .unwrap_or_else(|| panic!("group {group}: no hard state survived"));
            assert!(
                saved.hard_state.commit >= hard_state.commit,
                "group {group}: saved {:?}, acknowledged {hard_state:?}",
                saved.hard_state
            );
            assert!(
                saved.hard_state.commit <= log.last_index(),
                "group {group}: a commit index past the entries that survived"
            );
        }
    }
}

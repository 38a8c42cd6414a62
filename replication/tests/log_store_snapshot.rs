//! Guards snapshots of a partition's group (`LogStore::snapshot`, `stage_snapshot` in
//! `replication/src/log_store.rs`): a leader's snapshot is its first entry as its log stores
//! it, read from disk before it is offered; a follower that installs one gives its whole log
//! up for that entry, serves raft-rs's reads from the snapshot point at once, and appends
//! after it; a store that does not serve snapshots (the controller's) never makes one.

mod common;

use common::run;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState, Snapshot};
use raft::storage::{RaftState, Storage};
use raft::{Error as RaftError, StorageError};
use ringfeed_replication::driver::GroupStore;
use ringfeed_replication::log_store::{snapshot_data, LogStore, LogStoreStart};
use ringfeed_storage::batch::build;
use ringfeed_storage::sim::SimDisk;
use ringfeed_storage::{Clock, LogConfig, PartitionLog};

async fn open_store(disk: &SimDisk, name: &str, serves_snapshots: bool) -> LogStore<SimDisk> {
    open_store_from(disk, name, serves_snapshots, 0, 0).await
}

async fn open_store_from(
    disk: &SimDisk,
    name: &str,
    serves_snapshots: bool,
    snapshot_index: u64,
    snapshot_term: u64,
) -> LogStore<SimDisk> {
    let config = LogConfig {
        segment_bytes_max: 8 << 10,
        preallocate_step_bytes: 16 << 10,
        // Retention removes every sealed segment the index limit lets it.
        retention_bytes: Some(1),
        ..LogConfig::default()
    };
    let log = PartitionLog::open_on(
        disk.clone(),
        std::path::Path::new(&format!("/data/{name}")),
        config,
        Clock::System,
    )
    .await
    .expect("open")
    .0;
    let start = LogStoreStart {
        raft_state: RaftState::new(
            HardState::default(),
            ConfState::from((vec![1, 2, 3], vec![])),
        ),
        snapshot_index,
        snapshot_term,
        recent_bytes_max: 1 << 20,
        recent_budget: None,
        serves_snapshots,
    };
    LogStore::open(log, start).await.expect("store")
}

fn data_entry(index: u64, term: u64, label: &str) -> Entry {
    let value = format!("{label}-{index}-").repeat(100);
    let batch = build::batch(&[build::Record {
        key: None,
        value: Some(value.as_bytes()),
        timestamp_ms: 1_000 + index as i64,
    }]);
    let mut entry = Entry {
        index,
        term,
        data: batch.to_vec().into(),
        ..Entry::default()
    };
    entry.set_entry_type(EntryType::EntryNormal);
    entry
}

/// Appends entries `first..=last` of `term` and marks them applied.
async fn append_applied(store: &LogStore<SimDisk>, first: u64, last: u64, term: u64, label: &str) {
    let entries: Vec<Entry> = (first..=last)
        .map(|index| data_entry(index, term, label))
        .collect();
    store.append(&entries).await.expect("append");
    store.sync().await.expect("sync");
    store.advance_applied(last);
}

fn unavailable<T: std::fmt::Debug>(result: &raft::Result<T>) -> bool {
    matches!(
        result,
        Err(RaftError::Store(
            StorageError::SnapshotTemporarilyUnavailable
        ))
    )
}

/// The leader's snapshot of a log whose first entry is `index`.
async fn leader_snapshot(leader: &LogStore<SimDisk>) -> Snapshot {
    assert!(unavailable(&leader.snapshot(0, 2)), "read from disk first");
    assert!(leader.wants_fetch());
    assert!(leader.fetch().await.expect("read").is_none());
    leader.snapshot(0, 2).expect("a snapshot once read")
}

/// A leader store on `disk` with entries `1..=last` of `term` applied, whose retention then
/// removed what it could below index `below`: its first entry is past index 1.
async fn leader_past_retention(
    disk: &SimDisk,
    last: u64,
    term: u64,
    below: u64,
) -> LogStore<SimDisk> {
    let leader = open_store(disk, "leader", true).await;
    append_applied(&leader, 1, last, term, "lead").await;
    leader
        .log()
        .enforce_retention_below_index(below)
        .await
        .expect("retention");
    leader
}

#[test]
fn a_leader_offers_its_first_applied_entry_once_read_from_disk() {
    run(|| async {
        let disk = SimDisk::new();
        // Retention moves the first entry on.
        let leader = leader_past_retention(&disk, 20, 3, 20).await;
        let first = leader.log().first_index();
        assert!(first > 1 && first <= 20, "first index {first}");

        let snapshot = leader_snapshot(&leader).await;
        let stored = leader
            .log()
            .read_entries(first, first + 1, 0)
            .await
            .expect("read");
        assert_eq!(snapshot.get_metadata().index, first);
        assert_eq!(snapshot.get_metadata().term, 3);
        assert_eq!(snapshot.get_metadata().get_conf_state().voters, [1, 2, 3]);
        assert_eq!(
            snapshot.data,
            snapshot_data(leader.log().log_start_offset(), &stored[0].batch)
        );
        assert_eq!(leader.snapshots_made(), 1);
        // The entry read is given away with the snapshot: the next one reads again.
        assert!(unavailable(&leader.snapshot(0, 2)));
        assert!(leader.wants_fetch());
    });
}

#[test]
fn no_snapshot_of_an_unapplied_entry_nor_from_a_store_that_serves_none() {
    run(|| async {
        let disk = SimDisk::new();
        let leader = open_store(&disk, "unapplied", true).await;
        let entries: Vec<Entry> = (1..=3).map(|i| data_entry(i, 1, "u")).collect();
        leader.append(&entries).await.expect("append");
        assert!(unavailable(&leader.snapshot(0, 2)));
        assert!(
            !leader.wants_fetch(),
            "no read is queued for an unapplied entry"
        );

        let controller = open_store(&disk, "controller", false).await;
        append_applied(&controller, 1, 3, 1, "c").await;
        assert!(unavailable(&controller.snapshot(0, 2)));
        assert!(!controller.wants_fetch());
        let mut controller = controller;
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 5;
        snapshot.mut_metadata().term = 1;
        assert!(controller.stage_snapshot(snapshot).is_err());
    });
}

#[test]
fn a_follower_installs_a_snapshot_and_appends_after_it() {
    run(|| async {
        let disk = SimDisk::new();
        let leader = leader_past_retention(&disk, 30, 2, 25).await;
        let snapshot = leader_snapshot(&leader).await;
        let point = snapshot.get_metadata().index;
        assert!(point > 10);

        // A follower that has a few entries of an older term, then diverged.
        let mut follower = open_store(&disk, "follower", true).await;
        append_applied(&follower, 1, 6, 1, "old").await;

        // A snapshot whose term is not its batch's epoch is refused, nothing staged.
        let mut bad = snapshot.clone();
        bad.mut_metadata().term = 7;
        assert!(follower.stage_snapshot(bad).is_err());
        // Nor one whose batch is damaged (its CRC no longer holds): refused when staged, for
        // this group alone, not when the shard's write round meets it.
        let mut damaged = snapshot.clone();
        let last = damaged.data.len() - 1;
        damaged.data[last] ^= 0xff;
        assert!(follower.stage_snapshot(damaged).is_err());
        assert_eq!(follower.last_index().unwrap(), 6);

        follower.stage_snapshot(snapshot.clone()).expect("staged");
        // raft-rs's reads see the snapshot at once, before the log is replaced.
        assert_eq!(follower.first_index().unwrap(), point + 1);
        assert_eq!(follower.last_index().unwrap(), point);
        assert_eq!(follower.term(point).unwrap(), 2);
        assert!(
            follower.term(3).is_err(),
            "entries before the snapshot are gone"
        );
        let after: Vec<Entry> = (point + 1..=point + 3)
            .map(|i| data_entry(i, 2, "after"))
            .collect();
        follower
            .stage_entries(&after)
            .expect("staged after the snapshot");
        assert_eq!(follower.last_index().unwrap(), point + 3);
        follower.write_staged().await.expect("written");
        follower.sync().await.expect("durable");

        let log = follower.log();
        assert_eq!(log.first_index(), point);
        assert_eq!(log.last_index(), point + 3);
        let ours = leader
            .log()
            .read_entries(point, point + 1, 0)
            .await
            .expect("read");
        let theirs = log
            .read_entries(point, point + 4, usize::MAX)
            .await
            .expect("read");
        assert_eq!(
            theirs[0].batch, ours[0].batch,
            "the leader's bytes, unchanged"
        );
        assert_eq!(theirs.len(), 4);
        assert_eq!(follower.first_index().unwrap(), point + 1);
        assert_eq!(follower.term(point + 3).unwrap(), 2);

        // Reopened (as after a restart that saved the snapshot point), the same.
        follower.log().close().await.expect("closed");
        let reopened = open_store_from(&disk, "follower", true, point, 2).await;
        assert_eq!(reopened.first_index().unwrap(), point + 1);
        assert_eq!(reopened.last_index().unwrap(), point + 3);
        assert_eq!(reopened.term(point).unwrap(), 2);
        // And without it (a crash before the hard state was saved): the log's own start.
        reopened.log().close().await.expect("closed");
        let reopened = open_store(&disk, "follower", true).await;
        assert_eq!(reopened.first_index().unwrap(), point);
        assert_eq!(reopened.term(point).unwrap(), 2);
    });
}

#[test]
fn a_follower_takes_its_leaders_log_start_once_it_holds_everything_below_it() {
    run(|| async {
        let disk = SimDisk::new();
        let leader = leader_past_retention(&disk, 30, 2, 25).await;
        // The leader's DeleteRecords moved its start past its first entry: one record per
        // entry, so the start lies three entries further on.
        let first_offset = leader.log().log_start_offset();
        let deleted_start = first_offset + 3;
        leader
            .log()
            .advance_log_start(deleted_start)
            .await
            .expect("raised");
        let snapshot = leader_snapshot(&leader).await;
        let point = snapshot.get_metadata().index;

        let mut follower = open_store(&disk, "follower", true).await;
        follower.stage_snapshot(snapshot).expect("staged");
        follower.write_staged().await.expect("written");
        follower.sync().await.expect("durable");
        // The follower holds only the snapshot's entry: it cannot start past what it holds.
        assert_eq!(follower.log().log_start_offset(), first_offset);

        follower
            .stage_entries(&[data_entry(point + 1, 2, "after")])
            .expect("staged");
        follower.write_staged().await.expect("written");
        follower.sync().await.expect("durable");
        assert_eq!(follower.log().log_start_offset(), first_offset);

        // The entries that reach the leader's start: raised in the round that makes them
        // durable, and durably (a reopened log starts there too).
        follower
            .stage_entries(&[
                data_entry(point + 2, 2, "after"),
                data_entry(point + 3, 2, "after"),
            ])
            .expect("staged");
        follower.write_staged().await.expect("written");
        follower.sync().await.expect("durable");
        assert_eq!(follower.log().log_start_offset(), deleted_start);
        follower.log().close().await.expect("closed");
        let reopened = open_store_from(&disk, "follower", true, point, 2).await;
        assert_eq!(reopened.log().log_start_offset(), deleted_start);
    });
}

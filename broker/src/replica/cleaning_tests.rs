//! Guards the log cleaner on a replicated partition (three managers over the simulated
//! network of `replica::tests`, passes run as the shard's cleaner runs them,
//! `compaction::clean_replicated`): a pass cleans committed entries only, every replica
//! keeps every entry's index, offsets and term, and a follower that copies entries its
//! leader already cleaned ends up with the same latest values.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::compaction::clean_replicated;
use crate::error_codes as codes;
use crate::replica::tests::{run, tp, Cluster, GROUP};
use crate::storage::batch::{build, read_varint, BatchHeader, BATCH_HEADER_BYTES};
use crate::storage::{CleanOptions, LogConfig, StoredEntry};

/// Keys the workload cycles through: most records are superseded.
const KEYS: usize = 5;

/// One record: (offset, key, value).
type Rec = (i64, Vec<u8>, Vec<u8>);

/// Batch `n` of the workload: one record of key `k{n % KEYS}` whose value starts with `n`.
/// 7 KB each: a follower 150 batches behind is past what its leader keeps in memory
/// (`manager::RECENT_BYTES_MAX`) and is served from the leader's segments.
fn keyed(n: usize) -> Bytes {
    let key = format!("k{}", n % KEYS);
    let value = format!("{n:06}-{}", "x".repeat(7_000));
    build::batch(&[build::Record {
        key: Some(key.as_bytes()),
        value: Some(value.as_bytes()),
        timestamp_ms: 1_000,
    }])
}

/// Produces batches `range` on `leader`, one call each; waits for their answers when
/// `wait`, and returns the calls' answer cells.
async fn produce(
    cluster: &mut Cluster,
    leader: u64,
    range: std::ops::Range<usize>,
    wait: bool,
) -> Vec<std::rc::Rc<std::cell::RefCell<Option<crate::replica::ReplicaProduce>>>> {
    let manager = cluster.manager(leader);
    let cells: Vec<_> = range
        .map(|n| {
            let pending = manager.dispatch_produce(&tp(), vec![keyed(n)], -1);
            let cell = std::rc::Rc::new(std::cell::RefCell::new(None));
            let sink = cell.clone();
            glommio::spawn_local(async move {
                *sink.borrow_mut() = Some(pending.wait().await);
            })
            .detach();
            cell
        })
        .collect();
    if wait {
        cluster.until_answered(&cells).await;
        for cell in &cells {
            assert_eq!(cell.borrow().expect("answered").error_code, codes::NONE);
        }
    }
    cells
}

/// The records of an uncompressed data batch.
fn records_of(batch: &[u8]) -> Vec<Rec> {
    let header = BatchHeader::parse(batch).expect("a batch");
    if header.is_control() {
        return Vec::new();
    }
    let mut rest = &batch[BATCH_HEADER_BYTES..];
    let mut out = Vec::new();
    for _ in 0..header.record_count {
        let length = read_varint(&mut rest).expect("length") as usize;
        let (record, tail) = rest.split_at(length);
        rest = tail;
        let mut fields = &record[1..];
        read_varint(&mut fields).expect("timestamp delta");
        let offset_delta = read_varint(&mut fields).expect("offset delta");
        let key_length = read_varint(&mut fields).expect("key length") as usize;
        let key = fields[..key_length].to_vec();
        fields = &fields[key_length..];
        let value_length = read_varint(&mut fields).expect("value length") as usize;
        let value = fields[..value_length].to_vec();
        out.push((header.base_offset + offset_delta, key, value));
    }
    out
}

async fn entries(cluster: &Cluster, id: u64) -> Vec<StoredEntry> {
    let log = cluster.manager(id).log(GROUP).expect("hosted");
    log.read_entries(log.first_index(), log.last_index() + 1, usize::MAX)
        .await
        .expect("entries")
}

fn all_records(entries: &[StoredEntry]) -> Vec<Rec> {
    entries.iter().flat_map(|e| records_of(&e.batch)).collect()
}

/// What identifies an entry whatever the cleaner did: index, term, offsets, producer.
fn identity(entry: &StoredEntry) -> (u64, i32, i64, i64, i64) {
    let header = BatchHeader::parse(&entry.batch).expect("a batch");
    (
        entry.index,
        entry.term,
        header.base_offset,
        header.last_offset(),
        header.producer_id,
    )
}

/// The latest record of each key among `records` below offset `end`.
fn latest_below(records: &[Rec], end: i64) -> BTreeMap<Vec<u8>, Rec> {
    let mut latest = BTreeMap::new();
    for rec in records.iter().filter(|r| r.0 < end) {
        latest.insert(rec.1.clone(), rec.clone());
    }
    latest
}

async fn clean(cluster: &Cluster, id: u64) -> crate::storage::CleanOutcome {
    let manager = cluster.manager(id);
    let log = manager.log(GROUP).expect("hosted");
    clean_replicated(&manager, &tp(), &log, &CleanOptions::default())
        .await
        .expect("hosted")
        .expect("cleaned")
}

fn small_segments(cluster: &Cluster) {
    for id in 1..=3 {
        // No tail cache: entries are read back from the (cleaned) segments, not from
        // memory as they were appended.
        let config = LogConfig {
            segment_bytes_max: 4 << 10,
            tail_cache_bytes_max: 0,
            ..LogConfig::default()
        };
        cluster
            .manager(id)
            .log(GROUP)
            .expect("hosted")
            .set_config(config);
    }
}

#[test]
fn a_leader_cleans_only_what_is_committed_and_followers_copy_what_it_cleaned() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        small_segments(&cluster);
        let leader = cluster.elect().await;
        let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
        produce(&mut cluster, leader, 0..60, true).await;
        cluster.steps(5).await;
        let leader_manager = cluster.manager(leader);
        let committed_end = leader_manager.high_watermark(GROUP).expect("hosted");
        let committed = all_records(&entries(&cluster, leader).await);

        // Both followers cut off: what the leader appends now is durable on its disk, in
        // sealed segments, and not committed.
        for &id in &followers {
            cluster.set_cut(id, true);
        }
        let _uncommitted = produce(&mut cluster, leader, 60..120, false).await;
        cluster.steps(10).await;
        let leader_log = leader_manager.log(GROUP).expect("hosted");
        leader_log
            .wait_written(leader_log.log_end_offset() - 1)
            .await
            .expect("written");
        assert_eq!(
            leader_manager.high_watermark(GROUP),
            Some(committed_end),
            "nothing more committed without the followers"
        );
        let before = entries(&cluster, leader).await;
        let outcome = clean(&cluster, leader).await;
        let after = entries(&cluster, leader).await;
        assert!(
            outcome.records_removed > 0,
            "the pass removed superseded records"
        );
        assert!(
            outcome.clean_end_offset <= committed_end,
            "cleaned to {} past the high watermark {committed_end}",
            outcome.clean_end_offset
        );
        assert_eq!(before.len(), after.len(), "every entry stays");
        for (old, new) in before.iter().zip(&after) {
            assert_eq!(identity(old), identity(new));
            let base = BatchHeader::parse(&old.batch).expect("a batch").base_offset;
            if base >= committed_end {
                assert_eq!(old.batch, new.batch, "an uncommitted entry changed");
            }
        }
        // The committed records' latest values all stay, though later uncommitted records
        // of the same keys sit in sealed segments (Raft may still truncate those).
        let kept = all_records(&after);
        for rec in latest_below(&committed, committed_end).values() {
            assert!(
                kept.contains(rec),
                "committed latest {rec:?} was cleaned away"
            );
        }

        // Healed: the followers copy the rest, then clean their own logs.
        for &id in &followers {
            cluster.set_cut(id, false);
        }
        cluster.steps(40).await;
        let end = leader_manager.high_watermark(GROUP).expect("hosted");
        assert!(end >= 120, "the rest committed: high watermark {end}");
        let produced = all_records(&before);
        for id in 1..=3 {
            clean(&cluster, id).await;
            let log = entries(&cluster, id).await;
            let leader_entries = entries(&cluster, leader).await;
            assert_eq!(
                log.iter().map(identity).collect::<Vec<_>>(),
                leader_entries.iter().map(identity).collect::<Vec<_>>(),
                "replica {id}: the same entries at the same indexes, offsets and terms"
            );
            let held = all_records(&log);
            assert_eq!(
                latest_below(&held, end),
                latest_below(&produced, end),
                "replica {id}: the latest value of every key"
            );
            assert!(held.len() < produced.len(), "replica {id} compacted");
        }
    });
}

#[test]
fn a_follower_behind_copies_entries_its_leader_cleaned_and_agrees() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        small_segments(&cluster);
        let leader = cluster.elect().await;
        let lagging = (1..=3).find(|&id| id != leader).expect("a follower");
        produce(&mut cluster, leader, 0..20, true).await;
        cluster.steps(5).await;
        cluster.set_cut(lagging, true);
        for start in (20..200).step_by(20) {
            produce(&mut cluster, leader, start..start + 20, true).await;
        }
        cluster.steps(5).await;
        let original = entries(&cluster, leader).await;
        let outcome = clean(&cluster, leader).await;
        assert!(outcome.records_removed > 0, "the leader cleaned");
        let cleaned = entries(&cluster, leader).await;
        let lagging_last = cluster
            .manager(lagging)
            .log(GROUP)
            .expect("hosted")
            .last_index();
        assert!(
            cleaned.iter().any(|e| e.index > lagging_last
                && records_of(&e.batch).is_empty()
                && !BatchHeader::parse(&e.batch).expect("a batch").is_control()),
            "the follower has an emptied entry to copy"
        );

        cluster.set_cut(lagging, false);
        let leader_log = cluster.manager(leader).log(GROUP).expect("hosted");
        let lagging_log = cluster.manager(lagging).log(GROUP).expect("hosted");
        cluster
            .steps_until(300, "the follower caught up", |_| {
                lagging_log.last_index() == leader_log.last_index()
            })
            .await;
        assert_eq!(cluster.manager(lagging).counts().snapshots_installed, 0);
        // The entries it copied are the leader's cleaned bytes (or, for any the leader
        // served from memory, the bytes as appended), with their numbering.
        let copied = entries(&cluster, lagging).await;
        let mut copied_cleaned = 0;
        for entry in copied.iter().filter(|e| e.index > lagging_last) {
            let ours = cleaned
                .iter()
                .find(|e| e.index == entry.index)
                .expect("the leader's entry");
            assert_eq!(identity(ours), identity(entry));
            let as_appended = original.iter().find(|e| e.index == entry.index);
            if ours.batch[16..] == entry.batch[16..] {
                copied_cleaned += usize::from(as_appended.is_some_and(|o| o.batch != ours.batch));
            } else {
                assert_eq!(
                    as_appended.map(|o| &o.batch[16..]),
                    Some(&entry.batch[16..]),
                    "entry {} is neither the leader's cleaned nor its appended bytes",
                    entry.index
                );
            }
        }
        assert!(copied_cleaned > 0, "no cleaned entry was copied");
        let end = cluster
            .manager(leader)
            .high_watermark(GROUP)
            .expect("hosted");
        let produced: Vec<Rec> = (0..200)
            .map(|n| {
                let batch = keyed(n);
                let (_, key, value) = records_of(&batch).remove(0);
                (0, key, value)
            })
            .collect();
        let expected: BTreeMap<Vec<u8>, Vec<u8>> = produced
            .into_iter()
            .map(|(_, key, value)| (key, value))
            .collect();
        let held: BTreeMap<Vec<u8>, Vec<u8>> = latest_below(&all_records(&copied), end)
            .into_iter()
            .map(|(key, (_, _, value))| (key, value))
            .collect();
        assert_eq!(held, expected, "the follower's latest values");
    });
}

/// One keyed record of `producer_id` (epoch 0) at `sequence`, transactional or not.
fn producer_record(producer_id: i64, sequence: i32, key: &str, value: &str) -> Bytes {
    let batch = build::batch(&[build::Record {
        key: Some(key.as_bytes()),
        value: Some(value.as_bytes()),
        timestamp_ms: 1_000,
    }]);
    crate::replica::tests::as_producer_batch(&batch, producer_id, 0, sequence, true)
}

/// What a `read_committed` client reads from node `id` from offset 0, fetch after fetch up
/// to the last stable offset: (key, value) in order, and that offset.
async fn read_committed(cluster: &Cluster, id: u64) -> (Vec<(Vec<u8>, Vec<u8>)>, i64) {
    let mut offset = 0;
    let mut skipping = std::collections::HashSet::new();
    let mut records = Vec::new();
    loop {
        let fetched = cluster
            .manager(id)
            .fetch(
                &tp(),
                offset,
                1 << 20,
                crate::isolation::Isolation::ReadCommitted,
            )
            .await;
        assert_eq!(fetched.error_code, codes::NONE);
        let Some(last) = fetched.batches.last() else {
            return (records, fetched.last_stable_offset);
        };
        offset = BatchHeader::parse(last).expect("a batch").last_offset() + 1;
        let kept = crate::replica::tests::kept_by_read_committed(
            &fetched.batches,
            &fetched.aborted_transactions,
            &mut skipping,
        );
        records.extend(
            kept.into_iter()
                .flat_map(|batch| records_of(batch))
                .map(|(_, key, value)| (key, value)),
        );
    }
}

/// The last value read of each key.
fn latest_of(records: &[(Vec<u8>, Vec<u8>)]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    records.iter().cloned().collect()
}

/// The markers at `offsets` are in replica `id`'s entries `held`, not retired.
fn assert_live_markers(held: &[StoredEntry], offsets: &[i64], id: u64) {
    for &at in offsets {
        let batch = held
            .iter()
            .map(|e| &e.batch)
            .find(|b| BatchHeader::parse(b).is_some_and(|h| h.base_offset == at))
            .expect("the marker's entry");
        assert!(
            is_live_marker(batch),
            "replica {id}: marker at {at} retired"
        );
    }
}

/// Whether `batch` is a commit or abort marker a pass left as it was (not retired).
fn is_live_marker(batch: &Bytes) -> bool {
    use crate::storage::batch::control;
    matches!(
        control::record(batch),
        Some((control::ABORT_MARKER | control::COMMIT_MARKER, _))
    ) && BatchHeader::parse(batch).is_some_and(|h| h.is_transactional())
}

/// Producer 7 aborts a and b, producer 8 commits a, plain records follow, then producer 9
/// opens a transaction with a later a and leaves it open, and more plain records follow.
/// Returns the offsets of the abort and commit markers and of 9's open transaction.
async fn write_transactions(cluster: &mut Cluster, leader: u64) -> (i64, i64, i64) {
    use crate::replica::txn_tests::{marker, produce as produce_one, write_marker};
    for (producer_id, sequence, key, value) in [
        (7, 0, "a", "aborted-a"),
        (7, 1, "b", "aborted-b"),
        (8, 0, "a", "committed-a"),
    ] {
        let batch = producer_record(producer_id, sequence, key, value);
        let answer = produce_one(cluster, leader, batch).await;
        assert_eq!(answer.error_code, codes::NONE);
    }
    let abort = write_marker(cluster, leader, marker(7, 0, false))
        .await
        .expect("abort");
    let commit = write_marker(cluster, leader, marker(8, 0, true))
        .await
        .expect("commit");
    produce(cluster, leader, 0..10, true).await;
    let open = produce_one(cluster, leader, producer_record(9, 0, "a", "open-a")).await;
    assert_eq!(open.error_code, codes::NONE);
    produce(cluster, leader, 10..30, true).await;
    cluster.steps(10).await;
    (abort, commit, open.base_offset)
}

/// Transactions on a compacted replicated partition: every replica's pass removes an
/// aborted transaction's records, compacts nothing at or above an open transaction, and
/// retires no marker, even once `delete.retention.ms` has run out; `read_committed`
/// readers of the leader see the same before and after, and every replica replays its
/// cleaned log after a restart to the same last stable offset.
#[test]
fn replicas_remove_aborted_records_keep_markers_and_stop_at_an_open_transaction() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        small_segments(&cluster);
        let leader = cluster.elect().await;
        let (abort, commit, open_offset) = write_transactions(&mut cluster, leader).await;
        let before = read_committed(&cluster, leader).await;
        assert!(
            before.0.contains(&(b"a".to_vec(), b"committed-a".to_vec())),
            "the committed a is read"
        );
        assert!(!before
            .0
            .iter()
            .any(|(_, value)| value.starts_with(b"aborted")));
        assert_eq!(before.1, open_offset, "the open transaction holds the LSO");

        // No tombstone retention: a marker whose records are gone could go at once.
        let options = CleanOptions {
            delete_retention_ms: 0,
            ..CleanOptions::default()
        };
        for id in 1..=3 {
            let manager = cluster.manager(id);
            let log = manager.log(GROUP).expect("hosted");
            let first = clean_replicated(&manager, &tp(), &log, &options)
                .await
                .expect("hosted")
                .expect("cleaned");
            assert_eq!(first.aborted_records_removed, 2, "replica {id}");
            assert!(
                first.clean_end_offset <= open_offset,
                "replica {id} cleaned past the LSO"
            );
            let held = entries(&cluster, id).await;
            assert_live_markers(&held, &[abort, commit], id);
            let records = all_records(&held);
            assert!(
                !records.iter().any(|r| r.2.starts_with(b"aborted")),
                "replica {id}: aborted records left"
            );
            assert!(
                records.iter().any(|r| r.2 == b"committed-a"),
                "replica {id}: the committed a, below the open transaction, was cleaned away"
            );
            let view = manager.cleaner_txns(&tp()).expect("hosted");
            assert_eq!(view.clean_below, open_offset, "replica {id}: its LSO");
            assert!(
                view.aborted.iter().any(|a| a.marker_offset == abort),
                "replica {id}: the aborted entry stays while the pass removes its records"
            );
        }
        let (after, lso) = read_committed(&cluster, leader).await;
        assert_eq!(lso, before.1);
        assert!(
            latest_of(&after) == latest_of(&before.0),
            "what readers see: the same latest value of every key"
        );

        // Every replica replays its log (emptied batches, kept markers) to the same state.
        for id in 1..=3 {
            cluster.power_cycle(id).await;
        }
        let leader = cluster.elect().await;
        // Reopened with the default settings: small segments again.
        small_segments(&cluster);
        cluster.steps(20).await;
        let (restarted, lso) = read_committed(&cluster, leader).await;
        assert_eq!(lso, before.1);
        assert!(
            latest_of(&restarted) == latest_of(&before.0),
            "after the restarts: the same latest value of every key"
        );
        for id in 1..=3 {
            let view = cluster.manager(id).cleaner_txns(&tp()).expect("hosted");
            assert_eq!(
                view.clean_below, open_offset,
                "replica {id}: its LSO after its restart"
            );
        }

        commit_then_forget(&mut cluster, leader, abort, &options).await;
    });
}

/// Producer 9 commits, producer 7 aborts another transaction, and more records come:
/// every replica's next pass removes the new aborted records and keeps their entry; the
/// pass after forgets that entry (its records gone, no retention) and still retires no
/// marker; readers see the later committed a. (The first abort's entry did not survive
/// the restarts: a replay of its emptied batches and marker opens nothing.)
async fn commit_then_forget(
    cluster: &mut Cluster,
    leader: u64,
    first_abort: i64,
    options: &CleanOptions,
) {
    use crate::replica::txn_tests::{marker, produce as produce_one, write_marker};
    write_marker(cluster, leader, marker(9, 0, true))
        .await
        .expect("commit");
    let aborted = produce_one(cluster, leader, producer_record(7, 2, "c", "aborted-c")).await;
    assert_eq!(aborted.error_code, codes::NONE);
    let abort = write_marker(cluster, leader, marker(7, 0, false))
        .await
        .expect("abort");
    for (batches, pass) in [(30..45, 0), (45..60, 1)] {
        produce(cluster, leader, batches, true).await;
        cluster.steps(10).await;
        for id in 1..=3 {
            let manager = cluster.manager(id);
            let log = manager.log(GROUP).expect("hosted");
            let outcome = clean_replicated(&manager, &tp(), &log, options)
                .await
                .expect("hosted")
                .expect("cleaned");
            assert_eq!(outcome.markers_removed, 0, "replica {id} retired a marker");
            let view = manager.cleaner_txns(&tp()).expect("hosted");
            let listed = view.aborted.iter().any(|a| a.marker_offset == abort);
            if pass == 0 {
                assert_eq!(outcome.aborted_records_removed, 1, "replica {id}");
                assert!(listed, "replica {id}: the entry stays while its records go");
            } else {
                assert!(
                    outcome.abort_markers_removed.contains(&abort),
                    "replica {id}"
                );
                assert!(
                    !listed,
                    "replica {id}: the spent aborted entry is forgotten"
                );
            }
            let held = entries(cluster, id).await;
            assert_live_markers(&held, &[first_abort, abort], id);
            let records = all_records(&held);
            assert!(
                records.iter().any(|r| r.2 == b"open-a")
                    && !records.iter().any(|r| r.2 == b"committed-a"),
                "replica {id}: the committed later a supersedes the earlier"
            );
        }
    }
    let (values, _) = read_committed(cluster, leader).await;
    assert!(!values
        .iter()
        .any(|(_, value)| value.starts_with(b"aborted")));
    assert!(values.contains(&(b"a".to_vec(), b"open-a".to_vec())));
}

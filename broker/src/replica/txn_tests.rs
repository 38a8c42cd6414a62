//! Transactions on a replicated partition (`txns`, `serve::write_txn_marker`), on three
//! simulated replicas: the last stable offset and aborted transactions `read_committed`
//! readers get are the same on every leader, after a failover and after restarts (from
//! the log alone and from a snapshot).

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use bytes::Bytes;

use crate::error_codes as codes;
use crate::isolation::Isolation;
use crate::producer_state::{TxnMarker, INVALID_PRODUCER_EPOCH, INVALID_TXN_STATE};
use crate::replica::manager::ReplicaManager;
use crate::replica::tests::{run, tp, Cluster};
use crate::replica::txns::{REPLICA_TXNS_FILE, SNAPSHOT_EVERY_OFFSETS};
use crate::replica::types::{ReplicaFetch, ReplicaProduce};
use crate::storage::batch::build::{self, Record};
use crate::storage::batch::BatchHeader;
use crate::storage::Disk;

/// A batch of `records` records of `producer_id` (epoch `epoch`) from `base_sequence`;
/// transactional or plain idempotent.
fn producer_batch(
    producer_id: i64,
    epoch: i16,
    base_sequence: i32,
    records: usize,
    transactional: bool,
) -> Bytes {
    let value = base_sequence.to_be_bytes();
    let records: Vec<_> = (0..records)
        .map(|_| Record {
            key: None,
            value: Some(&value),
            timestamp_ms: 1_700_000_000_000,
        })
        .collect();
    crate::replica::tests::as_producer_batch(
        &build::batch(&records),
        producer_id,
        epoch,
        base_sequence,
        transactional,
    )
}

pub(crate) fn marker(producer_id: i64, epoch: i16, commit: bool) -> TxnMarker {
    TxnMarker {
        producer_id,
        producer_epoch: epoch,
        commit,
        coordinator_epoch: 0,
    }
}

/// Proposes `batch` (acks=all) on node `id` and steps the cluster until it is answered.
pub(crate) async fn produce(cluster: &mut Cluster, id: u64, batch: Bytes) -> ReplicaProduce {
    let pending = cluster.manager(id).dispatch_produce(&tp(), vec![batch], -1);
    let cell = Rc::new(RefCell::new(None));
    let sink = cell.clone();
    glommio::spawn_local(async move {
        *sink.borrow_mut() = Some(pending.wait().await);
    })
    .detach();
    cluster.until_answered(std::slice::from_ref(&cell)).await;
    let answer = cell.borrow().expect("answered");
    answer
}

/// Writes `marker` on node `id`, stepping the cluster until it is answered.
pub(crate) async fn write_marker(
    cluster: &mut Cluster,
    id: u64,
    marker: TxnMarker,
) -> Result<i64, i16> {
    let manager = cluster.manager(id);
    let cell = Rc::new(RefCell::new(None));
    let sink = cell.clone();
    glommio::spawn_local(async move {
        *sink.borrow_mut() = Some(manager.write_txn_marker(&tp(), marker).await);
    })
    .detach();
    for _ in 0..400 {
        if let Some(answer) = *cell.borrow() {
            return answer;
        }
        cluster.step().await;
    }
    panic!("marker not answered");
}

async fn fetch(manager: &ReplicaManager, isolation: Isolation) -> ReplicaFetch {
    manager.fetch(&tp(), 0, 1 << 20, isolation).await
}

/// The base offsets of the data batches a `read_committed` client keeps from `fetched`.
fn consumed(fetched: &ReplicaFetch) -> Vec<i64> {
    crate::replica::tests::kept_by_read_committed(
        &fetched.batches,
        &fetched.aborted_transactions,
        &mut HashSet::new(),
    )
    .into_iter()
    .map(|kept| BatchHeader::parse(kept).expect("header").base_offset)
    .collect()
}

/// (last stable offset, high watermark, aborted list, consumed offsets) of a
/// `read_committed` read from 0 on node `id`.
async fn committed_view(cluster: &Cluster, id: u64) -> (i64, i64, Vec<(i64, i64)>, Vec<i64>) {
    let fetched = fetch(&cluster.manager(id), Isolation::ReadCommitted).await;
    assert_eq!(fetched.error_code, codes::NONE);
    (
        fetched.last_stable_offset,
        fetched.high_watermark,
        fetched.aborted_transactions.clone(),
        consumed(&fetched),
    )
}

/// Every replica tracks the transactions from the committed log: an open transaction
/// holds `read_committed` readers at its first offset, an abort is listed, a commit shows
/// its records; a new leader serves the same, and so does every replica after a power cut
/// of all three (rebuilt from the log).
#[test]
fn replicated_transactions_commit_abort_and_outlive_failover_and_restarts() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let leader = cluster.elect().await;
        // A plain batch, producer 1's transaction (2 records), producer 2's (3 records).
        let plain = produce(&mut cluster, leader, crate::replica::tests::batch("p")).await;
        assert_eq!(plain.error_code, codes::NONE);
        let p = plain.base_offset;
        let first = produce(&mut cluster, leader, producer_batch(1, 0, 0, 2, true)).await;
        // The plain batch holds two records.
        assert_eq!((first.error_code, first.base_offset), (codes::NONE, p + 2));
        let f = first.base_offset;
        let second = produce(&mut cluster, leader, producer_batch(2, 0, 0, 3, true)).await;
        assert_eq!(
            (second.error_code, second.base_offset),
            (codes::NONE, f + 2)
        );
        let s = second.base_offset;

        let view = committed_view(&cluster, leader).await;
        assert_eq!(view, (f, s + 3, vec![], vec![p]));
        let uncommitted = fetch(&cluster.manager(leader), Isolation::ReadUncommitted).await;
        let data = uncommitted
            .batches
            .iter()
            .filter(|b| BatchHeader::parse(b).is_some_and(|h| !h.is_control()));
        assert_eq!(data.count(), 3, "read_uncommitted sees open data");

        // A plain batch of a producer inside its transaction is refused, as Kafka does.
        let plain_inside = produce(&mut cluster, leader, producer_batch(1, 0, 2, 1, false)).await;
        assert_eq!(plain_inside.error_code, INVALID_TXN_STATE);

        let abort = write_marker(&mut cluster, leader, marker(1, 0, false)).await;
        assert_eq!(abort, Ok(s + 3));
        let view = committed_view(&cluster, leader).await;
        assert_eq!(view, (s, s + 4, vec![(1, f)], vec![p]));

        // Failover: the leader is cut off; its successor serves the same view (its term's
        // empty entry takes one offset more).
        cluster.set_cut(leader, true);
        let successor = cluster.elect().await;
        assert_ne!(successor, leader);
        let view = committed_view(&cluster, successor).await;
        assert_eq!(view, (s, s + 5, vec![(1, f)], vec![p]));
        // A marker of an older producer epoch than the producer's is fenced.
        let newer = produce(&mut cluster, successor, producer_batch(3, 2, 0, 1, true)).await;
        assert_eq!(newer.error_code, codes::NONE);
        let n = newer.base_offset;
        assert_eq!(
            write_marker(&mut cluster, successor, marker(3, 1, true)).await,
            Err(INVALID_PRODUCER_EPOCH)
        );
        assert_eq!(
            write_marker(&mut cluster, successor, marker(3, 2, true)).await,
            Ok(n + 1)
        );
        assert_eq!(
            write_marker(&mut cluster, successor, marker(2, 0, true)).await,
            Ok(n + 2)
        );
        let view = committed_view(&cluster, successor).await;
        assert_eq!(view, (n + 3, n + 3, vec![(1, f)], vec![p, s, n]));
        // A marker repeated (a coordinator's retry) is written and changes nothing.
        assert_eq!(
            write_marker(&mut cluster, successor, marker(2, 0, true)).await,
            Ok(n + 3)
        );
        // Producer 1's next transaction, left open across the restarts below.
        let open = produce(&mut cluster, successor, producer_batch(1, 0, 2, 1, true)).await;
        assert_eq!((open.error_code, open.base_offset), (codes::NONE, n + 4));
        let view = committed_view(&cluster, successor).await;
        assert_eq!(view, (n + 4, n + 5, vec![(1, f)], vec![p, s, n]));

        cluster.set_cut(leader, false);
        cluster.steps(20).await;
        for id in cluster.nodes_up() {
            cluster.power_cycle(id).await;
        }
        let leader = cluster.elect().await;
        let (lso, hw, aborted, kept) = committed_view(&cluster, leader).await;
        assert_eq!(
            (lso, aborted, kept),
            (n + 4, vec![(1, f)], vec![p, s, n]),
            "rebuilt from the log after a power cut of every replica (high watermark {hw})"
        );
        let commit = write_marker(&mut cluster, leader, marker(1, 0, true)).await;
        assert!(commit.is_ok(), "{commit:?}");
        let (lso, hw, _, kept) = committed_view(&cluster, leader).await;
        assert_eq!(lso, hw);
        assert_eq!(kept, [p, s, n, n + 4]);
    });
}

/// A replica that applied `SNAPSHOT_EVERY_OFFSETS` offsets writes a transaction snapshot;
/// after a power cut of every replica the state comes from it plus the entries after it,
/// and an open transaction from before the snapshot still holds readers back.
#[test]
fn a_transaction_open_before_a_snapshot_holds_readers_after_a_restart() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let leader = cluster.elect().await;
        let open = produce(&mut cluster, leader, producer_batch(5, 0, 0, 1, true)).await;
        assert_eq!(open.error_code, codes::NONE);
        let records = usize::try_from(SNAPSHOT_EVERY_OFFSETS).expect("fits");
        let big = produce(
            &mut cluster,
            leader,
            producer_batch(6, 0, 0, records, false),
        )
        .await;
        assert_eq!(big.error_code, codes::NONE);
        // An abort after the snapshot: replayed on top of it.
        let aborted = produce(&mut cluster, leader, producer_batch(7, 0, 0, 1, true)).await;
        assert_eq!(aborted.error_code, codes::NONE);
        let abort = write_marker(&mut cluster, leader, marker(7, 0, false)).await;
        assert!(
            abort.is_ok(),
            "{abort:?} leader {leader} now {:?}",
            cluster.leader()
        );
        cluster.steps(20).await;
        for id in cluster.nodes_up() {
            let disk = cluster.disk(id);
            let path = std::path::Path::new("/data")
                .join(format!("{}-{}", tp().topic, tp().partition))
                .join(REPLICA_TXNS_FILE);
            let written = disk.read_file(&path).await.expect("readable");
            assert!(
                written.is_some(),
                "node {id} wrote no transaction snapshot at {path:?}"
            );
        }
        for id in cluster.nodes_up() {
            cluster.power_cycle(id).await;
        }
        let leader = cluster.elect().await;
        let (lso, _, _, kept) = committed_view(&cluster, leader).await;
        assert_eq!(lso, open.base_offset, "the open transaction holds readers");
        assert!(
            kept.is_empty(),
            "nothing below the open transaction: {kept:?}"
        );
        // Committed now: everything is stable, and the abort replayed after the snapshot
        // is listed.
        let commit = write_marker(&mut cluster, leader, marker(5, 0, true)).await;
        assert!(commit.is_ok(), "{commit:?}");
        let (lso, hw, aborted_list, kept) = committed_view(&cluster, leader).await;
        assert_eq!(lso, hw);
        assert_eq!(aborted_list, [(7, aborted.base_offset)]);
        assert_eq!(kept, [open.base_offset, big.base_offset]);
    });
}

/// The shard's replicated partitions hold at most `open_txns_max` open transactions: a
/// batch that would open one more is refused `POLICY_VIOLATION` at the leader (nothing is
/// proposed), while batches of transactions already open go on, and a marker that ends
/// one makes room.
#[test]
fn open_transactions_are_bounded_per_shard() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let leader = cluster.elect().await;
        cluster.manager(leader).open_txns_max.set(2);
        for producer_id in [1, 2] {
            let opened = produce(
                &mut cluster,
                leader,
                producer_batch(producer_id, 0, 0, 1, true),
            )
            .await;
            assert_eq!(opened.error_code, codes::NONE);
        }
        let end = cluster
            .manager(leader)
            .high_watermark(crate::replica::tests::GROUP);
        let refused = produce(&mut cluster, leader, producer_batch(3, 0, 0, 1, true)).await;
        assert_eq!(refused.error_code, crate::producer_state::POLICY_VIOLATION);
        assert_eq!(
            cluster
                .manager(leader)
                .high_watermark(crate::replica::tests::GROUP),
            end,
            "nothing proposed"
        );
        let more = produce(&mut cluster, leader, producer_batch(1, 0, 1, 1, true)).await;
        assert_eq!(more.error_code, codes::NONE, "an open transaction goes on");
        write_marker(&mut cluster, leader, marker(1, 0, true))
            .await
            .expect("commit");
        let room = produce(&mut cluster, leader, producer_batch(3, 0, 0, 1, true)).await;
        assert_eq!(room.error_code, codes::NONE, "the commit made room");
    });
}

/// One plain batch of about 7 KB stamped `timestamp_ms` (a 4 KiB segment each).
fn plain_sized(label: &str, timestamp_ms: i64) -> Bytes {
    let value = format!("{label}-").repeat(1_000);
    build::batch(&[Record {
        key: Some(label.as_bytes()),
        value: Some(value.as_bytes()),
        timestamp_ms,
    }])
}

/// A follower rebuilt from its leader's first entry (a snapshot) when that entry is the
/// first batch of a transaction still open: the follower applies the entry, so its last
/// stable offset holds readers at it as the leader's does (were it to lead, the open
/// transaction's records would otherwise be readable before their marker).
#[test]
fn a_follower_rebuilt_from_an_open_transactions_batch_holds_readers_there() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let leader = cluster.elect().await;
        let lagging = (1..=3).find(|&id| id != leader).expect("a follower");
        for id in 1..=3 {
            let config = crate::storage::LogConfig {
                segment_bytes_max: 4 << 10,
                retention_ms: Some(10_000),
                ..crate::storage::LogConfig::default()
            };
            cluster
                .manager(id)
                .log(crate::replica::tests::GROUP)
                .expect("hosted")
                .set_config(config);
        }
        cluster.set_cut(lagging, true);
        // Expired (the simulated clock is at 1,000 s), each in a segment of its own.
        for n in 0..4 {
            let old = produce(&mut cluster, leader, plain_sized(&format!("old{n}"), 1_000)).await;
            assert_eq!(old.error_code, codes::NONE);
        }
        // Not expired: producer 9's transaction opens in a segment of its own, and stays open.
        let now_ms = 1_000_000;
        let value = "t".repeat(7_000);
        let open_batch = crate::replica::tests::as_producer_batch(
            &build::batch(&[Record {
                key: Some(b"t"),
                value: Some(value.as_bytes()),
                timestamp_ms: now_ms,
            }]),
            9,
            0,
            0,
            true,
        );
        let open = produce(&mut cluster, leader, open_batch).await;
        assert_eq!(open.error_code, codes::NONE);
        for n in 0..2 {
            let later = produce(
                &mut cluster,
                leader,
                plain_sized(&format!("new{n}"), now_ms),
            )
            .await;
            assert_eq!(later.error_code, codes::NONE);
        }
        // Longer than an election timeout: the leader no longer waits for the cut follower.
        cluster.steps(30).await;
        for id in (1..=3).filter(|&id| id != lagging) {
            cluster.manager(id).enforce_retention().await;
        }
        let leader_log = cluster
            .manager(leader)
            .log(crate::replica::tests::GROUP)
            .expect("hosted");
        assert_eq!(
            leader_log.log_start_offset(),
            open.base_offset,
            "the leader's first entry is the open batch"
        );
        let leader_view = cluster.manager(leader).cleaner_txns(&tp()).expect("hosted");
        assert_eq!(
            leader_view.clean_below, open.base_offset,
            "the leader's LSO"
        );

        cluster.set_cut(lagging, false);
        let lagging_log = cluster
            .manager(lagging)
            .log(crate::replica::tests::GROUP)
            .expect("hosted");
        cluster
            .steps_until(300, "the follower caught up", |_| {
                lagging_log.last_index() == leader_log.last_index()
            })
            .await;
        assert_eq!(cluster.manager(lagging).counts().snapshots_installed, 1);
        let rebuilt = cluster
            .manager(lagging)
            .cleaner_txns(&tp())
            .expect("hosted");
        assert_eq!(
            rebuilt.clean_below, open.base_offset,
            "the rebuilt follower's LSO is at the open transaction's batch"
        );
    });
}

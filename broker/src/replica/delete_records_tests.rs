//! Guards `DeleteRecords` on a replicated partition (`serve::delete_records`): the leader
//! commits a `LOG_START` entry and every replica raises its own log start by applying it,
//! so the records stay gone after a change of leader and after a power cut; a follower
//! refuses, and offsets past the high watermark are out of range. Three managers over the
//! simulated network of `replica::tests`.

use crate::error_codes as codes;
use crate::replica::tests::{labels, run, tp, Cluster};
use crate::storage::LogConfig;
use std::cell::Cell;
use std::rc::Rc;

const GROUP: u64 = 42;

/// Asks `leader` to delete below `offset` and steps the cluster until it answers: the
/// answer waits for the `LOG_START` entry to commit, which needs the network to move.
async fn delete_records(cluster: &mut Cluster, leader: u64, offset: i64) -> (i16, i64) {
    let answer = Rc::new(Cell::new(None));
    let task = glommio::spawn_local({
        let manager = cluster.manager(leader);
        let answer = answer.clone();
        async move { answer.set(Some(manager.delete_records(&tp(), offset).await)) }
    });
    for _ in 0..100 {
        if let Some(answered) = answer.get() {
            task.await;
            return answered;
        }
        cluster.step().await;
    }
    panic!("DeleteRecords below {offset} was not answered in 100 steps");
}

async fn produce_all(cluster: &mut Cluster, leader: u64, prefix: &str, count: usize) -> Vec<i64> {
    let cells = cluster.produce(leader, &labels(prefix, count), -1);
    cluster.until_answered(&cells).await;
    cells
        .iter()
        .map(|cell| {
            let answer = cell.borrow().expect("answered");
            assert_eq!(answer.error_code, codes::NONE);
            answer.base_offset
        })
        .collect()
}

#[test]
fn delete_records_raises_the_log_start_of_every_replica_for_good() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let leader = cluster.elect().await;
        let follower = (1..=3).find(|&id| id != leader).unwrap();
        let offsets = produce_all(&mut cluster, leader, "a", 30).await;
        let target = offsets[20];

        let manager = cluster.manager(leader);
        let (refused, _) = cluster
            .manager(follower)
            .delete_records(&tp(), target)
            .await;
        assert_eq!(refused, codes::NOT_LEADER_OR_FOLLOWER);
        let high_watermark = manager.committed_end_of(&tp()).expect("hosted");
        let (past, start) = manager.delete_records(&tp(), high_watermark + 1).await;
        assert_eq!((past, start), (codes::OFFSET_OUT_OF_RANGE, 0));

        let answer = delete_records(&mut cluster, leader, target).await;
        assert_eq!(answer, (codes::NONE, target));
        cluster.steps(5).await;
        for id in 1..=3 {
            let log = cluster.manager(id).log(GROUP).expect("hosted");
            assert_eq!(log.log_start_offset(), target, "replica {id}");
        }
        let fetched = manager
            .fetch(
                &tp(),
                offsets[5],
                1 << 20,
                crate::isolation::Isolation::ReadUncommitted,
            )
            .await;
        assert_eq!(fetched.error_code, codes::OFFSET_OUT_OF_RANGE);
        // Deleting below the start again changes nothing.
        assert_eq!(
            manager.delete_records(&tp(), offsets[3]).await,
            (codes::NONE, target)
        );

        // The leader power-cut: its successor serves from the raised start, and so does the
        // old leader once restarted (the raise was durable before the answer).
        cluster.power_cut(leader);
        let successor = cluster.elect().await;
        assert_ne!(successor, leader);
        let fetched = cluster
            .manager(successor)
            .fetch(
                &tp(),
                offsets[5],
                1 << 20,
                crate::isolation::Isolation::ReadUncommitted,
            )
            .await;
        assert_eq!(fetched.error_code, codes::OFFSET_OUT_OF_RANGE);
        assert_eq!(fetched.log_start_offset, target);
        cluster.restart(leader, 2).await;
        cluster.steps(10).await;
        let log = cluster.manager(leader).log(GROUP).expect("hosted");
        assert_eq!(log.log_start_offset(), target);
        // And the successor still takes writes after it.
        produce_all(&mut cluster, successor, "b", 3).await;
    });
}

/// End to end through the managers: the lagging replica is rebuilt from a snapshot and
/// serves from the leader's deleted start. Both the snapshot's log start and the `LOG_START`
/// entry after the snapshot point bring it there; `log_store_snapshot.rs` in the
/// replication crate checks the snapshot's alone.
#[test]
fn a_replica_rebuilt_from_a_snapshot_takes_its_leaders_deleted_start() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let leader = cluster.elect().await;
        let lagging = (1..=3).find(|&id| id != leader).unwrap();
        for id in 1..=3 {
            cluster
                .manager(id)
                .log(GROUP)
                .expect("hosted")
                .set_config(LogConfig {
                    segment_bytes_max: 4 << 10,
                    ..LogConfig::default()
                });
        }
        produce_all(&mut cluster, leader, "a", 10).await;
        cluster.steps(5).await;
        cluster.set_cut(lagging, true);
        let offsets = produce_all(&mut cluster, leader, "b", 60).await;
        cluster.steps(30).await;
        // Past the first segments, then a little further: the start lies inside a segment.
        let target = offsets[40];
        let manager = cluster.manager(leader);
        let answer = delete_records(&mut cluster, leader, target).await;
        assert_eq!(answer, (codes::NONE, target));
        manager.enforce_retention().await;
        let leader_log = manager.log(GROUP).expect("hosted");
        assert!(
            leader_log.first_index() > 12,
            "segments below the start went"
        );

        cluster.set_cut(lagging, false);
        let lagging_log = cluster.manager(lagging).log(GROUP).expect("hosted");
        for _ in 0..300 {
            if lagging_log.last_index() == leader_log.last_index()
                && lagging_log.log_start_offset() == target
            {
                break;
            }
            cluster.step().await;
        }
        assert_eq!(cluster.manager(lagging).counts().snapshots_installed, 1);
        assert_eq!(lagging_log.last_index(), leader_log.last_index());
        assert_eq!(lagging_log.log_start_offset(), target);
    });
}

//! Guards retention on a replicated partition (three managers over the simulated network of
//! `replica::tests`): expired segments go on every replica, a follower cut off holds the
//! leader's retention back at the entries it still needs, and once healed it catches up
//! from the leader's log (no snapshot needed), after which the leader's retention moves on.

use crate::error_codes as codes;
use crate::replica::tests::{labels, run, Cluster};
use crate::storage::LogConfig;

const GROUP: u64 = 42;

/// Small segments, and a retention every batch of the tests is past (their timestamps are
/// about 1 s, the simulated clock starts at 1,000 s).
fn expiring() -> LogConfig {
    LogConfig {
        segment_bytes_max: 4 << 10,
        retention_ms: Some(10_000),
        ..LogConfig::default()
    }
}

async fn produce_all(cluster: &mut Cluster, leader: u64, prefix: &str, count: usize) {
    let cells = cluster.produce(leader, &labels(prefix, count), -1);
    cluster.until_answered(&cells).await;
    for cell in &cells {
        assert_eq!(cell.borrow().expect("answered").error_code, codes::NONE);
    }
}

#[test]
fn retention_keeps_what_a_lagging_follower_needs_and_it_catches_up() {
    run(|| async {
        let mut cluster = Cluster::new(2).await;
        let leader = cluster.elect().await;
        let [lagging, other] = [1, 2, 3]
            .into_iter()
            .filter(|&id| id != leader)
            .collect::<Vec<_>>()[..]
        else {
            unreachable!("three nodes")
        };
        for id in 1..=3 {
            cluster
                .manager(id)
                .log(GROUP)
                .expect("hosted")
                .set_config(expiring());
        }
        produce_all(&mut cluster, leader, "a", 40).await;
        cluster.steps(5).await;
        let lagging_last = cluster.manager(lagging).log(GROUP).unwrap().last_index();

        cluster.set_cut(lagging, true);
        produce_all(&mut cluster, leader, "b", 80).await;
        cluster.steps(5).await;
        let leader_log = cluster.manager(leader).log(GROUP).unwrap();
        assert!(
            !cluster.manager(leader).enforce_retention().await.is_empty(),
            "the leader removes what every voter has"
        );
        assert!(
            leader_log.first_index() <= lagging_last,
            "the leader keeps the entry the cut-off follower matched ({lagging_last}) and all after it, first index {}",
            leader_log.first_index()
        );
        let other_log = cluster.manager(other).log(GROUP).unwrap();
        cluster.manager(other).enforce_retention().await;
        assert!(
            other_log.first_index() > lagging_last,
            "a follower removes what it applied: first index {}",
            other_log.first_index()
        );

        cluster.set_cut(lagging, false);
        let lagging_log = cluster.manager(lagging).log(GROUP).unwrap();
        for _ in 0..200 {
            if lagging_log.last_index() == leader_log.last_index() {
                break;
            }
            cluster.step().await;
        }
        assert_eq!(
            lagging_log.last_index(),
            leader_log.last_index(),
            "the healed follower caught up from the leader's log"
        );
        cluster.steps(5).await;
        let kept_before = leader_log.first_index();
        cluster.manager(leader).enforce_retention().await;
        assert!(
            leader_log.first_index() > kept_before,
            "with every voter caught up the leader's retention moves on"
        );
        // The partition still takes acks=all writes, and the log reads back from its start.
        produce_all(&mut cluster, leader, "c", 5).await;
        let fetched = cluster
            .manager(leader)
            .fetch(
                &crate::replica::tests::tp(),
                leader_log.log_start_offset(),
                1 << 20,
            )
            .await;
        assert_eq!(fetched.error_code, codes::NONE);
        assert!(!fetched.batches.is_empty());
    });
}

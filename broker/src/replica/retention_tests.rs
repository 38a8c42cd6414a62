//! Guards retention on a replicated partition (three managers over the simulated network of
//! `replica::tests`): expired segments go on every replica; a follower cut off for longer
//! than an election timeout does not hold the leader's retention back, and once healed it
//! is rebuilt from the leader's first entry (a snapshot) and catches up from there.

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
fn retention_passes_a_silent_follower_which_is_rebuilt_from_the_leaders_first_entry() {
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
        let lagging_log = cluster.manager(lagging).log(GROUP).unwrap();
        let lagging_last = lagging_log.last_index();

        cluster.set_cut(lagging, true);
        produce_all(&mut cluster, leader, "b", 80).await;
        // Longer than an election timeout: the leader has not heard from it since.
        cluster.steps(30).await;
        let leader_log = cluster.manager(leader).log(GROUP).unwrap();
        assert!(!cluster.manager(leader).enforce_retention().await.is_empty());
        let leader_start = leader_log.first_index();
        assert!(
            leader_start > lagging_last + 1,
            "a silent follower does not hold the leader's retention back: first index {leader_start}, the follower's last {lagging_last}"
        );
        cluster.manager(other).enforce_retention().await;

        cluster.set_cut(lagging, false);
        for _ in 0..300 {
            if lagging_log.last_index() == leader_log.last_index() {
                break;
            }
            cluster.step().await;
        }
        assert_eq!(
            lagging_log.last_index(),
            leader_log.last_index(),
            "the healed follower caught up"
        );
        assert_eq!(cluster.manager(lagging).counts().snapshots_installed, 1);
        assert_rebuilt_from(&cluster, leader, lagging, leader_start).await;
        cluster.steps(5).await;
        assert_eq!(cluster.manager(leader).in_sync(GROUP), [1, 2, 3]);

        // It counts in the quorum again, and its rebuilt log survives a power cut.
        cluster.set_cut(other, true);
        produce_all(&mut cluster, leader, "c", 5).await;
        cluster.set_cut(other, false);
        cluster.power_cut(lagging);
        cluster.restart(lagging, 2).await;
        produce_all(&mut cluster, leader, "d", 5).await;
        cluster.steps(10).await;
        assert_rebuilt_from(&cluster, leader, lagging, leader_start).await;
        assert_eq!(cluster.manager(leader).in_sync(GROUP), [1, 2, 3]);
    });
}

/// The follower's log starts at the leader's first entry `start` (same offset) and holds
/// every entry after it, byte for byte as the leader does.
async fn assert_rebuilt_from(cluster: &Cluster, leader: u64, follower: u64, start: u64) {
    let leader_log = cluster.manager(leader).log(GROUP).unwrap();
    let follower_log = cluster.manager(follower).log(GROUP).unwrap();
    assert_eq!(follower_log.first_index(), start);
    assert_eq!(follower_log.last_index(), leader_log.last_index());
    let ours = leader_log
        .read_entries(start, leader_log.last_index() + 1, usize::MAX)
        .await
        .expect("leader entries");
    let theirs = follower_log
        .read_entries(start, follower_log.last_index() + 1, usize::MAX)
        .await
        .expect("follower entries");
    assert_eq!(ours.len(), theirs.len());
    for (ours, theirs) in ours.iter().zip(&theirs) {
        assert_eq!((ours.index, ours.term), (theirs.index, theirs.term));
        assert_eq!(ours.batch, theirs.batch, "entry {} differs", ours.index);
    }
    assert_eq!(
        follower_log.log_start_offset(),
        crate::storage::batch::BatchHeader::parse(&ours[0].batch)
            .expect("a batch")
            .base_offset
    );
}

/// Seeded faults with retention running on every replica, so that followers cut off or
/// power-cut fall behind their leader's log start and are rebuilt from snapshots while the
/// faults go on. Checked at the end, after healing: the final leader holds every
/// acknowledged acks=all batch that is at or past its log start, at its offset with its
/// bytes; every replica holds the leader's last entry; and on the entries two replicas
/// both hold, they agree byte for byte (index, term, stored bytes). Across the seeds at
/// least one snapshot must have been installed, or the test proves nothing about them.
#[test]
fn seeded_faults_with_retention_keep_replicas_identical_where_they_overlap() {
    let installed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    for seed in 1..=8_u64 {
        let installed = installed.clone();
        run(move || async move {
            let mut rng = crate::storage::sim::SeededRng::new(seed);
            let mut cluster = Cluster::new(2).await;
            let expire_all = |cluster: &Cluster| {
                for id in 1..=3 {
                    if cluster.nodes_up().contains(&id) {
                        if let Some(log) = cluster.manager(id).log(GROUP) {
                            log.set_config(expiring());
                        }
                    }
                }
            };
            expire_all(&cluster);
            let mut produced = Vec::new();
            for round in 0..80 {
                match rng.below(8) {
                    0 => cluster.toggle_cut(rng.range(1, 3)),
                    1 if rng.below(2) == 0 => {
                        cluster.power_cycle(rng.range(1, 3)).await;
                        expire_all(&cluster);
                    }
                    2 => {
                        let id = rng.range(1, 3);
                        cluster.manager(id).enforce_retention().await;
                    }
                    _ => {
                        if let Some(leader) = cluster.leader() {
                            let labels = labels(&format!("s{seed}r{round}-"), 4);
                            let acks = if rng.below(3) == 0 { 1 } else { -1 };
                            let answers = cluster.produce(leader, &labels, acks);
                            if acks == -1 {
                                produced.extend(labels.into_iter().zip(answers));
                            }
                        }
                    }
                }
                let steps = rng.range(1, 40) as usize;
                cluster.steps(steps).await;
            }
            for id in 1..=3 {
                cluster.set_cut(id, false);
            }
            let leader = cluster.elect().await;
            let (labels, cells): (Vec<String>, Vec<_>) = produced.into_iter().unzip();
            cluster.until_answered(&cells).await;
            let acknowledged = crate::replica::tests::acked(&labels, &cells);
            cluster.steps(60).await;

            let leader_log = cluster.manager(leader).log(GROUP).unwrap();
            let start = leader_log.log_start_offset();
            let held = fetch_from(&cluster, leader, start).await;
            for (offset, bytes) in acknowledged.iter().filter(|(offset, _)| *offset >= start) {
                assert_eq!(
                    held.get(offset),
                    Some(bytes),
                    "seed {seed}: acknowledged batch at offset {offset} missing or changed (log start {start})"
                );
            }
            let logs: Vec<_> = (1..=3)
                .map(|id| cluster.manager(id).log(GROUP).unwrap())
                .collect();
            for (id, log) in (1..=3).zip(&logs) {
                assert_eq!(
                    log.last_index(),
                    leader_log.last_index(),
                    "seed {seed}: replica {id} caught up"
                );
                let from = log.first_index().max(leader_log.first_index());
                let ours = leader_log
                    .read_entries(from, leader_log.last_index() + 1, usize::MAX)
                    .await
                    .expect("leader entries");
                let theirs = log
                    .read_entries(from, log.last_index() + 1, usize::MAX)
                    .await
                    .expect("replica entries");
                assert_eq!(
                    ours, theirs,
                    "seed {seed}: replica {id} differs from the leader"
                );
                installed.fetch_add(
                    cluster.manager(id).counts().snapshots_installed,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
        });
    }
    let installed = installed.load(std::sync::atomic::Ordering::Relaxed);
    assert!(installed > 0, "no seed installed a snapshot");
    eprintln!("snapshots installed over the seeds: {installed}");
}

/// Every batch the leader serves from `start` on, by base offset (payloads).
async fn fetch_from(
    cluster: &Cluster,
    leader: u64,
    start: i64,
) -> std::collections::BTreeMap<i64, Vec<u8>> {
    let manager = cluster.manager(leader);
    let mut offset = start;
    let mut found = std::collections::BTreeMap::new();
    loop {
        let fetched = manager
            .fetch(
                &crate::replica::tests::tp(),
                offset,
                1 << 20,
                crate::isolation::Isolation::ReadUncommitted,
            )
            .await;
        assert_eq!(fetched.error_code, codes::NONE);
        if fetched.batches.is_empty() {
            return found;
        }
        for batch in fetched.batches {
            let header = crate::storage::batch::BatchHeader::parse(&batch).expect("header");
            if !header.is_control() {
                found.insert(header.base_offset, crate::replica::tests::payload(&batch));
            }
            offset = header.last_offset() + 1;
        }
    }
}

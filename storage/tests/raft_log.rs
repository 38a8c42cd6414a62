//! Guards the partition log as a Raft log (`FORMAT.md` § Raft index and term, § Suffix
//! truncation), case by case; `truncation_crash.rs` runs the same rules against random
//! workloads and crashes:
//! - a leader's entries get consecutive indexes and its term, a follower's copies are stored
//!   byte for byte at their leader's offset, and a term going back or a wrong offset is
//!   refused;
//! - a truncation drops entries from an index on (in the active segment or across sealed
//!   ones), durably, and appends continue there;
//! - the trap: an entry re-appended after a cut with the same size and record count as the
//!   one it replaces, then a power cut, never brings back the old tail behind it;
//! - entries appended before replication are never truncated.

mod common;

use bytes::Bytes;
use common::{open_sim, raft_entries, read_all, run, small_config, workload_batch};
use ringfeed_storage::sim::{CrashMode, SimDisk};
use ringfeed_storage::{EntryError, LeaderEpoch, PartitionLog, ReadError, EPOCH_UNDEFINED};

async fn lead(log: &PartitionLog<SimDisk>, i: usize, term: i32) -> ringfeed_storage::EntryOutcome {
    let checked = log.check(workload_batch(i)).expect("valid");
    log.append_as_leader(checked, term)
        .await
        .expect("leader append")
}

#[test]
fn leaders_stamp_followers_copy_and_bad_entries_are_refused() {
    run(|| async {
        let leader = open_sim(&SimDisk::new(), small_config())
            .await
            .expect("open");
        let follower_disk = SimDisk::new();
        let follower = open_sim(&follower_disk, small_config())
            .await
            .expect("open");
        for (i, term) in [(0, 1), (1, 1), (2, 3), (3, 3), (4, 3)] {
            let outcome = lead(&leader, i, term).await;
            assert_eq!((outcome.index, outcome.term), (i as u64 + 1, term));
        }
        leader
            .wait_durable(leader.log_end_offset() - 1)
            .await
            .expect("durable");
        let stored = raft_entries(&leader).await;
        for (_, _, batch) in &stored {
            let copied = follower
                .append_replicated(batch.clone())
                .await
                .expect("copy");
            assert_eq!(
                copied.term,
                ringfeed_storage::batch::partition_leader_epoch(batch)
            );
        }
        follower
            .wait_durable(follower.log_end_offset() - 1)
            .await
            .expect("durable");
        assert_eq!(
            raft_entries(&follower).await,
            stored,
            "followers store the leader's bytes"
        );
        assert_eq!(read_all(&follower).await, read_all(&leader).await);
    });
}

#[test]
fn a_term_going_back_or_an_offset_elsewhere_is_refused() {
    run(|| async {
        let log = open_sim(&SimDisk::new(), small_config())
            .await
            .expect("open");
        lead(&log, 0, 4).await;
        let checked = log.check(workload_batch(1)).expect("valid");
        assert!(matches!(
            log.append_as_leader(checked, 3).await,
            Err(EntryError::TermGoesBack {
                term: 3,
                last_term: 4
            })
        ));
        let at = |offset: i64, epoch: i32| {
            let mut batch = workload_batch(2).to_vec();
            batch[..8].copy_from_slice(&offset.to_be_bytes());
            batch[12..16].copy_from_slice(&epoch.to_be_bytes());
            Bytes::from(batch)
        };
        let end = log.log_end_offset();
        assert!(matches!(
            log.append_replicated(at(end + 1, 4)).await,
            Err(EntryError::OffsetMismatch { .. })
        ));
        assert!(matches!(
            log.append_replicated(at(end, 2)).await,
            Err(EntryError::TermGoesBack {
                term: 2,
                last_term: 4
            })
        ));
        assert!(matches!(
            log.append_replicated(at(end, -1)).await,
            Err(EntryError::TermGoesBack { .. })
        ));
        assert_eq!(
            log.append_replicated(at(end, 5)).await.expect("copy").index,
            2
        );
    });
}

/// Truncations in the active segment and across sealed ones: the log ends at the cut, the
/// next entries continue there, and every open (clean or after a power cut) agrees.
#[test]
fn truncation_cuts_durably_within_and_across_segments() {
    run(|| async {
        let disk = SimDisk::new();
        let log = open_sim(&disk, small_config()).await.expect("open");
        for i in 0..60 {
            lead(&log, i, 1 + (i / 20) as i32).await;
        }
        log.wait_durable(log.log_end_offset() - 1)
            .await
            .expect("durable");
        let before = raft_entries(&log).await;
        let segments_before = disk.paths().len();
        for cut in [58_u64, 57, 31, 12] {
            log.truncate_from_index(cut).await.expect("truncate");
            assert_eq!(log.last_index(), cut - 1);
            assert_eq!(
                log.log_end_offset(),
                common::header(&before[cut as usize - 1].2).base_offset
            );
            assert_eq!(
                raft_entries(&log).await,
                before[..cut as usize - 1].to_vec()
            );
            // Durable on return: a power cut right now keeps exactly the truncated log.
            let image = disk.crash_image(CrashMode::PowerCut);
            let recovered = open_sim(&image, small_config()).await.expect("recover");
            assert_eq!(
                raft_entries(&recovered).await,
                before[..cut as usize - 1].to_vec(),
                "cut {cut}"
            );
        }
        assert!(
            disk.paths().len() < segments_before,
            "later segments were deleted"
        );
        let outcome = lead(&log, 100, 2).await;
        assert_eq!((outcome.index, outcome.term), (12, 2));
        assert_eq!(
            outcome.base_offset,
            common::header(&before[11].2).base_offset
        );
        log.close().await.expect("close");
        let log = open_sim(&disk, small_config()).await.expect("reopen");
        assert_eq!((log.last_index(), log.last_term()), (12, 2));
    });
}

/// The trap of FORMAT.md § Suffix truncation: the entry replacing the cut one has the same
/// size and record count (the same producer batch under a lower term, as Raft allows), so
/// the old tail would line up behind it. A power cut at every later step, tearing the last
/// write or not, recovers the truncated log plus a prefix of what followed, never the old
/// tail.
#[test]
fn a_same_sized_entry_after_a_cut_never_resurrects_the_old_tail() {
    run(|| async {
        let build = |disk: SimDisk| async move {
            let log = open_sim(&disk, small_config()).await.expect("open");
            for i in 0..8 {
                lead(&log, i, if i < 4 { 1 } else { 3 }).await;
            }
            log.wait_durable(log.log_end_offset() - 1)
                .await
                .expect("durable");
            log
        };
        let reference = build(SimDisk::new()).await;
        let old = raft_entries(&reference).await;
        let steps_to_cut = {
            let disk = SimDisk::new();
            let _log = build(disk.clone()).await;
            disk.steps()
        };
        let mut completed = false;
        for steps in 0..40 {
            let disk = SimDisk::new();
            let log = build(disk.clone()).await;
            assert_eq!(disk.steps(), steps_to_cut);
            disk.power_cut_after_steps(steps);
            // Entry 5 again, at term 2: above entry 4's term 1, below the cut tail's term 3.
            let finished = async {
                log.truncate_from_index(5).await.ok()?;
                let checked = log.check(workload_batch(4)).ok()?;
                log.append_as_leader(checked, 2).await.ok()?;
                log.wait_durable(log.log_end_offset() - 1).await.ok()
            }
            .await;
            completed |= finished.is_some();
            for mode in [
                CrashMode::PowerCut,
                CrashMode::PowerCutTearingLastWrite { keep_bytes: 512 },
                CrashMode::PowerCutTearingLastWrite { keep_bytes: 4096 },
                CrashMode::ProcessCrash,
            ] {
                let context = format!("power cut after {steps} steps, {mode:?}");
                let image = disk.crash_image(mode);
                let recovered = open_sim(&image, small_config())
                    .await
                    .unwrap_or_else(|e| panic!("{context}: {e}"));
                let got = raft_entries(&recovered).await;
                let is_old_prefix = got.len() >= 4 && got[..] == old[..got.len()];
                let is_new = got.len() <= 5
                    && got[..got.len().min(4)] == old[..got.len().min(4)]
                    && got
                        .get(4)
                        .is_none_or(|(index, term, _)| (*index, *term) == (5, 2));
                let terms: Vec<(u64, i32)> = got.iter().map(|e| (e.0, e.1)).collect();
                assert!(is_old_prefix || is_new, "{context}: recovered {terms:?}");
            }
        }
        assert!(
            completed,
            "some runs got through the truncation and the new entry"
        );
    });
}

#[test]
fn entries_from_before_replication_are_never_truncated() {
    run(|| async {
        let log = open_sim(&SimDisk::new(), small_config())
            .await
            .expect("open");
        for i in 0..3 {
            log.append(workload_batch(i)).await.expect("plain append");
        }
        assert!(matches!(
            log.truncate_from_index(2).await,
            Err(ReadError::IndexOutOfRange { .. })
        ));
        lead(&log, 3, 1).await;
        assert_eq!(log.terms_from_index(), Some(4));
        assert!(matches!(
            log.truncate_from_index(3).await,
            Err(ReadError::IndexOutOfRange { .. })
        ));
        log.truncate_from_index(4)
            .await
            .expect("a replicated entry can go");
        assert_eq!(log.last_index(), 3);
    });
}

/// The leader-epoch cache lives in the segment indexes: it answers terms by index and
/// `OffsetForLeaderEpoch` as Kafka does, follows truncations, and survives a power cut and
/// the loss of every index file (terms are in the batches).
#[test]
fn the_leader_epoch_cache_follows_the_log() {
    run(|| async {
        let disk = SimDisk::new();
        let log = open_sim(&disk, small_config()).await.expect("open");
        let mut starts = Vec::new();
        for i in 0..40 {
            let term = [1, 3, 4, 7][i / 10];
            let outcome = lead(&log, i, term).await;
            if i % 10 == 0 {
                starts.push(LeaderEpoch {
                    epoch: term,
                    start_offset: outcome.base_offset,
                    start_index: outcome.index,
                });
            }
        }
        log.wait_durable(log.log_end_offset() - 1)
            .await
            .expect("durable");
        let check = |log: &PartitionLog<SimDisk>, starts: &[LeaderEpoch]| {
            assert_eq!(log.leader_epochs(), starts);
            for epoch in starts {
                assert_eq!(log.term_at(epoch.start_index), Some(epoch.epoch));
            }
            assert_eq!(log.term_at(log.last_index() + 1), None);
            assert_eq!(log.term_at(0), None);
        };
        check(&log, &starts);
        let leo = log.log_end_offset();
        assert_eq!(
            log.end_offset_for_leader_epoch(1),
            (1, starts[1].start_offset)
        );
        assert_eq!(
            log.end_offset_for_leader_epoch(2),
            (1, starts[1].start_offset)
        );
        assert_eq!(
            log.end_offset_for_leader_epoch(5),
            (4, starts[3].start_offset)
        );
        assert_eq!(log.end_offset_for_leader_epoch(7), (7, leo));
        assert_eq!(
            log.end_offset_for_leader_epoch(0),
            (0, starts[0].start_offset)
        );
        assert_eq!(log.end_offset_for_leader_epoch(8), EPOCH_UNDEFINED);
        assert_eq!(log.end_offset_for_leader_epoch(-1), EPOCH_UNDEFINED);

        log.truncate_from_index(starts[2].start_index + 3)
            .await
            .expect("truncate");
        check(&log, &starts[..3]);
        assert_eq!(
            log.end_offset_for_leader_epoch(4),
            (4, log.log_end_offset())
        );
        assert_eq!(log.end_offset_for_leader_epoch(7), EPOCH_UNDEFINED);

        let image = disk.crash_image(CrashMode::PowerCut);
        for path in image.paths() {
            if path.extension().is_some_and(|e| e == "index") {
                ringfeed_storage::Disk::remove_file(&image, &path)
                    .await
                    .expect("remove");
            }
        }
        let recovered = open_sim(&image, small_config()).await.expect("recover");
        check(&recovered, &starts[..3]);
    });
}

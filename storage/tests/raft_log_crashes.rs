//! Guards the Raft log against crashes at every point of random workloads: a seeded mix of
//! leader appends (terms rising, and after a truncation sometimes below the cut tail's, as
//! Raft allows), durability waits and suffix truncations (sometimes followed by the same
//! batch the cut removed, so old and new entries line up), cut by a power failure after a
//! chosen number of disk steps. Each crash image (process crash, power cut, power cut tearing
//! the last write at 512 B and 4 KiB) is recovered and compared with a model, a list of
//! (index, term, offsets, bytes):
//! - recovery succeeds: a crash never looks like mid-log corruption;
//! - the recovered entries are a prefix of the model's log (of the log before the truncation
//!   the crash interrupted), byte for byte with their Raft indexes and terms, no shorter than
//!   what was acknowledged durable (nor than the cut, for an interrupted truncation);
//! - offsets are contiguous and reads by offset return the same batches;
//! - the leader-epoch cache and the term of every index match the recovered entries;
//! - the next leader entry continues at the right index and offset.
//!
//! A failing seed and step count replay exactly.

mod common;

use bytes::Bytes;
use common::{header, open_sim, raft_entries, read_all, run, small_config, workload_batch};
use ringfeed_storage::sim::{CrashMode, SeededRng, SimDisk};
use ringfeed_storage::LeaderEpoch;

const SEEDS: u64 = 24;
const OPERATIONS: usize = 60;
const CRASH_POINTS_PER_SEED: u64 = 30;

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelEntry {
    index: u64,
    term: i32,
    base_offset: i64,
    /// Which workload batch it holds (to append the same one again after a cut).
    batch_id: usize,
    stored: Bytes,
}

/// What the workload saw before the power failed.
struct Observed {
    model: Vec<ModelEntry>,
    /// Entries known durable: a durability wait or a truncation returned after them.
    durable: usize,
    /// The cut of a truncation the failure interrupted: the log may be anything between the
    /// model and the cut.
    interrupted_cut: Option<usize>,
}

async fn workload(disk: &SimDisk, seed: u64) -> Observed {
    let mut rng = SeededRng::new(seed);
    let mut observed = Observed {
        model: Vec::new(),
        durable: 0,
        interrupted_cut: None,
    };
    let Ok(log) = open_sim(disk, small_config()).await else {
        return observed;
    };
    let (mut term, mut next_batch_id) = (1_i32, 0_usize);
    let mut replay_after_cut: Option<usize> = None;
    for _ in 0..OPERATIONS {
        let choice = rng.below(100);
        if choice < 65 {
            let last_term = observed.model.last().map_or(0, |e| e.term);
            if rng.below(10) == 0 {
                term += 1;
            }
            // After a cut, a new leader may hold a term below the cut tail's.
            let entry_term = if replay_after_cut.is_some() {
                last_term + rng.below((term - last_term + 1) as u64) as i32
            } else {
                term.max(last_term)
            };
            let batch_id = match replay_after_cut.take() {
                Some(id) if rng.below(2) == 0 => id,
                _ => {
                    next_batch_id += 1;
                    next_batch_id
                }
            };
            let Ok(checked) = log.check(workload_batch(batch_id)) else {
                break;
            };
            let Ok(outcome) = log.append_as_leader(checked, entry_term).await else {
                break;
            };
            let stored = ringfeed_storage::batch::stamped(
                &workload_batch(batch_id),
                outcome.base_offset,
                entry_term,
            );
            assert_eq!(outcome.index, observed.model.len() as u64 + 1);
            observed.model.push(ModelEntry {
                index: outcome.index,
                term: entry_term,
                base_offset: outcome.base_offset,
                batch_id,
                stored,
            });
        } else if choice < 82 {
            if observed.model.is_empty() {
                continue;
            }
            if log.wait_durable(log.log_end_offset() - 1).await.is_err() {
                break;
            }
            observed.durable = observed.model.len();
        } else {
            if observed.model.is_empty() {
                continue;
            }
            let cut = rng.below(observed.model.len() as u64) as usize; // entries kept
            if log.truncate_from_index(cut as u64 + 1).await.is_err() {
                observed.interrupted_cut = Some(cut);
                break;
            }
            replay_after_cut = Some(observed.model[cut].batch_id);
            observed.model.truncate(cut);
            observed.durable = cut;
        }
    }
    observed
}

async fn check_recovery(image: &SimDisk, observed: &Observed, context: &str) {
    let log = open_sim(image, small_config())
        .await
        .unwrap_or_else(|e| panic!("{context}: recovery failed: {e}"));
    let got = raft_entries(&log).await;
    let summary = || got.iter().map(|e| (e.0, e.1)).collect::<Vec<_>>();
    let at_least = match observed.interrupted_cut {
        Some(cut) => observed.durable.min(cut),
        None => observed.durable,
    };
    assert!(
        got.len() <= observed.model.len() && got.len() >= at_least,
        "{context}: {} entries recovered, model {} with {at_least} durable: {:?}",
        got.len(),
        observed.model.len(),
        summary()
    );
    for (entry, model) in got.iter().zip(&observed.model) {
        assert_eq!(
            (entry.0, entry.1, &entry.2),
            (model.index, model.term, &model.stored),
            "{context}: entry {} differs from the model: {:?}",
            model.index,
            summary()
        );
    }
    assert_eq!(log.first_index(), 1, "{context}");
    assert_eq!(log.last_index(), got.len() as u64, "{context}");
    assert_eq!(log.last_term(), got.last().map_or(0, |e| e.1), "{context}");
    let mut epochs: Vec<LeaderEpoch> = Vec::new();
    for (index, term, batch) in &got {
        assert_eq!(
            log.term_at(*index),
            Some(*term),
            "{context}: term of {index}"
        );
        if epochs.last().is_none_or(|last| last.epoch != *term) {
            epochs.push(LeaderEpoch {
                epoch: *term,
                start_offset: header(batch).base_offset,
                start_index: *index,
            });
        }
    }
    assert_eq!(
        log.leader_epochs(),
        epochs,
        "{context}: the leader-epoch cache"
    );
    let by_offset = read_all(&log).await;
    let by_index: Vec<Bytes> = got.iter().map(|e| e.2.clone()).collect();
    assert_eq!(
        by_offset, by_index,
        "{context}: reads by offset and by index agree"
    );
    let end = got.last().map_or(0, |e| header(&e.2).last_offset() + 1);
    assert_eq!(log.log_end_offset(), end, "{context}: offsets contiguous");
    let checked = log.check(workload_batch(9999)).expect("valid");
    let term = log.last_term().max(1);
    let next = log
        .append_as_leader(checked, term)
        .await
        .unwrap_or_else(|e| panic!("{context}: append after recovery: {e}"));
    assert_eq!(
        (next.index, next.base_offset),
        (got.len() as u64 + 1, end),
        "{context}"
    );
}

#[test]
fn random_appends_truncations_and_crashes_recover_to_the_durable_prefix() {
    run(|| async {
        let modes = [
            CrashMode::ProcessCrash,
            CrashMode::PowerCut,
            CrashMode::PowerCutTearingLastWrite { keep_bytes: 512 },
            CrashMode::PowerCutTearingLastWrite { keep_bytes: 4096 },
        ];
        let mut truncations_interrupted = 0;
        for seed in 1..=SEEDS {
            let total_steps = {
                let disk = SimDisk::new();
                let observed = workload(&disk, seed).await;
                check_recovery(
                    &disk.crash_image(CrashMode::PowerCut),
                    &observed,
                    &format!("seed {seed}, no crash"),
                )
                .await;
                disk.steps()
            };
            let stride = (total_steps / CRASH_POINTS_PER_SEED).max(1);
            let mut steps = seed % stride;
            while steps < total_steps {
                let disk = SimDisk::new();
                disk.power_cut_after_steps(steps);
                let observed = workload(&disk, seed).await;
                truncations_interrupted += usize::from(observed.interrupted_cut.is_some());
                for mode in modes {
                    let context = format!("seed {seed}, power cut after {steps} steps, {mode:?}");
                    check_recovery(&disk.crash_image(mode), &observed, &context).await;
                }
                steps += stride;
            }
        }
        assert!(
            truncations_interrupted > 10,
            "crashes land inside truncations ({truncations_interrupted})"
        );
    });
}

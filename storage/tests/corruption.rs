//! Guards recovery's judgement of damaged bytes after a crash (no clean-shutdown marker):
//! - tail damage (truncation at every byte of the last two batches, bit flips, a zeroed
//!   tail, a garbage tail) recovers exactly the batches before the damage, cuts the rest, and
//!   the log accepts appends again;
//! - damage inside the bytes the checkpoint vouches for, followed by valid batches (mid-log),
//!   even behind zeros, is refused, never cut; past the checkpoint it is a torn tail (a
//!   power cut can reorder unsynced writes), cut and reported;
//! - a damaged sealed segment whose index is gone is refused too.

mod common;

use bytes::Bytes;
use common::{
    header, open_sim, read_all, run, segment_path, small_config, stored_at, workload_batch,
};
use ringfeed_storage::batch::{MAGIC_OFFSET, PARTITION_LEADER_EPOCH_OFFSET};
use ringfeed_storage::segment::CLEAN_SHUTDOWN_FILE;
use ringfeed_storage::sim::{CrashMode, SimDisk};
use ringfeed_storage::{Clock, LogConfig, PartitionLog, ReadError, StorageError};
use std::path::Path;

/// One segment big enough for the whole workload; no checkpoint after the first.
fn one_segment_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 1 << 20,
        checkpoint_interval_ms: 1 << 62,
        ..small_config()
    }
}

/// A crashed disk holding `count` durable batches in one segment, and those batches.
async fn crashed_log(count: usize) -> (SimDisk, Vec<Bytes>) {
    let disk = SimDisk::new();
    let log = open_sim(&disk, one_segment_config()).await.expect("open");
    let mut stored = Vec::new();
    for i in 0..count {
        let batch = workload_batch(i);
        let outcome = log.append(batch.clone()).await.expect("append");
        log.wait_durable(outcome.last_offset)
            .await
            .expect("durable");
        stored.push(stored_at(&batch, outcome.base_offset));
    }
    (disk.crash_image(CrashMode::PowerCut), stored)
}

/// Byte position where each batch starts, and the end of the last.
fn batch_starts(stored: &[Bytes]) -> Vec<usize> {
    let mut starts = vec![0];
    for batch in stored {
        starts.push(starts.last().unwrap() + batch.len());
    }
    starts
}

/// Applies `damage` to a copy of the crashed disk, recovers, and checks that exactly the
/// first `survivors` batches come back and appends continue after them.
async fn expect_recovered(
    base: &SimDisk,
    stored: &[Bytes],
    survivors: usize,
    what: &str,
    damage: impl FnOnce(&mut Vec<u8>),
) {
    let disk = base.crash_image(CrashMode::ProcessCrash);
    disk.corrupt(&segment_path(0), damage);
    let log = open_sim(&disk, one_segment_config())
        .await
        .unwrap_or_else(|e| panic!("{what}: recovery refused: {e}"));
    let recovered = read_all(&log).await;
    assert_eq!(
        recovered.len(),
        survivors,
        "{what}: wrong number of batches recovered"
    );
    assert_eq!(
        recovered,
        stored[..survivors],
        "{what}: recovered batches differ"
    );
    let next = log
        .append(workload_batch(500))
        .await
        .expect("append after recovery");
    let expected_next = stored[..survivors]
        .last()
        .map_or(0, |b| header(b).last_offset() + 1);
    assert_eq!(next.base_offset, expected_next, "{what}");
    log.wait_durable(next.last_offset).await.expect("durable");
    let reread = read_all(
        &open_sim(&disk.crash_image(CrashMode::PowerCut), one_segment_config())
            .await
            .expect("reopen"),
    )
    .await;
    assert_eq!(
        reread.len(),
        survivors + 1,
        "{what}: stale bytes after the cut resurfaced"
    );
}

async fn expect_refused(disk: &SimDisk, config: LogConfig, what: &str) {
    match open_sim(disk, config).await {
        Err(StorageError::MidLogCorruption(message)) => assert!(!message.is_empty()),
        Err(other) => panic!("{what}: wrong error {other}"),
        Ok(_) => panic!("{what}: mid-log damage was accepted"),
    }
}

#[test]
fn truncation_at_every_byte_of_the_last_two_batches_recovers_what_precedes_it() {
    run(|| async {
        let (disk, stored) = crashed_log(12).await;
        let starts = batch_starts(&stored);
        for cut in starts[10]..starts[12] {
            let survivors = starts.iter().rposition(|&s| s <= cut).unwrap();
            expect_recovered(
                &disk,
                &stored,
                survivors,
                &format!("cut at byte {cut}"),
                |bytes| bytes.truncate(cut),
            )
            .await;
        }
    });
}

#[test]
fn bit_flips_in_the_last_batch_cut_only_that_batch() {
    run(|| async {
        let (disk, stored) = crashed_log(12).await;
        let starts = batch_starts(&stored);
        for byte in starts[11]..starts[12] {
            let within = byte - starts[11];
            if (PARTITION_LEADER_EPOCH_OFFSET..MAGIC_OFFSET).contains(&within) {
                continue; // partitionLeaderEpoch is outside the CRC in Kafka's format
            }
            expect_recovered(
                &disk,
                &stored,
                11,
                &format!("flip at byte {byte}"),
                |bytes| bytes[byte] ^= 0x04,
            )
            .await;
        }
    });
}

#[test]
fn zeroed_and_garbage_tails_are_cut() {
    run(|| async {
        let (disk, stored) = crashed_log(12).await;
        let starts = batch_starts(&stored);
        expect_recovered(&disk, &stored, 10, "zeroed last two batches", |bytes| {
            bytes[starts[10]..starts[12]].fill(0);
        })
        .await;
        expect_recovered(&disk, &stored, 12, "garbage after the tail", |bytes| {
            for (i, b) in bytes[starts[12]..starts[12] + 3000].iter_mut().enumerate() {
                *b = (i * 7 + 13) as u8 | 0x80;
            }
        })
        .await;
        expect_recovered(&disk, &stored, 11, "garbage over the last batch", |bytes| {
            bytes[starts[11] + 20..starts[12] + 100].fill(0xA5);
        })
        .await;
    });
}

/// A stopped log whose checkpoint vouches for all of its batches (written at close), with
/// the clean-shutdown marker removed so the next open scans.
async fn checkpointed_log(count: usize) -> (SimDisk, Vec<Bytes>) {
    let disk = SimDisk::new();
    let log = open_sim(&disk, one_segment_config()).await.expect("open");
    let mut stored = Vec::new();
    for i in 0..count {
        let batch = workload_batch(i);
        let outcome = log.append(batch.clone()).await.expect("append");
        stored.push(stored_at(&batch, outcome.base_offset));
    }
    log.close().await.expect("close");
    let image = disk.crash_image(CrashMode::PowerCut);
    image.corrupt(
        &segment_path(0).with_file_name(CLEAN_SHUTDOWN_FILE),
        Vec::clear,
    );
    (image, stored)
}

#[test]
fn damage_inside_checkpointed_data_followed_by_valid_batches_is_refused() {
    run(|| async {
        let (disk, stored) = checkpointed_log(12).await;
        let starts = batch_starts(&stored);
        let intact = disk.crash_image(CrashMode::ProcessCrash);
        assert_eq!(
            read_all(
                &open_sim(&intact, one_segment_config())
                    .await
                    .expect("undamaged")
            )
            .await,
            stored
        );
        let flipped = disk.crash_image(CrashMode::ProcessCrash);
        // Inside checkpointed bytes only headers are checked at start (CRCs are the offline
        // checker's job), so the damage here is to batch 5's magic byte.
        flipped.corrupt(&segment_path(0), |bytes| {
            bytes[starts[5] + MAGIC_OFFSET] ^= 0x01;
        });
        expect_refused(
            &flipped,
            one_segment_config(),
            "header damage in batch 5 of 12",
        )
        .await;
        let zeroed = disk.crash_image(CrashMode::ProcessCrash);
        zeroed.corrupt(&segment_path(0), |bytes| {
            bytes[starts[4]..starts[6]].fill(0);
        });
        expect_refused(
            &zeroed,
            one_segment_config(),
            "zeros hiding batches 6 to 11",
        )
        .await;
        // The refusal leaves the bytes alone: the same damage is refused again.
        expect_refused(&zeroed, one_segment_config(), "second open").await;
    });
}

#[test]
fn damage_past_the_checkpoint_is_cut_and_reported_with_the_valid_batches_behind_it() {
    run(|| async {
        // No checkpoint: a power cut may have kept later unsynced writes and lost earlier
        // ones, so a hole before valid batches is a torn tail, cut and reported.
        let (disk, stored) = crashed_log(12).await;
        let starts = batch_starts(&stored);
        let damaged = disk.crash_image(CrashMode::ProcessCrash);
        damaged.corrupt(&segment_path(0), |bytes| bytes[starts[5] + 70] ^= 0x01);
        let (log, report) = PartitionLog::open_on(
            damaged.clone(),
            Path::new("/data/topic-0"),
            one_segment_config(),
            Clock::System,
        )
        .await
        .expect("recovers");
        let torn = report.truncated.expect("a cut is reported");
        assert!(
            torn.valid_batches_dropped,
            "the report says valid batches were behind the damage"
        );
        assert_eq!(torn.position, starts[5] as u64);
        assert_eq!(read_all(&log).await, stored[..5]);
    });
}

#[test]
fn a_damaged_sealed_segment_without_its_index_is_refused() {
    run(|| async {
        let disk = SimDisk::new();
        let log = open_sim(&disk, small_config()).await.expect("open");
        for i in 0..40 {
            log.append(workload_batch(i)).await.expect("append");
        }
        log.wait_durable(log.log_end_offset() - 1)
            .await
            .expect("durable");
        let image = disk.crash_image(CrashMode::PowerCut);
        let first_index = image
            .paths()
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "index"))
            .expect("a sealed segment");
        let segment = first_index.with_extension("log");
        image.corrupt(&segment, |bytes| bytes[200] ^= 0x40);
        // With its index intact the damage is not scanned for (reads return it; clients check CRCs).
        assert!(
            open_sim(&image.crash_image(CrashMode::ProcessCrash), small_config())
                .await
                .is_ok()
        );
        image.corrupt(&first_index, std::vec::Vec::clear);
        expect_refused(&image, small_config(), "damaged sealed segment").await;
    });
}

#[test]
fn a_rotten_batch_inside_checkpointed_data_is_never_served() {
    run(|| async {
        // Start-up checks only headers inside the bytes the checkpoint vouches for, so a
        // flipped payload bit there opens fine; reads must still refuse to serve it.
        let (disk, stored) = checkpointed_log(12).await;
        let starts = batch_starts(&stored);
        disk.corrupt(&segment_path(0), |bytes| bytes[starts[3] + 100] ^= 0x20);
        let log = open_sim(&disk, one_segment_config())
            .await
            .expect("opens: the damage is not scanned for");
        let damaged_offset = header(&stored[3]).base_offset;
        match log.read(damaged_offset, 1 << 20).await {
            Err(ReadError::Corrupt {
                offset, position, ..
            }) => {
                assert_eq!((offset, position), (damaged_offset, starts[3] as u64));
            }
            other => panic!("served or misreported a corrupt batch: {other:?}"),
        }
        let before = log
            .read(0, 1 << 20)
            .await
            .expect("the batches before the damage");
        assert_eq!(before, stored[..3], "a read stops before the damaged batch");
        let after = log
            .read(header(&stored[4]).base_offset, 1 << 20)
            .await
            .expect("after the damage");
        assert_eq!(after, stored[4..]);
    });
}

#[test]
fn a_segment_truncated_after_a_clean_close_recovers_to_its_last_whole_batch() {
    // The clean-shutdown marker claims bytes the file no longer has: the marker walk must
    // stop at the torn batch (it once panicked reading past the end), and the full scan
    // must recover exactly the batches before it.
    run(|| async {
        let disk = SimDisk::new();
        let log = open_sim(&disk, one_segment_config()).await.expect("open");
        let mut stored = Vec::new();
        for i in 0..12 {
            let batch = workload_batch(i);
            let outcome = log.append(batch.clone()).await.expect("append");
            stored.push(stored_at(&batch, outcome.base_offset));
        }
        log.close().await.expect("close");
        let starts = batch_starts(&stored);
        for cut in [starts[11] + 1, starts[11] + 70, starts[12] - 1] {
            let image = disk.crash_image(CrashMode::ProcessCrash);
            image.corrupt(&segment_path(0), |bytes| bytes.truncate(cut));
            let log = open_sim(&image, one_segment_config())
                .await
                .unwrap_or_else(|e| panic!("cut at {cut}: recovery refused: {e}"));
            assert_eq!(read_all(&log).await, stored[..11], "cut at byte {cut}");
        }
    });
}

/// A segment file name near the end of the offset space (a damaged or hand-made name):
/// past `OFFSET_MAX` the partition is refused at recovery with the reason; just below it the
/// log opens and refuses the append that would pass it, with an error and not a panic or an
/// overflowed offset, and keeps serving what it has.
#[test]
fn segment_names_at_the_end_of_the_offset_space_are_refused_not_overflowed() {
    use ringfeed_storage::error::OFFSET_MAX;
    use ringfeed_storage::io::Disk;
    use ringfeed_storage::AppendError;
    run(|| async {
        let past = SimDisk::new();
        past.open(&segment_path(OFFSET_MAX + 1), true)
            .await
            .expect("create the segment file");
        match open_sim(&past, one_segment_config()).await {
            Err(StorageError::MidLogCorruption(reason)) => {
                assert!(reason.contains("past the largest offset"), "{reason}");
            }
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("a segment past OFFSET_MAX was opened"),
        }

        let near = SimDisk::new();
        near.open(&segment_path(OFFSET_MAX - 1), true)
            .await
            .expect("create the segment file");
        let log = open_sim(&near, one_segment_config())
            .await
            .expect("a base below OFFSET_MAX opens");
        // The boundary: one-record batches fill the last offset below OFFSET_MAX, and the
        // next is refused.
        let batches: Vec<_> = (0..64)
            .map(workload_batch)
            .filter(|batch| header(batch).record_count == 1)
            .take(2)
            .collect();
        assert_eq!(batches.len(), 2, "the workload has one-record batches");
        let fits = log
            .append(batches[0].clone())
            .await
            .expect("the last offset");
        assert_eq!(fits.base_offset, OFFSET_MAX - 1);
        match log.append(batches[1].clone()).await {
            Err(AppendError::Storage(StorageError::OffsetsExhausted { next_offset, .. })) => {
                assert_eq!(next_offset, OFFSET_MAX);
            }
            other => panic!("expected OffsetsExhausted, got {other:?}"),
        }
        assert_eq!(log.log_end_offset(), OFFSET_MAX, "nothing was assigned");
    });
}

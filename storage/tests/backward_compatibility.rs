//! Guards the in-place upgrade of format-1 partitions (before Raft indexes) to format 2.
//!
//! `fixtures/format1/` was written by the storage code of main at 44ae64a (its README says
//! how): 40 batches of the common workload
//! over six 16 KiB segments, with partitionLeaderEpoch set to -1, 0, 7, 3, ... as producers
//! send them; once closed cleanly (`clean/`), once cut by a power failure (`crashed/`: no
//! marker, the active segment's index absent). After the upgrade:
//! - every batch reads back byte-identical, offsets unchanged;
//! - the batches are Raft entries 1..=40, all at term 0 whatever epoch the producer sent
//!   (format 1 never stamped it, so it is not a term), the log is not yet replicated;
//! - `log.format` and format-2 indexes and checkpoint are on disk: a second open is no
//!   upgrade and numbers the log the same, even with every index file lost;
//! - a leader's first entry continues at index 41 with its term, and keeps it across a crash.

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{header, open_sim, read_all, run, small_config, workload_batch};
use ringfeed_storage::sim::{CrashMode, SimDisk};
use ringfeed_storage::{Clock, PartitionLog};

const BATCHES: usize = 40;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/format1")
        .join(name)
}

/// A simulated disk holding the fixture as `/data/topic-0`, durable.
async fn disk_with_fixture(name: &str) -> SimDisk {
    let disk = SimDisk::new();
    let dir = Path::new("/data/topic-0");
    for entry in std::fs::read_dir(fixture_dir(name)).expect("fixture") {
        let entry = entry.expect("fixture entry");
        let contents = std::fs::read(entry.path()).expect("fixture file");
        ringfeed_storage::Disk::write_file_atomically(
            &disk,
            &dir.join(entry.file_name()),
            &contents,
        )
        .await
        .expect("copy");
    }
    disk
}

/// Batch `i` as the fixture's producer sent it.
fn sent(i: usize) -> Bytes {
    let mut batch = workload_batch(i).to_vec();
    let epoch: i32 = [-1, 0, 7, 3][i % 4];
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
    batch.into()
}

async fn open_reporting(
    disk: &SimDisk,
) -> (PartitionLog<SimDisk>, ringfeed_storage::RecoveryReport) {
    PartitionLog::open_on(
        disk.clone(),
        Path::new("/data/topic-0"),
        small_config(),
        Clock::System,
    )
    .await
    .expect("opens")
}

async fn check_numbered_as_format_1_wrote_it(log: &PartitionLog<SimDisk>, context: &str) {
    let batches = read_all(log).await;
    assert_eq!(batches.len(), BATCHES, "{context}");
    let mut next_offset = 0;
    for (i, batch) in batches.iter().enumerate() {
        assert_eq!(
            header(batch).base_offset,
            next_offset,
            "{context}: batch {i}"
        );
        assert_eq!(
            batch,
            &common::stored_at(&sent(i), next_offset),
            "{context}: batch {i}"
        );
        next_offset = header(batch).last_offset() + 1;
    }
    assert_eq!(
        (log.first_index(), log.last_index(), log.last_term()),
        (1, 40, 0),
        "{context}"
    );
    assert_eq!(
        log.terms_from_index(),
        None,
        "{context}: not replicated yet"
    );
    let entries = log.read_entries(1, 41, usize::MAX).await.expect("entries");
    let read_back: Vec<(u64, i32)> = entries.iter().map(|e| (e.index, e.term)).collect();
    let expected: Vec<(u64, i32)> = (1..=40).map(|index| (index, 0)).collect();
    assert_eq!(
        read_back, expected,
        "{context}: every old batch is an entry at term 0"
    );
    for (entry, batch) in entries.iter().zip(&batches) {
        assert_eq!(
            &entry.batch, batch,
            "{context}: entries are the stored batches"
        );
    }
}

#[test]
fn format_1_directories_are_upgraded_in_place() {
    run(|| async {
        for name in ["clean", "crashed"] {
            let disk = disk_with_fixture(name).await;
            let (log, report) = open_reporting(&disk).await;
            assert!(report.upgraded, "{name}: upgraded");
            assert_eq!(report.clean_shutdown, name == "clean", "{name}");
            check_numbered_as_format_1_wrote_it(&log, name).await;
            log.close().await.expect("close");

            let (log, report) = open_reporting(&disk).await;
            assert!(!report.upgraded, "{name}: the second open is no upgrade");
            assert_eq!(
                report.indexes_rebuilt, 0,
                "{name}: format-2 indexes were written"
            );
            check_numbered_as_format_1_wrote_it(&log, &format!("{name}, reopened")).await;
            drop(log);

            // Index files are accelerators: the checkpoint anchors the numbering without them.
            let image = disk.crash_image(CrashMode::ProcessCrash);
            for path in image.paths() {
                if path.extension().is_some_and(|e| e == "index") {
                    ringfeed_storage::Disk::remove_file(&image, &path)
                        .await
                        .expect("remove");
                }
            }
            let (log, report) = open_reporting(&image).await;
            assert_eq!(report.indexes_rebuilt, 5, "{name}");
            check_numbered_as_format_1_wrote_it(&log, &format!("{name}, indexes lost")).await;
            drop(log);

            let log = open_sim(&disk, small_config()).await.expect("open");
            let end = log.log_end_offset();
            let checked = log.check(workload_batch(100)).expect("valid batch");
            let outcome = log
                .append_as_leader(checked, 2)
                .await
                .expect("leader entry");
            assert_eq!(
                (outcome.index, outcome.term, outcome.base_offset),
                (41, 2, end)
            );
            log.wait_durable(outcome.last_offset)
                .await
                .expect("durable");
            assert_eq!(log.terms_from_index(), Some(41), "{name}");
            let image = disk.crash_image(CrashMode::PowerCut);
            let log = open_sim(&image, small_config()).await.expect("reopen");
            assert_eq!((log.last_index(), log.last_term()), (41, 2), "{name}");
            let entries = log.read_entries(40, 42, usize::MAX).await.expect("entries");
            let terms: Vec<(u64, i32)> = entries.iter().map(|e| (e.index, e.term)).collect();
            assert_eq!(terms, vec![(40, 0), (41, 2)], "{name}");
        }
    });
}

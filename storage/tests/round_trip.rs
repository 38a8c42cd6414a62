//! Guards the basic promise: what is appended reads back byte for byte, across segments,
//! from the tail cache and from disk, on the real `O_DIRECT` disk and after a clean restart.

mod common;

use common::{header, read_all, run, small_config, stored_at, workload_batch};
use ringfeed_storage::{LogConfig, PartitionLog, ReadError};

#[test]
fn batches_read_back_identical_across_segments_on_the_real_disk() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, report) = PartitionLog::open(dir.path(), small_config())
            .await
            .expect("open");
        assert_eq!((report.log_start_offset, report.log_end_offset), (0, 0));
        let mut expected = Vec::new();
        for i in 0..120 {
            let batch = workload_batch(i);
            let outcome = log.append(batch.clone()).await.expect("append");
            assert_eq!(
                outcome.base_offset,
                expected
                    .iter()
                    .map(|b: &bytes::Bytes| i64::from(header(b).record_count))
                    .sum::<i64>()
            );
            expected.push(stored_at(&batch, outcome.base_offset));
        }
        log.wait_durable(log.log_end_offset() - 1)
            .await
            .expect("durable");
        let segments = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".log")
            })
            .count();
        assert!(segments >= 4, "small segments force rolls, got {segments}");
        assert_eq!(read_all(&log).await, expected);

        // Every offset reads from the batch containing it.
        for (i, batch) in expected.iter().enumerate().step_by(7) {
            let h = header(batch);
            let got = log.read(h.last_offset(), 1).await.expect("read");
            assert_eq!(got.len(), 1, "max_bytes below one batch still returns one");
            assert_eq!(got[0], *batch, "batch {i}");
        }
        log.close().await.expect("close");

        let (reopened, report) = PartitionLog::open(dir.path(), small_config())
            .await
            .expect("reopen");
        assert!(report.clean_shutdown);
        assert_eq!(read_all(&reopened).await, expected);
        let next = reopened
            .append(workload_batch(999))
            .await
            .expect("append after restart");
        assert_eq!(
            next.base_offset,
            expected
                .iter()
                .map(|b| i64::from(header(b).record_count))
                .sum::<i64>()
        );
        reopened.close().await.expect("close");
    });
}

#[test]
fn tail_cache_and_disk_serve_the_same_bytes() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        // 16 KiB of cache admits batches up to 2 KiB: the workload mixes admitted batches
        // with larger ones that bypass (and clear) the cache.
        let cached_config = LogConfig {
            tail_cache_bytes_max: 16 << 10,
            ..small_config()
        };
        let (log, _) = PartitionLog::open(dir.path(), cached_config)
            .await
            .expect("open");
        for i in 0..60 {
            log.append(workload_batch(i)).await.expect("append");
        }
        log.wait_written(log.log_end_offset() - 1)
            .await
            .expect("written");
        let mut with_cache = Vec::new();
        for offset in 0..log.log_end_offset() {
            with_cache.push(log.read(offset, 3000).await.expect("read"));
        }
        log.set_config(small_config()); // no cache: every read goes to the segment files
        for (offset, expected) in with_cache.iter().enumerate() {
            let from_disk = log.read(offset as i64, 3000).await.expect("read");
            assert_eq!(&from_disk, expected, "offset {offset}");
        }
        log.close().await.expect("close");
    });
}

#[test]
fn offsets_bounds_and_timestamp_lookup() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = PartitionLog::open(dir.path(), small_config())
            .await
            .expect("open");
        assert!(log.read(0, 100).await.expect("empty log").is_empty());
        let mut bases = Vec::new();
        for i in 0..50 {
            bases.push(
                log.append(workload_batch(i))
                    .await
                    .expect("append")
                    .base_offset,
            );
        }
        log.wait_written(log.log_end_offset() - 1)
            .await
            .expect("written");
        let end = log.log_end_offset();
        assert_eq!(log.high_watermark(), end);
        assert!(log.read(end, 100).await.expect("at hwm").is_empty());
        assert!(matches!(
            log.read(end + 1, 100).await,
            Err(ReadError::OffsetOutOfRange { .. })
        ));
        // Batch i's record r has timestamp 1_000_000 + 10 i + r.
        assert_eq!(
            log.offset_for_timestamp(0).await.unwrap(),
            Some((0, 1_000_000))
        );
        let (offset, ts) = log
            .offset_for_timestamp(1_000_000 + 10 * 33 + 1)
            .await
            .unwrap()
            .expect("found");
        assert_eq!(ts, 1_000_000 + 10 * 33 + 1);
        assert_eq!(offset, bases[33] + 1);
        let (offset, _) = log
            .offset_for_timestamp(1_000_000 + 10 * 33 + 9)
            .await
            .unwrap()
            .expect("found");
        assert_eq!(
            offset, bases[34],
            "between batches: the next batch's first record"
        );
        assert_eq!(log.offset_for_timestamp(i64::MAX).await.unwrap(), None);
        log.close().await.expect("close");
    });
}

#[test]
fn a_missing_or_damaged_index_is_rebuilt() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let expected = stopped_log_with(dir.path(), 80).await;
        let mut indexes: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "index"))
            .collect();
        indexes.sort();
        assert!(indexes.len() >= 3);
        std::fs::remove_file(&indexes[0]).unwrap();
        let mut damaged = std::fs::read(&indexes[1]).unwrap();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0xff;
        std::fs::write(&indexes[1], damaged).unwrap();
        let (log, report) = PartitionLog::open(dir.path(), small_config())
            .await
            .expect("reopen");
        assert_eq!(report.indexes_rebuilt, 2);
        assert!(indexes[0].exists(), "the rebuilt index is written back");
        assert_eq!(read_all(&log).await, expected);
        log.close().await.expect("close");
    });
}

#[test]
fn empty_or_truncated_metadata_files_are_ignored_not_fatal() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let expected = stopped_log_with(dir.path(), 30).await;
        std::fs::write(
            dir.path().join(ringfeed_storage::segment::CHECKPOINT_FILE),
            b"",
        )
        .unwrap();
        std::fs::write(
            dir.path()
                .join(ringfeed_storage::segment::CLEAN_SHUTDOWN_FILE),
            b"RFCS",
        )
        .unwrap();
        let (log, report) = PartitionLog::open(dir.path(), small_config())
            .await
            .expect("reopen");
        assert!(!report.clean_shutdown, "a damaged marker is not trusted");
        assert_eq!(read_all(&log).await, expected);
        log.close().await.expect("close");
    });
}

/// Appends `batches` workload batches to a new log in `dir`, closes it, and returns every
/// batch as a reopened log reads it back.
async fn stopped_log_with(dir: &std::path::Path, batches: usize) -> Vec<bytes::Bytes> {
    let (log, _) = PartitionLog::open(dir, small_config()).await.expect("open");
    for i in 0..batches {
        log.append(workload_batch(i)).await.expect("append");
    }
    log.close().await.expect("close");
    let (log, _) = PartitionLog::open(dir, small_config())
        .await
        .expect("reopen");
    let all = read_all(&log).await;
    log.close().await.expect("close");
    all
}

#[test]
fn max_timestamp_names_the_first_record_carrying_it() {
    run(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, _) = PartitionLog::open(dir.path(), small_config())
            .await
            .expect("open");
        assert_eq!(log.max_timestamp().await.expect("empty"), None);
        let mut bases = Vec::new();
        for i in 0..40 {
            bases.push(
                log.append(workload_batch(i))
                    .await
                    .expect("append")
                    .base_offset,
            );
        }
        // Batch i's record r has timestamp 1_000_000 + 10 i + r; batch 39 holds 8 records.
        let late = ringfeed_storage::batch::build::batch(&[
            ringfeed_storage::batch::build::Record {
                key: None,
                value: Some(b"a"),
                timestamp_ms: 5,
            },
            ringfeed_storage::batch::build::Record {
                key: None,
                value: Some(b"b"),
                timestamp_ms: 9_000_000,
            },
            ringfeed_storage::batch::build::Record {
                key: None,
                value: Some(b"c"),
                timestamp_ms: 7,
            },
        ]);
        let late_base = log.append(late).await.expect("append").base_offset;
        for i in 40..45 {
            log.append(workload_batch(i)).await.expect("append");
        }
        log.wait_written(log.log_end_offset() - 1)
            .await
            .expect("written");
        assert_eq!(
            log.max_timestamp().await.expect("lookup"),
            Some((9_000_000, late_base + 1))
        );
        log.close().await.expect("close");
    });
}

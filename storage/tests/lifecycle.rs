//! Guards segment lifecycle: roll by size and by age, retention by total size and by age
//! (whole segments, never the active one), `DeleteRecords` advancing the log start durably,
//! and the data-arrival wait that Fetch's long poll is built on.

mod common;

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use common::{header, read_all, run, small_config, workload_batch};
use ringfeed_storage::sim::{CrashMode, SimDisk};
use ringfeed_storage::{Clock, LogConfig, PartitionLog, ReadError};

const DIR: &str = "/data/topic-0";

fn segment_count(disk: &SimDisk) -> usize {
    disk.paths()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .count()
}

async fn open(disk: &SimDisk, config: LogConfig, clock: &Clock) -> PartitionLog<SimDisk> {
    PartitionLog::open_on(disk.clone(), Path::new(DIR), config, clock.clone())
        .await
        .expect("open")
        .0
}

#[test]
fn segments_roll_by_size_and_by_age() {
    run(|| async {
        let now = Rc::new(Cell::new(1_000_000));
        let clock = Clock::Manual(now.clone());
        let disk = SimDisk::new();
        let config = LogConfig {
            segment_bytes_max: 1 << 20,
            segment_age_max_ms: Some(60_000),
            ..small_config()
        };
        let log = open(&disk, config, &clock).await;
        for i in 0..5 {
            log.append(workload_batch(i)).await.expect("append");
        }
        assert_eq!(segment_count(&disk), 1, "young and small: no roll");
        now.set(now.get() + 60_000);
        let rolled = log.append(workload_batch(5)).await.expect("append");
        assert_eq!(
            segment_count(&disk),
            2,
            "an old segment rolls on the next append"
        );
        assert!(disk.paths().iter().any(|p| p.ends_with(
            ringfeed_storage::segment::segment_file_name(rolled.base_offset)
        )));

        let size_config = LogConfig {
            segment_bytes_max: 8 << 10,
            segment_age_max_ms: None,
            ..small_config()
        };
        log.set_config(size_config);
        for i in 6..30 {
            log.append(workload_batch(i)).await.expect("append");
        }
        log.wait_durable(log.log_end_offset() - 1)
            .await
            .expect("durable");
        let segments = segment_count(&disk);
        assert!(segments >= 4, "8 KiB segments roll often, got {segments}");
        // Segment 0 rolled by age under the first config; the rest rolled by size.
        let first = Path::new(DIR).join(ringfeed_storage::segment::segment_file_name(0));
        for path in disk
            .paths()
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log") && **p != first)
        {
            let bytes = disk.contents(path).expect("segment").len();
            let sealed = disk.paths().contains(&path.with_extension("index"));
            if sealed {
                assert!(bytes <= 8 << 10, "{} holds {bytes} bytes", path.display());
            }
        }
        assert_eq!(read_all(&log).await.len(), 30);
    });
}

/// A replicated log keeps the entries its group may still need: retention by age removes
/// only the sealed segments whose every batch is below the index limit, stops at the first
/// that is not, and the limit never splits a segment.
#[test]
fn retention_of_a_replicated_log_stops_at_the_index_limit() {
    run(|| async {
        let now = Rc::new(Cell::new(2_000_000));
        let clock = Clock::Manual(now.clone());
        let disk = SimDisk::new();
        let log = open(&disk, small_config(), &clock).await;
        for i in 0..60 {
            log.append(workload_batch(i)).await.expect("append");
        }
        log.wait_durable(log.log_end_offset() - 1)
            .await
            .expect("durable");
        let segments = segment_count(&disk);
        assert!(segments >= 4, "small segments, got {segments}");
        // Every sealed segment is expired (timestamps near 1_000_000 ms, 10 s retention).
        log.set_config(LogConfig {
            retention_ms: Some(10_000),
            ..small_config()
        });
        let first_index = log.first_index();
        assert_eq!(
            log.enforce_retention_below_index(first_index)
                .await
                .expect("retention"),
            0,
            "nothing below the first index"
        );
        // A limit inside the log: the segments wholly below it go, the one holding it stays.
        let limit = first_index + 25;
        let deleted = log
            .enforce_retention_below_index(limit)
            .await
            .expect("retention");
        assert!(deleted >= 1, "some whole segments lie below index {limit}");
        // Every batch at or above the limit is still there.
        assert!(
            log.first_index() <= limit,
            "a segment holding index {limit} stays"
        );
        assert!(log.first_index() > first_index);
        assert_eq!(segment_count(&disk), segments - deleted);
        let kept_start = log.first_index();
        // Everything from the first kept index on is still there.
        assert_eq!(
            read_all(&log).await.len() as u64,
            log.last_index() + 1 - kept_start
        );
        assert_eq!(
            log.enforce_retention_below_index(u64::MAX)
                .await
                .expect("retention"),
            segments - deleted - 1,
            "without a limit every expired sealed segment goes"
        );
    });
}

#[test]
fn retention_deletes_whole_old_segments_by_size_and_by_age() {
    run(|| async {
        let now = Rc::new(Cell::new(2_000_000));
        let clock = Clock::Manual(now.clone());
        let disk = SimDisk::new();
        let log = open(&disk, small_config(), &clock).await;
        for i in 0..60 {
            log.append(workload_batch(i)).await.expect("append");
        }
        log.wait_durable(log.log_end_offset() - 1)
            .await
            .expect("durable");
        let before = segment_count(&disk);
        let size_before = log.size_bytes();
        assert_eq!(
            log.enforce_retention().await.expect("nothing configured"),
            0
        );

        log.set_config(LogConfig {
            retention_bytes: Some(size_before / 2),
            ..small_config()
        });
        let deleted = log.enforce_retention().await.expect("retention");
        assert!(deleted > 0 && segment_count(&disk) == before - deleted);
        assert!(
            log.size_bytes() >= size_before / 2,
            "never below retention.bytes"
        );
        let start = log.log_start_offset();
        assert!(start > 0);
        let remaining = read_all(&log).await;
        assert_eq!(
            header(&remaining[0]).base_offset,
            start,
            "the log starts at the first kept segment"
        );
        assert!(matches!(
            log.read(start - 1, 100).await,
            Err(ReadError::OffsetOutOfRange { .. })
        ));

        // Workload timestamps are around 1_000_000 ms; with the clock at 2_000_000 and a
        // retention of 10 s every sealed segment is expired, the active one is kept.
        log.set_config(LogConfig {
            retention_ms: Some(10_000),
            ..small_config()
        });
        log.enforce_retention().await.expect("retention");
        assert_eq!(segment_count(&disk), 1, "only the active segment remains");
        assert!(!read_all(&log).await.is_empty());
        let end = log.log_end_offset();
        drop(log);
        let reopened = open(
            &disk.crash_image(CrashMode::PowerCut),
            small_config(),
            &clock,
        )
        .await;
        assert_eq!(
            reopened.log_end_offset(),
            end,
            "offsets are never reused after retention"
        );
    });
}

#[test]
fn delete_records_advances_the_log_start_durably() {
    run(|| async {
        let clock = Clock::System;
        let disk = SimDisk::new();
        let log = open(&disk, small_config(), &clock).await;
        for i in 0..40 {
            log.append(workload_batch(i)).await.expect("append");
        }
        log.wait_durable(log.log_end_offset() - 1)
            .await
            .expect("durable");
        let end = log.log_end_offset();
        assert!(matches!(
            log.delete_records_before(end + 1).await,
            Err(ReadError::OffsetOutOfRange { .. })
        ));
        let cut = end / 2;
        assert_eq!(log.delete_records_before(cut).await.expect("delete"), cut);
        assert_eq!(log.log_start_offset(), cut);
        assert!(matches!(
            log.read(cut - 1, 100).await,
            Err(ReadError::OffsetOutOfRange { .. })
        ));
        let first = log.read(cut, 1).await.expect("read");
        assert!(
            header(&first[0]).last_offset() >= cut,
            "the batch holding the new start is served"
        );
        assert_eq!(
            log.delete_records_before(cut - 5).await.expect("no-op"),
            cut,
            "the start never moves back"
        );
        let reopened = open(
            &disk.crash_image(CrashMode::PowerCut),
            small_config(),
            &clock,
        )
        .await;
        assert_eq!(
            reopened.log_start_offset(),
            cut,
            "the new start survives a power cut"
        );
    });
}

#[test]
fn waiting_for_data_wakes_on_append_and_respects_cancellation() {
    run(|| async {
        let disk = SimDisk::new();
        let log = open(&disk, small_config(), &Clock::System).await;
        let waiter = {
            let log = log.clone();
            glommio::spawn_local(async move {
                log.wait_for_data(0).await;
                log.high_watermark()
            })
        };
        // A cancelled wait (a long poll whose max_wait_ms passed) must not disturb others.
        let cancelled = futures::future::select(
            Box::pin(log.wait_for_data(0)),
            Box::pin(glommio::timer::sleep(Duration::from_millis(5))),
        )
        .await;
        assert!(
            matches!(cancelled, futures::future::Either::Right(_)),
            "no data yet: the timer wins"
        );
        glommio::timer::sleep(Duration::from_millis(5)).await;
        let outcome = log.append(workload_batch(0)).await.expect("append");
        assert!(
            waiter.await > outcome.last_offset,
            "woken once the batch is readable"
        );
    });
}

//! An idle log holds no flusher task (issue 16 item 3: thousands of idle partitions each
//! kept a parked task of about 1.2 KiB), and losing it loses nothing: the next append, durability
//! request or close starts one again. Simulated time, so the idle period costs no wall time.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{small_config, workload_batch};
use ringfeed_storage::sim::SimDisk;
use ringfeed_storage::{Clock, PartitionLog, SimClock, FLUSHER_IDLE_EXIT};

/// Lets every ready task on this executor run (the flusher wakes on its simulated timer).
async fn settle() {
    for _ in 0..10 {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

#[test]
fn an_idle_log_lets_its_flusher_go_and_any_later_work_starts_one() {
    common::run(|| async {
        let time = SimClock::new(1_000_000);
        let disk = SimDisk::new();
        let (log, _) = PartitionLog::open_on(
            disk.clone(),
            Path::new("/data/topic-0"),
            small_config(),
            Clock::Simulated(time.clone()),
        )
        .await
        .expect("open");
        assert!(!log.has_flusher_task(), "opening a log starts no task");

        let first = log.append(workload_batch(0)).await.expect("append");
        log.wait_durable(first.last_offset).await.expect("durable");
        assert!(log.has_flusher_task());

        // Busy again just before the idle period ends: the task stays.
        time.advance(FLUSHER_IDLE_EXIT.saturating_sub(Duration::from_secs(1)));
        settle().await;
        let second = log.append(workload_batch(1)).await.expect("append");
        log.wait_written(second.last_offset).await.expect("written");
        time.advance(Duration::from_secs(2));
        settle().await;
        assert!(
            log.has_flusher_task(),
            "the idle period counts from the last work, not from the first wait"
        );

        // A whole idle period: the task exits.
        for _ in 0..3 {
            time.advance(FLUSHER_IDLE_EXIT);
            settle().await;
        }
        assert!(!log.has_flusher_task(), "an idle log holds no task");

        // The next append and durability request are served by a new task.
        let third = log.append(workload_batch(2)).await.expect("append");
        log.wait_durable(third.last_offset).await.expect("durable");
        assert!(log.has_flusher_task());
        assert_eq!(log.durable_offset(), third.last_offset + 1);
        let read = common::read_all(&log).await;
        assert_eq!(read.len(), 3, "every batch readable");

        // Idle again, then a close: it still completes with no task running.
        for _ in 0..3 {
            time.advance(FLUSHER_IDLE_EXIT);
            settle().await;
        }
        assert!(!log.has_flusher_task());
        log.close().await.expect("close");
    });
}

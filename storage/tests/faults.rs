//! Guards the log's behaviour when the disk fails:
//! - EIO on fdatasync fences the log: the waiting ack fails, every later append and ack
//!   fails, even though a retried fdatasync would "succeed" (fsyncgate);
//! - EIO on a write fences it the same way;
//! - ENOSPC refuses appends with a storage error, leaves the log readable and unfenced, and
//!   appends resume once space is freed;
//! - one fdatasync covers many concurrent appenders (group commit);
//! - the fdatasync latency observer (metrics) hears of each completed fdatasync.

mod common;

use std::rc::Rc;

use common::{open_sim, read_all, run, small_config, stored_at, workload_batch};
use ringfeed_storage::sim::{CrashMode, SimDisk};
use ringfeed_storage::{AppendError, StorageError};

#[test]
fn eio_on_fdatasync_fences_and_no_ack_follows() {
    run(|| async {
        let disk = SimDisk::new();
        let log = open_sim(&disk, small_config()).await.expect("open");
        let mut durable = Vec::new();
        for i in 0..5 {
            let batch = workload_batch(i);
            let outcome = log.append(batch.clone()).await.expect("append");
            log.wait_durable(outcome.last_offset)
                .await
                .expect("durable");
            durable.push(stored_at(&batch, outcome.base_offset));
        }
        let doomed = log.append(workload_batch(5)).await.expect("append");
        disk.fail_next_fdatasync();
        assert!(
            log.wait_durable(doomed.last_offset).await.is_err(),
            "the ack covered by the failed fdatasync fails"
        );
        assert!(log.fenced_error().is_some());
        assert!(matches!(
            log.append(workload_batch(6)).await,
            Err(AppendError::Storage(StorageError::Fenced(_)))
        ));
        assert!(
            log.wait_durable(doomed.last_offset).await.is_err(),
            "asking again does not retry and then ack"
        );
        assert!(log.wait_written(doomed.last_offset + 1).await.is_err());
        // What was durable before the failure is all a power cut keeps.
        let recovered = read_all(
            &open_sim(&disk.crash_image(CrashMode::PowerCut), small_config())
                .await
                .expect("recover"),
        )
        .await;
        assert_eq!(recovered, durable);
    });
}

#[test]
fn eio_on_write_fences_the_log() {
    run(|| async {
        let disk = SimDisk::new();
        let log = open_sim(&disk, small_config()).await.expect("open");
        let first = log.append(workload_batch(0)).await.expect("append");
        log.wait_durable(first.last_offset).await.expect("durable");
        disk.fail_next_write();
        let second = log
            .append(workload_batch(1))
            .await
            .expect("append is buffered");
        assert!(log.wait_written(second.last_offset).await.is_err());
        assert_eq!(
            log.high_watermark(),
            first.last_offset + 1,
            "the failed write is never visible"
        );
        assert!(log.append(workload_batch(2)).await.is_err());
        log.close()
            .await
            .expect_err("a fenced log writes no clean-shutdown marker");
    });
}

#[test]
fn enospc_refuses_appends_keeps_the_log_readable_and_recovers() {
    run(|| async {
        let disk = SimDisk::new();
        let log = open_sim(&disk, small_config()).await.expect("open");
        disk.set_capacity(Some(48 << 10));
        let mut stored = Vec::new();
        let mut refused = None;
        for i in 0..200 {
            let batch = workload_batch(i);
            match log.append(batch.clone()).await {
                Ok(outcome) => {
                    log.wait_durable(outcome.last_offset)
                        .await
                        .expect("accepted appends become durable");
                    stored.push(stored_at(&batch, outcome.base_offset));
                }
                Err(error) => {
                    refused = Some(error);
                    break;
                }
            }
        }
        let error = refused.expect("the disk filled up");
        assert!(
            matches!(error, AppendError::Storage(StorageError::NoSpace(_))),
            "got {error}"
        );
        assert!(log.fenced_error().is_none(), "a full disk does not fence");
        assert_eq!(
            read_all(&log).await,
            stored,
            "everything acknowledged is still readable"
        );
        disk.set_capacity(None);
        let after = log
            .append(workload_batch(999))
            .await
            .expect("appends resume once space is freed");
        log.wait_durable(after.last_offset).await.expect("durable");
        assert_eq!(
            after.base_offset,
            stored
                .iter()
                .map(|b| i64::from(common::header(b).record_count))
                .sum::<i64>()
        );
        let recovered = read_all(
            &open_sim(&disk.crash_image(CrashMode::PowerCut), small_config())
                .await
                .expect("recover"),
        )
        .await;
        assert_eq!(recovered[..stored.len()], stored[..]);
    });
}

#[test]
fn one_fdatasync_covers_many_concurrent_appenders() {
    run(|| async {
        let disk = SimDisk::new();
        let config = ringfeed_storage::LogConfig {
            segment_bytes_max: 1 << 20,
            ..small_config()
        };
        let log = Rc::new(open_sim(&disk, config).await.expect("open"));
        let appenders: Vec<_> = (0..8)
            .map(|task| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    for i in 0..10 {
                        let outcome = log
                            .append(workload_batch(task * 10 + i))
                            .await
                            .expect("append");
                        log.wait_durable(outcome.last_offset)
                            .await
                            .expect("durable");
                    }
                })
            })
            .collect();
        for appender in appenders {
            appender.await;
        }
        let syncs = disk.data_fdatasyncs();
        assert!(
            syncs > 0 && syncs < 40,
            "80 acks=all appends took {syncs} fdatasyncs"
        );
        assert_eq!(read_all(&log).await.len(), 80);
    });
}

#[test]
fn writes_go_on_while_an_fdatasync_is_slow_and_durability_never_overreaches() {
    run(|| async {
        let disk = SimDisk::new();
        let log = Rc::new(open_sim(&disk, small_config()).await.expect("open"));
        let first = log.append(workload_batch(0)).await.expect("append");
        disk.stall_fdatasyncs();
        let durable_waiter = {
            let log = log.clone();
            glommio::spawn_local(async move { log.wait_durable(first.last_offset).await })
        };
        glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        assert!(
            log.durable_offset() <= first.base_offset,
            "the stalled fdatasync has not returned"
        );
        // An acks=1 append is written while that fdatasync is still in flight.
        let second = log.append(workload_batch(1)).await.expect("append");
        log.wait_written(second.last_offset)
            .await
            .expect("written despite the slow fdatasync");
        assert!(log.durable_offset() <= first.base_offset);
        disk.release_fdatasyncs();
        durable_waiter
            .await
            .expect("durable once the fdatasync returns");
        // That fdatasync was issued before the second batch was written: it makes exactly
        // the first batch durable, and the second takes another one.
        assert_eq!(
            log.durable_offset(),
            first.last_offset + 1,
            "durability never overreaches"
        );
        let syncs = disk.data_fdatasyncs();
        log.wait_durable(second.last_offset).await.expect("durable");
        assert_eq!(disk.data_fdatasyncs(), syncs + 1);
        assert_eq!(read_all(&log).await.len(), 2);
    });
}

#[test]
fn the_fdatasync_observer_sees_each_completed_fdatasync_and_not_a_failed_one() {
    run(|| async {
        let disk = SimDisk::new();
        let log = open_sim(&disk, small_config()).await.expect("open");
        let observed = Rc::new(std::cell::RefCell::new(Vec::new()));
        let sink = observed.clone();
        log.observe_fdatasync_latency(Rc::new(move |latency| sink.borrow_mut().push(latency)));
        for i in 0..3 {
            let outcome = log.append(workload_batch(i)).await.expect("append");
            log.wait_durable(outcome.last_offset)
                .await
                .expect("durable");
        }
        assert_eq!(observed.borrow().len(), 3, "one latency per fdatasync");
        let doomed = log.append(workload_batch(3)).await.expect("append");
        disk.fail_next_fdatasync();
        assert!(log.wait_durable(doomed.last_offset).await.is_err());
        assert_eq!(
            observed.borrow().len(),
            3,
            "a failed fdatasync is not a latency"
        );
    });
}

#[test]
fn a_log_on_a_full_disk_opens_serves_its_data_and_appends_once_space_is_freed() {
    // Restarting on a full disk once took every partition offline: opening preallocates
    // the active segment, and ENOSPC there failed the open.
    run(|| async {
        let disk = SimDisk::new();
        let log = open_sim(&disk, small_config()).await.expect("open");
        disk.set_capacity(Some(48 << 10));
        let mut stored = Vec::new();
        for i in 0..200 {
            let batch = workload_batch(i);
            let Ok(outcome) = log.append(batch.clone()).await else {
                break;
            };
            log.wait_durable(outcome.last_offset)
                .await
                .expect("durable");
            stored.push(stored_at(&batch, outcome.base_offset));
        }
        let restarted = disk.crash_image(CrashMode::ProcessCrash);
        restarted.set_capacity(Some(48 << 10));
        let log = open_sim(&restarted, small_config())
            .await
            .expect("a full disk does not keep the log from opening");
        assert_eq!(
            read_all(&log).await,
            stored,
            "everything acknowledged is readable"
        );
        assert!(matches!(
            log.append(workload_batch(998)).await,
            Err(AppendError::Storage(StorageError::NoSpace(_)))
        ));
        restarted.set_capacity(None);
        let after = log
            .append(workload_batch(999))
            .await
            .expect("appends resume once space is freed");
        log.wait_durable(after.last_offset).await.expect("durable");
    });
}

//! Guards "no acknowledged event is ever lost": a small workload crashes after every one of
//! its data writes, and each crash image (process crash, power cut, power cut tearing the
//! last write at 512 B and 4 KiB) is recovered and checked against a model of what was
//! appended and what was acknowledged durable:
//! - recovery succeeds (a crash never looks like mid-log corruption);
//! - every batch reported durable reads back byte-identical;
//! - every batch read back is byte-identical to the one appended at that offset (nothing
//!   torn is returned), and offsets are contiguous from the log start;
//! - after a process crash every written batch survives;
//! - the recovered log accepts appends at the right offset.

mod common;

use bytes::Bytes;
use common::{header, open_sim, read_all, run, small_config, stored_at, workload_batch};
use ringfeed_storage::sim::{CrashMode, SimDisk};

const BATCHES: usize = 40;

/// What the workload observed before the crash.
struct Observed {
    /// Batch as stored, indexed by arrival; `None` once appends failed.
    appended: Vec<Bytes>,
    durable_batches: usize,
    written_batches: usize,
}

/// Appends the workload, asking for durability every third batch (acks=all producers mixed
/// with acks=1 ones), until the simulated power cut makes the log fail.
async fn workload(disk: &SimDisk) -> Observed {
    let log = open_sim(disk, small_config()).await.expect("open");
    let mut observed = Observed {
        appended: Vec::new(),
        durable_batches: 0,
        written_batches: 0,
    };
    for i in 0..BATCHES {
        let batch = workload_batch(i);
        let Ok(outcome) = log.append(batch.clone()).await else {
            break;
        };
        observed
            .appended
            .push(stored_at(&batch, outcome.base_offset));
        let acked = if i % 3 == 2 {
            log.wait_durable(outcome.last_offset).await.map(|()| true)
        } else {
            log.wait_written(outcome.last_offset).await.map(|()| false)
        };
        match acked {
            Ok(true) => observed.durable_batches = observed.appended.len(),
            Ok(false) => observed.written_batches = observed.appended.len(),
            Err(_) => break,
        }
        observed.written_batches = observed.written_batches.max(observed.durable_batches);
    }
    observed
}

async fn check_recovery(image: &SimDisk, observed: &Observed, mode: CrashMode, crash_after: u64) {
    let context = format!("crash after write {crash_after}, {mode:?}");
    let log = open_sim(image, small_config())
        .await
        .unwrap_or_else(|e| panic!("{context}: recovery failed: {e}"));
    let recovered = read_all(&log).await;
    assert!(
        recovered.len() <= observed.appended.len(),
        "{context}: more batches than appended"
    );
    for (i, batch) in recovered.iter().enumerate() {
        assert_eq!(
            batch, &observed.appended[i],
            "{context}: batch {i} differs from what was appended"
        );
    }
    assert!(
        recovered.len() >= observed.durable_batches,
        "{context}: {} durable batches acknowledged, {} recovered",
        observed.durable_batches,
        recovered.len()
    );
    if mode == CrashMode::ProcessCrash {
        assert!(
            recovered.len() >= observed.written_batches,
            "{context}: a process crash lost written batches"
        );
    }
    let expected_next = recovered.last().map_or(0, |b| header(b).last_offset() + 1);
    let next = log
        .append(workload_batch(1000))
        .await
        .unwrap_or_else(|e| panic!("{context}: append after recovery: {e}"));
    assert_eq!(
        next.base_offset, expected_next,
        "{context}: offsets continue after the recovered tail"
    );
    log.close().await.expect("close");
}

#[test]
fn every_crash_point_recovers_every_durable_batch_and_nothing_torn() {
    run(|| async {
        let total_writes = {
            let disk = SimDisk::new();
            let observed = workload(&disk).await;
            assert_eq!(observed.appended.len(), BATCHES);
            disk.data_writes()
        };
        assert!(
            total_writes > 20,
            "the workload spans many writes ({total_writes})"
        );
        let modes = [
            CrashMode::ProcessCrash,
            CrashMode::PowerCut,
            CrashMode::PowerCutTearingLastWrite { keep_bytes: 512 },
            CrashMode::PowerCutTearingLastWrite { keep_bytes: 4096 },
        ];
        for crash_after in 1..=total_writes {
            let disk = SimDisk::new();
            disk.power_cut_after_writes(crash_after);
            let observed = workload(&disk).await;
            for mode in modes {
                check_recovery(&disk.crash_image(mode), &observed, mode, crash_after).await;
            }
        }
    });
}

#[test]
fn durable_data_survives_power_cut_while_unsynced_data_may_not() {
    run(|| async {
        let disk = SimDisk::new();
        // No periodic checkpoint, so every fdatasync counted is a data fdatasync.
        let config = ringfeed_storage::LogConfig {
            checkpoint_interval_ms: 1 << 62,
            ..small_config()
        };
        let log = open_sim(&disk, config.clone()).await.expect("open");
        let mut stored = Vec::new();
        for i in 0..10 {
            let batch = workload_batch(i);
            let outcome = log.append(batch.clone()).await.expect("append");
            stored.push(stored_at(&batch, outcome.base_offset));
        }
        log.wait_durable(log.log_end_offset() - 1)
            .await
            .expect("durable");
        let syncs_before = disk.data_fdatasyncs();
        for i in 10..14 {
            log.append(workload_batch(i)).await.expect("append");
        }
        log.wait_written(log.log_end_offset() - 1)
            .await
            .expect("written");
        assert_eq!(
            disk.data_fdatasyncs(),
            syncs_before,
            "acks=1 data costs no fdatasync under OnDemand"
        );
        let recovered = read_all(
            &open_sim(&disk.crash_image(CrashMode::PowerCut), config)
                .await
                .expect("recover"),
        )
        .await;
        assert_eq!(
            recovered, stored,
            "exactly the durable batches survive the power cut"
        );
    });
}

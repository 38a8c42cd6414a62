//! Guards the offline checker behind `ringfeed check-data`: a healthy partition reports no
//! findings and the right counts; damage that start-up deliberately does not scan for (a
//! flipped payload bit inside checkpointed bytes, a sealed segment's corrupt batch, a stale
//! index) is found and named; real-disk partitions read back whichever file glommio opened
//! first on the device.

mod common;

use std::path::Path;

use common::{open_sim, run, segment_path, small_config, workload_batch};
use ringfeed_storage::check::check_partition;
use ringfeed_storage::segment::{
    index_file_name, segment_file_name, CHECKPOINT_FILE, CLEAN_SHUTDOWN_FILE,
};
use ringfeed_storage::sim::{CrashMode, SimDisk};
use ringfeed_storage::{Disk, DmaDisk, PartitionLog};

const DIR: &str = "/data/topic-0";

async fn stopped_partition() -> (SimDisk, u64) {
    let disk = SimDisk::new();
    let log = open_sim(&disk, small_config()).await.expect("open");
    for i in 0..50 {
        log.append(workload_batch(i)).await.expect("append");
    }
    let records = u64::try_from(log.log_end_offset()).unwrap();
    log.close().await.expect("close");
    (disk.crash_image(CrashMode::PowerCut), records)
}

#[test]
fn a_healthy_partition_checks_clean() {
    run(|| async {
        let (disk, records) = stopped_partition().await;
        let report = check_partition(&disk, Path::new(DIR)).await.expect("check");
        assert!(report.is_clean(), "{:?}", report.findings);
        assert_eq!(report.batches, 50);
        assert_eq!(report.next_offset, Some(i64::try_from(records).unwrap()));
        assert!(report.segments >= 4);
    });
}

#[test]
fn damage_start_up_does_not_scan_for_is_found() {
    run(|| async {
        let (disk, _) = stopped_partition().await;
        // A payload bit in the first (sealed, indexed) segment.
        disk.corrupt(&segment_path(0), |bytes| bytes[300] ^= 0x08);
        let report = check_partition(&disk, Path::new(DIR)).await.expect("check");
        assert!(
            report.findings.iter().any(|f| Path::new(&f.file)
                .extension()
                .is_some_and(|e| e == "log")
                && f.what.contains("CRC32C")),
            "{:?}",
            report.findings
        );
        assert!(
            report
                .findings
                .iter()
                .any(|f| f.what.contains("valid batches resume")),
            "{:?}",
            report.findings
        );

        let (disk, _) = stopped_partition().await;
        disk.corrupt(&Path::new(DIR).join(index_file_name(0)), |bytes| {
            let last = bytes.len() - 1;
            bytes[last] ^= 0x01;
        });
        let report = check_partition(&disk, Path::new(DIR)).await.expect("check");
        assert_eq!(report.findings.len(), 1, "{:?}", report.findings);
        assert!(Path::new(&report.findings[0].file)
            .extension()
            .is_some_and(|e| e == "index"));
    });
}

/// What a fresh thread (glommio settles IOPOLL per thread and device) opens before the data.
#[derive(Clone, Copy, Debug)]
enum FirstFile {
    Empty,
    /// A new partition's segment: preallocated, never written.
    PreallocatedSegment,
    Marker,
    Checkpoint,
    WrittenSegment,
}

/// Issue 10, item 5: whichever file of a data directory glommio opens first, every partition
/// stays readable. Before the fix an empty or preallocated-only file opened first made every
/// later read fail with "Operation not supported (os error 95)" on this machine's virtio
/// disk (glommio's IOPOLL probe read it without reaching the device).
#[test]
fn data_reads_whatever_file_is_opened_first() {
    let root = tempfile::tempdir_in(std::env::temp_dir()).expect("temp dir");
    let data = root.path().join("data-0");
    let fresh = root.path().join("fresh-0");
    let (setup_data, setup_fresh) = (data.clone(), fresh.clone());
    run(move || async move {
        let (log, _) = PartitionLog::open(&setup_data, small_config())
            .await
            .expect("open");
        for i in 0..50 {
            log.append(workload_batch(i)).await.expect("append");
        }
        log.close().await.expect("close"); // writes the marker and the checkpoint
        let (log, _) = PartitionLog::open(&setup_fresh, small_config())
            .await
            .expect("open");
        log.close().await.expect("close");
    });
    std::fs::write(root.path().join("empty"), b"").expect("empty file");
    let preallocated = fresh.join(segment_file_name(0));
    assert!(std::fs::metadata(&preallocated).expect("segment").len() > 0);
    for first in [
        FirstFile::Empty,
        FirstFile::PreallocatedSegment,
        FirstFile::Marker,
        FirstFile::Checkpoint,
        FirstFile::WrittenSegment,
    ] {
        let (root, data, preallocated) =
            (root.path().to_owned(), data.clone(), preallocated.clone());
        run(move || async move {
            let disk = DmaDisk;
            match first {
                FirstFile::Empty => {
                    drop(disk.open(&root.join("empty"), false).await.expect("open"));
                }
                FirstFile::PreallocatedSegment => {
                    drop(disk.open(&preallocated, false).await.expect("open"));
                }
                FirstFile::Marker => drop(
                    disk.read_file(&data.join(CLEAN_SHUTDOWN_FILE))
                        .await
                        .expect("marker"),
                ),
                FirstFile::Checkpoint => drop(
                    disk.read_file(&data.join(CHECKPOINT_FILE))
                        .await
                        .expect("checkpoint"),
                ),
                FirstFile::WrittenSegment => drop(
                    disk.open(&data.join(segment_file_name(0)), false)
                        .await
                        .expect("open"),
                ),
            }
            let report = check_partition(&disk, &data)
                .await
                .unwrap_or_else(|error| panic!("{first:?} opened first: {error}"));
            assert!(
                report.is_clean(),
                "{first:?} opened first: {:?}",
                report.findings
            );
            assert_eq!(report.batches, 50, "{first:?} opened first");
        });
    }
}

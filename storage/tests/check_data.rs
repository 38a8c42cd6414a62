//! Guards the offline checker behind `ringfeed check-data`: a healthy partition reports no
//! findings and the right counts; damage that start-up deliberately does not scan for (a
//! flipped payload bit inside checkpointed bytes, a sealed segment's corrupt batch, a stale
//! index) is found and named.

mod common;

use std::path::Path;

use common::{open_sim, run, segment_path, small_config, workload_batch};
use ringfeed_storage::check::check_partition;
use ringfeed_storage::segment::index_file_name;
use ringfeed_storage::sim::{CrashMode, SimDisk};

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

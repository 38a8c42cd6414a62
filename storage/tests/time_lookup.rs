//! Guards `ListOffsets` by time (issue 10 item 4): `offset_for_timestamp` and `max_timestamp`
//! must give Kafka's answers, which a brute-force scan of every record defines:
//! - by time T: the offset and timestamp of the first record (not batch) whose timestamp is
//!   at least T, or nothing when no record reaches T;
//! - max timestamp: the largest record timestamp and the first offset carrying it.
//!
//! A seeded generator (no shrinking; a failure prints its seed and case) draws workloads of
//! random batch sizes, record counts and timestamps (rising, random, rising with dips, and
//! long runs of one value), index intervals from one entry per batch to none after the first,
//! and segment sizes that force rolls. Each workload is checked while the indexes are being
//! built, after a clean restart (sealed indexes loaded as archives, the active one rebuilt
//! from the marker), after a process crash (active segment scanned), and with the sealed
//! indexes lost (rebuilt by scan).

mod common;

use std::path::Path;

use bytes::Bytes;
use common::{open_sim, run, small_config};
use ringfeed_storage::batch::build;
use ringfeed_storage::sim::{CrashMode, SeededRng, SimDisk};
use ringfeed_storage::{Disk, LogConfig, PartitionLog};

/// Cases per run: enough to cover every interval × timestamp shape several times while the
/// whole file runs in a second or two.
const CASES: u64 = 48;

#[derive(Debug, Clone, Copy)]
enum Shape {
    Rising,
    Random,
    RisingWithDips,
    Plateaus,
}

/// One generated workload: the log settings and, per batch, its records' timestamps and
/// value sizes.
#[derive(Debug)]
struct Case {
    seed: u64,
    shape: Shape,
    config: LogConfig,
    batches: Vec<Vec<(i64, usize)>>,
    /// Where `DeleteRecords` moves the log start after the appends, as a fraction of the
    /// records in per mille (`None`: it is not called).
    delete_records_per_mille: Option<u64>,
}

impl Case {
    /// What a failure message names; the seed alone replays the case.
    fn summary(&self) -> String {
        format!(
            "seed {} ({:?} timestamps, {} batches, index interval {} B, segments of {} B, \
             DeleteRecords at {:?}‰)",
            self.seed,
            self.shape,
            self.batches.len(),
            self.config.index_interval_bytes,
            self.config.segment_bytes_max,
            self.delete_records_per_mille
        )
    }
}

fn generate(seed: u64) -> Case {
    let mut rng = SeededRng::new(seed);
    let shape = [
        Shape::Rising,
        Shape::Random,
        Shape::RisingWithDips,
        Shape::Plateaus,
    ][(seed % 4) as usize];
    let index_interval_bytes = [1, 100, 1024, 4096, 1 << 30][rng.range(0, 4) as usize];
    let segment_bytes_max = [4 << 10, 16 << 10, 1 << 20][rng.range(0, 2) as usize];
    let config = LogConfig {
        index_interval_bytes,
        segment_bytes_max,
        ..small_config()
    };
    let mut clock = 1_700_000_000_000_i64;
    let batch_count = rng.range(1, 70);
    let batches = (0..batch_count)
        .map(|_| {
            let records = match rng.range(0, 3) {
                0 => 1,
                1 | 2 => rng.range(2, 8),
                _ => rng.range(9, 40),
            };
            (0..records)
                .map(|_| {
                    let timestamp = match shape {
                        Shape::Rising => {
                            clock += rng.range(0, 3) as i64;
                            clock
                        }
                        Shape::Random => 1_700_000_000_000 + rng.range(0, 200) as i64,
                        Shape::RisingWithDips => {
                            clock += rng.range(0, 5) as i64;
                            if rng.range(0, 9) == 0 {
                                clock - rng.range(1, 60) as i64
                            } else {
                                clock
                            }
                        }
                        Shape::Plateaus => {
                            if rng.range(0, 29) == 0 {
                                clock += rng.range(1, 1000) as i64;
                            }
                            clock
                        }
                    };
                    (timestamp, rng.range(0, 300) as usize)
                })
                .collect()
        })
        .collect();
    let delete_records_per_mille = (rng.range(0, 2) == 0).then(|| rng.range(1, 1000));
    Case {
        seed,
        shape,
        config,
        batches,
        delete_records_per_mille,
    }
}

fn encode(records: &[(i64, usize)]) -> Bytes {
    let values: Vec<Vec<u8>> = records.iter().map(|&(_, len)| vec![0xa5; len]).collect();
    let list: Vec<build::Record<'_>> = records
        .iter()
        .zip(&values)
        .map(|(&(timestamp_ms, _), value)| build::Record {
            key: Some(b"key"),
            value: Some(value),
            timestamp_ms,
        })
        .collect();
    build::batch(&list)
}

/// The brute-force answers, from every record's timestamp in offset order. Records below the
/// log start are gone: no answer may name them.
struct Model {
    timestamps: Vec<i64>,
    log_start: usize,
}

impl Model {
    /// (offset, timestamp) of every record from the log start on.
    fn records(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        (self.log_start..)
            .zip(&self.timestamps[self.log_start..])
            .map(|(offset, &ts)| (offset as i64, ts))
    }

    fn first_at_or_after(&self, timestamp_ms: i64) -> Option<(i64, i64)> {
        self.records().find(|&(_, ts)| ts >= timestamp_ms)
    }

    fn max_timestamp(&self) -> Option<(i64, i64)> {
        let max = self.records().map(|(_, ts)| ts).max()?;
        let (offset, _) = self.records().find(|&(_, ts)| ts == max)?;
        Some((max, offset))
    }

    /// Every timestamp that can change an answer: each record's, one either side, and the
    /// extremes.
    fn queries(&self) -> Vec<i64> {
        let mut queries: Vec<i64> = self
            .timestamps
            .iter()
            .flat_map(|&ts| [ts - 1, ts, ts + 1])
            .chain([0, i64::MAX])
            .collect();
        queries.sort_unstable();
        queries.dedup();
        queries
    }
}

async fn check<D: Disk>(log: &PartitionLog<D>, model: &Model, case: &Case, phase: &str) {
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (model.log_start as i64, model.timestamps.len() as i64),
        "{} ({phase}): log start and end",
        case.summary()
    );
    for timestamp in model.queries() {
        let got = log.offset_for_timestamp(timestamp).await.expect("lookup");
        assert_eq!(
            got,
            model.first_at_or_after(timestamp),
            "{} ({phase}): first offset at or after {timestamp}",
            case.summary(),
        );
    }
    assert_eq!(
        log.max_timestamp().await.expect("max lookup"),
        model.max_timestamp(),
        "{} ({phase}): max timestamp",
        case.summary()
    );
}

fn sealed_index_paths(disk: &SimDisk) -> Vec<std::path::PathBuf> {
    let mut indexes: Vec<_> = disk
        .paths()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "index"))
        .collect();
    indexes.sort();
    indexes
}

/// Appends the case's batches and returns what a scan of them would find.
async fn append_case<D: Disk>(log: &PartitionLog<D>, case: &Case) -> Model {
    let mut model = Model {
        timestamps: Vec::new(),
        log_start: 0,
    };
    for records in &case.batches {
        log.append(encode(records)).await.expect("append");
        model.timestamps.extend(records.iter().map(|&(ts, _)| ts));
    }
    log.wait_durable(log.log_end_offset() - 1)
        .await
        .expect("durable");
    if let Some(per_mille) = case.delete_records_per_mille {
        let start = (model.timestamps.len() as u64 * per_mille / 1000) as usize;
        let start = start.clamp(1, model.timestamps.len());
        log.delete_records_before(start as i64)
            .await
            .expect("DeleteRecords");
        model.log_start = start;
    }
    model
}

async fn check_case(case: Case) {
    let disk = SimDisk::new();
    let log = open_sim(&disk, case.config.clone()).await.expect("open");
    let model = append_case(&log, &case).await;
    check(&log, &model, &case, "building").await;

    let crashed = disk.crash_image(CrashMode::ProcessCrash);
    log.close().await.expect("close");
    drop(log);
    let reopened = open_sim(&disk, case.config.clone()).await.expect("reopen");
    check(&reopened, &model, &case, "clean restart").await;
    reopened.close().await.expect("close");
    drop(reopened);

    let recovered = open_sim(&crashed, case.config.clone())
        .await
        .expect("recover");
    check(&recovered, &model, &case, "process crash").await;
    drop(recovered);

    // Indexes are accelerators: without them the scans rebuild the same answers.
    for path in sealed_index_paths(&disk) {
        disk.corrupt(Path::new(&path), |bytes| bytes.truncate(3));
    }
    let rebuilt = open_sim(&disk, case.config.clone()).await.expect("rebuild");
    check(&rebuilt, &model, &case, "indexes rebuilt").await;
}

#[test]
fn time_lookups_match_a_scan_of_every_record() {
    run(|| async {
        for seed in 0..CASES {
            check_case(generate(seed)).await;
        }
    });
}

/// The same on the real `O_DIRECT` disk, whose reads (unaligned positions through glommio
/// `DmaFile`) are the ones the broker does: building, after dropping the log unclosed (what a
/// process crash leaves), after a clean close, and with the sealed indexes deleted.
async fn check_case_on_real_disk(case: Case) {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || async {
        PartitionLog::open(dir.path(), case.config.clone())
            .await
            .expect("open")
            .0
    };
    let log = open().await;
    let model = append_case(&log, &case).await;
    check(&log, &model, &case, "real disk, building").await;
    drop(log);
    let recovered = open().await;
    check(&recovered, &model, &case, "real disk, unclean restart").await;
    recovered.close().await.expect("close");
    drop(recovered);
    let reopened = open().await;
    check(&reopened, &model, &case, "real disk, clean restart").await;
    reopened.close().await.expect("close");
    drop(reopened);
    for entry in std::fs::read_dir(dir.path()).expect("list") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "index") {
            std::fs::remove_file(path).expect("remove an index");
        }
    }
    let rebuilt = open().await;
    check(&rebuilt, &model, &case, "real disk, indexes rebuilt").await;
}

#[test]
fn time_lookups_match_a_scan_on_the_real_disk() {
    run(|| async {
        // One case per timestamp shape: each roll really fsyncs, which costs ~50 ms here.
        for seed in 0..4 {
            check_case_on_real_disk(generate(seed)).await;
        }
    });
}

/// The partition whose lookups went wrong at realistic sizes (issue 10 item 4): thousands of
/// records in batches of many records, rising timestamps, Kafka's default index interval.
#[test]
fn time_lookups_at_realistic_sizes() {
    run(|| async {
        let config = LogConfig {
            index_interval_bytes: 4096,
            segment_bytes_max: 1 << 30,
            ..small_config()
        };
        let disk = SimDisk::new();
        let log = open_sim(&disk, config).await.expect("open");
        let mut model = Model {
            timestamps: Vec::new(),
            log_start: 0,
        };
        let mut rng = SeededRng::new(7);
        let mut next = 0_i64;
        while next < 3300 {
            let records: Vec<(i64, usize)> = (0..rng.range(1, 400))
                .map(|_| {
                    next += 1;
                    (1_700_000_000_000 + next, rng.range(200, 1024) as usize)
                })
                .collect();
            log.append(encode(&records)).await.expect("append");
            model.timestamps.extend(records.iter().map(|&(ts, _)| ts));
        }
        log.wait_durable(log.log_end_offset() - 1)
            .await
            .expect("durable");
        let end = model.timestamps.len();
        for offset in [0, end / 3, end / 2, end - 1] {
            let timestamp = model.timestamps[offset];
            assert_eq!(
                log.offset_for_timestamp(timestamp).await.expect("lookup"),
                Some((offset as i64, timestamp))
            );
        }
    });
}
